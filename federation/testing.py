"""Shipped test doubles: a virtual clock, an in-memory network, and a cluster simulator.

Owns: :class:`VirtualClock`; :class:`MemoryNetwork` (per-link latency, seeded random loss,
partitions, crashed hosts) with :class:`MemoryTransport` endpoints implementing
:class:`~federation.messages.Transport` for byte-level tests of ``node/``; and
:class:`Simulation`, which drives N ``Membership`` + ``StateSync`` pairs through a
discrete-event loop so that tests and ``bench/gossip.py`` can ask "when did every node hold
item X", "when did every node mark the crashed node dead", in virtual seconds.

Must never: read the real clock, sleep, or touch sockets. Everything random comes from
seeded ``random.Random`` instances, and nothing iterates a set or dict whose order depends
on string hashing in a way that changes outcomes, so a run is reproducible from its seed.

Simulation model: message delivery time = send time + link latency (+ uniform jitter);
datagrams are lost with the link's probability; the reliable path (HTTPS in production)
is never lost but is cut by partitions and crashes like datagrams. Nodes are woken exactly
at their cores' ``next_deadline()``, never polled, which is what makes 1,000 nodes cheap.
With ``wire=True`` every message goes through ``encode``/``decode`` (slower, for codec
coverage); with ``count_bytes=True`` encoded sizes are counted without decoding.

Signed mode (``signed=True``): every node holds a real Ed25519 key (derived from the seed)
and signs its membership statements; every node verifies through its own
``StatementVerifier`` (so per-node verification counts are real), backed by one memo of
Ed25519 results shared by all nodes (a statement's validity does not depend on who checks
it; this only saves the simulator's CPU). Keys known = nodes enrolled in the simulation:
an invented node id has no certificate. Delivery models the datagram envelope: a message
whose parts name a sender other than the sending node is dropped (as ``node/`` does).
:class:`Adversary` turns nodes hostile: they keep running honest cores (they are enrolled
members) and, on top, forge at a fixed rate with nothing but their own key.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from federation.config import ClusterConfig
from federation.limits import MAX_DATAGRAM_PAYLOAD, MAX_STREAM_MESSAGE_BYTES, MAX_UINT
from federation.membership import (
    Member,
    MemberDead,
    Membership,
    MemberStatus,
    MemberSuspected,
)
from federation.messages import (
    Ack,
    Alive,
    Compound,
    Dead,
    Event,
    Item,
    Message,
    PingReq,
    Send,
    StateDigest,
    Suspect,
    decode,
    encode,
    encoded_size,
    sources_match,
)
from federation.statements import Ed25519Signer, StatementVerifier, sign
from federation.statesync import (
    ACCEPT,
    Conflict,
    ItemAccepted,
    ItemRejected,
    Reject,
    StateSync,
    Validator,
    Verdict,
)

__all__ = [
    "AcceptNewer",
    "Adversary",
    "Delivery",
    "MemoryNetwork",
    "MemoryTransport",
    "SimNode",
    "Simulation",
    "VirtualClock",
]

_INF = math.inf
_WAKE = 0
_DELIVER = 1


class VirtualClock:
    """Time that moves only when told to (trio.testing.MockClock in spirit)."""

    __slots__ = ("now",)

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"cannot move time backwards by {seconds} s")
        self.now += seconds
        return self.now

    def advance_to(self, when: float) -> float:
        if when < self.now:
            raise ValueError(f"cannot move time back from {self.now} to {when}")
        self.now = when
        return self.now


@dataclass(frozen=True, slots=True)
class Delivery:
    """A payload arriving at a :class:`MemoryTransport`."""

    at: float
    sender: str
    payload: bytes
    reliable: bool


class MemoryNetwork:
    """Links between addresses: latency, loss, partitions and crashed hosts.

    ``route`` decides the fate of one message; :class:`Simulation` calls it directly and
    :class:`MemoryTransport` endpoints use it to carry bytes.
    """

    def __init__(self, rng: random.Random, *, loss: float = 0.0, latency: float = 0.001,
                 jitter: float = 0.0) -> None:
        if not 0.0 <= loss <= 1.0:
            raise ValueError(f"loss must be in [0, 1], got {loss}")
        if latency < 0 or jitter < 0:
            raise ValueError("latency and jitter must be >= 0 seconds")
        self.rng = rng
        self.loss = loss
        self.latency = latency
        self.jitter = jitter
        self.down: set[str] = set()
        self._links: dict[tuple[str, str], tuple[float | None, float | None]] = {}
        self._groups: dict[str, int] | None = None
        self._inboxes: dict[str, list[tuple[float, int, Delivery]]] = {}
        self._seq = 0
        self.stats: dict[str, int] = dict.fromkeys(
            ("routed", "lost", "partitioned", "down"), 0)

    def set_link(self, a: str, b: str, *, latency: float | None = None,
                 loss: float | None = None, both_ways: bool = True) -> None:
        """Override latency and/or loss on the link a -> b (and b -> a)."""
        self._links[(a, b)] = (latency, loss)
        if both_ways:
            self._links[(b, a)] = (latency, loss)

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Split the network: only addresses in the same group can talk. Addresses not
        listed form one more group together."""
        table: dict[str, int] = {}
        for i, group in enumerate(groups):
            for addr in group:
                table[addr] = i
        self._groups = table

    def heal(self) -> None:
        """Remove the partition (link overrides and crashed hosts stay)."""
        self._groups = None

    def set_down(self, address: str, down: bool = True) -> None:
        """Crash (``down=True``) or bring back the host at ``address``: while down, it
        neither sends nor receives anything, reliable path included."""
        if down:
            self.down.add(address)
        else:
            self.down.discard(address)

    def can_reach(self, src: str, dst: str) -> bool:
        if src in self.down or dst in self.down:
            return False
        groups = self._groups
        return groups is None or groups.get(src, -1) == groups.get(dst, -1)

    def route(self, src: str, dst: str, reliable: bool) -> float | None:
        """Delay for one message src -> dst, or None if it is lost."""
        if src in self.down or dst in self.down:
            self.stats["down"] += 1
            return None
        groups = self._groups
        if groups is not None and groups.get(src, -1) != groups.get(dst, -1):
            self.stats["partitioned"] += 1
            return None
        latency = self.latency
        loss = self.loss
        if self._links:
            override = self._links.get((src, dst))
            if override is not None:
                latency = override[0] if override[0] is not None else latency
                loss = override[1] if override[1] is not None else loss
        if not reliable and loss > 0.0 and self.rng.random() < loss:
            self.stats["lost"] += 1
            return None
        self.stats["routed"] += 1
        if self.jitter:
            latency += self.rng.random() * self.jitter
        return latency

    # --- byte-level endpoints ----------------------------------------------------------

    def endpoint(self, address: str, clock: VirtualClock) -> MemoryTransport:
        """A :class:`~federation.messages.Transport` bound to ``address``."""
        self._inboxes.setdefault(address, [])
        return MemoryTransport(self, address, clock)

    def _transmit(self, src: str, dst: str, payload: bytes, reliable: bool,
                  now: float) -> None:
        inbox = self._inboxes.get(dst)
        delay = self.route(src, dst, reliable)
        if inbox is None or delay is None:
            return
        self._seq += 1
        heapq.heappush(inbox, (now + delay, self._seq,
                               Delivery(now + delay, src, payload, reliable)))

    def _poll(self, address: str, now: float) -> list[Delivery]:
        inbox = self._inboxes.get(address, [])
        out = []
        while inbox and inbox[0][0] <= now:
            out.append(heapq.heappop(inbox)[2])
        return out


