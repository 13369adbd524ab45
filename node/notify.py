"""The systemd notify protocol (sd_notify(3)), by hand: one datagram to ``$NOTIFY_SOCKET``.

Owns the wire format only: ``KEY=VALUE`` lines in one ``AF_UNIX``/``SOCK_DGRAM`` datagram to the
path in ``$NOTIFY_SOCKET`` (a leading ``@`` names an abstract socket: ``@`` becomes ``\\0``).
No library needed (python-systemd would pull libsystemd for a dozen lines) and no-op when the
variable is unset, so the daemon calls these unconditionally.

What the daemon sends, and when (packaging/outpost.service is ``Type=notify``):

- ``READY=1`` (with ``MAINPID`` and ``STATUS``) once every listener accepts;
- ``STOPPING=1`` when a drain starts; ``RELOADING=1`` ... ``READY=1`` around a SIGHUP reload;
- ``WATCHDOG=1`` every half ``$WATCHDOG_USEC`` while the event loop turns (``WatchdogSec=``),
  so a wedged loop gets the service restarted.

Must never raise: a service manager that went away must not take the node down with it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("outpost.notify")


def _address(env: Mapping[str, str]) -> str | None:
    path = env.get("NOTIFY_SOCKET", "")
    if not path:
        return None
    if path.startswith("@"):
        return "\0" + path[1:]
    return path


def notify(*lines: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``lines`` (``KEY=VALUE``) as one datagram; False when not under a notify manager
    or the send failed (logged once at DEBUG: the node runs on either way)."""
    address = _address(os.environ if env is None else env)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
    except OSError as exc:
        log.debug("sd_notify to %r failed: %s", address, exc)
        return False
    return True


def ready(status: str) -> bool:
    return notify("READY=1", f"MAINPID={os.getpid()}", f"STATUS={status}")


def stopping(status: str = "draining") -> bool:
    return notify("STOPPING=1", f"STATUS={status}")


def reloading() -> bool:
    # RELOADING=1 wants MONOTONIC_USEC since systemd 253 (Type=notify-reload); harmless before.
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or None when the
    manager set no watchdog for this process (``$WATCHDOG_PID`` names another)."""
    env = os.environ if env is None else env
    raw = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not raw.isdigit() or int(raw) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(raw) / 1_000_000 / 2


async def watchdog_forever(interval: float) -> None:
    """Ping the watchdog from the event loop: a blocked loop stops the pings."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
