"""The daemon's one structured lifecycle: startup → serve → drain → shutdown.

Startup opens every component in order (lock, key, database and migrations, model runtime,
listeners) and reports ready only once the listeners accept. Any startup failure raises
:class:`StartupError` with one line naming the fix; the CLI turns it into exit code 3.

On SIGTERM or SIGINT: readiness drops, listeners stop accepting, in-flight requests get
``node.drain_timeout_s`` to finish (a second signal cuts that short), model queues drain, the
audit trail records the stop, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import uvicorn

from federation.canonical import b64encode
from federation.errors import FederationError
from federation.identity import NodeIdentity
from federation.policy_engine import NodeAttrs, PolicyEngine
from models import create_backend
from node import batch, control, sync
from node.admin import AdminApp, audit_query
from node.app import AppState, OipApp
from node.audit import AuditError, AuditLog
from node.cluster import Cluster
from node.config import Config, parse_hostport
from node.enrollment import (
    AUTHORITY_CERT,
    NODE_CERT,
    EnrollmentError,
    apply_document,
    load_identity,
    policy_bundle,
    revocations,
)
from node.federate import peer_routes, peers_view, start_federation
from node.forward import Router
from node.http import HTTPError, Receive, Scope, Send, send_json
from node.keys import NodeKeyError, key_path, load_key
from node.metrics import Metrics
from node.modelhost import ModelHost
from node.peer import PeerApp, PeerCredentials, protocol_class
from node.peer import query as peer_query
from node.probe import probe, probe_gpus
from node.pull import peer_routes as pull_routes
from node.replication import replicate_forever
from node.store import Store, StoreError, get_doc

log = logging.getLogger("outpost.daemon")

EXIT_STARTUP_FAILURE = 3


class StartupError(RuntimeError):
    """The daemon cannot start; the message is one line that names the fix."""


def server_version() -> str:
    try:
        return version("outpost")
    except PackageNotFoundError:
        return "0+unknown"


def bind_tcp(address: str, *, key: str) -> socket.socket:
    host, port = parse_hostport(address, key=key)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says TCP; without it every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"{address} is already in use (another outpost or program listens there); stop "
                f"it or choose another address with --{key.split('.')[-1].replace('_', '-')} HOST:PORT"
            ) from None
        raise StartupError(f"cannot listen on {address}: {exc.strerror}; check {key}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def bind_unix(path: Path) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # we hold the data-dir lock, so any socket file here is stale
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(64)
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns the lifecycle."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


async def _start_server(app: Any, sock: socket.socket, drain_s: float, *,
                        tls: ssl.SSLContext | None = None,
                        protocol: type[asyncio.Protocol] | None = None) -> _Server:
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        # The caller recorded in the audit log is the socket's peer: never a header a local
        # app can write (uvicorn would otherwise trust X-Forwarded-For from 127.0.0.1).
        proxy_headers=False,
        timeout_graceful_shutdown=max(drain_s, 0.01),  # type: ignore[arg-type]  # float works
        http=protocol or "httptools",
        loop="none",
    )
    config.load()
    config.ssl = tls  # a ready context: uvicorn would only build one from files
    server = _Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    return server


@dataclass
class Daemon:
    """A running node. Build with :func:`start`, stop with :meth:`stop`."""

    data_dir: Path
    config: Config
    node_id: str
    store: Store
    host: ModelHost
    metrics: Metrics
    app_state: AppState
    lock: control.DirLock
    started_at: float
    audit: AuditLog
    identity: NodeIdentity | None
    servers: list[_Server] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    listen: str = ""
    peer_listen: str = ""
    admin: AdminApp | None = None
    credentials: PeerCredentials | None = None
    peer_app: PeerApp | None = None
    cluster: Cluster | None = None
    discovery: Any = None
    policy_version: int | None = None
    engine: PolicyEngine = field(default_factory=PolicyEngine)
    router: Router | None = None
    gpus: int = 0
    background: set[asyncio.Task[Any]] = field(default_factory=set)

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` in the background, kept referenced, errors logged."""
        task = asyncio.ensure_future(coro)
        self.background.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self.background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background task failed: %s", t.exception())

        task.add_done_callback(done)

    async def status(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "version": server_version(),
            "pid": os.getpid(),
            "ready": self.app_state.ready,
            "uptime_s": round(time.time() - self.started_at, 3),
            "listen": self.listen,
            "peer_listen": self.peer_listen or None,
            "data_dir": str(self.data_dir),
            "federation": self.identity.attributes() | {"federation": self.identity.federation}
            if self.identity else None,
            "audit": {"origin": self.audit.origin, "size": self.audit.size},
            "policy_version": self.policy_version,
            "members": len(self.cluster.membership.live_members()) + 1 if self.cluster else None,
            "equivocations": [
                {"origin": e.origin, "size": e.size} for e in self.cluster.equivocations
            ] if self.cluster else [],
            "runtime": self.host.backend.describe() if self.host.backend else None,
            "models": [
                {
                    "name": s.record.name,
                    "version": s.record.version,
                    "sha256": s.record.sha256,
                    "provider": s.model.provider,
                    "queue_depth": s.model.queue_depth,
                    "dynamic_batching": s.record.signature.batch_dynamic,
                }
                for s in self.host.served()
            ],
            "capabilities": probe(self.data_dir),
        }

    def use_policy(self, version: int) -> None:
        """Put the stored policy bundle of ``version`` in force for decisions."""
        self.policy_version = version
        self.spawn(self._load_policy())

    async def _load_policy(self) -> None:
        held = await get_doc(self.store, "policy")
        if held is None:
            return
        bundle = policy_bundle(held[1], self.data_dir)
        if self.engine.bundle is None or bundle.version > self.engine.bundle.version:
            self.engine.apply(bundle)

    async def apply(self, body: bytes) -> dict[str, Any]:
        """Apply an authority-signed document (revocation list, policy bundle) live."""
        try:
            applied = await apply_document(self.store, self.data_dir, body)
        except (FederationError, EnrollmentError) as exc:
            raise ValueError(str(exc)) from exc
        if applied.unchanged:
            return applied.to_json()
        await self.audit.append(self.audit.record(f"{applied.kind}.apply", **applied.audit_fields()))
        if applied.kind == "revocation" and self.credentials is not None:
            held = await revocations(self.store, self.data_dir)
            if held is not None:
                self.credentials.update_revocations(held)
                if self.cluster is not None:
                    self.cluster.update_revocations(held)
                if self.router is not None:
                    await self.router.reset_client()
        if applied.kind == "policy":
            self.use_policy(applied.version)
        if self.cluster is not None:
            doc = await get_doc(self.store, applied.kind)
            if doc is not None:
                self.cluster.put_document(applied.kind, doc[0], doc[1])
        return applied.to_json()

    async def stop(self) -> None:
        """Drain and shut down every component, in reverse order of startup."""
        self.app_state.ready = False
        if self.discovery is not None:
            await self.discovery.stop()
        if self.cluster is not None:
            await self.cluster.stop()
        await asyncio.gather(*(s.shutdown() for s in self.servers))
        await asyncio.gather(*self.background, return_exceptions=True)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.router is not None:
            await self.router.close()
        await self.host.close()
        if self.host.backend is not None:
            await self.host.backend.close()
        await self.audit.append(self.audit.record("node.stop", caller="daemon"))
        await self.audit.close()
        await self.store.close()
        control.clear_runtime(self.data_dir)
        self.lock.release()


