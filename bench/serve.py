"""Serving benchmark (DESIGN §9): in-process onnxruntime, a bare ASGI OIP handler, the daemon and
Ray Serve, measured in one run so the ratios compare like with like on this machine.

Run from the repository root::

    python bench/serve.py            # full run (~5-10 min), Ray Serve included
    python bench/serve.py --quick    # fewer requests, no Ray (< 2 min)
    python bench/serve.py --token-only   # just the app-token cost: daemon with vs without

Prints a table (server, model, body, concurrency, req/s, p50, p99, CPU use) and the budget lines
with PASS/MISS, and writes everything to bench/out/serve.json. Nothing is asserted: budgets are
read by people, not by tests. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
from _servers import open_session  # noqa: E402

from models import SAMPLE_MANIFEST, SAMPLE_MODEL  # noqa: E402
from models.codec import (  # noqa: E402
    decode_infer_request,
    decode_infer_response,
    encode_infer_request,
    encode_infer_response,
)

PY = sys.executable
BUDGET_ADDED_P50_MS = 0.5
BUDGET_VS_BARE = 0.60
BUDGET_VS_RAY = 20.0
BUDGET_RSS_MB = 150.0
BUDGET_TOKEN_ADDED_P50_US = 20.0  # issue 11: the bearer-token check's added p50 at c=1
BUDGET_TOKEN_THROUGHPUT = 0.95  # issue 11: c=32 throughput with a token on every request
TOKEN = "daemon-token"  # the same daemon process, every request carrying a bearer token
SMALL, DENSE = "digits", "dense"
BODIES = ("json", "binary")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- settings ------------------------------------------------------------------------------------


@dataclass
class Settings:
    requests: int
    duration: float
    warmup_requests: int
    warmup_s: float
    rounds: int  # repeats of the budget cells (bare and daemon alternate)
    dense_conc: tuple[int, ...]
    ray: bool
    inproc_calls: int
    inproc_s: float
    lg_procs_at_32: int
    profile: bool
    whatif: tuple[str, ...]
    bare_loop: str

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> Settings:
        quick = a.quick
        return cls(
            requests=a.requests or (3000 if quick else 30000),
            duration=a.duration or (1.0 if quick else 3.0),
            warmup_requests=100 if quick else 300,
            warmup_s=0.3 if quick else 0.5,
            rounds=1 if quick else 3,
            dense_conc=(1, 8) if quick else (1, 8, 32),
            ray=not (quick or a.no_ray),
            inproc_calls=3000 if quick else 20000,
            inproc_s=1.0 if quick else 3.0,
            lg_procs_at_32=a.lg_procs,
            profile=a.profile,
            whatif=tuple(w for w in a.whatif.split(",") if w and w != "none"),
            bare_loop=a.bare_loop,
        )


# -- inputs and request bytes --------------------------------------------------------------------


def small_input() -> np.ndarray:
    example = json.loads(SAMPLE_MANIFEST.read_text())["examples"][0]["input"]
    return np.asarray([example], dtype=np.float32)


def dense_input(width: int = 1024) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((1, width), dtype=np.float32)


def request_bytes(model: str, x: np.ndarray, body: str) -> tuple[bytes, bytes, int | None]:
    """(full HTTP request, body, header length): built once with Outpost's client codec, the
    way tritonclient does it (binary: binary inputs and binary outputs; json: JSON both ways)."""
    binary = body == "binary"
    payload, header_len = encode_infer_request(
        {"input": x}, binary_inputs=binary, binary_data_output=binary
    )
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Length: {len(payload)}\r\n"
    )
    if header_len is not None:
        head += f"Inference-Header-Content-Length: {header_len}\r\n"
    return head.encode() + b"\r\n" + payload, payload, header_len


def with_token(request: bytes, secret: str) -> bytes:
    """The same request with ``Authorization: Bearer <secret>`` (what tritonclient's
    ``headers=`` sends)."""
    head, sep, rest = request.partition(b"\r\n")
    return head + sep + f"Authorization: Bearer {secret}\r\n".encode() + rest


def bench_token_check(st: Settings, tmp: Path) -> dict[str, Any]:
    """``AppAuth.authenticate`` alone, in process: a token (SHA-256 + constant-time compare +
    expiry + last use) vs no credentials (anonymous), per call."""
    from node.store import Store
    from node.tokens import AppAuth, Tokens, mac_key

    out: dict[str, Any] = {}

    async def go() -> None:
        d = tmp / "token-store"
        d.mkdir(exist_ok=True)
        store = await Store.open(d)
        try:
            tokens = Tokens(store, mac_key(b"bench" * 8))
            secret, _ = await tokens.add("bench-app", {"purpose": "bench"}, None)
            auth = AppAuth(tokens, "optional", {})
            header = f"Bearer {secret}".encode()
            out["authenticate/anonymous"] = time_calls(
                lambda: auth.authenticate(None, None, "127.0.0.1"), st.inproc_calls, st.inproc_s)
            out["authenticate/bearer token"] = time_calls(
                lambda: auth.authenticate(header, None, "127.0.0.1"), st.inproc_calls,
                st.inproc_s)
            # The endpoint's whole per-request step (header scan, source, authenticate) on a
            # scope shaped like uvicorn's, driven without a loop (it never suspends on success).
            from node.app import OipApp
            from node.metrics import Metrics

            app = OipApp(None, None, Metrics(list), None, auth)  # type: ignore[arg-type]
            base = [(b"host", b"127.0.0.1"), (b"content-length", b"1000"),
                    (b"inference-header-content-length", b"200")]
            path = f"/v2/models/{SMALL}/infer"
            for name, headers in (("anonymous", base),
                                  ("bearer token", [*base, (b"authorization", header)])):
                scope = {"type": "http", "path": path, "headers": headers,
                         "client": ("127.0.0.1", 50000)}

                def step(scope: dict[str, Any] = scope) -> None:
                    coro = app._authenticate(scope, path)
                    try:
                        coro.send(None)
                    except StopIteration:
                        return
                    raise RuntimeError("authentication suspended")

                out[f"endpoint auth step/{name}"] = time_calls(step, st.inproc_calls,
                                                               st.inproc_s)
        finally:
            await store.close()

    asyncio.run(go())
    return out


def token_budget_lines(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for body in BODIES:
        d, t = find(rows, "daemon", SMALL, body, 1), find(rows, TOKEN, SMALL, body, 1)
        if d and t:
            added_us = 1000 * (t["p50_ms"] - d["p50_ms"])
            lines.append({
                "budget": f"added p50 latency, bearer token vs none, {SMALL}, c=1, {body}",
                "value": added_us, "limit": BUDGET_TOKEN_ADDED_P50_US, "unit": "us",
                "pass": added_us <= BUDGET_TOKEN_ADDED_P50_US,
                "text": f"{t['p50_ms']:.3f} - {d['p50_ms']:.3f} ms = {added_us:.1f} us  "
                        f"(<= {BUDGET_TOKEN_ADDED_P50_US:.0f} us)", "whatif": {}})
        d, t = find(rows, "daemon", SMALL, body, 32), find(rows, TOKEN, SMALL, body, 32)
        if d and t:
            ratio = t["req_per_s"] / d["req_per_s"]
            lines.append({
                "budget": f"throughput, bearer token / none, {SMALL}, c=32, {body}",
                "value": ratio, "limit": BUDGET_TOKEN_THROUGHPUT, "unit": "ratio",
                "pass": ratio >= BUDGET_TOKEN_THROUGHPUT,
                "text": f"{t['req_per_s']:.0f} / {d['req_per_s']:.0f} = {100 * ratio:.1f}%  "
                        f"(>= {100 * BUDGET_TOKEN_THROUGHPUT:.0f}%)", "whatif": {}})
    return lines


def _cpu_us(cell: dict[str, Any]) -> float:
    return 1e6 * cell["server_cpu_pct"] / 100 / cell["req_per_s"]


def token_only(st: Settings, out: Path) -> int:
    """``--token-only``: the daemon alone, the small model, every cell alternating requests
    without and with a bearer token (one process, so only the credentials differ)."""
    tmp = Path(tempfile.mkdtemp(prefix="outpost-bench-token-"))
    rounds = max(st.rounds, 9)
    inproc = bench_token_check(st, tmp)
    rows: list[dict[str, Any]] = []
    data_dir = tmp / "node"
    outpost_cli("init", "--data-dir", str(data_dir), "--name", "bench")
    daemon = start_daemon(data_dir, tmp)
    try:
        secret = outpost_cli("token", "add", "bench-app", "--data-dir", str(data_dir)).strip()
        tokend = Server(TOKEN, daemon.proc, daemon.port, daemon.log_path)
        files = {}
        for body in BODIES:
            plain = request_bytes(SMALL, small_input(), body)[0]
            for server, request in ((daemon, plain), (tokend, with_token(plain, secret))):
                files[server.name, body] = tmp / f"req-{server.name}-{body}.http"
                files[server.name, body].write_bytes(request)
        paired: dict[tuple[str, int], dict[str, Any]] = {}
        for body in BODIES:
            for conc in (1, 32):
                per: dict[str, list[dict[str, Any]]] = {daemon.name: [], tokend.name: []}
                for i in range(rounds):
                    for server in ((daemon, tokend) if i % 2 == 0 else (tokend, daemon)):
                        per[server.name].append(run_cell(st, server, files[server.name, body],
                                                         conc, tmp))
                # Neighbouring cells share the machine's load of the moment: compare in pairs.
                plain, token = per[daemon.name], per[tokend.name]
                paired[body, conc] = {
                    "p50_added_us": float(np.median([1000 * (t["p50_ms"] - p["p50_ms"])
                                                     for p, t in zip(plain, token, strict=True)])),
                    "throughput_ratio": float(np.median([t["req_per_s"] / p["req_per_s"]
                                                         for p, t in zip(plain, token, strict=True)])),
                    # the daemon's own CPU time per request: what a token costs in capacity,
                    # less disturbed by other processes than wall-clock figures
                    "cpu_added_us": float(np.median([_cpu_us(t) - _cpu_us(p)
                                                     for p, t in zip(plain, token, strict=True)])),
                    "cpu_plain_us": float(np.median([_cpu_us(p) for p in plain])),
                }
                for name, results in per.items():
                    chosen = sorted(results, key=lambda r: r["req_per_s"])[len(results) // 2]
                    if conc == 1:
                        chosen = sorted(results, key=lambda r: r["p50_ms"])[len(results) // 2]
                    rows.append({"server": name, "model": SMALL, "body": body,
                                 "concurrency": conc, **chosen,
                                 "rounds_req_per_s": [r["req_per_s"] for r in results],
                                 "rounds_p50_ms": [r["p50_ms"] for r in results]})
                    log(f"{name:12s} {body:6s} c={conc:<3d} {chosen['req_per_s']:8.0f} req/s  "
                        f"p50 {chosen['p50_ms']:.3f} ms  errors {chosen['errors']}")
    finally:
        daemon.stop()
    print()
    print(f"App-token cost (issue 11), {os.cpu_count()} CPUs, load average {os.getloadavg()}; "
          f"{rounds} alternating rounds per cell, median shown")
    print(f"  {'in process':38s} {'p50 ms':>8s} {'p99 ms':>8s} {'calls/s':>9s}")
    for key, r in inproc.items():
        print(f"  {key:38s} {r['p50_ms']:8.4f} {r['p99_ms']:8.4f} {r['calls_per_s']:9.0f}")
    print()
    print_table(rows)
    print()
    budgets = token_budget_lines(rows)
    print("Medians of the cells (each its own moment of machine load):")
    for b in budgets:
        print(f"  {'PASS' if b['pass'] else 'MISS'}  {b['budget']}: {b['text']}")
    print("Medians of paired neighbouring cells (the load they shared cancels out):")
    for (body, conc), pair in paired.items():
        if conc == 1:
            ok = pair["p50_added_us"] <= BUDGET_TOKEN_ADDED_P50_US
            print(f"  {'PASS' if ok else 'MISS'}  added p50, bearer token vs none, c=1, {body}: "
                  f"{pair['p50_added_us']:.1f} us (<= {BUDGET_TOKEN_ADDED_P50_US:.0f} us)")
        else:
            ok = pair["throughput_ratio"] >= BUDGET_TOKEN_THROUGHPUT
            print(f"  {'PASS' if ok else 'MISS'}  throughput, bearer token / none, c=32, {body}: "
                  f"{100 * pair['throughput_ratio']:.1f}% (>= {100 * BUDGET_TOKEN_THROUGHPUT:.0f}%)")
        print(f"        daemon CPU per request, c={conc}, {body}: {pair['cpu_plain_us']:.0f} us "
              f"without a token, {pair['cpu_added_us']:+.1f} us with one")
    out.write_text(json.dumps({"inprocess": inproc, "cells": rows, "budgets": budgets,
                               "paired": {f"{b}/c={c}": v for (b, c), v in paired.items()}},
                              indent=2, default=str))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


# -- timing helpers ------------------------------------------------------------------------------


def pcts(seconds: np.ndarray | list[float]) -> dict[str, float]:
    a = np.asarray(seconds, dtype=np.float64) * 1000.0
    if a.size == 0:
        return {"n": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan")}
    return {
        "n": int(a.size),
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
    }


def time_calls(fn: Any, calls: int, seconds: float, warmup: int = 200) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    perf = time.perf_counter
    start = perf()
    deadline = start + seconds
    for _ in range(calls):
        t0 = perf()
        fn()
        t1 = perf()
        samples.append(t1 - t0)
        if t1 > deadline:
            break
    out = pcts(samples)
    out["calls_per_s"] = len(samples) / (perf() - start)
    return out


async def time_async_calls(fn: Any, calls: int, seconds: float, warmup: int = 200) -> dict[str, float]:
    for _ in range(warmup):
        await fn()
    samples = []
    perf = time.perf_counter
    start = perf()
    deadline = start + seconds
    for _ in range(calls):
        t0 = perf()
        await fn()
        t1 = perf()
        samples.append(t1 - t0)
        if t1 > deadline:
            break
    out = pcts(samples)
    out["calls_per_s"] = len(samples) / (perf() - start)
    return out


# -- 1. in process -------------------------------------------------------------------------------


def bench_inprocess(st: Settings, paths: dict[str, Path], inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    from models import OrtBackend, RuntimeConfig, inspect_model

    results: dict[str, Any] = {}
    for model in (SMALL, DENSE):
        session = open_session(str(paths[model]))
        feed = {"input": inputs[model]}
        calls = st.inproc_calls if model == SMALL else st.inproc_calls // 4
        results[f"ort.run/{model}"] = time_calls(lambda s=session, f=feed: s.run(None, f), calls, st.inproc_s)
        log(f"in-process session.run {model}: p50 {results[f'ort.run/{model}']['p50_ms']:.3f} ms")

        # The daemon's codec, on the same requests (what the daemon adds per request, CPU only).
        signature = inspect_model(paths[model])
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True))
        for body in BODIES:
            _, payload, header_len = request_bytes(model, inputs[model], body)
            req = decode_infer_request(payload, header_len, signature)

            def encode(req: Any = req, model: str = model, outputs: Any = outputs) -> Any:
                return encode_infer_response(
                    model_name=model, model_version="1", request=req, outputs=outputs,
                    parameters={"outpost.served_by": "n", "outpost.route": "local"},
                )

            results[f"codec.decode/{model}/{body}"] = time_calls(
                lambda p=payload, h=header_len, s=signature: decode_infer_request(p, h, s),
                calls, st.inproc_s / 2)
            results[f"codec.encode/{model}/{body}"] = time_calls(encode, calls, st.inproc_s / 2)

    async def runtime() -> None:
        backend = OrtBackend(RuntimeConfig(providers="cpu"))
        for model in (SMALL, DENSE):
            loaded = await backend.load(model, "1", paths[model], inspect_model(paths[model]))
            feed = {"input": inputs[model]}
            calls = st.inproc_calls if model == SMALL else st.inproc_calls // 4
            results[f"OrtBackend.infer/{model}"] = await time_async_calls(
                lambda m=loaded, f=feed: m.infer(f), calls, st.inproc_s)
            log(f"in-process OrtBackend.infer {model}: p50 "
                f"{results[f'OrtBackend.infer/{model}']['p50_ms']:.3f} ms")
            # 32 concurrent callers on one loop: the runtime's own throughput ceiling.
            rounds = max(20, calls // 32 // 4)
            for _ in range(5):
                await asyncio.gather(*(loaded.infer(feed) for _ in range(32)))
            t0 = time.perf_counter()
            for _ in range(rounds):
                await asyncio.gather(*(loaded.infer(feed) for _ in range(32)))
                if time.perf_counter() - t0 > st.inproc_s:
                    rounds = _ + 1
                    break
            results[f"OrtBackend.infer_c32/{model}"] = {
                "calls_per_s": rounds * 32 / (time.perf_counter() - t0)}
            await loaded.close()

    asyncio.run(runtime())
    return results


def bench_durability(st: Settings, tmp: Path) -> dict[str, Any]:
    """What "durable before the caller is answered" (DESIGN §3) costs on this disk: a raw
    fsync/fdatasync of a small append, and the daemon's own ``AuditLog.append`` (group commit),
    one caller and 32 concurrent callers. Guarded: the audit API may move under the bench."""
    results: dict[str, Any] = {}
    probe = tmp / "fsync.probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for name, sync in (("fsync", os.fsync), ("fdatasync", os.fdatasync)):
            results[f"{name} (256 B append)"] = time_calls(
                lambda s=sync: (os.write(fd, b"x" * 256), s(fd)), 400, st.inproc_s / 2, warmup=10)
    finally:
        os.close(fd)
        probe.unlink()
    try:
        from node.audit import AuditLog
        from node.config import AuditSection
        from node.keys import load_key
        from node.store import Store

        node_dir = tmp / "audit-node"
        outpost_cli("init", "--data-dir", str(node_dir), "--name", "bench", "--no-sample")

        async def go() -> None:
            store = await Store.open(node_dir)
            audit = await AuditLog.open(store, load_key(node_dir), "bench", None, AuditSection())

            def entry() -> Any:
                return audit.record("infer", model=SMALL, version="1", caller="app@127.0.0.1",
                                    data_class="restricted", outcome="ok", input_sha256="0" * 64)

            try:
                results["AuditLog.append, 1 caller"] = await time_async_calls(
                    lambda: audit.append(entry()), 2000, st.inproc_s / 2, warmup=20)
                t0, n = time.perf_counter(), 0
                while time.perf_counter() - t0 < st.inproc_s / 2:
                    await asyncio.gather(*(audit.append(entry()) for _ in range(32)))
                    n += 32
                results["AuditLog.append, 32 callers"] = {
                    "calls_per_s": n / (time.perf_counter() - t0)}
            finally:
                await audit.close()
                await store.close()

        asyncio.run(go())
    except Exception as exc:
        results["AuditLog.append"] = {"error": f"{type(exc).__name__}: {exc}"}
    return results


def source_fingerprint() -> dict[str, Any]:
    """Which daemon code was measured (the tree changes under the bench; no git here)."""
    import hashlib

    digest = hashlib.sha256()
    newest = 0.0
    files = sorted(p for d in ("node", "models", "federation", "cli") for p in (ROOT / d).rglob("*.py"))
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
        newest = max(newest, path.stat().st_mtime)
    return {"sha256": digest.hexdigest()[:16], "files": len(files),
            "newest_mtime": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(newest))}


# -- server processes ----------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int = 0
    log_path: Path | None = None
    tree: list[psutil.Process] = field(default_factory=list)

    def refresh_tree(self) -> None:
        try:
            root = psutil.Process(self.proc.pid)
            self.tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            self.tree = []

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.tree:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def rss_mb(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self, timeout: float = 30.0) -> None:
        """Close stdin (our servers exit on EOF) or SIGTERM (the daemon), then escalate.
        Only this server's own processes (by PID) are ever signalled."""
        self.refresh_tree()
        owned = list(self.tree)
        if self.proc.poll() is None:
            if self.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()
            else:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        time.sleep(0.2)
        for p in owned[1:]:
            with contextlib.suppress(psutil.Error):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    p.kill()


