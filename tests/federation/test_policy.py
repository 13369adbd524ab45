"""Policy bundles and decisions: the DESIGN §4 entity model, fail-closed, no rollback."""

from __future__ import annotations

import base64
import json
from typing import Any

import cedarpy
import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.errors import (
    BadSignature,
    FederationError,
    MalformedInput,
    PolicyError,
    RollbackRefused,
)
from federation.policy import (
    BUNDLE_FORMAT,
    MAX_BUNDLE_BYTES,
    NO_BUNDLE_REASON,
    DataAttrs,
    NodeAttrs,
    PolicyBundle,
    PolicyEngine,
    authority_key_id,
    read_bundle,
    sign_bundle,
)
from node.testing import EXAMPLE_POLICY

EXAMPLE = EXAMPLE_POLICY

ISSUED = "2025-01-31T12:00:00Z"
KEY = Ed25519PrivateKey.generate()
OTHER_KEY = Ed25519PrivateKey.generate()

SENDER = NodeAttrs("edge-de", "edge", "berlin", "DE", {"zone": "lan"})
ONPREM_DE = NodeAttrs("onprem-de", "onprem", "munich", "DE")
CLOUD_US = NodeAttrs("cloud-us", "cloud", "us-east-1", "US")
CLOUD_DE = NodeAttrs("cloud-de", "cloud", "eu-central-1", "DE")
ONPREM_FR = NodeAttrs("onprem-fr", "onprem", "paris", "FR", {"zone": "dmz"})
TARGETS = [ONPREM_DE, CLOUD_US, CLOUD_DE, ONPREM_FR]


def data(cls: str = "personal", jurisdiction: str = "DE", request_id: str = "req-1") -> DataAttrs:
    return DataAttrs(request_id, cls, jurisdiction, "resnet:1")


def bundle(policies: str = EXAMPLE, version: int = 1, **kw: Any) -> PolicyBundle:
    return read_bundle(sign_bundle(KEY, policies, version, ISSUED, "acme", **kw), KEY.public_key())


def engine(policies: str = EXAMPLE, **kw: Any) -> PolicyEngine:
    return PolicyEngine(bundle(policies, **kw))


def sign_raw(document: dict[str, Any], key: Ed25519PrivateKey = KEY) -> bytes:
    """Sign any document, bypassing sign_bundle's checks (to test what readers refuse)."""
    body = rfc8785.dumps(document)
    return rfc8785.dumps(
        {
            "bundle": document,
            "key_id": authority_key_id(key.public_key()),
            "signature": base64.b64encode(key.sign(body)).decode(),
        }
    )


def doc(**overrides: object) -> dict[str, Any]:
    d: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "federation": "acme",
        "version": 1,
        "issued_at": ISSUED,
        "policies": EXAMPLE,
    }
    d.update(overrides)
    return {k: v for k, v in d.items() if v is not None}


# --- the DESIGN §4 example policy ------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "allowed"),
    [(ONPREM_DE, True), (CLOUD_US, False), (CLOUD_DE, False), (ONPREM_FR, False)],
)
def test_personal_data_stays_off_cloud_and_in_jurisdiction(
    target: NodeAttrs, allowed: bool
) -> None:
    d = engine().decide_forward(SENDER, data("personal", "DE"), target, 0)
    assert d.allowed is allowed
    assert d.policy_ids == (("personal-stays-home",) if allowed else ())
    assert d.errors == ()
    assert d.policy_version == 1


@pytest.mark.parametrize("target", TARGETS)
def test_public_data_may_go_anywhere(target: NodeAttrs) -> None:
    d = engine().decide_forward(SENDER, data("public"), target, 0)
    assert d.allowed and d.policy_ids == ("public-anywhere",)


@pytest.mark.parametrize("target", TARGETS)
def test_unknown_data_class_is_denied_by_default(target: NodeAttrs) -> None:
    d = engine().decide_forward(SENDER, data("secret"), target, 0)
    assert not d.allowed and d.policy_ids == ()
    assert "no policy permits" in d.reasons[0] and "secret" in d.reasons[0]


