"""Refused, denied and malformed inference requests on the audit trail, at a bounded cost.

Owns the ``infer`` entries of requests that never ran a model: a body too large or not
decodable, an unknown model, a bad header, a capacity refusal, a policy denial. Each is
recorded like a served request (kind ``infer``, its ``outcome`` and ``reason``, the HTTP
status in ``detail``), on whichever node decided: the entry node for what it refused, the
executor of a forward for what it refused.

Why a rate limit. A served request costs a model run, so its entry is cheap in comparison; a
refusal costs the sender nothing, and one entry each would let a flood of garbage turn into
an audit-write flood (disk, fsyncs, log size) — an amplification. So each source (the app's
address, or the forwarding peer's node id) has a token bucket of ``REFUSAL_ENTRIES_PER_S``
(burst ``REFUSAL_BURST``). Within it every refusal gets its own entry, written before the
answer like every other entry. Beyond it refusals are counted per (outcome, status, model)
and written as one entry with ``detail.aggregated = N`` (the count) once per
``REFUSAL_AGGREGATE_S``: every decision is still on the trail, counted rather than itemised,
and a flood costs a few entries a second whatever its rate.

Must never: decide anything (callers pass what they decided), or hold a request's payload
(only its SHA-256, as served entries do).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from node import limits

log = logging.getLogger("outpost.trail")

_MAX_KEYS_PER_SOURCE = 16  # aggregate buckets per source; the rest share one "other" key


@dataclass
class _Source:
    tokens: float
    at: float
    counts: dict[tuple[str, str, str, int, str, str], list[Any]] = field(default_factory=dict)
    window_start: float = 0.0


class RefusalTrail:
    """Rate-limited ``infer`` entries for refusals; one per node."""

    def __init__(self, append: Callable[..., Awaitable[int]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``append(kind, **fields)`` builds, appends and awaits one entry."""
        self._append = append
        self._clock = clock
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self._flush: asyncio.TimerHandle | None = None
        self.written = 0
        self.aggregated = 0

    async def refused(self, source: str, *, kind: str = "infer", status: int, reason: str,
                      model: str | None = None, version: str | None = None,
                      detail: dict[str, Any] | None = None, **fields: Any) -> None:
        """Record one refusal; returns once its entry is durable (or counted for later).

        ``fields`` are the entry's other fields (``outcome`` for ``infer``, ``decision`` and
        ``peer`` for ``forward``, ``data_class``, ``input_sha256``, ``policy_version``)."""
        now = self._clock()
        state = self._source(source, now)
        if state.tokens >= 1.0:
            state.tokens -= 1.0
            self.written += 1
            await self._append(
                kind, model=_clip(model), version=_clip(version), caller=_clip(source),
                reason=reason[:1000], detail={"status": status, **(detail or {})}, **fields,
            )
            return
        verdict = "outcome" if "outcome" in fields else "decision"
        key = (kind, verdict, str(fields.get(verdict)), status, _clip(model) or "",
               str(fields.get("data_class") or ""))
        if key not in state.counts and len(state.counts) >= _MAX_KEYS_PER_SOURCE:
            key = (kind, verdict, "other", 0, "", "mixed")
        if not state.counts:
            state.window_start = now
        slot = state.counts.setdefault(key, [0, reason[:900]])
        slot[0] += 1
        self.aggregated += 1
        self._schedule()

    def _source(self, source: str, now: float) -> _Source:
        state = self._sources.get(source)
        if state is None:
            if len(self._sources) >= limits.MAX_REFUSAL_SOURCES:
                old_name, old = self._sources.popitem(last=False)
                self._write_aggregates(old_name, old, now)
            state = _Source(tokens=float(limits.REFUSAL_BURST), at=now)
            self._sources[source] = state
        else:
            self._sources.move_to_end(source)
            state.tokens = min(float(limits.REFUSAL_BURST),
                               state.tokens + (now - state.at) * limits.REFUSAL_ENTRIES_PER_S)
            state.at = now
        return state

    def _schedule(self) -> None:
        if self._flush is None:
            loop = asyncio.get_running_loop()
            self._flush = loop.call_later(limits.REFUSAL_AGGREGATE_S, self.flush)

    def flush(self, *, force: bool = False) -> None:
        """Write the aggregate entries whose window has passed (all of them when ``force``)."""
        self._flush = None
        now = self._clock()
        waiting = False
        for name, state in self._sources.items():
            if not state.counts:
                continue
            if force or now - state.window_start >= limits.REFUSAL_AGGREGATE_S * 0.99:
                self._write_aggregates(name, state, now)
            else:
                waiting = True
        if waiting:
            self._schedule()

    def _write_aggregates(self, source: str, state: _Source, now: float) -> None:
        counts, state.counts = state.counts, {}
        window = round(now - state.window_start, 3)
        for (kind, verdict, value, status, model, data_class), (count, reason) in counts.items():
            entry = self._append(
                kind, model=model or None, caller=_clip(source), **{verdict: value},
                data_class=data_class or None,
                reason=f"{count} refusals over the rate limit, e.g.: {reason}"[:1000],
                detail={"status": status, "aggregated": count, "window_s": str(window)},
            )
            future = asyncio.ensure_future(entry)
            future.add_done_callback(_log_failure)


def _clip(value: str | None) -> str | None:
    return None if value is None else value[:200]


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("aggregate refusal entry not recorded: %s", future.exception())


__all__ = ["RefusalTrail"]
