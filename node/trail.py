"""A trail anyone can check: the node's log (and the replicas it holds) served as C2SP
tlog-tiles, the C2SP tlog-witness endpoint, the client that collects cosignatures for this
node's checkpoints, and the persistence of the one per-origin witness state.

Owns the I/O around ``federation.tiles`` and ``federation.witness``: reading tiles and entry
bundles from the store, the read-only HTTP surfaces (the ``audit.tiles_listen`` plain listener
and ``/peer/v1/tlog`` behind mutual TLS and the ``audit.read`` policy action), the
``add-checkpoint`` route, persisting witness records before answering, turning evidence into
audit entries and gossip, and the cosignature rows ``outpost audit checkpoint --cosigned``
prints. Never decides protocol questions itself (those are in ``federation``) and never writes
the audit log's own tables.

URL layout (one prefix per origin; the node's own log also at the root)::

    /checkpoint  /tile/<L>/<N>[.p/<W>]  /tile/entries/<N>[.p/<W>]      this node's log
    /<origin>/checkpoint  /<origin>/tile/...                           any log held here
    /peer/v1/tlog/...        the same, mutual TLS, per-peer ``audit.read`` decision
    POST /peer/v1/witness/add-checkpoint                              tlog-witness
    GET  /peer/v1/witness/held?origin=O    the checkpoint witnessed here for O (rollback checks)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import httpx

from federation.audit import EquivocationEvidence
from federation.errors import FederationError, MalformedInput
from federation.items import make_evidence_item
from federation.merkle import leaf_hash
from federation.messages import Item, ItemKind
from federation.note import Checkpoint, Verifier
from federation.policy_engine import NodeAttrs
from federation.tiles import (
    TileId,
    encode_bundle,
    parse_tile_path,
    subtree_root,
    tile_exists,
    tile_nodes,
)
from federation.witness import (
    CosignatureVerifier,
    Cosigner,
    RollbackEvidence,
    WitnessRecord,
    WitnessState,
    add_checkpoint_body,
    cosignatures,
)
from node.audit import AuditError, _fetch_nodes
from node.http import HTTPError, Receive, Scope, Send, read_body, send_error, send_response

if TYPE_CHECKING:
    from federation.identity import NodeIdentity
    from federation.policy_engine import PolicyEngine
    from node.audit import AuditLog
    from node.cluster import Cluster
    from node.config import Config
    from node.peer import PeerApp
    from node.peerclient import PeerClients
    from node.ports import PolicyView
    from node.store import Store

log = logging.getLogger("outpost.trail")

# Full tiles never change: cache them (and let HTTP caches keep them) for a year.
IMMUTABLE = "public, max-age=31536000, immutable"
# The checkpoint moves with every commit: the spec asks for no caching beyond a few seconds.
CHECKPOINT_CACHE = "no-cache, max-age=2"
# Full tiles and bundles are immutable: the most recently served are kept in memory, up to
# this many bytes (hash tiles are 8 KiB, bundles ~64 KiB), so hot tiles cost no database read.
# Bounded well inside the node's idle RSS budget.
TILE_CACHE_BYTES = 16 * 1024 * 1024
# The list of logs held (own + replicas) is re-read at most this often per request burst.
ORIGINS_TTL_S = 1.0
# How long one add-checkpoint exchange may take before the witness counts as unreachable.
WITNESS_TIMEOUT_S = 10.0
# Cosigned checkpoints kept per witness (older rows are pruned): a history for `audit verify`.
COSIGNED_KEPT = 64
# Largest add-checkpoint body read (federation.witness bounds what it parses).
MAX_ADD_BODY = 72 * 1024


def witness_name(origin: str) -> str:
    """The cosigner name of the node whose log origin is ``origin``."""
    return f"{origin}/witness"


def cosigner_for(node: NodeIdentity) -> CosignatureVerifier:
    """A federation node's witness key: its node key, cosignature/v1 (domain separated from
    its checkpoint signatures by the ``cosignature/v1`` header and the 0x04 key id)."""
    return CosignatureVerifier(witness_name(node.origin), node.public_key)


# -- reading tiles -------------------------------------------------------------------------


class TileStore:
    """Tiles, bundles and checkpoints of the logs this node holds, from its database."""

    def __init__(self, node: TrailNode) -> None:
        self.node = node
        self.store: Store = node.store
        self._cache: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._cached_bytes = 0
        self._origins: tuple[float, list[str]] = (-1.0, [])

    @property
    def own(self) -> str:
        return self.node.audit.origin

    async def origins(self) -> list[str]:
        at, held = self._origins
        if time.monotonic() - at < ORIGINS_TTL_S:
            return held
        rows = await self.store.conn.execute_fetchall("SELECT origin FROM replica_head")
        held = [self.own, *(str(r[0]) for r in rows)]
        self._origins = (time.monotonic(), held)
        return held

    def _cached(self, key: tuple[str, int, int]) -> bytes | None:
        data = self._cache.get(key)
        if data is not None:
            self._cache.move_to_end(key)
        return data

    def _keep(self, key: tuple[str, int, int], data: bytes) -> None:
        if key in self._cache:
            return
        self._cache[key] = data
        self._cached_bytes += len(data)
        while self._cached_bytes > TILE_CACHE_BYTES:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= len(old)

    async def checkpoint(self, origin: str) -> str | None:
        if origin == self.own:
            return await cosigned_checkpoint(self.node)
        rows = list(await self.store.conn.execute_fetchall(
            "SELECT note FROM replica_head WHERE origin = ?", (origin,)))
        return str(rows[0][0]) if rows else None

    async def size(self, origin: str) -> int | None:
        if origin == self.own:
            return self.node.audit.size
        rows = list(await self.store.conn.execute_fetchall(
            "SELECT size FROM replica_head WHERE origin = ?", (origin,)))
        return int(rows[0][0]) if rows else None

    async def tile(self, origin: str, tile: TileId) -> bytes | None:
        """The tile's bytes, or None when the log is not held here or does not reach it."""
        key = (origin, tile.level, tile.index)
        if tile.is_full and (hit := self._cached(key)) is not None:
            return hit
        size = await self.size(origin)
        if size is None or not tile_exists(tile, size):
            return None
        first = tile.index * 256
        if tile.is_entries:
            data = encode_bundle(await self._entries(origin, first, first + tile.width))
        elif origin == self.own and tile.level == 0:
            # Leaf hashes are the even node keys 2*i: one primary-key range scan.
            rows = list(await self.store.conn.execute_fetchall(
                "SELECT hash FROM audit_node WHERE id BETWEEN ? AND ? AND (id & 1) = 0 "
                "ORDER BY id", (2 * first, 2 * (first + tile.width - 1))))
            if len(rows) != tile.width:
                raise AuditError("the audit node table is missing leaf hashes; run `outpost "
                                 "audit verify`")
            data = b"".join(bytes(r[0]) for r in rows)
        elif origin == self.own:
            found = await _fetch_nodes(self.store, tile_nodes(tile))
            data = b"".join(found[n] for n in tile_nodes(tile))
        else:
            data = b"".join(await self._replica_hashes(origin, tile))
        if tile.is_full:
            self._keep(key, data)
        return data

    async def _entries(self, origin: str, start: int, end: int) -> list[bytes]:
        if origin == self.own:
            rows = await self.store.conn.execute_fetchall(
                "SELECT entry FROM audit_entry WHERE seq >= ? AND seq < ? ORDER BY seq",
                (start, end))
        else:
            rows = await self.store.conn.execute_fetchall(
                "SELECT entry FROM replica_entry WHERE origin = ? AND seq >= ? AND seq < ? "
                "ORDER BY seq", (origin, start, end))
        return [bytes(r[0]) if not isinstance(r[0], str) else r[0].encode() for r in rows]

    async def _replica_hashes(self, origin: str, tile: TileId) -> list[bytes]:
        """Replicas keep entries only: hash tiles are recomputed, full ones cached."""
        key = (origin, tile.level, tile.index)
        if tile.is_full and (data := self._cached(key)) is not None:
            return [data[i : i + 32] for i in range(0, len(data), 32)]
        first = tile.index * 256
        if tile.level == 0:
            hashes = [leaf_hash(e) for e in await self._entries(origin, first, first + tile.width)]
        else:
            hashes = []
            for i in range(tile.width):
                below = await self._replica_hashes(origin, TileId(tile.level - 1, first + i))
                hashes.append(subtree_root(below))
        if tile.is_full:
            self._keep(key, b"".join(hashes))
        return hashes


