"""Tunables for membership (SWIM + Lifeguard) and state sync, with LAN/WAN/local presets.

Owns: every knob that trades detection speed or convergence speed against bandwidth and
false positives, documented with its formula, validated at construction (the message names
the allowed range), and the derived quantities (suspicion timeouts, retransmit limits,
push-pull period) so the formulas live in one place. Presets follow hashicorp/memberlist's
``DefaultLANConfig``/``DefaultWANConfig``/``DefaultLocalConfig``.

Must never: hold bounds on what a peer can make us store (``limits`` does that), read
files or the environment (``node/`` builds these from its TOML), or be mutated: configs are
frozen so one instance can be shared by a thousand simulated nodes.

Formulas (n = estimated live members including ourselves)::

    suspicion_timeout(n)     = suspicion_mult * max(1, log10(max(1, n))) * probe_interval
    suspicion_max_timeout(n) = suspicion_max_timeout_mult * suspicion_timeout(n)
    confirmations_wanted(n)  = suspicion_mult - 2, or 0 when n - 2 < that
    retransmit_limit(n)      = retransmit_mult * ceil(log10(n + 1))
    push_pull_period(n)      = push_pull_interval * (1 + ceil(log2(n) - log2(32)))  for n > 32
    scaled(t)                = t * (awareness + 1),  awareness in [0, awareness_max_multiplier)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from federation.limits import MAX_DIGEST_ENTRIES

__all__ = ["ClusterConfig", "GossipConfig", "MembershipConfig", "lan", "local", "wan"]

# Above this many members the periodic full-state exchanges are spaced out, because their
# cost grows with n on both ends (memberlist's pushPullScaleThreshold).
_PUSH_PULL_SCALE_THRESHOLD = 32


def _check_range(name: str, value: float, low: float, high: float, *, open_low: bool = False,
                 unit: str = "") -> None:
    ok = (low < value if open_low else low <= value) and value <= high
    if not ok or math.isnan(value):
        left = "(" if open_low else "["
        suffix = f" {unit}" if unit else ""
        raise ValueError(
            f"{name} must be in {left}{low:g}, {high:g}]{suffix}, got {value!r}; "
            "start from a preset (lan(), wan(), local()) and change only what you measured"
        )


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    _check_range(name, value, low, high)


def _scale_period(interval: float, n: int) -> float:
    if n <= _PUSH_PULL_SCALE_THRESHOLD:
        return interval
    multiplier = math.ceil(math.log2(n) - math.log2(_PUSH_PULL_SCALE_THRESHOLD)) + 1
    return interval * multiplier


@dataclass(frozen=True, slots=True)
class MembershipConfig:
    """SWIM failure detection and rumor dissemination. Defaults are the LAN preset."""

    #: Seconds between probes of the next member in the round-robin. Lower detects failures
    #: sooner (a dead node is probed by someone about every interval / n * n = interval)
    #: but costs one ping + ack per node per interval.
    probe_interval: float = 1.0

    #: Seconds to wait for a direct ack before asking others to probe (ping-req). Set to
    #: the 99th percentile RTT: lower causes spurious indirect probes and suspicions,
    #: higher leaves less of the probe interval for the indirect round.
    probe_timeout: float = 0.5

    #: Members asked to probe a target that missed its direct ack. Any one ack suffices,
    #: so more checks tolerate more loss and one-way link failures at the cost of 4
    #: messages each. 0 disables indirect probing (not recommended).
    indirect_checks: int = 3

    #: Suspicion timeout multiplier: a suspect is declared dead after
    #: suspicion_mult * max(1, log10(n)) * probe_interval seconds at best (with enough
    #: independent confirmations). Higher gives a slow node more time to refute and
    #: delays detection of real failures.
    suspicion_mult: int = 4

    #: Lifeguard: the suspicion timer starts at this multiple of the minimum timeout and
    #: shrinks towards the minimum as independent members confirm the suspicion
    #: (log(c + 1) / log(k + 1) of the way for c of k wanted confirmations). A lone,
    #: possibly unhealthy accuser thus waits longer than a consensus.
    suspicion_max_timeout_mult: int = 6

    #: Lifeguard local health: each missed ack or nack raises our awareness score, each
    #: successful probe lowers it, and probe interval and timeout are scaled by
    #: (score + 1), up to this multiplier. A node starved of CPU or bandwidth then probes
    #: slower instead of accusing healthy peers. 1 disables the mechanism.
    awareness_max_multiplier: int = 8

    #: Each rumor is piggybacked retransmit_mult * ceil(log10(n + 1)) times. Higher makes
    #: delivery under loss more certain (misses fall like e^-limit) at linear bandwidth cost.
    retransmit_mult: int = 4

    #: Seconds between gossip rounds (rumors that could not ride on probe traffic).
    #: Dissemination takes O(log n) rounds, so this sets how fast news spreads.
    gossip_interval: float = 0.2

    #: Random members each gossip round is sent to (fan-out). Higher spreads faster
    #: (growth is about (1 + gossip_nodes) per round) and costs one datagram each.
    gossip_nodes: int = 3

    #: Seconds after a member is declared dead during which we still gossip to it, so a
    #: falsely declared node hears it and refutes. Longer helps recovery from short
    #: partitions; costs datagrams to nodes that may really be gone.
    gossip_to_the_dead_time: float = 30.0

    #: Seconds between full member-table exchanges with one random member over the
    #: reliable path (anti-entropy for membership). Scaled up by ~log2(n / 32) above 32
    #: members. 0 disables periodic exchanges (joins still use one).
    push_pull_interval: float = 30.0

    #: Seconds between attempts to reach one random dead member with a push-pull, so
    #: the two halves of a healed partition find each other without an operator.
    #: 0 disables.
    reconnect_interval: float = 30.0

    #: Seconds a dead member is kept (and retried) before it is forgotten. Long, so a site
    #: that was cut off for a day still rejoins by itself.
    reconnect_timeout: float = 24 * 3600.0

    #: Seconds a member that left gracefully is remembered, so stale alive rumors about it
    #: cannot resurrect it.
    tombstone_timeout: float = 24 * 3600.0

    #: First retry delay for unreachable seeds; doubles per attempt up to seed_retry_max.
    seed_retry_base: float = 1.0

    #: Longest delay between seed retries. Lower finds a returning seed sooner and costs a
    #: connection attempt per seed per period while isolated.
    seed_retry_max: float = 60.0

    def __post_init__(self) -> None:
        _check_range("probe_interval", self.probe_interval, 0.0, 3600.0, open_low=True,
                     unit="seconds")
        _check_range("probe_timeout", self.probe_timeout, 0.0, self.probe_interval,
                     open_low=True, unit="seconds (at most probe_interval)")
        _check_int("indirect_checks", self.indirect_checks, 0, 16)
        _check_int("suspicion_mult", self.suspicion_mult, 1, 100)
        _check_int("suspicion_max_timeout_mult", self.suspicion_max_timeout_mult, 1, 100)
        _check_int("awareness_max_multiplier", self.awareness_max_multiplier, 1, 64)
        _check_int("retransmit_mult", self.retransmit_mult, 1, 100)
        _check_range("gossip_interval", self.gossip_interval, 0.0, 60.0, open_low=True,
                     unit="seconds")
        _check_int("gossip_nodes", self.gossip_nodes, 1, 64)
        _check_range("gossip_to_the_dead_time", self.gossip_to_the_dead_time, 0.0, 86400.0,
                     unit="seconds")
        _check_range("push_pull_interval", self.push_pull_interval, 0.0, 86400.0,
                     unit="seconds (0 disables)")
        _check_range("reconnect_interval", self.reconnect_interval, 0.0, 86400.0,
                     unit="seconds (0 disables)")
        _check_range("reconnect_timeout", self.reconnect_timeout, 0.0, 30 * 86400.0,
                     unit="seconds")
        _check_range("tombstone_timeout", self.tombstone_timeout, 0.0, 30 * 86400.0,
                     unit="seconds")
        _check_range("seed_retry_base", self.seed_retry_base, 0.0, 3600.0, open_low=True,
                     unit="seconds")
        _check_range("seed_retry_max", self.seed_retry_max, self.seed_retry_base, 86400.0,
                     unit="seconds (at least seed_retry_base)")

    # --- derived quantities ------------------------------------------------------------

    def suspicion_timeout(self, n: int) -> float:
        """Minimum seconds a suspect waits before being declared dead (all confirmations in).

        Grows with log10(n) because a rumor needs O(log n) rounds to reach the suspect,
        which must hear it before it can refute.
        """
        node_scale = max(1.0, math.log10(max(1, n)))
        return self.suspicion_mult * node_scale * self.probe_interval

    def suspicion_max_timeout(self, n: int) -> float:
        """Seconds a suspicion lasts with no independent confirmation (Lifeguard)."""
        return self.suspicion_max_timeout_mult * self.suspicion_timeout(n)

    def confirmations_wanted(self, n: int) -> int:
        """Independent confirmations that shrink a suspicion to its minimum (memberlist's k).

        In a cluster too small to produce that many other accusers, the minimum applies at
        once rather than the maximum, or small clusters would never detect anything fast.
        """
        k = self.suspicion_mult - 2
        return 0 if n - 2 < k else max(0, k)

    def retransmit_limit(self, n: int) -> int:
        """Times each rumor is piggybacked before it is dropped from the queue."""
        return self.retransmit_mult * max(1, math.ceil(math.log10(n + 1)))

    def push_pull_period(self, n: int) -> float:
        """Seconds between periodic full-state exchanges at cluster size n."""
        return _scale_period(self.push_pull_interval, n)

    def scaled(self, seconds: float, awareness: int) -> float:
        """Lifeguard: a probe interval or timeout stretched by our local health score."""
        return seconds * (awareness + 1)

    # --- presets ------------------------------------------------------------------------

    @classmethod
    def lan(cls) -> MembershipConfig:
        """One site, sub-millisecond RTT: memberlist's DefaultLANConfig."""
        return cls()

    @classmethod
    def wan(cls) -> MembershipConfig:
        """Across sites over the internet: memberlist's DefaultWANConfig."""
        return cls(probe_interval=5.0, probe_timeout=3.0, suspicion_mult=6,
                   gossip_interval=0.5, gossip_nodes=4, gossip_to_the_dead_time=60.0,
                   push_pull_interval=60.0, reconnect_interval=60.0,
                   seed_retry_base=5.0, seed_retry_max=300.0)

    @classmethod
    def local(cls) -> MembershipConfig:
        """Loopback or one host (tests, demos): memberlist's DefaultLocalConfig."""
        return cls(probe_interval=1.0, probe_timeout=0.2, indirect_checks=1,
                   suspicion_mult=3, retransmit_mult=2, gossip_interval=0.1,
                   gossip_to_the_dead_time=15.0, push_pull_interval=15.0,
                   reconnect_interval=10.0, seed_retry_base=0.5, seed_retry_max=10.0)


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """State sync of signed items: rumor retransmits and anti-entropy. Defaults are LAN."""

    #: Each item rumor is piggybacked retransmit_mult * ceil(log10(n + 1)) times. Urgent
    #: items (revocations, policy announcements) should reach everyone by rumor alone;
    #: anti-entropy only mops up. Higher costs bytes linearly.
    retransmit_mult: int = 4

    #: Seconds between digest exchanges with one random live member over the reliable
    #: path, scaled like push_pull_interval above 32 members. This bounds how stale a node
    #: can be after missing rumors (partitions, air gaps, large items that never rumor).
    #: 0 disables anti-entropy (not recommended: rumors alone are best-effort).
    anti_entropy_interval: float = 30.0

    #: Entries per digest page (at most limits.MAX_DIGEST_ENTRIES). Larger pages cover the
    #: store in fewer exchanges at a higher cost per exchange.
    digest_page_entries: int = 512

    def __post_init__(self) -> None:
        _check_int("retransmit_mult", self.retransmit_mult, 1, 100)
        _check_range("anti_entropy_interval", self.anti_entropy_interval, 0.0, 86400.0,
                     unit="seconds (0 disables)")
        _check_int("digest_page_entries", self.digest_page_entries, 1, MAX_DIGEST_ENTRIES)

    def retransmit_limit(self, n: int) -> int:
        """Times each item rumor is piggybacked before it is dropped from the queue."""
        return self.retransmit_mult * max(1, math.ceil(math.log10(n + 1)))

    def anti_entropy_period(self, n: int) -> float:
        """Seconds between digest exchanges at cluster size n."""
        return _scale_period(self.anti_entropy_interval, n)

    @classmethod
    def lan(cls) -> GossipConfig:
        return cls()

    @classmethod
    def wan(cls) -> GossipConfig:
        return cls(anti_entropy_interval=60.0)

    @classmethod
    def local(cls) -> GossipConfig:
        return cls(retransmit_mult=2, anti_entropy_interval=15.0)


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Both halves together, as the daemon and the simulator take them."""

    membership: MembershipConfig = field(default_factory=MembershipConfig)
    gossip: GossipConfig = field(default_factory=GossipConfig)

    @classmethod
    def lan(cls) -> ClusterConfig:
        return cls(MembershipConfig.lan(), GossipConfig.lan())

    @classmethod
    def wan(cls) -> ClusterConfig:
        return cls(MembershipConfig.wan(), GossipConfig.wan())

    @classmethod
    def local(cls) -> ClusterConfig:
        return cls(MembershipConfig.local(), GossipConfig.local())


def lan() -> ClusterConfig:
    """Preset for one site (LAN): probe 1 s / 500 ms, 3 indirect, gossip 200 ms to 3."""
    return ClusterConfig.lan()


def wan() -> ClusterConfig:
    """Preset across sites (WAN): probe 5 s / 3 s, gossip 500 ms to 4, suspicion x6."""
    return ClusterConfig.wan()


def local() -> ClusterConfig:
    """Preset for loopback: probe 1 s / 200 ms, 1 indirect, gossip 100 ms, suspicion x3."""
    return ClusterConfig.local()
