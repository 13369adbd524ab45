"""The peer endpoint: HTTPS with mutual TLS between enrolled nodes (``node.peer_listen``).

Owns the TLS server side: certificates and the revocation list loaded into one server SSL
context, rebuilt when a newer revocation list arrives, and the authenticated peer identity put
into every ASGI scope as ``scope["extensions"]["outpost.peer"]`` (a
``federation.identity.NodeIdentity``). Outbound connections are ``node.peerclient``'s.

Must never: let a request through before the caller's certificate verified against the
authority and the revocation list in force, or keep serving a revoked peer.

Why TLS starts in the protocol, not in the listener: the listener accepts plain TCP and each
connection's protocol puts the loop's own TLS protocol under it (as ``create_server(ssl=...)``
would) with the server context in force at that moment. A context handed to the listener is
fixed when it starts listening, and swapping contexts per handshake (an SNI callback) does not
carry the verification flags: OpenSSL copies them from the listener's context when the
connection is created, so a node that started without a revocation list never checked one that
arrived later — the handshake completed and the peer was cut afterwards. This way a certificate
revoked by serial fails *in the handshake*, from the first handshake after the update (logged as
``peer refused in the TLS handshake: ... certificate revoked``; in TLS 1.3 the client has sent
its Finished by then, so it sees the connection closed before any answer). A peer revoked by
node id only (the authority recorded no serial) is cut right after the handshake, before a
request is read. A connection opened before the revocation arrived stays open; every request on
it is refused from then on (403).

Routes are added by the components that own them (audit, state sync, forwarding): this module
only dispatches by prefix and turns errors into ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from federation.errors import FederationError
from federation.identity import NodeIdentity, RevocationList
from node.http import HTTPError, Receive, Scope, Send, send_error
from node.limits import TLS_HANDSHAKE_TIMEOUT_S
from node.tls import peer_identity, server_context

log = logging.getLogger("outpost.peer")

PeerHandler = Callable[[Scope, Receive, Send, NodeIdentity, str], Awaitable[None]]


# A client must finish the TLS handshake within this many seconds of connecting; a connection
# that never starts TLS would otherwise hold a file descriptor for asyncio's default of 60 s.
HANDSHAKE_TIMEOUT_S = TLS_HANDSHAKE_TIMEOUT_S


class PeerCredentials:
    """This node's certificate and key, the authority, and the revocation list in force.

    Other components (``node.peerclient``) subscribe to revocation updates, so one call
    to :meth:`update_revocations` takes a new list into effect for both directions.
    """

    def __init__(self, cert_pem: bytes, key_pem: bytes, authority_pem: bytes,
                 revocations: RevocationList | None) -> None:
        self.cert_pem = cert_pem
        self.key_pem = key_pem
        self.authority_pem = authority_pem
        self.revocations = revocations
        self._server = self._build_server()
        self._subscribers: list[Callable[[RevocationList], None]] = []
        self._cert_subscribers: list[Callable[[bytes], None]] = []

    def crl_pem(self) -> bytes | None:
        return self.revocations.pem if self.revocations else None

    def _build_server(self) -> ssl.SSLContext:
        return server_context(self.cert_pem, self.key_pem, self.authority_pem, self.crl_pem())

    def server(self) -> ssl.SSLContext:
        """The server context for the next handshake (the revocation list in force now)."""
        return self._server

    def subscribe(self, on_revocations: Callable[[RevocationList], None],
                  on_certificate: Callable[[bytes], None] | None = None) -> None:
        self._subscribers.append(on_revocations)
        if on_certificate is not None:
            self._cert_subscribers.append(on_certificate)

    def update_revocations(self, revocations: RevocationList) -> None:
        """Take a newer revocation list into effect for new handshakes, both directions."""
        self.revocations = revocations
        self._server = self._build_server()
        for on_revocations in self._subscribers:
            on_revocations(revocations)

    def reload_certificate(self, cert_pem: bytes) -> None:
        """A renewed certificate of the same key (``node.renew``): new handshakes, both
        directions, present it; the listening socket stays (its SNI callback picks it up)."""
        self.cert_pem = cert_pem
        self._server = self._build_server()
        for on_certificate in self._cert_subscribers:
            on_certificate(cert_pem)

    def identify(self, sslobj: ssl.SSLObject) -> NodeIdentity:
        return peer_identity(sslobj, self.authority_pem, datetime.now(UTC),
                             revocations=self.revocations)


def protocol_class(credentials: PeerCredentials) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol behind a TLS handshake of its own (see the module
    docstring), plus the verified peer identity in every scope. The listener must be
    started without an SSL context."""

    class PeerProtocol(HttpToolsProtocol):
        peer: NodeIdentity | None = None
        _tls = False  # TLS was put under this connection (the next connection_made is TLS)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if not self._tls and transport.get_extra_info("ssl_object") is None:
                # Plain TCP (a listener without a TLS acceptor): put TLS under it now, synchronously, with the context in force
                # now — exactly what asyncio does for a listener's context (start_tls would
                # leave a window in which uvloop delivers the ClientHello to this protocol).
                self._tls = True
                waiter = self.loop.create_future()
                waiter.add_done_callback(_log_refusal)
                tls = _ssl_protocol_class(self.loop)(
                    self.loop, self, credentials.server(), waiter, True, None,
                    call_connection_made=True, ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S)
                transport.set_protocol(tls)
                tls.connection_made(transport)
                return
            # The handshake completed: ``transport`` is the TLS transport.
            self._tls = True
            super().connection_made(transport)
            try:
                self.peer = credentials.identify(transport.get_extra_info("ssl_object"))
            except FederationError as exc:
                log.warning("peer refused after handshake: %s", exc)
                transport.close()

        def pause_writing(self) -> None:
            if self.flow is not None:
                super().pause_writing()

        def resume_writing(self) -> None:
            if self.flow is not None:
                super().resume_writing()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.scope["extensions"] = {"outpost.peer": self.peer}  # type: ignore[dict-item]

    return PeerProtocol


