"""Where a request runs: locally, or on which peer (DESIGN §6 "Placement").

This module owns the placement rules as pure functions over plain values: serve locally when
the model is here and the node is not saturated; otherwise rank the peers that are alive, whose
record is fresh, that hold the model and that policy lets this data go to, by expected latency
adjusted for GPU and tier cost. Every choice and every refusal carries a human-readable "why"
(refusals by policy carry the :class:`~federation.policy_engine.Decision`, so a 403 can name the
policy and the attributes).

It must never do I/O, read the clock, or evaluate policy itself: the caller passes ages it
computed from its own ``now`` and a ``forward_decider`` (normally a bound
``PolicyEngine.decide_forward``). Ties are broken by node id, so results are deterministic.

Score of a peer (seconds; lower is better)::

    expected = rtt_s + (queue_depth + 1) * service_time_s * (1 - gpu_bonus if gpu else 1)
    score    = expected * tier_weights[tier]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from federation.policy_engine import TIERS, Decision, NodeAttrs

__all__ = [
    "Candidate",
    "LocalChoice",
    "Placement",
    "PlacementConfig",
    "Ranked",
    "Ranking",
    "Refused",
    "decide_local",
    "place",
    "rank",
]

RefusalKind = Literal["dead", "stale", "no-model", "hop-limit", "policy"]


@dataclass(frozen=True, slots=True)
class PlacementConfig:
    """Placement knobs; each says what it trades off. Validated at construction."""

    #: Serve locally while fewer than this many requests wait here. Higher keeps work (and
    #: data) local at the cost of tail latency; lower spills to peers sooner.
    local_queue_limit: int = 8
    #: Serve locally while the measured local latency is at most this (seconds). Lower spills to
    #: peers as soon as this node slows; higher tolerates a slow node before paying the network.
    local_latency_limit_s: float = 0.250
    #: Service time assumed for a peer that reports none (seconds per request); it prices each
    #: request in the peer's queue.
    default_service_time_s: float = 0.050
    #: Multiplier on a peer's expected latency per tier (> 0). Above 1 makes a tier look slower
    #: than measured, to prefer cheaper or closer tiers (cloud costs egress and money).
    tier_weights: Mapping[str, float] = field(
        default_factory=lambda: {"edge": 1.0, "onprem": 1.0, "cloud": 1.25}, hash=False
    )
    #: Fraction taken off a GPU peer's queue-and-service time (0 = no preference, < 1). GPU
    #: peers drain queues faster than a CPU-measured default suggests.
    gpu_bonus: float = 0.5
    #: A peer record older than this (seconds) is stale and the peer is not chosen: its load and
    #: models may have changed. Lower follows load closely but needs more frequent adverts.
    max_record_age_s: float = 30.0
    #: Forwards a request may take in total; at ``hops >= max_hops`` it runs here or nowhere.
    #: One hop keeps the audit trail and the policy reasoning simple (DESIGN §6).
    max_hops: int = 1

    def __post_init__(self) -> None:
        if self.local_queue_limit < 1:
            raise ValueError(f"local_queue_limit {self.local_queue_limit} must be >= 1")
        for name in ("local_latency_limit_s", "default_service_time_s", "max_record_age_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} {getattr(self, name)} must be > 0 seconds")
        if not 0 <= self.gpu_bonus < 1:
            raise ValueError(f"gpu_bonus {self.gpu_bonus} must be in [0, 1)")
        if self.max_hops < 0:
            raise ValueError(f"max_hops {self.max_hops} must be >= 0 (0 never forwards)")
        weights = dict(self.tier_weights)
        if set(weights) != set(TIERS) or not all(w > 0 for w in weights.values()):
            raise ValueError(f"tier_weights {weights} must give a weight > 0 to each of {TIERS}")
        object.__setattr__(self, "tier_weights", MappingProxyType(weights))


@dataclass(frozen=True, slots=True)
class Candidate:
    """A peer as this node currently knows it (membership + its latest capability advert)."""

    node_id: str
    attrs: NodeAttrs
    alive: bool
    models: Set[str]  # model refs "name:version" the peer holds
    rtt_s: float  # measured round trip to the peer
    queue_depth: int  # requests waiting at the peer, from its advert
    gpu: bool
    record_age_s: float  # now - when the advert was received, computed by the caller
    service_time_s: float | None = None  # the peer's measured per-request time, if advertised

    def __post_init__(self) -> None:
        if self.node_id != self.attrs.node_id:
            raise ValueError(f"candidate {self.node_id!r} carries attrs of {self.attrs.node_id!r}")
        if self.rtt_s < 0 or self.queue_depth < 0 or self.record_age_s < 0:
            raise ValueError(
                f"candidate {self.node_id!r}: rtt_s, queue_depth and record_age_s must be >= 0"
            )
        if self.service_time_s is not None and self.service_time_s < 0:
            raise ValueError(f"candidate {self.node_id!r}: service_time_s must be >= 0")
        object.__setattr__(self, "models", frozenset(self.models))


@dataclass(frozen=True, slots=True)
class LocalChoice:
    serve_locally: bool
    why: str


@dataclass(frozen=True, slots=True)
class Ranked:
    candidate: Candidate
    score_s: float
    expected_latency_s: float
    why: str
    decision: Decision


@dataclass(frozen=True, slots=True)
class Refused:
    node_id: str
    kind: RefusalKind
    why: str
    decision: Decision | None = None  # set when kind == "policy"


@dataclass(frozen=True, slots=True)
class Ranking:
    """Peers to try in order (fail over down the list), and those left out with the reason."""

    ranked: list[Ranked]
    refused: list[Refused]

    @property
    def denied_by_policy(self) -> list[Refused]:
        return [r for r in self.refused if r.kind == "policy"]


def decide_local(
    model_ref: str,
    local_models: Set[str],
    queue_depth: int,
    latency_s: float | None,
    config: PlacementConfig | None = None,
) -> LocalChoice:
    """Serve here when the model is here and neither the queue nor the latency is over limit.

    ``latency_s`` is this node's recently measured latency for the model, ``None`` before any
    measurement (then only the queue counts).
    """
    cfg = config or PlacementConfig()
    if model_ref not in local_models:
        return LocalChoice(False, f"model {model_ref} is not installed here")
    if queue_depth >= cfg.local_queue_limit:
        return LocalChoice(False, f"saturated: {queue_depth} queued, limit {cfg.local_queue_limit}")
    if latency_s is not None and latency_s > cfg.local_latency_limit_s:
        return LocalChoice(
            False,
            f"saturated: latency {latency_s * 1e3:.1f} ms over the "
            f"{cfg.local_latency_limit_s * 1e3:.1f} ms limit",
        )
    return LocalChoice(True, f"model {model_ref} is here and the node is not saturated")


def rank(
    candidates: Iterable[Candidate],
    model_ref: str,
    forward_decider: Callable[[Candidate], Decision],
    config: PlacementConfig | None = None,
    *,
    hops: int = 0,
) -> Ranking:
    """Order the eligible peers best first; report every other candidate and why.

    ``hops`` is how many times the request has been forwarded already. ``forward_decider`` is
    asked only about peers that are otherwise eligible (alive, fresh, holding the model).
    """
    cfg = config or PlacementConfig()
    ranked: list[Ranked] = []
    refused: list[Refused] = []
    for c in sorted(candidates, key=lambda c: c.node_id):
        if not c.alive:
            refused.append(Refused(c.node_id, "dead", f"{c.node_id}: not alive (membership)"))
        elif c.record_age_s > cfg.max_record_age_s:
            refused.append(
                Refused(
                    c.node_id,
                    "stale",
                    f"{c.node_id}: record is {c.record_age_s:.0f} s old, over the "
                    f"{cfg.max_record_age_s:.0f} s limit",
                )
            )
        elif model_ref not in c.models:
            refused.append(Refused(c.node_id, "no-model", f"{c.node_id}: lacks {model_ref}"))
        elif hops >= cfg.max_hops:
            refused.append(
                Refused(
                    c.node_id,
                    "hop-limit",
                    f"{c.node_id}: request already took {hops} hop(s), limit {cfg.max_hops}",
                )
            )
        else:
            decision = forward_decider(c)
            if decision.allowed:
                ranked.append(_score(c, cfg, decision))
            else:
                why = "; ".join(decision.reasons) or "denied by policy"
                refused.append(Refused(c.node_id, "policy", f"{c.node_id}: {why}", decision))
    ranked.sort(key=lambda r: (r.score_s, r.candidate.node_id))
    return Ranking(ranked, refused)


@dataclass(frozen=True, slots=True)
class Placement:
    """``local``: run here. ``forward``: try ``ranking.ranked`` in order. ``none``: refuse
    (403 when ``ranking.denied_by_policy`` explains it, else 503)."""

    route: Literal["local", "forward", "none"]
    why: str
    local: LocalChoice
    ranking: Ranking | None  # None when the local choice made ranking unnecessary


def place(
    model_ref: str,
    local_models: Set[str],
    queue_depth: int,
    latency_s: float | None,
    candidates: Iterable[Candidate],
    forward_decider: Callable[[Candidate], Decision],
    config: PlacementConfig | None = None,
    *,
    hops: int = 0,
) -> Placement:
    """:func:`decide_local`, then :func:`rank`; a saturated node that holds the model and has
    no eligible peer still serves (queueing beats refusing)."""
    local = decide_local(model_ref, local_models, queue_depth, latency_s, config)
    if local.serve_locally:
        return Placement("local", local.why, local, None)
    ranking = rank(candidates, model_ref, forward_decider, config, hops=hops)
    if ranking.ranked:
        best = ranking.ranked[0]
        return Placement("forward", f"{local.why}; best peer {best.why}", local, ranking)
    if model_ref in local_models:
        return Placement(
            "local", f"{local.why}, but no eligible peer: serving here", local, ranking
        )
    return Placement("none", f"{local.why}, and no eligible peer", local, ranking)


def _score(c: Candidate, cfg: PlacementConfig, decision: Decision) -> Ranked:
    service = cfg.default_service_time_s if c.service_time_s is None else c.service_time_s
    factor = 1 - cfg.gpu_bonus if c.gpu else 1.0
    expected = c.rtt_s + (c.queue_depth + 1) * service * factor
    weight = cfg.tier_weights[c.attrs.tier]
    score = expected * weight
    gpu = f" x GPU {factor:g}" if c.gpu else ""
    why = (
        f"{c.node_id}: rtt {c.rtt_s * 1e3:.1f} ms + ({c.queue_depth} queued + 1) x "
        f"{service * 1e3:.1f} ms{gpu} = {expected * 1e3:.1f} ms, x {c.attrs.tier} weight "
        f"{weight:g} = score {score * 1e3:.1f} ms; allowed by {', '.join(decision.policy_ids)}"
    )
    return Ranked(c, score, expected, why, decision)
