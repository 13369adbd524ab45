"""``outpost policy explain``: any policy decision this node makes, with the policies behind it.

Owns turning an operator's question into the same ``PolicyEngine`` call the request path makes,
for every action the policy governs:

============== ==================== ================== ======================================
action         principal            resource           asked as
============== ==================== ================== ======================================
forward        this node            the data           ``--to NODE`` (the target)
infer          ``--from`` app/node  the data           ``--to NODE`` executor (default: here)
model.pull     ``--from NODE``      ``--model N:V``    may NODE pull this model from here?
audit.replicate ``--from NODE``     this node's log    may NODE collect this node's log?
============== ==================== ================== ======================================

Runs in the daemon (the other nodes' attested attributes are live state); never changes
anything. The answer names the policy version it judged with, or says none is in force.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from federation.policy_engine import ANONYMOUS, AppAttrs, DataAttrs, NodeAttrs
from node.http import HTTPError

if TYPE_CHECKING:
    from federation.identity import NodeIdentity
    from node.ports import PeerDirectory, PolicyView
    from node.tokens import AppAuth

ACTIONS = ("forward", "infer", "model.pull", "audit.replicate")


@dataclass(frozen=True)
class ExplainNode:
    """What explaining needs of the daemon (wired in ``node.daemon``)."""

    identity: NodeIdentity | None
    peers: PeerDirectory
    policy: PolicyView
    auth: AppAuth | None  # apps and their token attributes (``--app``)

    @property
    def node_id(self) -> str:
        return self.identity.node_id if self.identity else ""

    @property
    def engine(self) -> Any:
        return self.policy.engine


def _app(node: ExplainNode, name: str) -> AppAttrs:
    """App ``name`` as a request of it would be judged: its active token's attributes."""
    if name == ANONYMOUS.name:
        return ANONYMOUS
    auth = node.auth
    row = auth.tokens.active(name) if auth is not None else None
    if row is None and (auth is None or name not in auth.uids.values()):
        raise HTTPError(404, f"app {name!r} has no active token and no socket uid mapping; "
                             "`outpost token list` shows the apps")
    return AppAttrs(name, dict(row.attrs) if row else {})


def _node(node: ExplainNode, node_id: str, me: NodeAttrs, flag: str) -> NodeAttrs:
    if node_id == node.node_id:
        return me
    for c in node.peers.candidates(time.monotonic()):
        if c.node_id == node_id:
            return c.attrs
    raise HTTPError(404, f"{flag} {node_id}: no verified capability advert of {node_id!r} yet; "
                         "`outpost peers` lists the nodes this one knows")


def _attrs_json(a: NodeAttrs) -> dict[str, Any]:
    return {"node_id": a.node_id, "tier": a.tier, "site": a.site,
            "jurisdiction": a.jurisdiction, "labels": dict(a.labels)}


def explain(node: ExplainNode, q: dict[str, Any]) -> dict[str, Any]:
    """Answer one explain query (the admin route's payload: the CLI's options)."""
    action = q.get("action") or ("forward" if q.get("to") or not q.get("app") else "infer")
    if action not in ACTIONS:
        raise HTTPError(400, f"action {action!r} is not one of {', '.join(ACTIONS)}")
    if node.identity is None:
        raise HTTPError(400, "this node is not enrolled: no federation policy applies to it "
                             "(join one with `outpost join CERT`)")
    me = NodeAttrs(**node.identity.attributes())
    engine = node.engine
    model = q.get("model") or "*"
    subject: dict[str, Any] = {"action": action}
    if action in ("forward", "infer"):
        data_class = q.get("data_class")
        if not data_class:
            raise HTTPError(400, f"{action} needs --data-class")
        data = DataAttrs("explain", data_class, q.get("jurisdiction") or me.jurisdiction, model)
        subject["data"] = {"data_class": data_class, "jurisdiction": data.jurisdiction,
                           "model": model}
        if action == "forward":
            if not q.get("to"):
                raise HTTPError(400, "forward needs --to NODE (the target)")
            target = _node(node, q["to"], me, "--to")
            subject["target"] = _attrs_json(target)
            decision = engine.decide_forward(me, data, target, int(q.get("hops", 0)))
            if q.get("app"):  # and what the target's re-check says of that app
                principal = _app(node, q["app"])
                local = target.node_id == node.node_id
                infer = engine.decide_infer(principal, data, target, 0 if local else 1,
                                            None if local else me)
                subject["app"] = {"name": principal.name, "attrs": dict(principal.attrs)}
                subject["infer"] = _decision_json(engine, infer)
                subject["forward_allowed"] = decision.allowed
                if not local and not infer.allowed:
                    decision = infer
        else:
            executor = _node(node, q.get("to") or node.node_id, me, "--to")
            caller: AppAttrs | NodeAttrs = _app(node, q.get("app") or ANONYMOUS.name)
            via = None
            if q.get("from"):
                via = caller if q.get("app") else None
                caller = _node(node, q["from"], me, "--from") if not q.get("app") else caller
                subject["caller"] = _attrs_json(caller) if isinstance(caller, NodeAttrs) \
                    else {"app": caller.name}
            if isinstance(caller, AppAttrs):
                subject["caller"] = {"app": caller.name}
                subject["app"] = {"name": caller.name, "attrs": dict(caller.attrs)}
                if executor.node_id != node.node_id:
                    via = me
            subject["target"] = _attrs_json(executor)
            decision = engine.decide_infer(caller, data, executor, int(q.get("hops", 0)),
                                           via if isinstance(via, NodeAttrs) else None)
            if "app" in subject:
                subject["infer"] = _decision_json(engine, decision)
    else:
        if not q.get("from"):
            raise HTTPError(400, f"{action} needs --from NODE (the node asking)")
        asker = _node(node, q["from"], me, "--from")
        subject["target"] = _attrs_json(asker)
        if action == "model.pull":
            name, _, version = model.partition(":")
            if name in ("", "*") or not version:
                raise HTTPError(400, "model.pull needs --model NAME:VERSION")
            decision = engine.decide_model_pull(asker, name, version)
        else:
            decision = engine.decide_audit_replicate(asker, me)
    explanation = engine.explain(decision)
    return {
        **subject,
        "allowed": decision.allowed,
        "policy_version": decision.policy_version,
        "policies": list(decision.policy_ids),
        "reasons": list(decision.reasons),
        "errors": list(decision.errors),
        "text": explanation.render().replace(
            "(policy version None)", "(no policy bundle in force: fail closed)"),
    }


def _decision_json(engine: Any, decision: Any) -> dict[str, Any]:
    return {"allowed": decision.allowed, "policies": list(decision.policy_ids),
            "reasons": list(decision.reasons), "errors": list(decision.errors),
            "text": engine.explain(decision).render()}


def ask(data_dir: Any, query: dict[str, str]) -> dict[str, Any]:
    """CLI side: send ``query`` to the running daemon of ``data_dir``."""
    from urllib.parse import urlencode

    from node.client import connect
    from node.enrollment import EnrollmentError

    client = connect(data_dir)
    if client is None:
        raise EnrollmentError(
            f"no daemon is running on {data_dir}; explain needs the other nodes' attested "
            "attributes, which the running node learns from its peers (`outpost run`)")
    with client:
        result: dict[str, Any] = client.request(
            "GET", "/policy/explain?" + urlencode({k: v for k, v in query.items() if v}))
        return result
