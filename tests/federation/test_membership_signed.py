"""Signed membership in the core: who must sign what, void accusations, acks, admission."""

from __future__ import annotations

import random

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation import limits
from federation.config import MembershipConfig
from federation.membership import MemberJoined, Membership, MemberSuspected
from federation.messages import (
    Ack,
    Alive,
    Compound,
    Dead,
    Left,
    MemberPushPull,
    MemberStatus,
    Nack,
    Ping,
    PingReq,
    Send,
    Suspect,
    sources_match,
)
from federation.statements import Ed25519Signer, StatementVerifier, sign, signed_bytes

LAN = MembershipConfig.lan()
KEYS = {name: Ed25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32)
        for i, name in enumerate(["me", "evil", "late", *(f"p{j}" for j in range(12))])}


def signer(name: str) -> Ed25519Signer:
    return Ed25519Signer(KEYS[name])


def verifier(known: set[str] | None = None) -> StatementVerifier:
    names = set(KEYS) - {"late"} if known is None else known
    return StatementVerifier(lambda n: KEYS[n].public_key() if n in names else None)


def alive(name: str, inc: int = 0, address: str | None = None) -> Alive:
    return sign(signer(name), Alive(name, address or f"{name}:1", inc, b""))


def node(peers: int = 3, known: set[str] | None = None) -> Membership:
    m = Membership("me", "me:1", LAN, random.Random(1), signer=signer("me"),
                   verifier=verifier(known))
    m.restore([alive(f"p{i}") for i in range(peers)], 0.0)
    return m


def sends(effects: list[object]) -> list[Send]:
    return [e for e in effects if isinstance(e, Send)]


def test_statements_verify_once_and_forgeries_are_refused() -> None:
    v = verifier()
    good = alive("p0", 3)
    assert v.check(good) is True and v.check(good) is True
    assert v.stats["verifications"] == 1 and v.stats["cache_hits"] == 1
    assert v.check(sign(signer("evil"), Alive("p0", "evil:1", 4, b""))) is False
    assert v.check(Alive("p0", "evil:1", 4, b"")) is False  # unsigned
    assert v.check(alive("late")) is None  # no certificate known yet
    assert signed_bytes(good).startswith(b"outpost.member-statement/1\x00")
    # Accusations are the accuser's, relayed acks the acker's.
    assert v.check(sign(signer("p1"), Suspect("p0", 0, "p1"))) is True
    assert v.check(sign(signer("evil"), Dead("p0", 0, "p1"))) is False
    assert v.check(sign(signer("p1"), Ack(7, "p1", "me"))) is True


def test_forged_alive_does_not_move_a_member_and_its_own_does() -> None:
    m = node()
    for msg in (sign(signer("evil"), Alive("p0", "evil:1", limits.MAX_UINT, b"")),
                Alive("p0", "evil:1", 5, b""), Alive("p0", "evil:1", 5, b"\1" * 64)):
        assert m.receive("evil:1", msg, 0.0) == []
    assert m.member("p0").address == "p0:1"  # type: ignore[union-attr]
    assert m.stats["invalid_statements"] == 3
    [ev] = m.receive("x:1", alive("p0", 1, "p0:2"), 0.0)
    assert m.member("p0").address == "p0:2" and m.statement("p0") == alive("p0", 1, "p0:2")  # type: ignore[union-attr]
    assert ev.__class__.__name__ == "MemberUpdated"


def test_accusations_about_unsigned_incarnations_are_void_and_cannot_exhaust() -> None:
    m = node()
    evil = signer("evil")
    assert m.receive("evil:1", sign(evil, Dead("p0", limits.MAX_UINT, "evil")), 0.0) == []
    assert m.receive("evil:1", sign(evil, Suspect("me", limits.MAX_UINT, "evil")), 0.0) == []
    assert m.receive("evil:1", sign(evil, Dead("p0", 0, "p1")), 0.0) == []  # spoofed accuser
    assert m.member("p0").status is MemberStatus.ALIVE  # type: ignore[union-attr]
    assert m.incarnation == 0 and m.stats["void_accusations"] == 2
    # A genuine accusation about us, at our incarnation, is refuted (+1, no more).
    m.receive("p1:1", sign(signer("p1"), Suspect("me", 0, "p1")), 0.0)
    assert m.incarnation == 1
    # A received dead counts as its accuser's suspicion; only our own timer kills.
    [ev] = m.receive("p1:1", sign(signer("p1"), Dead("p0", 0, "p1")), 0.0)
    assert isinstance(ev, MemberSuspected)
    # Our own alive from an earlier life (signed by our key) makes us jump past it.
    m.receive("p2:1", alive("me", 40), 1.0)
    assert m.incarnation == 41


def test_lifeguard_counts_distinct_signed_accusers_and_budgets_new_accusations() -> None:
    m = node(peers=3)
    m.tick(0.0)
    m.receive("p1:1", sign(signer("p1"), Suspect("p0", 0, "p1")), 0.0)
    for _ in range(3):  # the same accuser again, and a forged "other" accuser
        m.receive("p1:1", sign(signer("p1"), Suspect("p0", 0, "p1")), 0.1)
        m.receive("evil:1", sign(signer("evil"), Suspect("p0", 0, "p2")), 0.1)
    s = m._suspicions["p0"]
    assert s.confirmations == 0
    m.receive("p2:1", sign(signer("p2"), Suspect("p0", 0, "p2")), 0.2)
    assert s.confirmations == 1
    # One accuser's new accusations beyond its budget are not believed.
    many = node(peers=12)
    raised = [e for i in range(12) for e in many.receive(
        "evil:1", sign(signer("evil"), Suspect(f"p{i}", 0, "evil")), 0.0)
        if isinstance(e, MemberSuspected)]
    assert len(raised) == limits.ACCUSATION_BURST
    assert many.stats["accusations_throttled"] == 12 - limits.ACCUSATION_BURST


