"""Authority-signed documents (policy bundles, revocation lists) put in force: the one way.

Owns: :func:`apply_signed` — verify, refuse rollback, store, record ``<kind>.apply`` in the
audit log — used by every path that hands this node a document: ``outpost apply`` with or
without a daemon (admin ``POST /apply``), ``outpost bundle import``; :class:`Documents`, the
daemon's document sink, which adds the live effects (new trust for TLS, the policy engine,
gossip) and takes documents that arrived by gossip (already verified by the cluster); and
:class:`PolicyState`, the policy in force (the :class:`node.ports.PolicyView` of the node).

Must never: put a document in force that did not verify against this node's authority, or
that is not newer than the one held; apply the same document twice (gossip repeats).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from federation.identity import RevocationList, read_revocation_list
from federation.policy_engine import PolicyEngine
from node.enrollment import AUTHORITY_CERT, Applied, apply_document, policy_bundle, revocations
from node.ports import AuditSink, Spawner
from node.store import Store, get_doc, put_doc

log = logging.getLogger("outpost.documents")

__all__ = ["Documents", "PolicyState", "apply_signed"]


async def apply_signed(store: Store, data_dir: Path, audit: AuditSink, body: bytes) -> Applied:
    """Verify ``body``, refuse rollback, store it and record it; raise (changing nothing)
    ``FederationError`` or ``EnrollmentError`` naming the fix when it is refused."""
    applied = await apply_document(store, data_dir, body)
    if applied.unchanged:  # the same document again: a no-op, said so, nothing recorded
        return applied
    await audit.append(audit.record(f"{applied.kind}.apply", **applied.audit_fields()))
    return applied


class PolicyState:
    """The policy bundle in force on a running node, loaded from the store."""

    def __init__(self, store: Store, data_dir: Path, tasks: Spawner) -> None:
        self._store = store
        self._data_dir = data_dir
        self._tasks = tasks
        self._engine = PolicyEngine()
        self._version: int | None = None

    @classmethod
    async def load(cls, store: Store, data_dir: Path, tasks: Spawner, *,
                   enrolled: bool) -> PolicyState:
        """The policy held in the store, in force (only an enrolled node can verify it)."""
        state = cls(store, data_dir, tasks)
        held = await get_doc(store, "policy")
        state._version = held[0] if held else None
        if held is not None and enrolled:
            state._engine.apply(policy_bundle(held[1], data_dir))
        return state

    @property
    def engine(self) -> PolicyEngine:
        return self._engine

    @property
    def version(self) -> int | None:
        return self._version

    def use(self, version: int) -> None:
        """Put the stored bundle of ``version`` in force (loaded in the background)."""
        self._version = version
        self._tasks.spawn(self._load(), name="policy-load")

    async def _load(self) -> None:
        held = await get_doc(self._store, "policy")
        if held is None:
            return
        bundle = policy_bundle(held[1], self._data_dir)
        if self._engine.bundle is None or bundle.version > self._engine.bundle.version:
            self._engine.apply(bundle)


RevocationHook = Callable[[RevocationList], Awaitable[None] | None]
SpreadHook = Callable[[str, int, bytes], None]


class Documents:
    """The daemon's document sink: documents applied by the operator or received by gossip,
    with their live effects. Components that care subscribe while the daemon is assembled
    (:meth:`on_revocation`, :meth:`on_applied`); nothing is looked up later."""

    def __init__(self, store: Store, data_dir: Path, audit: AuditSink,
                 policy: PolicyState) -> None:
        self._store = store
        self._data_dir = data_dir
        self._audit = audit
        self._policy = policy
        self._revocation_hooks: list[RevocationHook] = []
        self._spread_hooks: list[SpreadHook] = []

    def on_revocation(self, hook: RevocationHook) -> None:
        """Call ``hook`` with every new revocation list in force (TLS trust, membership)."""
        self._revocation_hooks.append(hook)

    def on_applied(self, hook: SpreadHook) -> None:
        """Call ``hook(kind, version, body)`` for every document the operator applied here
        (gossip hands it on); not for documents that came by gossip."""
        self._spread_hooks.append(hook)

    async def apply(self, body: bytes) -> dict[str, Any]:
        """``POST /apply`` and bundle import: verify, store, record, put in force, spread."""
        applied = await apply_signed(self._store, self._data_dir, self._audit, body)
        if applied.unchanged:
            return applied.to_json()
        if applied.kind == "revocation":
            held = await revocations(self._store, self._data_dir)
            if held is not None:
                await self._revoked(held)
        else:
            self._policy.use(applied.version)
        doc = await get_doc(self._store, applied.kind)
        if doc is not None:
            for spread in self._spread_hooks:
                spread(applied.kind, doc[0], doc[1])
        return applied.to_json()

    async def received(self, kind: str, version: int, body: bytes, source: str | None) -> None:
        """A document arrived by gossip (verified by the cluster): keep it and record it,
        once, then put it in force."""
        held = await get_doc(self._store, kind)
        if held is not None and held[0] >= version:
            return
        await put_doc(self._store, kind, version, body)
        if kind == "revocation":
            authority = (self._data_dir / AUTHORITY_CERT).read_bytes()
            await self._revoked(read_revocation_list(body, authority))
        elif kind == "policy":
            self._policy.use(version)
        fields = Applied(kind, version, f"{kind} v{version} received by gossip").audit_fields()
        fields["caller"] = f"gossip:{source}" if source else "gossip"
        await self._audit.append(self._audit.record(f"{kind}.apply", **fields))
        log.info("%s v%d received by gossip and applied", kind, version)

    async def _revoked(self, held: RevocationList) -> None:
        for hook in self._revocation_hooks:
            result = hook(held)
            if result is not None:
                await result