def _wait_ready(proc: subprocess.Popen[bytes], log_path: Path, pattern: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        for line in text.splitlines():
            if pattern in line:
                return line
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
    raise RuntimeError(f"server did not become ready ({log_path}):\n{tail}")


def start_helper(kind: str, models: dict[str, Path], tmp: Path, *extra: str,
                 timeout: float = 60.0) -> Server:
    out = tmp / f"{kind}.stdout"
    err = tmp / f"{kind}.stderr"
    argv = [PY, str(BENCH / "_servers.py"), kind, *extra]
    for name, path in models.items():
        argv += ["--model", f"{name}={path}"]
    env = dict(os.environ, PYTHONPATH=f"{BENCH}{os.pathsep}{ROOT}")
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=o, stderr=e, cwd=ROOT, env=env)
    line = _wait_ready(proc, out, "ready ", timeout)
    server = Server(kind, proc, int(line.split()[1]), err)
    server.refresh_tree()
    return server


def outpost_cli(*args: str, timeout: float = 120) -> str:
    result = subprocess.run([PY, "-m", "cli.main", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"outpost {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def start_daemon(data_dir: Path, tmp: Path, patches: str = "") -> Server:
    """``outpost run`` on a free loopback port; ``patches`` ('+'-joined) runs it through
    bench/_daemon_whatif.py instead, for the diagnostic rows."""
    name = f"daemon+{patches}" if patches else "daemon"
    out, err = tmp / f"{name}.stdout", tmp / f"{name}.stderr"
    cmd = ([str(BENCH / "_daemon_whatif.py"), patches.replace("+", ",")] if patches
           else ["-m", "cli.main"])
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(
            [PY, *cmd, "run", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0",
             "--peer-listen", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL, stdout=o, stderr=e, cwd=ROOT,
        )
    line = _wait_ready(proc, out, "ready on http://", 90)
    server = Server(name, proc, int(line.rsplit(":", 1)[1]), err)
    server.refresh_tree()
    return server


# -- correctness probe ---------------------------------------------------------------------------


def check_server(server: Server, model: str, x: np.ndarray, body: str,
                 expected: dict[str, np.ndarray]) -> str:
    """One request over HTTP; 'ok' when the outputs match in-process onnxruntime."""
    _, payload, header_len = request_bytes(model, x, body)
    headers = {"Content-Length": str(len(payload))}
    if header_len is not None:
        headers["Inference-Header-Content-Length"] = str(header_len)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", f"/v2/models/{model}/infer", body=payload, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            return f"HTTP {resp.status}: {data[:200]!r}"
        hl = resp.getheader("inference-header-content-length")
        outputs, doc = decode_infer_response(data, int(hl) if hl else None)
    except Exception as exc:
        return f"error: {type(exc).__name__}: {exc}"
    finally:
        conn.close()
    if doc.get("model_name") != model:
        return f"model_name is {doc.get('model_name')!r}"
    if body == "binary" and hl is None:
        return "asked for binary outputs, got JSON"
    for name, want in expected.items():
        got = outputs.get(name)
        if got is None or got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-6):
            return f"output {name!r} differs"
    return "ok"


# -- load cells ----------------------------------------------------------------------------------


def _sys_busy() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)


def fsync_probe(tmp: Path, n: int = 8) -> float:
    """Median ms of ``n`` fsyncs of a small append right now: the disk is shared, and the
    daemon's audit log waits for one fsync per group commit, so its state explains outliers."""
    fd = os.open(tmp / "fsync.cell", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        samples = []
        for _ in range(n):
            os.write(fd, b"x" * 256)
            t0 = time.perf_counter()
            os.fsync(fd)
            samples.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
    return 1000 * float(np.median(samples))


def run_cell(st: Settings, server: Server, request_file: Path, conc: int, tmp: Path,
             requests: int | None = None, duration: float | None = None) -> dict[str, Any]:
    procs = st.lg_procs_at_32 if conc >= 32 else 1
    procs = max(1, min(procs, conc))
    conns = [conc // procs + (1 if i < conc % procs else 0) for i in range(procs)]
    total_requests = requests or st.requests
    dur = duration or st.duration
    children = []
    for i, n in enumerate(conns):
        out = tmp / f"lat-{i}.bin"
        argv = [PY, str(BENCH / "_loadgen.py"), "--port", str(server.port),
                "--request", str(request_file), "--connections", str(n),
                "--requests", str(max(1, total_requests * n // conc)), "--duration", str(dur),
                "--warmup-requests", str(max(1, st.warmup_requests * n // conc)),
                "--warmup-s", str(st.warmup_s), "--out", str(out)]
        children.append((subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE), out))
    for child, _ in children:
        line = child.stdout.readline()  # type: ignore[union-attr]
        if line.strip() != b"ready":
            for c, _ in children:
                c.kill()
            raise RuntimeError(f"load generator failed: {line!r} {child.stderr.read()!r}")  # type: ignore[union-attr]
    fsync_ms = fsync_probe(tmp)
    server.refresh_tree()
    srv0, sys0, t0 = server.cpu_seconds(), _sys_busy(), time.monotonic()
    for child, _ in children:
        child.stdin.write(b"go\n")  # type: ignore[union-attr]
        child.stdin.flush()  # type: ignore[union-attr]
    reports = []
    lat = []
    for child, out in children:
        stdout, stderr = child.communicate(timeout=dur + st.warmup_s + 120)
        if child.returncode != 0:
            raise RuntimeError(f"load generator exited {child.returncode}: {stderr.decode()[-2000:]}")
        reports.append(json.loads(stdout.decode().strip().splitlines()[-1]))
        lat.append(np.fromfile(out, dtype=np.float64))
    wall = time.monotonic() - t0
    srv_cpu, sys_cpu = server.cpu_seconds() - srv0, _sys_busy() - sys0
    lg_cpu = sum(r["cpu_s"] for r in reports)
    latencies = np.concatenate(lat) if lat else np.empty(0)
    measured = int(latencies.size)
    window = max(r["t_last"] for r in reports) - min(r["t_measure"] for r in reports)
    result = pcts(latencies)
    result.update({
        "req_per_s": measured / window if window > 0 else float("nan"),
        "errors": sum(r["errors"] for r in reports),
        "error_sample": next((r["error_sample"] for r in reports if r["error_sample"]), ""),
        "window_s": window,
        "loadgen_procs": procs,
        "server_cpu_pct": 100 * srv_cpu / wall,
        "loadgen_cpu_pct": 100 * lg_cpu / wall,
        "other_cpu_pct": max(0.0, 100 * (sys_cpu - srv_cpu - lg_cpu) / wall),
        "fsync_ms": fsync_ms,
    })
    return result


# -- report --------------------------------------------------------------------------------------


def fmt_row(cols: list[str], widths: list[int]) -> str:
    return "  ".join(c.rjust(w) if i >= 4 else c.ljust(w) for i, (c, w) in enumerate(zip(cols, widths, strict=True)))


def print_table(rows: list[dict[str, Any]]) -> None:
    head = ["server", "model", "body", "conc", "req/s", "p50 ms", "p99 ms", "err",
            "srv cpu%", "lg cpu%", "other%", "fsync ms"]
    widths = [26, 6, 6, 4, 7, 8, 8, 3, 8, 7, 6, 8]
    print(fmt_row(head, widths))
    print("-" * (sum(widths) + 2 * (len(widths) - 1)))
    for r in rows:
        print(fmt_row([
            r["server"], r["model"], r["body"], str(r["concurrency"]),
            f"{r['req_per_s']:.0f}", f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}", str(r["errors"]),
            f"{r['server_cpu_pct']:.0f}", f"{r['loadgen_cpu_pct']:.0f}", f"{r['other_cpu_pct']:.0f}",
            f"{r['fsync_ms']:.2f}",
        ], widths))


def find(rows: list[dict[str, Any]], server: str, model: str, body: str, conc: int) -> dict[str, Any] | None:
    for r in rows:
        if (r["server"], r["model"], r["body"], r["concurrency"]) == (server, model, body, conc):
            return r
    return None


def budget_lines(rows: list[dict[str, Any]], inproc: dict[str, Any], rss: dict[str, float],
                 ray_note: str) -> list[dict[str, Any]]:
    """The DESIGN §9 lines, always on the unpatched daemon; the same figure for each diagnostic
    ``daemon+<patch>`` variant is attached as ``whatif`` (information, never PASS/MISS)."""
    lines: list[dict[str, Any]] = []
    variants = sorted({r["server"] for r in rows if r["server"].startswith("daemon+")})
    floor = inproc[f"ort.run/{SMALL}"]["p50_ms"]

    def whatif(fn: Any) -> dict[str, str]:
        out = {}
        for v in variants:
            with contextlib.suppress(TypeError, ZeroDivisionError):
                value = fn(v)
                if value is not None:
                    out[v] = value
        return out

    for body in BODIES:
        d = find(rows, "daemon", SMALL, body, 1)
        b = find(rows, "bare", SMALL, body, 1)
        if d:
            added = d["p50_ms"] - floor
            extra = f" (bare handler adds {b['p50_ms'] - floor:.3f} ms)" if b else ""
            lines.append({
                "budget": f"added p50 latency, daemon vs in-process ORT, {SMALL}, c=1, {body}",
                "value": added, "limit": BUDGET_ADDED_P50_MS, "unit": "ms",
                "pass": added <= BUDGET_ADDED_P50_MS,
                "text": f"{d['p50_ms']:.3f} - {floor:.3f} = {added:.3f} ms  (<= {BUDGET_ADDED_P50_MS} ms){extra}",
                "whatif": whatif(lambda v, body=body: f"{find(rows, v, SMALL, body, 1)['p50_ms'] - floor:.3f} ms"),
            })
    for body in BODIES:
        d = find(rows, "daemon", SMALL, body, 32)
        b = find(rows, "bare", SMALL, body, 32)
        if d and b:
            ratio = d["req_per_s"] / b["req_per_s"]
            lines.append({
                "budget": f"throughput, daemon / bare handler, {SMALL}, c=32, {body}",
                "value": ratio, "limit": BUDGET_VS_BARE, "unit": "ratio",
                "pass": ratio >= BUDGET_VS_BARE,
                "text": f"{d['req_per_s']:.0f} / {b['req_per_s']:.0f} = {100 * ratio:.0f}%  (>= {100 * BUDGET_VS_BARE:.0f}%)",
                "whatif": whatif(lambda v, body=body, b=b: (
                    f"{find(rows, v, SMALL, body, 32)['req_per_s']:.0f} req/s = "
                    f"{100 * find(rows, v, SMALL, body, 32)['req_per_s'] / b['req_per_s']:.0f}%")),
            })
    for body in BODIES:
        d = find(rows, "daemon", SMALL, body, 32)
        r = find(rows, "ray-serve", SMALL, body, 32)
        name = f"throughput, daemon / Ray Serve, {SMALL}, c=32, {body}"
        if d and r and r["req_per_s"] > 0:
            ratio = d["req_per_s"] / r["req_per_s"]
            lines.append({
                "budget": name, "value": ratio, "limit": BUDGET_VS_RAY, "unit": "x",
                "pass": ratio >= BUDGET_VS_RAY,
                "text": f"{d['req_per_s']:.0f} / {r['req_per_s']:.0f} = {ratio:.1f}x  (>= {BUDGET_VS_RAY:.0f}x)",
                "whatif": whatif(lambda v, body=body, r=r: (
                    f"{find(rows, v, SMALL, body, 32)['req_per_s'] / r['req_per_s']:.1f}x")),
            })
        else:
            lines.append({"budget": name, "value": None, "limit": BUDGET_VS_RAY, "unit": "x",
                          "pass": None, "text": f"not measured: {ray_note}", "whatif": {}})
    if "idle" in rss:
        lines.append({
            "budget": "daemon idle RSS after start (sample model loaded)",
            "value": rss["idle"], "limit": BUDGET_RSS_MB, "unit": "MB",
            "pass": rss["idle"] <= BUDGET_RSS_MB,
            "text": f"{rss['idle']:.1f} MB  (<= {BUDGET_RSS_MB:.0f} MB); after adding dense "
                    f"{rss.get('with_dense', float('nan')):.1f} MB, after the load "
                    f"{rss.get('after_load', float('nan')):.1f} MB",
            "whatif": {},
        })
    return lines


def machine_info() -> dict[str, Any]:
    import onnxruntime
    import uvicorn

    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "uvicorn": uvicorn.__version__,
        "loadavg_at_start": os.getloadavg(),
    }
    with contextlib.suppress(ImportError):
        import ray

        info["ray"] = ray.__version__
    return info


# -- profiling (optional) ------------------------------------------------------------------------


def profile_daemon(st: Settings, daemon: Server, request_file: Path, tmp: Path, out_dir: Path,
                   body: str) -> dict[str, Any]:
    """py-spy the daemon under c=32 load; writes collapsed stacks and returns the top frames."""
    pyspy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not Path(pyspy).exists():
        return {"error": "py-spy not installed (pip install py-spy)"}
    raw = out_dir / f"{daemon.name.replace('+', '-')}-profile-{body}.txt"
    seconds = max(4.0, st.duration + 2)
    spy = subprocess.Popen(
        [pyspy, "record", "--pid", str(daemon.proc.pid), "--rate", "250", "--duration",
         str(int(seconds) + 1), "--format", "raw", "--threads", "--nonblocking", "-o", str(raw)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    time.sleep(0.5)
    cell = run_cell(st, daemon, request_file, 32, tmp, requests=10**7, duration=seconds - 1)
    output = spy.communicate(timeout=120)[0].decode(errors="replace")
    if spy.returncode != 0 or not raw.exists():
        return {"error": f"py-spy failed: {output[-500:]}"}
    return {"file": str(raw), "req_per_s_under_profiler": cell["req_per_s"],
            **summarise_profile(raw)}


def summarise_profile(raw: Path, top: int = 40) -> dict[str, Any]:
    """Sample shares from py-spy's collapsed stacks: per thread, then self and inclusive time
    per function for the whole process and for the event-loop thread (MainThread) alone."""
    threads: dict[str, int] = {}
    per_thread: dict[str, tuple[dict[str, int], dict[str, int]]] = {}
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1].rstrip(")") if ": " in frames[0] else frames[0]
        total += count
        threads[thread] = threads.get(thread, 0) + count
        self_count, incl_count = per_thread.setdefault(thread, ({}, {}))
        seen = set()
        for frame in frames[1:]:
            key = _short(frame)
            if key not in seen:
                incl_count[key] = incl_count.get(key, 0) + count
                seen.add(key)
        leaf = _short(frames[-1])
        self_count[leaf] = self_count.get(leaf, 0) + count

    def share(d: dict[str, int], of: int) -> list[tuple[str, float]]:
        return [(k, 100 * v / of) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    merged_self: dict[str, int] = {}
    for self_count, _ in per_thread.values():
        for k, v in self_count.items():
            merged_self[k] = merged_self.get(k, 0) + v
    main = per_thread.get("MainThread", ({}, {}))
    main_total = threads.get("MainThread", 0) or 1
    return {
        "samples": total,
        "threads": share(threads, total or 1),
        "self": share(merged_self, total or 1),
        "main_self": share(main[0], main_total),
        "main_inclusive": share(main[1], main_total),
    }


def _short(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, _, _line = where.rpartition(":")
    for marker in ("/site-packages/", str(ROOT) + "/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})" if path else name


# -- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Outpost serving benchmark (DESIGN §9).")
    p.add_argument("--quick", action="store_true", help="fewer requests, no Ray (< 2 min)")
    p.add_argument("--no-ray", action="store_true", help="skip Ray Serve")
    p.add_argument("--requests", type=int, help="most measured requests per cell")
    p.add_argument("--duration", type=float, help="most measured seconds per cell")
    p.add_argument("--lg-procs", type=int, default=2,
                   help="load generator processes at concurrency 32 (default 2)")
    p.add_argument("--profile", action="store_true",
                   help="also py-spy the daemons at c=32 (writes bench/out/daemon-profile-*.txt)")
    p.add_argument("--whatif", default="auditnowait",
                   help="diagnostic daemon variants run on the small model (comma list of "
                        "'+'-joined patches from bench/_daemon_whatif.py: nodelay, uvloop, "
                        "auditnowait), or 'none'; never used for budget lines")
    p.add_argument("--bare-loop", default="uvloop", choices=["uvloop", "asyncio"],
                   help="event loop of the bare handler (default uvloop: uvicorn's default "
                        "when uvloop is installed)")
    p.add_argument("--token-only", action="store_true",
                   help="only the app-token case: the daemon with and without a bearer token")
    p.add_argument("--out", type=Path, default=BENCH / "out" / "serve.json")
    args = p.parse_args(argv)
    st = Settings.from_args(args)
    if args.token_only:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        return token_only(st, args.out.with_name("serve-token.json"))
    started = time.monotonic()
    out_dir = args.out.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="outpost-bench-"))
    info = machine_info()
    source = source_fingerprint()
    log(f"{info['cpus']} CPUs ({info['cpu_model']}), load average {info['loadavg_at_start']}; "
        f"work dir {tmp}")

    from models.sample.dense import build_dense

    paths = {SMALL: SAMPLE_MODEL, DENSE: build_dense(tmp / "dense.onnx", width=1024, layers=4)}
    inputs = {SMALL: small_input(), DENSE: dense_input()}
    expected = {}
    for model in (SMALL, DENSE):
        session = open_session(str(paths[model]))
        names = [o.name for o in session.get_outputs()]
        expected[model] = dict(zip(names, session.run(None, {"input": inputs[model]}), strict=True))
    request_files = {}
    for model in (SMALL, DENSE):
        for body in BODIES:
            path = tmp / f"req-{model}-{body}.http"
            path.write_bytes(request_bytes(model, inputs[model], body)[0])
            request_files[model, body] = path
    ping = tmp / "req-ping.http"
    ping.write_bytes(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")

    # 1. in-process floor
    log("in-process onnxruntime and OrtBackend")
    inproc = bench_inprocess(st, paths, inputs)
    log("durability: fsync and AuditLog.append")
    durability = bench_durability(st, tmp)
    inproc.update(bench_token_check(st, tmp))

    rows: list[dict[str, Any]] = []
    ceiling: list[dict[str, Any]] = []
    rss: dict[str, float] = {}
    checks: dict[str, str] = {}
    profiles: dict[str, Any] = {}
    servers: list[Server] = []

    def add_row(server: str, model: str, body: str, conc: int, result: dict[str, Any]) -> None:
        row = {"server": server, "model": model, "body": body, "concurrency": conc, **result}
        rows.append(row)
        log(f"{server:10s} {model:6s} {body:6s} c={conc:<3d} {result['req_per_s']:8.0f} req/s  "
            f"p50 {result['p50_ms']:.3f} ms  p99 {result['p99_ms']:.3f} ms  err {result['errors']}")
        if result["errors"]:
            log(f"  first error: {result['error_sample'][:300]!r}")

    try:
        # 2+3. bare handler and daemon, alive together so their cells can alternate
        log("starting the bare ASGI handler, the canned server and the daemon")
        bare = start_helper("bare", paths, tmp, "--loop", st.bare_loop)
        servers.append(bare)
        canned = start_helper("canned", {}, tmp)
        servers.append(canned)
        data_dir = tmp / "node"
        outpost_cli("init", "--data-dir", str(data_dir), "--name", "bench")
        daemon = start_daemon(data_dir, tmp)
        servers.append(daemon)
        time.sleep(2.0)  # let start-up allocations settle
        rss["idle"] = daemon.rss_mb()
        log(f"daemon idle RSS {rss['idle']:.1f} MB")
        outpost_cli("models", "add", str(paths[DENSE]), "--name", DENSE, "--data-dir", str(data_dir))
        time.sleep(0.5)
        rss["with_dense"] = daemon.rss_mb()
        # The token case: the same daemon process, each request with a bearer token.
        secret = outpost_cli("token", "add", "bench-app", "--data-dir", str(data_dir)).strip()
        tokend = Server(TOKEN, daemon.proc, daemon.port, daemon.log_path)
        for body in BODIES:
            request_files[TOKEN, body] = tmp / f"req-token-{body}.http"
            request_files[TOKEN, body].write_bytes(
                with_token(request_files[SMALL, body].read_bytes(), secret))
        variants: list[Server] = []
        for patches in st.whatif:
            vdir = tmp / f"node-{patches.replace('+', '-')}"
            try:
                outpost_cli("init", "--data-dir", str(vdir), "--name", "bench")
                variants.append(start_daemon(vdir, tmp, patches))
                servers.append(variants[-1])
            except Exception as exc:  # a patch may no longer fit the code: skip the variant
                log(f"what-if daemon+{patches} skipped: {str(exc).strip().splitlines()[-1][:300]}")

        for server in (bare, daemon):
            for model in (SMALL, DENSE):
                for body in BODIES:
                    checks[f"{server.name}/{model}/{body}"] = check_server(
                        server, model, inputs[model], body, expected[model])
        bad = {k: v for k, v in checks.items() if v != "ok"}
        if bad:
            log(f"correctness probe failures: {bad}")

        log("load generator ceiling")
        for target, req in ((canned, ping), (bare, ping)):
            for conc in (1, 8, 32):
                result = run_cell(st, target, req, conc, tmp)
                label = "canned-raw" if target is canned else "bare /ping"
                ceiling.append({"server": label, "model": "-", "body": "-", "concurrency": conc, **result})
                log(f"{label:10s} c={conc:<3d} {result['req_per_s']:8.0f} req/s  "
                    f"p50 {result['p50_ms']:.3f} ms  loadgen cpu {result['loadgen_cpu_pct']:.0f}%")
        canned.stop()
        servers.remove(canned)

        for server in variants:
            checks[f"{server.name}/{SMALL}/binary"] = check_server(
                server, SMALL, inputs[SMALL], "binary", expected[SMALL])
        for model in (SMALL, DENSE):
            concs = (1, 8, 32) if model == SMALL else st.dense_conc
            for body in BODIES:
                for conc in concs:
                    budget_cell = model == SMALL and conc in (1, 32)
                    rounds = st.rounds if budget_cell else 1
                    group = [bare, daemon, *([tokend, *variants] if model == SMALL else [])]
                    per: dict[str, list[dict[str, Any]]] = {s.name: [] for s in group}
                    for i in range(rounds):
                        order = group if i % 2 == 0 else group[::-1]
                        for server in order:
                            key = (TOKEN, body) if server is tokend else (model, body)
                            per[server.name].append(run_cell(st, server, request_files[key], conc, tmp))
                    for name, results in per.items():
                        chosen = sorted(results, key=lambda r: r["req_per_s"])[len(results) // 2]
                        if rounds > 1:
                            chosen = dict(chosen, rounds_req_per_s=[r["req_per_s"] for r in results],
                                          rounds_p50_ms=[r["p50_ms"] for r in results])
                        add_row(name, model, body, conc, chosen)
        rss["after_load"] = daemon.rss_mb()

        if st.profile:
            for server in (daemon, *variants):
                for body in BODIES:
                    log(f"profiling {server.name} (py-spy) at c=32, {SMALL}, {body}")
                    profiles[f"{server.name}/{body}"] = profile_daemon(
                        st, server, request_files[SMALL, body], tmp, out_dir, body)

        for server in list(servers):
            server.stop()
            servers.remove(server)

        # 4. Ray Serve
        ray_note = "skipped (--quick)" if args.quick else "skipped (--no-ray)"
        if st.ray:
            log("starting Ray Serve (ray.init(num_cpus=2)); this takes a while")
            try:
                ray_server = start_helper("ray", paths, tmp, timeout=180)
                ray_server.name = "ray-serve"
                servers.append(ray_server)
                ray_note = ""
            except Exception as exc:
                ray_note = f"Ray Serve could not start: {str(exc).strip().splitlines()[-1][:300]}"
                log(ray_note)
            if not ray_note:
                for model in (SMALL, DENSE):
                    for body in BODIES:
                        checks[f"ray-serve/{model}/{body}"] = check_server(
                            ray_server, model, inputs[model], body, expected[model])
                for model in (SMALL, DENSE):
                    concs = (1, 8, 32) if model == SMALL else st.dense_conc
                    for body in BODIES:
                        for conc in concs:
                            ray_server.refresh_tree()
                            add_row("ray-serve", model, body, conc,
                                    run_cell(st, ray_server, request_files[model, body], conc, tmp))
                log("stopping Ray Serve")
                ray_server.stop(timeout=90)
                servers.remove(ray_server)
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                server.stop()

    # -- print --------------------------------------------------------------------------------
    order = {"bare": 0, "daemon": 1, TOKEN: 2, "ray-serve": 3}
    rows.sort(key=lambda r: (r["model"] != SMALL, r["body"], r["concurrency"],
                             order.get(r["server"], 2), r["server"]))
    print()
    print(f"Outpost serving benchmark — {info['cpus']} CPUs ({info['cpu_model']}), "
          f"onnxruntime {info['onnxruntime']}, Python {info['python']}"
          f"{', quick' if args.quick else ''}")
    print(f"daemon source fingerprint {source['sha256']} ({source['files']} files, newest "
          f"{source['newest_mtime']}); load average at start {info['loadavg_at_start']}")
    print(f"per cell: <= {st.requests} requests or <= {st.duration:g} s after warm-up "
          f"({st.warmup_requests} requests or {st.warmup_s:g} s); budget cells (small model, "
          f"c=1 and c=32) run {st.rounds}x alternating bare/daemon, median shown")
    print()
    print("In-process (batch 1, one caller; latency per call)")
    print(f"  {'what':38s} {'p50 ms':>8s} {'p99 ms':>8s} {'calls/s':>9s}")
    for key, r in inproc.items():
        p50 = f"{r['p50_ms']:.4f}" if "p50_ms" in r else "-"
        p99 = f"{r['p99_ms']:.4f}" if "p99_ms" in r else "-"
        print(f"  {key:38s} {p50:>8s} {p99:>8s} {r['calls_per_s']:9.0f}")
    print()
    print("Durability (what DESIGN §3 'durable before the caller is answered' costs here)")
    for key, r in durability.items():
        if "error" in r:
            print(f"  {key:38s} error: {r['error']}")
            continue
        p50 = f"{r['p50_ms']:.4f}" if "p50_ms" in r else "-"
        p99 = f"{r['p99_ms']:.4f}" if "p99_ms" in r else "-"
        print(f"  {key:38s} {p50:>8s} {p99:>8s} {r['calls_per_s']:9.0f}")
    print()
    print("Load generator ceiling (trivial routes; same machine, so the server shares the cores)")
    print_table(ceiling)
    print()
    print("Servers (batch 1 per request; json = JSON in/out, binary = binary tensors in/out)")
    print_table(rows)
    print()
    failed = {k: v for k, v in checks.items() if v != "ok"}
    print(f"correctness probe: {len(checks) - len(failed)}/{len(checks)} server/model/body "
          f"answers match in-process onnxruntime" + (f"; FAILED: {failed}" if failed else ""))
    budgets = budget_lines(rows, inproc, rss, ray_note or "not run") + token_budget_lines(rows)
    print()
    print("Budgets (DESIGN §9)")
    for b in budgets:
        mark = "----" if b["pass"] is None else ("PASS" if b["pass"] else "MISS")
        print(f"  {mark}  {b['budget']}: {b['text']}")
        if b.get("whatif"):
            print("          what-if: " + "; ".join(f"{k} {v}" for k, v in b["whatif"].items()))
    if profiles:
        print()
        print("Profiles (py-spy, c=32; 'select' = event loop waiting for I/O)")
        for key, prof in profiles.items():
            print(f"  {key}:")
            if "error" in prof:
                print(f"    {prof['error']}")
                continue
            print(f"    raw stacks {prof['file']} ({prof['samples']} samples, "
                  f"{prof['req_per_s_under_profiler']:.0f} req/s under the profiler)")
            print("    threads: " + ", ".join(f"{k} {v:.0f}%" for k, v in prof["threads"][:4]))
            print("    event-loop thread, self time:")
            for k, v in prof["main_self"][:12]:
                print(f"      {v:5.1f}%  {k}")
            print("    event-loop thread, inclusive (outpost frames):")
            shown = [(k, v) for k, v in prof["main_inclusive"]
                     if any(m in k for m in ("node/", "models/", "federation/", "aiosqlite",
                                             "transport", "Transport"))]
            for k, v in shown[:14]:
                print(f"      {v:5.1f}%  {k}")
    elapsed = time.monotonic() - started
    print()
    print(f"finished in {elapsed:.0f} s; load average at the end {os.getloadavg()}; "
          f"results in {args.out}")

    info["loadavg_at_end"] = os.getloadavg()
    report = {
        "machine": info,
        "settings": st.__dict__,
        "mode": "quick" if args.quick else "full",
        "elapsed_s": elapsed,
        "source": source,
        "inprocess": inproc,
        "durability": durability,
        "loadgen_ceiling": ceiling,
        "cells": rows,
        "rss_mb": rss,
        "correctness": checks,
        "ray": ray_note or "ran",
        "budgets": budgets,
        "profiles": profiles,
    }
    args.out.write_text(json.dumps(report, indent=2, default=str))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
