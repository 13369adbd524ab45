"""Observability wiring beyond the request path: state gauges at scrape time, audit append
timing, gossip I/O counting, build and process info, and the optional metrics-only listener.

Owns *attaching* these to a started daemon (:func:`instrument`, called once at the end of
``node.daemon.start``); the metric objects of the request path live in ``node.metrics``.
Every gauge here is computed when Prometheus scrapes, on the event loop (the metrics listener
is an asyncio server like the others), so nothing reads daemon state from another thread.
Never changes what it observes.

The names, all documented in README "Metrics":

- ``outpost_audit_entries``, ``outpost_audit_database_bytes``, ``outpost_audit_head_age_seconds``,
  ``outpost_audit_append_duration_seconds`` (histogram, node.metrics)
- ``outpost_members{state}``, ``outpost_gossip_messages_total`` / ``outpost_gossip_bytes_total``
  ``{direction,transport}``
- ``outpost_policy_version``, ``outpost_revocation_version``, ``outpost_evidence{kind}``
- ``outpost_certificate_expiry_timestamp_seconds``, ``outpost_certificate_expiring`` (1 inside
  the 30-day renewal warning)
- ``outpost_build_info{version,python,onnxruntime,backend}``, ``process_*`` (prometheus_client)
"""

from __future__ import annotations

import logging
import platform
import time
from collections import Counter
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from node.http import HTTPError, Receive, Scope, Send, send_error, send_response
from node.metrics import CONTENT_TYPE
from node.renew import WARN_DAYS

if TYPE_CHECKING:
    from node.ports import RunningNode

log = logging.getLogger("outpost.obs")


class _DaemonCollector(Collector):
    def __init__(self, daemon: RunningNode, audit_state: dict[str, float]) -> None:
        self.daemon = daemon
        self.audit_state = audit_state

    def collect(self) -> Iterable[Metric]:
        d = self.daemon
        yield GaugeMetricFamily("outpost_audit_entries", "Entries in this node's audit log",
                                value=d.audit.size)
        db = d.data_dir / "outpost.db"
        size = sum(p.stat().st_size for p in d.data_dir.glob(db.name + "*") if p.exists())
        yield GaugeMetricFamily("outpost_audit_database_bytes",
                                "Size of the node database holding the audit log (with WAL)",
                                value=size)
        last = self.audit_state.get("last")
        if last is not None:
            yield GaugeMetricFamily("outpost_audit_head_age_seconds",
                                    "Seconds since the newest audit entry became durable",
                                    value=max(0.0, time.time() - last))
        members = GaugeMetricFamily("outpost_members", "Federation members (this node "
                                    "included) by state", labels=["state"])
        if d.cluster is not None:
            counts = Counter(m.status.name.lower() for m in d.cluster.membership.members())
            for state, n in sorted(counts.items()):
                members.add_metric([state], n)
        yield members
        if d.policy_version is not None:
            yield GaugeMetricFamily("outpost_policy_version", "Version of the policy bundle "
                                    "in force", value=d.policy_version)
        creds = d.credentials
        if creds is not None and creds.revocations is not None:
            yield GaugeMetricFamily("outpost_revocation_version", "Version of the revocation "
                                    "list in force", value=creds.revocations.version)
        evidence = GaugeMetricFamily("outpost_evidence", "Misbehaviour evidence held, by kind "
                                     "(equivocation: two signed checkpoints of one size; rollback: a "
                                     "log that went back behind a checkpoint this node "
                                     "witnessed)",
                                     labels=["kind"])
        evidence.add_metric(["equivocation"],
                            len(d.cluster.equivocations) if d.cluster is not None else 0)
        evidence.add_metric(["rollback"], len(d.trail.rollbacks()))
        yield evidence
        if d.identity is not None:
            expiry = d.identity.not_valid_after.timestamp()
            yield GaugeMetricFamily("outpost_certificate_expiry_timestamp_seconds",
                                    "When this node's certificate expires (Unix time)",
                                    value=expiry)
            yield GaugeMetricFamily(
                "outpost_certificate_expiring", f"1 when the node certificate expires within "
                f"{WARN_DAYS} days (renew: outpost join renew)",
                value=1 if expiry - time.time() <= WARN_DAYS * 86400 else 0)


def _build_info(daemon: RunningNode) -> GaugeMetricFamily:
    from node.probe import server_version

    backend = daemon.host.backend.describe().get("backend", "?") if daemon.host.backend else "-"
    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:  # pragma: no cover - a core dependency
        ort = "-"
    info = GaugeMetricFamily("outpost_build_info", "Outpost build and runtime (always 1)",
                             labels=["version", "python", "onnxruntime", "backend"])
    info.add_metric([server_version(), platform.python_version(), ort, backend], 1)
    return info


class _Static(Collector):
    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    def collect(self) -> Iterable[Metric]:
        yield self.metric


def _time_audit(daemon: RunningNode, state: dict[str, float]) -> None:
    """Time every append until durable. Wraps the instance's ``append_bytes`` (``append``
    goes through it) instead of editing node.audit, whose write path changes elsewhere."""
    audit = daemon.audit
    original = audit.append_bytes
    histogram = daemon.metrics.audit_append

    def timed(entry: bytes, *, alone: bool = False) -> Awaitable[int]:
        started = time.perf_counter()
        future: Any = original(entry, alone=alone)

        def done(f: Any) -> None:
            if not f.cancelled() and f.exception() is None:
                histogram.observe(time.perf_counter() - started)
                state["last"] = time.time()

        future.add_done_callback(done)
        return future  # type: ignore[no-any-return]

    audit.append_bytes = timed


class MetricsApp:
    """``GET /metrics`` alone, for ``node.metrics_listen``."""

    def __init__(self, daemon: RunningNode) -> None:
        self.daemon = daemon

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != "/metrics" or scope["method"] != "GET":
            await send_error(send, HTTPError(404, "only GET /metrics is served here"))
            return
        await send_response(send, 200, self.daemon.metrics.render(),
                            [(b"content-type", CONTENT_TYPE.encode())])


async def instrument(daemon: RunningNode) -> None:
    """Attach the collectors, the audit timer and gossip counting; open ``metrics_listen``."""
    state: dict[str, float] = {}
    registry = daemon.metrics.registry
    registry.register(_DaemonCollector(daemon, state))
    registry.register(_Static(_build_info(daemon)))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    _time_audit(daemon, state)
    if daemon.cluster is not None:
        daemon.cluster.deps.count_io = daemon.metrics.gossip_io
    address = getattr(daemon.config.node, "metrics_listen", "")
    if address:
        from node.bounds import Bounds
        from node.listeners import bind_tcp, start_server

        sock = bind_tcp(address, key="node.metrics_listen")
        daemon.servers.append(await start_server(MetricsApp(daemon), sock,
                                                 daemon.config.node.drain_timeout_s,
                                                 bounds=Bounds(max_body_bytes=1024)))
        host, port = sock.getsockname()[:2]
        log.info("metrics on http://%s:%s/metrics", host, port)


class _ClockCollector(Collector):
    def __init__(self, report: dict[str, Any]) -> None:
        self.report = report

    def collect(self) -> Iterable[Metric]:
        offset = self.report.get("offset_s")
        if offset is not None:
            yield GaugeMetricFamily("outpost_clock_offset_seconds", "Median peer clock minus "
                                    "this node's (positive: this node is behind)", value=offset)


def clock_gauge(daemon: RunningNode, report: dict[str, Any]) -> None:
    daemon.metrics.registry.register(_ClockCollector(report))
