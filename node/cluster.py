"""The daemon's side of the federation protocols: sockets, timers and persistence around the
sans-I/O cores (``federation.membership``, ``federation.statesync``, ``federation.items``).

- UDP on the peer port: every datagram sealed by the sender's node key (``federation.envelope``)
  and checked against the sender's attested key and a replay window; forged, replayed, oversized,
  malformed or revoked datagrams are dropped and counted (``outpost_gossip_dropped_total``).
- The reliable path: ``POST /peer/v1/gossip`` over the mutual-TLS peer endpoint; the TLS identity
  must be the message's ``source_id``.
- Signed membership: the core signs this node's statements with the node key and verifies
  others' (``federation.statements``) against the certificates this node holds: from verified
  adverts and from TLS handshakes. A statement whose signer's certificate is not known yet waits
  in the core's admission pen; each newly learned certificate is handed to ``key_known``.
  Datagrams and exchanges go only to addresses members signed (the core decides; this layer
  never answers a UDP source address).
- One task drives both cores: sleep until the earlier deadline, tick, send effects, react to
  events (persist and audit policy and revocation lists that arrive, turn conflicting checkpoints
  into equivocation evidence), republish this node's capability advert and audit checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from federation import envelope
from federation.audit import EquivocationEvidence
from federation.config import ClusterConfig
from federation.errors import FederationError
from federation.identity import NodeIdentity, RevocationList, read_revocation_list
from federation.items import (
    AUTHORITY_ORIGIN,
    POLICY_KEY,
    REVOCATIONS_KEY,
    Advert,
    ItemValidator,
    make_advert,
    make_checkpoint_item,
    make_evidence_item,
    make_policy_item,
    make_revocation_item,
    read_advert,
    read_checkpoint_item,
)
from federation.limits import MAX_DATAGRAM_PAYLOAD, MAX_STREAM_MESSAGE_BYTES
from federation.membership import (
    Member,
    MemberAlive,
    MemberEvent,
    MemberJoined,
    Membership,
)
from federation.messages import (
    Effect,
    Event,
    Item,
    ItemKind,
    Send,
    decode,
    encode,
    sources_match,
)
from federation.placement import Candidate
from federation.policy_engine import NodeAttrs
from federation.statements import Ed25519Signer, StatementVerifier
from federation.statesync import Conflict, ItemAccepted, StateSync
from node.limits import EXCHANGE_TIMEOUT_S, MAX_INFLIGHT_EXCHANGES, STUCK_DEADLINE_PAUSE_S
from node.store import get_doc

log = logging.getLogger("outpost.cluster")

# Bounds of this module, with their reasons, are in node.limits.
MAX_INFLIGHT = MAX_INFLIGHT_EXCHANGES
# receive_reliable's answer to a peer whose certificate is revoked.
REVOKED = "this node's certificate is revoked"


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass
class ClusterDeps:
    """What the cluster needs from the rest of the daemon (wired in ``node.daemon``)."""

    node_id: str
    key: Any
    cert_pem: bytes
    authority_pem: bytes
    address: str  # host:port advertised for UDP and HTTPS
    config: ClusterConfig
    seeds: list[str]
    peers: Any  # node.peerclient.PeerClients: every outbound TLS connection goes through it
    advert_body: Callable[[], dict[str, Any]]
    on_document: Callable[[str, int, bytes, str | None], Any]  # kind, version, body, source
    on_equivocation: Callable[[EquivocationEvidence], Any]
    checkpoint_source: Callable[[], Any]  # async () -> (size, note, proofs)
    count_drop: Callable[[str], None]
    count_io: Callable[[str, str, int], None] | None = None
    """(direction "in"|"out", transport "udp"|"tcp", bytes) per gossip message: metrics."""
    advert_interval_s: float = 10.0
    checkpoint_interval_s: float = 5.0


@dataclass
class _Peer:
    identity: NodeIdentity
    rtt_s: float | None = None


class Cluster(asyncio.DatagramProtocol):
    def __init__(self, deps: ClusterDeps, revocations: RevocationList | None) -> None:
        self.deps = deps
        self.validator = ItemValidator(deps.authority_pem, datetime.now(UTC), revocations)
        rng = random.Random()
        self.statements = StatementVerifier(self._statement_key)
        # Incarnations start from the wall clock (ms): a restarted node outranks what it
        # signed in its previous life at once (refutations add 1 each: no clock needed after).
        self.membership = Membership(deps.node_id, deps.address, deps.config.membership, rng,
                                     incarnation=time.time_ns() // 1_000_000,
                                     signer=Ed25519Signer(deps.key), verifier=self.statements)
        self.sync = StateSync(deps.node_id, deps.address, deps.config.gossip, self.validator,
                              rng, peers=self.membership)
        self.membership.set_delegate(self.sync)
        self.replay = envelope.ReplayGuard()
        self.boot = time.time_ns()
        self.seq = 0
        self.tls_peers: dict[str, _Peer] = {}
        self.equivocations: list[EquivocationEvidence] = []
        self._udp: asyncio.DatagramTransport | None = None
        self._by_address: dict[str, str] = {}  # address -> member node id (a lookup cache)
        # Addresses of members whose certificate is revoked: nothing is sent there.
        self._revoked_addresses: frozenset[str] = frozenset()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._advert_version = 0
        self._next_advert = 0.0
        self._next_checkpoint = 0.0
        self._stopping = False
        self._advert_seen: dict[str, float] = {}  # origin -> monotonic time its advert arrived
        # Verified adverts, parsed once when they arrive (verification costs ~0.5 ms: never on
        # the request path): origin -> (advert, policy attributes, model refs held).
        self._adverts: dict[str, tuple[Advert, NodeAttrs, frozenset[str]]] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, udp_host: str, udp_port: int, policy: bytes | None,
                    policy_version: int | None, revocation_pem: bytes | None,
                    revocation_version: int | None) -> None:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(udp_host, udp_port)
        )
        now = time.monotonic()
        if revocation_pem is not None and revocation_version is not None:
            self._apply(self.sync.put(make_revocation_item(revocation_pem, revocation_version), now))
        if policy is not None and policy_version is not None:
            self._apply(self.sync.put(make_policy_item(policy, policy_version), now))
        self._publish_advert(now)
        if self.deps.seeds:
            self._apply(self.membership.join(self.deps.seeds, now))
        self._task = asyncio.create_task(self._run(), name="cluster")

    async def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(Exception):
            self._apply(self.membership.leave(time.monotonic()))
        await asyncio.sleep(0.05)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for task in list(self._inflight):
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        if self._udp is not None:
            self._udp.close()

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            deadline = min(self.membership.next_deadline(), self.sync.next_deadline(),
                           self._next_advert, self._next_checkpoint)
            if deadline > now:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=min(deadline - now, 1.0))
                continue
            try:
                self.validator.now = datetime.now(UTC)
                self._apply(self.membership.tick(now))
                self._apply(self.sync.tick(now))
                if now >= self._next_advert:
                    self._publish_advert(now)
                if now >= self._next_checkpoint:
                    self._next_checkpoint = now + self.deps.checkpoint_interval_s
                    await self._publish_checkpoint(now)
            except Exception:
                log.exception("cluster tick failed")
                await asyncio.sleep(0.1)
                continue
            if min(self.membership.next_deadline(), self.sync.next_deadline()) <= now:
                # A tick must move the cores' deadlines past `now`. Should one not (after
                # Membership.leave() its probe deadline stays behind), this loop would never
                # await again and freeze the whole daemon, SIGTERM handling included.
                await asyncio.sleep(STUCK_DEADLINE_PAUSE_S)

    # -- publishing ---------------------------------------------------------------------------

    def _publish_advert(self, now: float) -> None:
        self._next_advert = now + self.deps.advert_interval_s
        self._advert_version = max(self._advert_version + 1, time.time_ns() // 1000)
        item = make_advert(self.deps.key, self.deps.node_id, self.deps.cert_pem,
                           self._advert_version, self.deps.advert_body())
        self._apply(self.sync.put(item, now))

    async def _publish_checkpoint(self, now: float) -> None:
        size, note, proofs = await self.deps.checkpoint_source()
        held = self.sync.get(self.deps.node_id, ItemKind.AUDIT_CHECKPOINT, "checkpoint")
        if size == 0 or (held is not None and held.version >= size):
            return
        self._apply(self.sync.put(make_checkpoint_item(self.deps.node_id, size, note, proofs), now))

    def contact(self, address: str) -> None:
        """A candidate peer (from mDNS): join through it unless it is already a member."""
        if any(m.address == address for m in self.membership.members()):
            return
        self._apply(self.membership.introduce(address, time.monotonic()))

    def put_document(self, kind: str, version: int, body: bytes) -> None:
        """Spread a policy bundle or revocation list applied on this node."""
        item = (make_policy_item(body, version) if kind == "policy"
                else make_revocation_item(body, version))
        self.validator.now = datetime.now(UTC)
        self._apply(self.sync.put(item, time.monotonic()))

    def update_revocations(self, revocations: RevocationList) -> None:
        self.validator.revocations = revocations
        for node_id in list(self.tls_peers):
            if revocations.is_revoked(self.tls_peers[node_id].identity):
                del self.tls_peers[node_id]
        for node_id in revocations.node_ids:
            self.statements.forget(node_id)
        self._refresh_revoked_addresses()

    def _statement_key(self, node_id: str) -> Any:
        """Public key to check ``node_id``'s membership statements with: from a certificate
        we verified (advert or TLS handshake), not revoked; None while unknown."""
        if node_id == self.deps.node_id:
            return self.deps.key.public_key()
        ident = self._identity(node_id)
        return ident.public_key if ident is not None else None

    def _learned(self, node_id: str) -> None:
        """A certificate for ``node_id`` is now known: admit its pending statement."""
        if node_id != self.deps.node_id and self.membership.member(node_id) is None:
            self._apply(self.membership.key_known(node_id, time.monotonic()))

    def is_revoked(self, identity: NodeIdentity) -> bool:
        revocations = self.validator.revocations
        return revocations is not None and revocations.is_revoked(identity)

    def _refresh_revoked_addresses(self) -> None:
        """Addresses held only by revoked members. Without this, a revoked node would keep
        receiving our probes, rumors and (every reconnect round, for a day) our member table."""
        revocations = self.validator.revocations
        if revocations is None:
            self._revoked_addresses = frozenset()
            return
        revoked: set[str] = set()
        ok: set[str] = set()
        for member in self.membership.members():
            ident = self._known_identity(member.node_id)
            if member.node_id in revocations.node_ids or (
                    ident is not None and revocations.is_revoked(ident)):
                revoked.add(member.address)
            else:
                ok.add(member.address)
        self._revoked_addresses = frozenset(revoked - ok)

    def _known_identity(self, node_id: str) -> NodeIdentity | None:
        ident = self.validator.identities.get(node_id)
        if ident is None and node_id in self.tls_peers:
            ident = self.tls_peers[node_id].identity
        return ident

    # -- effects and events -------------------------------------------------------------------

    def _apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                if effect.to in self._revoked_addresses:
                    self.deps.count_drop("revoked_out")
                    continue
                payload = encode(effect.msg)
                if effect.reliable:
                    self._send_stream(effect.to, payload)
                else:
                    self._send_datagram(effect.to, payload)
            elif isinstance(effect, Event):
                self._on_event(effect)
        self._wake.set()

    def _on_event(self, event: Event) -> None:
        if isinstance(event, ItemAccepted):
            item = event.item
            if item.kind is ItemKind.CAPABILITY_ADVERT:
                self._advert_seen[item.origin] = time.monotonic()
                self._cache_advert(item)
                self._learned(item.origin)
                return
            if item.kind is ItemKind.POLICY_BUNDLE:
                self.deps.on_document("policy", item.version, item.value, event.source)
            elif item.kind is ItemKind.REVOCATION_LIST:
                crl = read_revocation_list(item.value, self.deps.authority_pem)
                self.update_revocations(crl)
                self.deps.on_document("revocation", item.version, item.value, event.source)
        elif isinstance(event, Conflict) and event.item.kind is ItemKind.AUDIT_CHECKPOINT:
            held = event.held
            if held is None:
                return
            note_a, _ = read_checkpoint_item(held)
            note_b, _ = read_checkpoint_item(event.item)
            evidence = EquivocationEvidence.of(event.item.origin, event.item.version, note_a, note_b)
            verifier = self.validator.verifier(event.item.origin)
            try:
                # A relay can re-encode an item's unsigned parts and cause a conflict with no
                # fork behind it: only two signed, differently-rooted checkpoints are evidence.
                if verifier is None:
                    return
                evidence.verify(verifier)
            except FederationError:
                return
            if evidence not in self.equivocations:
                self.equivocations.append(evidence)
                self.deps.on_equivocation(evidence)
                self._apply(self.sync.put(make_evidence_item(evidence, event.item.origin),
                                          time.monotonic()))
        elif isinstance(event, MemberJoined | MemberAlive):
            # A newcomer (or a node back from a partition) gets our whole state at once instead
            # of waiting for the next anti-entropy round: adverts with certificates are too big
            # to travel as rumors.
            log.info("member %s %s at %s", event.member.node_id, type(event).__name__,
                     event.member.address)
            if self.validator.revocations is not None:
                self._refresh_revoked_addresses()
            if event.member.node_id != self.deps.node_id:
                self._apply([self.sync.exchange_with(event.member.address)])
        elif isinstance(event, MemberEvent):
            log.info("member %s %s", event.member.node_id, type(event).__name__)

    # -- UDP ---------------------------------------------------------------------------------

    def _send_datagram(self, to: str, payload: bytes) -> None:
        if self._udp is None or len(payload) > MAX_DATAGRAM_PAYLOAD:
            self.deps.count_drop("oversized_out")
            return
        self.seq += 1
        sealed = envelope.seal(self.deps.key, self.deps.node_id, self.boot, self.seq, payload)
        try:
            self._udp.sendto(sealed, _split(to))
            if self.deps.count_io is not None:
                self.deps.count_io("out", "udp", len(sealed))
        except (OSError, ValueError) as exc:
            log.debug("datagram to %s failed: %s", to, exc)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.deps.count_io is not None:
            self.deps.count_io("in", "udp", len(data))
        if len(data) > MAX_DATAGRAM_PAYLOAD + 512:
            self.deps.count_drop("oversized")
            return
        try:
            sender = envelope.peek_sender(data)
        except FederationError:
            self.deps.count_drop("malformed")
            return
        ident = self._identity(sender)
        if ident is None:
            self.deps.count_drop("unknown_sender")
            return
        try:
            opened = envelope.open_sealed(data, ident.public_key)
        except FederationError:
            self.deps.count_drop("forged")
            return
        if not self.replay.accept(opened.node_id, opened.boot, opened.seq):
            self.deps.count_drop("replayed")
            return
        try:
            msg = decode(opened.payload)
        except FederationError:
            self.deps.count_drop("malformed")
            return
        if not sources_match(msg, sender):
            self.deps.count_drop("forged")
            return
        self.validator.now = datetime.now(UTC)
        self._apply(self.membership.receive(f"{addr[0]}:{addr[1]}", msg, time.monotonic(),
                                            sender))

    def _identity(self, node_id: str) -> NodeIdentity | None:
        ident = self._known_identity(node_id)
        revocations = self.validator.revocations
        if ident is not None and revocations is not None and revocations.is_revoked(ident):
            return None
        return ident

    # -- reliable path -------------------------------------------------------------------------

    def _node_at(self, address: str) -> str | None:
        """The member whose address this is (the node a connection there must prove to be),
        or None for an address no member holds (a seed, a discovered node)."""
        node_id = self._by_address.get(address)
        if node_id is not None:
            member = self.membership.member(node_id)
            if member is not None and member.address == address:
                return node_id
        self._by_address = {m.address: m.node_id for m in self.membership.members()
                            if m.node_id != self.deps.node_id}
        return self._by_address.get(address)

    def _send_stream(self, to: str, payload: bytes) -> None:
        if self._stopping:
            return
        if len(self._inflight) >= MAX_INFLIGHT:
            self.deps.count_drop("inflight_full")
            return
        if self.deps.count_io is not None:
            self.deps.count_io("out", "tcp", len(payload))
        task = asyncio.create_task(self._post(to, payload))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _post(self, to: str, payload: bytes) -> None:
        from node.peerclient import PeerError

        try:
            response = await self.deps.peers.request(
                self._node_at(to), to, "POST", "/peer/v1/gossip", body=payload,
                purpose="gossip", timeout_s=EXCHANGE_TIMEOUT_S)
        except PeerError as exc:
            log.debug("exchange with %s failed: %s", to, exc)
            return
        if response.status != 204:
            log.info("exchange with %s refused: %s", to, response.error())
            return
        ident = response.peer  # verified by the peer client before the request was written
        new = ident.node_id not in self.tls_peers
        self.tls_peers[ident.node_id] = _Peer(ident, response.elapsed_s)
        if new:
            self._learned(ident.node_id)

    def receive_reliable(self, body: bytes, peer: NodeIdentity) -> str | None:
        """A POSTed message from an authenticated peer; returns an error text or None."""
        if self.deps.count_io is not None:
            self.deps.count_io("in", "tcp", len(body))
        if self.is_revoked(peer):
            # A connection opened before the revocation arrived outlives it (keep-alive).
            self.deps.count_drop("revoked")
            return REVOKED
        if len(body) > MAX_STREAM_MESSAGE_BYTES:
            self.deps.count_drop("oversized")
            return "message too large"
        try:
            msg = decode(body, max_bytes=MAX_STREAM_MESSAGE_BYTES)
        except FederationError as exc:
            self.deps.count_drop("malformed")
            return f"malformed message: {exc}"
        if not sources_match(msg, peer.node_id):
            self.deps.count_drop("forged")
            return "source_id is not the TLS peer"
        known = self.tls_peers.get(peer.node_id)
        self.tls_peers[peer.node_id] = _Peer(peer, known.rtt_s if known else None)
        self.validator.now = datetime.now(UTC)
        # No address: every answer goes to the address the peer signed (no reflection).
        self._apply(self.membership.receive("", msg, time.monotonic(), peer.node_id))
        if known is None:
            self._learned(peer.node_id)
        return None

    # -- views ---------------------------------------------------------------------------------

    def peers(self) -> list[dict[str, Any]]:
        rows = []
        for member in self.membership.members():
            rows.append(self._row(member))
        return rows

    def _row(self, member: Member) -> dict[str, Any]:
        cached = self._adverts.get(member.node_id)
        body: dict[str, Any] = dict(cached[0].body) if cached else {}
        ident = cached[0].identity if cached else None
        checkpoint = self.sync.get(member.node_id, ItemKind.AUDIT_CHECKPOINT, "checkpoint")
        tls = self.tls_peers.get(member.node_id)
        return {
            "node_id": member.node_id,
            "address": member.address,
            "state": member.status.name.lower(),
            "incarnation": member.incarnation,
            "tier": ident.tier if ident else None,
            "site": ident.site if ident else None,
            "jurisdiction": ident.jurisdiction if ident else None,
            "labels": dict(ident.labels) if ident else {},
            "models": body.get("models", []),
            "load": body.get("load"),
            "queue": body.get("queue"),
            "gpus": body.get("gpus", 0),
            "policy_version": body.get("policy_version"),
            "rtt_ms": round(tls.rtt_s * 1000, 2) if tls and tls.rtt_s is not None else None,
            "checkpoint_size": checkpoint.version if checkpoint else None,
            "equivocated": any(e.origin == member.node_id for e in self.equivocations),
        }

    def _cache_advert(self, item: Item) -> None:
        try:
            advert = read_advert(item, self.deps.authority_pem, datetime.now(UTC))
        except FederationError:
            self._adverts.pop(item.origin, None)
            return
        models: set[str] = set()
        for m in advert.body.get("models", []):
            models.add(f"{m.get('name')}:{m.get('version')}")
            models.add(str(m.get("name")))
        self._adverts[item.origin] = (advert, NodeAttrs(**advert.identity.attributes()),
                                      frozenset(models))

    def address_of(self, node_id: str) -> str | None:
        member = self.membership.member(node_id)
        return member.address if member is not None else None

    def candidates(self, now: float) -> list[Candidate]:
        """Every other member with a verified advert, as placement sees it. A member whose
        advert is missing, expired or revoked is not a candidate at all. Cheap: adverts were
        verified and parsed when they arrived."""
        from federation.membership import MemberStatus

        out: list[Candidate] = []
        wall = datetime.now(UTC)
        revocations = self.validator.revocations
        for member in self.membership.members():
            cached = self._adverts.get(member.node_id)
            if cached is None or member.node_id == self.deps.node_id:
                continue
            advert, attrs, models = cached
            if advert.identity.not_valid_after < wall:
                continue
            if revocations is not None and revocations.is_revoked(advert.identity):
                continue
            body = advert.body
            tls = self.tls_peers.get(member.node_id)
            out.append(Candidate(
                node_id=member.node_id,
                attrs=attrs,
                alive=member.status is MemberStatus.ALIVE,
                models=models,
                rtt_s=tls.rtt_s if tls and tls.rtt_s is not None else 0.005,
                queue_depth=int(body.get("queue", 0)),
                gpu=bool(body.get("gpus", 0)),
                record_age_s=max(0.0, now - self._advert_seen.get(member.node_id, now)),
                service_time_s=body.get("service_time_s"),
            ))
        return out

    def policy_item(self) -> Item | None:
        return self.sync.get(AUTHORITY_ORIGIN, ItemKind.POLICY_BUNDLE, POLICY_KEY)

    def revocation_item(self) -> Item | None:
        return self.sync.get(AUTHORITY_ORIGIN, ItemKind.REVOCATION_LIST, REVOCATIONS_KEY)


async def held_documents(store: Any) -> tuple[tuple[int, bytes] | None, tuple[int, bytes] | None]:
    return await get_doc(store, "policy"), await get_doc(store, "revocation")


__all__ = ["Cluster", "ClusterDeps", "held_documents"]
