"""Where an inference runs: here, or on a peer that policy lets the data go to.

One path for every inference request, whether an app sent it (``hops = 0``) or a peer forwarded
it (``hops > 0``, the forwarding node is the caller):

1. The data's labels come from the request parameters ``outpost.data_class`` and
   ``outpost.jurisdiction``; a request without a class gets ``node.default_data_class``, one
   without a jurisdiction gets the jurisdiction of the node where it entered.
2. ``federation.placement.place`` decides: local when the model is here and the node is not
   saturated; else the alive, fresh, model-holding peers that ``forward`` policy allows, ranked.
   Peers that policy refuses are never contacted: not one byte of the payload goes to them.
3. Forwarding goes over the mutual-TLS peer endpoint on a warm connection (``node.peerclient``:
   the connection must prove it is the chosen node before the body is sent), with the labels
   made explicit in the body. A failed or timed-out peer is skipped for the next one; if none answers
   the request runs here when the model is here, else 503. If policy allowed no peer, 403 names
   the policies and attributes that refused.
4. The executing node re-checks ``infer`` with its own attested attributes (either side's deny
   wins), and both ends record what they decided in their audit logs.
5. The app that asked travels with the request: the sending node attests it in the
   ``Outpost-App`` header (its mutual-TLS identity vouches for the label), so the executor's
   entry reads ``app:camera-svc via node:edge1`` and its ``infer`` re-check has the same
   ``App`` principal, with the sending node as ``context.via``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from typing import Any

from federation.placement import Candidate, PlacementConfig, place
from federation.policy_engine import AppAttrs, DataAttrs, Decision, NodeAttrs
from models import (
    CodecError,
    DecodedTooLarge,
    ModelError,
    ModelUnavailable,
    Overloaded,
    decode_infer_request,
    encode_infer_response,
)
from node import limits, otel, trace
from node.http import HTTPError, close_pool, load_json_object, off_loop
from node.limits import (
    HEADER_APP,
    HEADER_HOPS,
    HEADER_JSON_LENGTH,
    HEADER_REQUEST_ID,
    MAX_REQUEST_ID_CHARS,
)
from node.metrics import Metrics
from node.modelhost import ModelNotFound, Served
from node.peerclient import PeerClients, PeerError, PeerRefused
from node.ports import AuditSink, ModelSource, PeerDirectory, PolicyView
from node.refusals import RefusalTrail
from node.tokens import AppIdentity

log = logging.getLogger("outpost.forward")

HDR_LEN = HEADER_JSON_LENGTH
HOPS = HEADER_HOPS
REQUEST_ID = HEADER_REQUEST_ID
APP = HEADER_APP


@dataclass(frozen=True)
class ForwardDeps:
    """What the one request path needs of the rest of the node (wired in ``node.daemon``)."""

    node_id: str
    default_data_class: str
    #: This node's attested attributes; None on a node that is not enrolled (a lone node:
    #: no placement, no policy, every request runs here). Fixed for the daemon's life.
    me: NodeAttrs | None
    peers: PeerDirectory
    policy: PolicyView
    models: ModelSource
    audit: AuditSink
    metrics: Metrics
    #: Every outbound mutual-TLS connection (``node.peerclient``); None when ``me`` is.
    clients: PeerClients | None


@dataclass
class Call:
    """One inference request as it reached this node."""

    model: str
    version: str | None
    body: bytes
    header_length: int | None
    caller: str | NodeAttrs  # an app name, or the forwarding node's attested attributes
    hops: int
    request_id: str
    params: dict[str, Any] | None = None
    """Request-level parameters once read (the peer endpoint reads them before the router)."""
    digest: str | None = None
    """SHA-256 of the body once computed (every entry of the request carries it)."""
    app: AppIdentity | None = None  # the app that asked (here, or as the sender attested it)
    source: str = ""  # where a local app connected from: an address or uid:N

    @property
    def caller_name(self) -> str:
        """The audit ``caller``: ``app:NAME``, ``app:NAME via node:SENDER``, ``node:SENDER``."""
        if self.app is not None:
            if isinstance(self.caller, NodeAttrs):
                return f"app:{self.app.name} via node:{self.caller.node_id}"
            return f"app:{self.app.name}"
        return self.caller if isinstance(self.caller, str) else f"node:{self.caller.node_id}"

    @property
    def json_bytes(self) -> int:
        """Bytes of JSON text in the body (all of it without a binary part)."""
        if self.header_length is None:
            return len(self.body)
        return min(max(self.header_length, 0), len(self.body))

    def sha256(self) -> str:
        if self.digest is None:
            self.digest = hashlib.sha256(self.body).hexdigest()
        return self.digest

    async def hash_off_loop(self) -> None:
        """Hash a large body on a worker thread (64 MiB would hold the loop ~40 ms)."""
        if self.digest is None:
            self.digest = await off_loop(len(self.body), lambda: hashlib.sha256(self.body)
                                         .hexdigest())

    @property
    def principal(self) -> str | AppAttrs | NodeAttrs:
        """Who ``infer`` policy judges: the app when one is known, else the forwarding node."""
        return self.app.principal if self.app is not None else self.caller

    @property
    def via(self) -> NodeAttrs | None:
        """The node that vouches for the app (``context.via``), when the app is not local."""
        return self.caller if self.app is not None and isinstance(self.caller, NodeAttrs) else None

    def audit_detail(self) -> dict[str, str | int | None]:
        if self.app is None:
            return {}
        detail: dict[str, str | int | None] = {"app": self.app.name, "token": self.app.token_id}
        if isinstance(self.caller, NodeAttrs):
            detail["via"] = self.caller.node_id
        elif self.source:
            detail["source"] = self.source[:200]
        return detail


def decoded_budget(body_bytes: int) -> int:
    """Memory a request's decoded tensors may take: a multiple of its body (node.limits)."""
    return limits.DECODED_BYTES_PER_BODY_BYTE * body_bytes + limits.DECODE_SLACK_BYTES


