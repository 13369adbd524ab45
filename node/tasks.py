"""The one owner of the daemon's background tasks.

Owns: every task the daemon runs beside its servers — loops that live as long as the daemon
(the audit ticker, replication) and one-shot work spawned by components (a document that
arrived by gossip, an equivocation to record). Components get :meth:`TaskOwner.spawn` (the
:class:`node.ports.Spawner` seam), never the event loop.

Shutdown (:meth:`TaskOwner.close`) lets one-shot work finish for a bounded time, then
cancels everything and waits for the cancellations, again bounded: it always returns.

Must never: let a task's exception pass silently (each is logged) or take down its siblings
(unlike a bare ``asyncio.TaskGroup``, one failed document must not stop the daemon).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from node.limits import BACKGROUND_DRAIN_S, TASK_CANCEL_S

log = logging.getLogger("outpost.tasks")


class TaskOwner:
    def __init__(self) -> None:
        self._oneshot: set[asyncio.Task[Any]] = set()
        self._loops: set[asyncio.Task[Any]] = set()
        self._closing = False

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str = "background") -> None:
        """Run one-shot work in the background: kept referenced, its error logged."""
        if self._closing:
            coro.close()
            log.warning("%s not started: the daemon is stopping", name)
            return
        self._track(asyncio.create_task(coro, name=name), self._oneshot)

    def every(self, interval_s: float, step: Callable[[], Awaitable[Any]], name: str) -> None:
        """Run ``step`` every ``interval_s`` until close; a failed step is logged, the loop
        goes on."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(interval_s)
                try:
                    await step()
                except Exception:
                    log.exception("%s failed", name)

        self._track(asyncio.create_task(loop(), name=name), self._loops)

    def _track(self, task: asyncio.Task[Any], into: set[asyncio.Task[Any]]) -> None:
        into.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            into.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("task %s failed: %s", t.get_name(), t.exception())

        task.add_done_callback(done)

    @property
    def running(self) -> int:
        return len(self._oneshot) + len(self._loops)

    async def close(self, drain_s: float = BACKGROUND_DRAIN_S,
                    cancel_s: float = TASK_CANCEL_S) -> None:
        """Let one-shot work finish (``drain_s`` at most), then cancel the rest and wait
        ``cancel_s`` at most for it to go."""
        self._closing = True
        if self._oneshot:
            await asyncio.wait(set(self._oneshot), timeout=drain_s)
        left = self._oneshot | self._loops
        for task in left:
            task.cancel()
        if left:
            _, pending = await asyncio.wait(left, timeout=cancel_s)
            for task in pending:
                log.error("task %s ignored cancellation for %.0f s; leaving it", task.get_name(),
                          cancel_s)
