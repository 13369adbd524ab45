"""OpenTelemetry spans over OTLP/HTTP, when the ``otel`` extra is installed and
``[otel] endpoint`` is set.

Owns the tracer and the span names. One span per app request (``outpost.infer``), a child of
the app's ``traceparent`` when it sent one (node.trace), with children for the stages:
``decode`` (OIP body to tensors), ``policy`` (the infer decision), ``run`` (queue and model
run), ``audit`` (until the entry is durable) and ``forward`` (the hop to a peer, whose own
spans continue the same trace through the ``traceparent`` it receives).

With no endpoint configured nothing from opentelemetry is imported and :func:`span` is a
shared no-op context: the inference path pays one global read per stage. Never raises into a
request: exporting happens on the SDK's background thread.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from node import trace

log = logging.getLogger("outpost.otel")

_tracer: Any = None
_provider: Any = None
_NOOP = contextlib.nullcontext()


def setup(endpoint: str, service_name: str, node_id: str) -> None:
    """Export spans to ``endpoint`` (OTLP/HTTP, e.g. http://collector:4318/v1/traces)."""
    global _tracer, _provider
    from models.extras import require

    require("opentelemetry.sdk", f"[otel] endpoint = {endpoint!r}")
    require("opentelemetry.exporter.otlp.proto.http", f"[otel] endpoint = {endpoint!r}")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create(
        {"service.name": service_name, "service.instance.id": node_id}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    _provider, _tracer = provider, provider.get_tracer("outpost")
    log.info("OpenTelemetry: exporting spans to %s", endpoint)


def shutdown() -> None:
    """Flush what is buffered (bounded by the SDK's export timeout) and stop exporting."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


def enabled() -> bool:
    return _tracer is not None


def request_span(**attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """The root span of one app request, child of the app's traceparent if any."""
    if _tracer is None:
        return _NOOP
    from opentelemetry import trace as ot

    parent = None
    incoming = trace.current.get()
    if incoming is not None:
        remote = ot.SpanContext(int(incoming.trace_id, 16), int(incoming.parent_id, 16),
                                is_remote=True,
                                trace_flags=ot.TraceFlags(int(incoming.flags, 16)))
        parent = ot.set_span_in_context(ot.NonRecordingSpan(remote))
    return _started(_tracer.start_as_current_span(
        "outpost.infer", context=parent, kind=ot.SpanKind.SERVER,
        attributes={k: v for k, v in attributes.items() if v is not None}))


@contextlib.contextmanager
def _started(manager: Any) -> Iterator[Any]:
    with manager as span:
        # From here, forwards carry this trace (node.trace.outgoing) even if the app sent none.
        ctx = span.get_span_context()
        token = trace.current.set(trace.TraceContext(
            f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}", f"{int(ctx.trace_flags):02x}"))
        try:
            yield span
        finally:
            trace.current.reset(token)


def span(name: str) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current request (a no-op when exporting is off)."""
    if _tracer is None:
        return _NOOP
    return _stage(name)


@contextlib.contextmanager
def _stage(name: str) -> Iterator[Any]:
    with _tracer.start_as_current_span(name) as current:
        if name == "forward":  # the hop's traceparent names this span as its parent
            ctx = current.get_span_context()
            token = trace.current.set(trace.TraceContext(
                f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}", f"{int(ctx.trace_flags):02x}",
                ours=True))
            try:
                yield current
            finally:
                trace.current.reset(token)
        else:
            yield current
