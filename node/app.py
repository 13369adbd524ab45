"""The app endpoint: Open Inference Protocol (KServe v2) REST API over ASGI, plus ``/metrics``.

Routes (``{v}`` optional throughout)::

    GET  /v2/health/live | /v2/health/ready | /v2
    GET  /v2/models/{m}[/versions/{v}]            model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready
    POST /v2/models/{m}[/versions/{v}]/infer      JSON or JSON + binary tensors
    GET  /metrics                                  Prometheus text format

Who asks: every route but health and ``/metrics`` first turns the request's credentials into
an app (``Authorization: Bearer``, or the uid on the app socket; ``node.tokens``). A refusal is
answered 401 (``WWW-Authenticate: Bearer``), 403 (an unmapped socket uid) or 429 (a source
that keeps failing), audited with the outcome ``unauthenticated``/``forbidden``, and counted
per app; it never reaches a model.

Owns protocol mapping only: errors from ``models`` become ``{"error": ...}`` with the status the
OIP clients expect. Content-Type is ignored on purpose (OIP.md: tritonclient's sync client sends
none and its aio client sends octet-stream); JSON vs binary is decided by
``Inference-Header-Content-Length`` alone.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from node import logs, otel, trace
from node.appsock import UID_KEY
from node.forward import Call, Router
from node.http import (
    JSON_TYPE,
    HTTPError,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    send_error,
    send_json,
    send_response,
)
from node.limits import HEADER_JSON_LENGTH
from node.metrics import CONTENT_TYPE as METRICS_TYPE
from node.metrics import Metrics
from node.modelhost import ModelHost, ModelNotFound, Served
from node.tokens import ANONYMOUS_APP, AppAuth, AppIdentity, AuthFailure

log = logging.getLogger("outpost.app")

PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data"]
_HDR_LEN = HEADER_JSON_LENGTH.encode()
_BINARY_TYPE = (b"content-type", b"application/octet-stream")
_OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})
# HTTP status of an answered inference -> the outcome counted per app in /metrics
_OUTCOMES = {200: "ok", 400: "bad_request", 401: "unauthenticated", 403: "denied",
             404: "not_found", 413: "bad_request", 415: "bad_request", 429: "throttled",
             499: "cancelled", 503: "unavailable"}
REQUEST_ID_HEADER = b"outpost-request-id"  # the audit entry's request id, for the app
UNKNOWN_MODEL = "_unknown"  # metrics label of requests for models no node serves


@dataclass
class AppState:
    node_id: str
    server_version: str
    max_body_bytes: int
    default_data_class: str
    ready: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    health: Callable[[], dict[str, Any]] | None = None
    """The runtime's ``Backend.health()``: its ``degraded``/``reason`` join the body of
    ``/v2/health/ready`` (the status code stays readiness alone: a degraded node serves)."""

    def ready_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ready": self.ready}
        if self.health is not None:
            body.update(self.health())
        return body


class OipApp:
    """The ASGI application served on ``node.listen``."""

    def __init__(self, state: AppState, host: ModelHost, metrics: Metrics, router: Router,
                 auth: AppAuth | None = None) -> None:
        self.state = state
        self.host = host
        self.metrics = metrics
        self.router = router
        self.auth = auth  # None: every caller is App::"anonymous" (tests, benchmarks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            await self._route(scope, receive, send)
        except HTTPError as exc:
            self.metrics.http_errors.labels(str(exc.status)).inc()
            rid = logs.request_id.get()
            if rid is not None:
                exc.headers = [*exc.headers, (REQUEST_ID_HEADER, rid.encode())]
            await send_error(send, exc)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            await send_error(send, HTTPError(500, "internal error; see the daemon log"))

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        app = ANONYMOUS_APP if path in _OPEN_PATHS else await self._authenticate(scope, path)
        if path.startswith("/v2/models/"):
            parts = path[len("/v2/models/"):].split("/")
            name, rest = parts[0], parts[1:]
            version = None
            if len(rest) >= 2 and rest[0] == "versions":
                version, rest = rest[1], rest[2:]
            action = rest[0] if len(rest) == 1 else ("" if not rest else None)
            if not name or action is None:
                raise HTTPError(404, f"no such endpoint {path}")
            if action == "infer":
                _expect(method, "POST", path)
                outcome = "error"
                try:
                    await self._infer(scope, receive, send, name, version, app)
                    outcome = "ok"
                except HTTPError as exc:
                    outcome = _OUTCOMES.get(exc.status, "error")
                    raise
                finally:
                    self.metrics.app_request(app.name, outcome)
                return
            _expect(method, "GET", path)
            served = self._resolve(name, version)
            if action == "ready":
                await send_json(send, 200 if self.state.ready else 503, {"ready": self.state.ready})
            elif action == "":
                await send_json(send, 200, self._metadata(served))
            else:
                raise HTTPError(404, f"no such endpoint {path}")
            return
        if path == "/v2/health/live":
            await send_json(send, 200, {"live": True})
        elif path == "/v2/health/ready":
            await send_json(send, 200 if self.state.ready else 503, self.state.ready_body())
        elif path in ("/v2", "/v2/"):
            await send_json(send, 200, {
                "name": "outpost",
                "version": self.state.server_version,
                "extensions": EXTENSIONS,
            })
        elif path == "/metrics":
            await send_response(send, 200, self.metrics.render(), [(b"content-type", METRICS_TYPE.encode())])
        else:
            raise HTTPError(404, f"no such endpoint {path}; the API lives under /v2")

    async def _authenticate(self, scope: Scope, path: str) -> AppIdentity:
        auth = self.auth
        if auth is None:
            return ANONYMOUS_APP
        extensions = scope.get("extensions")
        uid = extensions.get(UID_KEY) if extensions else None
        source = _source(scope, uid)
        try:
            return auth.authenticate(header(scope, b"authorization"), uid, source)
        except AuthFailure as failure:
            await self._refused(failure, path, source)
            headers: list[tuple[bytes, bytes]] = []
            if failure.status == 401:
                headers.append((b"www-authenticate", b'Bearer realm="outpost"' + (
                    b', error="invalid_token"' if header(scope, b"authorization") else b"")))
            elif failure.status == 429:
                headers.append((b"retry-after", str(max(1, round(failure.retry_after))).encode()))
            raise HTTPError(failure.status, failure.message, headers) from None

    async def _refused(self, failure: AuthFailure, path: str, source: str) -> None:
        """Count and audit a refused credential (durable before the 401 goes out)."""
        model = None
        if path.startswith("/v2/models/") and path.endswith("/infer"):
            model = path.split("/")[3][:256] or None
            self.metrics.app_request(failure.app or "unknown", failure.outcome)
        if not failure.audit:
            return
        audit = self.router.deps.audit
        caller = f"app:{failure.app}" if failure.app else f"unknown@{source}"
        try:
            await audit.append(audit.record(
                "infer" if model else "app.refused", model=model, caller=caller[:256],
                outcome=failure.outcome, reason=failure.message[:1000],
                detail={"source": source[:200], "app": failure.app, "token": failure.token_id,
                        "status": failure.status, "path": path[:200]},
            ))
        except Exception as exc:  # the refusal stands either way; say why it is not recorded
            log.warning("could not audit a refused credential from %s: %s", source, exc)

    def _resolve(self, name: str, version: str | None) -> Served:
        try:
            return self.host.resolve(name, version)
        except ModelNotFound as exc:
            raise HTTPError(404, str(exc)) from None

    def _metadata(self, served: Served) -> dict[str, Any]:
        record, model = served.record, served.model
        sig = record.signature
        versions = sorted(s.record.version for s in self.host.served() if s.record.name == record.name)
        return {
            "name": record.name,
            "versions": versions,
            "platform": PLATFORM,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in sig.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in sig.outputs],
            "parameters": {
                "outpost.version": record.version,
                "outpost.provider": model.provider,
                "outpost.execution": model.execution["mode"],
                "outpost.sha256": record.sha256,
                "outpost.dynamic_batching": sig.batch_dynamic,
            },
        }

    async def _infer(
        self, scope: Scope, receive: Receive, send: Send, name: str, version: str | None,
        app: AppIdentity,
    ) -> None:
        request_id = _next_request_id()
        # Every log line from here on carries it (node.logs); the app gets it back in a header
        # to find its audit entry (errors too: OipApp.__call__).
        logs.request_id.set(request_id)
        trace.accept(header(scope, b"traceparent"))  # W3C trace context, carried on forwards
        client = scope.get("client")
        log.debug("infer %s:%s from %s as app %s", name, version or "latest",
                  client[0] if client else "-", app.name)
        call = Call(model=name, version=version, body=b"", header_length=None,
                    caller=f"app:{app.name}", hops=0, request_id=request_id, app=app,
                    source=_source(scope, (scope.get("extensions") or {}).get(UID_KEY)))
        started = time.perf_counter()
        try:
            if not self.state.ready:
                raise HTTPError(503, "node is not ready (starting or draining); retry shortly",
                                [(b"retry-after", b"1")])
            call.body = await read_body(scope, receive, self.state.max_body_bytes)
            raw_len = header(scope, _HDR_LEN)
            if raw_len is not None:
                try:
                    call.header_length = int(raw_len)
                except ValueError:
                    raise HTTPError(400, "Inference-Header-Content-Length is not an integer") from None
            with otel.request_span(**{"outpost.model": name, "outpost.version": version,
                                      "outpost.request_id": request_id}):
                answer = await self.router.infer(call)
        except HTTPError as exc:
            # Every refusal is on the trail like a served request (rate-limited per caller).
            await self.router.refused(call, exc)
            outcome = "denied" if exc.status == 403 else "failure"
            route = {403: "denied", 503: "unavailable"}.get(exc.status)
            # 404: a name no node serves comes from the app; never a label value of its own
            label = (UNKNOWN_MODEL, "") if exc.status == 404 else (name, version or "latest")
            self.metrics.finished(*label, outcome, None, route)
            raise
        # success is counted where the model ran (Metrics.answered); a forward here
        forwarded = answer.route == "forwarded"
        self.metrics.finished(name, answer.version or version or "latest",
                              "forwarded" if forwarded else None,
                              time.perf_counter() - started, answer.route)
        rid_header = (REQUEST_ID_HEADER, request_id.encode())
        if answer.header_length is None:
            headers = [JSON_TYPE, rid_header]
        else:
            headers = [_BINARY_TYPE, (_HDR_LEN, str(answer.header_length).encode()), rid_header]
        await send_response(send, 200, answer.body, headers)


_REQUEST_PREFIX = os.urandom(8).hex()
_request_count = itertools.count()


def _next_request_id() -> str:
    """Unique per request across restarts: 64 random bits per process, then a counter (no
    syscall per request: ``os.urandom`` would let another thread take the GIL each time)."""
    return f"{_REQUEST_PREFIX}{next(_request_count):016x}"


def _source(scope: Scope, uid: int | None) -> str:
    """Where a request came from: ``uid:N`` on the app socket, else the peer address."""
    if uid is not None:
        return f"uid:{uid}"
    client = scope.get("client")
    return str(client[0]) if client else "?"


def _expect(method: str, wanted: str, path: str) -> None:
    if method != wanted:
        raise HTTPError(405, f"{method} is not allowed on {path}; use {wanted}")
