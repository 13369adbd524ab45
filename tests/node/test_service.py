"""The daemon under a service manager: sd_notify datagrams, the unit file, ``outpost stop``,
SIGHUP reload, and a shutdown that idle keep-alive connections do not hold up.

A test notify socket of our own (AF_UNIX, SOCK_DGRAM) stands in for systemd; the daemons are
real subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from node import notify
from tests.conftest import ROOT, outpost, start_daemon, write_config


class NotifySocket:
    """What systemd would receive on $NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)

    def expect(self, key: str, timeout: float = 60.0) -> dict[str, str]:
        """The next datagram that sets ``key``, as a dict (earlier ones are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                raise AssertionError(f"no {key} datagram within {timeout} s") from None
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            if key in fields:
                return fields

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    ns = NotifySocket(str(tmp_path / "notify.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", ns.address)
    yield ns
    ns.close()


def test_notify_sends_one_datagram_to_a_path_socket(tmp_path: Path) -> None:
    ns = NotifySocket(str(tmp_path / "n.sock"))
    try:
        assert notify.notify("READY=1", "STATUS=up", env={"NOTIFY_SOCKET": ns.address})
        assert ns.expect("READY") == {"READY": "1", "STATUS": "up"}
    finally:
        ns.close()


def test_notify_reaches_an_abstract_socket() -> None:
    ns = NotifySocket(f"@outpost-test-{os.getpid()}")
    try:
        assert notify.notify("STOPPING=1", env={"NOTIFY_SOCKET": ns.address})
        assert ns.expect("STOPPING") == {"STOPPING": "1"}
    finally:
        ns.close()


def test_notify_is_a_no_op_without_a_manager(tmp_path: Path) -> None:
    assert notify.notify("READY=1", env={}) is False
    # a socket that went away: no exception, just False
    assert notify.notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False


def test_watchdog_interval_is_half_the_usec_for_this_pid() -> None:
    assert notify.watchdog_interval({"WATCHDOG_USEC": "20000000"}) == 10.0
    assert notify.watchdog_interval(
        {"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}) == 10.0
    assert notify.watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}) is None
    assert notify.watchdog_interval({}) is None


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
def test_unit_file_verifies(tmp_path: Path) -> None:
    unit = (ROOT / "packaging" / "outpost.service").read_text()
    for required in ("Type=notify", "ProtectSystem=strict", "NoNewPrivileges=yes",
                     "CapabilityBoundingSet=\n", "StateDirectory=outpost"):
        assert required in unit
    stop_s = float(unit.split("TimeoutStopSec=")[1].split()[0])
    from node.config import NodeSection
    from node.stop import STOP_MARGIN_S

    assert stop_s >= NodeSection().drain_timeout_s + STOP_MARGIN_S
    # ExecStart must name an existing executable for verify: this interpreter's `outpost`
    # (or the interpreter itself).
    script = Path(sys.executable).parent / "outpost"
    exe = str(script if script.exists() else Path(sys.executable))
    lines = [f"ExecStart={exe} run" if line.startswith("ExecStart=") else line
             for line in unit.splitlines()]
    path = tmp_path / "outpost.service"
    path.write_text("\n".join(lines) + "\n")
    result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "outpost.service" not in result.stderr, result.stderr  # no warnings about our unit


@pytest.mark.integration
def test_ready_watchdog_stopping_reach_the_notify_socket(
        node_dir: Path, notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # ping every 0.2 s
    daemon = start_daemon(node_dir)
    try:
        ready = notify_socket.expect("READY")
        assert ready["MAINPID"] == str(daemon.proc.pid)
        # READY only once the listeners accept
        assert httpx.get(daemon.url + "/v2/health/ready").status_code == 200
        notify_socket.expect("WATCHDOG")
        result = outpost("stop", "--json", data_dir=node_dir)
        assert notify_socket.expect("STOPPING")["STOPPING"] == "1"
        stopped = json.loads(result.stdout)
        assert stopped["was_running"] and stopped["pid"] == daemon.proc.pid
        assert daemon.wait(10) == 0
        log = "".join(daemon.log)
        assert " ERROR " not in log and "Traceback" not in log
    finally:
        daemon.stop()


@pytest.mark.integration
def test_stop_without_a_daemon_says_so(node_dir: Path) -> None:
    result = outpost("stop", data_dir=node_dir)
    assert "no daemon running" in result.stdout


@pytest.mark.integration
def test_idle_keepalive_does_not_hold_the_drain(node_dir: Path) -> None:
    drain = 60.0
    write_config(node_dir, "node", drain_timeout_s=drain)
    daemon = start_daemon(node_dir)
    try:
        with httpx.Client(base_url=daemon.url) as client:
            assert client.get("/v2/health/live").status_code == 200  # connection kept alive
            result = outpost("stop", "--json", "--timeout", str(drain + 30), data_dir=node_dir)
            stopped = json.loads(result.stdout)
            assert stopped["was_running"]
            # behavioural: the idle connection was closed at once, not waited on for the drain
            assert stopped["seconds"] < drain
        assert daemon.wait(10) == 0
    finally:
        daemon.stop()


@pytest.mark.integration
def test_sighup_reloads_log_level_and_names_what_needs_a_restart(
        node_dir: Path, notify_socket: NotifySocket) -> None:
    daemon = start_daemon(node_dir)
    try:
        notify_socket.expect("READY")
        write_config(node_dir, "log", level="debug")
        write_config(node_dir, "node", max_body_bytes=4096)
        daemon.signal(signal.SIGHUP)
        notify_socket.expect("RELOADING")
        notify_socket.expect("READY")
        deadline = time.monotonic() + 30
        while not any("SIGHUP: reloaded" in line for line in daemon.log):
            assert time.monotonic() < deadline, "".join(daemon.log)
            time.sleep(0.05)
        line = next(line for line in daemon.log if "SIGHUP: reloaded" in line)
        assert "log.level" in line and "need a restart: node.max_body_bytes" in line
        # the level changed live: a request now logs a DEBUG line
        httpx.post(daemon.url + "/v2/models/digits/infer", json={"inputs": []})
        deadline = time.monotonic() + 30
        while not any(" DEBUG outpost.app" in line for line in daemon.log):
            assert time.monotonic() < deadline, "".join(daemon.log)
            time.sleep(0.05)
        # a broken file keeps the running settings
        (node_dir / "outpost.toml").write_text("[node\n")
        daemon.signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while not any("config not reloaded" in line for line in daemon.log):
            assert time.monotonic() < deadline, "".join(daemon.log)
            time.sleep(0.05)
        assert httpx.get(daemon.url + "/v2/health/ready").status_code == 200
    finally:
        assert daemon.stop() == 0