@dataclass
class Answer:
    body: bytes
    header_length: int | None
    route: str = "local"  # or "forwarded": metrics count outcomes by it
    version: str | None = None  # the model version that served it, when it ran here


def peek_parameters(body: bytes, header_length: int | None) -> dict[str, Any]:
    """The request-level parameters, read from the JSON header alone."""
    head = body if header_length is None else body[:header_length]
    if header_length is not None and not 0 <= header_length <= len(body):
        raise HTTPError(400, f"Inference-Header-Content-Length {header_length} is outside the "
                             f"body of {len(body)} bytes")
    doc = load_json_object(head, "request")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise HTTPError(400, "request 'parameters' must be an object")
    return params


def relabel(body: bytes, header_length: int | None, labels: dict[str, str],
            hops: int) -> tuple[bytes, int | None]:
    """The body with the data labels made explicit, so the executor judges the same data."""
    head = body if header_length is None else body[:header_length]
    tail = b"" if header_length is None else body[header_length:]
    doc = load_json_object(head, "request")
    params = dict(doc.get("parameters") or {})
    params.update(labels)
    params["outpost.hops"] = hops
    doc["parameters"] = params
    new_head = json.dumps(doc, separators=(",", ":")).encode()
    return new_head + tail, (len(new_head) if header_length is not None else None)