# Read-only views of the audit log that any enrolled peer (a witness) may ask for. Entries
# themselves go only to the collectors policy names (audit.replicate).
_PEER_AUDIT_VIEWS = frozenset({"checkpoint", "checkpoints", "proof", "consistency"})


def _peer_app(daemon: Daemon) -> PeerApp:
    app = PeerApp(lambda route: daemon.metrics.peer_requests.labels(route).inc(),
                  daemon.credentials)
    reader = daemon.audit.reader()

    async def audit_view(scope: Scope, receive: Receive, send: Send, peer: NodeIdentity,
                         rest: str) -> None:
        query = peer_query(scope)
        if rest in _PEER_AUDIT_VIEWS:
            await send_json(send, 200, await audit_query(reader, rest, query))
            return
        if rest not in ("entries", "frontier"):
            raise HTTPError(404, f"no peer audit view {rest!r}")
        # Entries (and the frontier that proves them) go only to collectors policy names.
        me = daemon.identity
        decision = daemon.engine.decide_audit_replicate(
            NodeAttrs(**peer.attributes()), NodeAttrs(**me.attributes())) if me else None
        if decision is None or not decision.allowed:
            raise HTTPError(403, f"policy does not name {peer.node_id} an audit collector of "
                                 f"{daemon.node_id} (action audit.replicate)")
        try:
            if rest == "frontier":
                size = int(query.get("size", "0"))
                if not 0 < size <= daemon.audit.size:
                    raise HTTPError(400, f"size must be between 1 and {daemon.audit.size}")
                hashes = await reader.frontier(size)
                await send_json(send, 200, {"size": size, "hashes": [b64encode(h) for h in hashes]})
                return
            start = int(query.get("start", "0"))
            end = min(int(query.get("end", str(start + 2000))), start + 2000)
        except ValueError:
            raise HTTPError(400, "start, end and size must be integers") from None
        rows = await reader.entries(start, end)
        await send_json(send, 200, [{"index": i, "entry": b64encode(e)} for i, e in rows])

    async def hello(scope: Scope, receive: Receive, send: Send, peer: NodeIdentity,
                    rest: str) -> None:
        # "time": peers estimate their clock offset from it (node.clock)
        await send_json(send, 200, {"node_id": daemon.node_id, "you": peer.node_id,
                                    "time": time.time()})

    app.route("GET", "/peer/v1/audit", audit_view)
    app.route("GET", "/peer/v1/hello", hello)
    return app


async def _tick(audit: AuditLog) -> None:
    while True:
        await asyncio.sleep(1.0)
        await audit.tick()


