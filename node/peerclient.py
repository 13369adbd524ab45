"""Every outbound mutual-TLS connection this node opens to a peer (forward, model pull, gossip
push-pull, audit replication, and whatever fetches from peers next).

Owns: the client TLS context (this node's certificate, the authority, the revocation list in
force), one pool of warm connections, and the identity check of every connection it opens: the
server's certificate must chain to the authority, be valid now, not be revoked, and name the
node the caller chose (``node_id``). A connection to anyone else is closed before a byte of the
request is written, logged, and reported to the audit sink as ``peer.refused``; the caller gets
:class:`PeerRefused`. A new revocation list (``PeerCredentials.update_revocations``) takes effect
at once: a new context and a new pool, so no pooled connection to a revoked node is reused.

Must never: send a request on a connection whose peer was not verified as the node asked for;
trust an address (membership, discovery, a seed) as proof of who answers there; build a TLS
context of its own elsewhere in the daemon (everything outbound goes through here).

Why the check sits in the connector: the request body (personal data, for a forward) must not
leave before the peer is known, so the check runs right after the handshake, inside aiohttp's
connection setup, and pooled connections are keyed by the expected node id (aiohttp's
``server_hostname``, which is also the SNI name: node ids are DNS names) as well as the
address — a connection verified as one node is never handed to a request for another.
Hostname verification in OpenSSL stays off (``node.tls``): certificates bind node ids as
attested attributes, not as DNS names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from federation.errors import FederationError
from federation.identity import NodeIdentity, RevocationList
from node.errors import NodeFault
from node.tls import client_context, peer_identity

log = logging.getLogger("outpost.peerclient")

# Warm connections kept per pool (all peers together): a busy forwarder holds a few per peer.
POOL_LIMIT = 256
# Seconds an idle pooled connection stays open. Forwarding (the hot path) reuses it instead of
# paying a handshake per request; everything else (gossip, replication, pulls) runs every few
# seconds at most, and a short expiry keeps it from reusing a connection that died silently
# (a pulled cable: no FIN, no RST) right when the peer comes back and must be caught up.
KEEPALIVE_S = {"forward": 60.0}
OTHER_KEEPALIVE_S = 5.0
# Seconds to set up a TCP connection and TLS; a peer slower than this is counted unreachable.
CONNECT_TIMEOUT_S = 2.0
# After a revocation update the old pool lets requests already in flight finish this long.
RETIRE_AFTER_S = 30.0
# The same refusal (chosen node, node that answered, address, purpose) is logged and audited
# at most once in this many seconds: gossip retries a stale address every round, and the
# trail should say what happened, not grow by an entry per retry.
REFUSAL_REPEAT_S = 60.0
# Distinct refusals remembered for that de-duplication (oldest forgotten first).
MAX_REMEMBERED_REFUSALS = 1024


class PeerError(NodeFault):
    """A request to a peer did not get an answer; the message says why and what to do."""


class PeerUnreachable(PeerError):
    """No connection, a timeout, or a broken transfer."""


class PeerRefused(PeerError):
    """The TLS peer is not the node chosen (or is revoked or invalid): nothing was sent."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.describe())
        self.refusal = refusal


@dataclass(frozen=True)
class Refusal:
    """One refused connection, as logged and audited."""

    expected: str | None  # the node the caller chose (None: any enrolled node, e.g. a seed)
    presented: str | None  # the node id in the certificate, when it parsed
    address: str
    purpose: str
    reason: str

    def describe(self) -> str:
        chosen = self.expected or "an enrolled node"
        return (f"refused the connection to {chosen} at {self.address} ({self.purpose}): "
                f"{self.reason}")


AuditSink = Callable[[Refusal], None]


@dataclass(frozen=True)
class PeerResponse:
    status: int
    body: bytes
    headers: Mapping[str, str]
    peer: NodeIdentity  # the verified node that answered
    elapsed_s: float

    def json(self) -> Any:
        return json.loads(self.body)

    def error(self) -> str:
        """The peer's ``{"error": ...}`` message, or the start of the body."""
        try:
            return str(json.loads(self.body).get("error", ""))
        except (ValueError, AttributeError):
            return self.body[:200].decode(errors="replace")


class _WrongPeer(aiohttp.ClientConnectorError):
    """Raised inside the connector; turned into PeerRefused by PeerClients."""

    def __init__(self, key: Any, refusal: Refusal) -> None:
        super().__init__(key, OSError(refusal.reason))
        self.refusal = refusal


