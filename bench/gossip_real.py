"""Gossip on real daemons: N `outpost run` processes on loopback, one federation.

What it measures (DESIGN §9: "25 real daemons on loopback: new policy everywhere ≤ 3 s" and
"daemon idle RSS (no Ray) ≤ 150 MB"), printed and written to ``bench/out/gossip_real.json``,
never asserted:

1. Policy convergence. A signed policy bundle is put into one node (not the seed) and the
   wall time until every node holds it is taken. Round 1 goes through the real CLI
   (``outpost policy apply``: the clock starts before the CLI process starts, so Python's start
   is included); the next rounds POST the same document to the node's admin socket, which is
   what the CLI does once started. Each daemon writes the bundle to its SQLite
   ``federation_doc`` table (``applied`` = its own ``time.time()``) in the same step in which it
   sets the ``policy_version`` that ``outpost status`` reports; the bench polls those tables
   read-only (cheap: no daemon work) to see when all are done, and takes every node's time from
   its own ``applied`` column. Reported: ``wall`` = from the start of the apply until the last
   node has it; ``spread`` = from the moment the first node (the one applied to) had it.
2. Idle cost after convergence: CPU% of each daemon over ``--idle`` seconds (psutil process CPU
   times, user + system, per wall second; 100% = one core) and its RSS (and USS).

Setup (not measured): a federation authority and N nodes enrolled in-process with the same
functions the CLI calls; node 0 is the seed of all others (``federation.seeds``); mDNS off;
config defaults otherwise (advert every 10 s, checkpoint every 5 s); the membership preset is
``local`` and then ``lan`` (``--presets``). Daemons start one at a time, each awaited until its
ready line (a 2-core machine), and run at ``--log-level warning``. Every daemon started here is
stopped at the end by PID (SIGTERM, then SIGKILL after a bound), and its exit code and stop
time are reported. Only 127.0.0.1 is used.

Signed membership vs before (issue 10, budget <= 2x): ``--baseline REV`` exports that git
revision (``git archive``; e.g. the commit before signed membership) to a temporary
directory and runs each preset twice, first the daemons from REV's code, then from this
tree, on the same enrolled nodes; the idle CPU of both is printed with the ratio. (Wire
formats differ, so the two never run together.)

Usage: ``python bench/gossip_real.py [--nodes 25] [--presets local,lan] [--rounds 4]
[--idle 10] [--baseline REV] [--out bench/out/gossip_real.json] [--keep]``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
import tomli_w  # noqa: E402

from node import testing  # noqa: E402

PY = sys.executable
CODE = [ROOT]  # the tree daemons run from (a --baseline export while it is measured)
BUDGET_CONVERGE_S = 3.0
BUDGET_IDLE_RSS_MB = 150.0
READY_TIMEOUT_S = 90.0
MEMBERS_TIMEOUT_S = 120.0
ROUND_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port(taken: set[int]) -> int:
    """A port free for both TCP and UDP on loopback, not handed out before in this run."""
    port = testing.free_port()
    while port in taken:
        port = testing.free_port()
    taken.add(port)
    return port


@dataclass
class Daemon:
    name: str
    data_dir: Path
    port: int
    proc: subprocess.Popen[str] | None = None
    output: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=200))
    db: sqlite3.Connection | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> float:
        """Start `outpost run` and wait for its ready line; returns the seconds it took."""
        t0 = time.monotonic()
        self.output.clear()
        proc = subprocess.Popen(
            [PY, "-m", "cli.main", "run", "--data-dir", str(self.data_dir),
             "--listen", "127.0.0.1:0", "--peer-listen", self.address, "--log-level", "warning"],
            cwd=CODE[0], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.proc = proc
        ready = threading.Event()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.output.append(line)
                if "ready on " in line:
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        while not ready.wait(0.1):
            if proc.poll() is not None or time.monotonic() - t0 > READY_TIMEOUT_S:
                raise RuntimeError(f"{self.name} did not become ready:\n{''.join(self.output)}")
        return time.monotonic() - t0

    def admin(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        transport = httpx.HTTPTransport(uds=str(self.data_dir / "admin.sock"))
        with httpx.Client(transport=transport, base_url="http://admin", timeout=30) as http:
            response = http.request(method, path, json=payload)
            response.raise_for_status()
            return response.json()

    def policy(self) -> tuple[int, float] | None:
        """(version, applied) of the policy this node holds, read from its database."""
        if self.db is None:
            uri = f"file:{self.data_dir / 'outpost.db'}?mode=ro"
            self.db = sqlite3.connect(uri, uri=True, timeout=1.0, check_same_thread=False)
        row = self.db.execute(
            "SELECT version, applied FROM federation_doc WHERE kind = 'policy'").fetchone()
        return (int(row[0]), float(row[1])) if row else None

    def close_db(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


def stop_all(daemons: list[Daemon]) -> dict[str, dict[str, Any]]:
    """SIGTERM every daemon we started (by PID), then SIGKILL those still up after a bound."""
    started = time.monotonic()
    for d in daemons:
        d.close_db()
        if d.proc is not None and d.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                d.proc.send_signal(signal.SIGTERM)
    result: dict[str, dict[str, Any]] = {}
    for d in daemons:
        if d.proc is None:
            continue
        killed = False
        try:
            d.proc.wait(timeout=max(0.1, STOP_TIMEOUT_S - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            killed = True
            with contextlib.suppress(ProcessLookupError):
                d.proc.kill()
            d.proc.wait(timeout=10)
        result[d.name] = {"exit": d.proc.returncode, "killed": killed,
                          "stopped_after_s": round(time.monotonic() - started, 2)}
        d.proc = None
    return result


def enroll_all(tmp: Path, n: int) -> tuple[Path, list[Daemon]]:
    """A federation authority and n enrolled nodes, through the CLI's own functions."""
    from node.ops import init_node
    from node.ops_federation import federation_enroll, federation_init, join, join_request

    ca = tmp / "ca"
    federation_init(ca, "bench")
    taken: set[int] = set()
    daemons = []
    for i in range(n):
        name = f"node-{i:02d}"
        d = tmp / name
        init_node(d, name=name, sample=False)
        req, cert = tmp / f"{name}.req", tmp / f"{name}.pem"
        join_request(d, req)
        federation_enroll(ca, req, cert, tier="edge", site="bench", jurisdiction="DE",
                          labels={}, validity_days=30)
        join(d, cert, [])
        daemons.append(Daemon(name, d, free_port(taken)))
    return ca, daemons