async def cosigned_checkpoint(node: TrailNode) -> str | None:
    """This node's checkpoint to serve: the newest head (quorum 0) or the newest checkpoint
    with at least ``audit.witness_quorum`` cosignatures, with every cosignature collected."""
    quorum = node.config.audit.witness_quorum
    rows = list(await node.store.conn.execute_fetchall(
        "SELECT size, note, line FROM audit_cosignature WHERE size = (SELECT size FROM "
        "audit_cosignature GROUP BY size HAVING COUNT(*) >= ? ORDER BY size DESC LIMIT 1) "
        "ORDER BY witness", (max(quorum, 1),)))
    head = node.audit.checkpoint()
    if quorum > 0:
        if not rows:
            return None
        return str(rows[0][1]) + "".join(str(r[2]) for r in rows)
    if head is None:
        return None
    size = node.audit.size
    lines = [str(r[2]) for r in rows if int(r[0]) == size]
    return head + "".join(lines)


# -- serving -------------------------------------------------------------------------------


def split_path(path: str, origins: list[str], own: str) -> tuple[str, str] | None:
    """``/<origin>/<rest>`` or ``/<rest>`` (own log) -> (origin, rest)."""
    path = path.lstrip("/")
    if path == "checkpoint" or path.startswith("tile/"):
        return own, path
    for origin in sorted(origins, key=len, reverse=True):
        if path.startswith(origin + "/"):
            return origin, path[len(origin) + 1:]
    return None


