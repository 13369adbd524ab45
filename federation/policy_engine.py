"""Cedar policy decisions over the DESIGN §4 entity model — a contract operators write against.

This module owns building Cedar requests from attested attributes and turning cedarpy's answer
into a :class:`Decision`. It must never do I/O, read the clock or trust self-declared
attributes: callers pass attributes taken from certificates (:class:`NodeAttrs`).

Entity model (stable; document changes in the README before making them):

* ``Node::"<node-id>"`` — ``tier``, ``site``, ``jurisdiction`` (strings), ``labels`` (record of
  strings), from the node's certificate. ``App::"<name>"`` — a local caller, with the
  attributes of its token (:class:`AppAttrs`; ``App::"anonymous"`` has none).
* ``Data::"<request-id>"`` — ``data_class``, ``jurisdiction``, ``model``.
* ``Model::"<name>:<version>"`` — no attributes.
* A bundle's own entities may give these entities ``parents`` (e.g. ``Node`` in ``Group``) and
  extra attributes; the certificate's attributes always win over the bundle's.

Requests (a "peer record" is ``{node_id, tier, site, jurisdiction, labels}``):

============================  ==============  ===========  ======================================
action                        principal       resource     context
============================  ==============  ===========  ======================================
``Action::"forward"``         sending Node    Data         ``{target: <peer record>, hops: Long}``
``Action::"infer"``           App or Node     Data         ``{executor: <record>, hops: Long}``
``Action::"model.pull"``      pulling Node    Model        ``{target: <the puller's record>}``
``Action::"audit.replicate"`` collector Node  origin Node  ``{target: <the collector's record>}``
``Action::"audit.read"``      reading Node    origin Node  ``{target: <the reader's record>}``
============================  ==============  ===========  ======================================

An app's request forwarded by a peer is judged at the executor with the same ``App`` principal
(its name and attributes, as the sending node attested them over mutual TLS) and the sending
node's record as ``context.via``; a forward with no app label has the sending ``Node`` as
principal and no ``via``.

``hops`` counts forwards: for ``forward``, those the request already took before this one (0
at the node where it entered), so ``forbid(principal, action == Action::"forward", resource)
when { context.hops >= 1 };`` keeps requests to one hop; for ``infer``, those it took to reach
the executor (0 for a local app). ``audit.replicate``'s resource (the Node whose log is copied)
is this module's choice: DESIGN §4 says only "likewise with the collector".

Fail closed: no bundle, a cedarpy failure, or *any* evaluation error in *any* policy is a deny.
Cedar itself skips a policy that errors, so an erroring ``forbid`` would silently stop
forbidding; we refuse instead and name the policy and the fix (guard with ``has``).

Speed: the bundle's policies are parsed once (``cedarpy.PolicySet``), each principal's entity
once per bundle (a ``cedarpy.Entities`` handle), and per decision only the resource entity and
the context, sent as JSON strings built from fragments cached on each :class:`NodeAttrs`. That
costs ~60 µs on a 2-core box (``bench/policy.py``), so decisions are also memoised in a
bounded cache (:data:`DEFAULT_CACHE_SIZE`) keyed by every input Cedar can observe — the action,
both entities' uids and attributes, the context — and cleared whenever the bundle changes. The
per-request ``Data`` id is left out of the key unless a policy or bundle entity names a ``Data``
entity by id (only then can it change a decision). Decisions with errors are never cached.
An engine is not thread-safe: use it from one event loop (decisions take microseconds).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import cedarpy

from federation.identity import TIERS
from federation.policy_bundle import PolicyBundle
from federation.policy_cedar import CompiledPolicies

__all__ = [
    "ANONYMOUS",
    "DEFAULT_CACHE_SIZE",
    "NO_BUNDLE_REASON",
    "TIERS",
    "AppAttrs",
    "DataAttrs",
    "Decision",
    "ExplainedPolicy",
    "Explanation",
    "NodeAttrs",
    "PolicyEngine",
]

#: Distinct decision inputs are few (data classes x peers x hop counts), so 4096 entries hold a
#: node's working set; each entry is well under 1 KiB, bounding the cache to a few MiB.
DEFAULT_CACHE_SIZE = 4096

NO_BUNDLE_REASON = "no policy bundle in force; apply one with `outpost policy apply`"

#: Parsed principal entities kept per engine; principals are this node, its peers and local
#: apps, so 1024 covers a large federation while bounding memory to well under a MiB.
_PRINCIPAL_HANDLES = 1024

_ERROR_REASON = (
    "policy evaluation failed, so the decision fails closed to deny; guard optional "
    "attributes with `has` (e.g. `context.target.labels has zone && ...`) and sign a new bundle"
)
_CEDAR_ID = re.compile(r"`(policy\d+)`")
_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


@dataclass(frozen=True, slots=True)
class NodeAttrs:
    """A node's attested attributes, as its certificate states them.

    Build it from a verified certificate with ``NodeAttrs(**identity.attributes())``.
    """

    node_id: str
    tier: str
    site: str
    jurisdiction: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    _attrs_json: str = field(init=False, repr=False, compare=False)
    _record_json: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("node_id", "site", "jurisdiction"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"NodeAttrs.{name} must be a string")
        if self.tier not in TIERS:
            raise ValueError(f"tier {self.tier!r} is not one of {', '.join(TIERS)}")
        labels = dict(self.labels)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise TypeError("NodeAttrs.labels must map strings to strings")
        object.__setattr__(self, "labels", MappingProxyType(labels))
        attrs: dict[str, object] = {
            "tier": self.tier,
            "site": self.site,
            "jurisdiction": self.jurisdiction,
            "labels": labels,
        }
        object.__setattr__(self, "_attrs_json", _dumps(attrs))
        object.__setattr__(self, "_record_json", _dumps({"node_id": self.node_id, **attrs}))

    def describe(self) -> str:
        return (
            f"{self.node_id} (tier {self.tier}, site {self.site}, jurisdiction {self.jurisdiction})"
        )


@dataclass(frozen=True, slots=True)
class AppAttrs:
    """A local app as policy sees it: ``App::"<name>"`` with its token's attributes.

    The attributes are what the operator wrote with ``outpost token add --attr K=V`` (strings
    only), or ``{}`` for an app known by its socket uid and for ``App::"anonymous"``. At the
    executor of a forward they are what the sending node attested (``context.via``).
    """

    name: str
    attrs: Mapping[str, str] = field(default_factory=dict, hash=False)
    _attrs_json: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError("AppAttrs.name must be a non-empty string")
        attrs = dict(self.attrs)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in attrs.items()):
            raise TypeError("AppAttrs.attrs must map strings to strings")
        object.__setattr__(self, "attrs", MappingProxyType(attrs))
        object.__setattr__(self, "_attrs_json", _dumps(attrs))


#: The principal of a request that carried no credentials (``node.app_auth = "optional"``).
ANONYMOUS = AppAttrs("anonymous")


@dataclass(frozen=True, slots=True)
class DataAttrs:
    """The request's data labels: ``Data::"<request_id>"``."""

    request_id: str
    data_class: str
    jurisdiction: str
    model: str

    def describe(self) -> str:
        # No request id: decisions are cached across requests, so reasons must not name one.
        return f"{self.data_class} data (jurisdiction {self.jurisdiction}, model {self.model})"