class _VerifyingConnector(aiohttp.TCPConnector):
    """A TCP connector that verifies each new connection's peer before it is used."""

    def __init__(self, verify: Callable[[ssl.SSLObject | None, str | None, str], NodeIdentity],
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._verify = verify

    async def _wrap_create_connection(self, *args: Any, req: Any, **kwargs: Any) -> Any:
        transport, protocol = await super()._wrap_create_connection(*args, req=req, **kwargs)
        address = f"{req.url.host}:{req.url.port}"
        try:
            identity = self._verify(transport.get_extra_info("ssl_object"),
                                    req.server_hostname, address)
        except _Refused as exc:
            transport.abort()
            raise _WrongPeer(req.connection_key, exc.refusal) from None
        protocol.outpost_peer = identity  # type: ignore[attr-defined]  # read by stream()
        return transport, protocol


class _Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        self.refusal = refusal


class PeerClients:
    """The one owner of outbound peer connections (see the module docstring)."""

    def __init__(self, cert_pem: bytes, key_pem: bytes, authority_pem: bytes,
                 revocations: RevocationList | None, audit_sink: AuditSink) -> None:
        self._cert_pem = cert_pem
        self._key_pem = key_pem
        self._authority_pem = authority_pem
        self.revocations = revocations
        self._audit_sink = audit_sink
        self._context = self._build_context()
        self._sessions: dict[float, aiohttp.ClientSession] = {}  # by keep-alive seconds
        self._retiring: set[asyncio.Task[None]] = set()
        self.refused = 0  # connections refused so far (shown in tests and metrics)
        self._reported: dict[tuple[str | None, str | None, str, str], float] = {}

    @classmethod
    def of(cls, credentials: Any, audit_sink: AuditSink) -> PeerClients:
        """Clients sharing ``credentials`` (a ``node.peer.PeerCredentials``) and following its
        revocation updates."""
        clients = cls(credentials.cert_pem, credentials.key_pem, credentials.authority_pem,
                      credentials.revocations, audit_sink)
        credentials.subscribe(clients.update_revocations, clients.reload_certificate)
        return clients

    # -- trust ---------------------------------------------------------------------------------

    def _build_context(self) -> ssl.SSLContext:
        crl = self.revocations.pem if self.revocations else None
        return client_context(self._cert_pem, self._key_pem, self._authority_pem, crl)

    def reload_certificate(self, cert_pem: bytes) -> None:
        """A renewed certificate of the same key: new connections present it."""
        self._cert_pem = cert_pem
        self._new_trust()

    def update_revocations(self, revocations: RevocationList) -> None:
        """New handshakes check ``revocations``; pooled connections are dropped (in-flight
        requests on them may finish for :data:`RETIRE_AFTER_S`)."""
        self.revocations = revocations
        self._new_trust()

    def _new_trust(self) -> None:
        self._context = self._build_context()
        old, self._sessions = self._sessions, {}
        for session in old.values():
            task = asyncio.get_running_loop().create_task(self._retire(session))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    @staticmethod
    async def _retire(session: aiohttp.ClientSession) -> None:
        try:
            await asyncio.sleep(RETIRE_AFTER_S)
        finally:
            await session.close()

    def _verify(self, sslobj: ssl.SSLObject | None, expected: str | None,
                address: str) -> NodeIdentity:
        if sslobj is None:
            raise _Refused(Refusal(expected, None, address, "connect", "no TLS session"))
        try:
            identity = NodeIdentity.from_certificate(
                sslobj.getpeercert(binary_form=True) or b"", self._authority_pem,
                datetime.now(UTC))
        except FederationError as exc:
            raise _Refused(Refusal(expected, None, address, "connect", str(exc))) from None
        try:
            return peer_identity(sslobj, self._authority_pem, datetime.now(UTC),
                                 expected_node_id=expected, revocations=self.revocations)
        except FederationError as exc:
            raise _Refused(Refusal(expected, identity.node_id, address, "connect",
                                   str(exc))) from None

    def _pool(self, purpose: str) -> aiohttp.ClientSession:
        keepalive = KEEPALIVE_S.get(purpose, OTHER_KEEPALIVE_S)
        session = self._sessions.get(keepalive)
        if session is None:
            session = self._sessions[keepalive] = aiohttp.ClientSession(
                connector=_VerifyingConnector(self._verify, ssl=self._context, limit=POOL_LIMIT,
                                              keepalive_timeout=keepalive),
                # aiohttp would otherwise decompress bodies itself; peers send raw bytes.
                auto_decompress=False,
            )
        return session

    def _refused(self, refusal: Refusal, purpose: str) -> PeerRefused:
        refusal = Refusal(refusal.expected, refusal.presented, refusal.address, purpose,
                          refusal.reason)
        self.refused += 1
        key = (refusal.expected, refusal.presented, refusal.address, purpose)
        now = time.monotonic()
        last = self._reported.get(key)
        if last is None or now - last >= REFUSAL_REPEAT_S:
            self._reported.pop(key, None)
            self._reported[key] = now
            while len(self._reported) > MAX_REMEMBERED_REFUSALS:
                del self._reported[next(iter(self._reported))]
            log.warning("%s", refusal.describe())
            try:
                self._audit_sink(refusal)
            except Exception:  # the refusal stands whether or not it could be recorded
                log.exception("could not record a refused peer connection")
        return PeerRefused(refusal)

    # -- requests ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def stream(self, node_id: str | None, address: str, method: str, path: str, *,
                     purpose: str, timeout_s: float, body: bytes | None = None,
                     headers: Mapping[str, str] | None = None,
                     params: Mapping[str, str | int] | None = None,
                     ) -> AsyncIterator[tuple[aiohttp.ClientResponse, NodeIdentity]]:
        """An open response from ``node_id`` at ``address`` (read it inside the block).

        ``node_id`` None accepts any enrolled, unrevoked node (a seed or a discovered address
        whose node is not known yet); the caller then learns who answered from the identity.
        Raises PeerRefused (wrong, revoked or invalid peer: nothing was sent) or
        PeerUnreachable.
        """
        url = f"https://{address}{path}"
        timeout = aiohttp.ClientTimeout(total=timeout_s,
                                        sock_connect=min(CONNECT_TIMEOUT_S, timeout_s))
        who = node_id or "peer"
        try:
            response = await self._pool(purpose).request(
                method, url, data=body, headers=dict(headers or {}), params=params,
                timeout=timeout, server_hostname=node_id,
            )
        except _WrongPeer as exc:
            raise self._refused(exc.refusal, purpose) from None
        except aiohttp.ClientConnectorCertificateError as exc:
            # OpenSSL refused the server's certificate in the handshake: revoked (by serial,
            # with the list in force), expired, or not from this federation's authority.
            reason = getattr(exc.certificate_error, "verify_message", None) or str(exc)
            raise self._refused(Refusal(node_id, None, address, purpose,
                                        f"certificate refused in the handshake: {reason}"),
                                purpose) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PeerUnreachable(f"{who} at {address} did not answer ({type(exc).__name__}: "
                                  f"{exc})") from None
        try:
            # The protocol of the connection that carried this request (kept by the response
            # even once a bodiless answer released the connection to the pool).
            protocol = getattr(response, "_protocol", None)
            peer = getattr(protocol, "outpost_peer", None)
            if peer is None:  # cannot happen: every connection is made by our connector
                raise PeerUnreachable(f"{address}: connection without a verified peer")
            try:
                yield response, peer
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise PeerUnreachable(f"{who} at {address} broke off its answer "
                                      f"({type(exc).__name__})") from None
        finally:
            response.release()

    async def request(self, node_id: str | None, address: str, method: str, path: str, *,
                      purpose: str, timeout_s: float, body: bytes | None = None,
                      headers: Mapping[str, str] | None = None,
                      params: Mapping[str, str | int] | None = None) -> PeerResponse:
        """One whole request and response (see :meth:`stream` for the arguments)."""
        started = time.monotonic()
        async with self.stream(node_id, address, method, path, purpose=purpose,
                               timeout_s=timeout_s, body=body, headers=headers,
                               params=params) as (response, peer):
            content = await response.read()
            return PeerResponse(response.status, content, response.headers, peer,
                                time.monotonic() - started)

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await session.close()


__all__ = ["PeerClients", "PeerError", "PeerRefused", "PeerResponse", "PeerUnreachable",
           "Refusal"]


def audit_sink(audit: Any, spawn: Callable[[Any], None]) -> AuditSink:
    """The sink a daemon hands :class:`PeerClients`: one ``peer.refused`` entry per refused
    connection (``audit`` a ``node.audit.AuditLog``, ``spawn`` runs a coroutine in the
    background)."""

    def record(refusal: Refusal) -> None:
        spawn(audit.append(audit.record(
            "peer.refused", caller="daemon", peer=refusal.expected or refusal.presented,
            reason=refusal.describe()[:1000],
            detail={"address": refusal.address[:200], "presented": refusal.presented,
                    "purpose": refusal.purpose},
        )))

    return record
