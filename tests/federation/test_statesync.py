"""State sync: validator gate, versions, conflicts, anti-entropy, bounds."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation import statesync
from federation.config import GossipConfig
from federation.errors import MalformedInput
from federation.messages import (
    DigestEntry,
    Item,
    ItemKind,
    ItemRef,
    Message,
    Send,
    StateDigest,
    StatePush,
    StateRequest,
)
from federation.statesync import (
    ACCEPT,
    Conflict,
    ItemAccepted,
    ItemRejected,
    Reject,
    StateSync,
    Verdict,
)
from federation.testing import AcceptNewer

POLICY = ItemKind.POLICY_BUNDLE
CHECKPOINT = ItemKind.AUDIT_CHECKPOINT


class Recorder(AcceptNewer):
    """AcceptNewer that remembers what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[Item, Item | None]] = []

    def validate(self, item: Item, current: Item | None) -> Verdict:
        self.calls.append((item, current))
        return super().validate(item, current)


class Directory:
    """Peers whose signed address is "<name>:1" for node "node-<name>"; no anti-entropy."""

    def random_peer_address(self) -> str | None:
        return None

    def num_nodes(self) -> int:
        return 2

    def address_of(self, node_id: str) -> str | None:
        return f"{node_id.removeprefix('node-')}:1" if node_id.startswith("node-") else None


def store(name: str = "a", validator: statesync.Validator | None = None,
          page: int = 512) -> StateSync:
    s = StateSync(f"node-{name}", f"{name}:1", GossipConfig(digest_page_entries=page,
                                                          anti_entropy_interval=0.0),
                  validator or AcceptNewer(), random.Random(name))
    s.set_peers(Directory())
    return s


def item(version: int, value: bytes = b"v", key: str = "policy", kind: ItemKind = POLICY,
         origin: str = "authority") -> Item:
    return Item(origin, kind, key, version, value)


def rumors(s: StateSync) -> list[Message]:
    return s.broadcasts(10_000, 10, 64)[0]


def test_put_accepts_newer_ignores_stale_and_duplicates() -> None:
    s = store()
    [ev] = s.put(item(1), 0.0)
    assert isinstance(ev, ItemAccepted) and ev.previous is None and ev.source is None
    [ev] = s.put(item(2, b"w"), 0.0)
    assert isinstance(ev, ItemAccepted) and ev.previous == item(1)
    assert s.put(item(1), 0.0) == []  # stale: ignored, not even validated
    assert s.put(item(2, b"w"), 0.0) == []  # duplicate
    assert s.get("authority", POLICY, "policy") == item(2, b"w")
    assert s.stats["stale"] == 1 and s.stats["duplicates"] == 1


def test_rejected_items_are_not_stored_nor_rumored() -> None:
    s = store()
    [ev] = s.put(item(3, b"forged signature"), 0.0)
    assert isinstance(ev, ItemRejected) and "signature" in ev.reason
    assert s.get("authority", POLICY, "policy") is None
    assert rumors(s) == []
    # Received from a peer: same outcome, and the sender is named.
    [ev] = s.receive("evil:1", item(4, b"forged"), 0.0)
    assert isinstance(ev, ItemRejected) and ev.source == "evil:1"
    assert len(s) == 0 and rumors(s) == []


def test_validator_sees_current_value() -> None:
    v = Recorder()
    s = store(validator=v)
    s.put(item(1), 0.0)
    s.put(item(5, b"x"), 0.0)
    assert v.calls == [(item(1), None), (item(5, b"x"), item(1))]


