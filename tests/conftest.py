"""Shared fixtures: real daemons as subprocesses on loopback, each in its own data directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
OUTPOST = [sys.executable, "-m", "cli.main"]


def outpost(*args: str, data_dir: Path | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess."""
    argv = [*OUTPOST, *args]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(
            f"outpost {' '.join(args)} exited {result.returncode}\nstdout:{result.stdout}\n"
            f"stderr:{result.stderr}"
        )
    return result


@dataclass
class DaemonProc:
    data_dir: Path
    proc: subprocess.Popen[str]
    url: str = ""
    log: list[str] = field(default_factory=list)

    @property
    def hostport(self) -> str:
        return self.url.removeprefix("http://")

    def http(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()
        return self.proc.returncode


def start_daemon(data_dir: Path, *extra: str, timeout: float = 90.0,
                 module: str = "cli.main") -> DaemonProc:
    """Start `outpost run` on a free loopback port and wait until it reports ready
    (``module``: another entry point that wraps the CLI, e.g. to patch the daemon)."""
    argv = [sys.executable, "-m", module, "run", "--data-dir", str(data_dir),
            "--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0", *extra]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    daemon = DaemonProc(data_dir, proc)
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        daemon.log.append(line)
        if "ready on " in line:
            daemon.url = line.rsplit("ready on ", 1)[1].strip()
            _drain_in_background(daemon)
            return daemon
    proc.kill()
    proc.wait()
    raise AssertionError("daemon did not become ready:\n" + "".join(daemon.log))


def _drain_in_background(daemon: DaemonProc) -> None:
    import threading

    def pump() -> None:
        assert daemon.proc.stdout is not None
        for line in daemon.proc.stdout:
            daemon.log.append(line)

    threading.Thread(target=pump, daemon=True).start()


def init_node(data_dir: Path, name: str = "node-a", *extra: str) -> None:
    outpost("init", "--name", name, *extra, data_dir=data_dir)


def write_config(data_dir: Path, section: str, **values: object) -> None:
    """Change keys of one section of the node's outpost.toml."""
    import tomllib

    import tomli_w

    path = data_dir / "outpost.toml"
    raw = tomllib.loads(path.read_text())
    raw.setdefault(section, {}).update(values)
    path.write_text(tomli_w.dumps(raw))


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    data_dir = tmp_path / "node"
    init_node(data_dir)
    return data_dir


@pytest.fixture
def daemon(node_dir: Path) -> Iterator[DaemonProc]:
    proc = start_daemon(node_dir)
    yield proc
    proc.stop()


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[Fed]:
    """An empty federation (authority in tmp_path/ca); add nodes, start them; all stopped after."""
    federation = Fed(tmp_path)
    yield federation
    federation.stop_all()


@pytest.fixture(scope="session")
def sample_digits() -> dict[str, object]:
    return json.loads((ROOT / "models" / "sample" / "digits.json").read_text())


@pytest.fixture(scope="session")
def ray_session() -> Iterator[object]:
    """One local Ray for the whole session (2 CPUs), started on first use, through the same
    connection owner the backends use (so they adopt it); shut down at the end. Tests that
    stop Ray must see it back up before they finish (``ray_up`` restarts it otherwise)."""
    from models import _ray_driver

    ray = _ray_driver.import_ray()
    _ray_connect()
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_up(ray_session: object) -> object:
    """``ray_session``, connected again if an earlier test stopped it."""
    _ray_connect()
    return ray_session


def _ray_connect() -> None:
    from models import _ray_driver

    _ray_driver.driver().connect(
        "local", _ray_driver.init_kwargs("local", RAY_CPUS, "outpost-tests", ship_code=False),
        timeout=120,
    )


RAY_CPUS = 2


from tests.fedharness import Fed  # noqa: E402  (after the helpers it imports)


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
