"""How processes find and exclude each other through the data directory.

- ``daemon.lock`` — an ``flock`` held for the daemon's whole life (and briefly by CLI commands
  that change the store while no daemon runs), so two writers never share one database.
- ``daemon.json`` — written once the daemon is ready: pid, app endpoint, admin socket. Commands
  that talk to a running daemon read it; a stale file (daemon killed) is ignored because the
  lock tells the truth.
- ``admin.sock`` — the admin API's Unix socket.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.errors import OperatorError

LOCK_FILE = "daemon.lock"
RUNTIME_FILE = "daemon.json"
ADMIN_SOCKET = "admin.sock"


class Busy(OperatorError):
    """Another process holds the data directory's lock."""


@dataclass(frozen=True)
class RuntimeInfo:
    pid: int
    listen: str
    admin_socket: str
    node_id: str
    peer_listen: str = ""

    @property
    def app_url(self) -> str:
        host, _, port = self.listen.rpartition(":")
        if host in ("0.0.0.0", "::", "[::]", ""):
            host = "127.0.0.1"
        return f"http://{host}:{port}"


class DirLock:
    """An exclusive, non-blocking ``flock`` on ``<data-dir>/daemon.lock``."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, *, holder: str) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise Busy(
                f"{self.path.parent} is in use by {other}; stop it first, or use another "
                "--data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{holder} (pid {os.getpid()})".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def daemon_running(data_dir: Path) -> bool:
    """True when some process holds the lock (a daemon, or a CLI command mid-change)."""
    path = data_dir / LOCK_FILE
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def write_runtime(data_dir: Path, info: RuntimeInfo) -> None:
    from node.durable import write_atomic

    write_atomic(data_dir / RUNTIME_FILE, json.dumps(info.__dict__))


def read_runtime(data_dir: Path) -> RuntimeInfo | None:
    """The running daemon's endpoints, or None when no daemon is running."""
    if not daemon_running(data_dir):
        return None
    try:
        raw: dict[str, Any] = json.loads((data_dir / RUNTIME_FILE).read_text())
        return RuntimeInfo(**raw)
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None  # starting up: lock held, not ready yet


def clear_runtime(data_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (data_dir / RUNTIME_FILE).unlink()


@contextlib.contextmanager
def offline_lock(data_dir: Path, holder: str) -> Iterator[None]:
    lock = DirLock(data_dir)
    lock.acquire(holder=holder)
    try:
        yield
    finally:
        lock.release()