def _ssl_protocol_class(loop: asyncio.AbstractEventLoop) -> Any:
    """The loop's own TLS protocol (what its ``start_tls`` and ``create_server`` use)."""
    try:
        import uvloop
        import uvloop.loop
    except ImportError:  # pragma: no cover - uvloop is a core dependency
        uvloop = None  # type: ignore[assignment]
    if uvloop is not None and isinstance(loop, uvloop.Loop):
        return uvloop.loop.SSLProtocol  # type: ignore[attr-defined]
    from asyncio import sslproto

    return sslproto.SSLProtocol


def _log_refusal(waiter: asyncio.Future[None]) -> None:
    if waiter.cancelled():
        return
    exc = waiter.exception()
    if exc is not None:
        log.info("peer refused in the TLS handshake: %s", exc or type(exc).__name__)


class PeerApp:
    """ASGI app of the peer endpoint: prefix routes, each handler gets the caller's identity."""

    def __init__(self, on_request: Callable[[str], None] | None = None,
                 credentials: PeerCredentials | None = None) -> None:
        self.routes: list[tuple[str, str, PeerHandler]] = []
        self.on_request = on_request
        self.credentials = credentials

    def route(self, method: str, prefix: str, handler: PeerHandler) -> None:
        self.routes.append((method, prefix, handler))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        peer: NodeIdentity | None = scope.get("extensions", {}).get("outpost.peer")
        try:
            if peer is None:
                raise HTTPError(403, "peer identity unknown; connect with a federation certificate")
            held = self.credentials.revocations if self.credentials else None
            if held is not None and held.is_revoked(peer):
                # A connection opened before the revocation arrived stays open; its requests
                # are refused from then on.
                raise HTTPError(403, f"{peer.node_id} is revoked (revocation list "
                                     f"v{held.version})")
            path, method = scope["path"], scope["method"]
            for m, prefix, handler in self.routes:
                if m == method and (path == prefix or path.startswith(prefix + "/")):
                    if self.on_request is not None:
                        self.on_request(prefix.rsplit("/", 1)[-1])
                    await handler(scope, receive, send, peer, path[len(prefix):].lstrip("/"))
                    return
            raise HTTPError(404, f"no peer endpoint {method} {path}")
        except HTTPError as exc:
            await send_error(send, exc)
        except Exception as exc:
            log.exception("peer request %s failed", scope.get("path"))
            await send_error(send, HTTPError(500, f"internal error: {exc}"))


def query(scope: Scope) -> dict[str, Any]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(scope.get("query_string", b"").decode()))