@dataclass(frozen=True, slots=True)
class Decision:
    """A policy decision. ``policy_ids`` are the determining policies (or the erroring ones)."""

    allowed: bool
    policy_ids: tuple[str, ...]
    reasons: tuple[str, ...]
    errors: tuple[str, ...]
    policy_version: int | None


@dataclass(frozen=True, slots=True)
class ExplainedPolicy:
    policy_id: str
    line: int  # first line in the bundle's policy text; 0 if unknown
    text: str


@dataclass(frozen=True, slots=True)
class Explanation:
    decision: Decision
    policies: tuple[ExplainedPolicy, ...]

    def render(self) -> str:
        d = self.decision
        head = "ALLOW" if d.allowed else "DENY"
        lines = [f"{head} (policy version {d.policy_version})", *d.reasons]
        lines += [f"error: {e}" for e in d.errors]
        for p in self.policies:
            lines += [f"-- {p.policy_id} (line {p.line})", p.text]
        return "\n".join(lines)


# (type, id, attrs JSON) of one entity in a request.
_Entity = tuple[str, str, str]


class PolicyEngine:
    """Evaluates decisions against the bundle in force; ``None`` means deny everything."""

    def __init__(self, bundle: PolicyBundle | None = None, *, cache_size: int = DEFAULT_CACHE_SIZE):
        if cache_size < 0:
            raise ValueError(f"cache_size {cache_size} must be >= 0 (0 disables the cache)")
        self._bundle = bundle
        self._cache: dict[tuple[str, ...], Decision] = {}
        self._cache_size = cache_size
        self._principals: dict[_Entity, cedarpy.Entities] = {}
        self.cache_hits = 0
        self.cache_misses = 0

    @property
    def bundle(self) -> PolicyBundle | None:
        return self._bundle

    def apply(self, bundle: PolicyBundle) -> None:
        """Put ``bundle`` in force; RollbackRefused unless it is newer than the one held."""
        if self._bundle is not None:
            self._bundle.accepts_update(bundle)
        self._bundle = bundle
        self._cache.clear()
        self._principals.clear()

    def decide_forward(
        self, sender: NodeAttrs, data: DataAttrs, target: NodeAttrs, hops: int
    ) -> Decision:
        context = f'{{"hops":{_hops(hops)},"target":{target._record_json}}}'
        return self._decide(
            "forward",
            _node(sender),
            _data(data),
            context,
            lambda: (
                f"forward of {data.describe()} from {sender.node_id} to {target.describe()}"
                f" at hop {hops}"
            ),
        )

    def decide_infer(
        self, caller: str | AppAttrs | NodeAttrs, data: DataAttrs, executor: NodeAttrs,
        hops: int, via: NodeAttrs | None = None,
    ) -> Decision:
        """``via``: the peer that forwarded an app's request (the app is the principal then,
        the node that vouches for it is ``context.via``)."""
        if isinstance(caller, str):
            principal: _Entity = ("App", caller, "{}")
        elif isinstance(caller, AppAttrs):
            principal = ("App", caller.name, caller._attrs_json)
        else:
            principal = _node(caller)
        context = f'{{"executor":{executor._record_json},"hops":{_hops(hops)}'
        context += f',"via":{via._record_json}}}' if via is not None else "}"
        return self._decide(
            "infer",
            principal,
            _data(data),
            context,
            lambda: (
                f"infer of {data.describe()} for {principal[0]} {principal[1]} on "
                f"{executor.describe()} at hop {hops}"
            ),
        )

    def decide_model_pull(self, puller: NodeAttrs, model: str, version: str) -> Decision:
        context = f'{{"target":{puller._record_json}}}'
        return self._decide(
            "model.pull",
            _node(puller),
            ("Model", f"{model}:{version}", "{}"),
            context,
            lambda: f"model.pull of {model}:{version} by {puller.describe()}",
        )

    def decide_audit_replicate(self, collector: NodeAttrs, origin: NodeAttrs) -> Decision:
        context = f'{{"target":{collector._record_json}}}'
        return self._decide(
            "audit.replicate",
            _node(collector),
            _node(origin),
            context,
            lambda: f"audit.replicate of {origin.node_id}'s log to {collector.describe()}",
        )

    def decide_audit_read(self, reader: NodeAttrs, origin: NodeAttrs) -> Decision:
        """May ``reader`` fetch the C2SP tiles (entries included) of ``origin``'s log from
        this node's peer endpoint? Asked for this node's own log and for replicas it holds."""
        context = f'{{"target":{reader._record_json}}}'
        return self._decide(
            "audit.read",
            _node(reader),
            _node(origin),
            context,
            lambda: f"audit.read of {origin.node_id}'s log by {reader.describe()}",
        )

    def explain(self, decision: Decision) -> Explanation:
        """The decision plus the text of its determining policies, for `outpost policy explain`."""
        bundle = self._bundle
        if decision.policy_version is None or bundle is None:
            return Explanation(decision, ())
        if decision.policy_version != bundle.version:
            raise ValueError(
                f"decision was made under policy version {decision.policy_version}, version "
                f"{bundle.version} is in force; decide again before explaining"
            )
        sources = bundle.compiled.sources
        return Explanation(
            decision,
            tuple(ExplainedPolicy(p, *sources[p]) for p in decision.policy_ids if p in sources),
        )

    def _decide(
        self,
        action: str,
        principal: _Entity,
        resource: _Entity,
        context: str,
        describe: Callable[[], str],
    ) -> Decision:
        bundle = self._bundle
        if bundle is None:
            return Decision(False, (), (NO_BUNDLE_REASON,), (), None)
        compiled = bundle.compiled
        resource_key = resource[1] if resource[0] != "Data" or compiled.data_ids_matter else ""
        key = (
            action,
            principal[0],
            principal[1],
            principal[2],
            resource[0],
            resource_key,
            resource[2],
            context,
        )
        cached = self._cache.get(key)
        if cached is not None:
            self.cache_hits += 1
            return cached
        self.cache_misses += 1
        decision = self._evaluate(bundle, action, principal, resource, context, describe)
        if self._cache_size and not decision.errors:
            if len(self._cache) >= self._cache_size:
                del self._cache[next(iter(self._cache))]  # oldest first: dicts keep order
            self._cache[key] = decision
        return decision

    def _evaluate(
        self,
        bundle: PolicyBundle,
        action: str,
        principal: _Entity,
        resource: _Entity,
        context: str,
        describe: Callable[[], str],
    ) -> Decision:
        compiled = bundle.compiled
        request = {
            "principal": {"type": principal[0], "id": principal[1]},
            "action": {"type": "Action", "id": action},
            "resource": {"type": resource[0], "id": resource[1]},
            "context": context,
        }
        try:
            ents = self._entities(compiled, principal, resource)
            result = cedarpy.is_authorized(request, compiled.policy_set, ents)
            raw_errors = list(result.diagnostics.errors)
            reasons = list(result.diagnostics.reasons)
            allowed = result.allowed
        except Exception as exc:  # the cedarpy boundary: whatever fails there is a deny
            raw_errors, reasons, allowed = (
                [f"cedarpy could not evaluate the request: {exc}"],
                [],
                False,
            )
        version = bundle.version
        if raw_errors:
            failing = sorted({m for e in raw_errors for m in _CEDAR_ID.findall(e)}, key=_order)
            return Decision(
                False,
                tuple(compiled.stable(p) for p in failing),
                (f"{describe()}: {_ERROR_REASON}",),
                tuple(compiled.rename_in(e) for e in raw_errors),
                version,
            )
        ids = tuple(compiled.stable(p) for p in sorted(reasons, key=_order))
        if allowed:
            why = f"{describe()}: permitted by {', '.join(ids)}"
        elif ids:
            why = f"{describe()}: forbidden by {', '.join(ids)}"
        else:
            why = (
                f"{describe()}: no policy permits it (Cedar denies by default); "
                "add a permit policy to the bundle if it should be allowed"
            )
        return Decision(allowed, ids, (why,), (), version)

    def _entities(
        self, compiled: CompiledPolicies, principal: _Entity, resource: _Entity
    ) -> cedarpy.Entities:
        # The principal (usually this node) repeats across requests: parse its entity once and
        # add only the resource per call, which saves about a third of cedarpy's time.
        handle = self._principals.get(principal)
        if handle is None:
            one = "[" + _entity_json(compiled, *principal) + "]"
            base = compiled.base_entities
            handle = base.with_added_json_str(one) if base else cedarpy.Entities.from_json_str(one)
            if len(self._principals) >= _PRINCIPAL_HANDLES:
                del self._principals[next(iter(self._principals))]
            self._principals[principal] = handle
        if resource[:2] == principal[:2]:
            return handle
        return handle.with_added_json_str("[" + _entity_json(compiled, *resource) + "]")


