"""A federation of real daemons on loopback, built through the CLI, for integration tests."""

from __future__ import annotations

import json
import socket
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w

from tests.cli.test_federation_cli import enroll
from tests.conftest import DaemonProc, outpost, start_daemon


def free_port() -> int:
    """A port free for both TCP and UDP on loopback."""
    while True:
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return int(port)


def configure(data_dir: Path, **federation: Any) -> None:
    path = data_dir / "outpost.toml"
    raw = tomllib.loads(path.read_text())
    raw["federation"].update({"preset": "local", "advert_interval_s": 1.0,
                              "checkpoint_interval_s": 1.0, **federation})
    raw["discovery"] = {"mdns": False}
    path.write_text(tomli_w.dumps(raw))


def eventually(check: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}: last={last!r}")


def status(d: Path) -> dict[str, Any]:
    return json.loads(outpost("status", "--json", data_dir=d).stdout)


def peers(d: Path) -> dict[str, dict[str, Any]]:
    return {r["node_id"]: r for r in json.loads(outpost("peers", "--json", data_dir=d).stdout)}


class Fed:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ca = tmp / "ca"
        outpost("federation", "init", "--dir", str(self.ca), "--name", "acme")
        self.dirs: dict[str, Path] = {}
        self.ports: dict[str, int] = {}
        self.procs: dict[str, DaemonProc] = {}

    def add(self, name: str, tier: str = "edge", jurisdiction: str = "DE",
            seed: str | None = None) -> Path:
        d = enroll(self.tmp, self.ca, name, "--tier", tier, "--site", f"site-{name}",
                   "--jurisdiction", jurisdiction)
        self.ports[name] = free_port()
        seeds = [f"127.0.0.1:{self.ports[seed]}"] if seed else []
        configure(d, seeds=seeds)
        self.dirs[name] = d
        return d

    def start(self, name: str) -> DaemonProc:
        proc = start_daemon(self.dirs[name], "--peer-listen", f"127.0.0.1:{self.ports[name]}")
        self.procs[name] = proc
        return proc

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.stop()
