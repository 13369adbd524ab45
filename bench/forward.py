"""Forwarding benchmark (DESIGN §9): one-hop forward overhead, policy decision time, and the
throughput of an edge node that sheds load to two peers — real daemons on loopback, one run.

Run from the repository root::

    python bench/forward.py                    # ~3.5 min on a 2-core box
    python bench/forward.py --quick            # shorter cells, fewer rounds (~1.5 min)
    python bench/forward.py --profile always   # py-spy the edge and the executor even on PASS
    python bench/forward.py --wait-quiet 60    # first wait (<= 60 s) for a quiet machine

What it builds (through the real CLI, as ``tests/fedharness.py`` does): a throw-away federation
authority and three enrolled daemons on loopback (``preset = "local"``, ``discovery.mdns =
false``, seeds pointing at the edge):

* ``edge``   — tier edge, ``placement.local_queue_limit = 2``; no model at first;
* ``core-a`` — tier onprem, holds the sample model ``digits``;
* ``core-b`` — tier onprem; gets ``digits`` (live, ``outpost models add``) for part 3.

Policy: the DESIGN §4 example (``infer`` anywhere; ``forward`` of ``public`` data anywhere;
``personal`` data only within its jurisdiction and off the cloud). Every request carries
``outpost.data_class = public``.

1. **One-hop forward overhead**: concurrency 1, keep-alive, ``digits`` batch 1, (a) straight to
   ``core-a``'s app endpoint (served locally) and (b) to ``edge``, which does not hold the
   model and forwards to ``core-a`` over its warm mutual-TLS connection; overhead = p50(b) -
   p50(a) (budget <= 1.5 ms), for binary and JSON bodies. Two diagnostic cells split it: this
   process calling ``core-a``'s peer endpoint directly over one warm mTLS connection with the
   edge's certificate and relabelled body, once with a raw ssl socket (the executor's side of a
   hop) and once with ``httpx.AsyncClient`` set up as ``node/forward.py`` does (what the client
   stack adds). The four cells alternate (order reversed every other round). Both paths include
   the executor's durable audit append; (b) also includes the edge's durable ``forward`` entry
   (DESIGN §6: "every choice is audited on both ends"). In-process, the cost of verifying one
   peer's advert (``federation/items.py`` ``read_advert``), which the router repeats per peer on
   every request, is measured with this federation's certificates. When a forward budget line
   misses (or with ``--profile always``) the edge and ``core-a`` are recorded with py-spy at
   c=1 and the hottest functions are printed with an estimate of ms per request.
2. **Policy decision**: ``PolicyEngine.decide_forward`` warm, with ``bench/policy.py``'s
   example policy and attributes: a full cedarpy evaluation every call (``cache_size=0``,
   judged against the budget <= 100 µs p50) and the cached path the daemon normally takes.
3. **Shedding throughput**: ``digits`` is added to ``edge`` and ``core-b``; concurrency 32 on
   ``edge`` with (S) the allow policy in force, so that at ``local_queue_limit`` queued
   requests it sheds to ``core-a``/``core-b``, versus (A) a newer bundle that forbids
   ``forward`` (the edge alone: the same daemon, peers present but not allowed). S and A
   alternate (S A A S S A); the median round is shown with where the requests ran (from the
   edge's ``/metrics``) and the CPU each process used. Repeated for each ``--limits`` value
   (default 2, then 1: the edge restarts with the new limit). Finally one cell with both peers
   stopped (information only; skip with ``--no-peers-stopped``).

Nothing is asserted: figures and PASS/MISS lines are printed, everything goes to
``bench/out/forward.json`` (py-spy stacks to ``bench/out/forward-profile-*.txt``). On a 2-core
machine every daemon and the load generator share the cores, so shedding to peers on the same
machine cannot add CPU: part 3 shows what the forwarding path costs the edge when the machine,
not the edge, is the bottleneck. Check ``other%`` (CPU used outside the benchmark) before
trusting absolute figures.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import numpy as np  # noqa: E402
import tomli_w  # noqa: E402
from serve import (  # noqa: E402
    Server,
    _sys_busy,
    _wait_ready,
    fsync_probe,
    machine_info,
    pcts,
    source_fingerprint,
    summarise_profile,
)

from models import SAMPLE_MANIFEST, SAMPLE_MODEL  # noqa: E402
from models.codec import decode_infer_response, encode_infer_request  # noqa: E402
from node.testing import EXAMPLE_POLICY, eventually, free_port  # noqa: E402

PY = sys.executable
MODEL = "digits"
BUDGET_FORWARD_MS = 1.5
BUDGET_POLICY_US = 100.0
QUEUE_LIMIT = 2
BODIES = ("binary", "json")

POLICY_ALLOW = EXAMPLE_POLICY
POLICY_DENY = """\
@id("infer-anywhere")
permit(principal, action == Action::"infer", resource);
@id("edge-alone")
forbid(principal, action == Action::"forward", resource);
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- federation through the CLI ------------------------------------------------------------------


def cli(*args: str, data_dir: Path | None = None, timeout: float = 120) -> str:
    argv = [PY, "-m", "cli.main", *args]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"outpost {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


class Node:
    def __init__(self, name: str, tier: str, data_dir: Path, peer_port: int) -> None:
        self.name, self.tier, self.dir, self.peer_port = name, tier, data_dir, peer_port
        self.server: Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port


def enroll(tmp: Path, ca: Path, name: str, tier: str, seed: int | None,
           placement: dict[str, Any] | None = None) -> Node:
    d = tmp / name
    cli("init", "--name", name, "--no-sample", data_dir=d)
    cli("join", "request", "-o", str(tmp / f"{name}.req"), data_dir=d)
    cli("federation", "enroll", str(tmp / f"{name}.req"), "--ca", str(ca), "--tier", tier,
        "--site", f"site-{name}", "--jurisdiction", "DE", "-o", str(tmp / f"{name}.pem"))
    cli("join", str(tmp / f"{name}.pem"), data_dir=d)
    node = Node(name, tier, d, free_port())
    path = d / "outpost.toml"
    raw = tomllib.loads(path.read_text())
    raw["federation"].update({"preset": "local", "advert_interval_s": 1.0,
                              "checkpoint_interval_s": 1.0,
                              "seeds": [f"127.0.0.1:{seed}"] if seed else []})
    raw["discovery"] = {"mdns": False}
    if placement:
        raw.setdefault("placement", {}).update(placement)
    path.write_text(tomli_w.dumps(raw))
    return node


