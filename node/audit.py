"""The node's audit log on disk: durable group-committed appends, signed checkpoints, proofs.

The math (entries, RFC 9162 hashing, compact ranges, checkpoints, verification) is in
``federation``; this module stores it in the node's SQLite database as ``federation.audit``
describes, and owns one thing more: **durability before acknowledgement**. ``append`` returns
only after the transaction holding the entry, its Merkle nodes and a freshly signed head
checkpoint has committed (``synchronous=FULL``). Concurrent appends are batched into one
transaction (group commit), which is what makes thousands of durable appends per second
possible on one fsync per batch.

A ``kill -9`` at any moment either loses a whole uncommitted batch (whose callers were never
answered) or nothing; entries, nodes and head are in one transaction, so the stored log always
verifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from federation.audit import AuditEntry, VerifyReport, log_origin, verify_log
from federation.merkle import (
    CompactRange,
    ConsistencyProof,
    InclusionProof,
    NodeId,
    consistency_plan,
    inclusion_plan,
    leaf_hash,
    node_key,
    root_plan,
)
from federation.note import Checkpoint, Signer, Verifier
from node.config import AuditSection
from node.store import Store

log = logging.getLogger("outpost.audit")

T = TypeVar("T")

class AuditError(RuntimeError):
    """The audit log cannot append or answer; the message names the fix."""


def now_rfc3339() -> str:
    from federation.canonical import rfc3339

    return rfc3339(datetime.now(UTC))


@dataclass
class _Pending:
    entry: bytes
    future: asyncio.Future[int]


class AuditLog:
    """One node's log. Create with :meth:`open`; close with :meth:`close`.

    Appends queue on the event loop; one writer thread with its own SQLite connection takes
    them in groups and does everything else off the loop — leaf hashes, Merkle nodes, the
    signed head, the transaction and its fsync — then the loop answers the callers.
    """

    def __init__(self, store: Store, signer: Signer, config: AuditSection,
                 verifiers: list[Verifier], cr: CompactRange, head: str | None,
                 last_retained: int, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.signer = signer
        self.config = config
        self.verifiers = verifiers
        self._cr = cr
        self._head = head
        self._last_retained_size = last_retained
        self._last_retained_at = clock()
        self._clock = clock
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")
        self._db: sqlite3.Connection | None = None
        self._closed = False
        self.appended = 0  # entries committed by this process (for metrics)
        self.commits = 0

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, store: Store, key: Any, node_id: str, federation: str | None,
                   config: AuditSection) -> AuditLog:
        origin = log_origin(node_id, federation)
        signer = Signer(origin, key)
        verifiers = [Signer(log_origin(node_id, None), key).verifier]
        if federation:
            verifiers.append(signer.verifier)
        async with store.conn.execute("SELECT size, note FROM audit_head WHERE id = 0") as cur:
            row = await cur.fetchone()
        size, head = (int(row[0]), str(row[1])) if row else (0, None)
        wanted = CompactRange.nodes_for(size)
        hashes = await _fetch_nodes(store, wanted)
        missing = [n for n in wanted if n not in hashes]
        if missing:
            raise AuditError(
                f"audit log in {store.path} is damaged: {len(missing)} Merkle nodes of the "
                f"head (size {size}) are missing; run `outpost audit verify` to locate the damage"
            )
        cr = CompactRange(size, [hashes[n] for n in wanted])
        async with store.conn.execute("SELECT MAX(size) FROM audit_checkpoint") as cur:
            last = await cur.fetchone()
        audit = cls(store, signer, config, verifiers, cr, head,
                    int(last[0]) if last and last[0] is not None else 0)
        await audit._run(audit._connect)
        audit._writer = asyncio.create_task(audit._write_loop(), name="audit-writer")
        return audit

    def _connect(self) -> None:
        db = sqlite3.connect(self.store.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        self._db = db

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def close(self) -> None:
        """Commit everything pending, retain a final checkpoint, stop the writer."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._writer is not None:
            await self._writer
        if self._cr.size > self._last_retained_size and self._head is not None:
            await self._run(self._retain_sync, self._cr.size, self._head)
        if self._db is not None:
            await self._run(self._db.close)
        self._thread.shutdown(wait=True)

    @property
    def origin(self) -> str:
        return self.signer.name

    @property
    def size(self) -> int:
        return self._cr.size

    # -- appending ---------------------------------------------------------------------------

    async def append(self, entry: AuditEntry) -> int:
        """Append ``entry``; returns its index once it is durable."""
        return await self.append_bytes(entry.to_bytes())

    async def append_bytes(self, entry: bytes) -> int:
        if self._closed:
            raise AuditError("audit log is closed (daemon stopping); retry on the next start")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(entry, future))
        self._wake.set()
        return await future

    def record(self, kind: str, **fields: Any) -> AuditEntry:
        """Build an entry of ``kind`` stamped now (helper for callers)."""
        return AuditEntry(time=now_rfc3339(), kind=kind, **fields)

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[: self.config.max_group]
                del self._pending[: len(batch)]
                try:
                    first = await self._run(self._commit_sync, [p.entry for p in batch])
                except BaseException as exc:
                    log.exception("audit commit of %d entries failed", len(batch))
                    for p in batch:
                        if not p.future.done():
                            p.future.set_exception(AuditError(
                                f"audit append failed ({exc}); the entry was not recorded — "
                                "check disk space and the daemon log"
                            ))
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                self.appended += len(batch)
                self.commits += 1
                for i, p in enumerate(batch):
                    if not p.future.done():
                        p.future.set_result(first + i)
            if self._closed and not self._pending:
                return

    def _commit_sync(self, entries: list[bytes]) -> int:
        """On the writer thread: one transaction holding the entries, their Merkle nodes and
        a newly signed head; the shared state changes only after COMMIT returned."""
        assert self._db is not None
        cr = self._cr.copy()
        first = cr.size
        nodes: list[tuple[int, bytes]] = []
        for entry in entries:
            nodes.extend((n.key, n.hash) for n in cr.append(leaf_hash(entry)))
        head = Checkpoint(self.origin, cr.size, cr.root()).sign([self.signer])
        retain = self._due(cr.size)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT INTO audit_entry(seq, entry) VALUES(?, ?)",
                           [(first + i, e) for i, e in enumerate(entries)])
            db.executemany("INSERT INTO audit_node(id, hash) VALUES(?, ?)", nodes)
            db.execute(
                "INSERT INTO audit_head(id, size, note) VALUES(0, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET size=excluded.size, note=excluded.note",
                (cr.size, head),
            )
            if retain:
                db.execute(
                    "INSERT OR REPLACE INTO audit_checkpoint(size, note, created) VALUES(?,?,?)",
                    (cr.size, head, self._clock()),
                )
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                db.execute("ROLLBACK")
            raise
        self._cr, self._head = cr, head
        if retain:
            self._last_retained_size, self._last_retained_at = cr.size, self._clock()
        return first

    def _due(self, size: int) -> bool:
        grown = size - self._last_retained_size
        if grown <= 0:
            return False
        return (grown >= self.config.checkpoint_every_entries
                or self._clock() - self._last_retained_at >= self.config.checkpoint_every_s)

    def _retain_sync(self, size: int, note: str) -> None:
        assert self._db is not None
        self._db.execute(
            "INSERT OR REPLACE INTO audit_checkpoint(size, note, created) VALUES(?, ?, ?)",
            (size, note, self._clock()),
        )
        self._last_retained_size, self._last_retained_at = size, self._clock()

    async def tick(self) -> None:
        """Retain a checkpoint when ``checkpoint_every_s`` passed with growth (timer-driven)."""
        if self._head is not None and not self._closed and self._due(self._cr.size):
            await self._run(self._retain_sync, self._cr.size, self._head)

    # -- reading -----------------------------------------------------------------------------

    def checkpoint(self) -> str | None:
        """The newest signed checkpoint (covers every committed entry)."""
        return self._head


