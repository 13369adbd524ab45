"""This process's one connection to Ray: connect, notice it is gone, connect again.

Owns every ``ray.init`` this process makes, and the facts about the cluster that status
reads (cached, so reading them never blocks the event loop). Must never be imported unless
Ray is configured: importing ``ray`` costs ~70 MB of RSS, outside the daemon's idle budget.

Why one long-lived thread runs ``ray.init``: with ``address="local"`` Ray starts its GCS and
raylet as children that die with the *thread* that started them (``PR_SET_PDEATHSIG``).
Measured here: ``ray.init`` from a short-lived worker thread returned, then the first actor
call hung for 60 s and Ray terminated the whole process ("Failed to connect to GCS within
60 seconds ... The program will terminate"). So connecting is a job for ``_Driver``'s thread,
which lives as long as the process.

Why auto-connect is switched off: Ray starts a fresh default cluster when a remote call is
made with no connection. A stale actor handle used after Ray went away (measured: after
``ray.shutdown()``) silently started a new local Ray with default settings; with
auto-connect off it raises, which the caller treats as "Ray is down".

Why the GCS reconnect timeout is raised: a Ray driver terminates its own process when the
cluster's GCS has been unreachable for ``gcs_rpc_server_reconnect_timeout_s`` (60 s).
Measured: GCS killed, and 60 s later the whole process ended ("Failed to connect to GCS
within 60 seconds ... The program will terminate"); with the timeout raised it lived on,
``ray.shutdown()`` took 7 s and a new ``ray.init`` worked. For the daemon, a dead GCS must
mean "fall back and reconnect", never "exit". While the GCS is away, calls that need it
(``ray.cluster_resources()``) block, so liveness is a TCP probe of the GCS port first.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

_LOG_LEVEL = logging.ERROR  # Ray's own Python logging: warnings go to our log as one line each


class RayDown(Exception):
    """Ray cannot be reached (or has gone); the message says why."""


_GCS_PATIENCE_S = 365 * 86400  # how long Ray's driver tolerates a dead GCS: "forever"
_PROBE_TIMEOUT_S = 2.0


def import_ray() -> Any:
    """``ray``, imported with auto-connect off and GCS patience on (module docstring).
    Must run before this process's first ``ray.init``."""
    from models.extras import require

    require("ray", "running models on Ray ([ray] address, batch --ray)")
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
    os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", str(_GCS_PATIENCE_S))
    import ray
    from ray._private import auto_init_hook

    # The env var is read once, at Ray's import; Ray may have been imported before us.
    auto_init_hook.enable_auto_connect = False
    return ray


class _Driver:
    """The process-wide connection. ``generation`` counts connections: actor handles and
    object refs made under an older generation are dead."""

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="outpost-ray")
        self._lock = threading.Lock()
        self._calls = threading.Condition(self._lock)
        self._users = 0  # threads inside using(): Ray calls in flight
        self._resetting = False
        self._pending: concurrent.futures.Future[None] | None = None
        self.generation = 0
        self._identity: tuple[str, str] | None = None
        self.owner: object = None  # who asked for the ray.init in force (None: adopted)
        self.address = ""

    def alive(self) -> bool:
        """Cheap, local check: is this process connected to Ray right now?"""
        ray = import_ray()
        identity: tuple[str, str] | None = None
        if ray.is_initialized():
            # (driver's node, job) differs for every connection, even a shutdown and
            # re-init between two of our checks: then the old handles are dead.
            with contextlib.suppress(Exception):
                context = ray.get_runtime_context()
                identity = (context.get_node_id(), context.get_job_id())
        with self._lock:
            if identity is not None and identity != self._identity:
                self.generation += 1
            if identity is None:
                self.owner = None
            self._identity = identity
        return identity is not None

    def connect(self, address: str, init_kwargs: dict[str, Any], timeout: float,
                owner: object = None) -> int:
        """Connect (or adopt the connection this process already has); the generation.
        ``owner`` becomes the connection's owner if this call starts it (see ``release``).

        Raises RayDown when Ray cannot be reached within ``timeout``; a start that is
        still running then goes on in the background and a later call picks it up.
        """
        if self.alive():
            return self.generation
        with self._lock:
            if self._pending is None or self._pending.done():
                self._pending = self._pool.submit(self._init, address, init_kwargs, owner)
            pending = self._pending
        try:
            pending.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            raise RayDown(
                f"Ray at {address!r} did not answer within {timeout:g} s (ray.connect_timeout_s)"
            ) from None
        except Exception as exc:
            raise RayDown(f"cannot connect to Ray at {address!r}: {_one_line(exc)}") from exc
        if not self.alive():
            raise RayDown(f"Ray at {address!r} went away right after connecting")
        return self.generation

    def _init(self, address: str, init_kwargs: dict[str, Any], owner: object) -> None:
        ray = import_ray()
        if ray.is_initialized():
            return
        started = time.monotonic()
        ray.init(address=address, **init_kwargs)
        with self._lock:
            self.owner, self.address = owner, address
        log.info("connected to Ray at %r in %.1f s", address, time.monotonic() - started)

    def release(self, owner: object, timeout: float) -> None:
        """Shut the connection down if ``owner`` started it; otherwise leave it to whoever
        did. Ray must be shut down before the process exits once a signal reached Ray's
        own handler (measured: SIGTERM, then exit without ``ray.shutdown()`` = SIGABRT)."""
        if owner is not None and self.owner is owner:
            self.reset(timeout)

    def call(self, fn: Callable[[], T], timeout: float) -> T:
        """Run ``fn`` (e.g. ``ray.shutdown``) on the driver thread; wait up to ``timeout``."""
        return self._pool.submit(fn).result(timeout=timeout)

    @contextlib.contextmanager
    def using(self) -> Iterator[None]:
        """Around a Ray call and the release of what it returned: ``reset`` waits for these
        to end before it shuts the connection down (freeing a handle during a shutdown
        ends the process, see ``bury``). Raises RayDown while a reset is under way."""
        with self._calls:
            if self._resetting:
                raise RayDown("the Ray connection is being reset")
            self._users += 1
        try:
            yield
        finally:
            with self._calls:
                self._users -= 1
                self._calls.notify_all()

    def gcs_reachable(self) -> bool | None:
        """Does the cluster's GCS accept a TCP connection? None when unknown (not connected,
        or Ray Client, which has no GCS address here and reports failures itself)."""
        ray = import_ray()
        try:
            address: str = ray.get_runtime_context().gcs_address
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                return None
        except Exception:
            return None
        try:
            socket.create_connection((host.strip("[]"), int(port)), _PROBE_TIMEOUT_S).close()
        except OSError:
            return False
        return True

    def reset(self, timeout: float) -> None:
        """Drop the connection (``ray.shutdown``) so the next ``connect`` starts afresh; for
        a connection whose cluster is broken. Waits up to ``timeout`` for Ray calls in
        flight, then for the shutdown."""
        ray = import_ray()
        with self._calls:
            self._resetting = True
            self._calls.wait_for(lambda: self._users == 0, timeout)
        try:
            if ray.is_initialized():
                started = time.monotonic()
                self.call(ray.shutdown, timeout)
                log.info("Ray connection reset in %.1f s", time.monotonic() - started)
        except concurrent.futures.TimeoutError:
            log.warning("ray.shutdown() did not finish within %g s; trying to connect anyway",
                        timeout)
        finally:
            with self._calls:
                self._resetting = False


