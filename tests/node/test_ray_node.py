"""A Ray-backed node (`[ray] address = "local"`): the app endpoint's conformance tests run
unchanged against it, status and readiness report the cluster and a degraded state, a
replica killed mid-stream costs no request, and a forwarded request lands on a Ray-backed peer.

Each daemon starts its own local Ray (one per module here: ~10 s), so the endpoint tests
share one node; they are imported from test_endpoint and run against it as they are.
Skipped until node/config.py has the `[ray]` section (issue 6).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from node.config import Config
from tests.conftest import ROOT, DaemonProc, init_node, outpost, start_daemon, write_config
from tests.fedharness import Fed, eventually, peers, status
from tests.node.test_endpoint import (  # noqa: F401  (collected here, against a Ray node)
    example_rows,
    infer_json,
    test_bad_requests_get_400_with_a_reason,
    test_gzip_request_body,
    test_health_server_and_model_metadata,
    test_json_inference_is_correct_and_labelled,
    test_raw_binary_request_mixed_outputs,
    test_tritonclient_binary_and_json,
    test_unknown_model_version_and_path_are_404,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.ray,
    pytest.mark.skipif(not hasattr(Config(), "ray"), reason="node/config.py has no [ray] yet"),
]

RAY_NODE = {"address": "local", "num_cpus": 2, "num_cpus_per_replica": 0.5,
            "reconnect_interval_s": 1.0}


@pytest.fixture(scope="module")
def ray_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    data_dir = tmp_path_factory.mktemp("raynode") / "node"
    init_node(data_dir)
    write_config(data_dir, "ray", **RAY_NODE)
    proc = start_daemon(data_dir, timeout=180)
    yield proc
    assert proc.stop() == 0


@pytest.fixture
def daemon(ray_daemon: DaemonProc) -> DaemonProc:
    return ray_daemon


def node_status(daemon: DaemonProc) -> dict[str, Any]:
    return json.loads(outpost("status", "--json", data_dir=daemon.data_dir).stdout)


def test_status_and_readiness_show_the_cluster(daemon: DaemonProc) -> None:
    runtime = node_status(daemon)["runtime"]
    assert runtime["backend"] == "ray" and runtime["connected"] and not runtime["degraded"]
    assert runtime["cluster"]["cpus"] == 2 and runtime["cluster"]["replicas"] >= 1
    assert runtime["models"][0]["mode"] == "ray"
    with daemon.http() as http:
        ready = http.get("/v2/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "degraded": False, "reason": None, "since": None}
    human = outpost("status", data_dir=daemon.data_dir).stdout
    assert "runtime: ray at 'local'" in human and "DEGRADED" not in human


def test_metrics_and_audit_as_in_process(daemon: DaemonProc) -> None:
    assert infer_json(daemon, example_rows(2)).status_code == 200
    with daemon.http() as http:
        text = http.get("/metrics").text
    assert 'outpost_requests_total{code="200",model="digits",version="1"}' in text
    assert 'outpost_batch_size_count{model="digits",version="1"}' in text
    lines = outpost("audit", "tail", "-n", "5", "--json", data_dir=daemon.data_dir).stdout
    infers = [json.loads(x)["entry"] for x in lines.splitlines()
              if json.loads(x)["entry"]["kind"] == "infer"]
    assert infers and infers[-1]["outcome"] == "admitted" and infers[-1]["model"] == "digits"


def test_a_replica_killed_mid_stream_costs_no_request(daemon: DaemonProc) -> None:
    replicas = [p for p in psutil.Process(daemon.proc.pid).children(recursive=True)
                if "ray::Replica" in " ".join(p.cmdline())]
    assert replicas, "no replica process found under the daemon"
    codes = []
    for i in range(60):
        if i == 10:
            for p in replicas:
                p.kill()
        codes.append(infer_json(daemon, example_rows(1)).status_code)
        time.sleep(0.02)
    assert codes == [200] * 60
    eventually(lambda: node_status(daemon)["runtime"]["models"][0]["mode"] == "ray",
               timeout=60, what="a new replica")


def test_a_forwarded_request_lands_on_a_ray_backed_peer(fed: Fed) -> None:
    from tests.node.test_forwarding import POLICY, body

    edge = fed.add("edge", tier="edge", jurisdiction="DE")
    cloud = fed.add("cloud", tier="cloud", jurisdiction="DE", seed="edge")
    write_config(cloud, "ray", **RAY_NODE)
    outpost("models", "add", str(ROOT / "models" / "sample" / "digits.onnx"), "--name",
            "digits", "--version", "1", data_dir=cloud)  # the edge box has no model
    policy, bundle = fed.tmp / "policy.cedar", fed.tmp / "policy.json"
    policy.write_text(POLICY)
    outpost("policy", "sign", str(policy), "--version", "1", "--ca", str(fed.ca), "-o",
            str(bundle))
    fed.start("edge")
    fed.procs["cloud"] = start_daemon(cloud, "--peer-listen",
                                      f"127.0.0.1:{fed.ports['cloud']}", timeout=180)
    outpost("policy", "apply", str(bundle), data_dir=edge)
    eventually(lambda: status(cloud)["policy_version"] == 1, what="policy on the cloud node")
    seen = eventually(lambda: peers(edge).get("cloud", {}).get("models") and peers(edge)["cloud"],
                      what="edge sees the cloud node's model")
    assert seen["state"] == "alive"
    with fed.procs["edge"].http() as http:
        r = http.post("/v2/models/digits/infer", json=body("public"))
    assert r.status_code == 200, r.text
    params = r.json()["parameters"]
    assert params["outpost.served_by"] == "cloud" and params["outpost.route"] == "forwarded"
    runtime = status(cloud)["runtime"]
    assert runtime["backend"] == "ray" and runtime["models"][0]["mode"] == "ray"
    served = [json.loads(x)["entry"] for x in outpost(
        "audit", "tail", "-n", "50", "--json", data_dir=cloud).stdout.splitlines()]
    assert any(e["kind"] == "infer" and e.get("caller") == "app:anonymous via node:edge"
               for e in served)
