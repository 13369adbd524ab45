"""Every metric name the README documents is on /metrics after a request, also on the
metrics-only listener; outcomes and placements are counted per model and version."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, outpost, write_config
from tests.fedharness import Fed, eventually, free_port, status

pytestmark = pytest.mark.integration

POLICY = 'permit(principal, action == Action::"infer", resource);\n'


def readme_metrics() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Metrics", 1)[1].split("\n## ", 1)[0]
    names = re.findall(r"^\| `([a-z_]+)`", section, flags=re.M)
    assert len(names) > 15
    return names


def exposed(text: str, name: str) -> bool:
    """A sample of ``name``, or its TYPE line (a labelled metric nothing has counted yet,
    such as forwards on a lone node)."""
    return any(line.startswith(name) for line in text.splitlines()) or \
        f"# TYPE {name} " in text


def sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if (line.startswith((name + "{", name + " "))
                and all(f'{k}="{v}"' in line for k, v in labels.items())):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_readme_metric_names_exist_after_a_request(fed: Fed, sample_digits: dict) -> None:
    node = fed.add("metrics-a")
    outpost("models", "add", str(ROOT / "models" / "sample" / "digits.onnx"), "--name",
            "digits", data_dir=node)
    metrics_port = free_port()
    write_config(node, "node", metrics_listen=f"127.0.0.1:{metrics_port}")
    (fed.tmp / "p.cedar").write_text(POLICY)
    outpost("policy", "sign", str(fed.tmp / "p.cedar"), "--version", "1", "--ca", str(fed.ca),
            "-o", str(fed.tmp / "b.json"))
    outpost("federation", "revoke", "nobody", "--ca", str(fed.ca), "-o", str(fed.tmp / "c.pem"))
    outpost("apply", str(fed.tmp / "b.json"), data_dir=node)
    outpost("apply", str(fed.tmp / "c.pem"), data_dir=node)
    daemon = fed.start("metrics-a")
    eventually(lambda: status(node)["ready"], what="ready")
    example = sample_digits["examples"][0]  # type: ignore[index]
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                        "data": example["input"]}]}
    with daemon.http() as http:
        assert http.post("/v2/models/digits/infer", json=body).status_code == 200
        assert http.post("/v2/models/digits/infer", json={"inputs": []}).status_code == 400
        assert http.post("/v2/models/nope/infer", json=body).status_code == 404
    scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics")
    assert scrape.status_code == 200
    text = scrape.text
    missing = [name for name in readme_metrics() if not exposed(text, name)]
    assert missing == [], missing
    # the metrics listener serves nothing else
    assert httpx.get(f"http://127.0.0.1:{metrics_port}/v2/models").status_code == 404
    # counted per model and version, by outcome; placements counted
    assert sample(text, "outpost_inference_requests_total", model="digits", version="1",
                  outcome="success") == 1
    assert sample(text, "outpost_inference_requests_total", model="digits",
                  outcome="failure") == 1
    assert "nope" not in text  # an app-chosen name never becomes a label value
    assert sample(text, "outpost_inference_requests_total", model="_unknown",
                  outcome="failure") == 1
    assert sample(text, "outpost_placements_total", route="local") == 1
    assert sample(text, "outpost_inference_request_duration_seconds_count", model="digits",
                  version="1") == 1
    assert sample(text, "outpost_inference_compute_duration_seconds_count", model="digits",
                  version="1") == 1
    assert sample(text, "outpost_policy_version") == 1
    assert sample(text, "outpost_revocation_version") == 1
    assert sample(text, "outpost_members", state="alive") == 1
    assert sample(text, "outpost_audit_entries") >= 3
    assert sample(text, "outpost_certificate_expiring") == 0
    assert sample(text, "outpost_audit_append_duration_seconds_count") >= 1
    # the app endpoint serves the same registry
    with daemon.http() as http:
        assert "outpost_build_info" in http.get("/metrics").text


def test_metrics_listen_in_use_is_a_startup_failure(node_dir: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        write_config(node_dir, "node", metrics_listen=f"127.0.0.1:{port}")
        result = outpost("run", "--listen", "127.0.0.1:0", data_dir=node_dir, check=False)
    assert result.returncode == 3
    assert "metrics-listen" in result.stderr or "metrics_listen" in result.stderr
