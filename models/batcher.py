"""Dynamic micro-batching on worker threads, one per model version by default.

Owns the bounded request queue, the worker threads, how requests are grouped into one
run, how outputs are split back, and how results cross back to the event loop. It knows
nothing about onnxruntime: it calls a ``run(feed) -> outputs`` function, so any backend
that can run a feed dict synchronously (in-process session, a remote actor call) can put
it behind the same queue. Runs a model on the event loop thread only in inline mode
(``set_inline``: the backend measured the model's run as shorter than the hand-off to a
worker and back), and then only jobs small enough to keep the loop's stall that short;
never lets one failing request or observer stop a worker.

One worker suits an in-process session (one run at a time keeps the cores for other
models). A backend whose ``run`` is a remote call asks for more (``workers``, ``resize``):
each worker takes its own batch, so that many runs are in flight at once — one per
remote replica slot — and batches form from what queues while they are all busy.

Theory of operation::

    event loop thread                         worker thread
    -----------------                         -------------
    submit(inputs)                            wait until queue non-empty or closing
      closed?        -> ModelUnavailable      take the head job, then every following
      depth >= max   -> Overloaded              compatible job (same input dtypes and
      append job (lock-free deque)              non-batch dims) up to max_batch_size rows,
      a worker asleep? one kick (notify) per    waiting up to max_batch_delay for more
        loop iteration, so what one iteration
        queued becomes one batch
      return future
                                              run once (concatenated along axis 0),
    future resolved  <- call_soon_threadsafe    split outputs back by row counts
                                              on error: rerun each job alone, so one bad
                                                request fails only itself
    close()                                   closing and queue empty -> thread exits
      stop accepting, notify, join

Inline mode: ``submit`` puts small jobs on a second queue that the loop drains itself, once
per loop iteration (at once for a request alone), with the same batching and the same
one-bad-request-fails-alone rule; larger jobs still go to the worker.

``queue_depth`` counts jobs accepted and not yet answered (queued + running); it is what
``max_queue`` bounds and what placement reads.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from models.errors import InferenceFailed, ModelError, ModelUnavailable, Overloaded

__all__ = ["Batcher", "Observer", "RunFn"]

log = logging.getLogger(__name__)

Tensor = np.ndarray[Any, Any]
Outputs = dict[str, Tensor]
RunFn = Callable[[dict[str, Tensor]], Outputs]
"""Runs one feed synchronously on the worker thread and returns every output."""
Observer = Callable[[str, str, int, float], None]
"""``(name, version, batch_size, seconds)`` after every run, on the worker thread: keep it
quick and thread-safe. ``batch_size`` counts requests in the run, not rows."""


class _Job:
    __slots__ = ("future", "inputs", "key", "loop", "rows")

    def __init__(self, inputs: dict[str, Tensor], future: asyncio.Future[Outputs]) -> None:
        self.inputs = inputs
        self.future = future
        self.loop = future.get_loop()
        # Filled in by the worker, off the event loop.
        self.key: tuple[object, ...] | None = None
        self.rows = 0


class Batcher:
    """A bounded queue in front of ``run`` with one worker thread that batches."""

    def __init__(
        self,
        run: RunFn,
        *,
        name: str,
        version: str,
        batchable: bool,
        max_batch_size: int,
        max_batch_delay_s: float,
        max_queue: int,
        retry_after_s: float,
        observer: Observer | None = None,
        workers: int = 1,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._run = run
        self._name, self._version = name, version
        self._batchable = batchable and max_batch_size > 1
        self._max_rows = max_batch_size
        self._delay = max_batch_delay_s
        self._max_queue = max_queue
        self._retry_after = retry_after_s
        self._observer = observer
        self._cond = threading.Condition()
        self._queue: collections.deque[_Job] = collections.deque()
        self._accepted = 0  # jobs queued (the loop's thread writes it)
        self._finished = 0  # jobs answered or dropped as cancelled (workers, under the lock)
        self._waiting = 0  # workers asleep on the condition (under the lock)
        self._kick_due = False  # a wake-up is scheduled on the loop
        self._closing = False
        self._wanted = 0  # worker threads asked for; extra ones exit after their run
        self._threads: list[threading.Thread] = []
        # Inline mode (``set_inline``): jobs small enough run on the event loop, batched per
        # loop iteration exactly as the worker batches; bigger ones still go to the worker.
        self._inline_max_elements = 0  # 0 = inline off
        self._inline_jobs: collections.deque[_Job] = collections.deque()
        self._inline_due = False
        self.resize(workers)
        self._thread = self._threads[0]

    @property
    def workers(self) -> int:
        """Worker threads asked for (runs that may be in flight at once)."""
        return self._wanted

    def resize(self, workers: int) -> None:
        """Allow ``workers`` runs in flight at once: starts threads now; surplus threads
        finish the run they are in, then exit. Callable from any thread, a worker too."""
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        with self._cond:
            if self._closing:
                return
            self._wanted = workers
            for _ in range(workers - len(self._threads)):
                thread = threading.Thread(
                    target=self._work,
                    name=f"outpost-model-{self._name}:{self._version}",
                    daemon=True,
                )
                self._threads.append(thread)
                thread.start()
            self._cond.notify_all()  # surplus idle workers wake up and exit

    def set_inline(self, max_elements: int) -> None:
        """Run jobs of at most ``max_elements`` input elements on the event loop (0: never).
        For models whose run is shorter than the hand-off to a worker and back."""
        self._inline_max_elements = max(0, max_elements)

    @property
    def inline(self) -> bool:
        return self._inline_max_elements > 0

    @property
    def queue_depth(self) -> int:
        return self._accepted - self._finished

    @property
    def closed(self) -> bool:
        return self._closing

    def submit(self, inputs: dict[str, Tensor], *, alone: bool = False) -> asyncio.Future[Outputs]:
        """Queue one request; the future resolves on the caller's loop with its outputs.
        ``alone``: the caller knows no other request is in flight, so there is nothing to
        batch with: wake a sleeping worker now instead of at the end of the loop iteration."""
        loop = asyncio.get_running_loop()
        if self._closing:
            raise ModelUnavailable(
                f"model {self._name}:{self._version} is closed; load it again to serve it"
            )
        depth = self._accepted - self._finished
        if depth >= self._max_queue:
            raise Overloaded(
                f"model {self._name}:{self._version} has {depth} requests pending "
                f"(limit runtime.max_queue = {self._max_queue}); retry after "
                f"{self._retry_after:g} s or send it to another node",
                retry_after=self._retry_after,
            )
        future: asyncio.Future[Outputs] = loop.create_future()
        if self._inline_max_elements and (
            sum(a.size for a in inputs.values()) <= self._inline_max_elements
        ):
            self._inline_jobs.append(_Job(inputs, future))
            self._accepted += 1
            if alone:
                self._drain_inline()
            elif not self._inline_due:
                self._inline_due = True
                loop.call_soon(self._drain_inline)
            return future
        self._queue.append(_Job(inputs, future))  # deque: safe against the workers' pops
        self._accepted += 1
        # Read after the append (a worker announces itself before it checks the queue), so
        # no job is left behind. One wake-up per loop iteration, however many requests the
        # iteration queued: the worker then takes them as one batch.
        if self._waiting:
            if alone:
                self._kick()
            elif not self._kick_due:
                self._kick_due = True
                loop.call_soon(self._kick)
        return future

    def _kick(self) -> None:
        self._kick_due = False  # a scheduled kick that finds the worker awake does no harm
        with self._cond:
            self._cond.notify()

    def _drain_inline(self) -> None:
        """On the event loop: run what this loop iteration queued inline, in batches."""
        self._inline_due = False
        while self._inline_jobs:
            with self._cond:
                batch = self._take(self._inline_jobs, wait=False)
            if not batch:
                continue
            results = self._execute(batch)
            with self._cond:
                self._finished += len(batch)
            _resolve([(job.future, self._as_model_error(r) if isinstance(r, BaseException)
                       else r) for job, r in zip(batch, results, strict=True)])

    async def close(self) -> None:
        """Stop accepting, let the workers finish every queued request, join them."""
        self._drain_inline()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            threads = list(self._threads)
        for thread in threads:
            await asyncio.to_thread(thread.join)

    # -- worker thread ------------------------------------------------------------------

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                while not self._queue and not self._closing and not self._surplus(me):
                    self._sleep(None)
                if self._surplus(me) or not self._queue:
                    self._threads.remove(me)
                    if self._queue:  # hand the queue to a remaining worker
                        self._cond.notify()
                    return  # resized down, or closing and drained
                batch = self._take(self._queue, wait=True)
                if self._queue and self._waiting:
                    self._cond.notify()  # more than one batch queued: share with a sleeper
            if batch:  # empty when every queued job had been cancelled
                self._deliver(batch, self._execute(batch))

    def _sleep(self, timeout: float | None) -> None:
        """Under the lock: wait for a submit's kick (announced first, then re-checked)."""
        self._waiting += 1
        try:
            if not self._queue:
                self._cond.wait(timeout)
        finally:
            self._waiting -= 1

    def _surplus(self, me: threading.Thread) -> bool:
        """Under the lock: more workers run than asked for, and ``me`` is one too many."""
        return not self._closing and self._threads.index(me) >= self._wanted

    def _take(self, queue: collections.deque[_Job], *, wait: bool) -> list[_Job]:
        """Under the lock: the next batch from ``queue`` (empty when only cancelled jobs
        were queued); ``wait``: may sleep up to max_batch_delay for more (worker only)."""
        first = self._pop_live(queue)
        if first is None:
            return []
        batch = [first]
        if not self._batchable or not self._prepare(first):
            return batch
        rows = first.rows
        deadline: float | None = None
        while rows < self._max_rows:
            while queue and rows < self._max_rows:
                job = queue[0]
                if job.future.cancelled():
                    queue.popleft()
                    self._finished += 1
                    continue
                if (
                    not self._prepare(job)
                    or job.key != first.key
                    or rows + job.rows > self._max_rows
                ):
                    return batch  # keep FIFO order: the next batch starts with this job
                queue.popleft()
                batch.append(job)
                rows += job.rows
            if not wait or self._delay <= 0 or self._closing or rows >= self._max_rows:
                break
            now = time.monotonic()
            if deadline is None:
                deadline = now + self._delay
            if now >= deadline:
                break
            self._sleep(deadline - now)
        return batch

    def _pop_live(self, queue: collections.deque[_Job]) -> _Job | None:
        while queue:
            job = queue.popleft()
            if not job.future.cancelled():  # the caller went away: do not run it
                return job
            self._finished += 1
        return None

    @staticmethod
    def _prepare(job: _Job) -> bool:
        """Compute the job's batching key; False if it cannot share a run."""
        if job.key is None:
            arrays = list(job.inputs.values())
            if not arrays or any(a.ndim == 0 for a in arrays):
                job.key = ("alone",)
                return False
            rows = arrays[0].shape[0]
            if any(a.shape[0] != rows for a in arrays):
                job.key = ("alone",)
                return False
            job.rows = rows
            job.key = tuple(
                (name, a.dtype.str, a.shape[1:]) for name, a in sorted(job.inputs.items())
            )
        return job.key != ("alone",)

    def _execute(self, batch: list[_Job]) -> list[Outputs | BaseException]:
        if len(batch) == 1:
            return [self._run_timed(batch[0].inputs, 1)]
        names = list(batch[0].inputs)
        feed = {n: np.concatenate([job.inputs[n] for job in batch]) for n in names}
        merged = self._run_timed(feed, len(batch))
        if not isinstance(merged, BaseException):
            split = self._split(merged, batch)
            if split is not None:
                return split
        # A failed or unsplittable batch: run each request alone so only the bad one fails.
        return [self._run_timed(job.inputs, 1) for job in batch]

    def _run_timed(self, feed: dict[str, Tensor], requests: int) -> Outputs | BaseException:
        start = time.perf_counter()
        try:
            result: Outputs | BaseException = self._run(feed)
        except Exception as exc:
            result = exc
        elapsed = time.perf_counter() - start
        if self._observer is not None:
            try:
                self._observer(self._name, self._version, requests, elapsed)
            except Exception:
                log.exception("inference observer failed for %s:%s", self._name, self._version)
        return result

    @staticmethod
    def _split(outputs: Outputs, batch: list[_Job]) -> list[Outputs | BaseException] | None:
        total = sum(job.rows for job in batch)
        if any(a.ndim == 0 or a.shape[0] != total for a in outputs.values()):
            return None  # outputs do not follow the batch dimension: cannot split
        results: list[Outputs | BaseException] = []
        start = 0
        for job in batch:
            stop = start + job.rows
            results.append({name: a[start:stop] for name, a in outputs.items()})
            start = stop
        return results

    def _deliver(self, batch: list[_Job], results: list[Outputs | BaseException]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Outputs], Any]]] = {}
        for job, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                result = self._as_model_error(result)
            by_loop.setdefault(job.loop, []).append((job.future, result))
        with self._cond:
            self._finished += len(batch)
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting
                loop.call_soon_threadsafe(_resolve, items)

    def _as_model_error(self, exc: BaseException) -> BaseException:
        if isinstance(exc, ModelError):
            return exc
        wrapped = InferenceFailed(
            f"model {self._name}:{self._version} failed to run the request: "
            f"{type(exc).__name__}: {exc}"
        )
        wrapped.__cause__ = exc
        return wrapped


def _resolve(items: list[tuple[asyncio.Future[Outputs], Any]]) -> None:
    for future, result in items:
        if future.done():  # cancelled while running
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
