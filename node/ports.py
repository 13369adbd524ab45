"""The narrow seams between the daemon's components, as ``typing.Protocol``s.

Each consumer states what it needs of the rest of the node with one of these (or with a
Protocol of its own beside its code, like ``ClusterDeps`` and ``LiveNode``), and
``node.daemon`` — the one module that assembles a node — hands it the component that has it.
So no component imports the daemon, and a test can hand a consumer a small stand-in.

===================  ============================================  ===========================
Protocol             implemented by                                consumed by
===================  ============================================  ===========================
AuditSink            ``node.audit.AuditLog``                       forward, federate, pull,
                                                                   batch, documents, daemon
PolicyView           ``node.documents.PolicyState``                forward, federate, pull,
                                                                   replication, batch
PeerDirectory        ``node.cluster.Cluster``, :class:`NoPeers`    forward, federate
Spawner              ``node.tasks.TaskOwner``                      federate, documents
ModelSource          ``node.modelhost.ModelHost``                  forward, pull, federate
===================  ============================================  ===========================

Must never: import a component module at run time (only for type checking), so that every
module may import this one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    from federation.audit import AuditEntry
    from federation.identity import NodeIdentity
    from federation.placement import Candidate
    from federation.policy_engine import PolicyEngine
    from models.blobs import BlobStore
    from node.modelhost import Served
    from node.store import Store

__all__ = ["AuditSink", "ModelSource", "NoPeers", "PeerDirectory", "PolicyView", "Spawner"]


class AuditSink(Protocol):
    """Where a component records what it decided: this node's own audit log."""

    @property
    def size(self) -> int: ...

    def record(self, kind: str, **fields: Any) -> AuditEntry: ...

    async def append(self, entry: AuditEntry) -> int: ...

    def append_bytes(self, entry: bytes, *, alone: bool = False) -> Awaitable[int]: ...


class PolicyView(Protocol):
    """The policy in force: the engine that decides, and the bundle version (None: none)."""

    @property
    def engine(self) -> PolicyEngine: ...

    @property
    def version(self) -> int | None: ...


class PeerDirectory(Protocol):
    """Who the peers are, as membership and their verified adverts say."""

    def candidates(self, now: float) -> list[Candidate]: ...

    def address_of(self, node_id: str) -> str | None: ...

    def peers(self) -> list[dict[str, Any]]: ...


class NoPeers:
    """The peer directory of a node that is not enrolled: it knows nobody."""

    def candidates(self, now: float) -> list[Candidate]:
        return []

    def address_of(self, node_id: str) -> str | None:
        return None

    def peers(self) -> list[dict[str, Any]]:
        return []


class Spawner(Protocol):
    """Runs one-shot work in the background, owned (and bounded at shutdown) by the daemon."""

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str = "background") -> None: ...


class ModelSource(Protocol):
    """The models served here."""

    @property
    def blobs(self) -> BlobStore: ...

    def served(self) -> list[Served]: ...

    def resolve(self, name: str, version: str | None = None) -> Served: ...


class RunningNode(Protocol):
    """The running daemon as the operator-facing services see it (``node.service``,
    ``node.obs``, ``node.renew``, ``node.clock``): read-mostly views of its components. Only
    ``node.daemon`` builds one; these modules never import it."""

    @property
    def data_dir(self) -> Path: ...
    @property
    def node_id(self) -> str: ...
    @property
    def store(self) -> Store: ...
    @property
    def audit(self) -> Any: ...  # node.audit.AuditLog
    @property
    def host(self) -> Any: ...  # node.modelhost.ModelHost
    @property
    def metrics(self) -> Any: ...  # node.metrics.Metrics
    @property
    def admin(self) -> Any: ...  # node.admin.AdminApp
    @property
    def servers(self) -> list[Any]: ...
    @property
    def listen(self) -> str: ...
    @property
    def enrollment(self) -> Any: ...  # node.daemon.Enrollment | None
    @property
    def peer_clients(self) -> Any: ...  # node.peerclient.PeerClients | None

    @property
    def config(self) -> Any: ...  # node.config.Config

    @property
    def policy(self) -> Any: ...  # node.documents.PolicyState

    @property
    def policy_version(self) -> int | None: ...

    @property
    def identity(self) -> NodeIdentity | None: ...

    @property
    def credentials(self) -> Any: ...  # node.peer.PeerCredentials | None

    @property
    def cluster(self) -> Any: ...  # node.cluster.Cluster | None

    @property
    def trail(self) -> Any: ...  # node.trail.Trail

