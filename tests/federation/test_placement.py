"""Placement: local first, then alive/fresh/model-holding/allowed peers by expected latency."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.placement import (
    Candidate,
    PlacementConfig,
    decide_local,
    place,
    rank,
)
from federation.policy import DataAttrs, Decision, NodeAttrs, PolicyEngine, read_bundle, sign_bundle
from node.testing import EXAMPLE_POLICY

MODEL = "resnet:1"
KEY = Ed25519PrivateKey.generate()
EXAMPLE = EXAMPLE_POLICY
ENGINE = PolicyEngine(
    read_bundle(sign_bundle(KEY, EXAMPLE, 1, "2025-01-31T12:00:00Z", "acme"), KEY.public_key())
)
ME = NodeAttrs("me", "edge", "berlin", "DE")
PERSONAL = DataAttrs("req-1", "personal", "DE", MODEL)
PUBLIC = DataAttrs("req-2", "public", "DE", MODEL)


def peer(
    node_id: str,
    *,
    tier: str = "onprem",
    jurisdiction: str = "DE",
    alive: bool = True,
    models: frozenset[str] = frozenset({MODEL}),
    rtt_s: float = 0.010,
    queue_depth: int = 0,
    gpu: bool = False,
    record_age_s: float = 1.0,
    service_time_s: float | None = None,
) -> Candidate:
    return Candidate(
        node_id,
        NodeAttrs(node_id, tier, "site", jurisdiction),
        alive,
        models,
        rtt_s,
        queue_depth,
        gpu,
        record_age_s,
        service_time_s,
    )


def allow_all(c: Candidate) -> Decision:
    return Decision(True, ("test",), ("allowed",), (), 1)


def forward(data: DataAttrs, hops: int = 0):  # type: ignore[no-untyped-def]
    return lambda c: ENGINE.decide_forward(ME, data, c.attrs, hops)


def ids(candidates: list) -> list[str]:  # type: ignore[type-arg]
    return [r.candidate.node_id for r in candidates]


# --- local first -----------------------------------------------------------------------------


def test_local_preferred_when_model_here_and_not_saturated() -> None:
    choice = decide_local(MODEL, {MODEL}, queue_depth=3, latency_s=0.02)
    assert choice.serve_locally
    p = place(MODEL, {MODEL}, 3, 0.02, [peer("fast", rtt_s=0.0)], allow_all)
    assert p.route == "local" and p.ranking is None


@pytest.mark.parametrize(
    ("models", "queue", "latency", "why"),
    [
        (set(), 0, None, "not installed"),
        ({MODEL}, 8, None, "8 queued, limit 8"),
        ({MODEL}, 0, 0.300, "latency 300.0 ms"),
    ],
)
def test_not_local_when_absent_or_saturated(
    models: set[str], queue: int, latency: float | None, why: str
) -> None:
    choice = decide_local(MODEL, models, queue, latency)
    assert not choice.serve_locally and why in choice.why


def test_saturated_goes_to_ranked_peers() -> None:
    p = place(MODEL, {MODEL}, 50, None, [peer("b"), peer("a", rtt_s=0.001)], allow_all)
    assert p.route == "forward"
    assert p.ranking is not None and ids(p.ranking.ranked) == ["a", "b"]


def test_saturated_with_no_eligible_peer_still_serves_locally() -> None:
    p = place(MODEL, {MODEL}, 50, None, [peer("dead", alive=False)], allow_all)
    assert p.route == "local" and "no eligible peer" in p.why


def test_no_model_anywhere_is_no_route() -> None:
    p = place(MODEL, set(), 0, None, [peer("x", models=frozenset())], allow_all)
    assert p.route == "none"


# --- exclusions ------------------------------------------------------------------------------


def test_dead_stale_and_modelless_peers_are_excluded_with_reasons() -> None:
    asked: list[str] = []

    def decider(c: Candidate) -> Decision:
        asked.append(c.node_id)
        return allow_all(c)

    r = rank(
        [
            peer("ok"),
            peer("dead", alive=False),
            peer("stale", record_age_s=31.0),
            peer("other-model", models=frozenset({"bert:2"})),
        ],
        MODEL,
        decider,
    )
    assert ids(r.ranked) == ["ok"]
    assert {x.node_id: x.kind for x in r.refused} == {
        "dead": "dead",
        "stale": "stale",
        "other-model": "no-model",
    }
    assert asked == ["ok"]  # policy is asked only about otherwise eligible peers
    assert "31 s old" in next(x.why for x in r.refused if x.kind == "stale")


def test_policy_denied_peers_are_excluded_and_reported_with_the_decision() -> None:
    candidates = [
        peer("onprem-de"),
        peer("cloud-de", tier="cloud", rtt_s=0.001),
        peer("onprem-fr", jurisdiction="FR", rtt_s=0.001),
    ]
    r = rank(candidates, MODEL, forward(PERSONAL))
    assert ids(r.ranked) == ["onprem-de"]
    assert r.ranked[0].decision.policy_ids == ("personal-stays-home",)
    assert "personal-stays-home" in r.ranked[0].why
    denied = {x.node_id: x for x in r.denied_by_policy}
    assert set(denied) == {"cloud-de", "onprem-fr"}
    assert denied["cloud-de"].decision is not None
    assert not denied["cloud-de"].decision.allowed
    assert "tier cloud" in denied["cloud-de"].why
    assert "jurisdiction FR" in denied["onprem-fr"].why
    # public data may go to all three; the cheapest wins
    assert len(rank(candidates, MODEL, forward(PUBLIC)).ranked) == 3


def test_hop_limit_stops_forwarding() -> None:
    r = rank([peer("a")], MODEL, allow_all, hops=1)
    assert r.ranked == [] and r.refused[0].kind == "hop-limit"
    r = rank([peer("a")], MODEL, allow_all, PlacementConfig(max_hops=2), hops=1)
    assert ids(r.ranked) == ["a"]


# --- ordering --------------------------------------------------------------------------------


def test_ordered_by_rtt() -> None:
    r = rank([peer("far", rtt_s=0.050), peer("near", rtt_s=0.005)], MODEL, allow_all)
    assert ids(r.ranked) == ["near", "far"]


def test_queue_costs_service_time() -> None:
    # near but busy: 5 ms + 5 x 50 ms; far but idle: 60 ms + 1 x 50 ms
    busy = peer("busy", rtt_s=0.005, queue_depth=4)
    idle = peer("idle", rtt_s=0.060)
    r = rank([busy, idle], MODEL, allow_all)
    assert ids(r.ranked) == ["idle", "busy"]
    assert r.ranked[0].expected_latency_s == pytest.approx(0.110)
    assert r.ranked[1].expected_latency_s == pytest.approx(0.255)


def test_gpu_bonus_and_advertised_service_time() -> None:
    cpu = peer("cpu", queue_depth=1)
    gpu = peer("gpu", queue_depth=1, gpu=True)
    assert ids(rank([cpu, gpu], MODEL, allow_all).ranked) == ["gpu", "cpu"]
    no_bonus = PlacementConfig(gpu_bonus=0.0)
    assert ids(rank([cpu, gpu], MODEL, allow_all, no_bonus).ranked) == ["cpu", "gpu"]  # tie
    quick = peer("quick", queue_depth=1, service_time_s=0.001)
    assert ids(rank([gpu, quick], MODEL, allow_all).ranked) == ["quick", "gpu"]


def test_tier_cost_weights() -> None:
    cloud = peer("cloud", tier="cloud", rtt_s=0.009)
    onprem = peer("onprem", rtt_s=0.010)
    assert ids(rank([cloud, onprem], MODEL, allow_all).ranked) == ["onprem", "cloud"]
    flat = PlacementConfig(tier_weights={"edge": 1.0, "onprem": 1.0, "cloud": 1.0})
    assert ids(rank([cloud, onprem], MODEL, allow_all, flat).ranked) == ["cloud", "onprem"]


def test_why_shows_the_arithmetic() -> None:
    r = rank([peer("a", tier="cloud", rtt_s=0.010, queue_depth=1, gpu=True)], MODEL, allow_all)
    why = r.ranked[0].why
    assert (
        "rtt 10.0 ms" in why and "1 queued" in why and "GPU" in why and "cloud weight 1.25" in why
    )


@settings(max_examples=100, deadline=None)
@given(st.permutations(["d", "a", "c", "b"]))
def test_ties_broken_by_node_id_whatever_the_input_order(order: list[str]) -> None:
    """Invariant: equal scores rank by node id, independent of the order candidates come in."""
    r = rank([peer(n) for n in order], MODEL, allow_all)
    assert ids(r.ranked) == ["a", "b", "c", "d"]
    assert [
        x.node_id for x in rank([peer(n, alive=False) for n in order], MODEL, allow_all).refused
    ] == [
        "a",
        "b",
        "c",
        "d",
    ]


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"local_queue_limit": 0}, "local_queue_limit"),
        ({"gpu_bonus": 1.0}, "gpu_bonus"),
        ({"max_record_age_s": 0}, "max_record_age_s"),
        ({"tier_weights": {"edge": 1.0}}, "tier_weights"),
        ({"max_hops": -1}, "max_hops"),
    ],
)
def test_config_is_validated(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PlacementConfig(**kwargs)  # type: ignore[arg-type]


def test_candidate_is_validated() -> None:
    with pytest.raises(ValueError, match="attrs"):
        Candidate("a", NodeAttrs("b", "edge", "s", "DE"), True, set(), 0.0, 0, False, 0.0)
    with pytest.raises(ValueError, match=">= 0"):
        peer("a", queue_depth=-1)