def start(node: Node, tmp: Path) -> None:
    out = tmp / f"{node.name}.log"
    with open(out, "wb") as o:
        proc = subprocess.Popen(
            [PY, "-m", "cli.main", "run", "--data-dir", str(node.dir), "--listen", "127.0.0.1:0",
             "--peer-listen", f"127.0.0.1:{node.peer_port}"],
            stdin=subprocess.DEVNULL, stdout=o, stderr=subprocess.STDOUT, cwd=ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    line = _wait_ready(proc, out, "ready on http://", 90)
    node.server = Server(node.name, proc, int(line.rsplit(":", 1)[1].strip()), out)
    node.server.refresh_tree()


def status(node: Node) -> dict[str, Any]:
    from node.ops import node_status

    return node_status(node.dir)


def peer_rows(node: Node) -> list[dict[str, Any]]:
    from node.ops_federation import peers

    return peers(node.dir)


def wait_for(check: Any, what: str, timeout: float = 45.0) -> Any:
    """Until ``check()`` holds; its errors (a daemon still starting) count as "not yet"."""
    return eventually(check, timeout, what, interval=0.3, retry_on=(Exception,))


def holders(edge: Node) -> set[str]:
    """Other members the edge sees alive and holding the model."""
    return {r["node_id"] for r in peer_rows(edge)
            if r["node_id"] != edge.name and r.get("state") == "alive"
            and any(m.get("name") == MODEL for m in r.get("models") or [])}


def metrics(node: Node) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("outpost_requests_total", "outpost_forwards_total",
                            "outpost_placements_total", "outpost_peer_requests_total")):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def where_ran(d: dict[str, float]) -> dict[str, float]:
    """From an edge /metrics delta: requests served here (200) and forwarded per target (200)."""
    out: dict[str, float] = {"local": 0.0}
    for key, value in d.items():
        if key.startswith("outpost_requests_total") and 'code="200"' in key:
            out["local"] += value
        elif key.startswith("outpost_forwards_total"):
            target = re.search(r'target="([^"]*)"', key)
            outcome = re.search(r'outcome="([^"]*)"', key)
            name = f"-> {target.group(1) if target else '?'}"
            if outcome and outcome.group(1) != "200":
                name += f" ({outcome.group(1)})"
            out[name] = out.get(name, 0.0) + value
    return out


# -- requests ------------------------------------------------------------------------------------


def sample_input() -> np.ndarray:
    example = json.loads(SAMPLE_MANIFEST.read_text())["examples"][0]["input"]
    return np.asarray([example], dtype=np.float32)