def test_conflict_at_equal_version_is_reported_kept_and_rumored() -> None:
    v = Recorder()
    s = store(validator=v)
    s.put(item(7, b"A", kind=CHECKPOINT), 0.0)
    rumors(s)  # drain
    [ev] = s.receive("b:1", item(7, b"B", kind=CHECKPOINT), 0.0)
    assert isinstance(ev, Conflict)
    assert ev.held == item(7, b"A", kind=CHECKPOINT) and ev.item.value == b"B"
    # The newcomer was judged on its own (current=None), not as a rollback.
    assert v.calls[-1] == (item(7, b"B", kind=CHECKPOINT), None)
    assert [i.value for i in s.values("authority", CHECKPOINT, "policy")] == [b"A", b"B"]
    assert sorted(i.value for i in rumors(s)) == [b"A", b"B"]  # type: ignore[union-attr]
    # Seen again: nothing new.
    assert s.receive("c:1", item(7, b"B", kind=CHECKPOINT), 0.0) == []
    # A newer version supersedes both; the evidence was already handed out as an event.
    s.put(item(8, b"C", kind=CHECKPOINT), 0.0)
    assert s.values("authority", CHECKPOINT, "policy") == [item(8, b"C", kind=CHECKPOINT)]


def test_forged_conflicting_value_is_refused() -> None:
    s = store()
    s.put(item(7, b"A"), 0.0)
    [ev] = s.receive("evil:1", item(7, b"forged B"), 0.0)
    assert isinstance(ev, ItemRejected) and "conflicting" in ev.reason
    assert s.values("authority", POLICY, "policy") == [item(7, b"A")]


def test_put_checks_wire_limits() -> None:
    s = store()
    with pytest.raises(MalformedInput, match="key must be at most"):
        s.put(item(1, key="k" * 1000), 0.0)
    with pytest.raises(MalformedInput, match="origin"):
        s.put(item(1, origin=""), 0.0)


def test_large_items_skip_rumors_but_travel_by_anti_entropy() -> None:
    a, b = store("a"), store("b")
    big = item(1, b"x" * 5000)
    a.put(big, 0.0)
    assert rumors(a) == []
    settle(a, b)
    assert b.get("authority", POLICY, "policy") == big


