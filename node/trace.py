"""W3C Trace Context (``traceparent``) carried through a request and across forwards.

Owns parsing and re-issuing the header (https://www.w3.org/TR/trace-context/, version 00):
an app's ``traceparent`` is accepted when well formed (ignored otherwise: a bad header from an
app must not fail its inference), kept in a contextvar for the request's task, put on the
forwarded request with the same trace id and a fresh parent id (this hop), read again by the
executor, and written into the audit entries (``detail.trace``) and JSON log lines
(``trace_id``) of both nodes. Never creates a trace the app did not start, never exports.
"""

from __future__ import annotations

import contextvars
import os
import re
from dataclasses import dataclass

HEADER = "traceparent"
_FORMAT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@dataclass(frozen=True)
class TraceContext:
    trace_id: str
    parent_id: str
    flags: str
    ours: bool = False  # parent_id is a span of this node (node.otel): send it as is

    def header(self) -> str:
        return f"00-{self.trace_id}-{self.parent_id}-{self.flags}"

    def child(self) -> TraceContext:
        """The context for the next hop: same trace, a new parent (span) id for this one."""
        return TraceContext(self.trace_id, os.urandom(8).hex(), self.flags)


current: contextvars.ContextVar[TraceContext | None] = contextvars.ContextVar(
    "outpost_trace", default=None)


def parse(value: bytes | str | None) -> TraceContext | None:
    """A valid version-00 ``traceparent``, or None (absent, malformed, or all-zero ids)."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    match = _FORMAT.match(text.strip().lower())
    if match is None:
        return None
    trace_id, parent_id, flags = match.groups()
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return TraceContext(trace_id, parent_id, flags)


def accept(value: bytes | str | None) -> TraceContext | None:
    """Parse ``value`` and make it the current request's trace."""
    context = parse(value)
    if context is not None:
        current.set(context)
    return context


def trace_id() -> str | None:
    context = current.get()
    return context.trace_id if context is not None else None


def outgoing() -> dict[str, str]:
    """Headers for a forwarded request: the trace with this hop as parent, if there is one."""
    context = current.get()
    if context is None:
        return {}
    return {HEADER: (context if context.ours else context.child()).header()}
