"""`make demo`: three sites on this one machine, governed by one policy, end to end.

An edge box (Germany) that cannot run the model itself, an on-prem server (Germany) and a cloud
host (United States) are enrolled by a throw-away authority, federated on loopback with static
seeds, and given the example policy of DESIGN §4 ("personal data stays off the cloud and in its
jurisdiction; public data anywhere"). Labelled requests go in through the edge node; the demo
prints where each ran and why (or why it was refused), verifies every node's audit log and the
checkpoints the others witnessed, and stops everything it started. Everything is done through
the real `outpost` CLI and HTTP endpoints, so each step is also a recipe.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import tomli_w

from models import SAMPLE_MANIFEST, SAMPLE_MODEL
from node.testing import EXAMPLE_POLICY, eventually, free_port

POLICY = EXAMPLE_POLICY

SITES = [  # name, tier, site, jurisdiction, holds the model
    ("edge", "edge", "berlin-shop", "DE", False),
    ("onprem", "onprem", "frankfurt-dc", "DE", True),
    ("cloud", "cloud", "us-east", "US", True),
]


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def outpost(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True,
                            text=True, timeout=120)
    if result.returncode != 0:
        raise SystemExit(f"demo: `outpost {' '.join(args)}` failed:\n{result.stderr}")
    return result.stdout


def wait_ready(proc: subprocess.Popen[str], name: str) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "ready on " in line:
            return line.rsplit("ready on ", 1)[1].strip()
        if not line and proc.poll() is not None:
            break
    raise SystemExit(f"demo: node {name} did not start")


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="outpost-demo-"))
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        return run(root, procs)
    finally:
        say("stopping every node the demo started")
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in procs.items():
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            print(f"  {name}: exited {code}" + (" (killed by the demo)" if code == -9 else ""))
        print(f"  data left in {root} for inspection")


def run(root: Path, procs: dict[str, subprocess.Popen[str]]) -> int:
    ca = root / "authority"
    say("a throw-away federation authority")
    print(outpost("federation", "init", "--dir", str(ca), "--name", "demo").strip())
    ports = {name: free_port() for name, *_ in SITES}
    seed = f"127.0.0.1:{ports['edge']}"
    for name, tier, site, jurisdiction, holds in SITES:
        say(f"node {name}: {tier} at {site} ({jurisdiction})")
        d = root / name
        outpost("init", "--data-dir", str(d), "--name", name, "--no-sample")
        outpost("join", "request", "--data-dir", str(d), "-o", str(root / f"{name}.req"))
        print(outpost("federation", "enroll", str(root / f"{name}.req"), "--ca", str(ca),
                      "--tier", tier, "--site", site, "--jurisdiction", jurisdiction,
                      "-o", str(root / f"{name}.pem")).strip())
        join = ["join", str(root / f"{name}.pem"), "--data-dir", str(d)]
        if name != "edge":
            join += ["--seed", seed]
        print(outpost(*join).strip())
        config = tomllib.loads((d / "outpost.toml").read_text())
        config["federation"].update(preset="local", advert_interval_s=1.0,
                                    checkpoint_interval_s=1.0)
        config["discovery"]["mdns"] = False
        (d / "outpost.toml").write_text(tomli_w.dumps(config))
        if holds:
            print(outpost("models", "add", str(SAMPLE_MODEL), "--name", "digits",
                          "--data-dir", str(d)).strip())
    say("the policy, signed by the authority")
    print(POLICY)
    (root / "policy.cedar").write_text(POLICY)
    outpost("policy", "sign", str(root / "policy.cedar"), "--version", "1", "--ca", str(ca),
            "-o", str(root / "policy.json"))
    urls: dict[str, str] = {}
    for name, *_ in SITES:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "run", "--data-dir", str(root / name),
             "--listen", "127.0.0.1:0", "--peer-listen", f"127.0.0.1:{ports[name]}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        procs[name] = proc
        urls[name] = wait_ready(proc, name)
        _drain(proc)
        print(f"  {name} ready on {urls[name]}")
    print(outpost("policy", "apply", str(root / "policy.json"), "--data-dir", str(root / "edge")).strip())
    say("waiting for membership, adverts and the policy to spread")
    _wait(lambda: all(_status(root / n)["policy_version"] == 1 for n, *_ in SITES), "policy")
    _wait(lambda: sum(1 for p in _peers(root / "edge") if p["models"]) == 2, "adverts")
    print(outpost("peers", "--data-dir", str(root / "edge")))
    example = json.loads(SAMPLE_MANIFEST.read_text())["examples"][0]
    say("labelled requests through the edge node")
    cases: list[tuple[str | None, str | None]] = [
        ("personal", "DE"), ("public", "DE"), (None, None), ("personal", "US")]
    with httpx.Client(base_url=urls["edge"], timeout=30) as http:
        for data_class, data_jurisdiction in cases:
            _request(http, example, data_class, data_jurisdiction)
        say("the on-prem node goes down: personal data must not fall back to the cloud")
        procs["onprem"].send_signal(signal.SIGKILL)
        procs["onprem"].wait()
        for label in ("personal", "public"):
            _request(http, example, label, "DE")
    say("policy explain: why personal data may not go to the cloud")
    print(outpost("policy", "explain", "--data-class", "personal", "--to", "cloud",
                  "--data-dir", str(root / "edge")))
    say("every node's audit log verifies; the checkpoints it witnessed")
    time.sleep(2)
    for name, *_ in SITES:
        print(f"  {name}: " + outpost("audit", "verify", "--data-dir", str(root / name)).strip())
    for name in ("edge", "cloud"):
        for peer in _peers(root / name):
            if peer["node_id"] != name:
                print(f"  {name} holds a checkpoint of {peer['node_id']}'s log at size "
                      f"{peer['checkpoint_size']} (verified, consistency-checked)")
    say("the edge node's audit trail of its forwarding decisions")
    print(outpost("audit", "tail", "-n", "8", "--data-dir", str(root / "edge")))
    return 0


def _request(http: httpx.Client, example: dict[str, Any], data_class: str | None,
             jurisdiction: str | None) -> None:
    params = {}
    if data_class:
        params["outpost.data_class"] = data_class
    if jurisdiction:
        params["outpost.jurisdiction"] = jurisdiction
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                        "data": example["input"]}], "parameters": params}
    label = f"{data_class or '(no class)'} data ({jurisdiction or 'edge jurisdiction'})"
    r = http.post("/v2/models/digits/infer", json=body)
    if r.status_code == 200:
        p = r.json()["parameters"]
        print(f"  {label:<34} -> ran on {p['outpost.served_by']} ({p['outpost.route']}): "
              f"{p.get('outpost.reason', '')}")
    else:
        print(f"  {label:<34} -> refused {r.status_code}: {r.json()['error']}")


def _status(d: Path) -> dict[str, Any]:
    return dict(json.loads(outpost("status", "--json", "--data-dir", str(d))))


def _peers(d: Path) -> list[dict[str, Any]]:
    return list(json.loads(outpost("peers", "--json", "--data-dir", str(d))))


def _wait(check: Any, what: str, timeout: float = 60) -> None:
    try:
        eventually(check, timeout, what, interval=0.5)
    except AssertionError as exc:
        raise SystemExit(f"demo: {exc}") from None


def _drain(proc: subprocess.Popen[str]) -> None:
    import threading

    def pump() -> None:
        assert proc.stdout is not None
        for _ in proc.stdout:
            pass

    threading.Thread(target=pump, daemon=True).start()


if __name__ == "__main__":
    raise SystemExit(main())