class Router:
    def __init__(self, deps: ForwardDeps, config: PlacementConfig, timeout_s: float) -> None:
        self.deps = deps
        self.config = config
        self.timeout_s = timeout_s
        self._latency: dict[str, float] = {}  # model ref -> EWMA seconds of local requests
        self._in_flight = 0  # requests on the one path now: 1 = nothing to batch this one with
        self.trail = RefusalTrail(self._append_entry)  # refusals, rate-limited per source

    # -- helpers -------------------------------------------------------------------------------

    @property
    def self_attrs(self) -> NodeAttrs | None:
        return self.deps.me

    async def close(self) -> None:
        """Write the refusals still counted, stop the decoding pool."""
        self.trail.flush(force=True)
        close_pool()

    async def _append_entry(self, kind: str, **fields: Any) -> int:
        audit = self.deps.audit
        return await audit.append(audit.record(kind, **fields))

    async def refused(self, call: Call, error: HTTPError, *, model: str | None = None,
                      version: str | None = None) -> None:
        """Put a refusal nothing recorded yet on the trail (rate-limited per caller)."""
        if error.audited or error.status in (499, 500):
            return  # 499: the client went away; 500: a failure (entries of its own), no refusal
        error.audited = True
        # The class the request carried, else the one this node gives unlabelled requests
        # (every infer entry names a class; a refused request is judged by the stricter one).
        labelled = (call.params or {}).get("outpost.data_class")
        data_class = str(labelled or self.deps.default_data_class)[:200]
        try:
            await self.trail.refused(
                call.caller_name, kind="infer", outcome=_OUTCOMES.get(error.status, "refused"),
                status=error.status, reason=error.message, model=model or call.model,
                version=version or call.version, data_class=data_class,
                input_sha256=call.sha256() if call.body else None,
                detail={"hops": call.hops, "request": call.request_id[:64]},
            )
        except Exception as exc:  # the refusal stands; its entry is lost only with the log
            log.warning("refusal not recorded (%s): %s", exc, error.message)

    def data_of(self, call: Call, params: dict[str, Any]) -> DataAttrs:
        data_class = str(params.get("outpost.data_class") or self.deps.default_data_class)
        own = self.deps.me.jurisdiction if self.deps.me else ""
        jurisdiction = str(params.get("outpost.jurisdiction") or own)
        model_ref = f"{call.model}:{call.version}" if call.version else call.model
        return DataAttrs(call.request_id, data_class, jurisdiction, model_ref)

    def _candidates(self, now: float) -> list[Candidate]:
        return self.deps.peers.candidates(now)

    # -- the one path --------------------------------------------------------------------------

    async def infer(self, call: Call) -> Answer:
        self._in_flight += 1
        try:
            return await self._infer(call)
        finally:
            self._in_flight -= 1

    async def _infer(self, call: Call) -> Answer:
        if len(call.body) > limits.OFFLOAD_DECODE_BYTES:
            await call.hash_off_loop()
        served = self._served(call)
        engine = self.deps.policy.engine
        me = self.deps.me
        if me is None:
            # A lone node: no placement to do, and the labels are read with the body itself.
            if served is None:
                ref = f"{call.model}:{call.version}" if call.version else call.model
                raise HTTPError(404, f"model {ref!r} is not served here; `outpost models "
                                     "list` shows what is")
            return await self._local(call, served, None, "local")
        params = call.params
        if params is None:
            params = await off_loop(len(call.body), peek_parameters, call.body,
                                    call.header_length, json_bytes=call.json_bytes)
            call.params = params
        data = self.data_of(call, params)
        local_refs = {data.model} if served is not None else set()
        queue = served.model.queue_depth if served else 0

        def decider(c: Candidate) -> Decision:
            return engine.decide_forward(me, data, c.attrs, call.hops)

        def candidates() -> Iterator[Candidate]:
            # Built only when placement looks past this node (place() ranks peers lazily).
            yield from self._candidates(time.monotonic())

        placement = place(data.model, local_refs, queue, self._latency.get(data.model),
                          candidates(), decider, self.config, hops=call.hops)
        if placement.route == "local" and served is not None:
            return await self._local(call, served, data, placement.why)
        ranking = placement.ranking
        attempts: list[str] = []
        if placement.route == "forward" and ranking is not None:
            for ranked in ranking.ranked:
                target = ranked.candidate
                try:
                    return await self._forward(call, data, target, ranked.decision, ranked.why)
                except _PeerFailed as exc:
                    attempts.append(f"{target.node_id}: {exc}")
            if served is not None:
                return await self._local(call, served, data,
                                         "every allowed peer failed; serving here")
        refusals = ranking.refused if ranking is not None else []
        denied = [r for r in refusals if r.kind == "policy"]
        version = engine.bundle.version if engine.bundle else None
        if attempts:
            reason = "no allowed peer answered: " + "; ".join(attempts)
            await self._audit_forward(call, data, "failed", None, version, reason, attempts)
            raise HTTPError(503, reason + "; retry later", [(b"retry-after", b"1")]).recorded()
        if denied:
            reason = "; ".join(r.why for r in denied)
            await self._audit_forward(call, data, "denied", None, version, reason, [])
            raise HTTPError(403, f"policy does not allow {data.describe()} to go to any node "
                                 f"that holds the model: {reason}").recorded()
        if served is None and not any(r.kind != "no-model" for r in refusals):
            raise HTTPError(404, f"model {data.model!r} is served neither here nor by any known "
                                 "peer; `outpost peers` shows what peers hold")
        reason = "; ".join(r.why for r in refusals) or placement.why
        raise HTTPError(503, f"no node can run {data.model} now: {reason}",
                        [(b"retry-after", b"1")])

    def _served(self, call: Call) -> Served | None:
        try:
            return self.deps.models.resolve(call.model, call.version)
        except ModelNotFound:
            return None

    # -- local ---------------------------------------------------------------------------------

    async def _local(self, call: Call, served: Served, data: DataAttrs | None,
                     why: str) -> Answer:
        engine = self.deps.policy.engine
        me = self.deps.me
        if data is not None and engine.bundle is not None and me is not None:
            with otel.span("policy"):
                decision = engine.decide_infer(call.principal, data, me, call.hops, call.via)
            if not decision.allowed:
                await self._audit_infer(call, served, data, "denied", "; ".join(decision.reasons))
                raise HTTPError(403, "policy does not allow this node to run "
                                     f"{data.describe()} for {call.caller_name}: "
                                     + ("; ".join(decision.reasons) or "denied")).recorded()
        record = served.record
        started = time.perf_counter()
        try:
            # Large bodies are decoded on a worker thread; the decoded tensors may take at
            # most a multiple of the body (a BYTES flood once took 80x: issue 10 row 8).
            budget = decoded_budget(len(call.body))
            with otel.span("decode"):
                if len(call.body) <= limits.OFFLOAD_DECODE_BYTES:  # common case: no hop at all
                    request = decode_infer_request(call.body, call.header_length,
                                                   record.signature, max_decoded_bytes=budget)
                else:
                    request = await off_loop(len(call.body), functools.partial(
                        decode_infer_request, call.body, call.header_length, record.signature,
                        max_decoded_bytes=budget), json_bytes=call.json_bytes)
            if data is None:
                data = self.data_of(call, request.parameters)
            alone = self._in_flight == 1  # wake the worker and the writer now, not batched
            running = served.model.infer(request.inputs, alone=alone)  # checked, queued now
        except DecodedTooLarge as exc:
            error = HTTPError(413, str(exc))
            await self.refused(call, error, model=record.name, version=record.version)
            raise error from None
        except CodecError as exc:
            error = HTTPError(400, str(exc))
            await self.refused(call, error, model=record.name, version=record.version)
            raise error from None
        except Overloaded as exc:
            self.deps.metrics.requests.labels(record.name, record.version, "503").inc()
            error = HTTPError(503, str(exc), [(b"retry-after",
                                               str(max(1, round(exc.retry_after))).encode())])
            await self.refused(call, error, model=record.name, version=record.version)
            raise error from None
        except ModelUnavailable as exc:
            error = HTTPError(503, str(exc), [(b"retry-after", b"1")])
            await self.refused(call, error, model=record.name, version=record.version)
            raise error from None
        # The decision to run it here is recorded while it runs: the answer still waits until
        # the entry is durable (DESIGN §3), but the fsync and the run overlap instead of adding.
        admitted = self._append_infer(call, served, data, "admitted", None, alone=alone)
        try:
            with otel.span("run"):  # queue wait and model run
                outputs = await running
            body, json_len = encode_infer_response(
                model_name=record.name, model_version=record.version, request=request,
                outputs=outputs,
                parameters={"outpost.served_by": self.deps.node_id,
                            "outpost.request_id": call.request_id,
                            "outpost.route": "local" if call.hops == 0 else "forwarded",
                            "outpost.reason": why},
            )
        except ModelError as exc:
            # Admitted, then failed: a second entry with the same request id says so.
            with contextlib.suppress(HTTPError):
                await self._withheld(admitted)
            await self._audit_infer(call, served, data, "error", str(exc)[:200])
            raise HTTPError(500, str(exc)).recorded() from None
        with otel.span("audit"):
            await self._withheld(admitted)
        elapsed = time.perf_counter() - started
        previous = self._latency.get(data.model)
        self._latency[data.model] = elapsed if previous is None else 0.8 * previous + 0.2 * elapsed
        self.deps.metrics.answered(record.name, record.version, elapsed)
        return Answer(body, json_len, "local", record.version)

    # -- forwarding ----------------------------------------------------------------------------

    async def _forward(self, call: Call, data: DataAttrs, target: Candidate, decision: Decision,
                       why: str) -> Answer:
        with otel.span("forward"):  # its id is the parent the peer's traceparent names
            return await self._forward_one(call, data, target, decision, why)

    async def _forward_one(self, call: Call, data: DataAttrs, target: Candidate,
                           decision: Decision, why: str) -> Answer:
        address = self.deps.peers.address_of(target.node_id)
        if address is None:
            raise _PeerFailed("no address")
        labels = {"outpost.data_class": data.data_class, "outpost.jurisdiction": data.jurisdiction}
        body, header_length = await off_loop(len(call.body), relabel, call.body,
                                             call.header_length, labels, call.hops + 1,
                                             json_bytes=call.json_bytes)
        path = f"/peer/v1/infer/{call.model}" + (f"/versions/{call.version}" if call.version else "")
        headers = {HOPS: str(call.hops + 1), REQUEST_ID: call.request_id, **trace.outgoing()}
        if call.app is not None:
            headers[APP] = call.app.label()  # attested by this node's TLS identity
        if header_length is not None:
            headers[HDR_LEN] = str(header_length)
        # The sender's decision is recorded while the request travels (not after it): durable
        # before the caller is answered, without adding the fsync to the hop's latency.
        decided = asyncio.ensure_future(self._audit_forward(
            call, data, "allowed", target.node_id, decision.policy_version, why, []))
        peers = self.deps.clients
        assert peers is not None  # only enrolled nodes forward
        try:
            # The connection must prove it is target.node_id before the body is written
            # (node.peerclient): an address is never proof of who answers there.
            response = await peers.request(target.node_id, address, "POST", path, body=body,
                                           headers=headers, purpose="forward",
                                           timeout_s=self.timeout_s)
        except PeerRefused:
            self.deps.metrics.forwards.labels(target.node_id, "refused").inc()
            await decided
            raise _PeerFailed("the TLS peer at its address is not that node (refused and "
                              "audited)") from None
        except PeerError as exc:
            self.deps.metrics.forwards.labels(target.node_id, "unreachable").inc()
            await decided
            raise _PeerFailed(str(exc)[:200]) from None
        status, content = response.status, response.body
        json_len = response.headers.get("Inference-Header-Content-Length")
        await decided
        if status != 200:
            self.deps.metrics.forwards.labels(target.node_id, str(status)).inc()
            try:
                message = str(json.loads(content).get("error", ""))
            except (ValueError, AttributeError):
                message = content[:200].decode(errors="replace")
            if status in (400, 403, 404, 413):
                # The executor judged the request itself (and recorded it): its answer is
                # final, and this node records that the forward ended refused.
                error = HTTPError(status, f"{target.node_id}: {message}")
                await self._refused_by_peer(call, data, target.node_id, error)
                raise error
            raise _PeerFailed(f"{status} {message[:120]}")
        self.deps.metrics.forwards.labels(target.node_id, "200").inc()
        return _annotated_answer(content, int(json_len) if json_len else None, why)

    # -- audit ---------------------------------------------------------------------------------

    async def _refused_by_peer(self, call: Call, data: DataAttrs, peer: str,
                               error: HTTPError) -> None:
        error.audited = True
        try:
            await self.trail.refused(
                call.caller_name, kind="forward", decision="refused", status=error.status,
                reason=error.message, model=call.model, version=call.version, peer=peer,
                data_class=data.data_class, input_sha256=call.sha256(),
                detail={"jurisdiction": data.jurisdiction, "hops": call.hops,
                        "request": call.request_id[:64]},
            )
        except Exception as exc:
            log.warning("refusal by %s not recorded (%s)", peer, exc)

    def _append_infer(self, call: Call, served: Served, data: DataAttrs, outcome: str,
                      reason: str | None, *, alone: bool = False) -> Awaitable[int]:
        """Queue this node's ``infer`` entry now; await the result before answering."""
        audit = self.deps.audit
        engine = self.deps.policy.engine
        try:
            return audit.append_bytes(audit.record(
                "infer", model=served.record.name, version=served.record.version,
                caller=call.caller_name, data_class=data.data_class, outcome=outcome,
                input_sha256=call.sha256(), reason=reason,
                policy_version=engine.bundle.version if engine.bundle else None,
                detail={"jurisdiction": data.jurisdiction, "hops": call.hops,
                        "request": call.request_id[:MAX_REQUEST_ID_CHARS],
                        **call.audit_detail(), **_trace_detail()},
            ).to_bytes(), alone=alone)
        except Exception as exc:  # closed while stopping
            failed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed

    @staticmethod
    async def _withheld(appended: Awaitable[int]) -> None:
        """Wait for an audit entry; no durable entry, no answer."""
        try:
            await appended
        except Exception as exc:
            raise HTTPError(503, f"audit log unavailable ({exc}); the result was withheld, "
                                 "retry shortly", [(b"retry-after", b"1")]) from None

    async def _audit_infer(self, call: Call, served: Served, data: DataAttrs, outcome: str,
                           reason: str | None) -> None:
        await self._withheld(self._append_infer(call, served, data, outcome, reason))

    async def _audit_forward(self, call: Call, data: DataAttrs, decision: str, target: str | None,
                             policy_version: int | None, reason: str, attempts: list[str]) -> None:
        audit = self.deps.audit
        try:
            await audit.append(audit.record(
                "forward", model=call.model, version=call.version, caller=call.caller_name,
                data_class=data.data_class, decision=decision, peer=target,
                policy_version=policy_version, reason=reason[:1000],
                input_sha256=call.sha256(),
                detail={"jurisdiction": data.jurisdiction, "hops": call.hops,
                        "failed": len(attempts),
                        "request": call.request_id[:MAX_REQUEST_ID_CHARS],
                        **call.audit_detail(), **_trace_detail()},
            ))
        except Exception as exc:
            raise HTTPError(503, f"audit log unavailable ({exc}); retry shortly",
                            [(b"retry-after", b"1")]) from None


# The outcome an endpoint refusal is recorded with, by HTTP status.
_OUTCOMES = {400: "bad_request", 403: "denied", 404: "not_found", 405: "bad_request",
             408: "bad_request", 413: "too_large", 415: "bad_request", 503: "unavailable"}
def _trace_detail() -> dict[str, str]:
    """``{"trace": trace id}`` when the request carries a W3C trace context (node.trace)."""
    tid = trace.trace_id()
    return {"trace": tid} if tid else {}


class _PeerFailed(Exception):
    """The peer did not answer usefully; try the next one."""


def _annotated_answer(body: bytes, header_length: int | None, why: str) -> Answer:
    """The executor's response with ``outpost.route = forwarded`` and the sender's reason."""
    head = body if header_length is None else body[:header_length]
    tail = b"" if header_length is None else body[header_length:]
    doc = json.loads(head)
    params = dict(doc.get("parameters") or {})
    params["outpost.route"] = "forwarded"
    params["outpost.reason"] = why
    doc["parameters"] = params
    new_head = json.dumps(doc, separators=(",", ":")).encode()
    return Answer(new_head + tail, len(new_head) if header_length is not None else None,
                  "forwarded", doc.get("model_version"))