_DRIVER: _Driver | None = None
_DRIVER_LOCK = threading.Lock()


def driver() -> _Driver:
    global _DRIVER
    with _DRIVER_LOCK:
        if _DRIVER is None:
            _DRIVER = _Driver()
        return _DRIVER


def cluster_facts() -> dict[str, Any]:
    """CPUs, GPUs and memory of the connected cluster, totals and free. Talks to the GCS:
    call from a background thread only, never from the event loop."""
    ray = import_ray()
    total = ray.cluster_resources()
    free = ray.available_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {
        "nodes": len(nodes),
        "cpus": total.get("CPU", 0.0),
        "gpus": total.get("GPU", 0.0),
        "memory": int(total.get("memory", 0)),
        "object_store_memory": int(total.get("object_store_memory", 0)),
        "free_cpus": round(free.get("CPU", 0.0), 3),
        "free_gpus": round(free.get("GPU", 0.0), 3),
    }


def init_kwargs(address: str, num_cpus: int, namespace: str, ship_code: bool) -> dict[str, Any]:
    """``ray.init`` arguments for one of the addresses ``RayConfig`` allows."""
    kwargs: dict[str, Any] = {
        "namespace": namespace,
        "logging_level": _LOG_LEVEL,
        "log_to_driver": False,  # replica output stays in Ray's logs, not the daemon's stderr
    }
    if address == "local":
        kwargs["include_dashboard"] = False
        if num_cpus:
            kwargs["num_cpus"] = num_cpus
    elif address.startswith("ray://"):
        kwargs.pop("log_to_driver")  # not a Ray Client option
    if ship_code and address != "local":
        # Workers on other machines import the replica code from here: ship the `models`
        # package (a few hundred KB) so the cluster needs only numpy and onnxruntime.
        import models

        kwargs["runtime_env"] = {"py_modules": [os.path.dirname(models.__file__)]}
    return kwargs


_GRAVEYARD: list[Any] = []
_GRAVEYARD_LOCK = threading.Lock()


def bury(*handles: Any) -> None:
    """Keep Ray handles (actor handles, object refs) of a connection that failed alive for
    the rest of the process instead of letting them be freed.

    Freeing one runs Ray's native destructor, and if that happens while ``ray.shutdown()``
    is under way on another thread, Ray ends the whole process ("The core worker has
    already been shutdown ... The process will exit": measured here, in about one run in
    three, from a monitor thread that dropped its actor handles as it noticed the
    shutdown). Nothing tells us when a shutdown has finished, so these are never freed:
    a few hundred bytes per replica per Ray outage.
    """
    with _GRAVEYARD_LOCK:
        _GRAVEYARD.extend(h for h in handles if h is not None)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def safely(fn: Callable[[], T], default: T) -> T:
    """``fn()``, or ``default`` when Ray raises (it is down): for best-effort cleanup."""
    with contextlib.suppress(Exception):
        return fn()
    return default
