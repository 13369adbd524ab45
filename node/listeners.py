"""The daemon's listening sockets and the uvicorn servers on them.

Owns: binding TCP and Unix sockets (with errors that name the fix) and starting a uvicorn
server on an already-bound socket, with the daemon — not uvicorn — owning signals and the
lifecycle. Must never: choose what is served (the assembler in ``node.daemon`` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from pathlib import Path
from typing import Any

from node.bounds import BoundedServer, Bounds, TlsContext, serve_config
from node.config import parse_hostport
from node.errors import StartupError

__all__ = ["Server", "address_of", "bind_tcp", "bind_unix", "start_server"]


def bind_tcp(address: str, *, key: str) -> socket.socket:
    host, port = parse_hostport(address, key=key)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says TCP; without it every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"{address} is already in use (another outpost or program listens there); stop "
                f"it or choose another address with --{key.split('.')[-1].replace('_', '-')} HOST:PORT"
            ) from None
        raise StartupError(f"cannot listen on {address}: {exc.strerror}; check {key}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def bind_unix(path: Path) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # we hold the data-dir lock, so any socket file here is stale
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(64)
    sock.setblocking(False)
    return sock


Server = BoundedServer  # uvicorn, the daemon owning signals, listeners bounded (node.bounds)


async def start_server(app: Any, sock: socket.socket, drain_s: float, *,
                       tls: TlsContext | None = None,
                       protocol: type[asyncio.Protocol] | None = None,
                       bounds: Bounds | None = None) -> Server:
    """A uvicorn server on ``sock``, accepting once this returns. ``bounds``: caps and read
    deadlines (``node.bounds``); ``tls``: a context, or a function giving the context for
    each new connection (so a revocation list that arrives later is checked in the
    handshake)."""
    config = serve_config(app, drain_s, protocol, bounds)
    server = BoundedServer(config, bounds, tls)
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    return server


def address_of(sock: socket.socket) -> str:
    """``host:port`` a bound TCP socket listens on (the port the kernel chose for :0)."""
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"