def test_no_bundle_denies_everything_and_names_the_fix() -> None:
    e = PolicyEngine(None)
    decisions = [
        e.decide_forward(SENDER, data("public"), ONPREM_DE, 0),
        e.decide_infer("app", data("public"), SENDER, 0),
        e.decide_model_pull(ONPREM_DE, "resnet", "1"),
        e.decide_audit_replicate(ONPREM_DE, SENDER),
    ]
    for d in decisions:
        assert not d.allowed and d.policy_version is None
        assert d.reasons == (NO_BUNDLE_REASON,)
        assert "outpost policy apply" in d.reasons[0]


# --- fail closed on evaluation errors --------------------------------------------------------

ERRORING_FORBID = """\
permit(principal, action, resource);
@id("no-dmz")
forbid(principal, action == Action::"forward", resource)
  when { context.target.labels.zone == "dmz" };
"""


def test_evaluation_error_denies_even_where_cedar_would_allow() -> None:
    # Cedar skips a policy that errors, so the forbid would silently stop forbidding.
    e = engine(ERRORING_FORBID)
    d = e.decide_forward(SENDER, data("public"), ONPREM_DE, 0)  # ONPREM_DE has no zone label
    assert not d.allowed
    assert d.policy_ids == ("no-dmz",)
    assert d.errors and "no-dmz" in d.errors[0] and "zone" in d.errors[0]
    assert "has" in d.reasons[0]
    # and the policy still works where it can be evaluated
    assert not e.decide_forward(SENDER, data("public"), ONPREM_FR, 0).allowed
    assert e.decide_infer("app", data("public"), ONPREM_DE, 0).allowed


