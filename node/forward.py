"""Where an inference runs: here, or on a peer that policy lets the data go to.

One path for every inference request, whether an app sent it (``hops = 0``) or a peer forwarded
it (``hops > 0``, the forwarding node is the caller):

1. The data's labels come from the request parameters ``outpost.data_class`` and
   ``outpost.jurisdiction``; a request without a class gets ``node.default_data_class``, one
   without a jurisdiction gets the jurisdiction of the node where it entered.
2. ``federation.placement.place`` decides: local when the model is here and the node is not
   saturated; else the alive, fresh, model-holding peers that ``forward`` policy allows, ranked.
   Peers that policy refuses are never contacted: not one byte of the payload goes to them.
3. Forwarding goes over the mutual-TLS peer endpoint on a warm connection, with the labels made
   explicit in the body. A failed or timed-out peer is skipped for the next one; if none answers
   the request runs here when the model is here, else 503. If policy allowed no peer, 403 names
   the policies and attributes that refused.
4. The executing node re-checks ``infer`` with its own attested attributes (either side's deny
   wins), and both ends record what they decided in their audit logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx

from federation.placement import Candidate, PlacementConfig, place
from federation.policy_engine import DataAttrs, Decision, NodeAttrs
from models import (
    CodecError,
    ModelError,
    ModelUnavailable,
    Overloaded,
    decode_infer_request,
    encode_infer_response,
)
from node import otel, trace
from node.http import HTTPError
from node.modelhost import ModelNotFound, Served

if TYPE_CHECKING:
    from node.daemon import Daemon

log = logging.getLogger("outpost.forward")

HDR_LEN = "inference-header-content-length"
HOPS = "outpost-hops"
REQUEST_ID = "outpost-request-id"


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

    @property
    def caller_name(self) -> str:
        return self.caller if isinstance(self.caller, str) else f"node:{self.caller.node_id}"


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
    try:
        doc = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"request JSON is invalid: {exc}") from None
    if not isinstance(doc, dict):
        raise HTTPError(400, "request JSON must be an object with an 'inputs' list")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise HTTPError(400, "request 'parameters' must be an object")
    return params


def relabel(body: bytes, header_length: int | None, labels: dict[str, str],
            hops: int) -> tuple[bytes, int | None]:
    """The body with the data labels made explicit, so the executor judges the same data."""
    head = body if header_length is None else body[:header_length]
    tail = b"" if header_length is None else body[header_length:]
    doc = json.loads(head)
    params = dict(doc.get("parameters") or {})
    params.update(labels)
    params["outpost.hops"] = hops
    doc["parameters"] = params
    new_head = json.dumps(doc, separators=(",", ":")).encode()
    return new_head + tail, (len(new_head) if header_length is not None else None)


class Router:
    def __init__(self, daemon: Daemon, config: PlacementConfig, timeout_s: float) -> None:
        self.daemon = daemon
        self.config = config
        self.timeout_s = timeout_s
        self._latency: dict[str, float] = {}  # model ref -> EWMA seconds of local requests
        self._in_flight = 0  # requests on the one path now: 1 = nothing to batch this one with
        self._http: httpx.AsyncClient | None = None  # replication and other control calls
        self._session: aiohttp.ClientSession | None = None  # the forwarding hot path

    # -- helpers -------------------------------------------------------------------------------

    @property
    def self_attrs(self) -> NodeAttrs | None:
        ident = self.daemon.identity
        return NodeAttrs(**ident.attributes()) if ident else None

    def client(self) -> httpx.AsyncClient:
        creds = self.daemon.credentials
        assert creds is not None
        if self._http is None:
            self._http = httpx.AsyncClient(
                verify=creds.client(),
                timeout=httpx.Timeout(self.timeout_s, connect=min(2.0, self.timeout_s)),
                limits=httpx.Limits(max_keepalive_connections=64, keepalive_expiry=60.0),
            )
        return self._http

    async def reset_client(self) -> None:
        """After a revocation list change: new connections use the new trust."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def close(self) -> None:
        await self.reset_client()

    def data_of(self, call: Call, params: dict[str, Any]) -> DataAttrs:
        data_class = str(params.get("outpost.data_class") or self.daemon.config.node.default_data_class)
        own = self.daemon.identity.jurisdiction if self.daemon.identity else ""
        jurisdiction = str(params.get("outpost.jurisdiction") or own)
        model_ref = f"{call.model}:{call.version}" if call.version else call.model
        return DataAttrs(call.request_id, data_class, jurisdiction, model_ref)

    def _candidates(self, now: float) -> list[Candidate]:
        cluster = self.daemon.cluster
        if cluster is None:
            return []
        return cluster.candidates(now)

    # -- the one path --------------------------------------------------------------------------

    async def infer(self, call: Call) -> Answer:
        self._in_flight += 1
        try:
            return await self._infer(call)
        finally:
            self._in_flight -= 1

    async def _infer(self, call: Call) -> Answer:
        served = self._served(call)
        engine = self.daemon.engine
        me = self.self_attrs
        if me is None or self.daemon.cluster is None:
            # A lone node: no placement to do, and the labels are read with the body itself.
            if served is None:
                ref = f"{call.model}:{call.version}" if call.version else call.model
                raise HTTPError(404, f"model {ref!r} is not served here; `outpost models "
                                     "list` shows what is")
            return await self._local(call, served, None, "local")
        params = peek_parameters(call.body, call.header_length)
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
            raise HTTPError(503, reason + "; retry later", [(b"retry-after", b"1")])
        if denied:
            reason = "; ".join(r.why for r in denied)
            await self._audit_forward(call, data, "denied", None, version, reason, [])
            raise HTTPError(403, f"policy does not allow {data.describe()} to go to any node "
                                 f"that holds the model: {reason}")
        if served is None and not any(r.kind != "no-model" for r in refusals):
            raise HTTPError(404, f"model {data.model!r} is served neither here nor by any known "
                                 "peer; `outpost peers` shows what peers hold")
        reason = "; ".join(r.why for r in refusals) or placement.why
        raise HTTPError(503, f"no node can run {data.model} now: {reason}",
                        [(b"retry-after", b"1")])

    def _served(self, call: Call) -> Served | None:
        try:
            return self.daemon.host.resolve(call.model, call.version)
        except ModelNotFound:
            return None

    # -- local ---------------------------------------------------------------------------------

    async def _local(self, call: Call, served: Served, data: DataAttrs | None,
                     why: str) -> Answer:
        engine = self.daemon.engine
        me = self.self_attrs
        if data is not None and engine.bundle is not None and me is not None:
            with otel.span("policy"):
                decision = engine.decide_infer(call.caller, data, me, call.hops)
            if not decision.allowed:
                await self._audit_infer(call, served, data, "denied", "; ".join(decision.reasons))
                raise HTTPError(403, "policy does not allow this node to run "
                                     f"{data.describe()} for {call.caller_name}: "
                                     + ("; ".join(decision.reasons) or "denied"))
        record = served.record
        started = time.perf_counter()
        try:
            with otel.span("decode"):
                request = decode_infer_request(call.body, call.header_length,
                                               record.signature)
            if data is None:
                data = self.data_of(call, request.parameters)
            alone = self._in_flight == 1  # wake the worker and the writer now, not batched
            running = served.model.infer(request.inputs, alone=alone)  # checked, queued now
        except CodecError as exc:
            await self._audit_infer(call, served, data or self.data_of(call, {}), "bad_request",
                                    str(exc)[:200])
            raise HTTPError(400, str(exc)) from None
        except Overloaded as exc:
            self.daemon.metrics.requests.labels(record.name, record.version, "503").inc()
            raise HTTPError(503, str(exc), [(b"retry-after",
                                             str(max(1, round(exc.retry_after))).encode())]) from None
        except ModelUnavailable as exc:
            raise HTTPError(503, str(exc), [(b"retry-after", b"1")]) from None
        # The decision to run it here is recorded while it runs: the answer still waits until
        # the entry is durable (DESIGN §3), but the fsync and the run overlap instead of adding.
        admitted = self._append_infer(call, served, data, "admitted", None, alone=alone)
        try:
            with otel.span("run"):  # queue wait and model run
                outputs = await running
            body, json_len = encode_infer_response(
                model_name=record.name, model_version=record.version, request=request,
                outputs=outputs,
                parameters={"outpost.served_by": self.daemon.node_id,
                            "outpost.request_id": call.request_id,
                            "outpost.route": "local" if call.hops == 0 else "forwarded",
                            "outpost.reason": why},
            )
        except ModelError as exc:
            # Admitted, then failed: a second entry with the same request id says so.
            with contextlib.suppress(HTTPError):
                await self._withheld(admitted)
            await self._audit_infer(call, served, data, "error", str(exc)[:200])
            raise HTTPError(500, str(exc)) from None
        with otel.span("audit"):
            await self._withheld(admitted)
        elapsed = time.perf_counter() - started
        previous = self._latency.get(data.model)
        self._latency[data.model] = elapsed if previous is None else 0.8 * previous + 0.2 * elapsed
        self.daemon.metrics.answered(record.name, record.version, elapsed)
        return Answer(body, json_len, "local", record.version)

    # -- forwarding ----------------------------------------------------------------------------

    async def _forward(self, call: Call, data: DataAttrs, target: Candidate, decision: Decision,
                       why: str) -> Answer:
        with otel.span("forward"):  # its id is the parent the peer's traceparent names
            return await self._forward_one(call, data, target, decision, why)

    async def _forward_one(self, call: Call, data: DataAttrs, target: Candidate,
                           decision: Decision, why: str) -> Answer:
        cluster = self.daemon.cluster
        assert cluster is not None
        address = cluster.address_of(target.node_id)
        if address is None:
            raise _PeerFailed("no address")
        labels = {"outpost.data_class": data.data_class, "outpost.jurisdiction": data.jurisdiction}
        body, header_length = relabel(call.body, call.header_length, labels, call.hops + 1)
        path = f"/peer/v1/infer/{call.model}" + (f"/versions/{call.version}" if call.version else "")
        headers = {HOPS: str(call.hops + 1), REQUEST_ID: call.request_id, **trace.outgoing()}
        if header_length is not None:
            headers[HDR_LEN] = str(header_length)
        # The sender's decision is recorded while the request travels (not after it): durable
        # before the caller is answered, without adding the fsync to the hop's latency.
        decided = asyncio.ensure_future(self._audit_forward(
            call, data, "allowed", target.node_id, decision.policy_version, why, []))
        try:
            status, content, json_len = await self._post(f"https://{address}{path}", body,
                                                         headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.daemon.metrics.forwards.labels(target.node_id, "unreachable").inc()
            await decided
            raise _PeerFailed(f"{type(exc).__name__}") from None
        await decided
        if status != 200:
            self.daemon.metrics.forwards.labels(target.node_id, str(status)).inc()
            try:
                message = str(json.loads(content).get("error", ""))
            except (ValueError, AttributeError):
                message = content[:200].decode(errors="replace")
            if status in (400, 403, 404):
                # The executor judged the request itself: its answer is final.
                raise HTTPError(status, f"{target.node_id}: {message}")
            raise _PeerFailed(f"{status} {message[:120]}")
        self.daemon.metrics.forwards.labels(target.node_id, "200").inc()
        return _annotated_answer(content, int(json_len) if json_len else None, why)

    async def _post(self, url: str, body: bytes,
                    headers: dict[str, str]) -> tuple[int, bytes, str | None]:
        """One request on the forwarding session: aiohttp's C-accelerated client keeps warm
        mutual-TLS connections per peer and costs a fraction of httpx per hop."""
        if self._session is None:
            creds = self.daemon.credentials
            assert creds is not None
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=creds.client(), limit=256,
                                               keepalive_timeout=60.0),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s,
                                              sock_connect=min(2.0, self.timeout_s)),
            )
        async with self._session.post(url, data=body, headers=headers) as response:
            return response.status, await response.read(), response.headers.get(HDR_LEN)

    # -- audit ---------------------------------------------------------------------------------

    def _append_infer(self, call: Call, served: Served, data: DataAttrs, outcome: str,
                      reason: str | None, *, alone: bool = False) -> Awaitable[int]:
        """Queue this node's ``infer`` entry now; await the result before answering."""
        audit = self.daemon.audit
        engine = self.daemon.engine
        try:
            return audit.append_bytes(audit.record(
                "infer", model=served.record.name, version=served.record.version,
                caller=call.caller_name, data_class=data.data_class, outcome=outcome,
                input_sha256=hashlib.sha256(call.body).hexdigest(), reason=reason,
                policy_version=engine.bundle.version if engine.bundle else None,
                detail={"jurisdiction": data.jurisdiction, "hops": call.hops,
                        "request": call.request_id[:64], **_trace_detail()},
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
        audit = self.daemon.audit
        try:
            await audit.append(audit.record(
                "forward", model=call.model, version=call.version, caller=call.caller_name,
                data_class=data.data_class, decision=decision, peer=target,
                policy_version=policy_version, reason=reason[:1000],
                input_sha256=hashlib.sha256(call.body).hexdigest(),
                detail={"jurisdiction": data.jurisdiction, "hops": call.hops,
                        "failed": len(attempts), "request": call.request_id[:64],
                        **_trace_detail()},
            ))
        except Exception as exc:
            raise HTTPError(503, f"audit log unavailable ({exc}); retry shortly",
                            [(b"retry-after", b"1")]) from None


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
