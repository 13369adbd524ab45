"""``outpost stop``: signal the daemon of one data directory and wait for its drain.

Owns finding the daemon (its pid from ``daemon.json``, trusted only while the data-directory
lock is held: ``node.control``) and waiting for the lock to be released, which the daemon does
last, after the drain, the final audit entry and the database close. Never signals a process
the lock does not vouch for.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from node import config as cfg
from node import control
from node.errors import OperatorError

# How long past node.drain_timeout_s to wait: model queues, audit close and the store close
# follow the HTTP drain.
STOP_MARGIN_S = 15.0


class StopError(OperatorError, RuntimeError):
    """The daemon could not be stopped; the message names the fix."""


@dataclass(frozen=True)
class Stopped:
    node_id: str | None
    pid: int | None
    seconds: float
    was_running: bool

    def to_json(self) -> dict[str, object]:
        return {"node_id": self.node_id, "pid": self.pid, "seconds": round(self.seconds, 3),
                "was_running": self.was_running}


def stop(data_dir: Path, timeout: float | None = None, *, poll_s: float = 0.05) -> Stopped:
    """SIGTERM the daemon of ``data_dir`` and return once it has released the directory."""
    started = time.monotonic()
    info = control.read_runtime(data_dir)
    if info is None:
        if control.daemon_running(data_dir):
            raise StopError(f"{data_dir} is locked but no daemon.json names a pid (a daemon "
                            "starting up, or a CLI command mid-change); retry in a moment")
        return Stopped(None, None, 0.0, False)
    if timeout is None:
        try:
            drain = cfg.load(data_dir).node.drain_timeout_s
        except cfg.ConfigError:
            drain = cfg.NodeSection().drain_timeout_s
        timeout = drain + STOP_MARGIN_S
    try:
        os.kill(info.pid, signal.SIGTERM)
    except ProcessLookupError:
        return Stopped(info.node_id, info.pid, time.monotonic() - started, False)
    except PermissionError:
        raise StopError(f"not allowed to signal pid {info.pid} (the daemon of {data_dir} runs "
                        "as another user); use `systemctl stop outpost` or sudo") from None
    deadline = started + timeout
    while control.daemon_running(data_dir):
        if time.monotonic() > deadline:
            raise StopError(f"node {info.node_id} (pid {info.pid}) is still draining after "
                            f"{timeout:.0f} s; wait, or run `outpost stop` again to cut the "
                            "drain short")
        time.sleep(poll_s)
    return Stopped(info.node_id, info.pid, time.monotonic() - started, True)