def configure(daemons: list[Daemon], preset: str) -> None:
    seed = daemons[0].address
    for i, d in enumerate(daemons):
        path = d.data_dir / "outpost.toml"
        raw = tomllib.loads(path.read_text())
        raw["federation"].update({"preset": preset, "seeds": [] if i == 0 else [seed],
                                  "advertise": d.address})
        raw["discovery"] = {**raw.get("discovery", {}), "mdns": False}
        path.write_text(tomli_w.dumps(raw))


def sign(ca: Path, tmp: Path, version: int) -> Path:
    from node.ops_federation import policy_sign

    cedar = tmp / f"policy-{version}.cedar"
    cedar.write_text('permit(principal, action == Action::"infer", resource);\n'
                     f"// bench round {version}\n")
    out = tmp / f"policy-{version}.json"
    policy_sign(ca, cedar, version, out)
    return out


def wait_members(daemons: list[Daemon]) -> float:
    """Until every daemon sees all of them alive; returns the seconds it took."""
    t0 = time.monotonic()
    n = len(daemons)
    pending = list(daemons)
    while pending:
        if time.monotonic() - t0 > MEMBERS_TIMEOUT_S:
            views = {d.name: sum(r["state"] == "alive" for r in d.admin("GET", "/peers"))
                     for d in pending}
            raise RuntimeError(f"membership did not converge in {MEMBERS_TIMEOUT_S} s: {views}")
        pending = [d for d in pending
                   if sum(r["state"] == "alive" for r in d.admin("GET", "/peers")) < n]
        if pending:
            time.sleep(0.5)
    return time.monotonic() - t0


