"""Hostile enrolled node vs. signed membership, in memory (rows 1, 2, 3, 5, 12 of issue 10).

The attacker is an enrolled member of a signed simulation: it holds only its own key, runs
honest cores (so it knows everyone's incarnations) and forges on top. Every test asserts
that the attack fails AND that the honest cluster goes on working.
"""

from __future__ import annotations

import random

from federation.limits import MAX_PENDING_PER_INTRODUCER, MAX_UINT
from federation.messages import (
    Alive,
    Compound,
    Dead,
    Item,
    ItemKind,
    MemberPushPull,
    MemberStatus,
    PingReq,
    StateDigest,
)
from federation.statements import Ed25519Signer, sign
from federation.testing import Adversary, Simulation

ALIVE = MemberStatus.ALIVE
DEAD = MemberStatus.DEAD


def signed_sim(n: int, seed: int = 7, **kw: object) -> Simulation:
    return Simulation(n, seed=seed, signed=True, **kw)  # type: ignore[arg-type]


def test_forged_alive_moving_a_member_to_the_attackers_address_is_refused() -> None:
    """Row 1 (membership part): alive(onprem, attacker address, 2^64-1) goes nowhere."""
    sim = signed_sim(6)
    sim.run_until(2.0)
    attacker, victim = sim.nodes[5], sim.nodes[1]
    key = Ed25519Signer(sim.key_of(attacker.node_id))
    forged = [sign(key, Alive(victim.node_id, attacker.address, MAX_UINT, b"")),
              Alive(victim.node_id, attacker.address, MAX_UINT, b"", b"\0" * 64),
              Alive(victim.node_id, attacker.address, 5, b"")]  # unsigned
    for i in range(5):
        for msg in forged:
            sim.inject(i, attacker.address, msg)
    sim.run_until(10.0)
    assert sim.forged_addresses_adopted() == []
    for nd in sim.nodes[:5]:
        if nd is victim:
            continue
        m = nd.membership.member(victim.node_id)
        assert m is not None and m.status is ALIVE and m.address == victim.address
        assert m.incarnation < 5
        assert nd.membership.stats["invalid_statements"] >= 2
    assert victim.membership.stats["unrefutable"] == 0


def test_forged_dead_with_spoofed_sender_and_maximal_incarnation_is_void() -> None:
    """Row 2: dead(onprem, 2^64-1) naming another accuser kills nobody, exhausts nothing."""
    sim = signed_sim(6)
    sim.run_until(2.0)
    attacker, victim, framed = sim.nodes[5], sim.nodes[1], sim.nodes[2]
    key = Ed25519Signer(sim.key_of(attacker.node_id))
    for i in range(5):
        sim.inject(i, attacker.address, sign(key, Dead(victim.node_id, MAX_UINT,
                                                       framed.node_id)))
        sim.inject(i, attacker.address, sign(key, Dead(victim.node_id, MAX_UINT,
                                                       attacker.node_id)))
    sim.run_until(60.0)
    assert sim.false_dead == []
    for nd in sim.nodes:
        m = nd.membership.member(victim.node_id)
        assert m is not None and m.status is ALIVE and m.incarnation < MAX_UINT
    assert victim.membership.incarnation < 1000
    # The victim still refutes a genuine accusation (incarnations are not exhausted).
    inc = victim.membership.incarnation
    sim.inject(1, attacker.address, sign(key, Dead(victim.node_id, inc, attacker.node_id)))
    sim.run_until(70.0)
    assert victim.membership.incarnation == inc + 1
    assert all(nd.membership.member(victim.node_id).status is ALIVE  # type: ignore[union-attr]
               for nd in sim.nodes)


def test_replayed_alive_rumors_do_not_revive_a_killed_node() -> None:
    """Row 3: the killed node's own last alive, replayed at full rate, changes nothing."""
    sim = signed_sim(8)
    sim.run_until(2.0)
    victim, attacker = sim.nodes[3], sim.nodes[7]
    last = attacker.membership.statement(victim.node_id)
    assert last is not None
    sim.crash(3)
    t = 2.0
    while t < 90.0:
        t += 0.5
        sim.run_until(t)
        for i in (0, 1, 2, 4, 5, 6):
            sim.inject(i, attacker.address, last)
    sim.run_until(95.0)
    for nd in sim.up_nodes():
        if nd is attacker:
            continue
        assert nd.membership.member(victim.node_id).status is DEAD  # type: ignore[union-attr]


