"""State sync of versioned, signed items: rumor spreading plus push-pull anti-entropy.

Owns: the item store (one current value per (origin, kind, key), plus conflicting values
at that version kept as evidence), the item rumor queue that membership piggybacks on its
datagrams, and the digest exchange that repairs whatever rumors missed.

Must never: judge an item itself. Signatures, no-rollback rules and witness consistency
live in the caller's :class:`Validator`; this module stores only items the validator
accepted and sends only items it stores. It never does I/O, reads the clock, or
garbage-collects anything signed: a slot's value is only ever *superseded* by a higher
version, and when the store is full new slots are refused rather than old ones evicted.

Rules for an incoming item (``h`` = SHA-256 of its value)::

    no value held for the slot        -> validate(item, None)      -> store | reject
    held version > item version       -> stale: ignored (counted), never re-sent
    held version < item version       -> validate(item, held)      -> replace | reject
    same version, same h (or known h) -> duplicate: ignored
    same version, different h         -> validate(item, None): the newcomer must verify
                                         on its own; if it does, keep it as evidence,
                                         report Conflict(held, item), rumor both values

Conflicts are thus seen by every node that ends up with both values, which anti-entropy
guarantees, because digests list every held value with its hash, not just versions. The
caller turns a Conflict into signed equivocation evidence (an ``EQUIVOCATION_EVIDENCE``
item), which then spreads like any other item; evidence values of a version that gets
superseded are not kept here.

Anti-entropy: every ``anti_entropy_period(n)`` we send one random live member a digest
page (every held value in a key range, ``limits.MAX_DIGEST_ENTRIES`` at most; a cursor
walks the key space page by page). The peer pushes what we lack in that range and
requests what it lacks; we answer the request with a push. All three go over the
reliable path.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Protocol

from federation.config import GossipConfig
from federation.errors import MalformedInput
from federation.limits import (
    MAX_CONFLICT_KEYS,
    MAX_CONFLICT_VALUES_PER_KEY,
    MAX_DIGEST_ENTRIES,
    MAX_ITEM_KEY_BYTES,
    MAX_ITEM_RUMOR_QUEUE,
    MAX_ITEM_VALUE_BYTES,
    MAX_ITEMS,
    MAX_ITEMS_PER_ORIGIN,
    MAX_NODE_ID_BYTES,
    MAX_PUSH_ITEMS,
    MAX_REQUEST_ENTRIES,
    MAX_RUMOR_ITEM_BYTES,
    MAX_STREAM_MESSAGE_BYTES,
    MAX_UINT,
)
from federation.membership import BroadcastQueue
from federation.messages import (
    DigestEntry,
    Effect,
    Event,
    Item,
    ItemKind,
    ItemRef,
    Message,
    Send,
    StateDigest,
    StatePush,
    StateRequest,
    part_size,
)

__all__ = [
    "ACCEPT",
    "Accept",
    "Conflict",
    "ItemAccepted",
    "ItemEvent",
    "ItemRejected",
    "PeerSource",
    "Reject",
    "StateSync",
    "Validator",
    "Verdict",
]

_Key = tuple[str, int, str]  # (origin, kind, key): sorts like ItemRef, cheaper to compare

# Room left in a reliable push for framing and the other fields.
_PUSH_BUDGET: Final = MAX_STREAM_MESSAGE_BYTES - 1024


# --- validator seam ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accept:
    """Verdict: store the item (and pass it on)."""


#: The one Accept instance validators can return.
ACCEPT: Final = Accept()


@dataclass(frozen=True, slots=True)
class Reject:
    """Verdict: do not store or pass on the item; ``reason`` is logged and reported."""

    reason: str


Verdict = Accept | Reject


class Validator(Protocol):
    """Decides whether an item may be stored. Supplied by the caller (signature checks,
    no-rollback, witness consistency live there, not here)."""

    def validate(self, item: Item, current: Item | None) -> Verdict:
        """Judge ``item`` given the value held for its slot (None if none is held, or when
        asked about a conflicting value at the held version: then judge it on its own)."""
        ...


class PeerSource(Protocol):
    """Where anti-entropy finds partners and the cluster size (``Membership`` is one)."""

    def random_peer_address(self) -> str | None:
        ...

    def num_nodes(self) -> int:
        ...

    def address_of(self, node_id: str) -> str | None:
        """The address ``node_id`` signed (a member), or None: replies go only there."""
        ...


# --- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ItemEvent(Event):
    """Base of state-sync events. ``source`` is the sender's address (None for local)."""

    item: Item
    source: str | None


