"""Invariant: a `kill -9` at any moment loses no acknowledged audit entry and never leaves a log
that fails to verify. A daemon is killed repeatedly while clients send distinct requests; every
request answered 200 must have its `infer` entry (matched by the SHA-256 of its body), and
`outpost audit verify` must pass after every kill. Both durability modes keep it: `audit.sync =
"normal"` gives up power-loss durability only, never crash durability."""

from __future__ import annotations

import hashlib
import json
import random
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import init_node, outpost, start_daemon, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROUNDS = 4


def _body(n: int) -> bytes:
    row = [float((n >> (i % 16)) & 1) for i in range(64)]
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                   "data": row}], "id": str(n)}).encode()


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_kill_9_during_load_loses_no_acknowledged_entry(tmp_path: Path, sync: str) -> None:
    data_dir = tmp_path / "n"
    init_node(data_dir)
    write_config(data_dir, "audit", sync=sync)
    acknowledged: set[str] = set()
    counter = iter(range(10**9))
    lock = threading.Lock()
    rng = random.Random(7)
    for _ in range(ROUNDS):
        daemon = start_daemon(data_dir)
        stop = threading.Event()

        def client(url: str = daemon.url, stop: threading.Event = stop) -> None:
            with httpx.Client(base_url=url, timeout=10) as http:
                while not stop.is_set():
                    with lock:
                        body = _body(next(counter))
                    try:
                        r = http.post("/v2/models/digits/infer", content=body)
                    except httpx.TransportError:
                        return  # the daemon died under us: this request was never answered
                    if r.status_code == 200:
                        with lock:
                            acknowledged.add(hashlib.sha256(body).hexdigest())

        threads = [threading.Thread(target=client) for _ in range(8)]
        before = len(acknowledged)
        for t in threads:
            t.start()
        # Kill under real load: once this round has answered some requests (a loaded CI
        # machine may take a while to), then at a random moment.
        deadline = time.monotonic() + 60
        while len(acknowledged) < before + 15 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.random() * 0.7)
        daemon.signal(signal.SIGKILL)
        daemon.wait(timeout=30)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        verify = outpost("audit", "verify", "--json", data_dir=data_dir, check=False)
        report = json.loads(verify.stdout)
        assert report["ok"], report
    assert len(acknowledged) > 50, "the load should have produced answered requests"
    logged = {
        e["entry"]["input_sha256"]
        for e in map(json.loads, outpost("audit", "tail", "-n", "1000000", "--json",
                                         data_dir=data_dir).stdout.splitlines())
        if e["entry"]["kind"] == "infer"
    }
    missing = acknowledged - logged
    assert not missing, f"{len(missing)} acknowledged requests have no audit entry"


def test_response_waits_until_its_audit_entry_is_committed(tmp_path: Path) -> None:
    """Ordering, not timing: while another connection holds SQLite's write lock, the daemon
    cannot commit the entry, so it must not answer; once the lock is released, it answers and
    the entry is there."""
    import sqlite3

    data_dir = tmp_path / "n"
    init_node(data_dir)
    daemon = start_daemon(data_dir)
    answered = threading.Event()
    responses: list[httpx.Response] = []
    body = _body(12345)
    blocker = sqlite3.connect(data_dir / "outpost.db", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")

        def client() -> None:
            with httpx.Client(base_url=daemon.url, timeout=30) as http:
                responses.append(http.post("/v2/models/digits/infer", content=body))
            answered.set()

        thread = threading.Thread(target=client)
        thread.start()
        assert not answered.wait(1.5), "answered before its audit entry could be committed"
        blocker.execute("ROLLBACK")
        thread.join(timeout=30)
        assert responses and responses[0].status_code == 200
    finally:
        blocker.close()
        assert daemon.stop() == 0
    tail = outpost("audit", "tail", "--json", data_dir=data_dir).stdout.splitlines()
    hashes = {json.loads(line)["entry"].get("input_sha256") for line in tail}
    assert hashlib.sha256(body).hexdigest() in hashes