def test_invented_members_never_fill_the_table_and_a_newcomer_is_admitted() -> None:
    """Row 5: 10,050 invented members are pended per introducer; a real newcomer joins."""
    sim = signed_sim(5)
    sim.run_until(1.0)
    attacker = sim.nodes[4]
    key = Ed25519Signer(sim.key_of(attacker.node_id))
    ghosts = [sign(key, Alive(f"ghost-{i}", f"198.51.100.{i % 250}:1", 0, b""))
              for i in range(10_050)]
    for start in range(0, len(ghosts), 5000):
        table = (attacker.membership.statement(attacker.node_id), *ghosts[start:start + 5000])
        for i in range(4):
            sim.inject(i, attacker.address, MemberPushPull(attacker.node_id, attacker.address,
                                                           False, True, table))  # type: ignore[arg-type]
    for nd in sim.nodes[:4]:
        ms = nd.membership
        assert len(ms.members()) == 5
        assert ms.pending_admissions() <= MAX_PENDING_PER_INTRODUCER
        assert ms.stats["pending_refused"] >= 10_050 - MAX_PENDING_PER_INTRODUCER
    newcomer = sim.add_node()
    assert sim.run_until_true(lambda: all(
        (m := nd.membership.member(newcomer.node_id)) is not None and m.status is ALIVE
        for nd in sim.nodes[:4]), timeout=30.0) is not None
    assert all(len(nd.membership.members()) == 6 for nd in sim.nodes[:4])


def test_forged_ping_req_target_and_digest_source_reflect_nothing() -> None:
    """Row 12: nothing is sent to an address no member signed."""
    sim = signed_sim(6)
    sim.run_until(1.0)
    attacker, victim = sim.nodes[5], sim.nodes[1]
    for i in range(5):
        for seq in range(20):
            sim.inject(i, attacker.address, PingReq(seq, attacker.node_id, attacker.address,
                                                    victim.node_id, "203.0.113.7:53", True))
            sim.inject(i, attacker.address, PingReq(seq, attacker.node_id, attacker.address,
                                                    "ghost", "203.0.113.8:53", True))
        sim.inject(i, attacker.address, StateDigest(attacker.node_id, "203.0.113.9:443",
                                                    None, None, ()))
        sim.inject(i, "203.0.113.10:1", Compound((
            PingReq(99, attacker.node_id, "203.0.113.10:1", victim.node_id, "203.0.113.11:1",
                    True),)))
    sim.run_until(10.0)
    assert sim.stray_sends == []
    assert sim.converged()


def test_one_percent_hostile_forging_at_full_rate_kills_nobody_and_spreads_policy() -> None:
    """The simulator target, scaled down for the suite (bench/gossip.py runs N=1000):
    1% hostile nodes forging at full rate, 1% loss: 0 honest nodes declared dead, 0 forged
    addresses adopted, nothing reflected, a policy item at every honest node within 12
    rounds, the replayed statements and invented members refused."""
    n = 200
    sim = signed_sim(n, seed=3, loss=0.01)
    for k in range(2):
        sim.make_hostile(n - 1 - k, Adversary(random.Random(k)))
    sim.run_until(3.0)
    item = Item("federation-authority", ItemKind.POLICY_BUNDLE, "policy", 7, b"p" * 200)
    t0 = sim.now
    sim.publish(0, item)
    sim.run_until(15.0)
    t100 = sim.time_to_fraction(item, 1.0, t0)
    assert t100 is not None and t100 <= 12 * sim.config.membership.gossip_interval
    assert sim.false_dead == []
    assert sim.forged_addresses_adopted() == []
    assert sim.stray_sends == []
    assert sum(nd.membership.stats["invalid_statements"] for nd in sim.honest()) > 0
    assert all(len(nd.membership.members()) == n for nd in sim.honest())
