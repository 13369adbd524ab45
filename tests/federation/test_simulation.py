"""Whole-cluster behaviour in the deterministic simulator: convergence, failure detection,
refutation, partitions, validator gate, conflicts. Small N here; large N in bench/gossip.py."""

from __future__ import annotations

from federation.config import ClusterConfig
from federation.messages import Item, ItemKind, MemberStatus, StatePush
from federation.statesync import Conflict
from federation.testing import Simulation

LAN = ClusterConfig.lan()
LOCAL = ClusterConfig.local()
POLICY = ItemKind.POLICY_BUNDLE


def policy(version: int, value: bytes = b"bundle") -> Item:
    return Item("authority", POLICY, "policy", version, value)


def test_membership_converges_from_joins_under_loss() -> None:
    # Invariant: nodes that only know the seeds end up seeing every node alive under 10%
    # datagram loss. (A false "dead" on the way is possible at this loss - rumors are
    # best-effort - but push-pull and refutation must repair it without help.)
    sim = Simulation(24, config=LAN, seed=5, loss=0.10, bootstrap="join")
    t = sim.run_until_true(sim.converged, timeout=60)
    assert t is not None, "membership did not converge"


def test_items_reach_every_node_under_loss() -> None:
    # Invariant: an item published at one node reaches every node under 10% loss, and
    # by rumor alone (well before the first anti-entropy exchange could matter).
    sim = Simulation(40, config=LAN, seed=2, loss=0.10)
    sim.run_until(2.0)
    item = policy(1)
    sim.publish(0, item)
    t = sim.run_until_true(lambda: sim.holders(item) == 40, timeout=10, step=0.1)
    assert t is not None and t - 2.0 < 3.0


def test_wire_mode_round_trips_every_message() -> None:
    # Every message goes through encode/decode and the datagram size check.
    sim = Simulation(12, config=LOCAL, seed=9, loss=0.05, bootstrap="join", wire=True)
    assert sim.run_until_true(sim.converged, timeout=40) is not None
    item = policy(3, b"x" * 300)
    sim.publish(4, item)
    assert sim.run_until_true(lambda: sim.holders(item) == 12, timeout=30) is not None
    assert sim.total_bytes() > 0


def test_crashed_node_is_marked_dead_by_all_within_the_configured_bound() -> None:
    n = 30
    sim = Simulation(n, config=LAN, seed=3, loss=0.01)
    sim.run_until(3.0)
    t0 = sim.now
    sim.crash(7)
    cfg = LAN.membership
    # Worst case without any confirmation: noticed within two probe intervals, the full
    # Lifeguard maximum, then a few gossip rounds to tell everyone.
    bound = 2 * cfg.probe_interval + cfg.suspicion_max_timeout(n) + 10 * cfg.gossip_interval
    sim.run_until_true(lambda: sim.time_all_marked_dead(7, t0) is not None, timeout=bound)
    took = sim.time_all_marked_dead(7, t0)
    assert took is not None and took <= bound
    # With independent confirmations it is much faster than the bound.
    assert took < 2 * cfg.probe_interval + cfg.suspicion_timeout(n) + 3.0
    assert sim.false_dead == []


def test_slow_but_alive_node_refutes_and_is_never_declared_dead() -> None:
    # Node 5's links are slower than the probe timeout and lossy: it gets suspected,
    # hears it (buddy system / gossip), refutes with a higher incarnation, survives.
    n = 16
    sim = Simulation(n, config=LAN, seed=11)
    slow = sim.nodes[5].address
    for nd in sim.nodes:
        if nd.index != 5:
            sim.network.set_link(slow, nd.address, latency=0.45, loss=0.4)
    sim.run_until(120.0)
    target = sim.nodes[5].node_id
    assert sim.false_dead == []
    assert sim.nodes[5].membership.incarnation > 0  # it had to refute
    assert sum(nd.membership.stats["suspicions_raised"] for nd in sim.nodes) > 0
    for nd in sim.nodes:
        if nd.index != 5:
            assert nd.membership.member(target).status is not MemberStatus.DEAD  # type: ignore[union-attr]


