"""Bounded listeners: uvicorn serving the daemon's ASGI apps with caps and deadlines that a
hostile client or peer cannot stretch.

Owns what happens between ``accept()`` and the first byte the app sees, on both TCP listeners:

- **TLS handshake deadline and pending cap** (peer listener). Connections are accepted here and
  handed to ``loop.connect_accepted_socket`` with ``TLS_HANDSHAKE_TIMEOUT_S``; at most
  ``MAX_PENDING_HANDSHAKES`` wait in the handshake, and a new one evicts the oldest. Silent
  connections therefore cost a bounded number of descriptors for a bounded time, and an honest
  peer's handshake (milliseconds) completes even during a flood.
- **Connection caps** (both). Established connections are counted per listener and, on the
  peer listener, per authenticated node id; beyond a cap the new connection is closed at once.
- **Read deadlines** (both). The request line and headers must arrive within
  ``HEADER_TIMEOUT_S`` of the connection (or of the request's first byte on a kept-alive
  connection); the body within ``BODY_TIMEOUT_S`` plus one second per
  ``MIN_BODY_RATE_BYTES_S`` declared bytes. uvicorn has neither (only a keep-alive timeout that
  starts after the first response), so a slowloris client was held for minutes.

Must never: read bodies, parse requests or decide anything about them (that is the apps'), or
touch the process beyond raising its own soft descriptor limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn

from node import limits

log = logging.getLogger("outpost.listener")

TlsContext = ssl.SSLContext | Callable[[], ssl.SSLContext]
"""A fixed server context, or a function giving the one in force for the next connection."""

_ACCEPT_BACKOFF_S = 0.1  # after EMFILE & co: let connections close before accepting again


@dataclass(frozen=True)
class Bounds:
    """The caps and deadlines of one listener (defaults from :mod:`node.limits`)."""

    max_connections: int = limits.MAX_APP_CONNECTIONS
    max_per_peer: int | None = None
    header_timeout_s: float = limits.HEADER_TIMEOUT_S
    body_timeout_s: float = limits.BODY_TIMEOUT_S
    min_body_rate: int = limits.MIN_BODY_RATE_BYTES_S
    max_body_bytes: int = 64 << 20
    handshake_timeout_s: float = limits.TLS_HANDSHAKE_TIMEOUT_S
    max_pending_handshakes: int = limits.MAX_PENDING_HANDSHAKES

    @classmethod
    def peer(cls, max_body_bytes: int) -> Bounds:
        return cls(max_connections=limits.MAX_PEER_CONNECTIONS,
                   max_per_peer=limits.MAX_CONNECTIONS_PER_PEER, max_body_bytes=max_body_bytes)

    def body_deadline(self, declared: int | None) -> float:
        size = self.max_body_bytes if declared is None else min(declared, self.max_body_bytes)
        return self.body_timeout_s + size / self.min_body_rate


class _Gate:
    """Counts a listener's established connections (and each peer's)."""

    def __init__(self, bounds: Bounds) -> None:
        self.bounds = bounds
        self.open = 0
        self.by_peer: Counter[str] = Counter()
        self.refused = 0

    def admit(self, peer: str | None) -> str | None:
        """Take a slot; None when admitted, else why not."""
        if self.open >= self.bounds.max_connections:
            self.refused += 1
            return f"connection cap of {self.bounds.max_connections} reached"
        cap = self.bounds.max_per_peer
        if peer is not None and cap is not None and self.by_peer[peer] >= cap:
            self.refused += 1
            return f"{peer} already holds {cap} connections"
        self.open += 1
        if peer is not None:
            self.by_peer[peer] += 1
        return None

    def release(self, peer: str | None) -> None:
        self.open -= 1
        if peer is not None:
            self.by_peer[peer] -= 1
            if self.by_peer[peer] <= 0:
                del self.by_peer[peer]


def bounded_protocol(base: type[Any], bounds: Bounds) -> type[Any]:
    """``base`` (uvicorn's httptools protocol or a subclass) with the caps and read deadlines."""
    gate = _Gate(bounds)

    class Bounded(base):  # type: ignore[misc]
        _gate = gate
        _slot: tuple[str | None] | None = None  # (peer,) once admitted
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            if transport.is_closing():
                return  # the base refused it (e.g. a revoked peer)
            peer = getattr(self, "peer", None)
            key = peer.node_id if peer is not None else None
            refused = gate.admit(key)
            if refused is not None:
                log.warning("connection from %s closed: %s", self.client, refused)
                transport.close()
                return
            self._slot = (key,)
            self._arm(bounds.header_timeout_s, "headers")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._slot is not None:
                gate.release(self._slot[0])
                self._slot = None
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._deadline is None:  # a kept-alive connection's next request
                self._arm(bounds.header_timeout_s, "headers")

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            declared: int | None = None
            for name, value in self.headers:
                if name == b"content-length":
                    with contextlib.suppress(ValueError):
                        declared = int(value)
            self._arm(bounds.body_deadline(declared), "body")

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def _arm(self, seconds: float, what: str) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._expired, what, seconds)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self, what: str, seconds: float) -> None:
            self._deadline = None
            if self.transport is None or self.transport.is_closing():
                return
            log.info("connection from %s closed: request %s not received within %.0f s",
                     self.client, what, seconds)
            if what == "headers":
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n"
                                     b"connection: close\r\n\r\n")
            self.transport.close()

    Bounded.__name__ = Bounded.__qualname__ = f"Bounded{base.__name__}"
    return Bounded


