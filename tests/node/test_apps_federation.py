"""Per-app policy and the app in the trail across a forward, on a real two-node federation on
loopback: an edge node with no model forwards to an on-prem node that has it. Policy lets only
apps whose token says purpose == diagnosis have personal data run, and forbids one app outright;
the on-prem node judges a forwarded request with the same App principal the edge saw."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, outpost
from tests.fedharness import Fed, eventually, peers, status
from tests.node.test_apps import audit, metric

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POLICY = """
@id("apps-by-purpose")
permit(principal is App, action == Action::"infer", resource)
  when { resource.data_class != "personal"
         || (principal has purpose && principal.purpose == "diagnosis") };
@id("no-intruder")
forbid(principal == App::"intruder", action == Action::"infer", resource);
@id("apps-only-via-edge-nodes")
forbid(principal is App, action == Action::"infer", resource)
  when { context has via && context.via.tier == "cloud" };
@id("forward-in-jurisdiction")
permit(principal, action == Action::"forward", resource)
  when { context.target.jurisdiction == resource.jurisdiction };
"""

SAMPLE = json.loads((ROOT / "models" / "sample" / "digits.json").read_text())


def body(data_class: str) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                        "data": SAMPLE["examples"][0]["input"]}],
            "parameters": {"outpost.data_class": data_class}}


def token(d: Path, name: str, *attrs: str) -> str:
    args = [a for attr in attrs for a in ("--attr", attr)]
    return outpost("token", "add", name, *args, data_dir=d).stdout.strip()


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fed, dict[str, str]]]:
    fed = Fed(tmp_path_factory.mktemp("apps-fed"))
    edge = fed.add("edge", tier="edge", jurisdiction="DE")
    onprem = fed.add("onprem", tier="onprem", jurisdiction="DE", seed="edge")
    outpost("models", "add", str(ROOT / "models" / "sample" / "digits.onnx"), "--name", "digits",
            "--version", "1", data_dir=onprem)
    secrets = {
        "camera-svc": token(edge, "camera-svc", "purpose=diagnosis"),
        "intruder": token(edge, "intruder", "purpose=diagnosis"),
        "diag": token(onprem, "diag", "purpose=diagnosis", "team=radiology"),
        "marketing": token(onprem, "marketing", "purpose=marketing"),
    }
    policy = fed.tmp / "policy.cedar"
    policy.write_text(POLICY)
    bundle = fed.tmp / "policy.json"
    outpost("policy", "sign", str(policy), "--version", "1", "--ca", str(fed.ca), "-o", str(bundle))
    try:
        for name in ("edge", "onprem"):
            fed.start(name)
        outpost("policy", "apply", str(bundle), data_dir=edge)
        for name in ("edge", "onprem"):
            eventually(lambda n=name: status(fed.dirs[n])["policy_version"] == 1,
                       what=f"policy on {name}")
        eventually(lambda: any(p["state"] == "alive" and p["models"]
                               for p in peers(edge).values()), what="edge sees onprem's model")
        yield fed, secrets
    finally:
        fed.stop_all()


def post(fed: Fed, node: str, secret: str | None, data_class: str) -> Any:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    with fed.procs[node].http() as http:
        return http.post("/v2/models/digits/infer", json=body(data_class), headers=headers)


def test_per_app_policy_allows_one_app_and_refuses_another_on_the_same_model(
        sites: tuple[Fed, dict[str, str]]) -> None:
    fed, secrets = sites
    r = post(fed, "onprem", secrets["diag"], "personal")
    assert r.status_code == 200, r.text
    r = post(fed, "onprem", secrets["marketing"], "personal")
    assert r.status_code == 403, r.text
    assert 'App marketing' in r.json()["error"] and "no policy permits it" in r.json()["error"]
    assert post(fed, "onprem", secrets["marketing"], "public").status_code == 200
    assert post(fed, "onprem", None, "personal").status_code == 403  # anonymous: no purpose
    assert post(fed, "onprem", None, "public").status_code == 200
    entries = [e for e in audit(fed.dirs["onprem"]) if e["kind"] == "infer"]
    denied = [e for e in entries if e.get("outcome") == "denied"]
    assert [e["caller"] for e in denied] == ["app:marketing", "app:anonymous"]
    assert denied[0]["detail"]["app"] == "marketing" and denied[0]["detail"]["token"]
    assert metric(fed.procs["onprem"], "marketing", "denied") == 1
    assert metric(fed.procs["onprem"], "marketing", "ok") == 1
    onprem = fed.dirs["onprem"]
    denied = outpost("policy", "explain", "--data-class", "personal", "--app",
                     "marketing", "--json", data_dir=onprem, check=False)
    assert denied.returncode == 1  # a deny exits 1, for scripts
    explained = json.loads(denied.stdout)
    assert explained["allowed"] is False and explained["app"]["attrs"] == {"purpose": "marketing"}
    explained = json.loads(outpost("policy", "explain", "--data-class", "personal", "--app",
                                   "diag", "--json", data_dir=onprem).stdout)
    assert explained["allowed"] is True and explained["infer"]["policies"] == ["apps-by-purpose"]
    text = outpost("policy", "explain", "--data-class", "personal", "--app", "diag",
                   data_dir=onprem).stdout
    assert 'App::"diag" (purpose=diagnosis, team=radiology)' in text and "ALLOW" in text
    unknown = outpost("policy", "explain", "--data-class", "personal", "--app", "nobody",
                      data_dir=onprem, check=False)
    assert unknown.returncode == 1 and "no active token" in unknown.stderr


def test_the_app_is_named_at_both_ends_of_a_forward_and_judged_at_the_executor(
        sites: tuple[Fed, dict[str, str]]) -> None:
    fed, secrets = sites
    edge, onprem = fed.dirs["edge"], fed.dirs["onprem"]
    r = post(fed, "edge", secrets["camera-svc"], "personal")
    assert r.status_code == 200, r.text
    assert r.json()["parameters"]["outpost.served_by"] == "onprem"
    sent = [e for e in audit(edge, "--app", "camera-svc") if e["kind"] == "forward"]
    assert len(sent) == 1 and sent[0]["caller"] == "app:camera-svc"
    assert sent[0]["peer"] == "onprem" and sent[0]["detail"]["source"] == "127.0.0.1"
    served = [e for e in audit(onprem, "--app", "camera-svc") if e["kind"] == "infer"]
    assert len(served) == 1 and served[0]["caller"] == "app:camera-svc via node:edge"
    assert served[0]["detail"]["via"] == "edge" and served[0]["outcome"] == "admitted"
    assert served[0]["detail"]["request"] == sent[0]["detail"]["request"]
    assert served[0]["detail"]["token"] == sent[0]["detail"]["token"]
    # the edge's forward policy lets it go; the executor's infer re-check sees App::"intruder"
    r = post(fed, "edge", secrets["intruder"], "personal")
    assert r.status_code == 403, r.text
    assert "no-intruder" in r.json()["error"] and "App intruder" in r.json()["error"]
    refused = [e for e in audit(onprem, "--app", "intruder") if e["kind"] == "infer"]
    assert refused[-1]["outcome"] == "denied"
    assert refused[-1]["caller"] == "app:intruder via node:edge"
    # an anonymous request forwarded is still an app at the executor, not the edge node
    r = post(fed, "edge", None, "public")
    assert r.status_code == 200, r.text
    anonymous = [e for e in audit(onprem, "--app", "anonymous") if e["kind"] == "infer"]
    assert anonymous[-1]["caller"] == "app:anonymous via node:edge"
