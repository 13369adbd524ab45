"""The app endpoint of a real daemon subprocess, called over HTTP on loopback: the Open Inference
Protocol as standard clients use it, and every error the issue names."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import ROOT, DaemonProc

pytestmark = pytest.mark.integration

SAMPLE = json.loads((ROOT / "models" / "sample" / "digits.json").read_text())


def example_rows(n: int = 4) -> np.ndarray:
    return np.asarray([e["input"] for e in SAMPLE["examples"][:n]], dtype=np.float32)


def infer_json(daemon: DaemonProc, rows: np.ndarray, **extra: Any) -> Any:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                        "data": rows.flatten().tolist()}], **extra}
    with daemon.http() as http:
        return http.post("/v2/models/digits/infer", content=json.dumps(body))


def test_health_server_and_model_metadata(daemon: DaemonProc) -> None:
    with daemon.http() as http:
        assert http.get("/v2/health/live").status_code == 200
        assert http.get("/v2/health/ready").status_code == 200
        server = http.get("/v2").json()
        assert server["name"] == "outpost" and "binary_tensor_data" in server["extensions"]
        meta = http.get("/v2/models/digits").json()
        assert meta["name"] == "digits" and meta["versions"] == ["1"]
        assert meta["platform"] == "onnxruntime_onnx"
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
        assert {o["name"] for o in meta["outputs"]} == {"label", "probabilities"}
        assert meta["parameters"]["outpost.provider"] == "CPUExecutionProvider"
        assert http.get("/v2/models/digits/versions/1").json()["name"] == "digits"
        assert http.get("/v2/models/digits/ready").status_code == 200
        assert http.get("/v2/models/digits/versions/1/ready").status_code == 200


def test_json_inference_is_correct_and_labelled(daemon: DaemonProc) -> None:
    rows = example_rows(4)
    response = infer_json(daemon, rows, id="req-7")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "req-7"
    assert body["model_name"] == "digits" and body["model_version"] == "1"
    assert body["parameters"]["outpost.served_by"] == "node-a"
    assert body["parameters"]["outpost.route"] == "local"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["label"]["data"] == [e["label"] for e in SAMPLE["examples"][:4]]
    probs = np.asarray(outputs["probabilities"]["data"]).reshape(outputs["probabilities"]["shape"])
    assert probs.shape == (4, 10)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)


def test_tritonclient_binary_and_json(daemon: DaemonProc) -> None:
    import tritonclient.http as httpclient

    rows = example_rows(3)
    client = httpclient.InferenceServerClient(daemon.hostport)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits")
    assert client.get_model_metadata("digits")["name"] == "digits"
    for binary in (True, False):
        tensor = httpclient.InferInput("input", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows, binary_data=binary)
        wanted = [httpclient.InferRequestedOutput("label", binary_data=binary)]
        result = client.infer("digits", [tensor], outputs=wanted, request_id="t1")
        labels = result.as_numpy("label")
        assert labels is not None and labels.tolist() == [e["label"] for e in SAMPLE["examples"][:3]]
        assert result.as_numpy("probabilities") is None  # filtered out
        response = result.get_response()
        assert response["parameters"]["outpost.route"] == "local"
    # default request: binary outputs for everything
    tensor = httpclient.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    result = client.infer("digits", [tensor])
    assert result.as_numpy("probabilities").shape == (3, 10)
    client.close()


def test_raw_binary_request_mixed_outputs(daemon: DaemonProc) -> None:
    rows = example_rows(2)
    header = json.dumps({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 64],
                    "parameters": {"binary_data_size": rows.nbytes}}],
        "outputs": [{"name": "label", "parameters": {"binary_data": True}},
                    {"name": "probabilities", "parameters": {"binary_data": False}}],
    }).encode()
    with daemon.http() as http:
        response = http.post("/v2/models/digits/infer", content=header + rows.tobytes(),
                             headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 200, response.text
    json_len = int(response.headers["inference-header-content-length"])
    head = json.loads(response.content[:json_len])
    outputs = {o["name"]: o for o in head["outputs"]}
    assert "data" in outputs["probabilities"]
    size = outputs["label"]["parameters"]["binary_data_size"]
    labels = np.frombuffer(response.content[json_len:json_len + size], dtype="<i8")
    assert labels.tolist() == [e["label"] for e in SAMPLE["examples"][:2]]
    assert len(response.content) == json_len + size


def test_gzip_request_body(daemon: DaemonProc) -> None:
    rows = example_rows(1)
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                   "data": rows.flatten().tolist()}]}).encode()
    with daemon.http() as http:
        response = http.post("/v2/models/digits/infer", content=gzip.compress(body),
                             headers={"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("body", "headers", "fragment"),
    [
        (b"{not json", {}, "json"),
        (json.dumps({"inputs": []}).encode(), {}, "input"),
        (json.dumps({"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 64],
                                 "data": [0.0] * 64}]}).encode(), {}, "datatype"),
        (json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 63],
                                 "data": [0.0] * 63}]}).encode(), {}, "shape"),
        (json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                 "data": [0.0] * 60}]}).encode(), {}, "64"),
        (json.dumps({"inputs": [{"name": "nope", "datatype": "FP32", "shape": [1, 64],
                                 "data": [0.0] * 64}]}).encode(), {}, "nope"),
        (json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                 "data": [0.0] * 64}],
                     "outputs": [{"name": "missing"}]}).encode(), {}, "missing"),
        (json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                 "parameters": {"binary_data_size": 256}}]}).encode()
         + b"\0" * 100, {"Inference-Header-Content-Length": "BODYLEN"}, "binary"),
        (b"{}", {"Inference-Header-Content-Length": "999"}, "header"),
    ],
    ids=["bad-json", "missing-input", "wrong-datatype", "wrong-shape", "count-mismatch",
         "unknown-input", "unknown-output", "short-binary", "header-beyond-body"],
)
def test_bad_requests_get_400_with_a_reason(
    daemon: DaemonProc, body: bytes, headers: dict[str, str], fragment: str
) -> None:
    if headers.get("Inference-Header-Content-Length") == "BODYLEN":
        headers = {"Inference-Header-Content-Length": str(body.index(b"\0"))}
    with daemon.http() as http:
        response = http.post("/v2/models/digits/infer", content=body, headers=headers)
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert fragment.lower() in message.lower(), message


def test_unknown_model_version_and_path_are_404(daemon: DaemonProc) -> None:
    with daemon.http() as http:
        for path in ("/v2/models/nope", "/v2/models/nope/ready", "/v2/models/digits/versions/9",
                     "/v2/elsewhere"):
            response = http.get(path)
            assert response.status_code == 404, path
            assert "error" in response.json()
        response = http.post("/v2/models/nope/infer", content=b"{}")
        assert response.status_code == 404
        assert http.get("/v2/models/digits/infer").status_code == 405


def test_oversized_body_is_413_before_reading(tmp_path: Path) -> None:
    from tests.conftest import init_node, start_daemon, write_config

    data_dir = tmp_path / "small"
    init_node(data_dir)
    write_config(data_dir, "node", max_body_bytes=4096)
    daemon = start_daemon(data_dir)
    try:
        with daemon.http() as http:
            response = http.post("/v2/models/digits/infer", content=b"x" * 10_000)
            assert response.status_code == 413
            assert "node.max_body_bytes" in response.json()["error"]
            bomb = gzip.compress(b" " * 100_000)
            response = http.post("/v2/models/digits/infer", content=bomb,
                                 headers={"Content-Encoding": "gzip"})
            assert response.status_code == 413
    finally:
        assert daemon.stop() == 0


def test_metrics_count_requests_and_batches(daemon: DaemonProc) -> None:
    assert infer_json(daemon, example_rows(2)).status_code == 200
    with daemon.http() as http:
        text = http.get("/metrics").text
    assert 'outpost_requests_total{code="200",model="digits",version="1"} 1.0' in text
    assert "outpost_request_seconds_bucket" in text
    assert 'outpost_batch_size_count{model="digits",version="1"}' in text
    assert 'outpost_queue_depth{model="digits",version="1"}' in text



def _gather_model(path: Path) -> Path:
    """``y = table[index]`` over a 4-element table: any INT64 index fits the signature, but one
    outside [-4, 4) makes onnxruntime fail while running — a request that is valid on the wire
    and fails in the model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.arange(4, dtype=np.float32), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "index"], ["y"], axis=0)], "gather",
        [helper.make_tensor_value_info("index", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_a_request_failing_inside_the_model_is_500_and_audited_as_such(
    tmp_path: Path, daemon: DaemonProc
) -> None:
    """The node records its decision to run a request while it runs; when the run then fails,
    the caller gets 500 and a second entry with the same request id says it failed."""
    import hashlib

    from tests.conftest import outpost

    outpost("models", "add", str(_gather_model(tmp_path / "g.onnx")), "--name", "gather",
            data_dir=daemon.data_dir)

    def body(index: int) -> bytes:
        return json.dumps({"inputs": [{"name": "index", "datatype": "INT64", "shape": [1],
                                       "data": [index]}]}).encode()

    with daemon.http() as http:
        good = http.post("/v2/models/gather/infer", content=body(2))
        bad = http.post("/v2/models/gather/infer", content=body(7))
        assert http.get("/v2/health/ready").status_code == 200  # one bad run stops nothing
    assert good.status_code == 200 and good.json()["outputs"][0]["data"] == [2.0]
    assert bad.status_code == 500
    assert "gather:1 failed to run the request" in bad.json()["error"]
    entries = [json.loads(line)["entry"] for line in outpost(
        "audit", "tail", "-n", "20", "--json", data_dir=daemon.data_dir).stdout.splitlines()]
    bad_sha = hashlib.sha256(body(7)).hexdigest()
    runs = [e for e in entries if e["kind"] == "infer" and e.get("input_sha256") == bad_sha]
    assert [e["outcome"] for e in runs] == ["admitted", "error"], runs
    assert runs[0]["detail"]["request"] == runs[1]["detail"]["request"]
    assert "failed to run" in runs[1]["reason"]
    good_runs = [e for e in entries if e["kind"] == "infer"
                 and e.get("input_sha256") == hashlib.sha256(body(2)).hexdigest()]
    assert [e["outcome"] for e in good_runs] == ["admitted"]
    assert "ok:" in outpost("audit", "verify", data_dir=daemon.data_dir).stdout


def test_the_audited_caller_is_the_socket_peer_not_a_header(daemon: DaemonProc) -> None:
    """A local app cannot choose the caller its requests are audited under."""
    from tests.conftest import outpost

    rows = example_rows(1)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                        "data": rows.flatten().tolist()}], "id": "spoof"}
    with daemon.http() as http:
        response = http.post("/v2/models/digits/infer", content=json.dumps(body),
                             headers={"X-Forwarded-For": "10.9.9.9", "Forwarded": "for=10.9.9.9"})
    assert response.status_code == 200
    entries = [json.loads(line)["entry"] for line in outpost(
        "audit", "tail", "-n", "5", "--json", data_dir=daemon.data_dir).stdout.splitlines()]
    callers = {(e.get("caller"), e["detail"].get("source")) for e in entries
               if e["kind"] == "infer"}
    assert callers == {("app:anonymous", "127.0.0.1")}, callers
