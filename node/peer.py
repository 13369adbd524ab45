"""The peer endpoint: HTTPS with mutual TLS between enrolled nodes (``node.peer_listen``).

Owns the TLS server side: certificates and the revocation list loaded into one SSL context
that is swapped live when a newer revocation list arrives (through the SNI callback, so
listening sockets never restart), and the authenticated peer identity put into every ASGI
scope as ``scope["extensions"]["outpost.peer"]`` (a ``federation.identity.NodeIdentity``).
A peer whose certificate does not chain to the authority, is expired, or is revoked never
completes the handshake; a peer revoked by node id (no serial known) is cut right after it.

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
from node.tls import client_context, peer_identity, server_context

log = logging.getLogger("outpost.peer")

PeerHandler = Callable[[Scope, Receive, Send, NodeIdentity, str], Awaitable[None]]


class PeerCredentials:
    """This node's certificate and key, the authority, and the revocation list in force."""

    def __init__(self, cert_pem: bytes, key_pem: bytes, authority_pem: bytes,
                 revocations: RevocationList | None) -> None:
        self.cert_pem = cert_pem
        self.key_pem = key_pem
        self.authority_pem = authority_pem
        self.revocations = revocations
        self._server = self._build_server()
        self._client = client_context(cert_pem, key_pem, authority_pem, self._crl())

    def _crl(self) -> bytes | None:
        return self.revocations.pem if self.revocations else None

    def _build_server(self) -> ssl.SSLContext:
        ctx = server_context(self.cert_pem, self.key_pem, self.authority_pem, self._crl())
        return ctx

    def listening_context(self) -> ssl.SSLContext:
        """The context given to the listener: it hands each handshake the current one."""
        outer = self._build_server()

        def pick(sslobj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
            sslobj.context = self._server

        outer.sni_callback = pick
        return outer

    def client(self) -> ssl.SSLContext:
        return self._client

    def update_revocations(self, revocations: RevocationList) -> None:
        """Take a newer revocation list into effect for new handshakes, both directions."""
        self.revocations = revocations
        self._server = self._build_server()
        self._client = client_context(self.cert_pem, self.key_pem, self.authority_pem,
                                      self._crl())

    def reload_certificate(self, cert_pem: bytes) -> None:
        """A renewed certificate of the same key (``node.renew``): new handshakes, both
        directions, present it; the listening socket stays (its SNI callback picks it up)."""
        self.cert_pem = cert_pem
        self._server = self._build_server()
        self._client = client_context(self.cert_pem, self.key_pem, self.authority_pem,
                                      self._crl())

    def identify(self, sslobj: ssl.SSLObject) -> NodeIdentity:
        return peer_identity(sslobj, self.authority_pem, datetime.now(UTC),
                             revocations=self.revocations)


def protocol_class(credentials: PeerCredentials) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol, plus the verified peer identity in every scope."""

    class PeerProtocol(HttpToolsProtocol):
        peer: NodeIdentity | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            sslobj = transport.get_extra_info("ssl_object")
            try:
                self.peer = credentials.identify(sslobj)
            except FederationError as exc:
                log.warning("peer refused after handshake: %s", exc)
                transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.scope["extensions"] = {"outpost.peer": self.peer}  # type: ignore[dict-item]

    return PeerProtocol


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