async def serve_tlog(tiles: TileStore, path: str, send: Send, *, head: bool = False) -> None:
    origins = await tiles.origins()
    found = split_path(path, origins, tiles.own)
    if found is None:
        raise HTTPError(404, "no such log here; logs held: " + ", ".join(origins))
    origin, rest = found
    if rest == "checkpoint":
        note = await tiles.checkpoint(origin)
        if note is None:
            raise HTTPError(404, f"no checkpoint of {origin} yet (empty log, or not yet "
                                 "cosigned by audit.witness_quorum witnesses)")
        await _send(send, note.encode(), "text/plain; charset=utf-8", CHECKPOINT_CACHE, head)
        return
    try:
        tile = parse_tile_path(rest)
    except MalformedInput as exc:
        raise HTTPError(404, str(exc)) from None
    data = await tiles.tile(origin, tile)
    if data is None:
        raise HTTPError(404, f"{rest} does not exist (yet) in {origin}")
    await _send(send, data, "application/octet-stream", IMMUTABLE, head)


async def _send(send: Send, body: bytes, ctype: str, cache: str, head: bool) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode()),
        (b"cache-control", cache.encode())]})
    await send({"type": "http.response.body", "body": b"" if head else body})


class TilesApp:
    """The read-only plain-HTTP listener (``audit.tiles_listen``): GET and HEAD only."""

    def __init__(self, tiles: TileStore) -> None:
        self.tiles = tiles

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            if scope["method"] not in ("GET", "HEAD"):
                raise HTTPError(405, "this listener is read-only: GET the checkpoint and tiles")
            await serve_tlog(self.tiles, scope["path"], send, head=scope["method"] == "HEAD")
        except HTTPError as exc:
            await send_error(send, exc)
        except Exception as exc:  # one bad read must not look like a crash to an auditor
            log.exception("tiles request %s failed", scope.get("path"))
            await send_error(send, HTTPError(500, f"internal error: {exc}"))


