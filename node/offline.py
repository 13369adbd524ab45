"""Opening a node without its daemon: the one way.

Two doors, for the two things a command may do while no daemon runs:

- :func:`read_store` — read the database (audit trail, documents, replicas, models). SQLite
  in WAL mode lets readers run beside a daemon, so no lock is taken and it works either way.
- :func:`run_offline` — change the node: under the data-directory lock (so no daemon starts
  meanwhile), with the node's own audit log (every change is recorded exactly as the daemon
  would record it), the same ``ModelHost`` and the same :func:`node.documents.apply_signed`
  the daemon uses. Raises ``Busy`` when another process holds the directory (a running
  daemon: the caller should have reached it with ``node.client.connect`` first).

Reaching a running daemon is ``node.client.connect`` (the admin socket). Must never: write
the database or the audit log of a node whose daemon is running.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from federation.identity import NodeIdentity
from node import config as cfg
from node import control
from node.audit import AuditLog
from node.documents import apply_signed
from node.enrollment import load_identity
from node.keys import load_key
from node.limits import OFFLINE_LOCK_RETRY_S
from node.modelhost import ModelHost
from node.store import Store

__all__ = ["OfflineNode", "read_store", "run_offline"]

T = TypeVar("T")


@dataclass(frozen=True)
class OfflineNode:
    """A node opened by a command: what the daemon would hold, minus the network."""

    data_dir: Path
    config: cfg.Config
    identity: NodeIdentity | None  # None before `outpost join`
    store: Store
    audit: AuditLog
    host: ModelHost

    async def apply(self, body: bytes) -> dict[str, Any]:
        """Apply an authority-signed document exactly as the daemon's ``POST /apply``
        would, minus the live effects (there is no daemon to affect)."""
        return (await apply_signed(self.store, self.data_dir, self.audit, body)).to_json()


def read_store(data_dir: Path, fn: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``fn(store)`` on the node's database, read-only by convention; no lock."""

    async def go() -> T:
        store = await Store.open(data_dir)
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(go())


def run_offline(data_dir: Path, holder: str, fn: Callable[[OfflineNode], Awaitable[T]], *,
                config: Callable[[Path], cfg.Config] = cfg.load,
                prepare: Callable[[], Any] | None = None, wait_s: float = 0.0) -> T:
    """Run ``fn`` on the node opened whole, under the data-directory lock held as
    ``holder``; wait up to ``wait_s`` for another command to release the lock.

    ``prepare`` runs under the lock before the node is opened (``outpost join`` installs
    the certificate there, so the audit log opens with the new origin); ``config`` reads
    the configuration, after ``prepare``. Key and identity are read under the lock too."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with control.offline_lock(data_dir, holder):
                if prepare is not None:
                    prepare()
                return asyncio.run(_open(data_dir, config(data_dir), fn))
        except control.Busy:
            if time.monotonic() >= deadline or control.read_runtime(data_dir) is not None:
                raise
            time.sleep(OFFLINE_LOCK_RETRY_S)


async def _open(data_dir: Path, config: cfg.Config,
                fn: Callable[[OfflineNode], Awaitable[T]]) -> T:
    key = load_key(data_dir)
    ident = load_identity(data_dir)
    store = await Store.open(data_dir)
    try:
        audit = await AuditLog.open(store, key, config.node.name,
                                    ident.federation if ident else None, config.audit)
        try:
            host = ModelHost(store, data_dir, max_model_bytes=config.models.max_model_bytes,
                             audit=audit)
            return await fn(OfflineNode(data_dir, config, ident, store, audit, host))
        finally:
            await audit.close()
    finally:
        await store.close()
