"""W3C trace context: an app's traceparent is accepted, carried across a forward and arrives at
the executor (its audit entry carries the trace id), and the app gets its request id back."""

from __future__ import annotations

import json

import pytest

from node import trace
from tests.conftest import ROOT, outpost
from tests.fedharness import Fed, eventually, peers

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def test_parse_accepts_only_well_formed_version_00() -> None:
    context = trace.parse(PARENT)
    assert context is not None and context.trace_id == TRACE_ID
    child = context.child()
    assert child.trace_id == TRACE_ID and child.parent_id != context.parent_id
    assert trace.parse(child.header()) == child
    for bad in (None, "", "garbage", f"01-{TRACE_ID}-00f067aa0ba902b7-01",
                f"00-{'0' * 32}-00f067aa0ba902b7-01", f"00-{TRACE_ID}-{'0' * 16}-01",
                f"00-{TRACE_ID}-00f067aa0ba902b7"):
        assert trace.parse(bad) is None


@pytest.mark.integration
@pytest.mark.slow
def test_traceparent_arrives_at_the_executor_of_a_forward(fed: Fed, sample_digits: dict) -> None:
    policy = fed.tmp / "p.cedar"
    policy.write_text('permit(principal, action == Action::"infer", resource);\n'
                      'permit(principal, action == Action::"forward", resource);\n')
    outpost("policy", "sign", str(policy), "--version", "1", "--ca", str(fed.ca), "-o",
            str(fed.tmp / "b.json"))
    edge = fed.add("edge")
    prem = fed.add("prem", tier="onprem", seed="edge")
    outpost("models", "add", str(ROOT / "models" / "sample" / "digits.onnx"), "--name",
            "digits", data_dir=prem)
    for d in (edge, prem):
        outpost("apply", str(fed.tmp / "b.json"), data_dir=d)
    for name in fed.dirs:
        fed.start(name)
    eventually(lambda: any(p["models"] for p in peers(edge).values()), what="prem's advert")
    example = sample_digits["examples"][0]  # type: ignore[index]
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                        "data": example["input"]}],
            "parameters": {"outpost.data_class": "public"}}
    with fed.procs["edge"].http() as http:
        response = http.post("/v2/models/digits/infer", json=body,
                             headers={"traceparent": PARENT})
    assert response.status_code == 200, response.text
    request_id = response.headers["outpost-request-id"]
    params = response.json()["parameters"]
    assert params["outpost.route"] == "forwarded" and params["outpost.served_by"] == "prem"
    assert params["outpost.request_id"] == request_id

    def entries(d: object) -> list[dict]:
        return [json.loads(line)["entry"] for line in
                outpost("audit", "tail", "-n", "50", "--json", data_dir=d).stdout.splitlines()]

    served = [e for e in entries(prem) if e["kind"] == "infer"
              and e["detail"].get("request") == request_id]
    assert served and served[0]["detail"]["trace"] == TRACE_ID
    sent = [e for e in entries(edge) if e["kind"] == "forward"
            and e["detail"].get("request") == request_id]
    assert sent and sent[0]["detail"]["trace"] == TRACE_ID
    # a malformed traceparent is ignored, the request still served
    with fed.procs["edge"].http() as http:
        response = http.post("/v2/models/digits/infer", json=body,
                             headers={"traceparent": "not-a-trace"})
    assert response.status_code == 200
    last = [e for e in entries(prem) if e["kind"] == "infer"][-1]
    assert "trace" not in last["detail"]