# -- the witness ---------------------------------------------------------------------------


@dataclass
class Target:
    """A witness this node asks for cosignatures."""

    key: str
    url: str  # submission prefix; add-checkpoint is appended
    verifier: CosignatureVerifier
    peer: bool
    known: int = 0  # the size we believe it holds for our log
    cosigned: int = 0
    beyond: int | None = None  # it holds more than our log has: our log went back


@dataclass(frozen=True)
class TrailNode:
    """What the trail needs of the daemon (wired in ``node.daemon``)."""

    node_id: str
    config: Config
    store: Store
    audit: AuditLog
    identity: NodeIdentity | None  # None on a node that is not enrolled
    cluster: Cluster | None  # None when not enrolled: no peer witnesses
    authority_pem: bytes | None
    clients: PeerClients | None  # outbound mutual TLS that proves each peer's identity
    policy: PolicyView

    @property
    def engine(self) -> PolicyEngine:
        return self.policy.engine


class _PeerHttp:
    """The few httpx-shaped calls the witness code makes to a peer, over ``node.peerclient``
    (so a witness connection proves it reached the node chosen); its errors as httpx's."""

    def __init__(self, clients: PeerClients, node_id: str) -> None:
        self.clients, self.node_id = clients, node_id

    async def _call(self, method: str, url: str, body: bytes | None,
                    params: dict[str, Any] | None) -> _PeerAnswer:
        from node.peerclient import PeerError

        rest = url.split("://", 1)[-1]
        address, _, path = rest.partition("/")
        try:
            response = await self.clients.request(
                self.node_id, address, method, "/" + path, body=body, params=params,
                purpose="witness", timeout_s=WITNESS_TIMEOUT_S)
        except PeerError as exc:
            raise httpx.TransportError(str(exc)) from None
        return _PeerAnswer(response.status, response.body)

    async def post(self, url: str, content: bytes) -> _PeerAnswer:
        return await self._call("POST", url, content, None)

    async def get(self, url: str, params: dict[str, Any] | None = None) -> _PeerAnswer:
        return await self._call("GET", url, None, params)


@dataclass(frozen=True)
class _PeerAnswer:
    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        import json

        return json.loads(self.content)