def test_per_origin_limit_refuses_new_slots_but_not_updates(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(statesync, "MAX_ITEMS_PER_ORIGIN", 2)
    s = store()
    s.put(item(1, key="a"), 0.0)
    s.put(item(1, key="b"), 0.0)
    [ev] = s.put(item(1, key="c"), 0.0)
    assert isinstance(ev, ItemRejected) and "MAX_ITEMS_PER_ORIGIN" in ev.reason
    [ev] = s.put(item(2, key="a"), 0.0)  # existing slot still advances
    assert isinstance(ev, ItemAccepted)
    [ev] = s.put(item(1, key="c", origin="other"), 0.0)  # other origins unaffected
    assert isinstance(ev, ItemAccepted)


# --- anti-entropy ------------------------------------------------------------------------


def exchange(a: StateSync, b: StateSync) -> int:
    """One digest exchange a -> b, delivering every reply until quiet. Returns messages."""
    stores = {"a:1": a, "b:1": b, a._address: a, b._address: b}
    inflight: list[tuple[str, Send]] = [(a._address, a.exchange_with(b._address))]
    count = 0
    while inflight:
        sender, send = inflight.pop(0)
        assert send.reliable
        count += 1
        target = stores[send.to]
        for eff in target.receive(sender, send.msg, 0.0):
            if isinstance(eff, Send):
                inflight.append((target._address, eff))
    return count


def settle(a: StateSync, b: StateSync, rounds: int = 50) -> None:
    for _ in range(rounds):
        exchange(a, b)
        exchange(b, a)


def snapshot(s: StateSync) -> dict[tuple[str, int, str], tuple[int, frozenset[bytes]]]:
    out = {}
    for it in s.items():
        vals = s.values(it.origin, it.kind, it.key)
        out[(it.origin, int(it.kind), it.key)] = (
            it.version, frozenset(hashlib.sha256(v.value).digest() for v in vals))
    return out


slot_items = st.builds(
    item, st.integers(1, 4), st.sampled_from([b"A", b"B", b"C"]),
    st.sampled_from(["k1", "k2", "k3", "k4", "k5"]), st.sampled_from([POLICY, CHECKPOINT]),
    st.sampled_from(["o1", "o2", "o3"]))


@given(st.lists(slot_items, max_size=25), st.lists(slot_items, max_size=25),
       st.integers(1, 6))
@settings(max_examples=150, deadline=None)
def test_anti_entropy_converges_to_highest_versions_and_all_conflicts(
        xs: list[Item], ys: list[Item], page: int) -> None:
    """Invariant: after enough digest exchanges (any page size), both stores hold, for
    every slot either held, the highest version either held and, at that version, every
    value either held - so a conflict anywhere becomes visible everywhere."""
    a, b = store("a", page=page), store("b", page=page)
    for it in xs:
        a.put(it, 0.0)
    for it in ys:
        b.put(it, 0.0)
    expected: dict[tuple[str, int, str], tuple[int, frozenset[bytes]]] = {}
    for snap in (snapshot(a), snapshot(b)):
        for k, (ver, hashes) in snap.items():
            cur = expected.get(k)
            if cur is None or ver > cur[0]:
                expected[k] = (ver, hashes)
            elif ver == cur[0]:
                expected[k] = (ver, cur[1] | hashes)
    settle(a, b, rounds=2 * (len(expected) // page + 2))
    assert snapshot(a) == expected
    assert snapshot(b) == expected


def test_digest_entries_outside_the_declared_range_are_ignored() -> None:
    b = store("b")
    lower = ItemRef("m", POLICY, "z")
    upper = ItemRef("n", POLICY, "z")
    outside = DigestEntry("zzz", POLICY, "k", 9, b"h" * 32)
    inside = DigestEntry("mm", POLICY, "k", 9, b"h" * 32)
    effects = b.receive("a:1", StateDigest("node-a", "a:1", lower, upper, (outside, inside)), 0)
    [req] = [e.msg for e in effects if isinstance(e, Send)]
    assert isinstance(req, StateRequest) and req.wants == (inside,)


def test_request_is_answered_only_with_stored_values() -> None:
    a = store("a")
    a.put(item(3, b"A"), 0.0)
    held = DigestEntry("authority", POLICY, "policy", 3, hashlib.sha256(b"A").digest())
    other = DigestEntry("authority", POLICY, "policy", 3, hashlib.sha256(b"B").digest())
    older = DigestEntry("authority", POLICY, "policy", 2, hashlib.sha256(b"A").digest())
    effects = a.receive("b:1", StateRequest("node-b", "b:1", (held, other, older)), 0.0)
    [push] = [e.msg for e in effects if isinstance(e, Send)]
    assert isinstance(push, StatePush) and push.items == (item(3, b"A"),)


def test_tick_sends_a_digest_to_a_random_peer_once_per_period() -> None:
    class Peers:
        def random_peer_address(self) -> str | None:
            return "b:1"

        def num_nodes(self) -> int:
            return 10

        def address_of(self, node_id: str) -> str | None:
            return None

    s = StateSync("node-a", "a:1", GossipConfig(anti_entropy_interval=30.0), AcceptNewer(),
                  random.Random(1), Peers())
    assert s.tick(0.0) == []  # first tick picks a random phase
    first = s.next_deadline()
    assert 0.0 <= first <= 30.0
    [send] = s.tick(first)
    assert isinstance(send, Send)
    assert send.to == "b:1" and send.reliable and isinstance(send.msg, StateDigest)
    assert s.tick(first + 29.0) == []
    assert len(s.tick(first + 30.0)) == 1


def test_reject_helpers() -> None:
    assert Reject("x").reason == "x"
    assert statesync.Accept() == ACCEPT


def test_answers_go_to_the_senders_signed_address_never_to_the_one_it_names() -> None:
    a = store("a")
    a.put(item(3, b"A"), 0.0)
    digest = StateDigest("node-b", "203.0.113.7:443", None, None, ())
    sends = [e for e in a.receive("x:1", digest, 0.0) if isinstance(e, Send)]
    assert sends and {s.to for s in sends} == {"b:1"}  # node-b's signed address
    stranger = StateDigest("stranger", "203.0.113.7:443", None, None, ())
    assert a.receive("x:1", stranger, 0.0) == []  # not a member: no address to answer
    assert a.stats["unknown_source"] == 1
    want = DigestEntry("authority", POLICY, "policy", 3,
                       hashlib.sha256(b"A").digest())
    assert a.receive("x:1", StateRequest("stranger", "203.0.113.7:443", (want,)), 0.0) == []
