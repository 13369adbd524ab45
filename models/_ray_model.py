"""One model version on Ray: the queue, the pool of replica actors, and the in-process
fallback; plus ``plan_replicas``, the scaling rule. ``RayBackend`` (``models.ray_backend``)
creates these and runs their ``maintain`` from its monitor thread; the theory of operation
is drawn there.

Threads: ``infer`` on the event loop; ``_run`` on the batcher's worker threads; ``start_pool``
on a loading thread; ``maintain`` and ``lost_ray`` on the backend's monitor thread. The
replica lists, ``mode`` and the local session are guarded by ``_lock``; Ray calls are made
outside it. Must never free a Ray handle after a failure (see ``_ray_driver.bury``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.batcher import Batcher
from models.errors import InvalidModel, ModelError, ModelUnavailable
from models.runtime import InputCheck, SessionRunner
from models.signature import ModelSignature, signature_of_session

if TYPE_CHECKING:
    from models.ray_backend import RayBackend, RayConfig

__all__ = ["RayFailure", "RayModel", "plan_replicas"]

log = logging.getLogger("models.ray_backend")

Tensor = np.ndarray[Any, Any]

_PING_TIMEOUT_S = 5.0
_FALLBACK_HEADROOM = 2.0
"""A model runs in-process only if free memory is at least this many times its file size:
a session holds about the weights once more, plus its arena and the requests in flight."""


def plan_replicas(
    *, queued: int, live: int, starting: int, low_since: float | None, now: float,
    config: RayConfig,
) -> tuple[int, float | None]:
    """How many replicas to add (> 0) or remove (< 0) now, and the new ``low_since`` (when
    the queue first became short enough for one replica fewer; None while it is not).

    Wanted = ceil(queued / scale_up_queue), within [min_replicas, max_replicas]. Up at once
    (starting a replica takes seconds, the burst is now); down one at a time, each after
    ``scale_down_after_s`` of a short queue, so a lull between bursts does not throw away
    replicas that the next burst needs.
    """
    have = live + starting
    wanted = min(config.max_replicas, max(config.min_replicas,
                                          math.ceil(queued / config.scale_up_queue)))
    if wanted > have:
        return wanted - have, None
    if wanted < live and starting == 0:
        if low_since is None:
            return 0, now
        if now - low_since >= config.scale_down_after_s:
            return -1, now
        return 0, low_since
    return 0, None


class RayFailure(Exception):
    """Ray (not the model) failed a call: the replica or the connection is gone."""


@dataclass(eq=False)
class _Replica:
    actor: Any
    generation: int
    started: float  # time.monotonic() when created
    ready_ref: Any = None  # info() call, until it answered
    provider: str = ""
    host: str = ""
    inflight: int = 0
    pinged: Any = None


class RayModel:
    """One model version: a queue in front of a pool of Ray actors (or, while Ray is down,
    an in-process session). ``mode`` is "ray", "local" or "unavailable"."""

    def __init__(
        self, backend: RayBackend, name: str, version: str, path: Path, signature: ModelSignature
    ) -> None:
        self.name, self.version = name, version
        self.ref = f"{name}:{version}"
        self._backend = backend
        self._cfg = backend.ray_config
        self._runtime = backend.config
        self._path = path
        self._signature = signature
        self._check = InputCheck(name, version, signature)
        self._lock = threading.Lock()
        self._fallback_lock = threading.Lock()
        self._live: list[_Replica] = []
        self._starting: list[_Replica] = []
        self._model_ref: Any = None  # the model's bytes in the object store
        self._model_gen = -1
        self._low_since: float | None = None
        self._local: SessionRunner | None = None
        self._local_provider = ""
        self.mode = "ray"
        self.reason: str | None = None
        self.since: float | None = None
        self._closed = False
        self._batcher = Batcher(
            self._run,
            name=name,
            version=version,
            batchable=signature.batch_dynamic,
            max_batch_size=self._runtime.max_batch_size,
            max_batch_delay_s=self._runtime.max_batch_delay_ms / 1000.0,
            max_queue=self._runtime.max_queue,
            retry_after_s=self._runtime.retry_after_s,
            observer=backend.observer,
        )

    # -- LoadedModel ------------------------------------------------------------------------

    @property
    def signature(self) -> ModelSignature:
        return self._signature

    @property
    def execution(self) -> dict[str, Any]:
        return {"mode": "ray" if self.mode == "ray" else "worker"}

    @property
    def provider(self) -> str:
        with self._lock:
            if self.mode == "ray":
                for replica in self._live:
                    return replica.provider
                return "starting"
            return self._local_provider if self.mode == "local" else "unavailable"

    @property
    def queue_depth(self) -> int:
        return self._batcher.queue_depth

    @property
    def replicas(self) -> int:
        return len(self._live)

    def infer(self, inputs: dict[str, Tensor], *, alone: bool = False
              ) -> asyncio.Future[dict[str, Tensor]]:
        return self._batcher.submit(self._check(inputs), alone=alone)

    async def close(self) -> None:
        await self._batcher.close()
        self._closed = True
        self._backend.forget(self)
        await asyncio.to_thread(self.discard)

    def describe(self) -> dict[str, Any]:
        with self._lock:
            hosts = sorted({r.host for r in self._live})
            return {
                "model": self.ref,
                "mode": self.mode,
                "replicas": len(self._live),
                "starting": len(self._starting),
                "hosts": hosts,
                "queue_depth": self._batcher.queue_depth,
                "reason": self.reason,
            }

    # -- the run function (batcher worker threads) -----------------------------------------

    def _run(self, feed: dict[str, Tensor]) -> dict[str, Tensor]:
        while True:
            replica = self._checkout()
            if replica is None:
                return self._run_here(feed)
            try:
                result = self._call(replica, feed)
            except RayFailure as exc:
                self._drop(replica, str(exc))
                continue  # the next replica, or in-process when none is left
            finally:
                with self._lock:
                    replica.inflight -= 1
            if isinstance(result, BaseException):
                raise result
            outputs: dict[str, Tensor] = result
            return outputs

    def _checkout(self) -> _Replica | None:
        with self._lock:
            if self.mode != "ray" or not self._live:
                return None
            replica = min(self._live, key=lambda r: r.inflight)
            replica.inflight += 1
            return replica

    def _call(self, replica: _Replica, feed: dict[str, Tensor]) -> Any:
        ray = self._backend.ray
        if replica.generation != self._backend.generation or not ray.is_initialized():
            raise RayFailure("Ray connection lost")
        from models import _ray_driver

        ref = None
        try:
            with _ray_driver.driver().using():
                ref = replica.actor.run.remote(feed)
                result = ray.get(ref, timeout=self._cfg.call_timeout_s)
                ref = None  # released here, never while a reset shuts Ray down
                if isinstance(result, dict):  # arrays may be views of Ray's shared memory
                    result = {k: v if v.flags.owndata else v.copy() for k, v in result.items()}
                return result
        except _ray_driver.RayDown as exc:
            raise RayFailure(str(exc)) from None
        except Exception as exc:  # anything Ray raises: model errors come back as values
            _bury(ref)
            kind = type(exc).__name__
            if kind == "GetTimeoutError":
                raise RayFailure(
                    f"a replica did not answer within {self._cfg.call_timeout_s:g} s "
                    "(ray.call_timeout_s)"
                ) from exc
            raise RayFailure(f"{kind}: {' '.join(str(exc).split())[:200]}") from exc

    def _run_here(self, feed: dict[str, Tensor]) -> dict[str, Tensor]:
        with self._lock:
            runner, mode, reason = self._local, self.mode, self.reason
        if runner is None:
            if mode == "ray":  # no replica left this instant: the pool was just emptied
                self.go_local(reason or "no Ray replica is alive")
                with self._lock:
                    runner, reason = self._local, self.reason
            if runner is None:
                raise ModelUnavailable(
                    f"model {self.ref} cannot run: {reason}; retry later or send the request "
                    "to another node"
                )
        return runner(feed)

    # -- modes ------------------------------------------------------------------------------

    def go_local(self, reason: str) -> None:
        """Serve in-process from now on (if the model fits here), recording why."""
        with self._fallback_lock:  # workers failing together open one session, not several
            self._go_local(reason)

    def _go_local(self, reason: str) -> None:
        with self._lock:
            if self._closed:
                return
            if self.mode != "ray" and self._local is not None:
                return  # already in-process; keep the first reason, it is the telling one
            first = self.mode == "ray"
        size = self._path.stat().st_size if self._path.exists() else 0
        fits, why = _fits_here(size, self._cfg.fallback)
        runner: SessionRunner | None = None
        provider = ""
        if fits:
            session, provider = self._backend.local._open(self.name, self.version, self._path)
            actual = signature_of_session(session)
            if actual != self._signature:
                raise InvalidModel(
                    f"model {self.ref} ({self._path}) has signature {actual.to_json()} but its "
                    f"manifest says {self._signature.to_json()}; add the model again"
                )
            runner = SessionRunner(session, self._signature)
        with self._lock:
            self._local, self._local_provider = runner, provider
            self.mode = "local" if runner is not None else "unavailable"
            self.reason = reason if runner is not None else f"{reason}; {why}"
            if first:
                self.since = time.time()
        self._batcher.resize(1)
        if first:
            log.warning("model %s runs %s: %s", self.ref,
                        "in-process" if runner else "nowhere", self.reason)

    def lost_ray(self, reason: str) -> None:
        """Ray is gone: every replica handle is dead (and must not be freed: ``bury``)."""
        with self._lock:
            dead = [*self._live, *self._starting]
            _bury(*(h for r in dead for h in (r.actor, r.ready_ref, r.pinged)), self._model_ref)
            self._live, self._starting = [], []
            self._model_ref = None
            in_ray = self.mode == "ray"
        if in_ray:
            self.go_local(reason)

    def _drop(self, replica: _Replica, reason: str) -> None:
        with self._lock:
            if replica in self._live:
                self._live.remove(replica)
                log.warning("model %s: replica on %s dropped (%s); %d left", self.ref,
                            replica.host or "?", reason, len(self._live))
            empty = not self._live
            workers = max(1, len(self._live) * self._cfg.inflight_per_replica)
        self._kill(replica)
        if empty:
            self.go_local(f"no Ray replica left ({reason})")
        elif self.mode == "ray":
            self._batcher.resize(workers)

    def _back_on_ray(self) -> None:
        with self._lock:
            if self.mode == "ray" or not self._live:
                return
            self.mode, self.reason, self.since = "ray", None, None
            self._local, self._local_provider = None, ""  # frees the in-process session
            workers = len(self._live) * self._cfg.inflight_per_replica
        log.info("model %s back on Ray (%d replica(s))", self.ref, len(self._live))
        self._batcher.resize(workers)

    # -- the pool (worker thread at load, monitor thread after) ----------------------------

    def start_pool(self, *, wait: bool) -> None:
        """Start min_replicas replicas; with ``wait``, block until the first is ready
        (raising InvalidModel if the model does not load there, RayFailure otherwise)."""
        with self._lock:
            missing = self._cfg.min_replicas - len(self._live) - len(self._starting)
        started = [self._spawn() for _ in range(missing)]
        if not wait or not started:
            return
        ray = self._backend.ray
        try:
            ready, _ = ray.wait([r.ready_ref for r in started], num_returns=1,
                                timeout=self._cfg.replica_start_timeout_s)
        except Exception as exc:
            raise RayFailure(f"starting a replica failed: {exc}") from exc
        if not ready:
            raise RayFailure(self._start_timeout_reason())
        self._settle(next(r for r in started if r.ready_ref == ready[0]))

    def _spawn(self) -> _Replica:
        from models import _ray_driver  # noqa: F401  (auto-connect off before the import)
        from models._ray_replica import Replica

        ray = self._backend.ray
        generation = self._backend.generation
        try:
            if self._model_ref is None or self._model_gen != generation:
                _bury(self._model_ref)  # of a dead connection, if any: never free it
                self._model_ref = ray.put(self._path.read_bytes())
                self._model_gen = generation
            gpus = self._cfg.num_gpus_per_replica if self._backend.use_gpus else 0
            runtime = dataclasses.replace(
                self._runtime, intra_op_threads=max(1, int(self._cfg.num_cpus_per_replica))
            )
            actor = Replica.options(  # type: ignore[attr-defined]
                num_cpus=self._cfg.num_cpus_per_replica,
                num_gpus=gpus,
                scheduling_strategy="SPREAD",  # replicas of a model on different machines
                max_restarts=0,  # the monitor replaces dead replicas itself
            ).remote(self.name, self.version, self._model_ref, self._signature, runtime,
                     gpus > 0)
            replica = _Replica(actor, generation, time.monotonic())
            replica.ready_ref = actor.info.remote()
        except Exception as exc:
            raise RayFailure(f"cannot create a replica: {exc}") from exc
        with self._lock:
            self._starting.append(replica)
        return replica

    def _settle(self, replica: _Replica) -> None:
        """A starting replica answered info(): make it live, or raise why it cannot be."""
        ray = self._backend.ray
        with self._lock:
            if replica in self._starting:
                self._starting.remove(replica)
        try:
            info = ray.get(replica.ready_ref, timeout=_PING_TIMEOUT_S)
        except Exception as exc:
            self._kill(replica)
            raise RayFailure(f"a replica died while starting: {type(exc).__name__}") from exc
        if isinstance(info, ModelError):
            self._kill(replica)
            raise info
        replica.ready_ref = None
        replica.provider, replica.host = info["provider"], info["host"]
        with self._lock:
            if self._closed:
                live = False
            else:
                self._live.append(replica)
                live = True
                workers = len(self._live) * self._cfg.inflight_per_replica
                in_ray = self.mode == "ray"
        if not live:
            self._kill(replica)
            return
        log.info("model %s: replica up on host %s (%s), %d live", self.ref, replica.host,
                 replica.provider, len(self._live))
        if in_ray:
            self._batcher.resize(workers)
        else:
            self._back_on_ray()

    def maintain(self, now: float, *, ping: bool) -> None:
        """Monitor tick: settle started replicas, give up on stuck ones, scale, ping."""
        if self._closed:
            return
        ray = self._backend.ray
        with self._lock:
            starting = [r for r in self._starting if r.generation == self._backend.generation]
        if starting:
            ready, _ = ray.wait([r.ready_ref for r in starting], num_returns=len(starting),
                                timeout=0)
            for replica in starting:
                if replica.ready_ref in ready:
                    try:
                        self._settle(replica)
                    except (ModelError, RayFailure) as exc:
                        log.warning("model %s: a replica failed to start: %s", self.ref, exc)
                elif now - replica.started > self._cfg.replica_start_timeout_s:
                    with self._lock:
                        if replica in self._starting:
                            self._starting.remove(replica)
                    self._kill(replica)
                    reason = self._start_timeout_reason()
                    log.warning("model %s: %s", self.ref, reason)
                    if not self._live:  # nothing works: maybe the cluster, not capacity
                        self._backend.suspect(reason)
                        return
        if ping:
            self._ping()
        with self._lock:
            live, pending = len(self._live), len(self._starting)
        delta, self._low_since = plan_replicas(
            queued=self._batcher.queue_depth, live=live, starting=pending,
            low_since=self._low_since, now=now, config=self._cfg,
        )
        if delta > 0:
            for _ in range(delta):
                try:
                    self._spawn()
                except RayFailure as exc:
                    log.warning("model %s: %s", self.ref, exc)
                    break
        elif delta < 0:
            self._retire_one()

    def _retire_one(self) -> None:
        with self._lock:
            idle = [r for r in self._live if r.inflight == 0]
            if len(self._live) <= self._cfg.min_replicas or not idle:
                return
            replica = idle[-1]
            self._live.remove(replica)
            workers = len(self._live) * self._cfg.inflight_per_replica
        self._batcher.resize(max(1, workers))
        log.info("model %s: scaled down to %d replica(s)", self.ref, len(self._live))
        self._kill(replica, failed=False)

    def _ping(self) -> None:
        ray = self._backend.ray
        with self._lock:
            live = list(self._live)
        refs = {}
        for replica in live:
            try:
                refs[replica] = replica.pinged = replica.actor.ping.remote()
            except Exception as exc:
                self._drop(replica, f"ping not sent: {type(exc).__name__}")
        if not refs:
            return
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=_PING_TIMEOUT_S)
        for replica, ref in refs.items():
            if ref in ready:  # answered: alive, or an error (dead)
                try:
                    ray.get(ref)
                except Exception as exc:
                    self._drop(replica, f"{type(exc).__name__} on ping")
                    continue
                replica.pinged = None

    def _start_timeout_reason(self) -> str:
        free = (self._backend.cluster or {}).get("free_cpus", "?")
        return (
            f"no replica of {self.ref} started within {self._cfg.replica_start_timeout_s:g} s "
            f"(each needs {self._cfg.num_cpus_per_replica:g} CPU; the cluster has {free} free): "
            "lower ray.num_cpus_per_replica or add capacity"
        )

    def _kill(self, replica: _Replica, *, failed: bool = True) -> None:
        """Stop a replica we no longer use. After a failure its handles are buried, never
        freed: the failure may be a shutdown under way, which freeing them could race."""
        ray = self._backend.ray
        if replica.generation == self._backend.generation and ray.is_initialized():
            with contextlib.suppress(Exception):
                ray.kill(replica.actor, no_restart=True)
        if failed:
            _bury(replica.actor, replica.ready_ref, replica.pinged)

    def discard(self) -> None:
        """Kill every replica and free the model's bytes in the object store."""
        with self._lock:
            self._closed = True
            replicas = self._live + self._starting
            self._live, self._starting = [], []
            if self._model_gen != self._backend.generation:
                _bury(self._model_ref)  # from a dead connection: never free it
            self._model_ref = None
            self._local = None
        for replica in replicas:
            self._kill(replica, failed=replica.generation != self._backend.generation)


def _bury(*handles: Any) -> None:
    from models import _ray_driver

    _ray_driver.bury(*handles)


def _fits_here(size: int, allowed: bool) -> tuple[bool, str]:
    if not allowed:
        return False, "in-process fallback is off (ray.fallback = false)"
    import psutil

    free = psutil.virtual_memory().available
    if size * _FALLBACK_HEADROOM > free:
        return False, (
            f"the model ({size / 2**20:.0f} MiB) does not fit in this machine's free memory "
            f"({free / 2**20:.0f} MiB) to run in-process"
        )
    return True, ""
