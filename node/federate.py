"""Wiring an enrolled daemon into its federation: the cluster service, the callbacks that
persist and audit what gossip brings, this node's advert and checkpoints, and the peer and
admin routes that expose them. Everything here is glue; protocols live in ``federation`` and
sockets in ``node.cluster``.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import time
from typing import TYPE_CHECKING, Any

from federation.audit import EquivocationEvidence
from federation.config import ClusterConfig
from federation.identity import NodeIdentity, read_revocation_list
from federation.policy_engine import DataAttrs, NodeAttrs
from node.cluster import REVOKED, Cluster, ClusterDeps, held_documents
from node.enrollment import Applied, revocations
from node.forward import Call, peek_parameters
from node.http import HTTPError, Receive, Scope, Send, header, read_body, send_response
from node.store import get_doc, put_doc

if TYPE_CHECKING:
    from node.daemon import Daemon

log = logging.getLogger("outpost.federate")

# Witnesses are handed consistency proofs from this many earlier published checkpoints.
_PROOF_HISTORY = 8


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


async def start_federation(daemon: Daemon, key: Any) -> Cluster:
    assert daemon.identity is not None and daemon.credentials is not None
    config = daemon.config
    presets = {"lan": ClusterConfig.lan, "wan": ClusterConfig.wan, "local": ClusterConfig.local}
    address = advertised_address(config.federation.advertise, daemon.peer_listen)
    published: list[tuple[int, str]] = []  # (size, note) of checkpoints we gossiped
    reader = daemon.audit.reader()

    def advert_body() -> dict[str, Any]:
        served = daemon.host.served()
        backend = daemon.host.backend
        # A Ray-backed node advertises its cluster (nodes, CPUs, GPUs, memory, replicas):
        # None in-process. describe() is cached by the backend, never a Ray round trip.
        cluster = backend.describe().get("cluster") if backend is not None else None
        return {
            "models": [{"name": s.record.name, "version": s.record.version,
                        "sha256": s.record.sha256, "provider": s.model.provider}
                       for s in served],
            "queue": sum(s.model.queue_depth for s in served),
            "load": round(_load1(), 2),
            "gpus": max(daemon.gpus, int(cluster["gpus"])) if cluster else daemon.gpus,
            "cluster": cluster,
            "policy_version": daemon.policy_version,
            "app": daemon.listen,
        }

    def on_document(kind: str, version: int, body: bytes, source: str | None) -> None:
        daemon.spawn(_persist_document(daemon, kind, version, body, source))

    def on_equivocation(evidence: EquivocationEvidence) -> None:
        log.error("EQUIVOCATION: %s signed two different checkpoints of size %d",
                  evidence.origin, evidence.size)
        daemon.spawn(daemon.audit.append(daemon.audit.record(
            "equivocation", peer=evidence.origin,
            reason=f"two signed checkpoints of size {evidence.size} with different roots",
            detail={"size": evidence.size},
        )))

    async def checkpoint_source() -> tuple[int, str, dict[int, list[bytes]]]:
        size = daemon.audit.size
        note = daemon.audit.checkpoint()
        if note is None or size == 0:
            return 0, "", {}
        proofs: dict[int, list[bytes]] = {}
        for old, _ in published[-_PROOF_HISTORY:]:
            if 0 < old < size:
                proofs[old] = list((await reader.consistency_proof(old, size)).hashes)
        published.append((size, note))
        del published[:-_PROOF_HISTORY]
        return size, note, proofs

    deps = ClusterDeps(
        node_id=daemon.node_id,
        key=key,
        cert_pem=daemon.credentials.cert_pem,
        authority_pem=daemon.credentials.authority_pem,
        address=address,
        config=presets[config.federation.preset](),
        seeds=list(config.federation.seeds),
        client_tls=daemon.credentials.client,
        advert_body=advert_body,
        on_document=on_document,
        on_equivocation=on_equivocation,
        checkpoint_source=checkpoint_source,
        count_drop=lambda reason: daemon.metrics.gossip_dropped.labels(reason).inc(),
        advert_interval_s=config.federation.advert_interval_s,
        checkpoint_interval_s=config.federation.checkpoint_interval_s,
    )
    cluster = Cluster(deps, await revocations(daemon.store, daemon.data_dir))
    policy, crl = await held_documents(daemon.store)
    host, _, port = daemon.peer_listen.rpartition(":")
    await cluster.start(
        host, int(port),
        policy[1] if policy else None, policy[0] if policy else None,
        crl[1] if crl else None, crl[0] if crl else None,
    )
    if config.discovery.mdns:
        await _start_mdns(daemon, cluster, address)
    log.info("federation %s: node %s gossiping as %s (seeds: %s)", daemon.identity.federation,
             daemon.node_id, address, ", ".join(config.federation.seeds) or "none")
    return cluster


async def _start_mdns(daemon: Daemon, cluster: Cluster, address: str) -> None:
    """Advertise on the LAN and propose every discovered node to membership. Discovery only
    proposes: the TLS handshake of the first exchange proves who answers."""
    from node.discovery import Advert, Candidate, Discovery, DiscoveryError

    assert daemon.identity is not None
    port = int(address.rpartition(":")[2])
    settings = daemon.config.discovery

    federation = daemon.identity.federation

    def found(candidate: Candidate) -> None:
        if candidate.node_id == daemon.node_id or candidate.federation not in ("", federation):
            return
        for ip in candidate.addresses[:1]:
            cluster.contact(f"{ip}:{candidate.peer_port}")

    discovery = Discovery(
        Advert(daemon.node_id, port, port, tier=daemon.identity.tier,
               fingerprint=daemon.identity.fingerprint, federation=daemon.identity.federation),
        on_found=found, on_lost=lambda node_id: None,
        interfaces=list(settings.interfaces) or None, record_ttl_s=settings.record_ttl_s,
        confirm_interval_s=settings.confirm_interval_s,
    )
    try:
        await discovery.start()
    except DiscoveryError as exc:
        log.warning("mDNS discovery off: %s", exc)
        return
    daemon.discovery = discovery


async def _persist_document(daemon: Daemon, kind: str, version: int, body: bytes,
                            source: str | None) -> None:
    """A policy bundle or revocation list arrived by gossip: keep it and record it, once."""
    held = await get_doc(daemon.store, kind)
    if held is not None and held[0] >= version:
        return
    await put_doc(daemon.store, kind, version, body)
    if kind == "revocation" and daemon.credentials is not None:
        daemon.credentials.update_revocations(
            read_revocation_list(body, daemon.credentials.authority_pem))
    if kind == "policy":
        daemon.use_policy(version)
    if kind == "revocation" and daemon.router is not None:
        await daemon.router.reset_client()
    fields = Applied(kind, version, f"{kind} v{version} received by gossip").audit_fields()
    fields["caller"] = f"gossip:{source}" if source else "gossip"
    await daemon.audit.append(daemon.audit.record(f"{kind}.apply", **fields))
    log.info("%s v%d received by gossip and applied", kind, version)


def peer_routes(daemon: Daemon) -> None:
    """Peer endpoint routes owned by the federation layer."""
    assert daemon.peer_app is not None

    async def gossip(scope: Scope, receive: Receive, send: Send, peer: NodeIdentity,
                     rest: str) -> None:
        from federation.limits import MAX_STREAM_MESSAGE_BYTES

        if daemon.cluster is None:
            raise HTTPError(503, "federation not started yet; retry")
        if daemon.cluster.is_revoked(peer):
            # Checked per request: a connection from before the revocation may still be open.
            raise HTTPError(403, f"{peer.node_id}: {REVOKED}")
        body = await read_body(scope, receive, MAX_STREAM_MESSAGE_BYTES)
        error = daemon.cluster.receive_reliable(body, peer)
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
        body = await read_body(scope, receive, daemon.config.node.max_body_bytes)
        raw_len = header(scope, b"inference-header-content-length")
        try:
            header_length = int(raw_len) if raw_len is not None else None
            hops = int(header(scope, b"outpost-hops") or b"1")
        except ValueError:
            raise HTTPError(400, "bad Inference-Header-Content-Length or Outpost-Hops") from None
        request_id = (header(scope, b"outpost-request-id") or b"").decode()[:64] or "forwarded"
        from node import logs, trace  # issue 12: the sender's request id and trace, here too

        logs.request_id.set(request_id)
        trace.accept(header(scope, b"traceparent"))
        router, me = daemon.router, daemon.router.self_attrs if daemon.router else None
        if router is None or me is None:
            raise HTTPError(503, "this node is not ready to take forwarded requests")
        call = Call(model=model, version=version, body=body, header_length=header_length,
                    caller=NodeAttrs(**peer.attributes()), hops=max(1, hops),
                    request_id=request_id)
        params = peek_parameters(body, header_length)
        if not params.get("outpost.data_class") or not params.get("outpost.jurisdiction"):
            # The sender labels every forward explicitly; an unlabelled one would otherwise be
            # judged with this node's defaults (its jurisdiction, its default class).
            raise HTTPError(400, "a forwarded request must carry outpost.data_class and "
                                 "outpost.jurisdiction (set by the sending node)")
        data = router.data_of(call, params)
        decision = daemon.engine.decide_infer(call.caller, data, me, call.hops)
        if not decision.allowed:
            reason = "; ".join(decision.reasons) or "denied"
            await daemon.audit.append(daemon.audit.record(
                "infer", model=model, version=version, caller=call.caller_name,
                data_class=data.data_class, outcome="denied", reason=reason[:1000],
                policy_version=decision.policy_version,
                input_sha256=hashlib.sha256(body).hexdigest(),
                detail={"jurisdiction": data.jurisdiction, "hops": call.hops,
                        "request": request_id,
                        **({"trace": trace.trace_id()} if trace.trace_id() else {})},
            ))
            raise HTTPError(403, f"{daemon.node_id} refuses {data.describe()} from "
                                 f"{peer.node_id}: {reason}")
        answer = await router.infer(call)
        headers = [(b"content-type", b"application/json")]
        if answer.header_length is not None:
            headers = [(b"content-type", b"application/octet-stream"),
                       (b"inference-header-content-length", str(answer.header_length).encode())]
        await send_response(send, 200, answer.body, headers)

    daemon.peer_app.route("POST", "/peer/v1/gossip", gossip)
    daemon.peer_app.route("POST", "/peer/v1/infer", infer)


async def explain(daemon: Daemon, data_class: str, jurisdiction: str | None,
                  target: str, model: str) -> dict[str, Any]:
    """``outpost policy explain``: the forward decision for this data to ``target``."""
    if daemon.identity is None or daemon.cluster is None:
        raise HTTPError(400, "this node is not enrolled; there is nothing to forward to")
    me = NodeAttrs(**daemon.identity.attributes())
    attrs = None
    if target == daemon.node_id:
        attrs = me
    else:
        for c in daemon.cluster.candidates(time.monotonic()):
            if c.node_id == target:
                attrs = c.attrs
    if attrs is None:
        raise HTTPError(404, f"no verified capability advert of {target!r} yet; `outpost peers` "
                             "lists the nodes this one knows")
    data = DataAttrs("explain", data_class, jurisdiction or me.jurisdiction, model)
    decision = daemon.engine.decide_forward(me, data, attrs, 0)
    explanation = daemon.engine.explain(decision)
    return {
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


async def peers_view(daemon: Daemon) -> list[dict[str, Any]]:
    if daemon.cluster is None:
        return []
    return daemon.cluster.peers()


def _load1() -> float:
    import os

    return os.getloadavg()[0]


__all__ = ["advertised_address", "peer_routes", "peers_view", "start_federation"]
