"""The daemon's lifecycle as an operator sees it: ready only when listening, graceful drain on
SIGTERM with exit 0, and startup failures that exit 3 with one line naming the fix."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from node.testing import (
    OUTPOST,
    ROOT,
    eventually,
    init_node,
    outpost,
    start_daemon,
    write_config,
)

pytestmark = pytest.mark.integration


def _run(data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*OUTPOST, "run", "--data-dir", str(data_dir), *extra],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )


def test_sigterm_during_load_drains_in_flight_requests_and_exits_0(tmp_path: Path) -> None:
    from models.sample.dense import build_dense

    data_dir = tmp_path / "n"
    init_node(data_dir)
    dense = tmp_path / "dense.onnx"
    build_dense(dense, width=1024, layers=4)
    outpost("models", "add", str(dense), "--name", "dense", data_dir=data_dir)
    daemon = start_daemon(data_dir)
    rows = np.random.default_rng(0).standard_normal((64, 1024)).astype(np.float32)
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [64, 1024],
                                     "parameters": {"binary_data_size": rows.nbytes}}]}).encode()
    body = header + rows.tobytes()
    statuses: list[int] = []
    errors: list[str] = []
    started = threading.Barrier(9)

    def client() -> None:
        with httpx.Client(base_url=daemon.url, timeout=60) as http:
            started.wait()
            for _ in range(5):
                try:
                    r = http.post("/v2/models/dense/infer", content=body,
                                  headers={"Inference-Header-Content-Length": str(len(header))})
                    statuses.append(r.status_code)
                except httpx.TransportError as exc:
                    # after the drain begins, new connections are refused: that is allowed,
                    # but a request that was accepted must be answered
                    errors.append(type(exc).__name__)
                    return

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    started.wait()
    # let requests get in flight, then ask the daemon to stop
    eventually(lambda: len(statuses) >= 4, 60, "four requests answered", interval=0.01)
    daemon.signal(signal.SIGTERM)
    for t in threads:
        t.join(timeout=60)
    assert daemon.wait(timeout=60) == 0, "".join(daemon.log)
    assert statuses and all(code in (200, 503) for code in statuses), statuses
    assert statuses.count(200) >= 4
    assert all(e in ("ConnectError", "RemoteProtocolError", "ReadError") for e in errors), errors
    assert not (data_dir / "daemon.json").exists()
    assert "stopped" in "".join(daemon.log)


def test_port_in_use_exits_3_naming_the_fix(node_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _run(node_dir, "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert "already in use" in lines[-1] and "--listen" in lines[-1]


def test_second_daemon_on_same_data_dir_is_refused(node_dir: Path) -> None:
    daemon = start_daemon(node_dir)
    try:
        result = _run(node_dir, "--listen", "127.0.0.1:0")
        assert result.returncode == 3
        assert "in use by outpost daemon" in result.stderr
    finally:
        assert daemon.stop() == 0


def test_corrupt_database_exits_3(node_dir: Path) -> None:
    (node_dir / "outpost.db").write_bytes(b"this is not sqlite" * 100)
    for suffix in ("-wal", "-shm"):
        (node_dir / f"outpost.db{suffix}").unlink(missing_ok=True)
    result = _run(node_dir, "--listen", "127.0.0.1:0")
    assert result.returncode == 3
    assert "corrupt" in result.stderr and "outpost init" in result.stderr


def test_unreadable_or_exposed_key_exits_3(node_dir: Path) -> None:
    key = node_dir / "node.key"
    os.chmod(key, 0o644)
    result = _run(node_dir, "--listen", "127.0.0.1:0")
    assert result.returncode == 3
    assert "chmod 600" in result.stderr
    os.chmod(key, 0o600)
    key.write_bytes(b"garbage")
    result = _run(node_dir, "--listen", "127.0.0.1:0")
    assert result.returncode == 3
    assert "not a PEM private key" in result.stderr


def test_uninitialised_data_dir_exits_3(tmp_path: Path) -> None:
    result = _run(tmp_path / "empty", "--listen", "127.0.0.1:0")
    assert result.returncode == 3
    assert "outpost init" in result.stderr


def test_bad_config_value_exits_3(node_dir: Path) -> None:
    write_config(node_dir, "runtime", max_batch_size=0)
    result = _run(node_dir, "--listen", "127.0.0.1:0")
    assert result.returncode == 3
    assert "max_batch_size" in result.stderr


def test_queue_full_answers_503_with_retry_after(tmp_path: Path) -> None:
    from models.sample.dense import build_dense

    data_dir = tmp_path / "q"
    init_node(data_dir)
    write_config(data_dir, "runtime", max_queue=1, max_batch_size=1)
    dense = tmp_path / "dense.onnx"
    build_dense(dense, width=2048, layers=4)
    outpost("models", "add", str(dense), "--name", "dense", data_dir=data_dir)
    daemon = start_daemon(data_dir)
    rows = np.ones((64, 2048), dtype=np.float32)
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [64, 2048],
                                     "parameters": {"binary_data_size": rows.nbytes}}]}).encode()
    body = header + rows.tobytes()
    results: list[httpx.Response] = []
    gate = threading.Barrier(16)

    def client() -> None:
        with httpx.Client(base_url=daemon.url, timeout=60) as http:
            gate.wait()
            results.append(http.post("/v2/models/dense/infer", content=body,
                                     headers={"Inference-Header-Content-Length": str(len(header))}))

    threads = [threading.Thread(target=client) for _ in range(16)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        assert daemon.stop() == 0
    overloaded = [r for r in results if r.status_code == 503]
    assert len(results) == 16
    assert overloaded, [r.status_code for r in results]
    assert all(int(r.headers["retry-after"]) >= 1 for r in overloaded)
    assert all("queue" in r.json()["error"] for r in overloaded)
    assert any(r.status_code == 200 for r in results)
