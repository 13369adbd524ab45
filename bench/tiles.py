"""Trail benchmark (issue 15): C2SP tile serving, `verify-log`, and the tlog-witness round trip.

Run from the repository root::

    python bench/tiles.py            # 10^6-entry log
    python bench/tiles.py --quick    # 10^5 entries, shorter runs
    python bench/tiles.py --entries N

Prints, and writes ``bench/out/tiles.json`` (nothing asserted; exit status 0):

1. **Tile serving** by a real daemon's ``audit.tiles_listen`` listener over loopback HTTP/1.1
   keep-alive at N entries: full level-0 hash tiles (8 KiB, read from the node table: one
   ``IN (...)`` query of 256 keys), full entry bundles (256 entries), and the checkpoint.
   Random tile indexes (mostly database reads), and the same among 64 tiles (served from the
   daemon's cache of immutable tiles). p50/p99 latency at c=1, throughput (tiles/s, MB/s) at c=8 (httpx
   async client in this process; the client shares the 2 cores with the daemon).
2. **verify-log** (``node.trail_ops.verify_log``, what ``outpost audit verify-log`` runs) over
   the same listener: fetches every bundle and tile, recomputes every hash, checks the root.
3. **Witness round trip**: a real enrolled daemon (node-a) as the witness; this process holds
   node-b's certificate and key, signs node-b checkpoints of a growing in-memory tree and
   submits each with its consistency proof (``POST /peer/v1/witness/add-checkpoint`` over
   mutual TLS, keep-alive). p50/p99 per checkpoint, including the witness persisting its
   record (SQLite commit) before it answers with the cosignature.

The N-entry log is written straight into the node's database (entries, every Merkle node via
``CompactRange``, a signed head) before the daemon starts: the serving and verifying paths are
what is measured, and they read exactly the tables the daemon writes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from federation.merkle import CompactRange, MemoryTree, leaf_hash  # noqa: E402
from federation.note import Checkpoint, Signer  # noqa: E402
from federation.tiles import TileId  # noqa: E402

PY = sys.executable


def cli(*args: str) -> str:
    r = subprocess.run([PY, "-m", "cli.main", *args], cwd=ROOT, capture_output=True, text=True,
                       check=True)
    return r.stdout


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def build_log(data_dir: Path, n: int) -> str:
    """Append n entries (and their nodes and a signed head) to the node's stored log."""
    from node.keys import load_key
    from node.ops_federation import _verifier_names

    origin, _ = _verifier_names(data_dir)
    key = load_key(data_dir)
    db = sqlite3.connect(data_dir / "outpost.db")
    start = db.execute("SELECT COALESCE(MAX(seq) + 1, 0) FROM audit_entry").fetchone()[0]
    from federation.merkle import node_key

    nodes = dict(db.execute("SELECT id, hash FROM audit_node").fetchall())
    cr = CompactRange.from_store(start, lambda lv, ix: bytes(nodes[node_key(lv, ix)]))
    template = ('{"caller":"App::\\"bench\\"","data_class":"public","decision":"allow",'
                '"input_sha256":"%s","kind":"infer","model":"digits","outcome":"ok",'
                '"time":"2026-01-01T00:00:00.%06dZ","version":"1"}')
    db.execute("BEGIN")
    batch_e: list[tuple[int, bytes]] = []
    batch_n: list[tuple[int, bytes]] = []
    for i in range(start, start + n):
        entry = (template % (f"{i:064x}", i % 1_000_000)).encode()
        batch_e.append((i, entry))
        batch_n.extend((h.key, h.hash) for h in cr.append(leaf_hash(entry)))
        if len(batch_e) >= 50_000:
            db.executemany("INSERT INTO audit_entry VALUES (?, ?)", batch_e)
            db.executemany("INSERT INTO audit_node VALUES (?, ?)", batch_n)
            batch_e, batch_n = [], []
    db.executemany("INSERT INTO audit_entry VALUES (?, ?)", batch_e)
    db.executemany("INSERT INTO audit_node VALUES (?, ?)", batch_n)
    note = Checkpoint(origin, cr.size, cr.root()).sign([Signer(origin, key)])
    db.execute("INSERT OR REPLACE INTO audit_head(id, size, note) VALUES (0, ?, ?)",
               (cr.size, note))
    db.execute("COMMIT")
    db.close()
    return origin


