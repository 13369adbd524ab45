"""Membership state machine (SWIM + Lifeguard) driven by hand, plus its config and queue."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation import limits
from federation.config import ClusterConfig, GossipConfig, MembershipConfig, lan, local, wan
from federation.membership import (
    BroadcastQueue,
    MemberDead,
    MemberJoined,
    MemberLeft,
    Membership,
    MemberSuspected,
)
from federation.messages import (
    Ack,
    Alive,
    Compound,
    Dead,
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
    encoded_size,
)

LAN = MembershipConfig.lan()
ALIVE, SUSPECT, DEAD, LEFT = (MemberStatus.ALIVE, MemberStatus.SUSPECT, MemberStatus.DEAD,
                              MemberStatus.LEFT)


def node(name: str = "me", peers: int = 0, cfg: MembershipConfig = LAN,
         seed: int = 1) -> Membership:
    m = Membership(name, f"{name}:1", cfg, random.Random(seed))
    m.restore([Member(f"p{i}", f"p{i}:1", 0, ALIVE, b"") for i in range(peers)], 0.0)
    return m


def sends(effects: Sequence[object]) -> list[Send]:
    return [e for e in effects if isinstance(e, Send)]


def parts(msg: Message) -> list[Message]:
    return list(msg.parts) if isinstance(msg, Compound) else [msg]


def first(effects: Sequence[object], kind: type) -> tuple[Send, object]:
    for s in sends(effects):
        for p in parts(s.msg):
            if isinstance(p, kind):
                return s, p
    raise AssertionError(f"no {kind.__name__} in {effects}")


def run_until_probe(m: Membership, start: float = 0.0) -> tuple[float, Send, Ping]:
    """Tick at deadlines until a probe goes out; return (time, send, ping)."""
    now = start
    for _ in range(100):
        effects = m.tick(now)
        for s in sends(effects):
            for p in parts(s.msg):
                if isinstance(p, Ping):
                    return now, s, p
        now = max(now, m.next_deadline())
    raise AssertionError("no probe sent")


# --- probing ---------------------------------------------------------------------------------


def test_ping_is_acked_to_the_signed_address_and_misdirected_ping_ignored() -> None:
    m = node(peers=1)
    # The datagram's source (x:9) and the ping's source_addr are not destinations: the
    # ack goes where p0 signed it lives (no reflection).
    [s] = sends(m.receive("x:9", Ping(5, "p0", "evil:53", "me"), 0.0))
    assert s.to == "p0:1" and parts(s.msg)[0] == Ack(5, "me") and not s.reliable
    assert m.receive("x:9", Ping(6, "p0", "p0:1", "someone-else"), 0.0) == []
    assert m.stats["misdirected_pings"] == 1
    # A pinger that is not a member gets no answer at all.
    assert m.receive("x:9", Ping(7, "stranger", "x:9", "me"), 0.0) == []
    assert m.stats["unknown_pinger"] == 1


def test_acked_probe_raises_no_suspicion() -> None:
    m = node(peers=5)
    t, s, ping = run_until_probe(m)
    m.receive(s.to, Ack(ping.seq, ping.target_id), t + 0.01)
    effects = m.tick(t + 5.0)
    assert not [e for e in effects if isinstance(e, MemberSuspected)]
    assert m.member(ping.target_id).status is ALIVE  # type: ignore[union-attr]


def test_missed_ack_asks_others_then_suspects_and_hurts_local_health() -> None:
    m = node(peers=6)
    t, _s, ping = run_until_probe(m)
    effects = m.tick(t + LAN.probe_timeout)
    reqs = [(x.to, p) for x in sends(effects) for p in parts(x.msg) if isinstance(p, PingReq)]
    assert len(reqs) == LAN.indirect_checks
    assert all(p.target_id == ping.target_id and p.seq == ping.seq and p.want_nack
               for _, p in reqs)
    assert ping.target_id + ":1" not in {to for to, _ in reqs}
    effects = m.tick(t + LAN.probe_interval)
    [ev] = [e for e in effects if isinstance(e, MemberSuspected)]
    assert ev.member.node_id == ping.target_id and ev.member.status is SUSPECT
    # No nack from any of the three relays: we are probably the sick one.
    assert m.awareness == LAN.indirect_checks


def test_nacks_from_relays_keep_local_health() -> None:
    m = node(peers=6)
    t, _s, ping = run_until_probe(m)
    effects = m.tick(t + LAN.probe_timeout)
    for x in sends(effects):
        for p in parts(x.msg):
            if isinstance(p, PingReq):
                m.receive(x.to, Nack(p.seq, x.to.split(":")[0]), t + 0.6)
    m.tick(t + LAN.probe_interval)
    assert m.member(ping.target_id).status is SUSPECT  # type: ignore[union-attr]
    assert m.awareness == 0


def test_indirect_ack_counts_as_success() -> None:
    m = node(peers=6)
    t, _s, ping = run_until_probe(m)
    effects = m.tick(t + LAN.probe_timeout)
    relay, req = first(effects, PingReq)
    m.receive(relay.to, Ack(req.seq, ping.target_id), t + 0.7)  # type: ignore[attr-defined]
    m.tick(t + 5)
    assert m.member(ping.target_id).status is ALIVE  # type: ignore[union-attr]


def test_relay_forwards_ack_or_nacks_after_timeout() -> None:
    m = node(peers=2)
    m.tick(0.0)
    # The target address in the request is ignored: p1 is probed where it signed it is.
    effects = m.receive("p0:7", PingReq(41, "p0", "p0:1", "p1", "victim:53", True), 1.0)
    s, ping = first(effects, Ping)
    assert s.to == "p1:1" and ping == Ping(41, "me", "me:1", "p1", "p0")
    # The target's ack (signed for p0) is forwarded unchanged to p0's signed address.
    ack = Ack(41, "p1", "p0")
    effects = m.receive("p1:1", ack, 1.1)
    s, fwd = first(effects, Ack)
    assert s.to == "p0:1" and fwd is ack
    # Second request: the target stays silent, the requester gets a nack.
    effects = m.receive("p0:7", PingReq(42, "p0", "p0:1", "p1", "p1:1", True), 2.0)
    assert m.next_deadline() <= 2.0 + LAN.probe_timeout
    s, nack = first(m.tick(2.0 + LAN.probe_timeout), Nack)
    assert s.to == "p0:1" and nack == Nack(42, "me")
    # Requests about, or from, non-members are refused.
    assert m.receive("p0:7", PingReq(43, "p0", "p0:1", "ghost", "victim:53", True), 3.0) == []
    assert m.receive("x:7", PingReq(44, "ghost", "x:7", "p1", "p1:1", True), 3.0) == []
    assert m.stats["relays_refused"] == 2


def test_buddy_system_puts_the_suspicion_in_the_ping() -> None:
    m = node(peers=1)
    m.receive("p0:1", Suspect("p0", 0, "other"), 0.0)
    _, s, _ping = run_until_probe(m)
    assert Suspect("p0", 0, "other") in parts(s.msg)  # the accusation, unchanged


# --- suspicion, refutation, precedence -------------------------------------------------------


@given(st.integers(0, 50), st.integers(0, 60), st.sampled_from(["suspect", "dead", "left"]))
def test_accused_node_refutes_with_higher_incarnation(own: int, accused: int,
                                                     kind: str) -> None:
    """Invariant: a node told it is suspect/dead/left at an incarnation >= its own moves
    to a strictly higher incarnation and its next datagram carries alive(self) with it;
    older accusations change nothing."""
    m = Membership("me", "me:1", LAN, random.Random(0), incarnation=own)
    m.restore([Member("p0", "p0:1", 0, ALIVE, b"")], 0.0)
    accusations: dict[str, Message] = {
        "suspect": Suspect("me", accused, "p0"), "dead": Dead("me", accused, "p0"),
        "left": Left("me", accused)}
    msg = accusations[kind]
    m.receive("p0:1", msg, 0.0)
    if accused < own:
        assert m.incarnation == own
        return
    assert m.incarnation == max(own, accused) + 1
    [s] = sends(m.receive("p0:1", Ping(1, "p0", "p0:1", "me"), 0.1))
    assert Alive("me", "me:1", m.incarnation, b"") in parts(s.msg)


RANK = {ALIVE: 0, SUSPECT: 1, DEAD: 2, LEFT: 3}
rumor = st.one_of(
    st.builds(lambda i: Alive("x", "x:1", i, b""), st.integers(0, 5)),
    st.builds(lambda i, f: Suspect("x", i, f), st.integers(0, 5), st.sampled_from("abc")),
    st.builds(lambda i, f: Dead("x", i, f), st.integers(0, 5), st.sampled_from("abc")),
    st.builds(lambda i: Left("x", i), st.integers(0, 5)),
)


@given(st.lists(rumor, max_size=30))
@settings(max_examples=300)
def test_news_about_a_member_only_moves_forward(msgs: list[Message]) -> None:
    """Invariant: whatever order rumors arrive in, the record held about a member only
    moves forward in (incarnation, alive < suspect < dead < left) order - so stale news
    can never resurrect a dead node or hide a newer refutation."""
    m = node(peers=0)
    m.receive("x:1", Alive("x", "x:1", 0, b""), 0.0)
    prev = (0, 0)
    for i, msg in enumerate(msgs):
        m.receive("y:1", msg, float(i))
        rec = m.member("x")
        assert rec is not None
        cur = (rec.incarnation, RANK[rec.status])
        assert cur >= prev
        prev = cur


def test_lifeguard_confirmations_shrink_the_suspicion_timeout() -> None:
    def dead_at(confirmers: list[str]) -> float:
        m = node(peers=10)
        m.receive("p1:1", Suspect("p0", 0, "p1"), 0.0)
        for c in confirmers:
            m.receive(f"{c}:1", Suspect("p0", 0, c), 0.5)
        now = 0.5
        while now < 200:
            now = max(now + 0.001, m.next_deadline())
            for e in m.tick(now):
                # Keep probes from interfering: ack whatever is pinged, except p0.
                if isinstance(e, MemberDead) and e.member.node_id == "p0":
                    return now
        raise AssertionError("never declared dead")

    n = 11
    lo, hi = LAN.suspicion_timeout(n), LAN.suspicion_max_timeout(n)
    assert LAN.confirmations_wanted(n) == 2
    assert dead_at([]) == pytest.approx(hi, abs=0.01)
    one = dead_at(["p2"])
    frac = math.log(2) / math.log(3)
    assert one == pytest.approx(hi - frac * (hi - lo), abs=0.01)
    assert dead_at(["p2", "p3"]) == pytest.approx(lo, abs=0.01)
    # The accuser itself and repeats do not count as independent confirmations.
    assert dead_at(["p1", "p2", "p2"]) == pytest.approx(one, abs=0.01)


def test_isolated_node_slows_its_own_probing() -> None:
    """Lifeguard: with no acks and no nacks at all, awareness climbs to its cap and the
    probe interval stretches by (awareness + 1)."""
    m = node(peers=20)
    now, pings = 0.0, []
    while now < 120:
        for s in sends(m.tick(now)):
            if any(isinstance(p, Ping) for p in parts(s.msg)):
                pings.append(now)
        now = max(now + 0.001, m.next_deadline())
    assert m.awareness == LAN.awareness_max_multiplier - 1
    late_gaps = [b - a for a, b in zip(pings[-5:], pings[-4:], strict=False)]
    assert min(late_gaps) >= LAN.probe_interval * LAN.awareness_max_multiplier - 0.01


def test_remote_dead_becomes_local_suspicion_and_self_dead_is_refuted() -> None:
    m = node(peers=3)
    table = (Alive("q", "q:1", 0, b""), Alive("p0", "p0:1", 0, b""),
             Alive("me", "me:1", 0, b""), Alive("new", "new:1", 2, b"m"),
             Dead("p0", 0, "q"), Dead("me", 0, "q"))
    effects = m.receive("q:1", MemberPushPull("q", "q:1", False, False, table), 0.0)
    assert m.member("p0").status is SUSPECT  # type: ignore[union-attr]
    assert m.incarnation == 1
    joined = {e.member.node_id for e in effects if isinstance(e, MemberJoined)}
    assert joined == {"q", "new"}
    [reply] = [s for s in sends(effects) if s.reliable]
    assert reply.to == "q:1" and isinstance(reply.msg, MemberPushPull) and reply.msg.reply
    assert {r.node_id for r in reply.msg.statements} >= {"me", "q", "p0", "new"}


def test_ping_from_a_member_we_hold_dead_tells_it_so() -> None:
    m = node(peers=2)
    m.receive("x:1", Dead("p0", 0, "x"), 0.0)
    [s] = sends(m.receive("p0:1", Ping(3, "p0", "p0:1", "me"), 1.0))
    assert Dead("p0", 0, "x") in parts(s.msg)


def test_leave_is_gossiped_as_left_not_dead() -> None:
    m = node(peers=3)
    m.tick(0.0)
    assert m.leave(1.0) == []
    assert not m.leave_complete()
    now, lefts = 1.0, 0
    while not m.leave_complete() and now < 30:
        for s in sends(m.tick(now)):
            assert not any(isinstance(p, Ping) for p in parts(s.msg))  # no probing
            lefts += sum(isinstance(p, Left) for p in parts(s.msg))
        now = max(now + 0.001, m.next_deadline())
    assert m.leave_complete() and lefts == LAN.retransmit_limit(4)
    # The receiving side marks it left, and later suspicion at that incarnation is moot.
    other = node("p0", peers=0)
    other.receive("me:1", Alive("me", "me:1", 0, b""), 0.0)
    [ev] = other.receive("me:1", Left("me", 0), 1.0)
    assert isinstance(ev, MemberLeft) and ev.member.status is LEFT
    assert other.receive("x:1", Dead("me", 0, "x"), 2.0) == []
    assert other.receive("x:1", Alive("me", "me:1", 0, b""), 2.0) == []


def test_seeds_are_retried_with_backoff_until_one_answers() -> None:
    cfg = MembershipConfig.lan()
    m = Membership("me", "me:1", cfg, random.Random(3))
    effects = m.join(["s:1", "me:1", "s:1"], 0.0)
    assert [(s.to, s.reliable) for s in sends(effects)] == [("s:1", True)]
    times = []
    now = 0.0
    while now < 400:
        now = max(now + 0.001, m.next_deadline())
        if any(s.to == "s:1" and isinstance(s.msg, MemberPushPull) and s.msg.join
               for s in sends(m.tick(now))):
            times.append(now)
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    assert gaps[0] < gaps[1] < gaps[2] < gaps[3]  # exponential back-off...
    assert max(gaps) <= cfg.seed_retry_max + 1e-9  # ...capped
    # The seed answers: retries stop.
    reply = MemberPushPull("s", "s:1", False, True, (Alive("s", "s:1", 0, b""),))
    m.receive("s:1", reply, now)
    later = []
    for _ in range(200):
        now = max(now + 0.001, m.next_deadline())
        for s in sends(m.tick(now)):
            later += [s] if isinstance(s.msg, MemberPushPull) and s.msg.join else []
            for p in parts(s.msg):
                if isinstance(p, Ping):  # the seed is healthy and answers probes
                    m.receive("s:1", Ack(p.seq, "s"), now + 0.001)
    assert later == [] and m.member("s").status is ALIVE  # type: ignore[union-attr]
    # Once every known member is gone, the node falls back to its seeds by itself.
    m.receive("x:1", Dead("s", 0, "x"), now)
    rejoin = []
    for _ in range(100):
        now = max(now + 0.001, m.next_deadline())
        rejoin += [s for s in sends(m.tick(now)) if isinstance(s.msg, MemberPushPull)
                   and s.msg.join]
    assert rejoin and rejoin[0].to == "s:1"


@given(st.integers(1, 40), st.integers(0, limits.MAX_META_BYTES))
@settings(max_examples=25, deadline=None)
def test_every_datagram_fits_the_budget(rumors: int, meta_len: int) -> None:
    """Invariant: however many rumors are queued (long ids, full meta), every datagram the
    core builds encodes within MAX_DATAGRAM_PAYLOAD; reliable messages may be larger."""
    m = node(peers=5)
    for i in range(rumors):
        name = f"n{i:03d}" + "x" * 100
        m.receive("z:1", Alive(name, name + ":1", i, b"m" * meta_len), 0.0)
    now = 0.0
    for _ in range(60):
        for s in sends(m.tick(now)):
            if not s.reliable:
                assert encoded_size(s.msg) <= limits.MAX_DATAGRAM_PAYLOAD
        now = max(now + 0.001, m.next_deadline())


# --- broadcast queue ---------------------------------------------------------------------------


def test_queue_newer_news_replaces_older_and_respects_limit_and_budget() -> None:
    q = BroadcastQueue(max_len=100)
    q.push("x", Suspect("x", 1, "a"))
    q.push("x", Alive("x", "x:1", 2, b""))  # refutation cancels the pending suspicion
    assert len(q) == 1
    for _ in range(3):
        msgs, _ = q.take(1000, 3, 64)
        assert msgs == [Alive("x", "x:1", 2, b"")]
    assert len(q) == 0 and q.take(1000, 3, 64) == ([], 0)
    for i in range(10):
        q.push(i, Alive(f"n{i}", "a:1", 0, b"m" * 50))
    msgs, used = q.take(200, 5, 64)
    assert 1 <= len(msgs) <= 3 and used <= 200
    assert msgs[0] == Alive("n9", "a:1", 0, b"m" * 50)  # newest first among equals
    q2 = BroadcastQueue(max_len=3)
    for i in range(5):
        q2.push(i, Dead(f"n{i}", 0, "a"))
    assert len(q2) == 3


# --- config ------------------------------------------------------------------------------------


def test_presets_match_memberlist() -> None:
    c = lan().membership
    assert (c.probe_interval, c.probe_timeout, c.indirect_checks, c.suspicion_mult,
            c.gossip_interval, c.gossip_nodes, c.retransmit_mult, c.push_pull_interval,
            c.awareness_max_multiplier, c.suspicion_max_timeout_mult) == (
        1.0, 0.5, 3, 4, 0.2, 3, 4, 30.0, 8, 6)
    w = wan().membership
    assert (w.probe_interval, w.probe_timeout, w.suspicion_mult, w.gossip_interval,
            w.gossip_nodes, w.push_pull_interval) == (5.0, 3.0, 6, 0.5, 4, 60.0)
    lo = local().membership
    assert (lo.probe_timeout, lo.indirect_checks, lo.gossip_interval, lo.suspicion_mult) == (
        0.2, 1, 0.1, 3)
    assert ClusterConfig.local().gossip == GossipConfig.local()


def test_formulas() -> None:
    c = MembershipConfig()
    assert c.suspicion_timeout(1) == c.suspicion_timeout(10) == 4.0  # log10 floored at 1
    assert c.suspicion_timeout(1000) == pytest.approx(12.0)
    assert c.suspicion_max_timeout(1000) == pytest.approx(72.0)
    assert c.retransmit_limit(9) == 4 and c.retransmit_limit(1000) == 16
    assert c.confirmations_wanted(3) == 0 and c.confirmations_wanted(100) == 2
    assert c.push_pull_period(32) == 30.0 and c.push_pull_period(1000) == 180.0
    assert c.scaled(0.5, 3) == 2.0


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("probe_timeout", 2.0, "probe_timeout must be in (0, 1]"),
    ("probe_interval", 0.0, "probe_interval must be in (0, 3600]"),
    ("indirect_checks", 99, "indirect_checks must be in [0, 16]"),
    ("gossip_nodes", 1.5, "gossip_nodes must be an integer in [1, 64]"),
    ("seed_retry_max", 0.5, "seed_retry_max must be in [1, 86400]"),
])
def test_config_validation_names_the_range(field: str, value: object, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        MembershipConfig(**{field: value})  # type: ignore[arg-type]
    assert fragment in str(info.value)
    with pytest.raises(ValueError, match=r"digest_page_entries must be .*\[1, 512\]"):
        GossipConfig(digest_page_entries=10_000)


def test_constructor_checks_identity_bounds() -> None:
    with pytest.raises(ValueError, match="node id"):
        Membership("x" * 500, "a:1", LAN, random.Random(0))
    with pytest.raises(ValueError, match="meta"):
        Membership("x", "a:1", LAN, random.Random(0), meta=b"m" * 10_000)


def test_dead_member_is_reported_once() -> None:
    m = node(peers=3)
    evs = m.receive("x:1", Dead("p0", 0, "x"), 0.0)
    assert [type(e) for e in evs] == [MemberDead]
    assert m.receive("x:1", Dead("p0", 0, "y"), 0.0) == []
    assert m.receive("x:1", Suspect("p0", 0, "y"), 0.0) == []


def test_forged_maximal_accusation_neither_crashes_nor_overflows() -> None:
    m = node(peers=1)
    m.receive("evil:1", Suspect("me", limits.MAX_UINT, "evil"), 0.0)
    assert m.incarnation == 0 and m.stats["unrefutable"] == 1
    [s] = sends(m.receive("p0:1", Ping(1, "p0", "p0:1", "me"), 0.1))
    assert encoded_size(s.msg) <= limits.MAX_DATAGRAM_PAYLOAD


def test_push_pull_table_fits_the_stream_limit_keeping_live_members_first() -> None:
    m = Membership("me", "me:1", LAN, random.Random(0))
    long = "x" * 120
    m.restore([Member(f"n{i:05d}{long}", "a" * 250, 0, ALIVE if i % 2 else DEAD, b"m" * 512)
               for i in range(9000)], 0.0)
    effects = m.receive("q:1", MemberPushPull("q", "q:1", False, False,
                                              (Alive("q", "q:1", 0, b""),)), 0.0)
    [reply] = [s for s in sends(effects) if s.reliable]
    assert isinstance(reply.msg, MemberPushPull)
    assert encoded_size(reply.msg) <= limits.MAX_STREAM_MESSAGE_BYTES
    rows = reply.msg.statements
    assert rows[0].node_id == "me"
    live = {f"n{i:05d}" for i in range(1, 9000, 2)}
    assert live <= {r.node_id[:6] for r in rows}  # every live member, and us


def test_introduce_sends_one_join_push_pull_and_keeps_the_seeds() -> None:
    import random

    from federation.config import MembershipConfig
    from federation.membership import Membership
    from federation.messages import MemberPushPull, Send

    ms = Membership("a", "10.0.0.1:1", MembershipConfig.local(), random.Random(1))
    ms.join(["10.0.0.9:1"], 0.0)
    effects = ms.introduce("10.0.0.2:1", 0.1)
    assert len(effects) == 1
    send = effects[0]
    assert isinstance(send, Send) and send.reliable and send.to == "10.0.0.2:1"
    assert isinstance(send.msg, MemberPushPull) and send.msg.join
    assert ms.introduce("10.0.0.1:1", 0.2) == []  # never ourselves
    assert ms._seeds == ["10.0.0.9:1"]


def test_a_leaving_node_does_not_ask_to_be_woken_in_the_past() -> None:
    """Invariant: after tick(now), next_deadline() > now — also while leaving (a deadline stuck
    in the past makes the I/O loop spin)."""
    import random

    from federation.config import MembershipConfig
    from federation.membership import Membership

    ms = Membership("a", "10.0.0.1:1", MembershipConfig.local(), random.Random(3))
    ms.join(["10.0.0.2:1"], 0.0)
    ms.tick(0.0)
    ms.leave(0.5)
    for now in (1.0, 2.0, 5.0):
        ms.tick(now)
        assert ms.next_deadline() > now
