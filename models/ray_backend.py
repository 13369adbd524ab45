"""The Ray backend: each model version served by a pool of Ray actors, with an in-process
fallback for when Ray is not there.

Owns ``RayConfig`` (the node config's ``[ray]`` section), ``RayBackend`` and ``RayModel``
— the same ``Backend``/``LoadedModel`` seam as ``OrtBackend``, so the daemon's endpoint,
forwarding, audit trail and metrics do not know which one runs — and ``create_backend``,
which picks one from the config. Must never import ``ray`` unless ``[ray] address`` is set
(the daemon's idle budget is 150 MB without Ray; ``import ray`` alone is ~70 MB), and never
block the event loop on Ray: every Ray call runs on a worker thread.

Theory of operation::

    request ─► RayModel.infer ─► InputCheck ─► Batcher (bounded queue: Overloaded,
               micro-batching, N worker threads)
                                                  │ run(feed), on a worker thread
                      ┌───────────────────────────┴──────────────────────┐
               mode "ray": least-busy live replica            mode "local": in-process
               actor.run.remote(feed) + ray.get               session (SessionRunner)
               Ray raised? drop the replica, try the next;    mode "unavailable": the model
               none left ─► mode "local" (degraded)           does not fit here ─► 503

    monitor thread (one per backend, every 0.25 s)
      connection gone?     ─► every model to "local", degraded, reason recorded
      every 5 s            ─► GCS port answers? no ─► as above, and reset the connection;
                              yes ─► cache cluster resources, ping replicas (dead: dropped)
      down, retry due?     ─► (reset,) connect every ray.reconnect_interval_s, start replicas
      replicas starting    ─► first ready ─► model back to "ray"; none ready in
                              ray.replica_start_timeout_s and none live ─► cluster broken:
                              as GCS down
      queue depth          ─► plan_replicas: add up to max_replicas, remove down to min

The connection itself (one per process, whatever the number of backends) is
``models._ray_driver``'s; one model version's pool and fallback is ``models._ray_model``'s.

Batcher workers = live replicas x ``inflight_per_replica`` in mode "ray" (so every replica
has a batch in hand and the next on its way), 1 in mode "local" (like ``OrtBackend``).
A replica runs one batch at a time; batches form from what queues while all are busy.

A request is never lost to a Ray failure: the batch in hand when the replica (or Ray) died
is run again on another replica or in-process. A model error (bad input, ORT failure) is
returned by the replica as a value, so it fails only its request and never the replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models._ray_model import RayFailure, RayModel, plan_replicas
from models._validate import check, check_int, check_num
from models.batcher import Observer
from models.errors import InvalidConfig, InvalidModel, ModelError
from models.names import validate_name, validate_version
from models.runtime import Backend, LoadedModel, OrtBackend, RuntimeConfig
from models.signature import ModelSignature

__all__ = ["RayBackend", "RayConfig", "RayModel", "create_backend", "plan_replicas"]

log = logging.getLogger(__name__)

_SECTION = "ray"  # the node config section (outpost.toml) these settings live in
_TICK_S = 0.25
"""Monitor period: how soon a queue build-up starts a replica and a reconnect is noticed."""
_HEALTH_EVERY_S = 5.0
"""Replica pings and the cluster-resources refresh: GCS round trips, so not every tick."""
_ADDRESS = re.compile(r"^(local|auto|ray://[^\s/:]+:\d{1,5}|[^\s/:]+:\d{1,5})$")


@dataclass(frozen=True)
class RayConfig:
    """Whether and how models run on a Ray cluster instead of in this process."""

    address: str = ""
    """"" (off): models run in-process. "local": start a Ray runtime inside the daemon, for
    one machine (isolation and a path to a cluster, not speed: it is slower than in-process
    here). "auto": join the cluster started on this machine with `ray start`. "ray://HOST:PORT":
    a remote cluster through Ray Client. "HOST:PORT": a cluster's GCS address."""

    num_cpus: int = 0
    """With address "local" only: CPUs the in-process Ray may hand to replicas; 0 = every core.
    Leave some to the daemon's event loop, which still parses and encodes every request."""

    min_replicas: int = 1
    """Actors kept per model version even when idle. Each holds one onnxruntime session (the
    model's weights in memory on its machine); 0 is not allowed: the first request after
    idle would wait seconds for an actor to start."""

    max_replicas: int = 2
    """Most actors per model version. Bounded by the cluster's CPUs (or GPUs) divided by
    num_cpus_per_replica (num_gpus_per_replica): replicas beyond that wait for resources
    and never start."""

    num_cpus_per_replica: float = 1.0
    """CPUs Ray reserves for each actor; its onnxruntime session gets that many intra-op
    threads (at least 1). Fractions pack more replicas per machine."""

    num_gpus_per_replica: float = 1.0
    """GPUs reserved for each actor when the cluster has GPUs (then it runs on CUDA when the
    provider really loads); ignored on a cluster without GPUs. 0: never use GPUs."""

    scale_up_queue: int = 8
    """Requests waiting per replica that start another replica (up to max_replicas). Lower
    reacts to bursts sooner and costs replicas (memory, reserved CPUs) for short spikes."""

    scale_down_after_s: float = 30.0
    """A replica beyond min_replicas is removed once the queue has been short enough for one
    fewer for this long. Shorter frees resources sooner and restarts replicas (seconds
    each) more often under bursty load."""

    inflight_per_replica: int = 2
    """Batches sent to one replica before waiting for its answer. 2 overlaps the transfer of
    the next batch with the run of the current one; more only queues inside the actor,
    where batching can no longer merge requests."""

    call_timeout_s: float = 30.0
    """A replica that takes longer than this to answer one batch is treated as dead: it is
    dropped and the batch runs elsewhere. Must exceed the slowest batch of the largest model."""

    connect_timeout_s: float = 20.0
    """How long loading a model waits for Ray to answer (starting a "local" runtime takes
    ~5 s here) before serving it in-process and retrying in the background."""

    replica_start_timeout_s: float = 60.0
    """A replica that is not ready within this (no free resources, model too large for the
    worker) is given up and counted as a failure."""

    reconnect_interval_s: float = 10.0
    """While Ray is down: how often to try again. Shorter returns to the cluster sooner;
    each attempt against an absent cluster can take up to connect_timeout_s."""

    fallback: bool = True
    """While Ray is down, serve models in-process when they fit in this machine's free
    memory (half of it at most); otherwise requests get 503 so placement sends them to a
    peer. false: always 503 while Ray is down."""

    namespace: str = "outpost"
    """Ray namespace of this node's actors, so nodes sharing a cluster stay apart."""

    ship_code: bool = True
    """For a cluster that is not "local": send the `models` package to the workers with the
    job (runtime_env py_modules), so worker machines need only numpy and onnxruntime."""

    def __post_init__(self) -> None:
        check(_SECTION,
            self.address == "" or bool(_ADDRESS.match(self.address)),
            "address",
            '"" (off), "local", "auto", "ray://HOST:PORT" or "HOST:PORT"',
            self.address,
        )
        check_int(_SECTION, self.num_cpus, "num_cpus", 0, 4096)
        check_int(_SECTION, self.min_replicas, "min_replicas", 1, 1024)
        check_int(_SECTION, self.max_replicas, "max_replicas", 1, 1024)
        check(_SECTION,
            self.max_replicas >= self.min_replicas,
            "max_replicas",
            f"at least min_replicas ({self.min_replicas})",
            self.max_replicas,
        )
        check_num(_SECTION, self.num_cpus_per_replica, "num_cpus_per_replica", 0.01, 1024.0)
        check_num(_SECTION, self.num_gpus_per_replica, "num_gpus_per_replica", 0.0, 64.0)
        check_int(_SECTION, self.scale_up_queue, "scale_up_queue", 1, 1_000_000)
        check_num(_SECTION, self.scale_down_after_s, "scale_down_after_s", 0.0, 86400.0)
        check_int(_SECTION, self.inflight_per_replica, "inflight_per_replica", 1, 64)
        check_num(_SECTION, self.call_timeout_s, "call_timeout_s", 0.1, 3600.0)
        check_num(_SECTION, self.connect_timeout_s, "connect_timeout_s", 0.1, 600.0)
        check_num(_SECTION, self.replica_start_timeout_s, "replica_start_timeout_s", 1.0, 3600.0)
        check_num(_SECTION, self.reconnect_interval_s, "reconnect_interval_s", 0.1, 86400.0)
        check(_SECTION, type(self.fallback) is bool, "fallback", "true or false", self.fallback)
        check(_SECTION,
            bool(re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", str(self.namespace))),
            "namespace",
            "1-64 characters A-Z a-z 0-9 _ . -",
            self.namespace,
        )
        check(_SECTION, type(self.ship_code) is bool, "ship_code", "true or false", self.ship_code)

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    @classmethod
    def single_machine(cls) -> RayConfig:
        """An in-process Ray on this machine: replicas of one CPU each, at most two."""
        return cls(address="local")


def create_backend(
    runtime: RuntimeConfig, ray: RayConfig | None = None, observer: Observer | None = None
) -> OrtBackend | RayBackend:
    """The backend the config asks for: ``RayBackend`` when ``ray.address`` is set, else
    ``OrtBackend`` (and then Ray is never imported)."""
    if ray is not None and ray.enabled:
        from models.extras import require

        # At startup, not at the first connection attempt on a background thread.
        require("ray", f"[ray] address = {ray.address!r}")
        return RayBackend(runtime, ray, observer)
    return OrtBackend(runtime, observer)


# -- the backend --------------------------------------------------------------------------


class RayBackend:
    """Model versions as pools of Ray actors; in-process sessions while Ray is down."""

    def __init__(
        self,
        config: RuntimeConfig | None = None,
        ray_config: RayConfig | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.config = config or RuntimeConfig()
        self.ray_config = ray_config or RayConfig.single_machine()
        if not self.ray_config.enabled:
            raise InvalidConfig(
                'ray.address is "" (Ray off): use OrtBackend, or create_backend() to choose'
            )
        self.observer = observer
        self.local = OrtBackend(self.config, observer)  # in-process sessions (fallback)
        self._lock = threading.Lock()
        self._models: list[RayModel] = []
        self._connected = False
        self._generation = 0
        self._down_reason: str | None = None  # None until a connection attempt failed
        self._down_since: float | None = None
        self._next_connect = 0.0
        self._needs_reset = False
        self.cluster: dict[str, Any] | None = None
        self._has_gpus = False
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self.ray: Any = None

    # -- Backend ----------------------------------------------------------------------------

    async def load(
        self, name: str, version: str, path: Path, signature: ModelSignature
    ) -> RayModel:
        validate_name(name)
        validate_version(version)
        return await asyncio.to_thread(self._load, name, version, path, signature)

    def describe(self) -> dict[str, Any]:
        with self._lock:
            models = list(self._models)
            cluster = dict(self.cluster) if self.cluster else None
        if cluster is not None:
            cluster["replicas"] = sum(m.replicas for m in models)
        return {
            "backend": "ray",
            "address": self.ray_config.address,
            "connected": self._connected,
            **self.health(),
            "cluster": cluster,
            "models": [m.describe() for m in models],
            "ray": dataclasses.asdict(self.ray_config),
            "config": dataclasses.asdict(self.config),
        }

    def health(self) -> dict[str, Any]:
        with self._lock:
            models = list(self._models)
            reason = None if self._connected else self._down_reason
            since = None if self._connected else self._down_since
        for model in models:
            if reason is None and model.mode != "ray":
                reason, since = model.reason, model.since
        return {"degraded": reason is not None, "reason": reason,
                "since": _rfc3339(since) if since is not None else None}

    async def close(self) -> None:
        """Stop the monitor and, if this backend started the process's Ray connection,
        shut it down (a "local" Ray with it). A connection someone else made (an embedding
        program, a test session) is left as it was."""
        from models import _ray_driver

        self._stop.set()
        if self._monitor is not None:
            await asyncio.to_thread(self._monitor.join)
        if self.ray is not None:
            await asyncio.to_thread(_ray_driver.driver().release, self,
                                    self.ray_config.connect_timeout_s)

    # -- loading (worker thread) ------------------------------------------------------------

    def _load(self, name: str, version: str, path: Path, signature: ModelSignature) -> RayModel:
        model = RayModel(self, name, version, path, signature)
        if self._ensure_connected():
            try:
                model.start_pool(wait=True)
            except InvalidModel:
                model.discard()
                raise
            except RayFailure as exc:
                model.go_local(str(exc))
        else:
            model.go_local(self._down_reason or "Ray is down")
        with self._lock:
            self._models.append(model)
        self._start_monitor()
        return model

    def _ensure_connected(self) -> bool:
        """Connect now if down (waiting up to connect_timeout_s); True when connected."""
        from models import _ray_driver

        driver = _ray_driver.driver()
        if self.ray is None:
            self.ray = _ray_driver.import_ray()
        cfg = self.ray_config
        if driver.alive() and (self._needs_reset or driver.gcs_reachable() is False):
            driver.reset(cfg.connect_timeout_s)  # connected to a broken cluster: start over
        self._needs_reset = False
        try:
            generation = driver.connect(
                cfg.address,
                _ray_driver.init_kwargs(cfg.address, cfg.num_cpus, cfg.namespace, cfg.ship_code),
                cfg.connect_timeout_s,
                owner=self,
            )
        except _ray_driver.RayDown as exc:
            self._set_down(str(exc))
            return False
        with self._lock:
            fresh = generation != self._generation or not self._connected
            self._generation = generation
            self._connected = True
            self._down_reason = self._down_since = None
        if fresh:
            self._refresh_cluster()
        return True

    def suspect(self, reason: str) -> None:
        """A model found the cluster unusable while connected (no replica starts and none
        is left): treat Ray as down and reset the connection before the next attempt."""
        self._set_down(reason, reset=True)

    def _set_down(self, reason: str, *, reset: bool = False) -> None:
        with self._lock:
            self._needs_reset = self._needs_reset or reset
            if self._connected or self._down_since is None:  # news, not a failed retry
                log.warning("Ray is down (%s); models run in-process where they fit", reason)
                self._down_since = time.time()
            self._connected = False
            self._down_reason = reason
            self._next_connect = time.monotonic() + self.ray_config.reconnect_interval_s
            models = list(self._models)
        for model in models:
            model.lost_ray(reason)

    def _refresh_cluster(self) -> None:
        from models import _ray_driver

        try:
            facts = _ray_driver.cluster_facts()
        except Exception as exc:  # GCS unreachable: keep the last facts
            log.debug("cluster resources unavailable: %s", exc)
            return
        with self._lock:
            self.cluster = facts
            self._has_gpus = facts["gpus"] > 0

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def use_gpus(self) -> bool:
        return self._has_gpus and self.ray_config.num_gpus_per_replica > 0

    def forget(self, model: RayModel) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._models.remove(model)

    # -- monitor thread ---------------------------------------------------------------------

    def _start_monitor(self) -> None:
        with self._lock:
            if self._monitor is not None and self._monitor.is_alive():
                return
            self._stop.clear()
            self._monitor = threading.Thread(target=self._watch, name="outpost-ray-monitor",
                                             daemon=True)
            self._monitor.start()

    def _watch(self) -> None:
        from models import _ray_driver

        driver = _ray_driver.driver()
        next_health = time.monotonic() + _HEALTH_EVERY_S
        while not self._stop.wait(_TICK_S):
            try:
                now = time.monotonic()
                if self._connected:
                    alive = driver.alive()
                    if not alive or driver.generation != self._generation:
                        self._set_down("the connection to Ray was lost (Ray stopped or "
                                       "restarted)")
                        if alive:  # a new connection is already there: adopt it now
                            self._next_connect = now
                if not self._connected:
                    if now >= self._next_connect:
                        self._reconnect()
                    continue
                health = now >= next_health
                if health:
                    next_health = now + _HEALTH_EVERY_S
                    if driver.gcs_reachable() is False:
                        self._set_down("the Ray cluster's GCS does not answer (head node down?)",
                                       reset=True)
                        continue
                    self._refresh_cluster()
                with self._lock:
                    models = list(self._models)
                for model in models:
                    model.maintain(time.monotonic(), ping=health)
            except Exception:
                log.exception("Ray monitor tick failed; trying again")

    def _reconnect(self) -> None:
        if not self._ensure_connected():
            return
        log.info("reconnected to Ray at %r; starting replicas", self.ray_config.address)
        with self._lock:
            models = list(self._models)
        for model in models:
            try:
                model.start_pool(wait=False)
            except (RayFailure, ModelError) as exc:
                log.warning("model %s: replicas not started after reconnect: %s", model.ref, exc)


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


if TYPE_CHECKING:  # mypy proves the Ray backend fits the seam

    def _fits(backend: RayBackend, model: RayModel) -> tuple[Backend, LoadedModel]:
        return backend, model
