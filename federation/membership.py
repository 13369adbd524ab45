"""SWIM membership with the Lifeguard refinements, as a sans-I/O state machine.

Owns: the member table (who exists, at which address, alive/suspect/dead/left, at which
incarnation), failure detection, the retransmit-limited rumor queue, joins via seeds,
graceful leave, and piggybacking of other modules' rumors (the :class:`GossipDelegate`).

Must never: open sockets, sleep, read the clock or the disk, or hold key material other
than through its signer. Time comes in as ``now`` (seconds, any monotonic origin); messages
come in decoded, their datagram envelope already verified by the I/O layer (every
``source_id`` is the authenticated sender); what to send comes out as
:class:`~federation.messages.Send` effects and what happened as events.

Signed membership (nothing is believed because of who relayed it)
-----------------------------------------------------------------
With a ``verifier`` (``federation.statements``), a member's address, incarnation, alive and
left exist only as statements signed by that member; relayers forward them unchanged.
Suspect and dead carry the accuser's signature and the accused's incarnation: one about an
incarnation other than the one the subject signed and we hold is void (stale, or never
signed), so no value can exhaust incarnations: only the subject moves its own, and it jumps
past a higher one only when that one carries its own signature (an earlier life). A
received dead counts as the accuser's suspicion; only our own expired suspicion declares a
member dead here. Lifeguard confirmations count distinct verified accusers, and each
accuser has a small budget of new accusations (``limits.ACCUSATION_*``). Acks count only
from the probed node (direct, authenticated by the envelope, or relayed and signed by it
for us); nacks only from the relays we asked. Probe sequence numbers are random, so acks
cannot be collected in advance.

Admission: a statement whose signer has no known certificate waits in a bounded pen (per
introducer) until :meth:`Membership.key_known`; only then does the member take a table
slot. No reflection: datagrams and exchanges go only to addresses members signed (and to
configured seeds / discovered candidates); a ping-req's target address and a pinger's
UDP source are never destinations. Without a verifier (simulations and benchmarks of the
unsigned protocol) statements are taken as they come, as before.

Theory of operation
-------------------
Driving: the caller hands every received message to :meth:`Membership.receive` and calls
:meth:`Membership.tick` no later than :meth:`Membership.next_deadline` (calling it more
often, e.g. on a fixed 10-50 ms cadence, is harmless). Both return a list of effects:
``Send`` (datagram, or ``reliable=True`` for the HTTPS path) and member events.

Wiring in ``node/`` (one task owns both cores; ``send_effects`` encodes and sends)::

    ms = Membership(node_id, "host:port", cfg.membership, rng, meta=advert)
    ss = StateSync(node_id, "host:port", cfg.gossip, validator, rng, peers=ms)
    ms.set_delegate(ss)                  # item rumors ride on membership datagrams
    # verified UDP datagram:   ms.receive(src, decode(payload), now)
    # verified HTTPS POST body: ms.receive(peer, decode(body, max_bytes=MAX_STREAM_...), now)
    # timer: sleep until min(ms.next_deadline(), ss.next_deadline()), then
    #        ms.tick(now) + ss.tick(now); each result goes to send_effects(effects, transport)

Probing (SWIM): every ``probe_interval`` we ping the next member of a shuffled round-robin
list (reshuffled after each full pass, new members inserted at random ahead of the
cursor), so every member is probed once per pass and a failure is noticed within about
one interval by someone. No ack within ``probe_timeout`` -> ``indirect_checks`` random
members get a ping-req and probe on our behalf (a path problem between two nodes must not
read as a failure). No ack by the end of the interval -> we *suspect* the target.

Suspicion and refutation: a suspicion carries the target's incarnation. Any node that
hears it is suspected bumps its incarnation above it and gossips ``alive``: higher
incarnations win, so the refutation overrides the rumor everywhere. When we probe a
suspect we put the suspicion in the ping itself (the buddy system), so the target hears
it at once instead of waiting for gossip. Unrefuted, a suspicion becomes ``dead`` after the
suspicion timeout; Lifeguard starts that timer at ``suspicion_max_timeout`` and shrinks it
towards ``suspicion_timeout`` as independent members confirm the suspicion (see
``config``), so one unhealthy accuser cannot kill a healthy node quickly.

Local health (Lifeguard "awareness"): missed acks and missed nacks from ping-req relays
(a relay that cannot even send us a nack means *we* are the slow one) raise a score in
[0, awareness_max_multiplier); successful probes lower it. Probe interval and timeout are
multiplied by (score + 1), so an overloaded node slows down instead of accusing others.

Precedence of news about one member (per incarnation ``i``)::

    alive(i')   applies if i' >  i                  (refutation, restart, meta change)
    suspect(i') applies if i' >= i and status alive (confirms if already suspect)
    dead(i')    applies if i' >= i and not dead/left
    left(i')    applies if i' >= i and not left
    about us    suspect/dead with i' >= ours, or alive with newer data -> refute (i' + 1)

Dissemination: every accepted change is queued as a rumor keyed by member (newer news
replaces older, so a refutation cancels a pending suspicion). Rumors are piggybacked on
every datagram we send (pings, acks, ping-reqs) and on gossip rounds every
``gossip_interval`` to ``gossip_nodes`` random members (plus members dead for less than
``gossip_to_the_dead_time``, so a wrongly declared node hears it and refutes). Each rumor
goes out ``retransmit_limit(n)`` times, fewest-sent first. The delegate (state sync) fills
the room left in each datagram with its own rumors.

Anti-entropy and healing: every ``push_pull_period(n)`` we exchange the whole table with
one random live member over the reliable path; remote "dead" becomes a local suspicion
(we verify for ourselves). Every ``reconnect_interval`` we push-pull with one random dead
member, so the halves of a healed partition find each other; a node that hears it is
dead refutes, and a ping from a member we hold dead is answered with that news too.
Seeds are contacted by push-pull until one answers, with exponential back-off, and again
whenever we find ourselves with no live member.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from federation.config import MembershipConfig
from federation.limits import (
    ACCUSATION_BURST,
    ACCUSATION_REFILL_PER_S,
    MAX_ADDRESS_BYTES,
    MAX_COMPOUND_PARTS,
    MAX_DATAGRAM_PAYLOAD,
    MAX_MEMBER_RUMOR_QUEUE,
    MAX_MEMBERS,
    MAX_META_BYTES,
    MAX_NODE_ID_BYTES,
    MAX_PENDING_PER_INTRODUCER,
    MAX_PENDING_RELAYS,
    MAX_PENDING_STATEMENTS,
    MAX_SEEDS,
    MAX_STREAM_MESSAGE_BYTES,
    MAX_UINT,
)
from federation.messages import (
    Ack,
    Alive,
    Compound,
    Dead,
    Effect,
    Event,
    Left,
    Member,
    MemberPushPull,
    MemberStatus,
    Message,
    Nack,
    Ping,
    PingReq,
    Send,
    Suspect,
    compound_overhead,
    part_size,
)
from federation.statements import StatementSigner, StatementVerifier, sign

__all__ = [
    "BroadcastQueue",
    "GossipDelegate",
    "Member",
    "MemberAlive",
    "MemberDead",
    "MemberEvent",
    "MemberJoined",
    "MemberLeft",
    "MemberStatus",
    "MemberSuspected",
    "MemberUpdated",
    "Membership",
]

_ALIVE = MemberStatus.ALIVE
_SUSPECT = MemberStatus.SUSPECT
_DEAD = MemberStatus.DEAD
_LEFT = MemberStatus.LEFT
_INF = math.inf
_M = TypeVar("_M", Alive, Left, Suspect, Dead, Ack)

# Room for the compound header (version, type, part count <= 64 fits one byte).
_DATAGRAM_BUDGET = MAX_DATAGRAM_PAYLOAD - compound_overhead(MAX_COMPOUND_PARTS)
_RUMOR_TYPES = frozenset({Alive, Suspect, Dead, Left})
# Worst-case bytes of one member's statements in a push-pull table (its alive and one
# status statement); tables with fewer members always fit the stream limit.
_MAX_ROW_BYTES = 2 * MAX_NODE_ID_BYTES + MAX_ADDRESS_BYTES + MAX_META_BYTES + 2 * 64 + 48
_TABLE_ROWS_ALWAYS_FIT = (MAX_STREAM_MESSAGE_BYTES - 1024) // _MAX_ROW_BYTES
# Pending (not yet admitted) statements older than this may be dropped to make room.
_PENDING_TTL = 60.0


# --- events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberEvent(Event):
    """Something changed about ``member`` (the record after the change)."""

    member: Member


@dataclass(frozen=True, slots=True)
class MemberJoined(MemberEvent):
    """First time we hear of this member (alive)."""


@dataclass(frozen=True, slots=True)
class MemberAlive(MemberEvent):
    """A suspect refuted, or a dead/left member came back (restart, healed partition)."""


@dataclass(frozen=True, slots=True)
class MemberUpdated(MemberEvent):
    """An alive member changed its address or metadata."""


@dataclass(frozen=True, slots=True)
class MemberSuspected(MemberEvent):
    """The member missed probes; it is still counted live until declared dead."""


@dataclass(frozen=True, slots=True)
class MemberDead(MemberEvent):
    """The suspicion expired unrefuted: treat the member as failed."""


@dataclass(frozen=True, slots=True)
class MemberLeft(MemberEvent):
    """The member left gracefully; do not route to it or try to reconnect."""


# --- rumor queue ---------------------------------------------------------------------------


class BroadcastQueue:
    """Retransmit-limited rumor queue (memberlist's TransmitLimitedQueue).

    One rumor per key: pushing a key replaces its pending rumor, which is how newer news
    about a member (or item) invalidates older. :meth:`take` hands out the least-sent
    rumors first (newest first among equals) within a byte budget and drops each one
    once it has gone out ``limit`` times.
    """

    __slots__ = ("_buckets", "_max", "_where")

    def __init__(self, max_len: int) -> None:
        self._max = max_len
        # _buckets[t] holds rumors sent t times, in insertion order (oldest first).
        self._buckets: list[dict[Hashable, tuple[Message, int]]] = [{}]
        self._where: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._where

    def push(self, key: Hashable, msg: Message) -> None:
        old = self._where.pop(key, None)
        if old is not None:
            del self._buckets[old][key]
        self._buckets[0][key] = (msg, part_size(msg))
        self._where[key] = 0
        if len(self._where) > self._max:
            self._prune()

    def discard(self, key: Hashable) -> None:
        old = self._where.pop(key, None)
        if old is not None:
            del self._buckets[old][key]

    def _prune(self) -> None:
        # Drop the most-sent, oldest rumors: they have done most of their work already.
        for bucket in reversed(self._buckets):
            while bucket and len(self._where) > self._max:
                key = next(iter(bucket))
                del bucket[key]
                del self._where[key]

    def take(self, budget: int, limit: int, max_parts: int) -> tuple[list[Message], int]:
        """Rumors (and their compound part sizes' sum) fitting ``budget`` bytes."""
        if not self._where or budget <= 0 or max_parts <= 0:
            return [], 0
        chosen: list[tuple[Hashable, int]] = []
        out: list[Message] = []
        used = 0
        skipped = 0
        for sent, bucket in enumerate(self._buckets):
            if not bucket:
                continue
            if sent >= limit:
                break
            for key in reversed(bucket):
                msg, size = bucket[key]
                if used + size > budget:
                    skipped += 1
                    if skipped > 16:  # the rest is unlikely to fit; do not scan it all
                        break
                    continue
                out.append(msg)
                chosen.append((key, sent))
                used += size
                if len(out) >= max_parts or budget - used < 8:
                    break
            if len(out) >= max_parts or budget - used < 8 or skipped > 16:
                break
        for key, sent in chosen:
            entry = self._buckets[sent].pop(key)
            if sent + 1 >= limit:
                del self._where[key]
                continue
            if sent + 1 == len(self._buckets):
                self._buckets.append({})
            self._buckets[sent + 1][key] = entry
            self._where[key] = sent + 1
        # Rumors already sent `limit` times (limit shrinks when the cluster does) are done.
        for sent in range(limit, len(self._buckets)):
            for key in self._buckets[sent]:
                del self._where[key]
            self._buckets[sent].clear()
        return out, used


# --- delegate seam -------------------------------------------------------------------------


class GossipDelegate(Protocol):
    """What membership needs from a module that rides on its datagrams (state sync)."""

    def broadcasts(self, budget: int, num_nodes: int, max_parts: int) -> tuple[list[Message], int]:
        """Rumors to piggyback within ``budget`` bytes (compound part sizes) and at most
        ``max_parts`` parts; returns them with the bytes they take. Counts as a transmit."""
        ...

    def pending_broadcasts(self) -> int:
        """Rumors waiting to go out (0 lets membership skip idle gossip rounds)."""
        ...

    def receive(self, sender_addr: str, msg: Message, now: float) -> list[Effect]:
        """A message membership does not own (state-sync rumors and exchanges)."""
        ...


# --- timers --------------------------------------------------------------------------------


class _Probe:
    __slots__ = ("address", "end_at", "expected_nacks", "incarnation", "indirect_sent",
                 "nacks", "relays", "seq", "target", "timeout_at")

    def __init__(self, target: Member, seq: int, timeout_at: float, end_at: float) -> None:
        self.target = target.node_id
        self.address = target.address
        self.incarnation = target.incarnation
        self.seq = seq
        self.timeout_at = timeout_at
        self.end_at = end_at
        self.indirect_sent = False
        self.expected_nacks = 0
        self.nacks = 0
        self.relays: set[str] = set()


class _Relay:
    __slots__ = ("deadline", "requester", "requester_seq", "target", "want_nack")

    def __init__(self, requester: str, requester_seq: int, target: str, deadline: float,
                 want_nack: bool) -> None:
        self.requester = requester  # node id: answers go to the address it signed
        self.requester_seq = requester_seq
        self.target = target
        self.deadline = deadline
        self.want_nack = want_nack


class _Suspicion:
    """Lifeguard suspicion timer: max timeout, shrinking to min with k confirmations."""

    __slots__ = ("accusers", "confirmations", "deadline", "k", "max", "min", "start")

    def __init__(self, start: float, k: int, min_t: float, max_t: float, accuser: str) -> None:
        self.start = start
        self.k = k
        self.min = min_t
        self.max = max_t
        self.accusers = {accuser}  # membership tests only; never iterated
        self.confirmations = 0
        self.deadline = start + (min_t if k < 1 else max_t)

    def confirm(self, accuser: str) -> bool:
        """Count an independent accuser; True if that was news (then re-gossip it)."""
        if self.k < 1 or self.confirmations >= self.k or accuser in self.accusers:
            return False
        self.accusers.add(accuser)
        self.confirmations += 1
        frac = math.log(self.confirmations + 1) / math.log(self.k + 1)
        timeout = max(self.min, self.max - frac * (self.max - self.min))
        self.deadline = self.start + timeout
        return True


def _check_len(what: str, value: str | bytes, limit: int) -> None:
    size = len(value.encode() if isinstance(value, str) else value)
    if size > limit or (isinstance(value, str) and not value):
        raise ValueError(f"{what} must be 1..{limit} bytes, got {size}")


# --- the state machine -----------------------------------------------------------------------


class Membership:
    """One node's view of the cluster. See the module docstring for the protocol."""

    def __init__(self, self_id: str, address: str, config: MembershipConfig,
                 rng: random.Random, *, meta: bytes = b"", incarnation: int = 0,
                 delegate: GossipDelegate | None = None,
                 signer: StatementSigner | None = None,
                 verifier: StatementVerifier | None = None) -> None:
        _check_len("node id", self_id, MAX_NODE_ID_BYTES)
        _check_len("address", address, MAX_ADDRESS_BYTES)
        if len(meta) > MAX_META_BYTES:
            raise ValueError(f"meta must be at most {MAX_META_BYTES} bytes, got {len(meta)}")
        self.config = config
        self._rng = rng
        self._id = self_id
        if (signer is None) != (verifier is None):
            raise ValueError("signed membership needs both a signer and a verifier")
        self._signer = signer
        self._verifier = verifier
        self._signed = verifier is not None
        self._self = Member(self_id, address, incarnation, _ALIVE, bytes(meta))
        self._self_alive: Alive = self._sign(Alive(self_id, address, incarnation, bytes(meta)))
        self._self_left: Left | None = None
        self._delegate = delegate
        self._members: dict[str, Member] = {}
        # The statements behind each record: its subject's alive, and the left, suspect or
        # dead behind a non-alive status. Push-pull tables are made of these, unchanged.
        self._alive: dict[str, Alive] = {}
        self._status: dict[str, Suspect | Dead | Left] = {}
        # Admission pen: node id -> (alive statement, introducer, since).
        self._pending: dict[str, tuple[Alive, str, float]] = {}
        self._pending_by: dict[str, int] = {}
        self._accuse_budget: dict[str, tuple[float, float]] = {}
        self._knows_us: set[str] = set()  # members that acked a direct ping of ours
        self._introducer = ""  # authenticated sender of the message being handled
        self._since: dict[str, float] = {}  # when a non-alive member entered its status
        self._ids: list[str] = []  # every member id, for O(1) random picks
        self._pos: dict[str, int] = {}
        self._live = 0  # alive + suspect members, excluding us
        self._probe_order: list[str] = []
        self._probe_cursor = 0
        self._probe: _Probe | None = None
        self._relays: dict[tuple[str, int], _Relay] = {}
        self._suspicions: dict[str, _Suspicion] = {}
        self._suspicion_due = _INF  # lower bound on the earliest suspicion deadline
        self._queue = BroadcastQueue(MAX_MEMBER_RUMOR_QUEUE)
        self._awareness = 0
        self._seq = 0
        self._started = False
        self._next_probe = _INF
        self._next_gossip = _INF
        self._next_push_pull = _INF
        self._next_reconnect = _INF
        self._seeds: list[str] = []
        self._seed_attempts = 0
        self._next_seed = _INF
        self._connected = False
        self._leaving = False
        #: Counters for metrics; keys are stable names.
        self.stats: dict[str, int] = dict.fromkeys(
            ("probes", "probe_failures", "indirect_probes", "suspicions_raised", "refutes",
             "dead_declared", "relays_dropped", "members_refused", "misdirected_pings",
             "gossip_sent", "push_pulls", "unrefutable", "invalid_statements",
             "void_accusations", "pending", "pending_refused", "admitted_late",
             "accusations_throttled", "unknown_pinger", "relays_refused",
             "acks_refused"), 0)
        self._handlers: dict[type, Callable[[str, Message, float], list[Effect]]] = {
            Ping: self._on_ping,  # type: ignore[dict-item]
            PingReq: self._on_ping_req,  # type: ignore[dict-item]
            Ack: self._on_ack,  # type: ignore[dict-item]
            Nack: self._on_nack,  # type: ignore[dict-item]
            Alive: self._on_alive_msg,  # type: ignore[dict-item]
            Suspect: self._on_suspect_msg,  # type: ignore[dict-item]
            Dead: self._on_dead_msg,  # type: ignore[dict-item]
            Left: self._on_left_msg,  # type: ignore[dict-item]
            MemberPushPull: self._on_push_pull,  # type: ignore[dict-item]
        }

    # --- public read side ------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self._id

    @property
    def local_member(self) -> Member:
        """Our own record as we advertise it (incarnation bumps on refutation)."""
        return self._self

    @property
    def incarnation(self) -> int:
        return self._self.incarnation

    @property
    def awareness(self) -> int:
        """Lifeguard local-health score: 0 is healthy; timeouts scale by score + 1."""
        return self._awareness

    def members(self) -> list[Member]:
        """Every known member including tombstones (dead, left); ourselves first."""
        return [self._self, *self._members.values()]

    def live_members(self) -> list[Member]:
        """Members currently alive or suspect (routable), excluding ourselves."""
        return [m for m in self._members.values() if m.status <= _SUSPECT]

    def member(self, node_id: str) -> Member | None:
        return self._self if node_id == self._id else self._members.get(node_id)

    def num_nodes(self) -> int:
        """Estimated cluster size (live members and us): the n of the config formulas."""
        return self._live + 1

    def random_peer_address(self) -> str | None:
        """Address of one random live member (for state-sync exchanges), or None."""
        picked = self._random_members(1, lambda m: m.status <= _SUSPECT)
        return picked[0].address if picked else None

    def address_of(self, node_id: str) -> str | None:
        """The address ``node_id`` signed, if it is a member that has not left: the only
        place answers to it may go (state sync replies through this too)."""
        m = self._members.get(node_id)
        if m is None or m.status is _LEFT:
            return None
        return m.address

    def statement(self, node_id: str) -> Alive | None:
        """The signed alive statement behind ``node_id``'s record (ours included)."""
        return self._self_alive if node_id == self._id else self._alive.get(node_id)

    def key_known(self, node_id: str, now: float) -> list[Effect]:
        """The certificate of ``node_id`` is now known: admit its pending statement."""
        entry = self._pending.pop(node_id, None)
        if entry is None:
            return []
        self._unpend(entry[1])
        self.stats["admitted_late"] += 1
        return self._on_alive(entry[0], now, entry[1])

    def pending_admissions(self) -> int:
        """Statements waiting for their subject's certificate."""
        return len(self._pending)

    def pending_broadcasts(self) -> int:
        return len(self._queue)

    def leave_complete(self) -> bool:
        """After :meth:`leave`: our "left" rumor has gone out as often as it should (or
        nobody is left to tell). Stop the daemon once this holds or a timeout passes."""
        return self._leaving and (self._id not in self._queue or self._live == 0)

    def set_delegate(self, delegate: GossipDelegate | None) -> None:
        """Attach the module whose rumors ride on our datagrams (state sync)."""
        self._delegate = delegate

    # --- driving -------------------------------------------------------------------------

    def next_deadline(self) -> float:
        """Latest time at which :meth:`tick` must be called (may be in the past)."""
        if not self._started:
            return -_INF
        # A leaving node stops probing (tick skips it), so its probe timers are not deadlines:
        # reporting them would ask to be woken in the past forever.
        probe_due = _INF if self._leaving else self._next_probe
        due = min(probe_due, self._next_push_pull, self._next_reconnect,
                  self._next_seed, self._suspicion_due)
        if self._probe is not None and not self._leaving:
            p = self._probe
            due = min(due, p.end_at if p.indirect_sent else p.timeout_at)
        if self._relays:
            due = min(due, next(iter(self._relays.values())).deadline)
        # The gossip ticker runs even when idle so rounds keep their phase: a rumor that
        # arrives between rounds waits for the next one, as on a real fixed ticker.
        return min(due, self._next_gossip)

    def tick(self, now: float) -> list[Effect]:
        """Advance timers to ``now``: probes, suspicion expiry, gossip, exchanges."""
        effects: list[Effect] = []
        if not self._started:
            self._start(now)
        if not self._leaving:
            self._tick_probe(now, effects)
        if self._relays:
            self._expire_relays(now, effects)
        if now >= self._suspicion_due:
            self._expire_suspicions(now, effects)
        if now >= self._next_gossip:
            self._gossip(now, effects)
            gi = self.config.gossip_interval
            self._next_gossip += gi * max(1, math.floor((now - self._next_gossip) / gi) + 1)
        if now >= self._next_push_pull:
            self._periodic_push_pull(now, effects)
        if now >= self._next_reconnect:
            self._reconnect_and_reap(now, effects)
        if now >= self._next_seed:
            self._contact_seeds(now, effects)
        return effects

    def receive(self, sender_addr: str, msg: Message, now: float,
                sender_id: str | None = None) -> list[Effect]:
        """Handle one decoded, authenticated message from ``sender_addr``.

        ``sender_id`` is the authenticated sender (envelope or TLS identity): it is the
        introducer whose share of the admission pen a statement uses. Replies go only to
        addresses members signed, never to ``sender_addr`` (no reflection).
        """
        if not self._started:
            self._start(now)
        self._introducer = sender_id or sender_addr
        if type(msg) is Compound:
            effects: list[Effect] = []
            # Rumors first: a suspicion carried in a ping (buddy system) is then refuted
            # in the very ack that answers the ping.
            later: list[Message] = []
            for part in msg.parts:
                if type(part) in _RUMOR_TYPES:
                    effects += self._dispatch(sender_addr, part, now)
                else:
                    later.append(part)
            for part in later:
                effects += self._dispatch(sender_addr, part, now)
            return effects
        return self._dispatch(sender_addr, msg, now)

    def _dispatch(self, sender_addr: str, msg: Message, now: float) -> list[Effect]:
        handler = self._handlers.get(type(msg))
        if handler is not None:
            return handler(sender_addr, msg, now)
        if self._delegate is not None:
            return self._delegate.receive(sender_addr, msg, now)
        return []

    def join(self, seeds: Sequence[str], now: float) -> list[Effect]:
        """Contact ``seeds`` (``host:port``) by push-pull, retrying with back-off until one
        answers. Returns the first round of sends."""
        if not self._started:
            self._start(now)
        unique = [s for s in dict.fromkeys(seeds) if s and s != self._self.address]
        self._seeds = unique[:MAX_SEEDS]
        self._seed_attempts = 0
        self._connected = False
        effects: list[Effect] = []
        if self._seeds:
            self._contact_seeds(now, effects)
        return effects

    def introduce(self, address: str, now: float) -> list[Effect]:
        """One join push-pull to ``address`` (a candidate from discovery), leaving the seed
        list alone: if it answers, it becomes a member like any other."""
        if not self._started:
            self._start(now)
        if not address or address == self._self.address:
            return []
        return [Send(address, self._table(join=True, reply=False), reliable=True)]

    def leave(self, now: float) -> list[Effect]:
        """Leave gracefully: others mark us *left* (not dead). Keep calling :meth:`tick`
        until :meth:`leave_complete` so the news spreads, then stop."""
        if self._leaving:
            return []
        self._leaving = True
        self._probe = None
        self._seeds = []
        self._next_seed = _INF
        me = self._self
        self._self = Member(me.node_id, me.address, me.incarnation, _LEFT, me.meta)
        self._self_left = self._sign(Left(self._id, me.incarnation))
        self._queue.push(self._id, self._self_left)
        # Gossip right away rather than at the next round.
        self._next_gossip = min(self._next_gossip, now)
        return []

    def update_meta(self, meta: bytes, now: float) -> list[Effect]:
        """Advertise new metadata (bumps our incarnation so the news wins everywhere)."""
        if len(meta) > MAX_META_BYTES:
            raise ValueError(f"meta must be at most {MAX_META_BYTES} bytes, got {len(meta)}")
        me = self._self
        self._set_self(Member(me.node_id, me.address, me.incarnation + 1, me.status,
                              bytes(meta)))
        self._queue.push(self._id, self._alive_msg())
        return []

    def restore(self, members: Iterable[Member | Alive], now: float) -> None:
        """Load a member table without events, rumors or verification (the caller vouches
        for it): a persisted table after a restart, or a converged cluster at the start
        of a simulation. Give signed ``Alive`` statements when others must believe them
        (they travel in our push-pull tables)."""
        for row in members:
            if row.node_id == self._id or row.node_id in self._members:
                continue
            if len(self._members) >= MAX_MEMBERS:
                break
            if type(row) is Alive:
                alive = row
                m = Member(row.node_id, row.address, row.incarnation, _ALIVE, row.meta)
            else:
                m = row  # type: ignore[assignment]
                alive = Alive(m.node_id, m.address, m.incarnation, m.meta)
            self._alive[m.node_id] = alive
            self._add(m, now, place_in_probe_order=False)
        self._reset_probe_order()

    # --- probing ---------------------------------------------------------------------------

    def _start(self, now: float) -> None:
        self._started = True
        cfg = self.config
        rnd = self._rng.random
        # Random phases, so a thousand nodes started together do not probe in lockstep.
        self._next_probe = now + rnd() * cfg.probe_interval
        self._next_gossip = now + rnd() * cfg.gossip_interval
        if cfg.push_pull_interval > 0:
            self._next_push_pull = now + rnd() * cfg.push_pull_period(self.num_nodes())
        if cfg.reconnect_interval > 0:
            self._next_reconnect = now + rnd() * cfg.reconnect_interval

    def _tick_probe(self, now: float, effects: list[Effect]) -> None:
        p = self._probe
        if p is not None:
            if not p.indirect_sent and now >= p.timeout_at:
                self._send_indirect(p, effects)
            if now >= p.end_at:
                self._probe = None
                self._probe_failed(p, now, effects)
        if self._probe is None and now >= self._next_probe:
            scale = self._awareness + 1
            interval = self.config.probe_interval * scale
            self._next_probe = max(self._next_probe + interval, now + interval * 0.5)
            target = self._next_probe_target()
            if target is None:
                return
            # Random, not counted: a relay must not be able to collect acks in advance.
            p = _Probe(target, self._rng.getrandbits(32), now + self.config.probe_timeout * scale,
                       now + interval)
            self._probe = p
            self.stats["probes"] += 1
            ping = Ping(p.seq, self._id, self._self.address, target.node_id)
            extra: tuple[Message, ...] = ()
            if target.status is _SUSPECT:
                # Buddy system: tell the suspect directly, it can refute at once (the
                # accusation as signed, unchanged).
                held = self._status.get(target.node_id)
                if held is not None and type(held) is not Left:
                    extra = (held,)
            if target.node_id not in self._knows_us:
                # It may not have admitted us yet: our signed alive lets it answer.
                extra = (*extra, self._self_alive)
            effects.append(self._datagram(target.address, ping, extra))

    def _send_indirect(self, p: _Probe, effects: list[Effect]) -> None:
        p.indirect_sent = True
        k = self.config.indirect_checks
        if k <= 0:
            return
        target = p.target
        relays = self._random_members(
            k, lambda m: m.status is _ALIVE and m.node_id != target)
        if not relays:
            return
        self.stats["indirect_probes"] += 1
        req = PingReq(p.seq, self._id, self._self.address, p.target, p.address, True)
        p.expected_nacks = len(relays)
        for relay in relays:
            p.relays.add(relay.node_id)
            effects.append(self._datagram(relay.address, req))

    def _probe_failed(self, p: _Probe, now: float, effects: list[Effect]) -> None:
        self.stats["probe_failures"] += 1
        # Lifeguard: relays that did not even nack point at our own ill health; with no
        # relays to tell us otherwise, count the miss against ourselves.
        if p.expected_nacks > 0:
            self._nudge_awareness(p.expected_nacks - p.nacks)
        else:
            self._nudge_awareness(1)
        self._knows_us.discard(p.target)
        member = self._members.get(p.target)
        if member is None or member.status > _SUSPECT or member.incarnation != p.incarnation:
            return
        self.stats["suspicions_raised"] += 1
        effects += self._on_suspect(self._sign(Suspect(p.target, p.incarnation, self._id)), now)

    def _next_probe_target(self) -> Member | None:
        order = self._probe_order
        for _ in range(len(order) + 1):
            if self._probe_cursor >= len(order):
                self._reset_probe_order()
                order = self._probe_order
                if not order:
                    return None
            node_id = order[self._probe_cursor]
            self._probe_cursor += 1
            m = self._members.get(node_id)
            if m is not None and m.status <= _SUSPECT:
                return m
        return None

    def _reset_probe_order(self) -> None:
        order = [nid for nid, m in self._members.items() if m.status <= _SUSPECT]
        self._rng.shuffle(order)
        self._probe_order = order
        self._probe_cursor = 0

    def _nudge_awareness(self, delta: int) -> None:
        top = self.config.awareness_max_multiplier - 1
        self._awareness = min(top, max(0, self._awareness + delta))

    # --- timers ------------------------------------------------------------------------------

    def _expire_relays(self, now: float, effects: list[Effect]) -> None:
        # Relay deadlines are now + probe_timeout at insertion: dict order is deadline order.
        while self._relays:
            key, relay = next(iter(self._relays.items()))
            if relay.deadline > now:
                break
            del self._relays[key]
            to = self.address_of(relay.requester)
            if relay.want_nack and to is not None:
                effects.append(self._datagram(to, Nack(relay.requester_seq, self._id)))

    def _expire_suspicions(self, now: float, effects: list[Effect]) -> None:
        due = _INF
        expired: list[str] = []
        for node_id, s in self._suspicions.items():
            if s.deadline <= now:
                expired.append(node_id)
            else:
                due = min(due, s.deadline)
        self._suspicion_due = due
        for node_id in expired:
            del self._suspicions[node_id]
            m = self._members.get(node_id)
            if m is None or m.status is not _SUSPECT:
                continue
            self.stats["dead_declared"] += 1
            effects += self._declare_dead(m, now)

    def _gossip(self, now: float, effects: list[Effect]) -> None:
        if not self._queue and not (self._delegate and self._delegate.pending_broadcasts()):
            return
        dead_window = self.config.gossip_to_the_dead_time
        since = self._since

        def eligible(m: Member) -> bool:
            if m.status <= _SUSPECT:
                return True
            return m.status is _DEAD and now - since.get(m.node_id, now) < dead_window

        for target in self._random_members(self.config.gossip_nodes, eligible):
            parts = self._rumors(_DATAGRAM_BUDGET, MAX_COMPOUND_PARTS)[0]
            if not parts:
                break
            self.stats["gossip_sent"] += 1
            msg = parts[0] if len(parts) == 1 else Compound(tuple(parts))
            effects.append(Send(target.address, msg))

    def _periodic_push_pull(self, now: float, effects: list[Effect]) -> None:
        self._next_push_pull = now + self.config.push_pull_period(self.num_nodes())
        peers = self._random_members(1, lambda m: m.status is _ALIVE)
        if peers:
            self.stats["push_pulls"] += 1
            effects.append(Send(peers[0].address, self._table(join=False, reply=False),
                                reliable=True))

    def _reconnect_and_reap(self, now: float, effects: list[Effect]) -> None:
        cfg = self.config
        self._next_reconnect = now + cfg.reconnect_interval
        dead: list[Member] = []
        reap: list[str] = []
        for node_id, m in self._members.items():
            if m.status is _DEAD:
                if now - self._since.get(node_id, now) > cfg.reconnect_timeout:
                    reap.append(node_id)
                else:
                    dead.append(m)
            elif m.status is _LEFT and now - self._since.get(node_id, now) > cfg.tombstone_timeout:
                reap.append(node_id)
        for node_id in reap:
            self._remove(node_id)
        if dead and not self._leaving:
            target = dead[self._rng.randrange(len(dead))]
            effects.append(Send(target.address, self._table(join=False, reply=False),
                                reliable=True))
        if self._seeds and self._connected and self._live == 0 and not self._leaving:
            # Cut off from everyone we knew: fall back to the seeds.
            self._connected = False
            self._seed_attempts = 0
            self._next_seed = now

    def _contact_seeds(self, now: float, effects: list[Effect]) -> None:
        if self._connected or not self._seeds:
            self._next_seed = _INF
            return
        cfg = self.config
        table = self._table(join=True, reply=False)
        for seed in self._seeds:
            effects.append(Send(seed, table, reliable=True))
        delay = min(cfg.seed_retry_max, cfg.seed_retry_base * 2.0 ** self._seed_attempts)
        self._seed_attempts += 1
        # Jitter, so nodes that lost a seed together do not retry together.
        self._next_seed = now + delay * self._rng.uniform(0.75, 1.0)

    # --- message handlers ---------------------------------------------------------------------

    def _on_ping(self, sender: str, msg: Ping, now: float) -> list[Effect]:
        if msg.target_id != self._id:
            self.stats["misdirected_pings"] += 1
            return []
        to = self.address_of(msg.source_id)
        if to is None:
            # Not a member we admitted: there is no address it signed to answer to, and
            # the datagram's source is not one (no reflection).
            self.stats["unknown_pinger"] += 1
            return []
        extra: tuple[Message, ...] = ()
        held = self._status.get(msg.source_id)
        if held is not None and type(held) is not Left:
            # It thinks it is alive and we hold it suspect or dead: tell it (the accusation
            # as signed), so it refutes and the two sides of a healed partition merge.
            extra = (held,)
        ack = Ack(msg.seq, self._id)
        if msg.for_id:
            # A relay probes us for `for_id`: sign the ack for it; the relay forwards it.
            ack = self._sign(Ack(msg.seq, self._id, msg.for_id))
        return [self._datagram(to, ack, extra)]

    def _on_ping_req(self, sender: str, msg: PingReq, now: float) -> list[Effect]:
        if len(self._relays) >= MAX_PENDING_RELAYS:
            self.stats["relays_dropped"] += 1
            return []
        target = self._members.get(msg.target_id)
        if (self.address_of(msg.source_id) is None or target is None
                or target.status > _SUSPECT or msg.target_id == self._id):
            # Only members' signed addresses are probed: never `target_addr` (reflection).
            self.stats["relays_refused"] += 1
            return []
        key = (msg.source_id, msg.seq)
        if key in self._relays:
            return []
        self._relays[key] = _Relay(msg.source_id, msg.seq, msg.target_id,
                                   now + self.config.probe_timeout, msg.want_nack)
        ping = Ping(msg.seq, self._id, self._self.address, msg.target_id, msg.source_id)
        return [self._datagram(target.address, ping)]

    def _on_ack(self, sender: str, msg: Ack, now: float) -> list[Effect]:
        if msg.for_id and msg.for_id != self._id:
            # An ack we relay: it must come from the target we probed, signed by it.
            relay = self._relays.get((msg.for_id, msg.seq))
            if relay is None or relay.target != msg.source_id or self._valid(msg) is not True:
                self.stats["acks_refused"] += 1
                return []
            del self._relays[(msg.for_id, msg.seq)]
            to = self.address_of(relay.requester)
            return [self._datagram(to, msg)] if to is not None else []
        p = self._probe
        if p is None or msg.seq != p.seq or msg.source_id != p.target:
            return []
        if (msg.for_id or msg.sig) and self._valid(msg) is not True:
            # Relayed (or claiming a signature): only the probed node's signature counts.
            self.stats["acks_refused"] += 1
            return []
        self._probe = None
        if not msg.for_id:
            self._knows_us.add(p.target)
        if not p.indirect_sent:
            self._nudge_awareness(-1)
        return []

    def _on_nack(self, sender: str, msg: Nack, now: float) -> list[Effect]:
        p = self._probe
        if p is not None and msg.seq == p.seq and msg.source_id in p.relays:
            p.relays.discard(msg.source_id)  # one nack per relay we asked
            p.nacks += 1
        return []

    def _on_alive_msg(self, sender: str, msg: Alive, now: float) -> list[Effect]:
        return self._on_alive(msg, now, self._introducer)

    def _on_suspect_msg(self, sender: str, msg: Suspect, now: float) -> list[Effect]:
        return self._on_suspect(msg, now)

    def _on_dead_msg(self, sender: str, msg: Dead, now: float) -> list[Effect]:
        if not self._signed:
            return self._on_dead(msg, now)
        return self._on_suspect(msg, now)

    def _on_left_msg(self, sender: str, msg: Left, now: float) -> list[Effect]:
        return self._on_left(msg, now)

    def _on_push_pull(self, sender: str, msg: MemberPushPull, now: float) -> list[Effect]:
        effects = self._merge(msg.statements, msg.source_id, now)
        # Any exchange with a live peer proves we are connected to the cluster.
        self._connected = True
        self._next_seed = _INF
        if not msg.reply:
            to = self.address_of(msg.source_id)
            if to is not None:
                effects.append(Send(to, self._table(join=False, reply=True), reliable=True))
        return effects

    # --- verification and admission --------------------------------------------------------

    def _sign(self, msg: _M) -> _M:
        return sign(self._signer, msg)

    def _valid(self, msg: Alive | Left | Suspect | Dead | Ack) -> bool | None:
        """True: signed by whom it must be. False: forged (dropped, counted). None: the
        signer's certificate is not known yet."""
        if self._verifier is None:
            return True
        verdict = self._verifier.check(msg)
        if verdict is False:
            self.stats["invalid_statements"] += 1
        return verdict

    def _pend(self, msg: Alive, introducer: str, now: float) -> None:
        pending = self._pending
        held = pending.get(msg.node_id)
        if held is not None:
            if msg.incarnation > held[0].incarnation:
                pending[msg.node_id] = (msg, held[1], held[2])
            return
        by = self._pending_by
        if (by.get(introducer, 0) >= MAX_PENDING_PER_INTRODUCER
                or len(pending) >= MAX_PENDING_STATEMENTS):
            for node_id in [k for k, v in pending.items() if now - v[2] > _PENDING_TTL]:
                self._unpend(pending.pop(node_id)[1])
        if (by.get(introducer, 0) >= MAX_PENDING_PER_INTRODUCER
                or len(pending) >= MAX_PENDING_STATEMENTS):
            self.stats["pending_refused"] += 1
            return
        pending[msg.node_id] = (msg, introducer, now)
        by[introducer] = by.get(introducer, 0) + 1
        self.stats["pending"] += 1

    def _unpend(self, introducer: str) -> None:
        left = self._pending_by.get(introducer, 0) - 1
        if left > 0:
            self._pending_by[introducer] = left
        else:
            self._pending_by.pop(introducer, None)

    def _spend_accusation(self, accuser: str, now: float) -> bool:
        """One token of ``accuser``'s budget of new accusations (see limits)."""
        if accuser == self._id:
            return True
        budget = self._accuse_budget
        tokens, last = budget.get(accuser, (float(ACCUSATION_BURST), now))
        tokens = min(float(ACCUSATION_BURST), tokens + (now - last) * ACCUSATION_REFILL_PER_S)
        if len(budget) > MAX_MEMBERS:
            budget.clear()
        if tokens < 1.0:
            budget[accuser] = (tokens, now)
            self.stats["accusations_throttled"] += 1
            return False
        budget[accuser] = (tokens - 1.0, now)
        return True

    # --- state transitions -------------------------------------------------------------------

    def _on_alive(self, msg: Alive, now: float, introducer: str = "") -> list[Effect]:
        node_id = msg.node_id
        cur = self._self if node_id == self._id else self._members.get(node_id)
        if cur is not None and msg.incarnation < cur.incarnation:
            return []  # stale: no need to verify it
        if cur is not None and node_id != self._id and msg.incarnation == cur.incarnation:
            return []
        if node_id == self._id and msg == self._self_alive:
            return []
        valid = self._valid(msg)
        if valid is False:
            return []
        if valid is None:
            if cur is None:
                self._pend(msg, introducer, now)
            return []
        if node_id == self._id:
            me = self._self
            if self._leaving:
                return []
            if msg.incarnation > me.incarnation or (
                    msg.incarnation == me.incarnation
                    and (msg.address != me.address or msg.meta != me.meta)):
                # Signed with our key at an incarnation we hold or above: an earlier life
                # of ours. Move past it.
                self._refute(msg.incarnation)
            return []
        if cur is None:
            if not self._make_room(now):
                self.stats["members_refused"] += 1
                return []
            held = self._pending.pop(node_id, None)
            if held is not None:
                self._unpend(held[1])
            m = Member(node_id, msg.address, msg.incarnation, _ALIVE, msg.meta)
            self._alive[node_id] = msg
            self._add(m, now)
            self._queue.push(node_id, msg)
            return [MemberJoined(m)]
        m = Member(node_id, msg.address, msg.incarnation, _ALIVE, msg.meta)
        self._alive[node_id] = msg
        self._set(cur, m)
        self._queue.push(node_id, msg)
        if cur.status is not _ALIVE:
            return [MemberAlive(m)]
        if cur.address != m.address or cur.meta != m.meta:
            return [MemberUpdated(m)]
        return []

    def _on_suspect(self, msg: Suspect | Dead, now: float) -> list[Effect]:
        """A suspicion, or (signed mode) a dead, which counts as its accuser's suspicion."""
        node_id = msg.node_id
        if node_id == self._id:
            me = self._self
            if self._leaving or msg.incarnation < me.incarnation:
                return []
            if self._signed and msg.incarnation != me.incarnation:
                self.stats["void_accusations"] += 1  # never signed by us in this life
                return []
            if self._valid(msg) is True:
                self._refute(msg.incarnation)
            return []
        cur = self._members.get(node_id)
        if cur is None or msg.incarnation < cur.incarnation or cur.status > _SUSPECT:
            return []
        if self._signed and msg.incarnation != cur.incarnation:
            # The subject never signed that incarnation (as far as anyone shows us): void.
            self.stats["void_accusations"] += 1
            return []
        if cur.status is _SUSPECT:
            s = self._suspicions.get(node_id)
            if s is None or s.k < 1 or s.confirmations >= s.k or msg.from_id in s.accusers:
                return []
            if self._valid(msg) is not True:
                return []
            if s.confirm(msg.from_id):
                self._suspicion_due = min(self._suspicion_due, s.deadline)
                self._queue.push(node_id, msg)
            return []
        if self._valid(msg) is not True or not self._spend_accusation(msg.from_id, now):
            return []
        m = Member(node_id, cur.address, msg.incarnation, _SUSPECT, cur.meta)
        self._set(cur, m)
        self._status[node_id] = msg
        self._since[node_id] = now
        n = self.num_nodes()
        cfg = self.config
        s = _Suspicion(now, cfg.confirmations_wanted(n), cfg.suspicion_timeout(n),
                       cfg.suspicion_max_timeout(n), msg.from_id)
        self._suspicions[node_id] = s
        self._suspicion_due = min(self._suspicion_due, s.deadline)
        self._queue.push(node_id, msg)
        return [MemberSuspected(m)]

    def _on_dead(self, msg: Dead, now: float) -> list[Effect]:
        """Unsigned mode only: a dead rumor is applied as it comes (SWIM)."""
        node_id = msg.node_id
        if node_id == self._id:
            if not self._leaving and msg.incarnation >= self._self.incarnation:
                self._refute(msg.incarnation)
            return []
        cur = self._members.get(node_id)
        if cur is None or msg.incarnation < cur.incarnation or cur.status > _SUSPECT:
            return []
        m = Member(node_id, cur.address, msg.incarnation, _DEAD, cur.meta)
        self._set(cur, m)
        self._status[node_id] = msg
        self._since[node_id] = now
        self._queue.push(node_id, msg)
        return [MemberDead(m)]

    def _declare_dead(self, cur: Member, now: float) -> list[Effect]:
        """Our own suspicion of ``cur`` expired unrefuted."""
        msg = self._sign(Dead(cur.node_id, cur.incarnation, self._id))
        m = Member(cur.node_id, cur.address, cur.incarnation, _DEAD, cur.meta)
        self._set(cur, m)
        self._status[cur.node_id] = msg
        self._since[cur.node_id] = now
        self._queue.push(cur.node_id, msg)
        return [MemberDead(m)]

    def _on_left(self, msg: Left, now: float) -> list[Effect]:
        node_id = msg.node_id
        if node_id == self._id:
            if (not self._leaving and msg.incarnation >= self._self.incarnation
                    and msg != self._self_left and self._valid(msg) is True):
                self._refute(msg.incarnation)  # our key signed it: an earlier life
            return []
        cur = self._members.get(node_id)
        if cur is None or msg.incarnation < cur.incarnation or cur.status is _LEFT:
            return []
        if self._valid(msg) is not True:
            return []
        m = Member(node_id, cur.address, msg.incarnation, _LEFT, cur.meta)
        self._set(cur, m)
        self._status[node_id] = msg
        self._since[node_id] = now
        self._queue.push(node_id, msg)
        return [MemberLeft(m)]

    def _refute(self, accused_incarnation: int) -> None:
        me = self._self
        if accused_incarnation >= MAX_UINT:
            # Only a forger can get here (we never count that high): we cannot outbid it,
            # and must not build an unencodable record. Keep serving; operators see it.
            self.stats["unrefutable"] += 1
            return
        inc = max(me.incarnation, accused_incarnation) + 1
        self._set_self(Member(me.node_id, me.address, inc, me.status, me.meta))
        self._queue.push(self._id, self._alive_msg())
        self.stats["refutes"] += 1
        # Being accused is a hint that we are the slow one (Lifeguard).
        self._nudge_awareness(1)

    def _set_self(self, me: Member) -> None:
        self._self = me
        self._self_alive = self._sign(Alive(me.node_id, me.address, me.incarnation, me.meta))

    def _merge(self, statements: Sequence[Message], source_id: str, now: float) -> list[Effect]:
        effects: list[Effect] = []
        introducer = self._introducer or source_id
        later: list[Message] = []
        alive = self._alive
        for st in statements:
            t = type(st)
            if t is Alive:
                held = alive.get(st.node_id)  # type: ignore[union-attr]
                if held is not None and (held is st or st.incarnation <= held.incarnation):  # type: ignore[union-attr]
                    continue  # nothing new: the common case, kept cheap for big tables
                effects += self._on_alive(st, now, introducer)  # type: ignore[arg-type]
            elif t is Left or t is Suspect or t is Dead:
                later.append(st)
        for st in later:
            t = type(st)
            if t is Left:
                effects += self._on_left(st, now)  # type: ignore[arg-type]
            elif self._signed:
                effects += self._on_suspect(st, now)  # type: ignore[arg-type]
            else:
                # Their "dead" is only our suspicion: we check for ourselves (memberlist).
                effects += self._on_suspect(Suspect(st.node_id, st.incarnation,  # type: ignore[union-attr]
                                                    source_id), now)
        return effects

    # --- table bookkeeping ----------------------------------------------------------------------

    def _add(self, m: Member, now: float, *, place_in_probe_order: bool = True) -> None:
        node_id = m.node_id
        self._members[node_id] = m
        self._pos[node_id] = len(self._ids)
        self._ids.append(node_id)
        if m.status <= _SUSPECT:
            self._live += 1
            if not place_in_probe_order:
                return
            # Insert at a random place ahead of the cursor so it is probed this pass.
            order = self._probe_order
            order.append(node_id)
            lo = min(self._probe_cursor, len(order) - 1)
            j = self._rng.randint(lo, len(order) - 1)
            order[j], order[-1] = order[-1], order[j]
        else:
            self._since[node_id] = now

    def _set(self, cur: Member, new: Member) -> None:
        self._members[new.node_id] = new
        was_live = cur.status <= _SUSPECT
        is_live = new.status <= _SUSPECT
        if was_live != is_live:
            self._live += 1 if is_live else -1
        if new.status is _ALIVE:
            self._since.pop(new.node_id, None)
            self._suspicions.pop(new.node_id, None)
            self._status.pop(new.node_id, None)
            if not was_live:
                self._probe_order.append(new.node_id)
        elif new.status is not _SUSPECT:
            self._suspicions.pop(new.node_id, None)

    def _remove(self, node_id: str) -> None:
        m = self._members.pop(node_id)
        if m.status <= _SUSPECT:
            self._live -= 1
        self._since.pop(node_id, None)
        self._suspicions.pop(node_id, None)
        self._alive.pop(node_id, None)
        self._status.pop(node_id, None)
        self._knows_us.discard(node_id)
        self._queue.discard(node_id)
        i = self._pos.pop(node_id)
        last = self._ids.pop()
        if last != node_id:
            self._ids[i] = last
            self._pos[last] = i

    def _make_room(self, now: float) -> bool:
        if len(self._members) < MAX_MEMBERS:
            return True
        # Full: forget the longest-gone tombstone, never a live member.
        oldest = min(self._since.items(), key=lambda kv: kv[1], default=None)
        if oldest is None or self._members[oldest[0]].status <= _SUSPECT:
            return False
        self._remove(oldest[0])
        return True

    def _random_members(self, k: int, accept: Callable[[Member], bool]) -> list[Member]:
        ids = self._ids
        n = len(ids)
        if n == 0 or k <= 0:
            return []
        members = self._members
        picked: list[Member] = []
        if n > 4 * k:
            # Rejection sampling: O(k) when most members qualify, as they usually do.
            seen: set[str] = set()
            randrange = self._rng.randrange
            for _ in range(8 * k):
                node_id = ids[randrange(n)]
                if node_id in seen:
                    continue
                seen.add(node_id)
                m = members[node_id]
                if accept(m):
                    picked.append(m)
                    if len(picked) == k:
                        return picked
        candidates = [members[i] for i in ids if accept(members[i])
                      and all(p.node_id != i for p in picked)]
        self._rng.shuffle(candidates)
        return picked + candidates[: k - len(picked)]

    # --- outgoing ------------------------------------------------------------------------

    def _alive_msg(self) -> Alive:
        return self._self_alive

    def _table(self, *, join: bool, reply: bool) -> MemberPushPull:
        """Our statements and every held one, unchanged: alive statements first."""
        me = self._self
        ids = [self._id, *self._members]
        if len(ids) > _TABLE_ROWS_ALWAYS_FIT:
            ids = self._fit_table(ids)
        alive = self._alive
        status = self._status
        out: list[Message] = []
        later: list[Message] = []
        for node_id in ids[:MAX_MEMBERS]:
            if node_id == self._id:
                out.append(self._self_alive)
                if self._self_left is not None:
                    later.append(self._self_left)
                continue
            a = alive.get(node_id)
            if a is None:
                continue
            out.append(a)
            st = status.get(node_id)
            if st is not None:
                later.append(st)
        return MemberPushPull(self._id, me.address, join, reply, tuple(out + later))

    def _fit_table(self, ids: list[str]) -> list[str]:
        # Only huge tables of long records can overflow the reliable path's limit: keep
        # ourselves and live members first, then tombstones, until the bytes run out.
        members = self._members
        ids.sort(key=lambda i: i != self._id and members[i].status > _SUSPECT)
        budget = MAX_STREAM_MESSAGE_BYTES - 1024
        out: list[str] = []
        for node_id in ids:
            a = self.statement(node_id)
            st = self._status.get(node_id)
            budget -= (part_size(a) if a is not None else 0) + (
                part_size(st) if st is not None else 0)
            if budget < 0:
                break
            out.append(node_id)
        return out

    def _rumors(self, budget: int, max_parts: int) -> tuple[list[Message], int]:
        n = self.num_nodes()
        limit = self.config.retransmit_limit(n)
        delegate = self._delegate
        if delegate is None or not delegate.pending_broadcasts():
            return self._queue.take(budget, limit, max_parts)
        # Membership news first, but in at most half the room while items wait: churn (a
        # hostile member accusing others at full rate, and their refutations) must not
        # starve policy and revocation rumors. Membership then takes what items left.
        out, used = self._queue.take(budget // 2, limit, max_parts)
        if len(out) < max_parts and budget - used > 16:
            more, extra = delegate.broadcasts(budget - used, n, max_parts - len(out))
            out += more
            used += extra
        if len(out) < max_parts and budget - used > 16:
            rest, extra = self._queue.take(budget - used, limit, max_parts - len(out))
            out += rest
            used += extra
        return out, used

    def _datagram(self, to: str, primary: Message, extra: tuple[Message, ...] = ()) -> Send:
        """``primary`` (+ ``extra``) with as many rumors piggybacked as the datagram holds."""
        budget = _DATAGRAM_BUDGET - part_size(primary) - sum(part_size(e) for e in extra)
        rumors = self._rumors(budget, MAX_COMPOUND_PARTS - 1 - len(extra))[0]
        if not rumors and not extra:
            return Send(to, primary)
        return Send(to, Compound((primary, *extra, *rumors)))