def _hops(hops: int) -> int:
    if isinstance(hops, bool) or not isinstance(hops, int) or hops < 0:
        raise ValueError(f"hops {hops!r} must be a non-negative integer")
    return hops


def _node(node: NodeAttrs) -> _Entity:
    return ("Node", node.node_id, node._attrs_json)


def _data(data: DataAttrs) -> _Entity:
    attrs = {"data_class": data.data_class, "jurisdiction": data.jurisdiction, "model": data.model}
    return ("Data", data.request_id, _dumps(attrs))


def _order(cedar_id: str) -> int:
    return int(cedar_id.removeprefix("policy")) if cedar_id[6:].isdigit() else 1 << 62


def _entity_json(compiled: CompiledPolicies, etype: str, eid: str, attrs_json: str) -> str:
    overlay = compiled.overlays.get((etype, eid)) if compiled.overlays else None
    if overlay is None:
        return (
            f'{{"uid":{{"type":"{etype}","id":{_dumps(eid)}}},"attrs":{attrs_json},"parents":[]}}'
        )
    attrs: dict[str, Any] = {**overlay.attrs, **json.loads(attrs_json)}
    uid = {"type": etype, "id": eid}
    return _dumps({"uid": uid, "attrs": attrs, "parents": list(overlay.parents)})