class MemoryTransport:
    """In-memory twin of the daemon's UDP + HTTPS transport (memberlist's MockTransport)."""

    def __init__(self, network: MemoryNetwork, address: str, clock: VirtualClock) -> None:
        self.network = network
        self.address = address
        self.clock = clock

    def send_datagram(self, to: str, payload: bytes) -> None:
        if len(payload) > MAX_DATAGRAM_PAYLOAD:
            raise ValueError(f"datagram of {len(payload)} bytes exceeds "
                             f"MAX_DATAGRAM_PAYLOAD={MAX_DATAGRAM_PAYLOAD}")
        self.network._transmit(self.address, to, bytes(payload), False, self.clock.now)

    def send_stream(self, to: str, payload: bytes) -> None:
        if len(payload) > MAX_STREAM_MESSAGE_BYTES:
            raise ValueError(f"stream message of {len(payload)} bytes exceeds "
                             f"MAX_STREAM_MESSAGE_BYTES={MAX_STREAM_MESSAGE_BYTES}")
        self.network._transmit(self.address, to, bytes(payload), True, self.clock.now)

    def poll(self) -> list[Delivery]:
        """Payloads that have arrived by the clock's current time, in arrival order."""
        return self.network._poll(self.address, self.clock.now)


class AcceptNewer:
    """Default simulation validator: accept strictly newer versions (no rollback), and
    anything for an empty slot; refuse values starting with ``b"forged"``."""

    def validate(self, item: Item, current: Item | None) -> Verdict:
        if item.value.startswith(b"forged"):
            return Reject("signature does not verify")
        if current is not None and item.version <= current.version:
            return Reject(f"rollback: version {item.version} <= held {current.version}")
        return ACCEPT