async def start(data_dir: Path, config: Config) -> Daemon:
    """Bring every component up; raise StartupError (nothing left running) on failure."""
    lock = control.DirLock(data_dir)
    try:
        lock.acquire(holder="outpost daemon")
    except control.Busy as exc:
        raise StartupError(str(exc)) from None
    except FileNotFoundError:
        raise StartupError(
            f"data directory {data_dir} does not exist; run `outpost init --data-dir {data_dir}`"
        ) from None
    cleanup: list[Callable[[], Awaitable[None]]] = []
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
        app_state = AppState(
            node_id=node_id,
            server_version=server_version(),
            max_body_bytes=config.node.max_body_bytes,
            default_data_class=config.node.default_data_class,
            health=backend.health,  # /v2/health/ready shows degraded + reason
        )
        app_sock = bind_tcp(config.node.listen, key="node.listen")
        admin_sock = bind_unix(data_dir / control.ADMIN_SOCKET)
        daemon = Daemon(
            data_dir=data_dir, config=config, node_id=node_id, store=store, host=host,
            metrics=metrics, app_state=app_state, lock=lock, started_at=time.time(),
            audit=audit, identity=ident,
        )
        admin = AdminApp(host, daemon.status, audit.reader(),
                         apply=daemon.apply)
        daemon.admin = admin
        held_policy = await get_doc(store, "policy")
        daemon.policy_version = held_policy[0] if held_policy else None
        if held_policy is not None and ident is not None:
            daemon.engine.apply(policy_bundle(held_policy[1], data_dir))
        daemon.gpus = len(probe_gpus())

        async def peers(_payload: dict[str, Any], _rest: str) -> tuple[int, Any]:
            return 200, await peers_view(daemon)

        admin.route("GET", "/peers", peers)
        admin.route("POST", sync.IMPORT_ROUTE, sync.admin_route(daemon))
        admin.route("POST", batch.AUDIT_ROUTE, batch.admin_route(daemon))
        from node import renew  # issue 12: certificate renewal applied live

        admin.route("POST", renew.RENEW_ROUTE, renew.admin_route(daemon))

        async def explain_route(payload: dict[str, Any], _rest: str) -> tuple[int, Any]:
            from node.explain import explain as explain_any  # every action (issue 12)

            return 200, await explain_any(daemon, payload)

        admin.route("GET", "/policy/explain", explain_route)
        drain = config.node.drain_timeout_s
        daemon.router = Router(daemon, config.placement.core(), config.placement.forward_timeout_s)
        daemon.servers.append(await _start_server(
            OipApp(app_state, host, metrics, daemon.router), app_sock, drain))
        daemon.servers.append(await _start_server(admin, admin_sock, drain))
        if ident is not None:
            daemon.credentials = PeerCredentials(
                (data_dir / NODE_CERT).read_bytes(), key_path(data_dir).read_bytes(),
                (data_dir / AUTHORITY_CERT).read_bytes(), await revocations(store, data_dir),
            )
            peer_sock = bind_tcp(config.node.peer_listen, key="node.peer_listen")
            daemon.peer_app = _peer_app(daemon)
            peer_routes(daemon)
            pull_routes(daemon)
            daemon.servers.append(await _start_server(
                daemon.peer_app, peer_sock, drain,
                tls=daemon.credentials.listening_context(),
                protocol=protocol_class(daemon.credentials),
            ))
            peer_host, peer_port = peer_sock.getsockname()[:2]
            daemon.peer_listen = f"{peer_host}:{peer_port}"
            try:
                daemon.cluster = await start_federation(daemon, key)
            except OSError as exc:
                raise StartupError(
                    f"cannot open UDP {daemon.peer_listen} for gossip ({exc.strerror}); free "
                    "the port or choose another with --peer-listen HOST:PORT"
                ) from None
        host_addr, port = app_sock.getsockname()[:2]
        daemon.listen = f"{host_addr}:{port}"
        from node.obs import instrument  # issue 12: gauges, audit timing, metrics_listen

        await instrument(daemon)
    except BaseException:
        for close in reversed(cleanup):
            with contextlib.suppress(Exception):
                await close()
        lock.release()
        raise
    control.write_runtime(data_dir, control.RuntimeInfo(
        pid=os.getpid(), listen=daemon.listen,
        admin_socket=str(data_dir / control.ADMIN_SOCKET), node_id=node_id,
        peer_listen=daemon.peer_listen,
    ))
    await audit.append(audit.record(
        "node.start", caller="daemon",
        detail={"version": server_version(), "models": len(host.served())},
    ))
    daemon.tasks.append(asyncio.create_task(_tick(audit), name="audit-ticker"))
    if daemon.cluster is not None:
        daemon.tasks.append(asyncio.create_task(replicate_forever(daemon), name="replication"))
    app_state.ready = True
    log.info("node %s ready: app endpoint http://%s, admin %s", node_id, daemon.listen,
             data_dir / control.ADMIN_SOCKET)
    return daemon


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