def test_partition_then_heal_converges_without_operator() -> None:
    sim = Simulation(12, config=LOCAL, seed=4, loss=0.01)
    sim.run_until(2.0)
    left, right = range(0, 6), range(6, 12)
    sim.partition([left, right])
    sim.run_until(60.0)
    # Each side declared the other dead.
    assert sim.status_seen(0, 11) is MemberStatus.DEAD
    assert sim.status_seen(11, 0) is MemberStatus.DEAD
    a, b = policy(1, b"from-left"), Item("node-0011", ItemKind.CAPABILITY_ADVERT, "caps", 1,
                                         b"gpu")
    sim.publish(0, a)
    sim.publish(11, b)
    sim.run_until(70.0)
    assert sim.holders(a) == 6 and sim.holders(b) == 6
    sim.heal()
    t = sim.run_until_true(sim.converged, timeout=120)
    assert t is not None, "membership did not re-merge after the partition healed"
    t = sim.run_until_true(lambda: sim.holders(a) == 12 and sim.holders(b) == 12,
                           timeout=120)
    assert t is not None, "items did not cross the healed partition"


def test_restarted_node_rejoins_and_outranks_its_death() -> None:
    sim = Simulation(10, config=LOCAL, seed=6)
    sim.run_until(2.0)
    sim.crash(3)
    t0 = sim.now
    assert sim.run_until_true(lambda: sim.time_all_marked_dead(3, t0) is not None,
                              timeout=60) is not None
    sim.restart(3)  # fresh process, incarnation 0, knows only the seeds
    assert sim.run_until_true(sim.converged, timeout=60) is not None
    assert sim.nodes[3].membership.incarnation > 0


def test_graceful_leave_is_left_everywhere_never_dead() -> None:
    sim = Simulation(10, config=LOCAL, seed=8)
    sim.run_until(2.0)
    leaver = sim.nodes[2]
    leaver.membership.leave(sim.now)
    sim.run_until_true(leaver.membership.leave_complete, timeout=10)
    sim.crash(2)  # the process exits after its goodbye
    sim.run_until(sim.now + 40)
    for nd in sim.up_nodes():
        assert sim.status_seen(nd.index, 2) is MemberStatus.LEFT
    assert sim.dead_times.get(leaver.node_id, {}) == {}


def test_validator_rejected_items_are_never_stored_nor_passed_on() -> None:
    sim = Simulation(12, config=LAN, seed=1)
    sim.run_until(1.0)
    good = policy(5)
    sim.publish(0, good)
    sim.run_until(6.0)
    assert sim.holders(good) == 12
    # A hostile peer pushes a forged item and a rollback to node 3.
    forged = Item("authority", POLICY, "other", 1, b"forged bundle")
    rollback = policy(4, b"older bundle")
    sim.inject(3, "10.9.9.9:8471", StatePush("evil", (forged, rollback)))
    sim.inject(3, "10.9.9.9:8471", forged)
    sim.run_until(60.0)
    for nd in sim.nodes:
        assert nd.statesync.get("authority", POLICY, "other") is None
        assert nd.statesync.get("authority", POLICY, "policy") == good
    # Only node 3 ever saw the forgery (nobody passed it on), and nobody else saw the
    # rollback either: stale copies are dropped where they land.
    assert {i for _, i, _ in sim.rejections} == {3}
    assert all(nd.statesync.stats["stale"] == 0 for nd in sim.nodes if nd.index != 3)


def test_conflicting_values_at_one_version_reach_every_node_as_a_conflict() -> None:
    n = 20
    sim = Simulation(n, config=LAN, seed=12, loss=0.01)
    sim.run_until(1.0)
    a = Item("node-0004", ItemKind.AUDIT_CHECKPOINT, "checkpoint", 100, b"root-A")
    b = Item("node-0004", ItemKind.AUDIT_CHECKPOINT, "checkpoint", 100, b"root-B")
    sim.publish(4, a)
    sim.publish(15, b)

    def everyone_saw_it() -> bool:
        return all(any(c.item.key == "checkpoint" for c in sim.conflicts.get(i, []))
                   for i in range(n))

    assert sim.run_until_true(everyone_saw_it, timeout=60) is not None
    for nd in sim.nodes:
        vals = nd.statesync.values("node-0004", ItemKind.AUDIT_CHECKPOINT, "checkpoint")
        assert sorted(v.value for v in vals) == [b"root-A", b"root-B"]
        c = next(c for c in sim.conflicts[nd.index] if isinstance(c, Conflict))
        assert {c.item.value, c.held.value} == {b"root-A", b"root-B"}  # type: ignore[union-attr]


def test_simulation_is_deterministic_for_a_seed() -> None:
    def run() -> tuple[object, ...]:
        sim = Simulation(15, config=LAN, seed=21, loss=0.05, count_bytes=True)
        sim.run_until(2.0)
        sim.publish(0, policy(1))
        sim.crash(9)
        sim.run_until(25.0)
        return (sim.item_times, sim.dead_times, sim.total_bytes(),
                [nd.membership.incarnation for nd in sim.nodes])

    assert run() == run()