@dataclass(frozen=True, slots=True)
class ItemAccepted(ItemEvent):
    """The validator accepted ``item``; it is stored and will be passed on. ``previous`` is
    the value it superseded, if any."""

    previous: Item | None = None


@dataclass(frozen=True, slots=True)
class ItemRejected(ItemEvent):
    """``item`` was refused (validator verdict or a store limit) and not stored."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class Conflict(ItemEvent):
    """Two valid values at one version of one slot: ``held`` (what we had) and ``item``
    (the newcomer). For checkpoints this is equivocation evidence."""

    held: Item | None = None


# --- the store -------------------------------------------------------------------------------


def _key(ref: ItemRef | Item | DigestEntry) -> _Key:
    return (ref.origin, int(ref.kind), ref.key)


def _ref(k: _Key) -> ItemRef:
    return ItemRef(k[0], ItemKind(k[1]), k[2])


def _check_item(item: Item) -> None:
    if not isinstance(item, Item):
        raise MalformedInput(f"expected an Item, got {type(item).__name__}")
    problems = []
    if not item.origin or len(item.origin.encode()) > MAX_NODE_ID_BYTES:
        problems.append(f"origin must be 1..{MAX_NODE_ID_BYTES} bytes")
    if len(item.key.encode()) > MAX_ITEM_KEY_BYTES:
        problems.append(f"key must be at most {MAX_ITEM_KEY_BYTES} bytes")
    if not 0 <= item.version <= MAX_UINT:
        problems.append("version must be in 0 .. 2**64-1")
    if len(item.value) > MAX_ITEM_VALUE_BYTES:
        problems.append(f"value must be at most {MAX_ITEM_VALUE_BYTES} bytes")
    if not isinstance(item.kind, ItemKind):
        problems.append("kind must be an ItemKind")
    if problems:
        raise MalformedInput("item refused: " + "; ".join(problems))


class StateSync:
    """One node's item store and its gossip. See the module docstring for the rules."""

    def __init__(self, self_id: str, address: str, config: GossipConfig,
                 validator: Validator, rng: random.Random,
                 peers: PeerSource | None = None) -> None:
        self.config = config
        self._id = self_id
        self._address = address
        self._validator = validator
        self._rng = rng
        self._peers = peers
        self._items: dict[_Key, tuple[Item, bytes]] = {}
        self._sorted: list[_Key] = []  # every slot, sorted: the digest key space
        self._extra: dict[_Key, dict[bytes, Item]] = {}  # conflicting values at held version
        self._per_origin: dict[str, int] = {}
        self._queue = BroadcastQueue(MAX_ITEM_RUMOR_QUEUE)
        self._cursor: _Key | None = None
        self._next_exchange = -math.inf if config.anti_entropy_interval > 0 else math.inf
        #: Counters for metrics; keys are stable names.
        self.stats: dict[str, int] = dict.fromkeys(
            ("accepted", "rejected", "stale", "duplicates", "conflicts", "refused_full",
             "exchanges", "unknown_source"), 0)

    # --- read side -----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._items)

    def get(self, origin: str, kind: ItemKind, key: str) -> Item | None:
        """The current value of a slot, or None."""
        held = self._items.get((origin, int(kind), key))
        return held[0] if held else None

    def values(self, origin: str, kind: ItemKind, key: str) -> list[Item]:
        """The current value followed by conflicting values at the same version."""
        k = (origin, int(kind), key)
        held = self._items.get(k)
        if held is None:
            return []
        return [held[0], *self._extra.get(k, {}).values()]

    def items(self) -> Iterator[Item]:
        """Every current value, in slot order."""
        for k in self._sorted:
            yield self._items[k][0]

    def conflicting(self) -> list[list[Item]]:
        """Slots holding conflicting values: [held, other, ...] per slot."""
        return [[self._items[k][0], *extra.values()] for k, extra in self._extra.items()]

    def set_peers(self, peers: PeerSource | None) -> None:
        """Attach the anti-entropy partner source (usually the node's ``Membership``)."""
        self._peers = peers

    # --- driving ---------------------------------------------------------------------------

    def put(self, item: Item, now: float) -> list[Effect]:
        """Introduce an item locally (e.g. ``outpost apply``). It goes through the validator
        like any received item. Raises MalformedInput if it breaks a wire limit."""
        _check_item(item)
        return self._ingest(item, None)

    def receive(self, sender_addr: str, msg: Message, now: float) -> list[Effect]:
        """Handle a state-sync message: an item rumor, a digest, a request or a push."""
        if type(msg) is Item:
            return self._ingest(msg, sender_addr)
        if type(msg) is StatePush:
            effects: list[Effect] = []
            for item in msg.items:
                effects += self._ingest(item, sender_addr)
            return effects
        if type(msg) is StateDigest:
            return self._on_digest(msg)
        if type(msg) is StateRequest:
            return self._on_request(msg)
        return []

    def next_deadline(self) -> float:
        """Latest time at which :meth:`tick` must be called."""
        return self._next_exchange if self._peers is not None else math.inf

    def tick(self, now: float) -> list[Effect]:
        """Start an anti-entropy exchange with a random live peer when one is due."""
        if self._peers is None or now < self._next_exchange:
            return []
        period = self.config.anti_entropy_period(self._peers.num_nodes())
        if self._next_exchange == -math.inf:
            # First tick: random phase, so nodes started together spread their exchanges.
            self._next_exchange = now + self._rng.random() * period
            return []
        self._next_exchange = now + period
        peer = self._peers.random_peer_address()
        if peer is None:
            return []
        return [self.exchange_with(peer)]

    def exchange_with(self, address: str) -> Send:
        """A digest exchange with ``address`` now (e.g. right after joining or healing)."""
        self.stats["exchanges"] += 1
        return Send(address, self._digest_page(), reliable=True)

    # --- gossip delegate (called by Membership) ---------------------------------------------

    def broadcasts(self, budget: int, num_nodes: int, max_parts: int) -> tuple[list[Message], int]:
        return self._queue.take(budget, self.config.retransmit_limit(num_nodes), max_parts)

    def pending_broadcasts(self) -> int:
        return len(self._queue)

    # --- ingestion --------------------------------------------------------------------------

    def _ingest(self, item: Item, source: str | None) -> list[Effect]:
        k = _key(item)
        held = self._items.get(k)
        digest = hashlib.sha256(item.value).digest()
        current: Item | None = None
        if held is not None:
            current, held_hash = held
            if item.version < current.version:
                self.stats["stale"] += 1
                return []
            if item.version == current.version:
                extra = self._extra.get(k)
                if digest == held_hash or (extra is not None and digest in extra):
                    self.stats["duplicates"] += 1
                    return []
                return self._conflict(k, current, held_hash, item, digest, source)
        verdict = self._validator.validate(item, current)
        if type(verdict) is not Accept:
            self.stats["rejected"] += 1
            reason = verdict.reason if isinstance(verdict, Reject) else repr(verdict)
            return [ItemRejected(item, source, reason)]
        if held is None:
            refusal = self._room_for(item.origin)
            if refusal:
                self.stats["refused_full"] += 1
                return [ItemRejected(item, source, refusal)]
            bisect.insort(self._sorted, k)
            self._per_origin[item.origin] = self._per_origin.get(item.origin, 0) + 1
        else:
            self._extra.pop(k, None)
        self._items[k] = (item, digest)
        self.stats["accepted"] += 1
        self._rumor(k, item)
        return [ItemAccepted(item, source, current)]

    def _conflict(self, k: _Key, current: Item, held_hash: bytes, item: Item, digest: bytes,
                  source: str | None) -> list[Effect]:
        # Same version, different value: only a value that verifies on its own counts as
        # evidence; anything else is a forgery and is neither kept nor passed on.
        verdict = self._validator.validate(item, None)
        if type(verdict) is not Accept:
            self.stats["rejected"] += 1
            reason = verdict.reason if isinstance(verdict, Reject) else repr(verdict)
            return [ItemRejected(item, source, f"conflicting value refused: {reason}")]
        extra = self._extra.get(k)
        if extra is None:
            if len(self._extra) >= MAX_CONFLICT_KEYS:
                self.stats["refused_full"] += 1
                return [ItemRejected(item, source, "too many conflicting slots held "
                                     f"(limits.MAX_CONFLICT_KEYS={MAX_CONFLICT_KEYS})")]
            extra = self._extra[k] = {}
        if len(extra) >= MAX_CONFLICT_VALUES_PER_KEY:
            self.stats["refused_full"] += 1
            return []  # the conflict is already proven and reported
        extra[digest] = item
        self.stats["conflicts"] += 1
        # Spread both values, so every node holding either one sees the conflict too
        # (replacing the plain rumor of the held value, which would duplicate one).
        self._queue.discard(k)
        self._rumor((*k, held_hash), current)
        self._rumor((*k, digest), item)
        return [Conflict(item, source, current)]

    def _room_for(self, origin: str) -> str:
        if len(self._items) >= MAX_ITEMS:
            return f"item store is full (limits.MAX_ITEMS={MAX_ITEMS}); nothing is evicted"
        if self._per_origin.get(origin, 0) >= MAX_ITEMS_PER_ORIGIN:
            return (f"origin {origin!r} already holds limits.MAX_ITEMS_PER_ORIGIN="
                    f"{MAX_ITEMS_PER_ORIGIN} items")
        return ""

    def _rumor(self, key: tuple[object, ...], item: Item) -> None:
        # Large items would crowd out membership news; they travel by anti-entropy only.
        if part_size(item) <= MAX_RUMOR_ITEM_BYTES:
            self._queue.push(key, item)

    # --- anti-entropy --------------------------------------------------------------------

    def _entries(self, k: _Key) -> list[DigestEntry]:
        item, digest = self._items[k]
        out = [DigestEntry(item.origin, item.kind, item.key, item.version, digest)]
        for h in self._extra.get(k, {}):
            out.append(DigestEntry(item.origin, item.kind, item.key, item.version, h))
        return out

    def _digest_page(self) -> StateDigest:
        lower = self._cursor
        start = bisect.bisect_right(self._sorted, lower) if lower is not None else 0
        entries: list[DigestEntry] = []
        limit = min(self.config.digest_page_entries, MAX_DIGEST_ENTRIES)
        i = start
        while i < len(self._sorted):
            more = self._entries(self._sorted[i])
            if entries and len(entries) + len(more) > limit:
                break
            entries += more[: MAX_DIGEST_ENTRIES - len(entries)]
            i += 1
        at_end = i >= len(self._sorted)
        upper = None if at_end else self._sorted[i - 1]
        self._cursor = upper
        return StateDigest(self._id, self._address,
                           _ref(lower) if lower is not None else None,
                           _ref(upper) if upper is not None else None, tuple(entries))

    def _on_digest(self, msg: StateDigest) -> list[Effect]:
        lower = _key(msg.lower) if msg.lower is not None else None
        upper = _key(msg.upper) if msg.upper is not None else None
        # What they hold in the range: slot -> (version, {hash: entry}).
        theirs: dict[_Key, tuple[int, dict[bytes, DigestEntry]]] = {}
        for e in msg.entries:
            k = _key(e)
            if (lower is not None and k <= lower) or (upper is not None and k > upper):
                continue  # outside the page they claim to describe: ignore, do not trust
            seen = theirs.get(k)
            if seen is None or e.version > seen[0]:
                theirs[k] = (e.version, {e.value_hash: e})
            elif e.version == seen[0]:
                seen[1][e.value_hash] = e
        # What we hold in the range and they lack (or hold older / without our value).
        start = bisect.bisect_right(self._sorted, lower) if lower is not None else 0
        stop = (bisect.bisect_right(self._sorted, upper) if upper is not None
                else len(self._sorted))
        push: list[Item] = []
        for k in self._sorted[start:stop]:
            item, digest = self._items[k]
            seen = theirs.get(k)
            if seen is not None and seen[0] > item.version:
                continue
            known = seen[1] if seen is not None and seen[0] == item.version else {}
            if digest not in known:
                push.append(item)
            for h, other in self._extra.get(k, {}).items():
                if h not in known:
                    push.append(other)
        # What they hold that we lack.
        wants: list[DigestEntry] = []
        for k, (version, hashes) in theirs.items():
            held = self._items.get(k)
            if held is not None and held[0].version > version:
                continue
            mine: set[bytes] = set()
            if held is not None and held[0].version == version:
                mine = {held[1], *self._extra.get(k, {})}
            wants += [e for h, e in hashes.items() if h not in mine]
        to = self._reply_address(msg.source_id)
        if to is None:
            return []
        effects: list[Effect] = [Send(to, p, reliable=True) for p in self._pushes(push)]
        if wants:
            req = StateRequest(self._id, self._address, tuple(wants[:MAX_REQUEST_ENTRIES]))
            effects.append(Send(to, req, reliable=True))
        return effects

    def _reply_address(self, node_id: str) -> str | None:
        """Where answers to ``node_id`` go: the address it signed, never the one its
        message names (a forged ``source_addr`` must not aim our pushes elsewhere)."""
        if self._peers is None:
            return None
        to = self._peers.address_of(node_id)
        if to is None:
            self.stats["unknown_source"] += 1
        return to

    def _on_request(self, msg: StateRequest) -> list[Effect]:
        found: list[Item] = []
        for want in msg.wants:
            k = _key(want)
            held = self._items.get(k)
            if held is None or held[0].version != want.version:
                continue
            if held[1] == want.value_hash:
                found.append(held[0])
            else:
                other = self._extra.get(k, {}).get(want.value_hash)
                if other is not None:
                    found.append(other)
        to = self._reply_address(msg.source_id)
        if to is None:
            return []
        return [Send(to, p, reliable=True) for p in self._pushes(found)]

    def _pushes(self, items: list[Item]) -> list[StatePush]:
        """Split ``items`` into pushes within the reliable path's count and byte limits.
        One exchange sends at most one budget's worth; the next exchange sends the rest."""
        out: list[StatePush] = []
        batch: list[Item] = []
        size = 0
        total = 0
        for item in items:
            n = len(item.value) + len(item.key) + len(item.origin) + 32
            if total + n > _PUSH_BUDGET:
                break
            if batch and (len(batch) >= MAX_PUSH_ITEMS or size + n > _PUSH_BUDGET // 4):
                out.append(StatePush(self._id, tuple(batch)))
                batch, size = [], 0
            batch.append(item)
            size += n
            total += n
        if batch:
            out.append(StatePush(self._id, tuple(batch)))
        return out
