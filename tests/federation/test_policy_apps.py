"""App principals in Cedar decisions (DESIGN §4): ``App::"<name>"`` carries its token's
attributes, ``App::"anonymous"`` none, and an app's request forwarded by a peer has that peer as
``context.via``. Invariant: a decision never depends on anything but its inputs — two apps of
the same name with different attributes are never confused by the decision cache."""

from __future__ import annotations

from federation.policy_engine import ANONYMOUS, AppAttrs, PolicyEngine
from tests.federation.test_policy import CLOUD_DE, ONPREM_DE, SENDER, bundle, data

POLICY = """\
@id("diagnosis-only")
permit(principal is App, action == Action::"infer", resource)
  when { resource.data_class != "personal"
         || (principal has purpose && principal.purpose == "diagnosis") };
@id("nodes")
permit(principal is Node, action == Action::"infer", resource);
@id("not-via-cloud")
forbid(principal is App, action == Action::"infer", resource)
  when { context has via && context.via.tier == "cloud" };
@id("no-scraper")
forbid(principal == App::"scraper", action == Action::"infer", resource);
"""


def test_app_attributes_decide_and_the_cache_keeps_them_apart() -> None:
    engine = PolicyEngine(bundle(POLICY))
    diag = AppAttrs("cam", {"purpose": "diagnosis"})
    billing = AppAttrs("cam", {"purpose": "billing"})  # same name, other token attributes
    for _ in range(2):  # second round from the cache
        allowed = engine.decide_infer(diag, data(), ONPREM_DE, 0)
        assert allowed.allowed and allowed.policy_ids == ("diagnosis-only",)
        refused = engine.decide_infer(billing, data(), ONPREM_DE, 0)
        assert not refused.allowed and "App cam" in refused.reasons[0]
    assert engine.cache_hits >= 2
    assert not engine.decide_infer(ANONYMOUS, data(), ONPREM_DE, 0).allowed
    assert engine.decide_infer(ANONYMOUS, data("public"), ONPREM_DE, 0).allowed
    # a bare name is the same principal with no attributes
    assert not engine.decide_infer("cam", data(), ONPREM_DE, 0).allowed
    scraper = engine.decide_infer(AppAttrs("scraper", {"purpose": "diagnosis"}), data(),
                                  ONPREM_DE, 0)
    assert not scraper.allowed and scraper.policy_ids == ("no-scraper",)


def test_via_is_the_node_that_vouches_for_a_forwarded_app() -> None:
    engine = PolicyEngine(bundle(POLICY))
    diag = AppAttrs("cam", {"purpose": "diagnosis"})
    assert engine.decide_infer(diag, data(), ONPREM_DE, 1, via=SENDER).allowed
    vouched_by_cloud = engine.decide_infer(diag, data(), ONPREM_DE, 1, via=CLOUD_DE)
    assert not vouched_by_cloud.allowed and vouched_by_cloud.policy_ids == ("not-via-cloud",)
    # no app label: the forwarding node is the principal, and there is no via
    assert engine.decide_infer(SENDER, data(), ONPREM_DE, 1).allowed


def test_app_attributes_are_strings_only() -> None:
    import pytest

    with pytest.raises(TypeError):
        AppAttrs("cam", {"n": 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        AppAttrs("")
