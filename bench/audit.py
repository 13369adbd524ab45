"""Audit log benchmark (DESIGN §9: durable append >= 10,000 entries/s; inclusion proof at
1,000,000 entries <= 1 ms).

Run from the repository root::

    python bench/audit.py            # 10^6-entry log (~1.5-2 min on the 2-core machine)
    python bench/audit.py --quick    # 10^5-entry log, shorter append runs (~15 s)
    python bench/audit.py --entries N

Prints, and writes to ``bench/out/audit.json`` (nothing is asserted; the exit status is 0):

1. **Durable appends with group commit** (``node.audit.AuditLog`` on ``node.store.Store``: WAL,
   ``synchronous=FULL``, each commit = entries + Merkle nodes; the signed head is stored after
   the callers are answered) at 1, 8
   and 64 concurrent appenders. Each appender builds an entry with ``log.record`` and awaits its
   append before the next, like a request handler. Entries/s, p50/p99 append latency (the
   ``await``), mean group size (``log.appended / log.commits``). Same-run baselines with plain
   ``sqlite3`` on the same schema and the same rows (entry + its nodes + head upsert, no
   signing): one fsync'd transaction per entry (the ceiling without group commit) and all rows
   in one bulk transaction (the ceiling of what SQLite can take at all).
2. **Proofs at N entries** via ``node.audit.AuditReader`` — inclusion proofs for random leaf
   indexes in the head tree, consistency proofs for random ``(m, n)``, and consistency proofs
   from a retained (signed) checkpoint to the head (what a witness asks for). p50/p99 in ms per
   call. Every timed proof is verified once, outside the timing: inclusion proofs against the
   signed head root (and the leaf hash against the entry bytes), random consistency proofs
   against roots recomputed independently from the entry bytes, checkpoint→head proofs against
   both signed roots.
3. **Full ``audit verify``** (``AuditReader.verify``, what ``outpost audit verify`` runs) at N
   entries, in a fresh child process so its peak RSS (``ru_maxrss``) is its own.

How the N-entry log is built: through the real ``AuditLog`` (not a SQL fast path), with
``max_group`` (4,096) appenders in flight at a time via ``append_bytes`` — the same commit code
and tables the daemon writes, so the node table, retained checkpoints and signed head are the
daemon's own. Entry bytes come from a template that is checked byte-for-byte against
``AuditEntry(...).to_bytes()`` every 1,000th entry (building 10^6 ``AuditEntry`` objects would
add ~20 s). A mirror ``CompactRange`` over the same bytes supplies the independent roots.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import random
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.audit import AuditEntry
from federation.merkle import CompactRange, InclusionProof, inclusion_plan, leaf_hash, node_key
from federation.note import Checkpoint, Verifier
from node.audit import AuditLog, AuditReader
from node.config import AuditSection
from node.store import MIGRATIONS, Store

BUDGET_APPEND_PER_S = 10_000  # at 64 concurrent appenders
BUDGET_PROOF_MS = 1.0  # inclusion proof at 10^6 entries, p50 (we also print p99)
CONCURRENCY = (1, 8, 64)
OUT = Path(__file__).resolve().parent / "out" / "audit.json"


def say(text: str = "") -> None:
    print(text, flush=True)


def pct(samples: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(samples)
    return s[min(len(s) - 1, max(0, round(q * len(s)) - 1))]


def mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# -- entries -----------------------------------------------------------------------------------

MODELS = ("resnet", "bert-small", "whisper-tiny", "yolo-n", "clip", "e5", "mobilenet")
CALLERS = tuple(f"app-{i}" for i in range(13))
CLASSES = ("public", "internal", "personal")


def entry_bytes(i: int) -> bytes:
    """A realistic ``infer`` entry (~220 bytes), canonical JSON built from a template."""
    t = f"2025-01-31T{(i // 3_600_000) % 24:02d}:{(i // 60_000) % 60:02d}:{(i // 1000) % 60:02d}.{i % 1000:03d}Z"
    sha = hashlib.sha256(i.to_bytes(8, "big")).hexdigest()
    return (
        f'{{"caller":"{CALLERS[i % 13]}","data_class":"{CLASSES[i % 3]}",'
        f'"input_sha256":"{sha}","kind":"infer","model":"{MODELS[i % 7]}",'
        f'"outcome":"ok","time":"{t}","version":"{i % 5 + 1}"}}'
    ).encode()


def entry_checked(i: int) -> bytes:
    raw = entry_bytes(i)
    if i % 1000 == 0:
        obj = json.loads(raw)
        if AuditEntry(**obj).to_bytes() != raw:
            raise SystemExit(f"bench bug: template entry {i} is not canonical AuditEntry bytes")
    return raw


# -- 1. appends --------------------------------------------------------------------------------


async def open_log(data_dir: Path, key: Ed25519PrivateKey) -> tuple[Store, AuditLog]:
    store = await Store.open(data_dir)
    log = await AuditLog.open(store, key, "bench-node", None, AuditSection())
    return store, log


async def append_run(concurrency: int, seconds: float, workdir: Path) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"append{concurrency}-", dir=workdir))
    store, log = await open_log(data_dir, Ed25519PrivateKey.generate())
    lat: list[float] = []
    # Warm-up: a few appends (first fsyncs grow the WAL file).
    for _ in range(20):
        await log.append(log.record("infer", model="m", version="1", caller="app",
                                    data_class="public", outcome="ok", input_sha256="0" * 64))
    appended0, commits0 = log.appended, log.commits
    stop = time.perf_counter() + seconds

    async def appender(n: int) -> None:
        sha = hashlib.sha256(n.to_bytes(4, "big")).hexdigest()
        while time.perf_counter() < stop:
            entry = log.record("infer", model="resnet", version="1", caller=f"app-{n}",
                               data_class="public", outcome="ok", input_sha256=sha)
            t0 = time.perf_counter()
            await log.append(entry)
            lat.append(time.perf_counter() - t0)

    t0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(appender(n) for n in range(concurrency)))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    appended, commits = log.appended - appended0, log.commits - commits0
    await log.close()
    await store.close()
    shutil.rmtree(data_dir, ignore_errors=True)
    return {
        "concurrency": concurrency,
        "entries": len(lat),
        "seconds": elapsed,
        "entries_per_s": len(lat) / elapsed,
        "p50_ms": pct(lat, 0.50) * 1e3,
        "p99_ms": pct(lat, 0.99) * 1e3,
        "mean_group": appended / commits if commits else 0.0,
        "commits_per_s": commits / elapsed,
        # CPU of this process (loop + sqlite thread) per entry: steadier than entries/s when
        # other processes share the machine.
        "cpu_us_per_entry": cpu / len(lat) * 1e6,
    }


def raw_rows(n: int) -> tuple[list[tuple[int, bytes]], list[list[tuple[int, bytes]]], str]:
    cr = CompactRange()
    entries, nodes = [], []
    for i in range(n):
        e = entry_bytes(i)
        entries.append((i, e))
        nodes.append([(x.key, x.hash) for x in cr.append(leaf_hash(e))])
    key = Ed25519PrivateKey.generate()
    from federation.note import Signer

    note = Checkpoint("outpost/local/bench-node", cr.size, cr.root()).sign(
        [Signer("outpost/local/bench-node", key)])
    return entries, nodes, note


def raw_db(workdir: Path, name: str) -> tuple[sqlite3.Connection, Path]:
    d = Path(tempfile.mkdtemp(prefix=name, dir=workdir))
    conn = sqlite3.connect(d / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    for statement in MIGRATIONS[1]:  # the audit tables exactly as node.store creates them
        conn.execute(statement)
    return conn, d


HEAD_SQL = ("INSERT INTO audit_head(id, size, note) VALUES(0, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET size=excluded.size, note=excluded.note")


def raw_per_entry(workdir: Path, seconds: float, rows: Any) -> dict[str, Any]:
    """One fsync'd transaction per entry: entry + its nodes + head, plain sqlite3."""
    entries, nodes, note = rows
    conn, d = raw_db(workdir, "raw1-")
    lat = []
    stop = time.perf_counter() + seconds
    t0 = time.perf_counter()
    i = 0
    while time.perf_counter() < stop and i < len(entries):
        t1 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO audit_entry(seq, entry) VALUES(?, ?)", entries[i])
        conn.executemany("INSERT INTO audit_node(id, hash) VALUES(?, ?)", nodes[i])
        conn.execute(HEAD_SQL, (i + 1, note))
        conn.execute("COMMIT")
        lat.append(time.perf_counter() - t1)
        i += 1
    elapsed = time.perf_counter() - t0
    conn.close()
    shutil.rmtree(d, ignore_errors=True)
    return {"entries": i, "seconds": elapsed, "entries_per_s": i / elapsed,
            "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3}


def raw_bulk(workdir: Path, rows: Any) -> dict[str, Any]:
    """The same rows in one transaction (one fsync): SQLite's own ceiling for this schema."""
    entries, nodes, note = rows
    conn, d = raw_db(workdir, "rawbulk-")
    flat = [x for group in nodes for x in group]
    t0 = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO audit_entry(seq, entry) VALUES(?, ?)", entries)
    conn.executemany("INSERT INTO audit_node(id, hash) VALUES(?, ?)", flat)
    conn.execute(HEAD_SQL, (len(entries), note))
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    shutil.rmtree(d, ignore_errors=True)
    return {"entries": len(entries), "seconds": elapsed, "entries_per_s": len(entries) / elapsed}


# -- 2. build a big log ------------------------------------------------------------------------


async def build_log(data_dir: Path, key: Ed25519PrivateKey, n: int,
                    want_roots: set[int]) -> dict[str, Any]:
    """Append ``n`` entries through AuditLog with max_group appenders in flight."""
    store, log = await open_log(data_dir, key)
    group = log.config.max_group
    mirror = CompactRange()
    roots: dict[int, bytes] = {}
    inflight: list[tuple[int, asyncio.Future[list[int]]]] = []
    t0 = time.perf_counter()
    last_print = t0
    for start in range(0, n, group):
        chunk = [entry_checked(i) for i in range(start, min(n, start + group))]
        for e in chunk:
            mirror.append(leaf_hash(e))
            if mirror.size in want_roots:
                roots[mirror.size] = mirror.root()
        inflight.append((start, asyncio.ensure_future(
            asyncio.gather(*(log.append_bytes(e) for e in chunk)))))
        while len(inflight) > 2:
            first, future = inflight.pop(0)
            got = await future
            if got != list(range(first, first + len(got))):
                raise SystemExit(f"bench bug: chunk at {first} was indexed from {got[0]}")
        if time.perf_counter() - last_print > 10:
            last_print = time.perf_counter()
            say(f"    ... {start + len(chunk):,} / {n:,} entries "
                f"({(start + len(chunk)) / (last_print - t0):,.0f}/s)")
    for _, future in inflight:
        await future
    elapsed = time.perf_counter() - t0
    head = log.checkpoint()
    commits, size = log.commits, log.size
    verifiers = log.verifiers
    await log.close()
    await store.close()
    if size != n or head is None:
        raise SystemExit(f"bench bug: built {size} entries, wanted {n}")
    cp = Checkpoint.open(head, verifiers[0])
    if cp.root_hash != mirror.root():
        raise SystemExit("signed head root differs from the mirror recomputed from entry bytes")
    db = data_dir / "outpost.db"
    return {
        "entries": n, "seconds": elapsed, "entries_per_s": n / elapsed, "commits": commits,
        "mean_group": n / commits, "head": head, "verifiers": [v.vkey for v in verifiers],
        "roots": roots, "db_mb": db.stat().st_size / 2**20,
    }


async def bench_proofs(data_dir: Path, key: Ed25519PrivateKey, n: int, samples: int,
                       pairs: list[tuple[int, int]], built: dict[str, Any],
                       rng: random.Random) -> dict[str, Any]:
    store = await Store.open(data_dir)
    verifiers = [Verifier.from_vkey(v) for v in built["verifiers"]]
    reader = AuditReader(store, verifiers)
    head = Checkpoint.open(built["head"], verifiers[0])
    roots: dict[int, bytes] = built["roots"]
    checkpoints = await reader.checkpoints()
    # Warm-up: page cache and aiosqlite thread (the daemon's reader is warm too).
    for _ in range(50):
        await reader.inclusion_proof(rng.randrange(n), n)

    indexes = [rng.randrange(n) for _ in range(samples)]
    # The one-round-trip reference (see inclusion_one_query) is timed interleaved with the
    # daemon's proof, so both see the same machine load.
    inc_lat, inc_len, ref_lat = [], [], []
    for i in indexes:
        t0 = time.perf_counter()
        proof = await reader.inclusion_proof(i, n)
        inc_lat.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref = await inclusion_one_query(store, i, n)
        ref_lat.append(time.perf_counter() - t0)
        if ref != proof:
            raise SystemExit(f"bench bug: one-query reference proof for {i} differs")
        inc_len.append(len(proof.hashes))
        if proof.leaf_hash != leaf_hash(entry_bytes(i)):
            raise SystemExit(f"inclusion proof for {i} carries the wrong leaf hash")
        proof.verify(head.root_hash)  # raises BadProof

    con_lat, con_len = [], []
    for m, k in pairs:
        t0 = time.perf_counter()
        cproof = await reader.consistency_proof(m, k)
        con_lat.append(time.perf_counter() - t0)
        con_len.append(len(cproof.hashes))
        cproof.verify(roots[m], roots[k])

    # Witness case: from a retained signed checkpoint to the signed head.
    signed = [(s, Checkpoint.open(note, verifiers[0])) for s, note in checkpoints if 0 < s < n]
    wit_lat = []
    for _ in range(samples if signed else 0):
        s, cp = rng.choice(signed)
        t0 = time.perf_counter()
        cproof = await reader.consistency_proof(s, n)
        wit_lat.append(time.perf_counter() - t0)
        cproof.verify(cp.root_hash, head.root_hash)

    # Where an inclusion proof's time goes: pure-Python plan/assemble vs SQLite round trips.
    from node.audit import _fetch_nodes

    t_plan, t_size, t_fetch, t_leaf = [], [], [], []
    for i in indexes[: min(len(indexes), 500)]:
        t0 = time.perf_counter()
        await reader.size()
        t1 = time.perf_counter()
        plan = inclusion_plan(i, n)
        plan_nodes = plan.nodes
        t2 = time.perf_counter()
        fetched = await _fetch_nodes(store, plan_nodes)
        t3 = time.perf_counter()
        plan.assemble(fetched)
        t4 = time.perf_counter()
        await _fetch_nodes(store, [(0, i)])
        t5 = time.perf_counter()
        t_size.append(t1 - t0)
        t_plan.append((t2 - t1) + (t4 - t3))
        t_fetch.append(t3 - t2)
        t_leaf.append(t5 - t4)
    await store.close()

    def stats(lat: list[float]) -> dict[str, float]:
        return {"p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3,
                "mean_ms": sum(lat) / len(lat) * 1e3} if lat else {}

    return {
        "tree_size": n,
        "retained_checkpoints": len(checkpoints),
        "inclusion": {**stats(inc_lat), "samples": len(inc_lat), "verified": len(inc_lat),
                      "mean_hashes": sum(inc_len) / len(inc_len)},
        "consistency_random": {**stats(con_lat), "samples": len(con_lat),
                               "verified": len(con_lat),
                               "mean_hashes": sum(con_len) / len(con_len)},
        "consistency_checkpoint_to_head": {**stats(wit_lat), "samples": len(wit_lat),
                                           "verified": len(wit_lat)},
        "reference_inclusion_one_query": stats(ref_lat),
        "inclusion_breakdown_p50_ms": {
            "size_query": pct(t_size, 0.5) * 1e3,
            "plan_and_assemble": pct(t_plan, 0.5) * 1e3,
            "fetch_nodes_query": pct(t_fetch, 0.5) * 1e3,
            "fetch_leaf_query": pct(t_leaf, 0.5) * 1e3,
        },
    }


async def inclusion_one_query(store: Store, index: int, size: int) -> InclusionProof:
    """What AuditReader.inclusion_proof returns, in ONE aiosqlite round trip (not daemon code):
    ``execute_fetchall``, with the leaf and the head size folded into the node query."""
    plan = inclusion_plan(index, size)
    want = {node_key(lv, ix): (lv, ix) for lv, ix in [*plan.nodes, (0, index)]}
    keys = list(want)
    rows = await store.conn.execute_fetchall(
        f"SELECT id, hash FROM audit_node WHERE id IN ({','.join('?' * len(keys))}) "
        "UNION ALL SELECT -1, size FROM audit_head WHERE id = 0",
        keys,
    )
    got: dict[tuple[int, int], bytes] = {}
    current = 0
    for key, value in rows:
        if key == -1:
            current = int(value)
        else:
            got[want[int(key)]] = bytes(value)
    if not 0 <= index < size <= current:
        raise ValueError(f"no proof for {index} in {size} (log size {current})")
    return InclusionProof(index, size, got[(0, index)], tuple(plan.assemble(got)))


# -- 3. verify (child process) -----------------------------------------------------------------


def vm_hwm_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def verify_child(data_dir: str, vkeys: list[str]) -> None:
    """Runs in a fresh interpreter: AuditReader.verify, then prints time and peak RSS (JSON).

    Peak RSS is ``VmHWM`` of /proc/self/status (this process's own high-water mark; after
    fork+exec ``ru_maxrss`` still carries the parent's peak on Linux).
    """
    base_mb = vm_hwm_mb()

    async def go() -> dict[str, Any]:
        store = await Store.open(Path(data_dir))
        reader = AuditReader(store, [Verifier.from_vkey(v) for v in vkeys])
        t0, cpu0 = time.perf_counter(), time.process_time()
        report = await reader.verify()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        await store.close()
        return {"seconds": elapsed, "cpu_s": cpu, "ok": report.ok, "entries": report.entries,
                "checkpoints": report.checkpoints, "verified_size": report.verified_size,
                "problems": list(report.problems)}

    out = asyncio.run(go())
    out["peak_rss_mb"] = vm_hwm_mb()
    out["baseline_rss_mb"] = base_mb
    print(json.dumps(out))


def run_verify(data_dir: Path, vkeys: list[str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--verify-child", str(data_dir), *vkeys],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode:
        raise SystemExit(f"verify child failed:\n{proc.stderr}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s_incl_start"] = time.perf_counter() - t0
    return out


# -- main --------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
MEASURED = ("node/audit.py", "node/store.py", "federation/audit.py", "federation/merkle.py",
            "federation/note.py", "federation/canonical.py")


def source_fingerprint() -> dict[str, Any]:
    """Which audit code was measured (the tree changes under the bench; no git here)."""
    digest = hashlib.sha256()
    for name in MEASURED:
        digest.update(name.encode() + b"\0" + (ROOT / name).read_bytes())
    newest = max((ROOT / name).stat().st_mtime for name in MEASURED)
    return {"sha256": digest.hexdigest()[:16], "files": list(MEASURED),
            "newest_mtime": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(newest))}


async def profile_appends(seconds: float, workdir: Path) -> None:
    """cProfile one 64-appender run; print where the event loop's time goes."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    r = await append_run(64, seconds, workdir)
    prof.disable()
    say(f"\n   --profile: cProfile of one 64-appender run ({r['entries_per_s']:,.0f} entries/s under "
        "the profiler; event-loop thread only — the sqlite thread is not seen)")
    stats = pstats.Stats(prof)
    rows = []
    for (file, line, fn), (_cc, _nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = Path(file)
        rows.append((ct, tt, f"{where.parent.name}/{where.name}:{line}({fn})"))
    say(f"   {'cumulative s':>12} {'self s':>8}  function")
    for ct, tt, name in sorted(rows, reverse=True)[:25]:
        say(f"   {ct:>12.3f} {tt:>8.3f}  {name}")


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    n = args.entries or (100_000 if quick else 1_000_000)
    seconds = args.seconds or (1.5 if quick else 4.0)
    samples = args.proofs or (500 if quick else 2000)
    rounds = args.rounds or (1 if quick else 3)
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="outpost-bench-audit-", dir=args.tmp))
    say(f"audit bench: {'quick' if quick else 'full'}, log of {n:,} entries, "
        f"{rounds} x {seconds:g} s per append level, {samples} proofs per kind; "
        f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs, data in {workdir}")
    load0 = os.getloadavg()
    if load0[0] > 0.5:
        say(f"   WARNING: load average {load0[0]:.2f} before start: other processes share the "
            "CPUs and the disk; figures below (appends, p99s) will read low — rerun when idle")
    source = source_fingerprint()
    say(f"   audit source fingerprint {source['sha256']} (newest {source['newest_mtime']})")
    result: dict[str, Any] = {"mode": "quick" if quick else "full", "entries": n,
                              "loadavg_start": load0, "source": source}
    try:
        # 1 ------------------------------------------------------------------------------------
        say(f"\n1. durable appends (AuditLog: WAL, synchronous=FULL, entries + nodes "
            f"per commit, head signed off the path); median of {rounds} round(s)")
        say(f"   {'appenders':>9} {'entries/s':>11} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'mean group':>10} {'commits/s':>10} {'CPU us/entry':>12}")
        appends = []
        for c in CONCURRENCY:
            runs = [await append_run(c, seconds, workdir) for _ in range(rounds)]
            runs.sort(key=lambda r: r["entries_per_s"])
            r = dict(runs[len(runs) // 2])  # the median round
            r["rounds_entries_per_s"] = [x["entries_per_s"] for x in runs]
            appends.append(r)
            spread = (f"  (rounds {min(r['rounds_entries_per_s']):,.0f}.."
                      f"{max(r['rounds_entries_per_s']):,.0f})" if rounds > 1 else "")
            say(f"   {c:>9} {r['entries_per_s']:>11,.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                f"{r['mean_group']:>10.1f} {r['commits_per_s']:>10,.0f} "
                f"{r['cpu_us_per_entry']:>12.1f}{spread}")
        rows = raw_rows(args.raw_entries or (20_000 if quick else 100_000))
        per_entry = raw_per_entry(workdir, seconds, rows)
        bulk = raw_bulk(workdir, rows)
        say("   raw sqlite3, same schema and rows (entry + nodes + head), no signing:")
        say(f"     one fsync'd txn per entry : {per_entry['entries_per_s']:>11,.0f} entries/s  "
            f"(p50 {per_entry['p50_ms']:.2f} ms, p99 {per_entry['p99_ms']:.2f} ms per commit)")
        say(f"     bulk, one txn             : {bulk['entries_per_s']:>11,.0f} entries/s  "
            f"({bulk['entries']:,} entries in {bulk['seconds']:.2f} s)")
        at64 = appends[-1]["entries_per_s"]
        ratios = {
            "group64_over_txn_per_entry": at64 / per_entry["entries_per_s"],
            "group64_over_bulk": at64 / bulk["entries_per_s"],
            "group1_over_txn_per_entry": appends[0]["entries_per_s"] / per_entry["entries_per_s"],
        }
        say(f"   group commit @64 = {ratios['group64_over_txn_per_entry']:.1f}x one-txn-per-entry, "
            f"{ratios['group64_over_bulk'] * 100:.0f}% of the bulk ceiling; "
            f"@1 = {ratios['group1_over_txn_per_entry'] * 100:.0f}% of one-txn-per-entry")
        if args.profile:
            await profile_appends(seconds, workdir)
        result["appends"] = appends
        result["raw_sqlite"] = {"txn_per_entry": per_entry, "bulk": bulk}
        result["ratios"] = ratios

        # 2 ------------------------------------------------------------------------------------
        say(f"\n2. proofs at {n:,} entries")
        pairs = []
        for _ in range(samples):
            m, k = sorted(rng.sample(range(1, n + 1), 2))
            pairs.append((m, k))
        want = {s for p in pairs for s in p} | {n}
        data_dir = workdir / "big"
        data_dir.mkdir()
        key = Ed25519PrivateKey.generate()
        say(f"   building through AuditLog.append_bytes, {AuditSection().max_group} appenders in "
            "flight ...")
        built = await build_log(data_dir, key, n, want)
        say(f"   built {n:,} entries in {built['seconds']:.1f} s ({built['entries_per_s']:,.0f}/s, "
            f"{built['commits']} commits, mean group {built['mean_group']:.0f}); "
            f"database {built['db_mb']:.0f} MB")
        proofs = await bench_proofs(data_dir, key, n, samples, pairs, built, rng)
        inc, con, wit = (proofs["inclusion"], proofs["consistency_random"],
                         proofs["consistency_checkpoint_to_head"])
        say(f"   {'proof':<40} {'p50 ms':>8} {'p99 ms':>8} {'hashes':>7}  verified")
        say(f"   {'inclusion(random i, head)':<40} {inc['p50_ms']:>8.3f} {inc['p99_ms']:>8.3f} "
            f"{inc['mean_hashes']:>7.1f}  {inc['verified']}/{inc['samples']} vs signed head")
        say(f"   {'consistency(random m < n)':<40} {con['p50_ms']:>8.3f} {con['p99_ms']:>8.3f} "
            f"{con['mean_hashes']:>7.1f}  {con['verified']}/{con['samples']} vs recomputed roots")
        if wit:
            say(f"   {'consistency(retained checkpoint, head)':<40} {wit['p50_ms']:>8.3f} "
                f"{wit['p99_ms']:>8.3f} {'':>7}  {wit['verified']}/{wit['samples']} vs both "
                f"signed roots ({proofs['retained_checkpoints']} retained)")
        b = proofs["inclusion_breakdown_p50_ms"]
        say(f"   inclusion p50 breakdown: size query {b['size_query']:.3f} ms, node fetch "
            f"{b['fetch_nodes_query']:.3f} ms, leaf fetch {b['fetch_leaf_query']:.3f} ms, "
            f"plan+assemble {b['plan_and_assemble']:.3f} ms")
        ref = proofs["reference_inclusion_one_query"]
        say(f"   reference, same proofs in one execute_fetchall round trip, interleaved (not daemon "
            "code): "
            f"p50 {ref['p50_ms']:.3f} ms, p99 {ref['p99_ms']:.3f} ms")
        result["build"] = {k: v for k, v in built.items() if k != "roots"}
        result["build"]["method"] = "AuditLog.append_bytes, max_group appenders in flight"
        result["proofs"] = proofs

        # 3 ------------------------------------------------------------------------------------
        say(f"\n3. audit verify at {n:,} entries (AuditReader.verify, fresh process)")
        ver = run_verify(data_dir, built["verifiers"])
        say(f"   {ver['seconds']:.2f} s ({n / ver['seconds']:,.0f} entries/s, CPU {ver['cpu_s']:.2f} s)"
            f", peak RSS "
            f"{ver['peak_rss_mb']:.0f} MB (interpreter + imports {ver['baseline_rss_mb']:.0f} MB); "
            f"ok={ver['ok']}, {ver['checkpoints']} signed checkpoints, "
            f"verified_size={ver['verified_size']:,}")
        result["verify"] = ver
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            say(f"   (kept {workdir})")

    # budgets ----------------------------------------------------------------------------------
    at_million = n >= 1_000_000
    budgets = [
        {"what": "audit append, durable (group commit), 64 appenders", "value": at64,
         "limit": BUDGET_APPEND_PER_S, "unit": "entries/s", "pass": at64 >= BUDGET_APPEND_PER_S},
        {"what": f"inclusion proof at {n:,} entries, p50", "value": inc["p50_ms"],
         "limit": BUDGET_PROOF_MS, "unit": "ms", "pass": inc["p50_ms"] <= BUDGET_PROOF_MS,
         "p99_ms": inc["p99_ms"], "at_budget_size": at_million},
    ]
    say("\nbudgets (DESIGN §9)")
    say(f"   {mark(budgets[0]['pass'])}  durable append @64 appenders: {at64:,.0f} entries/s "
        f"(>= {BUDGET_APPEND_PER_S:,})")
    say(f"   {mark(budgets[1]['pass'])}  inclusion proof at {n:,} entries: p50 "
        f"{inc['p50_ms']:.3f} ms, p99 {inc['p99_ms']:.3f} ms (<= {BUDGET_PROOF_MS:g} ms)"
        + ("" if at_million else "  [below the 10^6 budget size: indicative only]"))
    p99_ok = inc["p99_ms"] <= BUDGET_PROOF_MS
    say(f"   {mark(p99_ok)}  (stricter reading, every proof <= 1 ms) inclusion p99 "
        f"{inc['p99_ms']:.3f} ms; one-round-trip reference p99 "
        f"{proofs['reference_inclusion_one_query']['p99_ms']:.3f} ms")
    budgets[1]["p99_pass"] = p99_ok
    result["budgets"] = budgets
    result["loadavg_end"] = os.getloadavg()
    say(f"   load average {load0[0]:.2f} at start, {result['loadavg_end'][0]:.2f} at end "
        f"({os.cpu_count()} CPUs)")
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--verify-child":
        verify_child(sys.argv[2], sys.argv[3:])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="10^5 entries, short runs (< 1 min)")
    p.add_argument("--entries", type=int, default=0, help="log size for proofs/verify")
    p.add_argument("--seconds", type=float, default=0.0, help="seconds per append run")
    p.add_argument("--rounds", type=int, default=0, help="append runs per level (median shown)")
    p.add_argument("--proofs", type=int, default=0, help="proofs timed per kind")
    p.add_argument("--raw-entries", type=int, default=0, help="rows for the raw sqlite baselines")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--profile", action="store_true",
                   help="also cProfile a 64-appender run and print the top functions")
    p.add_argument("--tmp", default=None, help="directory for the scratch databases")
    p.add_argument("--keep", action="store_true", help="keep the scratch databases")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    t0 = time.perf_counter()
    result = asyncio.run(amain(args))
    result["wall_s"] = time.perf_counter() - t0
    result["python"] = platform.python_version()
    result["sqlite"] = sqlite3.sqlite_version
    result["cpus"] = os.cpu_count()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    say(f"\nwrote {args.out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