class TlsAcceptor:
    """Accepts on ``sock`` and runs each TLS handshake under a deadline and a pending cap.

    Quacks like the ``asyncio.Server`` uvicorn keeps (``close``, ``wait_closed``)."""

    def __init__(self, sock: socket.socket, factory: Any, context: TlsContext,
                 bounds: Bounds) -> None:
        self.sock = sock
        self.factory = factory
        self.context = context
        self.bounds = bounds
        self.pending: dict[asyncio.Task[None], None] = {}  # insertion order = age
        self.evicted = 0
        self.failed = 0
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._accept_forever(), name="peer-accept")

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                if self._closed:
                    return
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("peer listener cannot accept (%s); retrying", exc.strerror)
                    await asyncio.sleep(_ACCEPT_BACKOFF_S)
                    continue
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR, errno.EAGAIN):
                    continue
                raise
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if len(self.pending) >= self.bounds.max_pending_handshakes:
                oldest = next(iter(self.pending))
                self.pending.pop(oldest)
                oldest.cancel()
                self.evicted += 1
            task = loop.create_task(self._handshake(loop, conn))
            self.pending[task] = None
            task.add_done_callback(lambda t: self.pending.pop(t, None))

    async def _handshake(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
        try:
            # The context in force now (a callable is asked per connection): a revocation list
            # that arrived after the listener started is checked in this very handshake.
            context = self.context() if callable(self.context) else self.context
            await loop.connect_accepted_socket(
                self.factory, conn, ssl=context,
                ssl_handshake_timeout=self.bounds.handshake_timeout_s)
        except asyncio.CancelledError:
            with contextlib.suppress(OSError):
                conn.close()  # evicted: the transport may not own the socket yet
        except ssl.SSLError as exc:  # a refused certificate: revoked, foreign, expired
            self.failed += 1
            log.info("peer refused in the TLS handshake: %s", exc)
            with contextlib.suppress(OSError):
                conn.close()
        except (OSError, EOFError) as exc:  # timeouts are ConnectionAbortedError
            self.failed += 1
            log.debug("peer handshake failed: %s", exc)
            with contextlib.suppress(OSError):
                conn.close()

    def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        for task in list(self.pending):
            task.cancel()
        with contextlib.suppress(OSError):
            self.sock.close()

    async def wait_closed(self) -> None:
        tasks = [t for t in (self._task, *self.pending) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)


class BoundedServer(uvicorn.Server):
    """uvicorn with the daemon owning signals and the listeners bounded as described above."""

    def __init__(self, config: uvicorn.Config, bounds: Bounds | None = None,
                 tls: TlsContext | None = None) -> None:
        super().__init__(config)
        self.bounds = bounds
        self.tls = tls

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await self.lifespan.startup()
        config = self.config

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state,
                _loop=_loop)

        loop = asyncio.get_running_loop()
        self.servers: list[Any] = []
        for sock in sockets or []:
            if self.tls is None or self.bounds is None:
                fixed = self.tls() if callable(self.tls) else self.tls
                self.servers.append(await loop.create_server(
                    create_protocol, sock=sock, ssl=fixed, backlog=config.backlog))
            else:
                acceptor = TlsAcceptor(sock, create_protocol, self.tls, self.bounds)
                acceptor.start()
                self.servers.append(acceptor)
        self.started = True


def raise_fd_limit(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE toward the hard one; returns the soft limit in force.

    Warns when ``needed`` (the listeners' caps plus ``FD_RESERVE``) does not fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning("file descriptor limit %d is below the %d the listener caps assume; raise "
                    "LimitNOFILE (systemd) or `ulimit -n`", soft, needed)
    return int(soft)


def serve_config(app: Any, drain_s: float, protocol: type[Any] | None, bounds: Bounds | None
                 ) -> uvicorn.Config:
    """The uvicorn config of one listener, its protocol class bounded (unless ``bounds`` is
    None: the owner-only admin socket, whose uploads are models of gigabytes)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        # The caller recorded in the audit log is the socket's peer: never a header a local
        # app can write (uvicorn would otherwise trust X-Forwarded-For from 127.0.0.1).
        proxy_headers=False,
        timeout_graceful_shutdown=max(drain_s, 0.01),  # type: ignore[arg-type]  # float works
        http=bounded_protocol(protocol or HttpToolsProtocol, bounds) if bounds else
        (protocol or "httptools"),
        loop="none",
    )
    config.load()
    return config


__all__ = ["BoundedServer", "Bounds", "TlsAcceptor", "TlsContext", "bounded_protocol", "raise_fd_limit",
           "serve_config"]