def start_daemon(data_dir: Path, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([PY, "-m", "cli.main", "run", "--data-dir", str(data_dir),
                             "--listen", "127.0.0.1:0", *extra], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "ready on" in line:
            return proc
    raise RuntimeError("daemon did not start")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def configure(data_dir: Path, **audit: Any) -> None:
    import tomllib

    import tomli_w

    path = data_dir / "outpost.toml"
    raw = tomllib.loads(path.read_text())
    raw.setdefault("audit", {}).update(audit)
    raw.setdefault("discovery", {})["mdns"] = False
    if "federation" in raw:
        raw["federation"]["preset"] = "local"
    path.write_text(tomli_w.dumps(raw))


async def serve_bench(url: str, size: int, requests: int) -> dict[str, Any]:
    full = size // 256
    out: dict[str, Any] = {}
    # A fresh pool per cell: uvicorn closes keep-alive connections idle for 5 s, and reusing
    # one just as it closes is a client-side race, not a serving failure.
    transport = httpx.AsyncHTTPTransport(retries=0, limits=httpx.Limits(max_connections=8,
                                         keepalive_expiry=2.0))
    async with httpx.AsyncClient(base_url=url, timeout=30, transport=transport) as http:
        for name, make in (
            ("hash tile L0 (8 KiB)", lambda: TileId(0, random.randrange(full)).path),
            ("hash tile L0, cached", lambda: TileId(0, random.randrange(64)).path),
            ("entry bundle (256)", lambda: TileId(-1, random.randrange(full)).path),
            ("checkpoint", lambda: "checkpoint"),
        ):
            for _ in range(20):  # warm
                (await http.get(make())).raise_for_status()
            lat = []
            for _ in range(requests // 4):
                t = time.perf_counter()
                (await http.get(make())).raise_for_status()
                lat.append((time.perf_counter() - t) * 1000)
            sizes = []

            async def worker(k: int, make: Any = make, sizes: list[int] = sizes) -> None:
                for _ in range(k):
                    r = await http.get(make())
                    r.raise_for_status()
                    sizes.append(len(r.content))

            t = time.perf_counter()
            await asyncio.gather(*(worker(requests // 8) for _ in range(8)))
            wall = time.perf_counter() - t
            out[name] = {"p50_ms_c1": round(pct(lat, 50), 3), "p99_ms_c1": round(pct(lat, 99), 3),
                         "per_s_c8": round(len(sizes) / wall, 1),
                         "MB_per_s_c8": round(sum(sizes) / wall / 1e6, 2)}
    return out


def witness_bench(tmp: Path, rounds: int) -> dict[str, Any]:
    from node.enrollment import AUTHORITY_CERT, NODE_CERT
    from node.keys import key_path, load_key
    from node.tls import client_context

    ca = tmp / "ca"
    cli("federation", "init", "--dir", str(ca), "--name", "acme")
    dirs = {}
    for name in ("node-a", "node-b"):
        d = tmp / name
        cli("init", "--name", name, "--no-sample", "--data-dir", str(d))
        cli("join", "request", "-o", str(tmp / f"{name}.req"), "--data-dir", str(d))
        cli("federation", "enroll", str(tmp / f"{name}.req"), "--ca", str(ca), "--tier", "edge",
            "--site", "s", "--jurisdiction", "DE", "-o", str(tmp / f"{name}.pem"))
        cli("join", str(tmp / f"{name}.pem"), "--data-dir", str(d))
        dirs[name] = d
    configure(dirs["node-a"])
    port = free_port()
    proc = start_daemon(dirs["node-a"], "--peer-listen", f"127.0.0.1:{port}")
    try:
        b = dirs["node-b"]
        tls = client_context((b / NODE_CERT).read_bytes(), key_path(b).read_bytes(),
                             (b / AUTHORITY_CERT).read_bytes())
        signer = Signer("outpost/acme/node-b", load_key(b))
        tree = MemoryTree()
        from federation.witness import add_checkpoint_body

        url = f"https://127.0.0.1:{port}/peer/v1/witness/add-checkpoint"
        lat: list[float] = []
        old = 0
        with httpx.Client(verify=tls, timeout=30) as http:
            for r in range(rounds + 5):
                for i in range(10):
                    tree.append_entry(b"entry %d" % (r * 10 + i))
                note = Checkpoint(signer.name, tree.size, tree.root()).sign([signer])
                proof = tree.consistency_proof(old, tree.size) if old else []
                body = add_checkpoint_body(old, proof, note)
                t = time.perf_counter()
                resp = http.post(url, content=body)
                dt = (time.perf_counter() - t) * 1000
                assert resp.status_code == 200, resp.text
                old = tree.size
                if r >= 5:
                    lat.append(dt)
        return {"rounds": len(lat), "p50_ms": round(pct(lat, 50), 3),
                "p99_ms": round(pct(lat, 99), 3)}
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--entries", type=int)
    args = ap.parse_args()
    n = args.entries or (100_000 if args.quick else 1_000_000)
    requests = 800 if args.quick else 2000
    tmp = Path(tempfile.mkdtemp(prefix="outpost-bench-tiles-"))
    result: dict[str, Any] = {"entries": n, "machine": platform.platform(),
                              "cpus": os.cpu_count(), "load_start": os.getloadavg()[0]}
    try:
        d = tmp / "log"
        cli("init", "--name", "bench", "--no-sample", "--data-dir", str(d))
        t = time.perf_counter()
        origin = build_log(d, n)
        print(f"built a {n}-entry log in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        port = free_port()
        configure(d, tiles_listen=f"127.0.0.1:{port}")
        proc = start_daemon(d)
        url = f"http://127.0.0.1:{port}"
        try:
            size = int(httpx.get(f"{url}/checkpoint").text.split("\n")[1])
            result["serve"] = asyncio.run(serve_bench(url, size, requests))
            from node.trail_ops import verify_log

            vkey = cli("audit", "vkey", "--data-dir", str(d)).strip()
            t = time.perf_counter()
            v = verify_log(url, vkey, [], None, tmp / "state.json")
            result["verify_log"] = {"entries": v["entries"],
                                    "seconds": round(time.perf_counter() - t, 2),
                                    "origin": origin}
        finally:
            proc.terminate()
            proc.wait(30)
        result["witness"] = witness_bench(tmp / "fed", 100 if args.quick else 300)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["load_end"] = os.getloadavg()[0]
    print(f"\nC2SP tiles at {n:,} entries (loopback, machine shared):")
    for name, r in result["serve"].items():
        print(f"  {name:<22} c=1 p50 {r['p50_ms_c1']:.2f} ms  p99 {r['p99_ms_c1']:.2f} ms   "
              f"c=8 {r['per_s_c8']:.0f}/s  {r['MB_per_s_c8']:.1f} MB/s")
    v = result["verify_log"]
    print(f"verify-log: {v['entries']:,} entries in {v['seconds']:.1f} s "
          f"({v['entries'] / v['seconds']:,.0f} entries/s)")
    w = result["witness"]
    print(f"witness round trip (add-checkpoint, mTLS keep-alive, persisted before answer): "
          f"p50 {w['p50_ms']:.2f} ms  p99 {w['p99_ms']:.2f} ms over {w['rounds']} checkpoints")
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "tiles.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
