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
from typing import TYPE_CHECKING, Any

from federation.policy_engine import DataAttrs, NodeAttrs
from node.http import HTTPError

if TYPE_CHECKING:
    from node.daemon import Daemon

ACTIONS = ("forward", "infer", "model.pull", "audit.replicate")


def _node(daemon: Daemon, node_id: str, me: NodeAttrs, flag: str) -> NodeAttrs:
    if node_id == daemon.node_id:
        return me
    if daemon.cluster is not None:
        for c in daemon.cluster.candidates(time.monotonic()):
            if c.node_id == node_id:
                return c.attrs
    raise HTTPError(404, f"{flag} {node_id}: no verified capability advert of {node_id!r} yet; "
                         "`outpost peers` lists the nodes this one knows")


def _attrs_json(a: NodeAttrs) -> dict[str, Any]:
    return {"node_id": a.node_id, "tier": a.tier, "site": a.site,
            "jurisdiction": a.jurisdiction, "labels": dict(a.labels)}


async def explain(daemon: Daemon, q: dict[str, Any]) -> dict[str, Any]:
    """Answer one explain query (the admin route's payload: the CLI's options)."""
    action = q.get("action", "forward")
    if action not in ACTIONS:
        raise HTTPError(400, f"action {action!r} is not one of {', '.join(ACTIONS)}")
    if daemon.identity is None:
        raise HTTPError(400, "this node is not enrolled: no federation policy applies to it "
                             "(join one with `outpost join CERT`)")
    me = NodeAttrs(**daemon.identity.attributes())
    engine = daemon.engine
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
            target = _node(daemon, q["to"], me, "--to")
            subject["target"] = _attrs_json(target)
            decision = engine.decide_forward(me, data, target, int(q.get("hops", 0)))
        else:
            executor = _node(daemon, q.get("to") or daemon.node_id, me, "--to")
            caller: str | NodeAttrs = q.get("app") or "app"
            if q.get("from"):
                caller = _node(daemon, q["from"], me, "--from")
                subject["caller"] = _attrs_json(caller)
            else:
                subject["caller"] = {"app": caller}
            subject["target"] = _attrs_json(executor)
            decision = engine.decide_infer(caller, data, executor, int(q.get("hops", 0)))
    else:
        if not q.get("from"):
            raise HTTPError(400, f"{action} needs --from NODE (the node asking)")
        asker = _node(daemon, q["from"], me, "--from")
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