@dataclass(slots=True)
class SimNode:
    """One simulated daemon: its two cores and whether its host is up."""

    index: int
    node_id: str
    address: str
    membership: Membership
    statesync: StateSync
    up: bool = True
    generation: int = 0
    wake: float = _INF
    last_wake: float = -_INF
    spins: int = 0
    bytes_sent: int = 0
    events: list[tuple[float, Event]] = field(default_factory=list)
    verifier: StatementVerifier | None = None
    adversary: Adversary | None = None
    next_attack: float = _INF


class Simulation:
    """N nodes, one event loop, virtual time. Deterministic for a given ``seed``.

    ``bootstrap``: ``"full"`` starts every node with the complete member table (a
    converged cluster, cheap for large N); ``"join"`` starts each node knowing nobody
    and joining through node 0 (and two more seeds).
    """

    def __init__(self, n: int, *, config: ClusterConfig | None = None, seed: int = 0,
                 loss: float = 0.0, latency: float = 0.002, jitter: float = 0.002,
                 validator: Validator | Callable[[int], Validator] | None = None,
                 bootstrap: str = "full", wire: bool = False, count_bytes: bool = False,
                 record_events: bool = False, signed: bool = False) -> None:
        if n < 1:
            raise ValueError("a simulation needs at least one node")
        if bootstrap not in ("full", "join"):
            raise ValueError("bootstrap must be 'full' or 'join'")
        self.config = config or ClusterConfig.lan()
        self.seed = seed
        self.clock = VirtualClock()
        self.network = MemoryNetwork(random.Random(f"net-{seed}"), loss=loss,
                                     latency=latency, jitter=jitter)
        self.wire = wire
        self.count_bytes = count_bytes or wire
        self.record_events = record_events
        self._validator = validator
        self._heap: list[tuple[Any, ...]] = []
        self._seq = 0
        self.nodes: list[SimNode] = []
        self._by_addr: dict[str, int] = {}
        self._by_id: dict[str, int] = {}
        #: (origin, kind, key, version) -> {node index: first time it held that version}
        self.item_times: dict[tuple[str, int, str, int], dict[int, float]] = {}
        #: node id -> {observer index: time it marked the node dead}
        self.dead_times: dict[str, dict[int, float]] = {}
        #: node index -> Conflict events seen there
        self.conflicts: dict[int, list[Conflict]] = {}
        self.rejections: list[tuple[float, int, ItemRejected]] = []
        self.false_dead: list[tuple[float, int, str]] = []
        self.false_suspicions = 0
        self.signed = signed
        self._keys: dict[str, Ed25519PrivateKey] = {}
        self._pub: dict[str, Ed25519PublicKey] = {}
        self._memo: dict[tuple[str, bytes, bytes], bool] = {}
        #: Messages dropped because they named a sender other than the one sending them.
        self.spoofed_dropped = 0
        #: Sends by honest nodes to addresses no node has (reflection), as (node, to).
        self.stray_sends: list[tuple[int, str]] = []
        for i in range(n):
            node_id = f"node-{i:04d}"
            address = f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}:8471"
            self._by_addr[address] = i
            self._by_id[node_id] = i
            self.nodes.append(self._make_node(i, node_id, address, 0))
        if bootstrap == "full":
            table: list[Member | Alive] = [
                nd.membership.statement(nd.node_id) or Member(
                    nd.node_id, nd.address, 0, MemberStatus.ALIVE, b"")
                for nd in self.nodes]
            for nd in self.nodes:
                nd.membership.restore(table, 0.0)
        for nd in self.nodes:
            if bootstrap == "join" and nd.index > 0:
                self._apply(nd, nd.membership.join(self._seeds_for(nd.index), 0.0), 0.0)
            self._schedule(nd, 0.0)

    # --- construction ---------------------------------------------------------------------

    def key_of(self, node_id: str) -> Ed25519PrivateKey:
        """The (enrolled) node's key, created deterministically on first use."""
        key = self._keys.get(node_id)
        if key is None:
            seed = hashlib.sha256(f"sim-key-{self.seed}-{node_id}".encode()).digest()
            key = self._keys[node_id] = Ed25519PrivateKey.from_private_bytes(seed)
            self._pub[node_id] = key.public_key()
        return key

    def _raw_verify(self, signer: str, data: bytes, sig: bytes) -> bool | None:
        pub = self._pub.get(signer)
        if pub is None:
            return None  # not enrolled: no certificate exists for it
        k = (signer, data, sig)
        result = self._memo.get(k)
        if result is None:
            try:
                pub.verify(sig, data)
                result = True
            except InvalidSignature:
                result = False
            if len(self._memo) > 1_000_000:
                self._memo.clear()
            self._memo[k] = result
        return result

    def verifications(self) -> int:
        """Ed25519 verifications the nodes did (each counts its own, as real nodes do)."""
        return sum(nd.verifier.stats["verifications"] for nd in self.nodes
                   if nd.verifier is not None)

    def _make_node(self, i: int, node_id: str, address: str, generation: int) -> SimNode:
        rng = random.Random(f"{self.seed}-{i}-{generation}")
        v = self._validator
        validator: Validator
        if v is None:
            validator = AcceptNewer()
        elif callable(v) and not hasattr(v, "validate"):
            validator = v(i)
        else:
            validator = v
        verifier = None
        signer = None
        if self.signed:
            signer = Ed25519Signer(self.key_of(node_id))
            verifier = StatementVerifier(raw=self._raw_verify)
        membership = Membership(node_id, address, self.config.membership, rng,
                                signer=signer, verifier=verifier)
        statesync = StateSync(node_id, address, self.config.gossip, validator, rng, membership)
        membership.set_delegate(statesync)
        return SimNode(i, node_id, address, membership, statesync, generation=generation,
                       verifier=verifier)

    def add_node(self, *, join: bool = True) -> SimNode:
        """A newly enrolled node (its certificate exists) that joins through the seeds."""
        i = len(self.nodes)
        node_id = f"node-{i:04d}"
        address = f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}:8471"
        self._by_addr[address] = i
        self._by_id[node_id] = i
        node = self._make_node(i, node_id, address, 0)
        self.nodes.append(node)
        now = self.clock.now
        if join:
            self._apply(node, node.membership.join(self._seeds_for(i), now), now)
        self._schedule(node, now)
        return node

    def make_hostile(self, i: int, adversary: Adversary) -> None:
        """Node ``i`` turns hostile: it keeps its honest cores and forges on top."""
        node = self.nodes[i]
        node.adversary = adversary
        node.next_attack = self.clock.now
        self._schedule(node, self.clock.now)

    def _seeds_for(self, i: int) -> list[str]:
        return [nd.address for nd in self.nodes[:3] if nd.index != i]

    # --- the event loop ---------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.clock.now

    def _schedule(self, node: SimNode, now: float) -> None:
        due = min(node.membership.next_deadline(), node.statesync.next_deadline(),
                  node.next_attack)
        if due < now:
            due = now
        if due < node.wake:
            node.wake = due
            self._seq += 1
            heapq.heappush(self._heap, (due, self._seq, _WAKE, node.index, node.generation))

    def _apply(self, node: SimNode, effects: list[Any], now: float) -> None:
        for e in effects:
            if type(e) is Send:
                self._send(node, e, now)
            else:
                self._observe(node, e, now)

    def _send(self, node: SimNode, e: Send, now: float) -> None:
        dst = self._by_addr.get(e.to)
        msg: Message = e.msg
        if self.count_bytes:
            size = encoded_size(msg)
            limit = MAX_STREAM_MESSAGE_BYTES if e.reliable else MAX_DATAGRAM_PAYLOAD
            if size > limit:
                raise AssertionError(f"{node.node_id} built a {size}-byte message over the "
                                     f"{limit}-byte limit: {type(msg).__name__}")
            node.bytes_sent += size
        if dst is None:
            if node.adversary is None:
                self.stray_sends.append((node.index, e.to))
            return
        if self.signed and not sources_match(msg, node.node_id):
            # The receiver's envelope (or TLS) check: the sender is who signed the datagram.
            self.spoofed_dropped += 1
            return
        delay = self.network.route(node.address, e.to, e.reliable)
        if delay is None:
            return
        if self.wire:
            limit = MAX_STREAM_MESSAGE_BYTES if e.reliable else MAX_DATAGRAM_PAYLOAD
            msg = decode(encode(msg), max_bytes=limit)
        target = self.nodes[dst]
        self._seq += 1
        heapq.heappush(self._heap, (now + delay, self._seq, _DELIVER, dst, target.generation,
                                    node.address, msg, node.node_id))

    def _observe(self, node: SimNode, e: Event, now: float) -> None:
        if self.record_events:
            node.events.append((now, e))
        t = type(e)
        if t is ItemAccepted:
            it = e.item  # type: ignore[attr-defined]
            key = (it.origin, int(it.kind), it.key, it.version)
            self.item_times.setdefault(key, {}).setdefault(node.index, now)
        elif t is MemberDead:
            target = e.member.node_id  # type: ignore[attr-defined]
            self.dead_times.setdefault(target, {}).setdefault(node.index, now)
            idx = self._by_id.get(target)
            if idx is not None and self.nodes[idx].up:
                self.false_dead.append((now, node.index, target))
        elif t is MemberSuspected:
            idx = self._by_id.get(e.member.node_id)  # type: ignore[attr-defined]
            if idx is not None and self.nodes[idx].up:
                self.false_suspicions += 1
        elif t is Conflict:
            self.conflicts.setdefault(node.index, []).append(e)  # type: ignore[arg-type]
        elif t is ItemRejected:
            self.rejections.append((now, node.index, e))  # type: ignore[arg-type]

    def run_until(self, t_end: float) -> None:
        """Process every event up to and including virtual time ``t_end``."""
        heap = self._heap
        nodes = self.nodes
        pop = heapq.heappop
        while heap and heap[0][0] <= t_end:
            entry = pop(heap)
            now = entry[0]
            node = nodes[entry[3]]
            if not node.up or entry[4] != node.generation:
                continue
            if entry[2] == _WAKE:
                if now != node.wake:
                    continue  # superseded by an earlier wake-up
                node.wake = _INF
                if now == node.last_wake:
                    node.spins += 1
                    if node.spins > 1000:
                        raise RuntimeError(
                            f"{node.node_id} keeps asking to be woken at t={now}: a timer in "
                            "its cores does not advance (next_deadline() stays in the past)")
                else:
                    node.last_wake, node.spins = now, 0
                effects = node.membership.tick(now)
                effects += node.statesync.tick(now)
                if node.adversary is not None and now >= node.next_attack:
                    effects += node.adversary.act(self, node, now)
                    node.next_attack = now + node.adversary.interval
            else:
                effects = node.membership.receive(entry[5], entry[6], now, entry[7])
            self.clock.now = now
            if effects:
                self._apply(node, effects, now)
            self._schedule(node, now)
        if t_end > self.clock.now:
            self.clock.now = t_end

    def run_for(self, seconds: float) -> None:
        self.run_until(self.clock.now + seconds)

    def run_until_true(self, predicate: Callable[[], bool], timeout: float,
                       step: float = 0.05) -> float | None:
        """Run until ``predicate()`` holds (checked every ``step`` virtual seconds);
        return the virtual time it first held, or None after ``timeout`` seconds."""
        end = self.clock.now + timeout
        while True:
            if predicate():
                return self.clock.now
            if self.clock.now >= end:
                return None
            self.run_until(min(end, self.clock.now + step))

    # --- faults -------------------------------------------------------------------------------

    def crash(self, i: int) -> None:
        """Stop node ``i`` abruptly: no goodbye, in-flight messages to it are lost."""
        node = self.nodes[i]
        node.up = False
        self.network.set_down(node.address)

    def restart(self, i: int, *, keep_items: bool = True, join: bool = True) -> None:
        """Bring node ``i`` back as a new process (incarnation 0, empty member table),
        joining through the seeds. ``keep_items`` models the SQLite store surviving."""
        old = self.nodes[i]
        node = self._make_node(i, old.node_id, old.address, old.generation + 1)
        node.bytes_sent = old.bytes_sent
        if keep_items:
            for item in old.statesync.items():
                node.statesync.put(item, self.clock.now)
        self.nodes[i] = node
        self.network.set_down(node.address, False)
        node.adversary, node.next_attack = old.adversary, old.next_attack
        now = self.clock.now
        if join:
            self._apply(node, node.membership.join(self._seeds_for(i), now), now)
        self._schedule(node, now)

    def partition(self, groups: Sequence[Iterable[int]]) -> None:
        """Split by node index; nodes not listed form one more group."""
        self.network.partition([[self.nodes[i].address for i in g] for g in groups])

    def heal(self) -> None:
        self.network.heal()

    # --- actions and observations ------------------------------------------------------------

    def publish(self, i: int, item: Item) -> list[Event]:
        """Node ``i`` introduces ``item`` (as ``outpost apply`` would); returns its events."""
        node = self.nodes[i]
        now = self.clock.now
        effects: list[Any] = node.statesync.put(item, now)
        self._apply(node, effects, now)
        self._schedule(node, now)
        return [e for e in effects if not isinstance(e, Send)]

    def inject(self, i: int, sender: str, msg: Message) -> None:
        """Deliver ``msg`` to node ``i`` now as if ``sender`` sent it (a hostile peer)."""
        node = self.nodes[i]
        now = self.clock.now
        self._apply(node, node.membership.receive(sender, msg, now), now)
        self._schedule(node, now)

    def honest(self) -> list[SimNode]:
        return [nd for nd in self.nodes if nd.adversary is None]

    def forged_addresses_adopted(self) -> list[tuple[str, str, str]]:
        """(observer, member, address) wherever an honest node holds a member at an address
        that member does not have, or a member that does not exist."""
        real = {nd.node_id: nd.address for nd in self.nodes}
        out = []
        for nd in self.honest():
            if not nd.up:
                continue
            for m in nd.membership.members():
                if real.get(m.node_id) != m.address:
                    out.append((nd.node_id, m.node_id, m.address))
        return out

    def up_nodes(self) -> list[SimNode]:
        return [nd for nd in self.nodes if nd.up]

    def holders(self, item: Item) -> int:
        """Up nodes whose current value for the item's slot is exactly ``item``."""
        return sum(1 for nd in self.up_nodes()
                   if nd.statesync.get(item.origin, item.kind, item.key) == item)

    def time_to_fraction(self, item: Item, fraction: float, since: float) -> float | None:
        """Virtual seconds from ``since`` until ``fraction`` of up nodes held ``item``."""
        times = self.item_times.get((item.origin, int(item.kind), item.key, item.version), {})
        up = [nd.index for nd in self.nodes if nd.up]
        held = sorted(times[i] for i in up if i in times)
        need = math.ceil(fraction * len(up))
        if need == 0:
            return 0.0
        if len(held) < need:
            return None
        return held[need - 1] - since

    def time_all_marked_dead(self, i: int, since: float) -> float | None:
        """Seconds from ``since`` until every up node had marked node ``i`` dead."""
        target = self.nodes[i].node_id
        seen = self.dead_times.get(target, {})
        times = [seen.get(nd.index) for nd in self.nodes if nd.up and nd.index != i]
        if any(t is None for t in times):
            return None
        return max((t for t in times if t is not None), default=since) - since

    def status_seen(self, observer: int, target: int) -> MemberStatus | None:
        m = self.nodes[observer].membership.member(self.nodes[target].node_id)
        return m.status if m is not None else None

    def converged(self) -> bool:
        """Every up node sees every other up node alive, and every down node as dead,
        left or unknown."""
        up = self.up_nodes()
        down_ids = [nd.node_id for nd in self.nodes if not nd.up]
        for nd in up:
            ms = nd.membership
            for other in up:
                if other is nd:
                    continue
                m = ms.member(other.node_id)
                if m is None or m.status is not MemberStatus.ALIVE:
                    return False
            for node_id in down_ids:
                m = ms.member(node_id)
                if m is not None and m.status <= MemberStatus.SUSPECT:
                    return False
        return True

    def total_bytes(self) -> int:
        return sum(nd.bytes_sent for nd in self.nodes)