def test_cedarpy_failure_denies(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> object:
        raise RuntimeError("engine exploded")

    e = engine()
    monkeypatch.setattr(cedarpy, "is_authorized", boom)
    d = e.decide_forward(SENDER, data("public"), ONPREM_DE, 0)
    assert not d.allowed and "engine exploded" in d.errors[0]


def test_error_decisions_are_not_cached() -> None:
    e = engine(ERRORING_FORBID)
    e.decide_forward(SENDER, data("public"), ONPREM_DE, 0)
    e.decide_forward(SENDER, data("public"), ONPREM_DE, 0)
    assert e.cache_hits == 0


# --- signatures, format, rollback ------------------------------------------------------------


def test_round_trip_and_file_format() -> None:
    raw = sign_bundle(KEY, EXAMPLE, 7, ISSUED, "acme", entities=[])
    envelope = json.loads(raw)
    assert raw == rfc8785.dumps(envelope)
    assert set(envelope) == {"bundle", "key_id", "signature"}
    assert envelope["key_id"] == authority_key_id(KEY.public_key())
    assert envelope["bundle"] == doc(version=7, entities=[])
    b = read_bundle(raw, KEY.public_key(), federation="acme")
    assert (b.version, b.issued_at, b.federation, b.policies) == (7, ISSUED, "acme", EXAMPLE)
    assert b.raw == raw and len(b.digest) == 64


def test_bundle_signed_by_another_key_is_refused() -> None:
    raw = sign_bundle(OTHER_KEY, EXAMPLE, 1, ISSUED, "acme")
    with pytest.raises(BadSignature, match="authority"):
        read_bundle(raw, KEY.public_key())


def test_forged_signature_under_the_right_key_id_is_refused() -> None:
    forged = json.loads(sign_bundle(OTHER_KEY, EXAMPLE, 1, ISSUED, "acme"))
    forged["key_id"] = authority_key_id(KEY.public_key())
    with pytest.raises(BadSignature, match="does not verify"):
        read_bundle(rfc8785.dumps(forged), KEY.public_key())


def test_altered_policy_byte_is_refused() -> None:
    raw = sign_bundle(KEY, EXAMPLE, 1, ISSUED, "acme")
    altered = raw.replace(b'tier != \\"cloud\\"', b'tier != \\"cloue\\"')
    assert altered != raw
    with pytest.raises(BadSignature):
        read_bundle(altered, KEY.public_key())


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_single_byte_change_is_refused(draw: st.DataObject) -> None:
    """Invariant: no single-byte alteration of a signed bundle file is ever accepted."""
    raw = sign_bundle(KEY, EXAMPLE, 1, ISSUED, "acme")
    i = draw.draw(st.integers(0, len(raw) - 1))
    b = draw.draw(st.integers(0, 255).filter(lambda b: b != raw[i]))
    with pytest.raises(FederationError):
        read_bundle(raw[:i] + bytes([b]) + raw[i + 1 :], KEY.public_key())


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        rfc8785.dumps({"bundle": {}, "key_id": "x"}),
        json.dumps(json.loads(sign_bundle(KEY, EXAMPLE, 1, ISSUED, "acme")), indent=1).encode(),
        b'{"bundle":{},"bundle":{},"key_id":"","signature":""}',
        b" " * (MAX_BUNDLE_BYTES + 1),
    ],
    ids=["not-json", "not-object", "missing-key", "not-canonical", "duplicate-key", "too-big"],
)
def test_malformed_files_are_refused(data: bytes) -> None:
    with pytest.raises(MalformedInput):
        read_bundle(data, KEY.public_key())


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"version": 0}, "version"),
        ({"version": True}, "version"),
        ({"version": "2"}, "version"),
        ({"issued_at": "2025-01-31 12:00:00"}, "RFC 3339"),
        ({"issued_at": "2025-01-31T12:00:00+02:00"}, "RFC 3339"),
        ({"issued_at": "2025-02-30T12:00:00Z"}, "RFC 3339"),
        ({"federation": ""}, "federation"),
        ({"format": "outpost.policy-bundle/9"}, "format"),
        ({"extra": 1}, "unknown"),
        ({"policies": None}, "missing"),
        ({"entities": {"a": 1}}, "entities"),
    ],
)
def test_signed_but_malformed_fields_are_refused(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(MalformedInput, match=match):
        read_bundle(sign_raw(doc(**overrides)), KEY.public_key())


def test_sign_bundle_refuses_bad_fields() -> None:
    with pytest.raises(MalformedInput, match="version"):
        sign_bundle(KEY, EXAMPLE, 0, ISSUED, "acme")
    with pytest.raises(MalformedInput, match="RFC 3339"):
        sign_bundle(KEY, EXAMPLE, 1, "yesterday", "acme")


def test_wrong_federation_is_refused() -> None:
    raw = sign_bundle(KEY, EXAMPLE, 1, ISSUED, "acme")
    with pytest.raises(MalformedInput, match="federation"):
        read_bundle(raw, KEY.public_key(), federation="other")


@pytest.mark.parametrize("new_version", [3, 5])
def test_rollback_is_refused_with_the_fix(new_version: int) -> None:
    held, new = bundle(version=5), bundle(version=new_version)
    with pytest.raises(RollbackRefused) as info:
        held.accepts_update(new)
    assert str(info.value) == (
        f"bundle version {new_version} is not newer than the version 5 in force; "
        "sign it with --version 6 or higher"
    )
    e = PolicyEngine(held)
    with pytest.raises(RollbackRefused):
        e.apply(new)
    assert e.bundle is held


def test_newer_bundle_is_accepted_and_clears_the_cache() -> None:
    e = PolicyEngine(bundle(version=5))
    assert e.decide_forward(SENDER, data("public"), CLOUD_US, 0).allowed
    bundle(version=5).accepts_update(bundle(version=6))
    e.apply(bundle('permit(principal, action == Action::"infer", resource);', version=6))
    d = e.decide_forward(SENDER, data("public"), CLOUD_US, 0)
    assert not d.allowed and d.policy_version == 6


# --- Cedar text, schema ----------------------------------------------------------------------

SYNTAX_ERROR = """\
permit(principal, action == Action::"infer", resource);

// the next one is broken
permit(principal, action == Action::"forward", resource)
  when { resource.data_class == };
"""


def test_cedar_syntax_error_is_refused_naming_the_line() -> None:
    with pytest.raises(PolicyError, match=r"line 4.*unexpected token"):
        sign_bundle(KEY, SYNTAX_ERROR, 1, ISSUED, "acme")
    with pytest.raises(PolicyError, match=r"line 4.*unexpected token"):
        read_bundle(sign_raw(doc(policies=SYNTAX_ERROR)), KEY.public_key())


@pytest.mark.parametrize(
    ("policies", "match"),
    [
        (
            '@id("a")\npermit(principal, action, resource);\n@id("a")\nforbid(principal, action, resource);',
            "unique",
        ),
        ('@id("")\npermit(principal, action, resource);', "empty @id"),
        ("permit(principal == ?principal, action, resource);", "template"),
        ("// nothing here\n", "no policy"),
    ],
)
def test_policy_sets_that_cannot_name_or_decide_are_refused(policies: str, match: str) -> None:
    with pytest.raises(PolicyError, match=match):
        sign_bundle(KEY, policies, 1, ISSUED, "acme")


SCHEMA = """\
type Peer = { node_id: String, tier: String, site: String, jurisdiction: String,
              labels: { zone?: String } };
entity Node = { tier: String, site: String, jurisdiction: String, labels: { zone?: String } };
entity App;
entity Data = { data_class: String, jurisdiction: String, model: String };
action "forward" appliesTo { principal: Node, resource: Data, context: { target: Peer, hops: Long } };
action "infer" appliesTo { principal: [App, Node], resource: Data,
                           context: { executor: Peer, hops: Long } };
"""


def test_schema_validation_failure_is_refused() -> None:
    typo = (
        "permit(principal, action, resource);\n"
        '@id("typo")\nforbid(principal, action == Action::"forward", resource)\n'
        '  when { context.target.tierr == "cloud" };\n'
    )
    with pytest.raises(PolicyError, match=r"typo \(line 2\).*tierr"):
        sign_bundle(KEY, typo, 1, ISSUED, "acme", schema=SCHEMA)
    with pytest.raises(PolicyError, match="tierr"):
        read_bundle(sign_raw(doc(policies=typo, schema=SCHEMA)), KEY.public_key())


def test_schema_valid_bundle_decides_as_without_schema() -> None:
    e = engine(schema=SCHEMA)
    assert e.decide_forward(SENDER, data("personal"), ONPREM_DE, 0).allowed
    assert not e.decide_forward(SENDER, data("personal"), CLOUD_DE, 0).allowed


def test_unparsable_schema_is_refused() -> None:
    with pytest.raises(PolicyError, match="schema does not parse"):
        sign_bundle(KEY, EXAMPLE, 1, ISSUED, "acme", schema="entity Node = { tier: Strin };")


# --- policy ids, explain, forbid, labels, hops -----------------------------------------------

NAMED = """\
@id("infer-anywhere")
permit(principal, action == Action::"infer", resource);
@id("personal-stays-home")
permit(principal, action == Action::"forward", resource)
  when { resource.data_class == "personal" && context.target.tier != "cloud"
         && context.target.jurisdiction == resource.jurisdiction };
permit(principal, action == Action::"forward", resource)
  when { resource.data_class == "public" };
@id("no-cloud-us")
forbid(principal, action == Action::"forward", resource)
  when { context.target.tier == "cloud" && context.target.jurisdiction == "US" };
"""


def test_id_annotations_name_policies_in_decisions_and_explain() -> None:
    e = engine(NAMED)
    d = e.decide_forward(SENDER, data("personal"), ONPREM_DE, 0)
    assert d.allowed and d.policy_ids == ("personal-stays-home",)
    assert "personal-stays-home" in d.reasons[0]
    x = e.explain(d)
    assert [(p.policy_id, p.line) for p in x.policies] == [("personal-stays-home", 3)]
    assert x.policies[0].text.startswith('@id("personal-stays-home")\npermit(')
    assert 'context.target.tier != "cloud"' in x.render()
    # un-annotated policies keep Cedar's positional id
    assert e.decide_forward(SENDER, data("public"), ONPREM_FR, 0).policy_ids == ("policy2",)


def test_forbid_overrides_permit_and_is_named() -> None:
    e = engine(NAMED)
    d = e.decide_forward(SENDER, data("public"), CLOUD_US, 0)
    assert not d.allowed and d.policy_ids == ("no-cloud-us",)
    assert "forbidden by no-cloud-us" in d.reasons[0]
    assert "forbid(" in e.explain(d).policies[0].text
    assert e.decide_forward(SENDER, data("public"), CLOUD_DE, 0).allowed


def test_explain_refuses_a_decision_from_another_version() -> None:
    e = engine(NAMED)
    d = e.decide_forward(SENDER, data("public"), CLOUD_US, 0)
    e.apply(bundle(NAMED, version=2))
    with pytest.raises(ValueError, match="decide again"):
        e.explain(d)


LABELS = """\
permit(principal, action == Action::"forward", resource)
  when { context.target.labels has zone && context.target.labels.zone == "dmz" };
"""


def test_labels_are_usable_in_policies() -> None:
    e = engine(LABELS)
    assert e.decide_forward(SENDER, data(), ONPREM_FR, 0).allowed  # zone=dmz
    d = e.decide_forward(SENDER, data(), ONPREM_DE, 0)  # no zone label
    assert not d.allowed and d.errors == ()
    lan = NodeAttrs("x", "onprem", "s", "DE", {"zone": "lan"})
    assert not e.decide_forward(SENDER, data(), lan, 0).allowed
    sender_labels = 'permit(principal, action, resource) when { principal.labels.zone == "lan" };'
    assert engine(sender_labels).decide_forward(SENDER, data(), ONPREM_DE, 0).allowed


HOPS = """\
permit(principal, action == Action::"forward", resource);
@id("one-hop")
forbid(principal, action == Action::"forward", resource) when { context.hops >= 1 };
"""


def test_hop_limit_is_expressible() -> None:
    e = engine(HOPS)
    assert e.decide_forward(SENDER, data(), ONPREM_DE, 0).allowed
    d = e.decide_forward(SENDER, data(), ONPREM_DE, 1)
    assert not d.allowed and d.policy_ids == ("one-hop",)
    with pytest.raises(ValueError, match="hops"):
        e.decide_forward(SENDER, data(), ONPREM_DE, -1)


# --- the other actions -----------------------------------------------------------------------

OTHER_ACTIONS = """\
@id("apps-on-edge")
permit(principal is App, action == Action::"infer", resource)
  when { context.executor.tier == "edge" && context.hops == 0 };
@id("peers-personal-home")
permit(principal is Node, action == Action::"infer", resource)
  when { resource.data_class == "personal"
         && context.executor.jurisdiction == resource.jurisdiction
         && principal.jurisdiction == resource.jurisdiction };
@id("pull-resnet")
permit(principal, action == Action::"model.pull", resource == Model::"resnet:1")
  when { context.target.tier != "cloud" };
@id("collectors")
permit(principal, action == Action::"audit.replicate", resource is Node)
  when { context.target.labels has role && context.target.labels.role == "collector"
         && resource.site == "berlin" };
"""


def test_infer_principal_is_the_app_or_the_forwarding_node() -> None:
    e = engine(OTHER_ACTIONS)
    assert e.decide_infer("camera-app", data("public"), SENDER, 0).policy_ids == ("apps-on-edge",)
    assert not e.decide_infer("camera-app", data("public"), ONPREM_DE, 0).allowed
    assert not e.decide_infer("camera-app", data("public"), SENDER, 1).allowed
    assert e.decide_infer(SENDER, data("personal"), ONPREM_DE, 1).allowed
    assert not e.decide_infer(SENDER, data("personal"), ONPREM_FR, 1).allowed
    assert not e.decide_infer(CLOUD_US, data("personal"), ONPREM_DE, 1).allowed


def test_model_pull_and_audit_replicate() -> None:
    e = engine(OTHER_ACTIONS)
    assert e.decide_model_pull(ONPREM_FR, "resnet", "1").policy_ids == ("pull-resnet",)
    assert not e.decide_model_pull(ONPREM_FR, "resnet", "2").allowed
    assert not e.decide_model_pull(CLOUD_DE, "resnet", "1").allowed
    collector = NodeAttrs("c1", "onprem", "hq", "DE", {"role": "collector"})
    assert e.decide_audit_replicate(collector, SENDER).policy_ids == ("collectors",)
    assert not e.decide_audit_replicate(collector, ONPREM_DE).allowed  # origin not in berlin
    assert not e.decide_audit_replicate(ONPREM_DE, SENDER).allowed  # not a collector
    me = NodeAttrs("c2", "edge", "berlin", "DE", {"role": "collector"})
    own = e.decide_audit_replicate(me, me)  # principal and resource are one entity
    assert own.allowed and own.errors == ()


# --- bundle entities -------------------------------------------------------------------------

ENTITIES = [
    {"uid": {"type": "Group", "id": "senders"}, "attrs": {}, "parents": []},
    {
        "uid": {"type": "Node", "id": "edge-de"},
        "attrs": {"tier": "cloud", "owner": "ops"},
        "parents": [{"type": "Group", "id": "senders"}],
    },
]
GROUPS = """\
permit(principal in Group::"senders", action == Action::"forward", resource)
  when { principal.owner == "ops" };
@id("cloud-senders")
forbid(principal, action, resource) when { principal.tier == "cloud" };
"""


def test_bundle_entities_add_parents_but_certificates_win() -> None:
    e = engine(GROUPS, entities=ENTITIES)
    assert e.decide_forward(SENDER, data(), ONPREM_DE, 0).allowed  # tier edge from the cert
    other = NodeAttrs("edge-2", "edge", "berlin", "DE")
    assert not e.decide_forward(other, data(), ONPREM_DE, 0).allowed


def test_new_bundle_entities_take_effect_for_principals_seen_before() -> None:
    e = engine(GROUPS)
    assert not e.decide_forward(SENDER, data(), ONPREM_DE, 0).allowed
    e.apply(bundle(GROUPS, version=2, entities=ENTITIES))
    assert e.decide_forward(SENDER, data(), ONPREM_DE, 0).allowed


def test_bad_bundle_entities_are_refused() -> None:
    with pytest.raises(PolicyError, match="entities"):
        sign_bundle(KEY, EXAMPLE, 1, ISSUED, "acme", entities=[{"attrs": {}}])


# --- the decision cache ----------------------------------------------------------------------


def test_cache_hits_for_same_inputs_across_request_ids() -> None:
    e = engine()
    first = e.decide_forward(SENDER, data(request_id="a"), ONPREM_DE, 0)
    again = e.decide_forward(SENDER, data(request_id="b"), ONPREM_DE, 0)
    assert first == again and (e.cache_hits, e.cache_misses) == (1, 1)
    e.decide_forward(SENDER, data(request_id="c"), ONPREM_DE, 1)  # hops differ: a miss
    assert e.cache_misses == 2


def test_request_id_is_part_of_the_key_when_a_policy_names_a_data_entity() -> None:
    e = engine(
        'permit(principal, action, resource);\nforbid(principal, action, resource == Data::"bad");'
    )
    assert e.decide_forward(SENDER, data(request_id="ok"), ONPREM_DE, 0).allowed
    assert not e.decide_forward(SENDER, data(request_id="bad"), ONPREM_DE, 0).allowed


def test_cache_is_bounded() -> None:
    e = PolicyEngine(bundle(), cache_size=2)
    for hops in range(5):
        e.decide_forward(SENDER, data(), ONPREM_DE, hops)
    assert len(e._cache) == 2
    with pytest.raises(ValueError, match="cache_size"):
        PolicyEngine(None, cache_size=-1)


_nodes = st.builds(
    NodeAttrs,
    node_id=st.sampled_from(["a", "b", "c"]),
    tier=st.sampled_from(["edge", "onprem", "cloud"]),
    site=st.just("s"),
    jurisdiction=st.sampled_from(["DE", "FR", "US"]),
    labels=st.dictionaries(st.sampled_from(["zone"]), st.sampled_from(["dmz", "lan"])),
)
_data = st.builds(
    DataAttrs,
    request_id=st.sampled_from(["r1", "r2"]),
    data_class=st.sampled_from(["personal", "public", "secret"]),
    jurisdiction=st.sampled_from(["DE", "FR", "US"]),
    model=st.just("resnet:1"),
)
_CACHED = PolicyEngine(bundle(NAMED))
_UNCACHED = PolicyEngine(bundle(NAMED), cache_size=0)


@settings(max_examples=200, deadline=None)
@given(_nodes, _data, _nodes, st.integers(0, 2))
def test_cached_and_uncached_decisions_agree(
    sender: NodeAttrs, d: DataAttrs, target: NodeAttrs, hops: int
) -> None:
    """Invariant: the cache never changes a decision."""
    assert _CACHED.decide_forward(sender, d, target, hops) == _UNCACHED.decide_forward(
        sender, d, target, hops
    )


def test_node_attrs_are_validated() -> None:
    with pytest.raises(ValueError, match="tier"):
        NodeAttrs("n", "fog", "s", "DE")
    with pytest.raises(TypeError, match="labels"):
        NodeAttrs("n", "edge", "s", "DE", {"zone": 1})  # type: ignore[dict-item]
