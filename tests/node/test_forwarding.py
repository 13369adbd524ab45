"""Policy-gated forwarding between real daemons on loopback: an edge node (DE) with no model, an
on-prem node (DE) and a cloud node (US), under "personal data stays off the cloud and in its
jurisdiction; public data anywhere". Both ends decide, both ends audit, and a denied peer never
receives a byte of the payload."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from node.testing import (
    EXAMPLE_POLICY,
    NO_PERSONAL_ON_CLOUD,
    PULL_OFF_CLOUD,
    ROOT,
    eventually,
    outpost,
    peers,
    status,
)
from node.testing import Federation as Fed

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# DESIGN §4's example, the receiving side's refusal, and pulls by any node but a cloud one.
POLICY = EXAMPLE_POLICY + NO_PERSONAL_ON_CLOUD + PULL_OFF_CLOUD

SAMPLE = json.loads((ROOT / "models" / "sample" / "digits.json").read_text())


def body(data_class: str | None, marker: float = 0.0) -> dict[str, Any]:
    row = [*SAMPLE["examples"][0]["input"][:63], marker]
    params = {"outpost.data_class": data_class} if data_class else {}
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": row}],
            "parameters": params}


def audit(d: Path) -> list[dict[str, Any]]:
    lines = outpost("audit", "tail", "-n", "1000", "--json", data_dir=d).stdout.splitlines()
    return [json.loads(line)["entry"] for line in lines]


def peer_requests(fed: Fed, name: str) -> float:
    with fed.procs[name].http() as http:
        text = http.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith('outpost_peer_requests_total{route="infer"}'):
            total += float(line.split()[-1])
    return total


@pytest.fixture
def sites(fed: Fed) -> Fed:
    edge = fed.add("edge", tier="edge", jurisdiction="DE")
    fed.add("onprem", tier="onprem", jurisdiction="DE", seed="edge")
    fed.add("cloud", tier="cloud", jurisdiction="US", seed="edge")
    for name in ("onprem", "cloud"):  # the edge box cannot run the model itself
        outpost("models", "add", str(ROOT / "models" / "sample" / "digits.onnx"), "--name",
                "digits", "--version", "1", data_dir=fed.dirs[name])
    policy = fed.tmp / "policy.cedar"
    policy.write_text(POLICY)
    bundle = fed.tmp / "policy.json"
    outpost("policy", "sign", str(policy), "--version", "1", "--ca", str(fed.ca), "-o", str(bundle))
    for name in ("edge", "onprem", "cloud"):
        fed.start(name)
    outpost("policy", "apply", str(bundle), data_dir=edge)
    for name in ("edge", "onprem", "cloud"):
        eventually(lambda n=name: status(fed.dirs[n])["policy_version"] == 1, what=f"policy {name}")
    eventually(lambda: sum(1 for p in peers(edge).values()
                           if p["state"] == "alive" and p["models"]) == 2,
               what="edge sees both model holders")
    return fed


def test_personal_goes_on_prem_public_may_burst_and_nothing_reaches_a_denied_peer(sites: Fed) -> None:
    fed = sites
    edge = fed.procs["edge"]
    before_cloud = peer_requests(fed, "cloud")
    with edge.http() as http:
        for marker in range(5):
            r = http.post("/v2/models/digits/infer", json=body("personal", marker))
            assert r.status_code == 200, r.text
            params = r.json()["parameters"]
            assert params["outpost.served_by"] == "onprem"
            assert params["outpost.route"] == "forwarded"
        # no class: the default class never leaves and the edge cannot serve it
        r = http.post("/v2/models/digits/infer", json=body(None))
        assert r.status_code == 403, r.text
        assert "restricted" in r.json()["error"]
        r = http.post("/v2/models/digits/infer", json=body("public"))
        assert r.status_code == 200
        assert r.json()["parameters"]["outpost.served_by"] in ("onprem", "cloud")
    assert peer_requests(fed, "cloud") - before_cloud <= 1  # at most the public one
    # on-prem goes away: personal data is refused, never sent to the cloud
    fed.procs["onprem"].signal(signal.SIGKILL)
    fed.procs["onprem"].wait()
    before_cloud = peer_requests(fed, "cloud")
    with edge.http(timeout=60) as http:
        for marker in range(5):
            r = http.post("/v2/models/digits/infer", json=body("personal", 100 + marker))
            assert r.status_code in (403, 503), r.text
        r = http.post("/v2/models/digits/infer", json=body("public"))
        assert r.status_code == 200, r.text
        assert r.json()["parameters"]["outpost.served_by"] == "cloud"
    assert peer_requests(fed, "cloud") - before_cloud == 1  # only the public request arrived
    cloud_infers = [e for e in audit(fed.dirs["cloud"]) if e["kind"] == "infer"]
    assert all(e["data_class"] != "personal" for e in cloud_infers)


def test_receiver_refuses_a_forged_forward_and_audits_match(sites: Fed) -> None:
    from tests.node.test_peer_endpoint import client_ctx, peer_url

    fed = sites
    # the edge node's own certificate, bypassing its policy: the cloud must refuse
    url = peer_url(fed.dirs["cloud"])
    with httpx.Client(verify=client_ctx(fed.dirs["edge"]), timeout=10) as http:
        forged = body("personal")
        forged["parameters"]["outpost.jurisdiction"] = "DE"
        r = http.post(f"{url}/peer/v1/infer/digits", json=forged, headers={"outpost-hops": "1"})
    assert r.status_code == 403, r.text
    assert "no-personal-on-cloud" in r.text or "cloud" in r.json()["error"]
    refused = [e for e in audit(fed.dirs["cloud"]) if e["kind"] == "infer"
               and e.get("outcome") == "denied"]
    assert refused and refused[-1]["caller"] == "node:edge"
    # a genuine forward is on both records, linked by the request id
    with fed.procs["edge"].http() as http:
        r = http.post("/v2/models/digits/infer", json=body("personal", 7.0))
    assert r.status_code == 200, r.text
    sent = [e for e in audit(fed.dirs["edge"]) if e["kind"] == "forward"][-1]
    assert sent["decision"] == "allowed" and sent["peer"] == "onprem"
    assert sent["policy_version"] == 1 and sent["data_class"] == "personal"
    served = [e for e in audit(fed.dirs["onprem"]) if e["kind"] == "infer"
              and e.get("caller") == "app:anonymous via node:edge"][-1]
    assert served["detail"]["request"] == sent["detail"]["request"]
    assert served["outcome"] == "admitted" and served["data_class"] == "personal"
    denied = outpost("policy", "explain", "--data-class", "personal", "--to", "cloud",
                     "--json", data_dir=fed.dirs["edge"], check=False)
    assert denied.returncode == 1  # deny exits 1, for scripts
    explained = json.loads(denied.stdout)
    assert explained["allowed"] is False
    explained = json.loads(outpost("policy", "explain", "--data-class", "personal", "--to",
                                   "onprem", "--json", data_dir=fed.dirs["edge"]).stdout)
    assert explained["allowed"] is True and "personal-stays-home" in explained["policies"]


def test_models_pull_is_policy_gated_resumable_and_verified(sites: Fed) -> None:
    fed = sites
    edge, cloud = fed.dirs["edge"], fed.dirs["cloud"]
    digits = (ROOT / "models" / "sample" / "digits.onnx").read_bytes()
    import hashlib

    sha = hashlib.sha256(digits).hexdigest()
    # a corrupt partial file from an earlier attempt is detected and discarded, not loaded
    partial = edge / "blobs" / f".pull-{sha}"
    partial.write_bytes(b"\0" * (len(digits) // 2))
    result = outpost("models", "pull", "digits", "--from", "onprem", data_dir=edge, check=False)
    assert result.returncode == 1 and "corrupt" in result.stderr
    assert not partial.exists()
    # a genuine half from an interrupted transfer is resumed with a Range request
    partial.write_bytes(digits[: len(digits) // 2])
    pulled = json.loads(outpost("models", "pull", "digits", "--from", "onprem", "--json",
                                data_dir=edge).stdout)
    assert pulled["sha256"] == sha and pulled["source"] == "onprem"
    with fed.procs["edge"].http() as http:
        r = http.post("/v2/models/digits/infer", json=body(None))
    assert r.status_code == 200 and r.json()["parameters"]["outpost.route"] == "local"
    served = [e for e in audit(fed.dirs["onprem"]) if e["kind"] == "model.pull"]
    assert served and served[-1]["caller"] == "node:edge" and served[-1]["detail"]["offset"] > 0
    assert [e for e in audit(edge) if e["kind"] == "model.pull"][-1]["peer"] == "onprem"
    # the cloud may not pull models off-cloud under this policy
    result = outpost("models", "pull", "digits", "--from", "onprem", data_dir=cloud, check=False)
    assert result.returncode == 1 and "policy" in result.stderr
