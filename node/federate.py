"""Wiring an enrolled daemon into its federation: the cluster service, the callbacks that
persist and audit what gossip brings, this node's advert and checkpoints, and the peer and
admin routes that expose them. Everything here is glue; protocols live in ``federation`` and
sockets in ``node.cluster``.

What it needs of the rest of the node is :class:`FederationDeps` (built whole by
``node.daemon.start``); it never sees the daemon itself.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from federation.audit import EquivocationEvidence
from federation.canonical import b64encode
from federation.config import ClusterConfig
from federation.identity import NodeIdentity
from federation.policy_engine import ANONYMOUS, AppAttrs, DataAttrs, NodeAttrs
from node import logs, trace
from node.cluster import REVOKED, Cluster, ClusterDeps, held_documents
from node.config import Config
from node.forward import Call, Router, peek_parameters
from node.http import (
    HTTPError,
    Receive,
    Scope,
    Send,
    header,
    off_loop,
    parse_hops,
    parse_request_id,
    read_body,
    send_json,
    send_response,
)
from node.limits import (
    AUDIT_PAGE_ENTRIES,
    HEADER_APP,
    HEADER_HOPS,
    HEADER_JSON_LENGTH,
    HEADER_REQUEST_ID,
    PROOF_HISTORY,
)
from node.peer import PeerApp, PeerCredentials
from node.peer import query as peer_query
from node.peerclient import PeerClients
from node.ports import AuditSink, ModelSource, PeerDirectory, PolicyView, Spawner
from node.store import Store
from node.tokens import AppAuth, parse_label

if TYPE_CHECKING:
    from node.audit import AuditReader
    from node.discovery import Discovery

log = logging.getLogger("outpost.federate")


class CheckpointLog(AuditSink, Protocol):
    """This node's audit log as the federation sees it: a sink that also signs checkpoints
    and answers proofs for witnesses and collectors."""

    def checkpoint(self) -> str | None: ...

    def reader(self) -> AuditReader: ...


class DocumentSink(Protocol):
    """Where documents that arrive by gossip go (``node.documents.Documents``)."""

    async def received(self, kind: str, version: int, body: bytes,
                       source: str | None) -> None: ...


@dataclass(frozen=True)
class FederationDeps:
    """What the federation glue needs of an enrolled node (wired in ``node.daemon``)."""

    node_id: str
    identity: NodeIdentity
    credentials: PeerCredentials
    peers: PeerClients  # every outbound mutual-TLS connection (node.peerclient)
    config: Config
    store: Store
    audit: CheckpointLog
    models: ModelSource
    policy: PolicyView
    documents: DocumentSink
    tasks: Spawner
    count_drop: Callable[[str], None]
    gpus: int
    #: A Ray-backed node's cluster (nodes, CPUs, GPUs, memory, replicas), None in-process;
    #: cached by the backend, never a Ray round trip (it is read for every advert).
    runtime_cluster: Callable[[], dict[str, Any] | None]
    app_listen: str  # the app endpoint, advertised to peers
    peer_listen: str  # host:port the peer endpoint (TLS) and gossip (UDP) are bound to


def advertised_address(configured: str, peer_listen: str) -> str:
    """Where peers reach us: the configured address, the listen address, or this host's
    primary address when listening on a wildcard."""
    if configured:
        return configured
    host, _, port = peer_listen.rpartition(":")
    if host not in ("0.0.0.0", "::", ""):
        return peer_listen
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 9))  # no packet is sent: picks the route's source
            host = probe.getsockname()[0]
        except OSError:
            host = "127.0.0.1"
    return f"{host}:{port}"


def build_cluster(deps: FederationDeps, key: Any, crl: Any) -> Cluster:
    """The cluster service of this node, built whole but not started (:func:`start_cluster`
    opens its UDP socket once the peer endpoint listens)."""
    config = deps.config
    presets = {"lan": ClusterConfig.lan, "wan": ClusterConfig.wan, "local": ClusterConfig.local}
    address = advertised_address(config.federation.advertise, deps.peer_listen)
    published: list[tuple[int, str]] = []  # (size, note) of checkpoints we gossiped
    reader = deps.audit.reader()

    def advert_body() -> dict[str, Any]:
        served = deps.models.served()
        cluster = deps.runtime_cluster()
        return {
            # sha256 and size are what a puller verifies a transfer against (node.pull)
            "models": [{"name": s.record.name, "version": s.record.version,
                        "sha256": s.record.sha256, "size": s.record.size,
                        "provider": s.model.provider}
                       for s in served],
            "queue": sum(s.model.queue_depth for s in served),
            "load": round(os.getloadavg()[0], 2),
            "gpus": max(deps.gpus, int(cluster["gpus"])) if cluster else deps.gpus,
            "cluster": cluster,
            "policy_version": deps.policy.version,
            "app": deps.app_listen,
        }

    def on_document(kind: str, version: int, body: bytes, source: str | None) -> None:
        deps.tasks.spawn(deps.documents.received(kind, version, body, source),
                         name=f"{kind}-from-gossip")

    def on_equivocation(evidence: EquivocationEvidence) -> None:
        log.error("EQUIVOCATION: %s signed two different checkpoints of size %d",
                  evidence.origin, evidence.size)
        deps.tasks.spawn(deps.audit.append(deps.audit.record(
            "equivocation", peer=evidence.origin,
            reason=f"two signed checkpoints of size {evidence.size} with different roots",
            detail={"size": evidence.size},
        )), name="equivocation-entry")

    async def checkpoint_source() -> tuple[int, str, dict[int, list[bytes]]]:
        size = deps.audit.size
        note = deps.audit.checkpoint()
        if note is None or size == 0:
            return 0, "", {}
        proofs: dict[int, list[bytes]] = {}
        for old, _ in published[-PROOF_HISTORY:]:
            if 0 < old < size:
                proofs[old] = list((await reader.consistency_proof(old, size)).hashes)
        published.append((size, note))
        del published[:-PROOF_HISTORY]
        return size, note, proofs

    cluster_deps = ClusterDeps(
        node_id=deps.node_id,
        key=key,
        cert_pem=deps.credentials.cert_pem,
        authority_pem=deps.credentials.authority_pem,
        address=address,
        config=presets[config.federation.preset](),
        seeds=list(config.federation.seeds),
        peers=deps.peers,
        advert_body=advert_body,
        on_document=on_document,
        on_equivocation=on_equivocation,
        checkpoint_source=checkpoint_source,
        count_drop=deps.count_drop,
        advert_interval_s=config.federation.advert_interval_s,
        checkpoint_interval_s=config.federation.checkpoint_interval_s,
    )
    return Cluster(cluster_deps, crl)


async def start_cluster(deps: FederationDeps, cluster: Cluster) -> None:
    """Open the gossip socket on the peer address and join (seeds, held documents)."""
    policy, crl = await held_documents(deps.store)
    host, _, port = deps.peer_listen.rpartition(":")
    await cluster.start(
        host, int(port),
        policy[1] if policy else None, policy[0] if policy else None,
        crl[1] if crl else None, crl[0] if crl else None,
    )
    log.info("federation %s: node %s gossiping as %s (seeds: %s)", deps.identity.federation,
             deps.node_id, cluster.deps.address,
             ", ".join(deps.config.federation.seeds) or "none")


async def start_mdns(deps: FederationDeps, cluster: Cluster) -> Discovery | None:
    """Advertise on the LAN and propose every discovered node to membership. Discovery only
    proposes: the TLS handshake of the first exchange proves who answers. None when mDNS
    cannot run here (logged; seeds still work)."""
    from node.discovery import Advert, Candidate, Discovery, DiscoveryError

    port = int(cluster.deps.address.rpartition(":")[2])
    settings = deps.config.discovery
    me = deps.identity

    def found(candidate: Candidate) -> None:
        if candidate.node_id == deps.node_id or candidate.federation not in ("", me.federation):
            return
        for ip in candidate.addresses[:1]:
            cluster.contact(f"{ip}:{candidate.peer_port}")

    discovery = Discovery(
        Advert(deps.node_id, port, port, tier=me.tier, fingerprint=me.fingerprint,
               federation=me.federation),
        on_found=found, on_lost=lambda node_id: None,
        interfaces=list(settings.interfaces) or None, record_ttl_s=settings.record_ttl_s,
        confirm_interval_s=settings.confirm_interval_s,
    )
    try:
        await discovery.start()
    except DiscoveryError as exc:
        log.warning("mDNS discovery off: %s", exc)
        return None
    return discovery


# Read-only views of the audit log that any enrolled peer (a witness) may ask for. Entries
# themselves go only to the collectors policy names (audit.replicate).
_PEER_AUDIT_VIEWS = frozenset({"checkpoint", "checkpoints", "proof", "consistency"})


def peer_routes(app: PeerApp, deps: FederationDeps, cluster: Cluster, router: Router) -> None:
    """Peer endpoint routes owned by the federation layer: hello, gossip, forwarded
    inference, and the audit views for witnesses and collectors."""
    from node.admin import audit_query

    reader = deps.audit.reader()
    me = NodeAttrs(**deps.identity.attributes())

    async def gossip(scope: Scope, receive: Receive, send: Send, peer: NodeIdentity,
                     rest: str) -> None:
        from federation.limits import MAX_STREAM_MESSAGE_BYTES

        if cluster.is_revoked(peer):
            # Checked per request: a connection from before the revocation may still be open.
            raise HTTPError(403, f"{peer.node_id}: {REVOKED}")
        body = await read_body(scope, receive, MAX_STREAM_MESSAGE_BYTES)
        error = cluster.receive_reliable(body, peer)
        if error is not None:
            raise HTTPError(400, error)
        await send_response(send, 204, b"", [])

    async def infer(scope: Scope, receive: Receive, send: Send, peer: NodeIdentity,
                    rest: str) -> None:
        """A request forwarded by ``peer``: re-check ``infer`` here (fail closed), then run it
        on the one path every request takes."""
        parts = rest.split("/")
        model, version = parts[0], None
        if len(parts) == 3 and parts[1] == "versions":
            version = parts[2]
        elif len(parts) != 1 or not model:
            raise HTTPError(404, f"no peer infer endpoint {rest!r}")
        call = Call(model=model, version=version, body=b"", header_length=None,
                    caller=NodeAttrs(**peer.attributes()), hops=1, request_id="forwarded")
        try:
            await _take_forward(deps, router, scope, receive, call, me)
            answer = await router.infer(call)
        except HTTPError as exc:
            # Refused here, the executor: on this node's trail (rate-limited per peer).
            await router.refused(call, exc)
            raise
        headers = [(b"content-type", b"application/json")]
        if answer.header_length is not None:
            headers = [(b"content-type", b"application/octet-stream"),
                       (HEADER_JSON_LENGTH.encode(), str(answer.header_length).encode())]
        await send_response(send, 200, answer.body, headers)

    async def audit_view(scope: Scope, receive: Receive, send: Send, peer: NodeIdentity,
                         rest: str) -> None:
        query = peer_query(scope)
        if rest in _PEER_AUDIT_VIEWS:
            await send_json(send, 200, await audit_query(reader, rest, query))
            return
        if rest not in ("entries", "frontier"):
            raise HTTPError(404, f"no peer audit view {rest!r}")
        # Entries (and the frontier that proves them) go only to collectors policy names.
        decision = deps.policy.engine.decide_audit_replicate(NodeAttrs(**peer.attributes()), me)
        if not decision.allowed:
            raise HTTPError(403, f"policy does not name {peer.node_id} an audit collector of "
                                 f"{deps.node_id} (action audit.replicate)")
        size_now = deps.audit.size
        try:
            if rest == "frontier":
                size = int(query.get("size", "0"))
                if not 0 < size <= size_now:
                    raise HTTPError(400, f"size must be between 1 and {size_now}")
                hashes = await reader.frontier(size)
                await send_json(send, 200, {"size": size, "hashes": [b64encode(h) for h in hashes]})
                return
            start = int(query.get("start", "0"))
            end = min(int(query.get("end", str(start + AUDIT_PAGE_ENTRIES))),
                      start + AUDIT_PAGE_ENTRIES)
        except ValueError:
            raise HTTPError(400, "start, end and size must be integers") from None
        rows = await reader.entries(start, end)
        await send_json(send, 200, [{"index": i, "entry": b64encode(e)} for i, e in rows])

    async def hello(scope: Scope, receive: Receive, send: Send, peer: NodeIdentity,
                    rest: str) -> None:
        # "time": peers estimate their clock offset from it (node.clock)
        await send_json(send, 200, {"node_id": deps.node_id, "you": peer.node_id,
                                    "time": time.time()})

    app.route("GET", "/peer/v1/audit", audit_view)
    app.route("GET", "/peer/v1/hello", hello)
    app.route("POST", "/peer/v1/gossip", gossip)
    app.route("POST", "/peer/v1/infer", infer)


async def _take_forward(deps: FederationDeps, router: Router, scope: Scope, receive: Receive,
                        call: Call, me: NodeAttrs) -> None:
    """Read and check a forwarded request into ``call``; HTTPError for what is refused."""
    # Headers first (strictly: a peer must not feed 10**30 hops to the policy engine).
    call.hops = parse_hops(header(scope, HEADER_HOPS.encode()))
    call.request_id = parse_request_id(header(scope, HEADER_REQUEST_ID.encode()))
    logs.request_id.set(call.request_id)  # the sender's request id and trace, here too
    trace.accept(header(scope, b"traceparent"))
    label = header(scope, HEADER_APP.encode())
    try:
        # The app as the sending node attests it (mutual TLS says who the sender is).
        call.app = parse_label(label) if label is not None else None
    except ValueError as exc:
        raise HTTPError(400, f"{exc}; the sending node must label forwards correctly") from None
    raw_len = header(scope, HEADER_JSON_LENGTH.encode())
    if raw_len is not None:
        if not raw_len.isdigit() or len(raw_len) > 12:
            raise HTTPError(400, "Inference-Header-Content-Length must be a decimal byte count")
        call.header_length = int(raw_len)
    call.body = await read_body(scope, receive, deps.config.node.max_body_bytes)
    await call.hash_off_loop()
    params = await off_loop(len(call.body), peek_parameters, call.body, call.header_length,
                            json_bytes=call.json_bytes)
    call.params = params
    if not params.get("outpost.data_class") or not params.get("outpost.jurisdiction"):
        # The sender labels every forward explicitly; an unlabelled one would otherwise be
        # judged with this node's defaults (its jurisdiction, its default class).
        raise HTTPError(400, "a forwarded request must carry outpost.data_class and "
                             "outpost.jurisdiction (set by the sending node)")
    data = router.data_of(call, params)
    decision = deps.policy.engine.decide_infer(call.principal, data, me, call.hops, call.via)
    if not decision.allowed:
        reason = "; ".join(decision.reasons) or "denied"
        await deps.audit.append(deps.audit.record(
            "infer", model=call.model, version=call.version, caller=call.caller_name,
            data_class=data.data_class, outcome="denied", reason=reason[:1000],
            policy_version=decision.policy_version, input_sha256=call.sha256(),
            detail={"jurisdiction": data.jurisdiction, "hops": call.hops,
                    "request": call.request_id, **call.audit_detail(),
                    **({"trace": trace.trace_id()} if trace.trace_id() else {})},
        ))
        peer = call.caller.node_id if isinstance(call.caller, NodeAttrs) else call.caller
        raise HTTPError(403, f"{deps.node_id} refuses {data.describe()} from "
                             f"{peer}: {reason}").recorded()


def explain(identity: NodeIdentity | None, peers: PeerDirectory, policy: PolicyView,
            data_class: str, jurisdiction: str | None, target: str,
            model: str, app: str | None = None,
            auth: AppAuth | None = None) -> dict[str, Any]:
    """``outpost policy explain``: the forward decision for this data to ``target`` and, with
    ``app``, the ``infer`` decision the executor makes for that app (its token's attributes)."""
    if identity is None:
        raise HTTPError(400, "this node is not enrolled; there is nothing to forward to")
    me = NodeAttrs(**identity.attributes())
    target = target or identity.node_id
    attrs = None
    if target == identity.node_id:
        attrs = me
    else:
        for c in peers.candidates(time.monotonic()):
            if c.node_id == target:
                attrs = c.attrs
    if attrs is None:
        raise HTTPError(404, f"no verified capability advert of {target!r} yet; `outpost peers` "
                             "lists the nodes this one knows")
    data = DataAttrs("explain", data_class, jurisdiction or me.jurisdiction, model)
    decision = policy.engine.decide_forward(me, data, attrs, 0)
    explanation = policy.engine.explain(decision)
    result: dict[str, Any] = {
        "allowed": decision.allowed,
        "policy_version": decision.policy_version,
        "policies": list(decision.policy_ids),
        "reasons": list(decision.reasons),
        "errors": list(decision.errors),
        "target": {"node_id": attrs.node_id, "tier": attrs.tier, "site": attrs.site,
                   "jurisdiction": attrs.jurisdiction, "labels": dict(attrs.labels)},
        "data": {"data_class": data_class, "jurisdiction": data.jurisdiction, "model": model},
        "text": explanation.render(),
    }
    if app is not None:
        principal = _app_principal(auth, app)
        local = attrs.node_id == identity.node_id
        infer = policy.engine.decide_infer(principal, data, attrs, 0 if local else 1,
                                           None if local else me)
        result["app"] = {"name": principal.name, "attrs": dict(principal.attrs)}
        result["infer"] = {
            "allowed": infer.allowed, "policies": list(infer.policy_ids),
            "reasons": list(infer.reasons), "errors": list(infer.errors),
            "text": policy.engine.explain(infer).render(),
        }
        # Here, only infer is asked; elsewhere both the forward and the executor's re-check.
        result["allowed"] = infer.allowed if local else decision.allowed and infer.allowed
    return result


def _app_principal(auth: AppAuth | None, name: str) -> AppAttrs:
    """App ``name`` as a request of it would be judged: its active token's attributes."""
    if name == ANONYMOUS.name:
        return ANONYMOUS
    row = auth.tokens.active(name) if auth is not None else None
    if row is None and (auth is None or name not in auth.uids.values()):
        raise HTTPError(404, f"app {name!r} has no active token and no socket uid mapping; "
                             "`outpost token list` shows the apps")
    return AppAttrs(name, dict(row.attrs) if row else {})


__all__ = ["FederationDeps", "advertised_address", "build_cluster", "explain", "peer_routes",
           "start_cluster", "start_mdns"]