def policy_round(daemons: list[Daemon], origin: Daemon, bundle: Path, version: int,
                 via: str) -> dict[str, Any]:
    """Apply ``bundle`` on ``origin`` and wait until every node holds ``version``."""
    start = time.time()
    if via == "cli":
        subprocess.run([PY, "-m", "cli.main", "policy", "apply", str(bundle),
                        "--data-dir", str(origin.data_dir)],
                       cwd=CODE[0], check=True, capture_output=True, timeout=60)
    else:
        origin.admin("POST", "/apply", {"document": bundle.read_text()})
    applied: dict[str, float] = {}
    deadline = time.monotonic() + ROUND_TIMEOUT_S
    while len(applied) < len(daemons) and time.monotonic() < deadline:
        for d in daemons:
            if d.name in applied:
                continue
            held = d.policy()
            if held is not None and held[0] >= version:
                applied[d.name] = held[1]
        if len(applied) < len(daemons):
            time.sleep(0.02)
    missing = sorted(d.name for d in daemons if d.name not in applied)
    first = min(applied.values()) if applied else start
    last = max(applied.values()) if applied else float("nan")
    delays = sorted(t - start for t in applied.values())
    return {
        "via": via, "version": version, "origin": origin.name,
        "wall_s": None if missing else round(last - start, 3),
        "spread_s": None if missing else round(last - first, 3),
        "origin_applied_s": round(applied.get(origin.name, float("nan")) - start, 3),
        "p50_node_s": round(delays[len(delays) // 2], 3) if delays else None,
        "missing": missing,
        "per_node_s": {name: round(t - start, 3) for name, t in sorted(applied.items())},
    }


def idle(daemons: list[Daemon], seconds: float) -> dict[str, dict[str, float]]:
    procs = {d.name: psutil.Process(d.proc.pid) for d in daemons if d.proc is not None}
    before = {name: p.cpu_times() for name, p in procs.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - t0
    out = {}
    for name, p in procs.items():
        after = p.cpu_times()
        cpu = (after.user + after.system - before[name].user - before[name].system) / wall * 100
        mem = p.memory_full_info()
        out[name] = {"cpu_percent": round(cpu, 2), "rss_mb": round(mem.rss / 2**20, 1),
                     "uss_mb": round(mem.uss / 2**20, 1)}
    return out


def run_preset(preset: str, ca: Path, tmp: Path, daemons: list[Daemon], args: argparse.Namespace,
               next_version: list[int]) -> dict[str, Any]:
    configure(daemons, preset)
    log(f"[{preset}] starting {len(daemons)} daemons one at a time")
    starts = []
    for d in daemons:
        starts.append(d.start())
    log(f"[{preset}] all ready (start p50 {statistics.median(starts):.2f} s, "
        f"max {max(starts):.2f} s); waiting for full membership")
    members_s = wait_members(daemons)
    log(f"[{preset}] every daemon sees all {len(daemons)} alive after {members_s:.1f} s; "
        f"settling {args.settle:.0f} s")
    time.sleep(args.settle)
    origin = daemons[len(daemons) // 2]  # not the seed
    rounds = []
    for r in range(args.rounds):
        version = next_version[0]
        next_version[0] += 1
        bundle = sign(ca, tmp, version)
        via = "cli" if r == 0 else "admin"
        result = policy_round(daemons, origin, bundle, version, via)
        rounds.append(result)
        log(f"[{preset}] round {r + 1} v{version} via {via}: wall {result['wall_s']} s, "
            f"spread {result['spread_s']} s, missing {result['missing'] or 'none'}")
        time.sleep(args.pause)
    time.sleep(args.settle)
    log(f"[{preset}] idle for {args.idle:.0f} s (psutil)")
    idle_stats = idle(daemons, args.idle)
    log(f"[{preset}] stopping")
    stops = stop_all(daemons)
    return {"preset": preset, "start_s": [round(s, 2) for s in starts],
            "members_converged_s": round(members_s, 2), "rounds": rounds, "idle": idle_stats,
            "stop": stops}


def print_preset(res: dict[str, Any]) -> None:
    preset = res["preset"]
    print(f"\n== preset {preset}: {len(res['idle'])} daemons, full membership after "
          f"{res['members_converged_s']} s ==")
    print(f"{'round':>5} {'via':>5} {'version':>7} {'origin':>8} {'wall s':>7} {'spread s':>8} "
          f"{'p50 node s':>10} missing")
    for i, r in enumerate(res["rounds"], 1):
        print(f"{i:>5} {r['via']:>5} {r['version']:>7} {r['origin']:>8} {_f(r['wall_s']):>7} "
              f"{_f(r['spread_s']):>8} {_f(r['p50_node_s']):>10} {len(r['missing'])}")
    print(f"\n{'daemon':<9} {'CPU % idle':>10} {'RSS MB':>7} {'USS MB':>7} {'stop s':>6} exit")
    for name, s in res["idle"].items():
        stop = res["stop"].get(name, {})
        print(f"{name:<9} {s['cpu_percent']:>10.2f} {s['rss_mb']:>7.1f} {s['uss_mb']:>7.1f} "
              f"{stop.get('stopped_after_s', float('nan')):>6.2f} {stop.get('exit')}"
              + (" (SIGKILL)" if stop.get("killed") else ""))
    cpu = [s["cpu_percent"] for s in res["idle"].values()]
    rss = [s["rss_mb"] for s in res["idle"].values()]
    print(f"{'mean':<9} {statistics.mean(cpu):>10.2f} {statistics.mean(rss):>7.1f}")
    print(f"{'max':<9} {max(cpu):>10.2f} {max(rss):>7.1f}")
    print(f"{'sum':<9} {sum(cpu):>10.2f} {sum(rss):>7.1f}   (sum CPU % = share of one core)")


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for res in results:
        walls = [r["wall_s"] for r in res["rounds"]]
        done = [w for w in walls if w is not None]
        rss = [s["rss_mb"] for s in res["idle"].values()]
        cpu = [s["cpu_percent"] for s in res["idle"].values()]
        out[res["preset"]] = {
            "converge_wall_s": walls,
            "converge_wall_max_s": max(done) if done else None,
            "converge_within_budget": bool(done) and len(done) == len(walls)
            and max(done) <= BUDGET_CONVERGE_S,
            "idle_cpu_percent_mean": round(statistics.mean(cpu), 2),
            "idle_cpu_percent_max": max(cpu),
            "idle_rss_mb_mean": round(statistics.mean(rss), 1),
            "idle_rss_mb_max": max(rss),
            "idle_rss_within_budget": max(rss) <= BUDGET_IDLE_RSS_MB,
            "daemons_killed_at_stop": sorted(n for n, s in res["stop"].items() if s["killed"]),
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--nodes", type=int, default=25)
    ap.add_argument("--presets", default="local,lan")
    ap.add_argument("--rounds", type=int, default=4, help="policy rounds per preset (1st via CLI)")
    ap.add_argument("--idle", type=float, default=10.0, help="idle measurement window, seconds")
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between policy rounds")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "gossip_real.json")
    ap.add_argument("--keep", action="store_true", help="keep the data directories")
    ap.add_argument("--baseline", default="", help="git revision to compare against")
    args = ap.parse_args()
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    for p in presets:
        if p not in ("local", "lan", "wan"):
            ap.error(f"unknown preset {p!r}")

    began = time.monotonic()
    load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="outpost-gossip-real-"))
    daemons: list[Daemon] = []
    results: list[dict[str, Any]] = []
    try:
        log(f"enrolling {args.nodes} nodes in {tmp}")
        ca, daemons = enroll_all(tmp, args.nodes)
        next_version = [1]
        baseline_dir = None
        if args.baseline:
            baseline_dir = tmp / "baseline-code"
            baseline_dir.mkdir()
            archive = subprocess.run(["git", "archive", args.baseline], cwd=ROOT, check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(baseline_dir)], input=archive, check=True)
        for preset in presets:
            if baseline_dir is not None:
                CODE[0] = baseline_dir
                log(f"[{preset}] baseline {args.baseline}")
                base = run_preset(preset, ca, tmp, daemons, args, next_version)
                base["preset"] = f"{preset}@{args.baseline[:10]}"
                results.append(base)
                CODE[0] = ROOT
            results.append(run_preset(preset, ca, tmp, daemons, args, next_version))
    finally:
        leftover = stop_all(daemons)  # no-op for daemons already stopped
        if leftover:
            log(f"stopped daemons left over after an error: {leftover}")
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    for res in results:
        print_preset(res)
    summ = summary(results)
    print("\n== budgets (DESIGN §9; printed, not asserted) ==")
    for preset, s in summ.items():
        print(f"{preset:>6}: new policy at all {args.nodes} daemons: max {s['converge_wall_max_s']} s "
              f"over {len(s['converge_wall_s'])} rounds (budget <= {BUDGET_CONVERGE_S} s: "
              f"{'met' if s['converge_within_budget'] else 'MISSED'}); idle RSS max "
              f"{s['idle_rss_mb_max']} MB (budget <= {BUDGET_IDLE_RSS_MB:.0f} MB: "
              f"{'met' if s['idle_rss_within_budget'] else 'MISSED'}); idle CPU mean "
              f"{s['idle_cpu_percent_mean']} % of a core per daemon")
    if args.baseline:
        print("\n== signed membership vs baseline (idle CPU, mean % of a core per daemon) ==")
        for preset in presets:
            base = summ.get(f"{preset}@{args.baseline[:10]}")
            new = summ.get(preset)
            if base and new and base["idle_cpu_percent_mean"]:
                ratio = new["idle_cpu_percent_mean"] / base["idle_cpu_percent_mean"]
                print(f"{preset:>6}: baseline {base['idle_cpu_percent_mean']} %, signed "
                      f"{new['idle_cpu_percent_mean']} %: x{ratio:.2f} (budget <= 2x: "
                      f"{'met' if ratio <= 2 else 'MISSED'})")
    report = {
        "bench": "gossip_real", "nodes": args.nodes, "presets": presets,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)},
        "load_avg_start": load_start, "load_avg_end": os.getloadavg(),
        "duration_s": round(time.monotonic() - began, 1),
        "budgets": {"converge_s": BUDGET_CONVERGE_S, "idle_rss_mb": BUDGET_IDLE_RSS_MB},
        "summary": summ, "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out} ({report['duration_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