def request_bytes(x: np.ndarray, body: str) -> tuple[bytes, bytes, int | None]:
    binary = body == "binary"
    payload, header_len = encode_infer_request(
        {"input": x}, binary_inputs=binary, binary_data_output=binary,
        parameters={"outpost.data_class": "public"})
    head = (f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Length: {len(payload)}\r\n")
    if header_len is not None:
        head += f"Inference-Header-Content-Length: {header_len}\r\n"
    return head.encode() + b"\r\n" + payload, payload, header_len


def probe(node: Node, x: np.ndarray, body: str, expected: np.ndarray) -> dict[str, Any]:
    """One request; the answer's outputs are checked against in-process onnxruntime."""
    _, payload, header_len = request_bytes(x, body)
    headers = {"Content-Length": str(len(payload))}
    if header_len is not None:
        headers["Inference-Header-Content-Length"] = str(header_len)
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=30)
    try:
        conn.request("POST", f"/v2/models/{MODEL}/infer", body=payload, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            return {"ok": False, "error": f"HTTP {resp.status}: {data[:300]!r}"}
        hl = resp.getheader("inference-header-content-length")
        outputs, doc = decode_infer_response(data, int(hl) if hl else None)
    finally:
        conn.close()
    got = next(iter(outputs.values()))
    params = doc.get("parameters") or {}
    return {"ok": bool(np.allclose(got, expected, rtol=1e-4, atol=1e-6)),
            "served_by": params.get("outpost.served_by"), "route": params.get("outpost.route"),
            "reason": params.get("outpost.reason")}


# -- load cells ----------------------------------------------------------------------------------


def run_cell(port: int, request_file: Path, conc: int, tmp: Path, watch: list[Server],
             duration: float, requests: int, warmup_requests: int = 200,
             warmup_s: float = 0.5) -> dict[str, Any]:
    """Closed-loop load with bench/_loadgen.py (one process up to c=8, two above), bounded by
    ``requests`` and ``duration``; CPU of every watched server, the load generator and the rest."""
    procs = 2 if conc >= 16 else 1
    conns = [conc // procs + (1 if i < conc % procs else 0) for i in range(procs)]
    children = []
    for i, n in enumerate(conns):
        out = tmp / f"lat-{i}.bin"
        argv = [PY, str(BENCH / "_loadgen.py"), "--port", str(port), "--request",
                str(request_file), "--connections", str(n), "--requests",
                str(max(1, requests * n // conc)), "--duration", str(duration),
                "--warmup-requests", str(max(1, warmup_requests * n // conc)),
                "--warmup-s", str(warmup_s), "--out", str(out)]
        children.append((subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE), out))
    for child, _ in children:
        line = child.stdout.readline()  # type: ignore[union-attr]
        if line.strip() != b"ready":
            for c, _ in children:
                c.kill()
                c.wait()
            raise RuntimeError(f"load generator failed: {line!r} {child.stderr.read()!r}")  # type: ignore[union-attr]
    for s in watch:
        s.refresh_tree()
    cpu0 = {s.name: s.cpu_seconds() for s in watch}
    sys0, t0 = _sys_busy(), time.monotonic()
    for child, _ in children:
        child.stdin.write(b"go\n")  # type: ignore[union-attr]
        child.stdin.flush()  # type: ignore[union-attr]
    reports, lat = [], []
    for child, out in children:
        stdout, stderr = child.communicate(timeout=duration + warmup_s + 120)
        if child.returncode != 0:
            raise RuntimeError(f"load generator exited {child.returncode}: {stderr.decode()[-2000:]}")
        reports.append(json.loads(stdout.decode().strip().splitlines()[-1]))
        lat.append(np.fromfile(out, dtype=np.float64))
    wall = time.monotonic() - t0
    cpu = {s.name: 100 * (s.cpu_seconds() - cpu0[s.name]) / wall for s in watch}
    lg = 100 * sum(r["cpu_s"] for r in reports) / wall
    other = max(0.0, 100 * (_sys_busy() - sys0) / wall - sum(cpu.values()) - lg)
    latencies = np.concatenate(lat) if lat else np.empty(0)
    window = max(r["t_last"] for r in reports) - min(r["t_measure"] for r in reports)
    result = pcts(latencies)
    result.update({
        "req_per_s": latencies.size / window if window > 0 else float("nan"),
        "errors": sum(r["errors"] for r in reports),
        "error_sample": next((r["error_sample"] for r in reports if r["error_sample"]), ""),
        "window_s": window,
        "cpu_pct": cpu,
        "loadgen_cpu_pct": lg,
        "other_cpu_pct": other,
    })
    result["_latencies"] = latencies
    return result


def peer_request_bytes(x: np.ndarray, body: str) -> tuple[bytes, bytes, int | None]:
    """What the edge sends to the executor for one forwarded request (relabelled body, hop
    headers), to call the executor's peer endpoint directly."""
    binary = body == "binary"
    payload, header_len = encode_infer_request(
        {"input": x}, binary_inputs=binary, binary_data_output=binary,
        parameters={"outpost.data_class": "public", "outpost.jurisdiction": "DE",
                    "outpost.hops": 1})
    head = (f"POST /peer/v1/infer/{MODEL} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Length: {len(payload)}\r\noutpost-hops: 1\r\n"
            f"outpost-request-id: bench-direct\r\n")
    if header_len is not None:
        head += f"Inference-Header-Content-Length: {header_len}\r\n"
    return head.encode() + b"\r\n" + payload, payload, header_len


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)")


def peer_direct_cell(port: int, client_dir: Path, request: bytes, watch: list[Server],
                     duration: float, requests: int, warmup_requests: int = 200,
                     warmup_s: float = 0.5) -> dict[str, Any]:
    """c=1 over one warm mutual-TLS connection straight to a peer endpoint, with ``client_dir``'s
    node certificate (this process is the client: a blocking ssl socket, pre-built bytes, only
    the framing parsed)."""
    from node.tls import client_context

    ctx = client_context((client_dir / "node.crt").read_bytes(),
                         (client_dir / "node.key").read_bytes(),
                         (client_dir / "federation.crt").read_bytes())
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock = ctx.wrap_socket(raw)
    errors, first_error = 0, b""

    def one() -> None:
        nonlocal errors, first_error
        sock.sendall(request)
        buf = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("peer closed the connection")
            buf += chunk
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                continue
            m = _CONTENT_LENGTH.search(buf[:end + 2].lower())
            need = end + 4 + (int(m.group(1)) if m else 0)
            while len(buf) < need:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("peer closed the connection")
                buf += chunk
            if buf[9:12] != b"200":
                errors += 1
                first_error = first_error or buf[:400]
            return

    try:
        t0 = time.perf_counter()
        for _ in range(max(1, warmup_requests)):
            one()
            if time.perf_counter() - t0 > warmup_s:
                break
        for s in watch:
            s.refresh_tree()
        cpu0 = {s.name: s.cpu_seconds() for s in watch}
        sys0, w0 = _sys_busy(), time.monotonic()
        ru0 = time.process_time()
        samples = []
        perf = time.perf_counter
        start = perf()
        for _ in range(requests):
            a = perf()
            one()
            b = perf()
            samples.append(b - a)
            if b - start > duration:
                break
        window = perf() - start
        wall = time.monotonic() - w0
        lg = 100 * (time.process_time() - ru0) / wall
    finally:
        with contextlib.suppress(OSError):
            sock.close()
    cpu = {s.name: 100 * (s.cpu_seconds() - cpu0[s.name]) / wall for s in watch}
    latencies = np.asarray(samples)
    result = pcts(latencies)
    result.update({
        "req_per_s": latencies.size / window, "errors": errors,
        "error_sample": first_error.decode("latin-1"), "window_s": window, "cpu_pct": cpu,
        "loadgen_cpu_pct": lg,
        "other_cpu_pct": max(0.0, 100 * (_sys_busy() - sys0) / wall - sum(cpu.values()) - lg),
        "_latencies": latencies,
    })
    return result


def peer_httpx_cell(port: int, client_dir: Path, payload: bytes, header_len: int | None,
                    watch: list[Server], duration: float, requests: int,
                    warmup_requests: int = 200, warmup_s: float = 0.5) -> dict[str, Any]:
    """The same hop as :func:`peer_direct_cell` but made the way node/forward.py makes it: an
    ``httpx.AsyncClient`` (same TLS context, limits and headers) on uvloop in this process. The
    difference between the two is what the HTTP client stack costs per forwarded request."""

    import httpx
    import uvloop

    from node.tls import client_context

    ctx = client_context((client_dir / "node.crt").read_bytes(),
                         (client_dir / "node.key").read_bytes(),
                         (client_dir / "federation.crt").read_bytes())
    url = f"https://127.0.0.1:{port}/peer/v1/infer/{MODEL}"
    headers = {"outpost-hops": "1", "outpost-request-id": "bench-httpx"}
    if header_len is not None:
        headers["inference-header-content-length"] = str(header_len)
    out: dict[str, Any] = {}

    async def go() -> None:
        errors, first_error = 0, ""
        async with httpx.AsyncClient(
                verify=ctx, timeout=httpx.Timeout(10.0, connect=2.0),
                limits=httpx.Limits(max_keepalive_connections=64, keepalive_expiry=60.0)) as http:
            async def one() -> None:
                nonlocal errors, first_error
                r = await http.post(url, content=payload, headers=headers)
                if r.status_code != 200:
                    errors += 1
                    first_error = first_error or r.text[:300]
                r.content  # noqa: B018 — read, as the router does

            t0 = time.perf_counter()
            for _ in range(max(1, warmup_requests)):
                await one()
                if time.perf_counter() - t0 > warmup_s:
                    break
            for s in watch:
                s.refresh_tree()
            cpu0 = {s.name: s.cpu_seconds() for s in watch}
            sys0, w0, ru0 = _sys_busy(), time.monotonic(), time.process_time()
            samples = []
            perf = time.perf_counter
            start = perf()
            for _ in range(requests):
                a = perf()
                await one()
                b = perf()
                samples.append(b - a)
                if b - start > duration:
                    break
            window = perf() - start
            wall = time.monotonic() - w0
            lg = 100 * (time.process_time() - ru0) / wall
            cpu = {s.name: 100 * (s.cpu_seconds() - cpu0[s.name]) / wall for s in watch}
            latencies = np.asarray(samples)
            out.update(pcts(latencies))
            out.update({
                "req_per_s": latencies.size / window, "errors": errors,
                "error_sample": first_error, "window_s": window, "cpu_pct": cpu,
                "loadgen_cpu_pct": lg,
                "other_cpu_pct": max(0.0, 100 * (_sys_busy() - sys0) / wall
                                     - sum(cpu.values()) - lg),
                "_latencies": latencies,
            })

    uvloop.run(go())
    return out


def bench_placement_inputs(tmp: Path, edge: Node, peer: Node, n: int = 1000) -> dict[str, Any]:
    """In-process cost of what the router rebuilds per request for every peer it knows
    (node/cluster.py ``Cluster.candidates`` -> federation/items.py ``read_advert``), with this
    federation's real certificates and an advert shaped like the daemon's."""
    from datetime import UTC, datetime

    from federation.identity import NodeIdentity
    from federation.items import make_advert, read_advert
    from node.keys import load_key

    authority = (edge.dir / "federation.crt").read_bytes()
    cert = (peer.dir / "node.crt").read_bytes()
    body = {"models": [{"name": MODEL, "version": "1", "sha256": "0" * 64,
                        "provider": "CPUExecutionProvider"}],
            "queue": 0, "load": 1.0, "gpus": 0, "policy_version": 1, "app": "127.0.0.1:1"}
    item = make_advert(load_key(peer.dir), peer.name, cert, 7, body)
    now = datetime.now(UTC)
    out: dict[str, Any] = {}
    for name, fn in (("read_advert (one peer's advert, verified)",
                      lambda: read_advert(item, authority, now)),
                     ("NodeIdentity.from_certificate (inside read_advert)",
                      lambda: NodeIdentity.from_certificate(cert, authority, now))):
        fn()
        samples = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            fn()
            samples.append(time.perf_counter_ns() - t0)
        samples.sort()
        out[name] = {"p50_us": samples[len(samples) // 2] / 1000,
                     "p99_us": samples[int(len(samples) * 0.99)] / 1000, "n": n}
    return out


# -- part 2: policy ------------------------------------------------------------------------------


def bench_policy(n: int) -> dict[str, Any]:
    """decide_forward warm with bench/policy.py's example policy and attributes."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from policy import DATA, EXAMPLE_POLICY, SENDER, TARGET, timed

    from federation.policy import read_bundle, sign_bundle
    from federation.policy_engine import DataAttrs, PolicyEngine

    key = Ed25519PrivateKey.generate()
    bundle = read_bundle(sign_bundle(key, EXAMPLE_POLICY, 1, "2025-01-31T12:00:00Z", "bench"),
                         key.public_key())
    out: dict[str, Any] = {}
    public = DataAttrs(DATA.request_id, "public", DATA.jurisdiction, DATA.model)
    for label, data in (("personal", DATA), ("public", public)):
        uncached = PolicyEngine(bundle, cache_size=0)
        assert uncached.decide_forward(SENDER, data, TARGET, 0).allowed
        p50, p99 = timed(lambda e=uncached, d=data: e.decide_forward(SENDER, d, TARGET, 0), n)
        out[f"decide_forward/{label}/no-cache"] = {"p50_us": p50, "p99_us": p99, "n": n}
        cached = PolicyEngine(bundle)
        p50, p99 = timed(lambda e=cached, d=data: e.decide_forward(SENDER, d, TARGET, 0), n)
        out[f"decide_forward/{label}/cached"] = {"p50_us": p50, "p99_us": p99, "n": n}
    # What the daemon does per request: a fresh request id each time (a new Data entity).
    cached = PolicyEngine(bundle)
    counter = iter(range(10**9))
    p50, p99 = timed(lambda: cached.decide_forward(
        SENDER, DataAttrs(f"req-{next(counter)}", "public", "DE", MODEL), TARGET, 0), n)
    out["decide_forward/public/cached, new request id per call"] = {"p50_us": p50, "p99_us": p99,
                                                                   "n": n}
    return out


# -- profiling -----------------------------------------------------------------------------------


def pyspy_path() -> str | None:
    found = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    return found if Path(found).exists() else None


def profile_forward(nodes: list[Node], port: int, request_file: Path, tmp: Path, out_dir: Path,
                    seconds: float, rate: int = 500) -> dict[str, Any]:
    """py-spy (on-CPU samples only) each of ``nodes`` while c=1 runs through ``port``; returns,
    per process, where the time goes and the sampled CPU per request."""
    spy = pyspy_path()
    if spy is None:
        return {"error": "py-spy not installed (pip install py-spy)"}
    procs = {}
    for node in nodes:
        raw = out_dir / f"forward-profile-{node.name}.txt"
        procs[node.name] = (subprocess.Popen(
            [spy, "record", "--pid", str(node.server.proc.pid), "--rate", str(rate),  # type: ignore[union-attr]
             "--duration", str(int(seconds) + 1), "--format", "raw", "--threads",
             "--nonblocking", "-o", str(raw)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT), raw)
    time.sleep(0.7)
    cell = run_cell(port, request_file, 1, tmp, [n.server for n in nodes if n.server],  # type: ignore[misc]
                    duration=seconds - 1.2, requests=10**7, warmup_requests=1, warmup_s=0.01)
    result: dict[str, Any] = {"req_per_s_under_profiler": cell["req_per_s"],
                              "p50_ms_under_profiler": cell["p50_ms"], "rate_hz": rate}
    for name, (proc, raw) in procs.items():
        output = proc.communicate(timeout=120)[0].decode(errors="replace")
        if proc.returncode != 0 or not raw.exists():
            result[name] = {"error": f"py-spy failed: {output[-400:]}"}
            continue
        summary = summarise_profile(raw)
        sampled_s = summary["samples"] / rate
        requests = cell["req_per_s"] * (int(seconds) + 1)
        summary["file"] = str(raw)
        summary["sampled_cpu_ms_per_request"] = 1000 * sampled_s / max(1.0, requests)
        main_share = dict(summary["threads"]).get("MainThread", 0.0) / 100
        summary["main_ms_per_request"] = summary["sampled_cpu_ms_per_request"] * main_share
        summary["requests"] = requests
        result[name] = summary
    return result


# -- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Outpost forwarding benchmark (DESIGN §9).")
    p.add_argument("--quick", action="store_true", help="shorter cells, fewer rounds")
    p.add_argument("--rounds", type=int, help="alternating rounds per latency cell pair")
    p.add_argument("--duration", type=float, help="measured seconds per latency cell")
    p.add_argument("--tput-duration", type=float, help="measured seconds per c=32 cell")
    p.add_argument("--requests", type=int, default=30000, help="most measured requests per cell")
    p.add_argument("--policy-n", type=int, default=5000, help="samples per policy measurement")
    p.add_argument("--profile", choices=("auto", "always", "never"), default="auto",
                   help="py-spy the edge and core-a during forwarding: auto = when over budget")
    p.add_argument("--limits", default=f"{QUEUE_LIMIT},1",
                   help="edge placement.local_queue_limit values for part 3, in order (the "
                        "edge restarts for each after the first)")
    p.add_argument("--no-peers-stopped", action="store_true",
                   help="skip the last cell (both peers stopped)")
    p.add_argument("--wait-quiet", type=float, default=0.0,
                   help="wait up to this many seconds for other processes to use < 25%% CPU")
    p.add_argument("--keep", action="store_true", help="keep the federation's temp directory")
    p.add_argument("--out", type=Path, default=BENCH / "out" / "forward.json")
    args = p.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 4)
    lat_s = args.duration or (1.0 if args.quick else 1.5)
    tput_s = args.tput_duration or (2.0 if args.quick else 3.0)
    tput_rounds = 1 if args.quick else 3
    limits = [int(v) for v in args.limits.split(",") if v.strip()]
    if not limits or limits[0] != QUEUE_LIMIT:
        limits = [QUEUE_LIMIT, *[q for q in limits if q != QUEUE_LIMIT]]
    started = time.monotonic()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="outpost-bench-fwd-"))
    if args.wait_quiet > 0:
        deadline = time.monotonic() + args.wait_quiet
        while True:
            b0, t0 = _sys_busy(), time.monotonic()
            time.sleep(2.0)
            busy = 100 * (_sys_busy() - b0) / (time.monotonic() - t0)
            if busy < 25 or time.monotonic() > deadline:
                log(f"other processes use {busy:.0f}% of one core"
                    + ("" if busy < 25 else "; starting anyway"))
                break
    info = machine_info()
    source = source_fingerprint()
    log(f"{info['cpus']} CPUs, load average {info['loadavg_at_start']}; work dir {tmp}")

    # 2. policy first, in this process, while no daemon runs
    log("policy: decide_forward warm (bench/policy.py's example)")
    policy = bench_policy(args.policy_n)

    from _servers import open_session

    x = sample_input()
    session = open_session(str(SAMPLE_MODEL))
    expected = session.run(None, {"input": x})[0]
    request_files = {}
    for body in BODIES:
        path = tmp / f"req-{body}.http"
        path.write_bytes(request_bytes(x, body)[0])
        request_files[body] = path

    nodes: list[Node] = []
    report: dict[str, Any] = {"machine": info, "source": source, "policy": policy}
    lat_rows: dict[str, dict[str, Any]] = {}
    tput: dict[str, Any] = {}
    probes: dict[str, Any] = {}
    profile: dict[str, Any] = {}
    fsync_ms: list[float] = []
    try:
        log("federation: authority, three enrolled nodes (CLI)")
        ca = tmp / "ca"
        cli("federation", "init", "--dir", str(ca), "--name", "bench")
        edge = enroll(tmp, ca, "edge", "edge", None, {"local_queue_limit": QUEUE_LIMIT})
        core_a = enroll(tmp, ca, "core-a", "onprem", edge.peer_port)
        core_b = enroll(tmp, ca, "core-b", "onprem", edge.peer_port)
        nodes = [edge, core_a, core_b]
        log("placement inputs: read_advert in-process, with this federation's certificates")
        report["placement_inputs"] = bench_placement_inputs(tmp, edge, core_a)
        cli("models", "add", str(SAMPLE_MODEL), "--name", MODEL, "--version", "1",
            data_dir=core_a.dir)
        bundles = {}
        for version in range(1, 5):
            text = POLICY_ALLOW if version % 2 == 1 else POLICY_DENY
            cedar = tmp / f"policy-{version}.cedar"
            cedar.write_text(text)
            bundles[version] = tmp / f"policy-{version}.json"
            cli("policy", "sign", str(cedar), "--version", str(version), "--ca", str(ca),
                "-o", str(bundles[version]))
        for node in nodes:
            start(node, tmp)
        cli("policy", "apply", str(bundles[1]), data_dir=edge.dir)
        for node in nodes:
            wait_for(lambda n=node: status(n).get("policy_version") == 1, f"policy v1 on {node.name}")
        wait_for(lambda: holders(edge) == {"core-a"}, "edge to see core-a holding digits")
        servers = [n.server for n in nodes if n.server]
        log(f"federation up in {time.monotonic() - started:.0f} s")

        # 1. one-hop forward overhead
        for body in BODIES:
            probes[f"core-a/{body}"] = probe(core_a, x, body, expected)
            probes[f"edge/{body}"] = probe(edge, x, body, expected)
        log(f"probes: {probes}")
        for body in BODIES:
            order = ("local", "peer-direct", "peer-httpx", "forwarded")
            per: dict[str, list[dict[str, Any]]] = {k: [] for k in order}
            direct, direct_payload, direct_hl = peer_request_bytes(x, body)
            for i in range(rounds):
                for label in (order if i % 2 == 0 else order[::-1]):
                    fsync_ms.append(fsync_probe(tmp))
                    if label == "peer-direct":
                        r = peer_direct_cell(core_a.peer_port, edge.dir, direct, servers, lat_s,
                                             args.requests)
                    elif label == "peer-httpx":
                        r = peer_httpx_cell(core_a.peer_port, edge.dir, direct_payload, direct_hl,
                                            servers, lat_s, args.requests)
                    else:
                        node = core_a if label == "local" else edge
                        r = run_cell(node.port, request_files[body], 1, tmp, servers, lat_s,
                                     args.requests)
                    per[label].append(r)
                    log(f"c=1 {body:6s} {label:9s} round {i + 1}: p50 {r['p50_ms']:.3f} ms "
                        f"p99 {r['p99_ms']:.3f} ms  {r['req_per_s']:.0f} req/s  err {r['errors']}")
            for label, results in per.items():
                merged = pcts(np.concatenate([r["_latencies"] for r in results]))
                merged.update({
                    "rounds_p50_ms": [r["p50_ms"] for r in results],
                    "req_per_s": float(np.median([r["req_per_s"] for r in results])),
                    "errors": sum(r["errors"] for r in results),
                    "error_sample": next((r["error_sample"] for r in results if r["error_sample"]), ""),
                    "cpu_pct": {k: float(np.median([r["cpu_pct"][k] for r in results]))
                                for k in results[0]["cpu_pct"]},
                    "loadgen_cpu_pct": float(np.median([r["loadgen_cpu_pct"] for r in results])),
                    "other_cpu_pct": float(np.median([r["other_cpu_pct"] for r in results])),
                })
                lat_rows[f"{label}/{body}"] = merged
        over = [lat_rows[f"forwarded/{b}"]["p50_ms"] - lat_rows[f"local/{b}"]["p50_ms"]
                for b in BODIES]
        if args.profile == "always" or (args.profile == "auto" and max(over) > BUDGET_FORWARD_MS):
            log("profiling edge and core-a (py-spy) at c=1 through the edge, binary")
            profile = profile_forward([edge, core_a], edge.port, request_files["binary"], tmp,
                                      args.out.parent, seconds=6.0)

        # 3. shedding throughput
        log(f"adding {MODEL} live to edge and core-b")
        for node in (edge, core_b):
            cli("models", "add", str(SAMPLE_MODEL), "--name", MODEL, "--version", "1",
                data_dir=node.dir)
        wait_for(lambda: holders(edge) == {"core-a", "core-b"}, "edge to see two model holders")
        probes["edge-holding/binary"] = probe(edge, x, "binary", expected)
        version = 1

        def set_policy(allow: bool) -> None:
            """Odd versions allow forwarding, even ones forbid it (versions only go up)."""
            nonlocal version
            if (version % 2 == 1) == allow:
                return
            version += 1
            if version not in bundles:
                cedar = tmp / f"policy-{version}.cedar"
                cedar.write_text(POLICY_ALLOW if version % 2 == 1 else POLICY_DENY)
                bundles[version] = tmp / f"policy-{version}.json"
                cli("policy", "sign", str(cedar), "--version", str(version), "--ca", str(ca),
                    "-o", str(bundles[version]))
            cli("policy", "apply", str(bundles[version]), data_dir=edge.dir)
            wait_for(lambda: status(edge).get("policy_version") == version,
                     f"policy v{version} on edge")

        plan = (["shed", "alone", "alone", "shed", "shed", "alone"][: 2 * tput_rounds]
                if tput_rounds > 1 else ["shed", "alone"])
        for limit in limits:
            if limit != QUEUE_LIMIT:
                log(f"restarting edge with placement.local_queue_limit = {limit}")
                assert edge.server is not None
                edge.server.stop()
                path = edge.dir / "outpost.toml"
                raw = tomllib.loads(path.read_text())
                raw.setdefault("placement", {})["local_queue_limit"] = limit
                # the edge was everyone's seed: on its way back it needs one of its own
                raw["federation"]["seeds"] = [f"127.0.0.1:{core_a.peer_port}",
                                              f"127.0.0.1:{core_b.peer_port}"]
                path.write_text(tomli_w.dumps(raw))
                start(edge, tmp)
                servers = [n.server for n in nodes if n.server]
                wait_for(lambda: holders(edge) == {"core-a", "core-b"},
                         "edge to see two model holders again")
            cells: dict[str, list[dict[str, Any]]] = {"shed": [], "alone": []}
            for mode in plan:
                set_policy(mode == "shed")
                before = metrics(edge)
                r = run_cell(edge.port, request_files["binary"], 32, tmp, servers, tput_s,
                             args.requests * 4)
                r["where"] = where_ran(delta(metrics(edge), before))
                r["policy_version"] = version
                r.pop("_latencies")
                cells[mode].append(r)
                log(f"c=32 q{limit} {mode:5s} (policy v{version}): {r['req_per_s']:.0f} req/s p50 "
                    f"{r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms err {r['errors']} "
                    f"where {r['where']} cpu {({k: round(v) for k, v in r['cpu_pct'].items()})} "
                    f"lg {r['loadgen_cpu_pct']:.0f}% other {r['other_cpu_pct']:.0f}%")
            for mode, results in cells.items():
                chosen = sorted(results, key=lambda r: r["req_per_s"])[len(results) // 2]
                tput[f"{mode}/q{limit}"] = dict(chosen, local_queue_limit=limit,
                                                rounds_req_per_s=[r["req_per_s"] for r in results])
        # information: the peers really gone (policy back to allow, so it is their absence)
        if not args.no_peers_stopped:
            try:
                set_policy(True)
                for node in (core_a, core_b):
                    assert node.server is not None
                    node.server.stop()
                wait_for(lambda: not holders(edge), "edge to see both peers gone", timeout=30)
                before = metrics(edge)
                r = run_cell(edge.port, request_files["binary"], 32, tmp, [edge.server],  # type: ignore[list-item]
                             tput_s, args.requests * 4)
                r["where"] = where_ran(delta(metrics(edge), before))
                r["local_queue_limit"] = limits[-1]
                r.pop("_latencies")
                tput["peers-stopped"] = r
                log(f"c=32 peers stopped: {r['req_per_s']:.0f} req/s p50 {r['p50_ms']:.2f} ms "
                    f"err {r['errors']} where {r['where']}")
            except Exception as exc:
                tput["peers-stopped"] = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"peers-stopped cell skipped: {exc}")
    finally:
        for node in nodes:
            if node.server is not None:
                with contextlib.suppress(Exception):
                    node.server.stop()
    elapsed = time.monotonic() - started

    # -- print ---------------------------------------------------------------------------------
    print()
    print(f"Outpost forwarding benchmark — {info['cpus']} CPUs ({info['cpu_model']}), "
          f"Python {info['python']}{', quick' if args.quick else ''}")
    print(f"daemon source fingerprint {source['sha256']} ({source['files']} files, newest "
          f"{source['newest_mtime']}); load average at start {info['loadavg_at_start']}")
    print(f"federation: edge (edge, local_queue_limit={QUEUE_LIMIT}), core-a and core-b "
          f"(onprem), preset local, loopback; policy = DESIGN §4 example; data class public")
    bad = {k: v for k, v in probes.items() if not v.get("ok")}
    print("probes: " + ", ".join(f"{k} -> {v.get('served_by')} ({v.get('route')})"
                                 for k, v in probes.items())
          + (f"; FAILED {bad}" if bad else "; outputs match in-process onnxruntime"))
    print()
    print(f"1. One hop, {MODEL} batch 1, c=1, keep-alive ({rounds} alternating rounds x "
          f"{lat_s:g} s per cell; p50/p99 over all rounds)")
    print(f"  {'path':36s} {'body':6s} {'p50 ms':>8s} {'p99 ms':>8s} {'req/s':>7s} {'err':>4s}  "
          f"{'edge%':>6s} {'core-a%':>7s} {'lg%':>5s} {'other%':>6s}  {'cpu ms/req edge, core-a':>23s}"
          f"  rounds p50")
    for body in BODIES:
        for label, path in (("local", "app -> core-a (local)"),
                            ("peer-direct", "mTLS -> core-a peer endpoint [a]"),
                            ("peer-httpx", "httpx mTLS -> core-a peer endpt [b]"),
                            ("forwarded", "app -> edge -> mTLS -> core-a")):
            r = lat_rows.get(f"{label}/{body}")
            if not r:
                continue
            print(f"  {path:36s} {body:6s} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} "
                  f"{r['req_per_s']:7.0f} {r['errors']:4d}  {r['cpu_pct'].get('edge', 0):6.0f} "
                  f"{r['cpu_pct'].get('core-a', 0):7.0f} {r['loadgen_cpu_pct']:5.0f} "
                  f"{r['other_cpu_pct']:6.0f}  "
                  f"{r['cpu_pct'].get('edge', 0) * 10 / r['req_per_s']:11.3f} "
                  f"{r['cpu_pct'].get('core-a', 0) * 10 / r['req_per_s']:11.3f}  "
                  + " ".join(f"{v:.3f}" for v in r["rounds_p50_ms"]))
    for body in BODIES:
        lo, di, hx, fw = (lat_rows.get(f"{k}/{body}")
                          for k in ("local", "peer-direct", "peer-httpx", "forwarded"))
        if lo and di and hx and fw:
            print(f"  {body}: p50 split of the overhead {fw['p50_ms'] - lo['p50_ms']:+.3f} ms = "
                  f"executor's peer path vs its app path [a - local] "
                  f"{di['p50_ms'] - lo['p50_ms']:+.3f} ms + httpx client stack [b - a] "
                  f"{hx['p50_ms'] - di['p50_ms']:+.3f} ms + rest of the edge (app endpoint, "
                  f"placement, audit) [forwarded - b] {fw['p50_ms'] - hx['p50_ms']:+.3f} ms")
    print("  [a] this process as the client over one warm mTLS connection (blocking ssl socket, "
          "pre-built bytes), with the edge's certificate and relabelled body: the executor's side "
          "of a hop")
    print("  [b] the same hop made as node/forward.py makes it: httpx.AsyncClient on uvloop, same "
          "TLS context, limits and headers")
    if fsync_ms:
        print(f"  fsync of a small append on this disk (between cells): median "
              f"{float(np.median(fsync_ms)):.3f} ms, max {max(fsync_ms):.3f} ms")
    if report.get("placement_inputs"):
        print("  per-request placement inputs, in-process (Cluster.candidates verifies every "
              "peer's advert on every request):")
        for key, r in report["placement_inputs"].items():
            print(f"    {key:52s} p50 {r['p50_us']:7.1f} µs  p99 {r['p99_us']:7.1f} µs")
    print()
    print("2. Policy decision, PolicyEngine.decide_forward, warm (bench/policy.py's example)")
    for key, r in policy.items():
        print(f"  {key:58s} p50 {r['p50_us']:7.1f} µs  p99 {r['p99_us']:7.1f} µs")
    print()
    print(f"3. Edge node at c=32, {MODEL} binary, two allowed peers holding the model "
          f"({tput_s:g} s per cell; median of {tput_rounds} round(s), shed/alone alternating)")
    print(f"  {'mode':26s} {'req/s':>7s} {'p50 ms':>8s} {'p99 ms':>8s} {'err':>4s}  "
          f"{'edge%':>6s} {'core-a%':>7s} {'core-b%':>7s} {'lg%':>5s} {'other%':>6s}  where it ran")
    rows3 = [(f"{m}/q{q}", f"{'shed to 2 peers' if m == 'shed' else 'alone (policy deny)'}, "
              f"limit {q}") for q in limits for m in ("shed", "alone")]
    rows3.append(("peers-stopped", f"peers stopped, limit {limits[-1]}"))
    for mode, label in rows3:
        r = tput.get(mode)
        if not r or "error" in r:
            if r:
                print(f"  {label:26s} {r['error']}")
            continue
        total = sum(r["where"].values()) or 1
        where = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in r["where"].items())
        cpu = r["cpu_pct"]
        print(f"  {label:26s} {r['req_per_s']:7.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
              f"{r['errors']:4d}  {cpu.get('edge', 0):6.0f} {cpu.get('core-a', 0):7.0f} "
              f"{cpu.get('core-b', 0):7.0f} {r['loadgen_cpu_pct']:5.0f} {r['other_cpu_pct']:6.0f}"
              f"  {where}")
        if r.get("rounds_req_per_s") and len(r["rounds_req_per_s"]) > 1:
            print(f"  {'':26s} rounds req/s: " + " ".join(f"{v:.0f}" for v in r["rounds_req_per_s"]))
    print("  cpu% = % of one core during the cell (200% = the whole machine); other% = every "
          "process outside this benchmark")

    others = [r["other_cpu_pct"] for r in [*lat_rows.values(), *tput.values()]
              if isinstance(r, dict) and "other_cpu_pct" in r]
    if others and float(np.median(others)) > 30:
        print(f"  WARNING: processes outside this benchmark used a median {np.median(others):.0f}% "
              "of one core during the cells: absolute latencies and req/s are inflated and noisy; "
              "compare rows of this run only, and rerun on a quiet machine before acting on them")
    budgets: list[dict[str, Any]] = []
    for body in BODIES:
        lo, fw = lat_rows.get(f"local/{body}"), lat_rows.get(f"forwarded/{body}")
        if lo and fw:
            added = fw["p50_ms"] - lo["p50_ms"]
            budgets.append({
                "budget": f"one-hop forward overhead, p50 forwarded - p50 local, c=1, {body}",
                "value": added, "limit": BUDGET_FORWARD_MS, "unit": "ms",
                "pass": added <= BUDGET_FORWARD_MS,
                "text": f"{fw['p50_ms']:.3f} - {lo['p50_ms']:.3f} = {added:.3f} ms  "
                        f"(<= {BUDGET_FORWARD_MS} ms)"})
    pol = policy.get("decide_forward/public/no-cache")
    if pol:
        cached = policy["decide_forward/public/cached, new request id per call"]
        budgets.append({
            "budget": "policy decision, decide_forward warm, full cedarpy evaluation (no cache)",
            "value": pol["p50_us"], "limit": BUDGET_POLICY_US, "unit": "µs",
            "pass": pol["p50_us"] <= BUDGET_POLICY_US,
            "text": f"p50 {pol['p50_us']:.1f} µs  (<= {BUDGET_POLICY_US:.0f} µs); cached path as "
                    f"the daemon runs it: {cached['p50_us']:.1f} µs"})
    for q in limits:
        shed, alone = tput.get(f"shed/q{q}"), tput.get(f"alone/q{q}")
        if shed and alone:
            ratio = shed["req_per_s"] / alone["req_per_s"]
            total = sum(shed["where"].values()) or 1
            share = 100 * (total - shed["where"].get("local", 0.0)) / total
            budgets.append({
                "budget": f"edge shedding to 2 peers / edge alone, c=32, local_queue_limit {q} "
                          "(no budget: information)",
                "value": ratio, "limit": None, "unit": "ratio", "pass": None,
                "text": f"{shed['req_per_s']:.0f} / {alone['req_per_s']:.0f} = {ratio:.2f}x "
                        f"with {share:.0f}% of requests shed"})
    print()
    print("Budgets (DESIGN §9)")
    for b in budgets:
        mark = "----" if b["pass"] is None else ("PASS" if b["pass"] else "MISS")
        print(f"  {mark}  {b['budget']}: {b['text']}")
    if profile:
        print()
        print(f"Profile (py-spy, on-CPU samples at {profile.get('rate_hz')} Hz, c=1 through the "
              f"edge, binary; {profile.get('req_per_s_under_profiler', 0):.0f} req/s, p50 "
              f"{profile.get('p50_ms_under_profiler', 0):.3f} ms under the profiler)")
        if "error" in profile:
            print(f"  {profile['error']}")
        for name in ("edge", "core-a"):
            prof = profile.get(name)
            if not prof:
                continue
            if "error" in prof:
                print(f"  {name}: {prof['error']}")
                continue
            print(f"  {name}: {prof['samples']} samples, ~{prof['sampled_cpu_ms_per_request']:.3f} "
                  f"ms sampled CPU per request; threads: "
                  + ", ".join(f"{k} {v:.0f}%" for k, v in prof["threads"][:4]))
            print("    self (all threads):")
            for k, v in prof["self"][:12]:
                print(f"      {v:5.1f}%  {k}")
            print("    inclusive, event-loop thread (outpost and library frames):")
            shown = [(k, v) for k, v in prof["main_inclusive"]
                     if any(m in k for m in ("node/", "models/", "federation/", "httpx", "httpcore",
                                             "uvicorn", "ssl", "aiosqlite", "cedarpy", "json"))]
            per_req = prof.get("main_ms_per_request", 0.0)
            for k, v in shown[:18]:
                print(f"      {v:5.1f}%  ~{per_req * v / 100:.3f} ms/req  {k}")
            print(f"    raw stacks: {prof['file']}")
    print()
    print(f"finished in {elapsed:.0f} s; load average at the end {os.getloadavg()}; "
          f"results in {args.out}")

    info["loadavg_at_end"] = os.getloadavg()
    report.update({
        "mode": "quick" if args.quick else "full",
        "elapsed_s": elapsed,
        "settings": {"rounds": rounds, "latency_cell_s": lat_s, "throughput_cell_s": tput_s,
                     "throughput_rounds": tput_rounds, "local_queue_limit": QUEUE_LIMIT,
                     "requests": args.requests},
        "probes": probes,
        "latency": lat_rows,
        "fsync_ms": fsync_ms,
        "throughput": tput,
        "budgets": budgets,
        "profile": profile,
    })
    for r in lat_rows.values():
        r.pop("_latencies", None)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    if args.keep:
        print(f"federation data kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