class Adversary:
    """A hostile enrolled node's forgeries, at a fixed rate, with only its own key.

    Every ``interval`` it sends each of ``fanout`` random honest nodes one datagram of:
    an alive moving a victim to the attacker's address at incarnation 2**64-1 (signed with
    the attacker's key), the same with a garbage signature, a dead about the victim at
    2**64-1 naming another node as accuser (spoofed sender), a valid suspect and dead
    signed by the attacker at the victim's real incarnation (lies it may tell, within its
    accusation budget), ``invent`` invented members, a replay of a crashed node's last
    alive, a ping-req and a digest naming a reflection address, and a forged relayed ack.
    """

    REFLECT = "203.0.113.7:53"

    def __init__(self, rng: random.Random, *, interval: float = 0.1, fanout: int = 3,
                 invent: int = 4) -> None:
        self.rng = rng
        self.interval = interval
        self.fanout = fanout
        self.invent = invent
        self.invented = 0
        self.sent = 0

    def act(self, sim: Simulation, node: SimNode, now: float) -> list[Send]:
        rng = self.rng
        me = node.node_id
        key = Ed25519Signer(sim.key_of(me)) if sim.signed else None
        honest = [nd for nd in sim.nodes if nd.adversary is None]
        if not honest:
            return []
        view = node.membership
        out: list[Send] = []
        for _ in range(self.fanout):
            target = honest[rng.randrange(len(honest))]
            victim = honest[rng.randrange(len(honest))]
            held = view.member(victim.node_id)
            inc = held.incarnation if held is not None else 0
            accuser = honest[rng.randrange(len(honest))].node_id
            parts: list[Message] = [
                sign(key, Alive(victim.node_id, node.address, MAX_UINT, b"")),
                Alive(victim.node_id, node.address, inc + 1, b"", b"\x07" * 64),
                sign(key, Dead(victim.node_id, MAX_UINT, accuser)),
                sign(key, Suspect(victim.node_id, inc, me)),
                sign(key, Dead(victim.node_id, inc, me)),
                PingReq(rng.getrandbits(32), me, node.address, victim.node_id, self.REFLECT,
                        True),
                Ack(rng.getrandbits(32), victim.node_id, target.node_id, b"\x01" * 64),
            ]
            for _ in range(self.invent):
                self.invented += 1
                parts.append(sign(key, Alive(f"ghost-{me}-{self.invented}",
                                             f"198.51.100.{self.invented % 250}:1", 0, b"")))
            dead = [nd for nd in sim.nodes if not nd.up]
            if dead:
                replay = view.statement(dead[rng.randrange(len(dead))].node_id)
                if replay is not None:
                    parts.append(replay)
            out.append(Send(target.address, Compound(tuple(parts))))
            out.append(Send(target.address, StateDigest(me, self.REFLECT, None, None, ())))
            self.sent += 2
        return out