def _blob(value: object) -> bytes:
    """Entries are BLOBs; a hand-edited row may come back as TEXT — verify what is there."""
    return value.encode() if isinstance(value, str) else bytes(value)  # type: ignore[call-overload]


async def _fetch_nodes(store: Store, nodes: Iterable[NodeId]) -> dict[NodeId, bytes]:
    """Node hashes by (level, index), one database hand-off per 500 nodes (a proof at 10^6
    entries needs ~20: one hand-off)."""
    wanted = {node_key(level, index): (level, index) for level, index in nodes}
    if not wanted:
        return {}
    out: dict[NodeId, bytes] = {}
    keys = list(wanted)
    for i in range(0, len(keys), 500):
        chunk = keys[i : i + 500]
        marks = ",".join("?" * len(chunk))
        rows = await store.conn.execute_fetchall(
            f"SELECT id, hash FROM audit_node WHERE id IN ({marks})", chunk
        )
        for key, value in rows:
            out[wanted[int(key)]] = bytes(value)
    return out


# -- read-side operations shared by the daemon (admin API) and the CLI (offline) ---------------


class AuditReader:
    """Queries over a node's stored log; works on a live daemon's database (WAL readers)."""

    def __init__(self, store: Store, verifiers: list[Verifier]) -> None:
        self.store = store
        self.verifiers = verifiers

    async def size(self) -> int:
        rows = list(await self.store.conn.execute_fetchall(
            "SELECT size FROM audit_head WHERE id = 0"))
        return int(rows[0][0]) if rows else 0

    async def head(self) -> str | None:
        async with self.store.conn.execute("SELECT note FROM audit_head WHERE id = 0") as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else None

    async def checkpoints(self) -> list[tuple[int, str]]:
        async with self.store.conn.execute(
            "SELECT size, note FROM audit_checkpoint ORDER BY size"
        ) as cur:
            return [(int(s), str(n)) for s, n in await cur.fetchall()]

    async def checkpoint_at(self, size: int) -> str | None:
        async with self.store.conn.execute(
            "SELECT note FROM audit_checkpoint WHERE size = ?", (size,)
        ) as cur:
            row = await cur.fetchone()
        if row:
            return str(row[0])
        async with self.store.conn.execute(
            "SELECT note FROM audit_head WHERE id = 0 AND size = ?", (size,)
        ) as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else None

    async def entries(self, start: int = 0, end: int | None = None) -> list[tuple[int, bytes]]:
        query = "SELECT seq, entry FROM audit_entry WHERE seq >= ?"
        args: list[int] = [start]
        if end is not None:
            query += " AND seq < ?"
            args.append(end)
        async with self.store.conn.execute(query + " ORDER BY seq", args) as cur:
            return [(int(s), _blob(e)) for s, e in await cur.fetchall()]

    async def tail(self, n: int) -> list[tuple[int, bytes]]:
        size = await self.size()
        return await self.entries(max(0, size - n), size)

    async def inclusion_proof(self, index: int, size: int | None = None) -> InclusionProof:
        current = await self.size()
        size = current if size is None else size
        if not 0 < size <= current:
            raise AuditError(f"tree size {size} is not between 1 and the log size {current}")
        if not 0 <= index < size:
            raise AuditError(f"leaf index {index} is not below the tree size {size}")
        plan = inclusion_plan(index, size)
        found = await _fetch_nodes(self.store, [*plan.nodes, (0, index)])  # one hand-off
        return InclusionProof(index, size, found[(0, index)], tuple(plan.assemble(found)))

    async def consistency_proof(self, old: int, new: int | None = None) -> ConsistencyProof:
        current = await self.size()
        new = current if new is None else new
        if not 0 < old <= new <= current:
            raise AuditError(
                f"need 0 < old ({old}) <= new ({new}) <= log size ({current})"
            )
        plan = consistency_plan(old, new)
        hashes = plan.assemble(await _fetch_nodes(self.store, plan.nodes))
        return ConsistencyProof(old, new, tuple(hashes))

    async def frontier(self, size: int) -> list[bytes]:
        """The compact-range hashes of the first ``size`` leaves (what a collector needs to
        check that entries from ``size`` on extend the copy it holds)."""
        wanted = CompactRange.nodes_for(size)
        found = await _fetch_nodes(self.store, wanted)
        return [found[n] for n in wanted]

    async def root(self, size: int) -> bytes:
        plan = root_plan(size)
        return plan.assemble(await _fetch_nodes(self.store, plan.nodes))[0]

    async def verify(self) -> VerifyReport:
        """Recompute the whole tree from the stored entries; check every stored checkpoint."""
        checkpoints = await self.checkpoints()
        head_size = await self.size()
        head = await self.head()
        if head is not None:
            checkpoints.append((head_size, head))
        rows = await self.entries()
        entries = [e for _, e in rows]
        seqs = [s for s, _ in rows]
        nodes: dict[int, bytes] = {}
        async with self.store.conn.execute("SELECT id, hash FROM audit_node") as cur:
            async for key, value in cur:
                nodes[int(key)] = bytes(value)

        def stored(level: int, index: int) -> bytes | None:
            return nodes.get(node_key(level, index))

        report = verify_log(entries, checkpoints, self.verifiers, stored=stored)
        if seqs != list(range(len(seqs))) and report.ok:
            gap = next(i for i, s in enumerate(seqs) if s != i)
            return VerifyReport(
                entries=report.entries, checkpoints=report.checkpoints,
                verified_size=report.verified_size, first_bad_index=gap, exact=True,
                problems=(f"entry index {gap} is missing or out of place in the store",),
            )
        return report

    async def iterate(self, start: int = 0) -> AsyncIterator[tuple[int, bytes]]:
        async with self.store.conn.execute(
            "SELECT seq, entry FROM audit_entry WHERE seq >= ? ORDER BY seq", (start,)
        ) as cur:
            async for seq, entry in cur:
                yield int(seq), _blob(entry)
