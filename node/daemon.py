"""The daemon's one structured lifecycle: startup → serve → drain → shutdown; and the one
module that assembles a node from its components.

Startup (:func:`start`) constructs every component completely and in order — lock, key and
identity, database, audit log, runtime and models, the task owner, policy and documents,
sockets, peer credentials and the cluster, the request path, the admin API, listeners,
gossip and mDNS, background loops — and reports ready only once the listeners accept. The
:class:`Daemon` it returns is frozen: nothing in it is filled in later. Any startup failure
raises :class:`StartupError` with one line naming the fix (the CLI exits 3), after closing
what was already open.

On SIGTERM or SIGINT: readiness drops, mDNS and the cluster stop, listeners stop accepting,
in-flight requests get ``node.drain_timeout_s`` to finish (a second signal cuts that short),
background tasks finish or are cancelled, model queues drain, the audit trail records the
stop, and the process exits 0. Every wait has a bound (``node.limits``).

Adding a component: construct it in :func:`start` after what it needs; hand it only the
narrow parts it uses (a Protocol from ``node.ports`` or one declared beside its own code,
or a frozen ``...Deps`` dataclass like ``ForwardDeps``); give background work to ``tasks``
(``TaskOwner.spawn``/``every``), never ``asyncio.create_task``; register its stop with
``stoppers`` (or ``cleanup`` for a failed start); subscribe to documents with
``documents.on_revocation``/``on_applied``; add admin routes in :func:`_admin_app` and peer
routes where the peer app is built. No other module may import this one
(``tests/node/test_import_graph.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federation.identity import NodeIdentity
from federation.policy_engine import NodeAttrs, PolicyEngine
from models import create_backend
from node import apps, batch, control, limits, sync
from node.admin import AdminApp
from node.app import AppState, OipApp
from node.appsock import UidProtocol
from node.audit import AuditError, AuditLog
from node.bounds import Bounds, raise_fd_limit
from node.cluster import Cluster
from node.config import Config
from node.documents import Documents, PolicyState
from node.enrollment import AUTHORITY_CERT, NODE_CERT, EnrollmentError, load_identity, revocations
from node.errors import StartupError
from node.explain import ExplainNode, explain
from node.federate import (
    FederationDeps,
    build_cluster,
    peer_routes,
    start_cluster,
    start_mdns,
)
from node.forward import ForwardDeps, Router
from node.keys import NodeKeyError, key_path, load_key
from node.limits import AUDIT_TICK_S, STOP_COMPONENT_S
from node.listeners import Server, address_of, bind_tcp, bind_unix, start_server
from node.metrics import Metrics
from node.modelhost import ModelHost
from node.peer import PeerApp, PeerCredentials, protocol_class
from node.peerclient import PeerClients, audit_sink
from node.ports import NoPeers, PeerDirectory
from node.probe import probe, probe_gpus, server_version
from node.pull import Puller
from node.pull import admin_route as pull_route
from node.pull import peer_routes as pull_routes
from node.replication import Collector
from node.store import Store, StoreError
from node.tasks import TaskOwner
from node.tokens import LAST_USE_FLUSH_S, AppAuth
from node.trail import TilesApp, Trail, TrailNode, build_trail
from node.trail import admin_route as trail_admin_route
from node.trail import peer_routes as trail_peer_routes

log = logging.getLogger("outpost.daemon")

EXIT_STARTUP_FAILURE = 3


Stopper = tuple[str, Callable[[], Awaitable[Any]]]


@dataclass(frozen=True, eq=False)
class Daemon:
    """A running node, built whole by :func:`start` (every component constructed, in order,
    before this exists; nothing is filled in later); stop it with :meth:`stop`.

    This is the one module that assembles a node: every other module gets the narrow part
    it needs (``node.ports``, ``ForwardDeps``, ``FederationDeps``, ``Collector``, ...) and
    never imports this one.
    """

    data_dir: Path
    config: Config
    node_id: str
    lock: control.DirLock
    started_at: float
    store: Store
    audit: AuditLog
    host: ModelHost
    metrics: Metrics
    app_state: AppState
    tasks: TaskOwner
    policy: PolicyState
    documents: Documents
    peers: PeerDirectory  # the cluster when enrolled, else NoPeers
    router: Router
    peer_clients: PeerClients | None  # every outbound peer connection; None when not enrolled
    trail: Trail  # tiles, witness state, cosignatures
    #: What only an enrolled node has; mutable because a renewed certificate replaces the
    #: identity live (node.renew). None on a lone node.
    enrollment: Enrollment | None
    auth: AppAuth  # app tokens and socket uids (node.apps)
    admin: AdminApp
    servers: list[Server]  # every listener, stopped at shutdown (obs adds metrics_listen)
    #: Components stopped first, in this order (mDNS, the cluster), each within a bound.
    stoppers: tuple[Stopper, ...]
    listen: str
    peer_listen: str  # "" when not enrolled
    status: Callable[[], Awaitable[dict[str, Any]]]

    @property
    def identity(self) -> NodeIdentity | None:
        return self.enrollment.identity if self.enrollment else None

    @property
    def credentials(self) -> PeerCredentials | None:
        return self.enrollment.credentials if self.enrollment else None

    @property
    def cluster(self) -> Cluster | None:
        return self.enrollment.cluster if self.enrollment else None

    @property
    def policy_version(self) -> int | None:
        return self.policy.version

    @property
    def engine(self) -> PolicyEngine:
        return self.policy.engine

    async def apply(self, body: bytes) -> dict[str, Any]:
        """Apply an authority-signed document (revocation list, policy bundle) live."""
        return await self.documents.apply(body)

    async def stop(self) -> None:
        """Drain and shut down every component, in reverse order of startup. Every wait is
        bounded (``node.limits``): a stuck component is logged and left behind, never waited
        for forever."""
        self.app_state.ready = False
        drain = self.config.node.drain_timeout_s
        for name, stop in self.stoppers:
            await _bounded(name, stop(), STOP_COMPONENT_S)
        await _bounded("listeners", asyncio.gather(*(s.shutdown() for s in self.servers)),
                       drain + STOP_COMPONENT_S)
        await self.tasks.close()
        await _bounded("request path", self.router.close(), STOP_COMPONENT_S)
        await _bounded("witness clients", self.trail.close(), STOP_COMPONENT_S)
        if self.peer_clients is not None:
            await _bounded("peer clients", self.peer_clients.close(), STOP_COMPONENT_S)
        await _bounded("model host", self.host.close(), drain + STOP_COMPONENT_S)
        if self.host.backend is not None:
            await _bounded("runtime", self.host.backend.close(), STOP_COMPONENT_S)
        await _bounded("token last use", self.auth.tokens.flush_last_use(), STOP_COMPONENT_S)
        await _bounded("audit log", self._close_audit(), STOP_COMPONENT_S)
        await _bounded("database", self.store.close(), STOP_COMPONENT_S)
        control.clear_runtime(self.data_dir)
        self.lock.release()

    async def _close_audit(self) -> None:
        await self.audit.append(self.audit.record("node.stop", caller="daemon"))
        await self.audit.close()


async def _bounded(name: str, step: Awaitable[Any], seconds: float) -> None:
    """Await one shutdown step for ``seconds`` at most; log (never raise) what goes wrong,
    so the steps after it (audit head, lock) still run."""
    try:
        await asyncio.wait_for(step, seconds)
    except TimeoutError:
        log.error("stopping: %s did not finish within %.0f s; going on", name, seconds)
    except Exception:
        log.exception("stopping: %s failed; going on", name)


@dataclass(frozen=True)
class _Status:
    """``outpost status`` as the daemon sees itself (``GET /status`` on the admin socket)."""

    node_id: str
    data_dir: Path
    started_at: float
    listen: str
    peer_listen: str
    identity: NodeIdentity | None
    audit: AuditLog
    policy: PolicyState
    host: ModelHost
    app_state: AppState
    cluster: Cluster | None  # None when not enrolled: no members, no evidence
    trail: Trail  # tiles, witness state, cosignatures (node.trail)

    async def __call__(self) -> dict[str, Any]:
        ident, cluster = self.identity, self.cluster
        return {
            "node_id": self.node_id,
            "version": server_version(),
            "pid": os.getpid(),
            "ready": self.app_state.ready,
            "uptime_s": round(time.time() - self.started_at, 3),
            "listen": self.listen,
            "peer_listen": self.peer_listen or None,
            "data_dir": str(self.data_dir),
            "federation": ident.attributes() | {"federation": ident.federation}
            if ident else None,
            "audit": {"origin": self.audit.origin, "size": self.audit.size},
            "policy_version": self.policy.version,
            "members": len(cluster.membership.live_members()) + 1 if cluster else None,
            "equivocations": [
                {"origin": e.origin, "size": e.size} for e in cluster.equivocations
            ] if cluster else [],
            "witness": self.trail.status(),
            "runtime": self.host.backend.describe() if self.host.backend else None,
            "models": [
                {
                    "name": s.record.name,
                    "version": s.record.version,
                    "sha256": s.record.sha256,
                    "provider": s.model.provider,
                    "execution": s.model.execution,
                    "queue_depth": s.model.queue_depth,
                    "dynamic_batching": s.record.signature.batch_dynamic,
                }
                for s in self.host.served()
            ],
            "capabilities": probe(self.data_dir),
        }


@dataclass(frozen=True)
class _AdminNode:
    """What the admin routes of other modules need (``sync.LiveNode``,
    ``batch.AuditingNode``), before the Daemon object exists."""

    data_dir: Path
    store: Store
    audit: AuditLog
    host: ModelHost
    documents: Documents
    policy: PolicyState

    @property
    def policy_version(self) -> int | None:
        return self.policy.version

    async def apply(self, body: bytes) -> dict[str, Any]:
        return await self.documents.apply(body)


async def start(data_dir: Path, config: Config) -> Daemon:
    """Bring every component up, in order; raise StartupError (nothing left running) on
    failure. Order: lock, key and identity, database, audit log, runtime and models, tasks,
    policy and documents, sockets, peer credentials and cluster (not yet started), the
    request path, the admin API, listeners, gossip and mDNS, background loops, ready."""
    lock = control.DirLock(data_dir)
    try:
        lock.acquire(holder="outpost daemon")
    except control.Busy as exc:
        raise StartupError(str(exc)) from None
    except FileNotFoundError:
        raise StartupError(
            f"data directory {data_dir} does not exist; run `outpost init --data-dir {data_dir}`"
        ) from None
    cleanup: list[Callable[[], Awaitable[Any]]] = []
    try:
        try:
            key = load_key(data_dir)
            ident = load_identity(data_dir)
        except (NodeKeyError, EnrollmentError) as exc:
            raise StartupError(str(exc)) from None
        node_id = config.node.name
        try:
            store = await Store.open(data_dir)
        except StoreError as exc:
            raise StartupError(str(exc)) from None
        cleanup.append(store.close)
        try:
            audit = await AuditLog.open(store, key, node_id,
                                        ident.federation if ident else None, config.audit)
        except AuditError as exc:
            raise StartupError(str(exc)) from None
        cleanup.append(audit.close)
        host_ref: list[ModelHost] = []
        metrics = Metrics(lambda: (
            (s.record.name, s.record.version, s.model.queue_depth)
            for s in (host_ref[0].served() if host_ref else [])
        ))
        # In-process onnxruntime, or Ray actor pools when [ray] address is set (Ray is
        # imported only then).
        backend = create_backend(config.runtime, config.ray, observer=metrics.observe_batch)
        cleanup.append(backend.close)
        host = ModelHost(store, data_dir, max_model_bytes=config.models.max_model_bytes,
                         backend=backend, audit=audit)
        host_ref.append(host)
        cleanup.append(host.close)
        await host.load_all()
        tasks = TaskOwner()
        cleanup.append(tasks.close)
        policy = await PolicyState.load(store, data_dir, tasks, enrolled=ident is not None)
        documents = Documents(store, data_dir, audit, policy)
        app_state = AppState(
            node_id=node_id,
            server_version=server_version(),
            max_body_bytes=config.node.max_body_bytes,
            default_data_class=config.node.default_data_class,
            health=backend.health,  # /v2/health/ready shows degraded + reason
        )
        try:
            auth = await apps.open_auth(store, key, config.node)
            app_unix = apps.bind(config.node) if config.node.app_socket else None
        except apps.AppSocketError as exc:
            raise StartupError(str(exc)) from None
        cleanup.append(auth.tokens.flush_last_use)
        app_sock = bind_tcp(config.node.listen, key="node.listen")
        listen = address_of(app_sock)
        admin_sock = bind_unix(data_dir / control.ADMIN_SOCKET)

        peers: PeerDirectory = NoPeers()
        enrolled: _Enrolled | None = None  # None: a lone node (no identity, no peers)
        peer_listen = ""
        if ident is not None:
            credentials = PeerCredentials(
                (data_dir / NODE_CERT).read_bytes(), key_path(data_dir).read_bytes(),
                (data_dir / AUTHORITY_CERT).read_bytes(), await revocations(store, data_dir),
            )
            documents.on_revocation(credentials.update_revocations)  # peer clients follow
            peer_clients = PeerClients.of(credentials, audit_sink(
                audit, lambda coro: tasks.spawn(coro, name="peer-refusal-audit")))
            cleanup.append(peer_clients.close)
            peer_sock = bind_tcp(config.node.peer_listen, key="node.peer_listen")
            peer_listen = address_of(peer_sock)
            fed = FederationDeps(
                node_id=node_id, identity=ident, credentials=credentials, peers=peer_clients,
                config=config,
                store=store, audit=audit, models=host, policy=policy, documents=documents,
                tasks=tasks, count_drop=lambda reason: metrics.gossip_dropped.labels(reason).inc(),
                gpus=len(probe_gpus()),
                runtime_cluster=lambda: backend.describe().get("cluster"),
                app_listen=listen, peer_listen=peer_listen,
            )
            cluster = build_cluster(fed, key, await revocations(store, data_dir))
            documents.on_revocation(cluster.update_revocations)
            documents.on_applied(cluster.put_document)
            peers = cluster
            enrolled = _Enrolled(fed, cluster, peer_sock)

        router = Router(ForwardDeps(
            node_id=node_id, default_data_class=config.node.default_data_class,
            me=NodeAttrs(**ident.attributes()) if ident else None, peers=peers, policy=policy,
            models=host, audit=audit, metrics=metrics,
            clients=enrolled.deps.peers if enrolled else None,
        ), config.placement.core(), config.placement.forward_timeout_s)

        trail = await build_trail(TrailNode(
            node_id=node_id, config=config, store=store, audit=audit, identity=ident,
            cluster=enrolled.cluster if enrolled else None,
            authority_pem=enrolled.deps.credentials.authority_pem if enrolled else None,
            clients=enrolled.deps.peers if enrolled else None, policy=policy,
        ), key)
        cleanup.append(trail.close)
        status = _Status(node_id, data_dir, time.time(), listen, peer_listen, ident, audit,
                         policy, host, app_state, enrolled.cluster if enrolled else None, trail)
        puller = Puller(enrolled.cluster, enrolled.deps.peers, host) if enrolled else None
        admin = _admin_app(_AdminNode(data_dir, store, audit, host, documents, policy), status,
                           ident, peers, puller, trail, auth)

        drain = config.node.drain_timeout_s
        servers: list[Server] = []

        async def shutdown_servers() -> None:
            await asyncio.gather(*(s.shutdown() for s in servers))

        cleanup.append(shutdown_servers)
        max_body = config.node.max_body_bytes
        raise_fd_limit(limits.MAX_APP_CONNECTIONS + limits.MAX_PEER_CONNECTIONS
                       + limits.MAX_PENDING_HANDSHAKES + limits.FD_RESERVE)
        oip = OipApp(app_state, host, metrics, router, auth)
        servers.append(await start_server(oip, app_sock, drain,
                                          bounds=Bounds(max_body_bytes=max_body)))
        if app_unix is not None:  # the same API; the caller is the connecting uid
            servers.append(await start_server(oip, app_unix, drain, protocol=UidProtocol,
                                              bounds=Bounds(max_body_bytes=max_body)))
        servers.append(await start_server(admin, admin_sock, drain))
        stoppers: list[Stopper] = []
        if enrolled is not None:
            fed, cluster, peer_sock = enrolled.deps, enrolled.cluster, enrolled.peer_sock
            credentials = fed.credentials
            peer_app = PeerApp(lambda route: metrics.peer_requests.labels(route).inc(),
                               credentials)
            peer_routes(peer_app, fed, cluster, router)
            pull_routes(peer_app, host, policy, audit)
            trail_peer_routes(peer_app, trail)
            servers.append(await start_server(
                # The server context in force for each handshake (live revocations), under
                # the handshake deadline and pending cap of node.bounds.
                peer_app, peer_sock, drain, tls=credentials.server,
                protocol=protocol_class(credentials), bounds=Bounds.peer(max_body),
            ))
            try:
                await start_cluster(fed, cluster)
            except OSError as exc:
                raise StartupError(
                    f"cannot open UDP {peer_listen} for gossip ({exc.strerror}); free "
                    "the port or choose another with --peer-listen HOST:PORT"
                ) from None
            stoppers.append(("cluster", cluster.stop))
            cleanup.append(cluster.stop)
            discovery = await start_mdns(fed, cluster) if config.discovery.mdns else None
            if discovery is not None:
                stoppers.insert(0, ("mDNS", discovery.stop))
                cleanup.append(discovery.stop)
            collector = Collector(NodeAttrs(**fed.identity.attributes()), cluster, policy, store,
                                  fed.peers)
            tasks.every(config.federation.checkpoint_interval_s, collector.once,
                        name="replication")
        tasks.every(config.federation.checkpoint_interval_s, trail.step, name="witness")
        if config.audit.tiles_listen:
            tiles_sock = bind_tcp(config.audit.tiles_listen, key="audit.tiles_listen")
            servers.append(await start_server(TilesApp(trail.tiles), tiles_sock, drain,
                                              bounds=Bounds(max_body_bytes=1024)))
            trail.listen = address_of(tiles_sock)
    except BaseException:
        for close in reversed(cleanup):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(close(), STOP_COMPONENT_S)
        lock.release()
        raise
    daemon = Daemon(
        data_dir=data_dir, config=config, node_id=node_id, lock=lock,
        started_at=status.started_at, store=store, audit=audit, host=host, metrics=metrics,
        app_state=app_state, tasks=tasks, policy=policy, documents=documents, peers=peers,
        router=router, peer_clients=enrolled.deps.peers if enrolled else None, trail=trail, auth=auth,
        enrollment=Enrollment(ident, enrolled.deps.credentials, enrolled.cluster)
        if enrolled and ident else None, admin=admin, servers=servers, stoppers=tuple(stoppers),
        listen=listen, peer_listen=peer_listen, status=status,
    )
    from node import renew  # certificate renewal applied live
    from node.obs import instrument  # gauges, audit timing, metrics_listen

    admin.route("POST", renew.RENEW_ROUTE, renew.admin_route(daemon))
    try:
        await instrument(daemon)  # may open node.metrics_listen
    except BaseException:
        await daemon.stop()  # everything is up by now: stop it whole, then report
        raise
    control.write_runtime(data_dir, control.RuntimeInfo(
        pid=os.getpid(), listen=listen, admin_socket=str(data_dir / control.ADMIN_SOCKET),
        node_id=node_id, peer_listen=peer_listen,
    ))
    await audit.append(audit.record(
        "node.start", caller="daemon",
        detail={"version": server_version(), "models": len(host.served())},
    ))
    tasks.every(AUDIT_TICK_S, audit.tick, name="audit-ticker")
    tasks.every(LAST_USE_FLUSH_S, auth.tokens.flush_last_use, name="token-last-use")
    app_state.ready = True
    log.info("node %s ready: app endpoint http://%s, admin %s", node_id, listen,
             data_dir / control.ADMIN_SOCKET)
    return daemon


@dataclass
class Enrollment:
    """An enrolled node's identity, TLS credentials and cluster (``Daemon.enrollment``)."""

    identity: NodeIdentity
    credentials: PeerCredentials
    cluster: Cluster