def test_acks_count_only_from_the_probed_node_and_nacks_only_from_asked_relays() -> None:
    m = node(peers=6)
    now, ping, to = 0.0, None, ""
    for _ in range(50):
        for s in sends(m.tick(now)):
            parts = s.msg.parts if isinstance(s.msg, Compound) else (s.msg,)
            for p in parts:
                if isinstance(p, Ping):
                    ping, to = p, s.to
        if ping is not None:
            break
        now = m.next_deadline()
    assert ping is not None and to == f"{ping.target_id}:1"
    target = ping.target_id
    other = next(n for n in ("p0", "p1", "p2", "p3") if n != target)
    # An ack from someone else, a forged relayed one, and one signed for someone else.
    m.receive("x:1", Ack(ping.seq, other), now)
    m.receive("x:1", Ack(ping.seq, target, "me", b"\0" * 64), now)
    m.receive("x:1", sign(signer("p0") if target != "p0" else signer("p1"),
                          Ack(ping.seq, target, "me")), now)
    m.receive("x:1", Nack(ping.seq, other), now)
    assert m._probe is not None and m._probe.nacks == 0
    assert m.stats["acks_refused"] == 2
    # The target's own signed ack, relayed by anyone, counts.
    m.receive("x:1", sign(signer(target), Ack(ping.seq, target, "me")), now)
    assert m._probe is None


def test_relay_probes_the_signed_address_and_forwards_only_the_targets_signed_ack() -> None:
    m = node(peers=2)
    m.tick(0.0)
    [s] = sends(m.receive("p0:9", PingReq(5, "p0", "p0:1", "p1", "victim:53", True), 0.0))
    assert s.to == "p1:1" and s.msg == Ping(5, "me", "me:1", "p1", "p0")
    assert m.receive("p1:1", Ack(5, "p1", "p0", b"\0" * 64), 0.1) == []  # forged
    good = sign(signer("p1"), Ack(5, "p1", "p0"))
    [fwd] = sends(m.receive("p1:1", good, 0.1))
    assert fwd.to == "p0:1" and fwd.msg is good
    # The probed side signs acks only for relayed probes.
    p1 = Membership("p1", "p1:1", LAN, random.Random(2), signer=signer("p1"),
                    verifier=verifier())
    p1.restore([alive("me"), alive("p0")], 0.0)
    [ack] = sends(p1.receive("me:1", Ping(5, "me", "me:1", "p1", "p0"), 0.0))
    assert ack.to == "me:1" and ack.msg == good
    [direct] = sends(p1.receive("me:1", Ping(6, "me", "me:1", "p1"), 0.0))
    assert direct.msg == Ack(6, "p1")


def test_admission_waits_for_a_certificate_with_a_cap_per_introducer() -> None:
    known = set(KEYS) - {"late"}
    m = node(known=known)
    assert m.receive("p0:1", alive("late"), 0.0, "p0") == []
    assert m.member("late") is None and m.pending_admissions() == 1
    evil = signer("evil")
    for i in range(limits.MAX_PENDING_PER_INTRODUCER + 10):
        m.receive("evil:1", sign(evil, Alive(f"ghost-{i}", "g:1", 0, b"")), 0.0, "evil")
    assert m.pending_admissions() == 1 + limits.MAX_PENDING_PER_INTRODUCER
    assert m.stats["pending_refused"] == 10
    known.add("late")
    [ev] = m.key_known("late", 1.0)
    assert isinstance(ev, MemberJoined) and m.member("late").status is MemberStatus.ALIVE  # type: ignore[union-attr]
    assert m.key_known("ghost-1", 1.0) == []  # still no certificate: stays out


def test_push_pull_carries_statements_unchanged_and_answers_the_signed_address() -> None:
    m = node(peers=2)
    m.receive("p1:1", sign(signer("p1"), Suspect("p0", 0, "p1")), 0.0)
    table = (alive("p2"),)
    [reply] = [s for s in sends(m.receive("", MemberPushPull("p2", "evil:443", False, False,
                                                             table), 0.0, "p2"))
               if s.reliable]
    assert reply.to == "p2:1"  # not the source_addr the message names
    st = reply.msg.statements  # type: ignore[union-attr]
    assert alive("p0") in st and sign(signer("p1"), Suspect("p0", 0, "p1")) in st
    assert m.statement("me") in st and m.statement("me").sig  # type: ignore[union-attr]
    left = node(peers=1)
    left.leave(0.0)
    assert sign(signer("me"), Left("me", 0)) in left._table(join=False, reply=False).statements


def test_sources_match_lets_only_signed_relayed_acks_name_another_node() -> None:
    assert sources_match(Compound((Ping(1, "a", "a:1", "b"), Ack(2, "a"))), "a")
    assert not sources_match(Ack(2, "b"), "a")
    assert not sources_match(Ack(2, "b", "c"), "a")
    assert sources_match(Ack(2, "b", "c", b"\0" * 64), "a")
