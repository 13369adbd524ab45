"""Live audit replication: nodes that policy names as audit collectors copy the other nodes'
logs, verified entry by entry against each origin's signed checkpoint.

Who collects is policy: a node pulls a peer's entries only when ``audit.replicate`` permits
(principal = this collector, resource = the origin), and the origin re-checks the same decision
before it serves (either side's deny wins; no policy means nobody collects). Every
``federation.checkpoint_interval_s`` a collector asks each alive peer for its newest signed
checkpoint, the compact-range frontier at the size it already holds, and the entries since;
it accepts them only if the frontier folds to the root it held and the entries fold to the new
signed root (``federation.merkle.CompactRange``), then appends them to the replica tables that
``outpost bundle`` also uses. A node offline for a while simply catches up on the next round.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from federation.canonical import b64decode
from federation.errors import FederationError
from federation.merkle import CompactRange, leaf_hash
from federation.messages import ItemKind
from federation.note import Checkpoint, Verifier
from federation.policy_engine import NodeAttrs
from node.cluster import Cluster
from node.limits import AUDIT_PAGE_ENTRIES
from node.peerclient import PeerClients, PeerError
from node.ports import PolicyView
from node.store import Store

log = logging.getLogger("outpost.replication")

# Entries fetched per request (see node.limits).
PAGE = AUDIT_PAGE_ENTRIES
# Seconds one page of entries may take to arrive (a page is ~2 MiB at most).
REQUEST_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Collector:
    """What replication needs of an enrolled node (wired in ``node.daemon``); one round is
    :meth:`once`, run every ``federation.checkpoint_interval_s`` by the daemon's tasks."""

    me: NodeAttrs
    cluster: Cluster  # membership, verified identities and adverts of the peers
    policy: PolicyView
    store: Store
    peers: PeerClients  # outbound mutual TLS that proves each peer is the node chosen

    async def once(self) -> int:
        return await replicate_once(self)


async def replicate_once(node: Collector) -> int:
    """One round over every alive peer this node may collect from; returns entries added."""
    cluster, engine = node.cluster, node.policy.engine
    if engine.bundle is None:
        return 0
    added = 0
    for candidate in cluster.candidates(time.monotonic()):
        if not candidate.alive:
            continue
        decision = engine.decide_audit_replicate(node.me, candidate.attrs)
        if not decision.allowed:
            continue
        address = cluster.address_of(candidate.node_id)
        verifier = cluster.validator.verifier(candidate.node_id)
        ident = cluster.validator.identities.get(candidate.node_id)
        if address is None or verifier is None or ident is None:
            continue
        try:
            added += await _pull(node, _Origin(node.peers, candidate.node_id, address),
                                 verifier, ident.origin)
        except (PeerError, FederationError, ValueError, KeyError) as exc:
            log.warning("replicating %s failed: %s", candidate.node_id, exc)
    return added


class _Origin:
    """GET requests to the origin node, over a connection that proves it is that node."""

    def __init__(self, peers: PeerClients, node_id: str, address: str) -> None:
        self.peers, self.node_id, self.address = peers, node_id, address

    async def get(self, view: str, **params: int) -> Any:
        response = await self.peers.request(
            self.node_id, self.address, "GET", f"/peer/v1/audit/{view}", params=params,
            purpose="replication", timeout_s=REQUEST_TIMEOUT_S)
        if response.status != 200:
            raise ValueError(f"{self.node_id} answered {response.status} to {view}: "
                             f"{response.error()}")
        return response.json()


async def _pull(node: Collector, origin_node: _Origin, verifier: Verifier, origin: str) -> int:
    node_id = origin_node.node_id
    held_size, held_note = await _held(node.store, origin)
    note = (await origin_node.get("checkpoint"))["checkpoint"]
    checkpoint = Checkpoint.open(note, verifier)
    if checkpoint.size <= held_size:
        return 0
    frontier: list[bytes] = []
    if held_size:
        answer = await origin_node.get("frontier", size=held_size)
        frontier = [b64decode(h, length=32, what="frontier hash") for h in answer["hashes"]]
        held_root = Checkpoint.open(held_note or "", verifier).root_hash
        if CompactRange(held_size, frontier).root() != held_root:
            raise ValueError(f"{node_id}'s log does not extend the copy held here (fork?)")
    cr = CompactRange(held_size, frontier)
    entries: list[bytes] = []
    start = held_size
    while start < checkpoint.size:
        page = await origin_node.get("entries", start=start,
                                     end=min(start + PAGE, checkpoint.size))
        if not page:
            raise ValueError(f"{node_id} sent no entries from {start}")
        for row in page:
            if row["index"] != start:
                raise ValueError(f"{node_id} sent entry {row['index']} where {start} was due")
            raw = b64decode(row["entry"], what="audit entry")
            cr.append(leaf_hash(raw))
            entries.append(raw)
            start += 1
    if cr.root() != checkpoint.root_hash:
        raise ValueError(f"{node_id}'s entries do not match its signed checkpoint")
    await _store(node, origin, held_size, entries, checkpoint.size, note, node_id)
    log.info("replicated %d entries of %s (now %d)", len(entries), origin, checkpoint.size)
    return len(entries)


async def _held(store: Store, origin: str) -> tuple[int, str | None]:
    async with store.conn.execute(
        "SELECT size, note FROM replica_head WHERE origin = ?", (origin,)
    ) as cur:
        row = await cur.fetchone()
    return (int(row[0]), str(row[1])) if row else (0, None)


async def _store(node: Collector, origin: str, first: int, entries: list[bytes], size: int,
                 note: str, node_id: str) -> None:
    """Append to the replica tables (shared with ``outpost bundle``) in one transaction."""
    cert = b""
    item = node.cluster.sync.get(node_id, ItemKind.CAPABILITY_ADVERT, "advert")
    if item is not None:
        cert = json.loads(item.value)["cert"].encode()
    conn = node.store.conn
    await conn.execute("BEGIN IMMEDIATE")
    try:
        await conn.executemany(
            "INSERT INTO replica_entry(origin, seq, entry) VALUES(?, ?, ?)",
            [(origin, first + i, e) for i, e in enumerate(entries)],
        )
        await conn.execute(
            "INSERT INTO replica_head(origin, size, note, cert) VALUES(?, ?, ?, ?) "
            "ON CONFLICT(origin) DO UPDATE SET size=excluded.size, note=excluded.note, "
            "cert=excluded.cert",
            (origin, size, note, cert),
        )
        await conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(Exception):
            await conn.execute("ROLLBACK")
        raise