@dataclass(frozen=True)
class _Enrolled:
    """The parts only an enrolled node has, built before the listeners start."""

    deps: FederationDeps
    cluster: Cluster
    peer_sock: socket.socket


def _admin_app(node: _AdminNode, status: _Status, ident: NodeIdentity | None,
               peers: PeerDirectory, puller: Puller | None, trail: Trail,
               auth: AppAuth) -> AdminApp:
    """The admin API with the routes other modules own."""
    admin = AdminApp(node.host, status, node.audit.reader(), apply=node.apply)

    async def peers_route(_payload: dict[str, Any], _rest: str) -> tuple[int, Any]:
        return 200, trail.annotate_peers(peers.peers())

    explainer = ExplainNode(ident, peers, node.policy, auth)

    async def explain_route(payload: dict[str, Any], _rest: str) -> tuple[int, Any]:
        return 200, explain(explainer, payload)

    admin.route("GET", "/peers", peers_route)
    admin.route("POST", sync.IMPORT_ROUTE, sync.admin_route(node))
    admin.route("POST", batch.AUDIT_ROUTE, batch.admin_route(node))
    admin.route("POST", "/models/pull", pull_route(puller))
    admin.route("GET", "/trail/witnessed", trail_admin_route(trail))
    admin.route("GET", "/policy/explain", explain_route)
    apps.admin_routes(admin, auth.tokens, node.audit)
    return admin


async def run(data_dir: Path, config: Config, *,
              log_overrides: dict[str, str] | None = None) -> int:
    """Start, serve until SIGTERM/SIGINT, drain, stop. Returns the process exit code.
    ``node.service`` adds systemd notices, the watchdog and SIGHUP reload around it."""
    from node.service import Service

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals_seen: list[int] = []

    def on_signal(sig: int) -> None:
        signals_seen.append(sig)
        if len(signals_seen) == 1:
            log.info("received %s: draining (send again to stop at once)", signal.Signals(sig).name)
            stop.set()
        else:
            for server in daemon_ref:
                for s in server.servers:
                    s.force_exit = True

    daemon_ref: list[Daemon] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        daemon = await start(data_dir, config)
        daemon_ref.append(daemon)
        print(f"outpost: node {daemon.node_id} ready on http://{daemon.listen}", flush=True)
        service = Service(daemon, log_overrides=log_overrides)
        service.started()
        await stop.wait()
        service.stopping()
        await daemon.stop()
        log.info("node %s stopped", daemon.node_id)
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