@dataclass
class Trail:
    """Witness state, cosigner and collector for one node (see the module docstring)."""

    node: TrailNode
    state: WitnessState
    cosigner: Cosigner
    tiles: TileStore
    targets: dict[str, Target] = field(default_factory=dict)
    handled: set[bytes] = field(default_factory=set)  # evidence bodies already audited
    _persisted: dict[str, int] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _http: httpx.AsyncClient | None = None
    listen: str = ""  # the audit.tiles_listen address once bound

    # -- persistence ---------------------------------------------------------------------

    async def load(self) -> None:
        rows = await self.node.store.conn.execute_fetchall(
            "SELECT origin, size, root, note, updated FROM witness_state")
        self.state.load(WitnessRecord(str(o), int(s), bytes(r), str(n), int(u))
                        for o, s, r, n, u in rows)
        self._persisted = {r.origin: r.size for r in self.state.records.values()}
        for (body,) in await self.node.store.conn.execute_fetchall(
                "SELECT body FROM witness_evidence"):
            self.handled.add(bytes(body))
        for target in self._external():
            self.targets[target.key] = target

    async def persist(self) -> None:
        """Write every record that changed (gossip advances records between calls)."""
        changed = [r for r in self.state.records.values()
                   if self._persisted.get(r.origin) != r.size]
        if changed:
            await self.node.store.conn.executemany(
                "INSERT OR REPLACE INTO witness_state(origin, size, root, note, updated) "
                "VALUES (?, ?, ?, ?, ?)",
                [(r.origin, r.size, r.root_hash, r.note, r.updated) for r in changed])
            await self.node.store.conn.commit()
            for r in changed:
                self._persisted[r.origin] = r.size
        for ev in list(self.state.evidence):
            await self.on_evidence(ev)

    async def on_evidence(self, ev: EquivocationEvidence | RollbackEvidence,
                          gossip: bool = True) -> None:
        body = ev.to_json()
        if body in self.handled:
            return
        self.handled.add(body)
        kind = f"rollback:{ev.kind}" if isinstance(ev, RollbackEvidence) else "equivocation"
        await self.node.store.conn.execute(
            "INSERT OR IGNORE INTO witness_evidence(origin, kind, body, seen) VALUES (?,?,?,?)",
            (ev.origin, kind, body, time.time()))
        await self.node.store.conn.commit()
        node_id = ev.origin.rsplit("/", 1)[-1]
        if isinstance(ev, RollbackEvidence):
            held = Checkpoint.parse(ev.held_note.split("\n\n", 1)[0] + "\n").size
            offered = Checkpoint.parse(ev.offered_note.split("\n\n", 1)[0] + "\n").size
            log.error("ROLLBACK: %s presented size %d after signing size %d (%s, seen by %s)",
                      ev.origin, offered, held, ev.kind, ev.reporter)
            await self.node.audit.append(self.node.audit.record(
                "rollback", peer=node_id,
                reason=f"log presented size {offered} after it signed size {held} "
                       f"({ev.kind}); seen by {ev.reporter}",
                detail={"held": held, "offered": offered, "kind": ev.kind}))
            item = Item(node_id, ItemKind.EQUIVOCATION_EVIDENCE, f"rollback:{held}:{offered}", 1,
                        body)
        else:
            cluster = self.node.cluster
            if cluster is not None and ev not in cluster.equivocations:
                cluster.equivocations.append(ev)
                cluster.deps.on_equivocation(ev)
            item = make_evidence_item(ev, node_id)
        cluster = self.node.cluster
        if gossip and cluster is not None:
            # The cluster's own put path (state sync then spreads it like equivocation).
            cluster._apply(cluster.sync.put(item, time.monotonic()))

    async def gossiped_evidence(self) -> None:
        """Rollback evidence other witnesses gossiped (validated by the item validator)."""
        cluster = self.node.cluster
        if cluster is None:
            return
        for item in list(cluster.sync.items()):
            if item.kind is ItemKind.EQUIVOCATION_EVIDENCE and item.key.startswith("rollback:") \
                    and item.value not in self.handled:
                with contextlib.suppress(FederationError):
                    await self.on_evidence(RollbackEvidence.parse(item.value), gossip=False)

    def rollbacks(self) -> list[dict[str, Any]]:
        out = []
        for body in sorted(self.handled):
            with contextlib.suppress(FederationError, ValueError):
                if b'"kind":"smaller"' in body or b'"kind":"inconsistent"' in body:
                    ev = RollbackEvidence.parse(body)
                    out.append({"origin": ev.origin, "kind": ev.kind, "reporter": ev.reporter})
        return out

    # -- the witness endpoint (this node as a witness) -------------------------------------

    def verifiers(self, submitter: NodeIdentity | None) -> dict[str, Verifier]:
        out: dict[str, Verifier] = {}
        cluster = self.node.cluster
        if cluster is not None:
            for ident in list(cluster.validator.identities.values()):
                out[ident.origin] = Verifier(ident.origin, ident.public_key)
        if submitter is not None:
            out[submitter.origin] = Verifier(submitter.origin, submitter.public_key)
        return out

    async def add_checkpoint(self, body: bytes, submitter: NodeIdentity | None) -> tuple[
            int, str, str]:
        async with self._lock:  # check-and-persist atomically (the spec's race)
            first_line = body.split(b"\n\n", 1)[-1].split(b"\n", 1)[0].decode(errors="replace")
            result = self.state.add_checkpoint(
                body, self.verifiers(submitter), cosigner=self.cosigner, now=int(time.time()),
                from_origin=submitter is not None and submitter.origin == first_line)
            await self.persist()  # the new record is durable before the cosignature leaves
        return result.status, result.body, result.content_type

    # -- the client (this node's log asks witnesses) ----------------------------------------

    def _external(self) -> list[Target]:
        out = []
        for entry in self.node.config.audit.witnesses:
            url, _, vkey = entry.strip().partition(" ")
            try:
                verifier = CosignatureVerifier.from_vkey(vkey.strip())
            except (MalformedInput, ValueError) as exc:
                log.error("audit.witnesses entry %s: %s", url, exc)
                continue
            out.append(Target(url, url.rstrip("/"), verifier, peer=False))
        return out

    def _peer_targets(self) -> None:
        cluster = self.node.cluster
        if cluster is None:
            return
        from federation.membership import MemberStatus

        for member in cluster.membership.members():
            ident = cluster.validator.identities.get(member.node_id)
            if ident is None or member.node_id == self.node.node_id \
                    or member.status is not MemberStatus.ALIVE or cluster.is_revoked(ident):
                continue
            url = f"https://{member.address}/peer/v1/witness"
            target = self.targets.get(member.node_id)
            if target is None or target.url != url:
                self.targets[member.node_id] = Target(member.node_id, url, cosigner_for(ident),
                                                      peer=True)

    def _client(self, target: Target) -> httpx.AsyncClient | _PeerHttp:
        """External witnesses over plain HTTPS; peers over mutual TLS that proves them."""
        if target.peer:
            return self._peer(target.key)
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=WITNESS_TIMEOUT_S)
        return self._http

    def _peer(self, node_id: str) -> _PeerHttp:
        assert self.node.clients is not None, "peer witnesses exist only on enrolled nodes"
        return _PeerHttp(self.node.clients, node_id)

    async def round(self) -> None:
        """Ask every witness to cosign the newest checkpoint (those behind it)."""
        self._peer_targets()
        size, note = self.node.audit.size, self.node.audit.checkpoint()
        if note is None or size == 0:
            return
        due = [t for t in self.targets.values() if t.cosigned < size]
        await asyncio.gather(*(self.submit(t, size, note) for t in due), return_exceptions=True)

    async def submit(self, target: Target, size: int, note: str) -> bool:
        reader = self.node.audit.reader()
        old = target.known
        for _ in range(3):
            if old > size:
                if target.beyond != old:
                    log.error("witness %s holds size %d of this log, more than its %d entries: "
                              "this node's log was cut back; `outpost audit verify` shows it",
                              target.key, old, size)
                target.beyond = old
                return False
            proof = [] if old in (0, size) else list(
                (await reader.consistency_proof(old, size)).hashes)
            try:
                response = await self._client(target).post(
                    f"{target.url}/add-checkpoint", content=add_checkpoint_body(old, proof, note))
            except httpx.HTTPError as exc:
                log.debug("witness %s unreachable: %s", target.key, exc)
                return False
            if response.status_code == 409:
                try:
                    held = int(response.text.strip())
                except ValueError:
                    return False
                if held == old:  # same size, another root: the witness saw a fork of us
                    log.error("witness %s holds another root for size %d of this log",
                              target.key, held)
                    target.beyond = held
                    return False
                old = target.known = held
                continue
            if response.status_code != 200:
                log.warning("witness %s refused checkpoint %d: %s %s", target.key, size,
                            response.status_code, response.text.strip()[:200])
                return False
            lines = [ln + "\n" for ln in response.text.split("\n") if ln]
            try:
                got = cosignatures(note + "".join(lines), [target.verifier])
            except FederationError as exc:
                log.warning("witness %s sent a bad cosignature: %s", target.key, exc)
                return False
            mine = [ln for ln in lines if target.verifier.verify_line(
                note.split("\n\n", 1)[0] + "\n", ln) is not None]
            if not got or not mine:
                log.warning("witness %s answered without its cosignature", target.key)
                return False
            target.known = target.cosigned = size
            target.beyond = None
            await self.node.store.conn.execute(
                "INSERT OR REPLACE INTO audit_cosignature(size, witness, note, line) "
                "VALUES (?, ?, ?, ?)", (size, target.verifier.name, note, mine[0]))
            await self.node.store.conn.execute(
                "DELETE FROM audit_cosignature WHERE witness = ? AND size NOT IN (SELECT size "
                "FROM audit_cosignature WHERE witness = ? ORDER BY size DESC LIMIT ?)",
                (target.verifier.name, target.verifier.name, COSIGNED_KEPT))
            await self.node.store.conn.commit()
            return True
        return False

    async def drain_wanted(self) -> None:
        """Gossip brought checkpoints we could not check for want of a proof from the size we
        witnessed: ask their origins for the proof (the item put again would only be stale)."""
        cluster = self.node.cluster
        if cluster is None:
            return
        wanted, cluster.validator.wants_proof[:] = list(cluster.validator.wants_proof), []
        for node_id, _held, _offered in wanted[-8:]:
            address = cluster.address_of(node_id)
            verifier = cluster.validator.verifier(node_id)
            record = self.state.held(verifier.name) if verifier else None
            if address is None or verifier is None or record is None:
                continue
            base = f"https://{address}/peer/v1/audit"
            try:
                client = self._peer(node_id)
                note = (await client.get(f"{base}/checkpoint")).json()["checkpoint"]
                new = Checkpoint.open(note, verifier).size
                if new <= record.size:
                    continue
                r = await client.get(f"{base}/consistency", params={"old": record.size,
                                                                     "new": new})
                from federation.canonical import b64decode

                proof = [b64decode(h, length=32) for h in r.json()["hashes"]]
                self.state.observe(note, verifier, proof, int(time.time()))
            except (httpx.HTTPError, FederationError, KeyError, ValueError) as exc:
                log.info("catching up the witnessed checkpoint of %s failed: %s", node_id, exc)
        await self.persist()

    async def witnessed_of_me(self) -> list[dict[str, Any]]:
        """What each peer witness holds for this node's log (for `audit verify`)."""
        out: list[dict[str, Any]] = []
        self._peer_targets()
        origin = self.node.audit.origin
        for target in list(self.targets.values()):
            if not target.peer:
                continue
            try:
                r = await self._peer(target.key).get(f"{target.url}/held",
                                                 params={"origin": origin})
            except httpx.HTTPError:
                continue
            if r.status_code == 200:
                out.append({"witness": target.key, "checkpoint": r.text})
        rows = await self.node.store.conn.execute_fetchall(
            "SELECT witness, note FROM audit_cosignature WHERE size = (SELECT MAX(size) FROM "
            "audit_cosignature)")
        out += [{"witness": str(w), "checkpoint": str(n)} for w, n in rows]
        for target in self.targets.values():
            if target.beyond is not None:
                out.append({"witness": target.key, "beyond": target.beyond})
        return out

    async def step(self) -> None:
        """One witness round (the daemon's tasks run it every checkpoint interval)."""
        await self.persist()
        await self.gossiped_evidence()
        await self.drain_wanted()
        await self.round()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    def annotate_peers(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``outpost peers`` rows plus what this node witnessed of each peer's log."""
        rolled = {r["origin"] for r in self.rollbacks()}
        ident = self.node.identity
        for row in rows:
            origin = f"outpost/{ident.federation}/{row['node_id']}" if ident else ""
            held = self.state.held(origin)
            row["witnessed_size"] = held.size if held else None
            row["rolled_back"] = origin in rolled
        return rows

    def status(self) -> dict[str, Any]:
        quorum = self.node.config.audit.witness_quorum
        return {
            "tiles_listen": self.listen or None,
            "name": self.cosigner.name,
            "vkey": self.cosigner.verifier.vkey,
            "held": {o: r.size for o, r in sorted(self.state.records.items())},
            "rollbacks": self.rollbacks(),
            "quorum": quorum,
            "cosigned": {t.verifier.name: t.cosigned for t in self.targets.values()},
            "cut_back": {t.key: t.beyond for t in self.targets.values()
                         if t.beyond is not None},
        }


# -- wiring --------------------------------------------------------------------------------


def _peer_handlers(trail: Trail) -> tuple[Callable[..., Awaitable[None]], ...]:
    node = trail.node

    async def tlog(scope: Scope, receive: Receive, send: Send, peer: NodeIdentity,
                   rest: str) -> None:
        origins = await trail.tiles.origins()
        found = split_path(rest, origins, trail.tiles.own)
        if found is None:
            raise HTTPError(404, "no such log here; logs held: " + ", ".join(origins))
        origin_attrs = await _origin_attrs(node, found[0])
        if origin_attrs is None:
            raise HTTPError(404, f"no such log {found[0]}")
        decision = node.engine.decide_audit_read(NodeAttrs(**peer.attributes()),
                                                   origin_attrs)
        if not decision.allowed:
            raise HTTPError(403, f"policy does not let {peer.node_id} read {found[0]} (action "
                                 "audit.read)")
        await serve_tlog(trail.tiles, rest, send)

    async def witness(scope: Scope, receive: Receive, send: Send, peer: NodeIdentity,
                      rest: str) -> None:
        if rest == "add-checkpoint" and scope["method"] == "POST":
            body = await read_body(scope, receive, MAX_ADD_BODY)
            status, text, ctype = await trail.add_checkpoint(body, peer)
            await send_response(send, status, text.encode(), [(b"content-type", ctype.encode())])
            return
        if rest == "held" and scope["method"] == "GET":
            origin = dict(parse_qsl(scope.get("query_string", b"").decode())).get("origin", "")
            record = trail.state.held(origin)
            if record is None:
                raise HTTPError(404, f"this node witnessed no checkpoint of {origin!r}")
            await send_response(send, 200, record.note.encode(),
                                [(b"content-type", b"text/plain; charset=utf-8")])
            return
        raise HTTPError(404, f"no witness endpoint {rest!r}")

    return tlog, witness


async def _origin_attrs(node: TrailNode, origin: str) -> NodeAttrs | None:
    if origin == node.audit.origin:
        return NodeAttrs(**node.identity.attributes()) if node.identity else None
    rows = list(await node.store.conn.execute_fetchall(
        "SELECT cert FROM replica_head WHERE origin = ?", (origin,)))
    if not rows or node.authority_pem is None:
        return None
    from datetime import UTC, datetime

    from federation.identity import NodeIdentity

    try:
        ident = NodeIdentity.from_certificate(bytes(rows[0][0]), node.authority_pem,
                                              datetime.now(UTC))
    except FederationError:
        return None
    return NodeAttrs(**ident.attributes())


async def build_trail(node: TrailNode, key: Any) -> Trail:
    """The trail with its persisted witness state loaded; the cluster's checkpoint validator
    reads and advances the same witness state."""
    origin = node.audit.origin
    trail = Trail(node, WitnessState(witness_name(origin)),
                  Cosigner(witness_name(origin), key), TileStore(node))
    await trail.load()
    if node.cluster is not None:
        node.cluster.validator.witness = trail.state
    return trail


def peer_routes(app: PeerApp, trail: Trail) -> None:
    """``/peer/v1/tlog/...`` (audit.read policy) and ``/peer/v1/witness/...`` (tlog-witness)."""
    tlog, witness = _peer_handlers(trail)
    app.route("GET", "/peer/v1/tlog", tlog)
    app.route("POST", "/peer/v1/witness", witness)
    app.route("GET", "/peer/v1/witness", witness)


def admin_route(trail: Trail) -> Callable[[dict[str, Any], str], Awaitable[tuple[int, Any]]]:
    """``GET /trail/witnessed`` on the admin socket (for ``outpost audit verify``)."""

    async def witnessed(_payload: dict[str, Any], _rest: str) -> tuple[int, Any]:
        return 200, await trail.witnessed_of_me()

    return witnessed


__all__ = ["TileStore", "TilesApp", "Trail", "TrailNode", "admin_route", "build_trail",
           "cosigned_checkpoint", "peer_routes", "witness_name"]
