"""Prometheus metrics of one daemon, in a registry of its own (several daemons may share a test
process). Owns metric names and labels; the endpoint serves :meth:`Metrics.render`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Latency buckets from 100 µs to 10 s: local inference of small models sits in the first few.
_LATENCY = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
            1.0, 2.5, 5.0, 10.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Cached label children of app-level outcomes: the model name comes from the request path, so
# the cache is bounded (the label sets themselves are Prometheus's to keep).
_MAX_CACHED = 4096


class _QueueCollector(Collector):
    def __init__(self, depths: Callable[[], Iterable[tuple[str, str, int]]]) -> None:
        self._depths = depths

    def collect(self) -> Iterable[Metric]:
        gauge = GaugeMetricFamily(
            "outpost_queue_depth", "Requests waiting or running per model version",
            labels=["model", "version"],
        )
        for name, version, depth in self._depths():
            gauge.add_metric([name, version], depth)
        yield gauge


class Metrics:
    def __init__(self, queue_depths: Callable[[], Iterable[tuple[str, str, int]]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "outpost_requests", "Inference requests by model, version and HTTP status",
            ["model", "version", "code"], registry=self.registry,
        )
        self.latency = Histogram(
            "outpost_request_seconds", "Inference request latency inside the daemon",
            ["model", "version"], buckets=_LATENCY, registry=self.registry,
        )
        self.batch_size = Histogram(
            "outpost_batch_size", "Requests executed together in one micro-batch",
            ["model", "version"], buckets=_BATCH, registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "outpost_batch_seconds", "onnxruntime time per micro-batch",
            ["model", "version"], buckets=_LATENCY, registry=self.registry,
        )
        self.http_errors = Counter(
            "outpost_http_errors", "Requests refused before reaching a model, by status",
            ["code"], registry=self.registry,
        )
        self.gossip_dropped = Counter(
            "outpost_gossip_dropped", "Peer messages dropped, by reason (forged, replayed, "
            "oversized, malformed, unknown_sender, revoked, ...)",
            ["reason"], registry=self.registry,
        )
        self.forwards = Counter(
            "outpost_forwards", "Requests forwarded to peers, by target and outcome",
            ["target", "outcome"], registry=self.registry,
        )
        self.placements = Counter(
            "outpost_placements", "Where requests were sent and why (route: local, forwarded, "
            "denied, unavailable)", ["route"], registry=self.registry,
        )
        self.peer_requests = Counter(
            "outpost_peer_requests", "Requests received on the peer endpoint, by route",
            ["route"], registry=self.registry,
        )
        self.app_requests = Counter(
            "outpost_app_requests", "Inference requests per app (token name, socket uid "
            "mapping, anonymous; unknown = credentials named no app) and outcome (ok, denied, "
            "unauthenticated, forbidden, throttled, bad_request, not_found, unavailable, "
            "error)", ["app", "outcome"], registry=self.registry,
        )
        # -- issue 12: per-outcome requests, the Triton-style duration split, audit, gossip --
        self.outcomes = Counter(
            "outpost_inference_requests", "Inference requests by model, version and outcome "
            "(success, failure, denied, forwarded); version is 'latest' when the app named none "
            "and the request never reached a model", ["model", "version", "outcome"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "outpost_inference_request_duration_seconds", "Time from a request's arrival to "
            "its answer, for answered requests", ["model", "version"], buckets=_LATENCY,
            registry=self.registry,
        )
        self.queue_duration = Histogram(
            "outpost_inference_queue_duration_seconds", "Time a request waited for its "
            "micro-batch to start (time in the model minus the batch's compute time)",
            ["model", "version"], buckets=_LATENCY, registry=self.registry,
        )
        self.compute_duration = Histogram(
            "outpost_inference_compute_duration_seconds", "Model run time of the micro-batch "
            "a request ran in", ["model", "version"], buckets=_LATENCY, registry=self.registry,
        )
        self.audit_append = Histogram(
            "outpost_audit_append_duration_seconds", "Time until an audit entry is durable "
            "(group commit included)", buckets=_LATENCY, registry=self.registry,
        )
        self.gossip_messages = Counter(
            "outpost_gossip_messages", "Gossip messages by direction (in, out) and transport "
            "(udp, tcp)", ["direction", "transport"], registry=self.registry,
        )
        self.gossip_bytes = Counter(
            "outpost_gossip_bytes", "Gossip bytes by direction and transport",
            ["direction", "transport"], registry=self.registry,
        )
        self._last_compute: dict[tuple[str, str], float] = {}
        self._finished: dict[tuple[str, str, str | None, str | None], tuple[Any, ...]] = {}
        self.registry.register(_QueueCollector(queue_depths))
        # Labelled children per model version, looked up once (``labels()`` takes a lock and
        # builds a key on every call; these run per request and per batch).
        self._answered: dict[tuple[str, str], tuple[Any, ...]] = {}
        self._batches: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._apps: dict[tuple[str, str], Any] = {}

    def app_request(self, app: str, outcome: str) -> None:
        """One inference request of ``app`` ended with ``outcome``. Label values are bounded:
        apps are the node's tokens and uid mappings plus ``anonymous`` and ``unknown``."""
        child = self._apps.get((app, outcome))
        if child is None:
            child = self._apps[(app, outcome)] = self.app_requests.labels(app, outcome)
        child.inc()

    def answered(self, name: str, version: str, seconds: float) -> None:
        """One inference answered 200 after ``seconds`` inside the daemon."""
        children = self._answered.get((name, version))
        if children is None:
            children = self._answered[(name, version)] = (
                self.requests.labels(name, version, "200"), self.latency.labels(name, version),
                self.queue_duration.labels(name, version),
                self.compute_duration.labels(name, version),
                self.outcomes.labels(name, version, "success"))
        children[0].inc()
        children[1].observe(seconds)
        children[4].inc()
        # The batch this request rode in finished just before its answer: with one worker per
        # model (the default) the last compute time seen is exactly that batch's.
        compute = self._last_compute.get((name, version))
        if compute is not None:
            children[3].observe(compute)
            children[2].observe(max(0.0, seconds - compute))

    def finished(self, model: str, version: str, outcome: str | None,
                 seconds: float | None, route: str | None) -> None:
        """One app request finished: ``outcome`` to count (None: already counted where it
        ran), ``seconds`` when it was answered, ``route`` where placement sent it (local,
        forwarded, denied, unavailable; None when it never reached placement)."""
        key = (model, version, outcome, route)
        children = self._finished.get(key)
        if children is None:
            if len(self._finished) >= _MAX_CACHED:  # app-chosen names: bound the cache
                self._finished.clear()
            children = self._finished[key] = (
                self.placements.labels(route) if route is not None else None,
                self.outcomes.labels(model, version, outcome) if outcome is not None else None,
                self.request_duration.labels(model, version))
        if children[0] is not None:
            children[0].inc()
        if children[1] is not None:
            children[1].inc()
        if seconds is not None:
            children[2].observe(seconds)

    def gossip_io(self, direction: str, transport: str, size: int) -> None:
        self.gossip_messages.labels(direction, transport).inc()
        self.gossip_bytes.labels(direction, transport).inc(size)

    def observe_batch(self, name: str, version: str, size: int, seconds: float) -> None:
        children = self._batches.get((name, version))
        if children is None:
            children = self._batches[(name, version)] = (
                self.batch_size.labels(name, version), self.batch_seconds.labels(name, version))
        children[0].observe(size)
        children[1].observe(seconds)
        self._last_compute[(name, version)] = seconds

    def render(self) -> bytes:
        return generate_latest(self.registry)
