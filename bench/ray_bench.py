"""Ray benchmark (issue 6): what running models on Ray costs and gives on this machine.

Run from the repository root::

    python bench/ray_bench.py            # full run, ~3-4 min on the 2-core CI-class machine
    python bench/ray_bench.py --quick    # shorter cells, 10^5 batch rows (~1.5 min)

(Not ``bench/ray.py``: a script's directory comes first on ``sys.path``, so a file named
``ray.py`` in bench/ would shadow the ``ray`` package for every bench script, including
``_servers.py``'s Ray Serve.)

Prints, never asserts (DESIGN §9), and writes everything to bench/out/ray.json:

1. **Backend** (in this process, no HTTP): the sample model ``digits``, one row per request,
   through ``OrtBackend`` and through ``RayBackend`` (``address = "local"``, 2 CPUs; one
   replica of 1 CPU, then up to two): p50/p99 at one caller (the extra latency per request
   is the difference of the p50s) and req/s with 32 concurrent callers (the ratio is the
   throughput of a Ray-backed node relative to an in-process one).
2. **Node** (HTTP, ``bench/_loadgen.py`` in its own process, as ``bench/serve.py`` does): a real
   ``outpost run`` in-process, then one with ``[ray] address = "local"``; same cells. Needs the
   ``[ray]`` section in node/config.py; skipped (and said so) without it.
3. **Batch**: ``outpost batch run`` over a Parquet file of 10^6 rows of the sample model,
   in-process and on Ray Data (a fresh local Ray, counted in the wall time), plus bare
   ``session.run`` over the same rows as the ceiling. Rows/s, and the Ray/in-process ratio.

Everything shares the machine's 2 cores with Ray's own processes (GCS, raylet, workers), so
Ray's figures here are a floor for what it does across machines, where its cost per request
stays and its capacity grows with every node (see the scaling note printed at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from models import SAMPLE_MODEL, OrtBackend, RuntimeConfig, inspect_model  # noqa: E402
from models.ray_backend import RayBackend, RayConfig  # noqa: E402

PY = sys.executable
CPU = RuntimeConfig(providers="cpu")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pcts(latencies: list[float]) -> dict[str, float]:
    arr = np.asarray(latencies) * 1000
    return {"p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99)),
            "n": len(latencies)}


# -- 1. backend level -------------------------------------------------------------------------


async def backend_cells(model: Any, rows: np.ndarray, seq: int, seconds: float) -> dict[str, Any]:
    one = {"input": rows[:1]}
    for _ in range(200):  # warm-up
        await model.infer(one)
    lat = []
    for i in range(seq):
        t0 = time.perf_counter()
        await model.infer({"input": rows[i % len(rows):i % len(rows) + 1]})
        lat.append(time.perf_counter() - t0)
    result: dict[str, Any] = {"c1": pcts(lat)}
    done, stop = 0, time.perf_counter() + seconds
    c32: list[float] = []

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            await model.infer(one)
            c32.append(time.perf_counter() - t0)
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(32)))
    result["c32"] = {"req_per_s": done / (time.perf_counter() - t0), **pcts(c32)}
    return result


async def bench_backends(rows: np.ndarray, seq: int, seconds: float) -> dict[str, Any]:
    sig = inspect_model(SAMPLE_MODEL)
    out: dict[str, Any] = {}
    local = await OrtBackend(CPU).load("digits", "1", SAMPLE_MODEL, sig)
    log("backend: in-process")
    out["in-process"] = await backend_cells(local, rows, seq, seconds)
    await local.close()
    variants = [("ray, 1 replica x 1 CPU", RayConfig(address="local", num_cpus=2,
                                                     max_replicas=1)),
                ("ray, up to 2 replicas x 1 CPU", RayConfig(address="local", num_cpus=2,
                                                            max_replicas=2, scale_up_queue=4))]
    for label, config in variants:
        backend = RayBackend(CPU, config)
        t0 = time.perf_counter()
        model = await backend.load("digits", "1", SAMPLE_MODEL, sig)
        log(f"backend: {label} (loaded in {time.perf_counter() - t0:.1f} s, Ray start included "
            "the first time)")
        out[label] = await backend_cells(model, rows, seq, seconds)
        out[label]["replicas_at_end"] = model.replicas
        await model.close()
        await backend.close()  # it started Ray: shuts it down (the next one starts afresh)
    return out


# -- 2. node level (HTTP) ---------------------------------------------------------------------


def node_supported() -> bool:
    from node.config import Config

    return hasattr(Config(), "ray")


def start_node(tmp: Path, name: str, ray: dict[str, Any] | None) -> tuple[subprocess.Popen[str], int]:
    import tomllib

    import tomli_w

    data = tmp / name
    subprocess.run([PY, "-m", "cli.main", "init", "--data-dir", str(data), "--name", name],
                   check=True, capture_output=True, cwd=ROOT)
    path = data / "outpost.toml"
    raw = tomllib.loads(path.read_text())
    raw["runtime"]["providers"] = "cpu"
    if ray:
        raw.setdefault("ray", {}).update(ray)
    path.write_text(tomli_w.dumps(raw))
    proc = subprocess.Popen([PY, "-m", "cli.main", "run", "--data-dir", str(data), "--listen",
                             "127.0.0.1:0", "--peer-listen", "127.0.0.1:0", "--log-level",
                             "warning"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "ready on http://" in line:
            return proc, int(line.rsplit(":", 1)[1])
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"node {name} did not start")


def http_cell(port: int, request: Path, conns: int, seconds: float, tmp: Path) -> dict[str, Any]:
    out = tmp / "lat.bin"
    argv = [PY, str(BENCH / "_loadgen.py"), "--port", str(port), "--request", str(request),
            "--connections", str(conns), "--requests", "10000000", "--duration", str(seconds),
            "--warmup-requests", "300", "--warmup-s", "1.0", "--out", str(out), "--no-sync"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    lat = np.fromfile(out, dtype=np.float64)
    window = report["t_last"] - report["t_measure"]
    return {"req_per_s": len(lat) / window if window > 0 else float("nan"),
            "errors": report["errors"], **pcts(list(lat))}


def bench_nodes(rows: np.ndarray, seconds: float, tmp: Path) -> dict[str, Any]:
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                   "data": rows[0].tolist()}]}).encode()
    request = tmp / "request.bin"
    request.write_bytes(
        b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
        + b"\r\n\r\n" + body)
    out: dict[str, Any] = {}
    for label, ray in (("in-process node", None),
                       ("ray node (local, 1 replica x 1 CPU)",
                        {"address": "local", "num_cpus": 2, "max_replicas": 1})):
        log(f"node: {label}")
        proc, port = start_node(tmp, "ray" if ray else "plain", ray)
        try:
            out[label] = {"c1": http_cell(port, request, 1, seconds, tmp),
                          "c32": http_cell(port, request, 32, seconds, tmp)}
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return out


# -- 3. batch ---------------------------------------------------------------------------------


def bench_batch(n: int, tmp: Path) -> dict[str, Any]:
    import onnxruntime as ort
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = np.random.default_rng(3).integers(0, 17, (n, 64)).astype(np.float32)
    source = tmp / "rows.parquet"
    t0 = time.perf_counter()
    pq.write_table(pa.table({"input": pa.FixedSizeListArray.from_arrays(pa.array(data.ravel()),
                                                                          64)}), source)
    log(f"batch: wrote {n:,} rows ({source.stat().st_size / 2**20:.0f} MiB) in "
        f"{time.perf_counter() - t0:.1f} s")
    out: dict[str, Any] = {"rows": n}
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(SAMPLE_MODEL), options, providers=["CPUExecutionProvider"])
    t0 = time.perf_counter()
    for i in range(0, n, 1024):
        session.run(None, {"input": data[i:i + 1024]})
    out["session.run, 1024 rows per run"] = {"rows_per_s": n / (time.perf_counter() - t0)}
    del data
    node = tmp / "batchnode"
    subprocess.run([PY, "-m", "cli.main", "init", "--data-dir", str(node), "--name", "batch"],
                   check=True, capture_output=True, cwd=ROOT)
    runner = "from cli.batch import batch; batch()"
    for label, extra in (("batch run, in-process", ["--ray", "off"]),
                         ("batch run, Ray Data (fresh local Ray)", ["--ray", "local"])):
        log(f"batch: {label}")
        dest = tmp / ("out-" + extra[1])
        argv = [PY, "-c", runner, "run", "digits", "--data-dir", str(node), "--input",
                str(source), "--output", str(dest), "--json", *extra]
        t0 = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=600)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            out[label] = {"error": done.stderr.strip()[-500:]}
            continue
        summary = json.loads(done.stdout[done.stdout.index("{"):])
        out[label] = {"rows_per_s": n / wall, "wall_s": wall, "job_s": summary["seconds"],
                      "chunks": summary["chunks"]}
        shutil.rmtree(dest, ignore_errors=True)
    return out


# -- report -----------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> None:
    print(f"\n# bench/ray_bench.py — {results['machine']['cpus']} CPUs, {results['machine']['python']}, "
          f"ray {results['machine']['ray']}, onnxruntime {results['machine']['onnxruntime']}")
    for section in ("backend", "node"):
        cells = results.get(section)
        if not cells:
            continue
        print(f"\n## {section}: digits, 1 row per request")
        print(f"{'':40} {'c=1 p50 ms':>11} {'c=1 p99 ms':>11} {'c=32 req/s':>11} "
              f"{'c=32 p50 ms':>12}")
        for label, r in cells.items():
            print(f"{label:40} {r['c1']['p50_ms']:11.3f} {r['c1']['p99_ms']:11.3f} "
                  f"{r['c32']['req_per_s']:11.0f} {r['c32']['p50_ms']:12.3f}")
        labels = list(cells)
        base = cells[labels[0]]
        for label in labels[1:]:
            r = cells[label]
            print(f"  {label}: throughput {r['c32']['req_per_s'] / base['c32']['req_per_s']:.1%}"
                  f" of {labels[0]} at c=32; extra latency per request "
                  f"{r['c1']['p50_ms'] - base['c1']['p50_ms']:+.3f} ms (p50, c=1)")
    if results.get("node_skipped"):
        print(f"\n## node: skipped — {results['node_skipped']}")
    batch = results.get("batch")
    if batch:
        print(f"\n## batch: {batch['rows']:,} rows of digits (Parquet in, Parquet dataset out)")
        for label, r in batch.items():
            if label == "rows":
                continue
            if "error" in r:
                print(f"{label:44} failed: {r['error']}")
                continue
            extra = f"  (wall {r['wall_s']:.1f} s, job {r['job_s']:.1f} s)" if "wall_s" in r else ""
            print(f"{label:44} {r['rows_per_s']:12,.0f} rows/s{extra}")
        here = batch.get("batch run, in-process", {}).get("rows_per_s")
        there = batch.get("batch run, Ray Data (fresh local Ray)", {}).get("rows_per_s")
        if here and there:
            print(f"  Ray Data / in-process: {there / here:.1%}")
    print("\nScaling: a replica's cost per request (a remote call, serialisation both ways) "
          "stays the same across machines; capacity is replicas x one replica's throughput, "
          "and replicas spread over the cluster's nodes (SPREAD), so a model whose batch takes "
          "much longer than the call overhead gains near-linearly with nodes, while a model as "
          "small as digits stays cheaper in-process on one machine.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rows", type=int, help="batch rows (default 10^6; 10^5 with --quick)")
    p.add_argument("--no-node", action="store_true", help="skip the HTTP node cells")
    p.add_argument("--out", type=Path, default=BENCH / "out" / "ray.json")
    args = p.parse_args()
    seq, seconds = (1000, 2.0) if args.quick else (3000, 5.0)
    rows_n = args.rows or (100_000 if args.quick else 1_000_000)
    import onnxruntime
    import ray

    results: dict[str, Any] = {"machine": {
        "cpus": os.cpu_count(), "python": platform.python_version(), "ray": ray.__version__,
        "onnxruntime": onnxruntime.__version__, "load_at_start": os.getloadavg()}}
    rows = np.random.default_rng(5).integers(0, 17, (256, 64)).astype(np.float32)
    started = time.perf_counter()
    results["backend"] = asyncio.run(bench_backends(rows, seq, seconds))
    with tempfile.TemporaryDirectory(prefix="outpost-bench-ray-") as tmp:
        if args.no_node:
            results["node_skipped"] = "--no-node"
        elif not node_supported():
            results["node_skipped"] = "node/config.py has no [ray] section yet (issue 6)"
        else:
            results["node"] = bench_nodes(rows, seconds, Path(tmp))
        results["batch"] = bench_batch(rows_n, Path(tmp))
    results["seconds"] = time.perf_counter() - started
    results["machine"]["load_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str))
    report(results)
    print(f"\n({results['seconds']:.0f} s; everything in {args.out})")


if __name__ == "__main__":
    main()
