"""The node's audit log on disk: durable group-committed appends, signed checkpoints, proofs.

The math (entries, RFC 9162 hashing, compact ranges, checkpoints, verification) is in
``federation``; this module stores it in the node's SQLite database as ``federation.audit``
describes, and owns one thing more: **durability before acknowledgement**. ``append`` returns
only after the transaction holding the entry and its Merkle nodes has committed: with
``audit.sync = "full"`` (the default) ``synchronous=FULL``, the WAL fsynced, survives power
loss; with ``"normal"`` committed to the WAL unsynced, survives kill -9 but not a power cut,
and then every head write is fsynced instead, so no checkpoint leaves the node ahead of what
is on disk. Concurrent appends are batched into one
transaction (group commit), which is what makes thousands of durable appends per second
possible on one fsync per batch.

The signed head is not on that path. A checkpoint is a pure function of the durable entries:
the root at a size is fixed by them, and Ed25519 signatures are deterministic, so a head
signed later — or again after a crash — is byte-identical. The writer signs and stores the
head once it is idle for ``HEAD_IDLE_S``, at least every ``HEAD_MAX_LAG_S`` under load, at
once when the retention cadence is due, and on close; ``checkpoint()`` signs the current size
on demand, and readers from :meth:`AuditLog.reader` store it first. Theory of operation::

    event loop                                  writer thread (own sqlite3 connection)
    ----------                                  ------------------------------------
    append_bytes(entry)                         wait for entries (or a head to write)
      queue (entry, future); writer asleep?     take up to max_group entries
        one kick per loop iteration
      await future                              leaf hashes + Merkle nodes, one transaction,
                                                  COMMIT + fsync
    _committed(): publish the new size,   <--   call_soon_threadsafe
      answer every caller of the group          idle / lagging / cadence due / asked:
                                                  sign head, store it (no fsync of its own:
                                                  the next group's fsync or close covers it)

A ``kill -9`` at any moment either loses a whole uncommitted group (whose callers were never
answered) or nothing. Entries and their nodes are in one transaction, so the stored log always
verifies; a head older than the entries is healed when the log is opened again (entries after
the newest signed head verify against their stored leaf hashes meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
from node.errors import NodeFault
from node.limits import AUDIT_HEAD_IDLE_S, AUDIT_HEAD_MAX_LAG_S
from node.store import Store

log = logging.getLogger("outpost.audit")

# Head timing, with the reasons, is in node.limits.
HEAD_IDLE_S = AUDIT_HEAD_IDLE_S
HEAD_MAX_LAG_S = AUDIT_HEAD_MAX_LAG_S


class AuditError(NodeFault):
    """The audit log cannot append or answer; the message names the fix."""


_second: tuple[int, str] = (-1, "")


def now_rfc3339() -> str:
    """The wall clock as ``federation.canonical.rfc3339`` spells it (microseconds, ``Z``);
    the date and time of day are formatted once per second (this runs once per request)."""
    global _second
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    if seconds != _second[0]:
        _second = (seconds, datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_second[1]}.{nanos // 1000:06d}Z"


@dataclass
class _Committed:
    """What the writer hands back to the loop for one group."""

    first: int
    cr: CompactRange
    futures: list[asyncio.Future[int]]
    error: BaseException | None = None


class AuditLog:
    """One node's log. Create with :meth:`open`; close with :meth:`close`.

    Appends queue under a lock; one writer thread with its own SQLite connection takes them in
    groups and does everything else off the loop — leaf hashes, Merkle nodes, the transaction
    and its fsync, and later the signed head — then the loop answers the callers.
    """

    def __init__(self, store: Store, signer: Signer, config: AuditSection,
                 verifiers: list[Verifier], cr: CompactRange, head_size: int,
                 last_retained: int, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.signer = signer
        self.config = config
        self._entry_sync = "FULL" if config.sync == "full" else "NORMAL"
        self.verifiers = verifiers
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        # Loop side: the committed frontier callers have been answered for; a signed-note cache.
        self._cr = cr
        self._note: tuple[int, str] | None = None
        self._head_waiters: list[tuple[int, asyncio.Future[None]]] = []
        # Shared, under _cond: appends waiting for the writer, flags.
        self._cond = threading.Condition()
        self._queue: deque[tuple[bytes, asyncio.Future[int]]] = deque()
        self._head_wanted = False
        self._closing = False
        self._writer_waiting = False  # the writer sleeps on _cond (set under the lock)
        self._kick_due = False  # a wake-up is scheduled on the loop
        # Writer thread only.
        self._wcr = cr
        self._stored_head = head_size
        self._last_commit = time.monotonic()
        self._last_head = time.monotonic()
        self._head_retry_at = 0.0  # after a failed head write, wait before trying again
        self._last_retained_size = last_retained
        self._last_retained_at = clock()
        self._db: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
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
        async with store.conn.execute("SELECT size FROM audit_head WHERE id = 0") as cur:
            row = await cur.fetchone()
        head_size = int(row[0]) if row else 0
        async with store.conn.execute("SELECT MAX(seq) FROM audit_entry") as cur:
            row = await cur.fetchone()
        entries = int(row[0]) + 1 if row and row[0] is not None else 0
        # Entries past the stored head: the daemon stopped before it stored a newer head
        # (their nodes were committed with them). The writer signs and stores it shortly.
        size = max(head_size, entries)
        wanted = CompactRange.nodes_for(size)
        hashes = await _fetch_nodes(store, wanted)
        missing = [n for n in wanted if n not in hashes]
        if missing:
            raise AuditError(
                f"audit log in {store.path} is damaged: {len(missing)} Merkle nodes of the "
                f"tree of size {size} are missing; run `outpost audit verify` to locate the "
                "damage"
            )
        cr = CompactRange(size, [hashes[n] for n in wanted])
        async with store.conn.execute("SELECT MAX(size) FROM audit_checkpoint") as cur:
            last = await cur.fetchone()
        audit = cls(store, signer, config, verifiers, cr, head_size,
                    int(last[0]) if last and last[0] is not None else 0)
        ready: asyncio.Future[None] = audit._loop.create_future()
        audit._thread = threading.Thread(target=audit._writer, args=(ready,),
                                         name="audit-writer", daemon=True)
        audit._thread.start()
        await ready
        return audit

    async def close(self) -> None:
        """Commit everything pending, store the final head (fsynced), stop the writer."""
        if self._closed:
            return
        self._closed = True
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        for _, future in self._head_waiters:  # the final head could not be stored: stop waiting
            _settle(future, None)
        self._head_waiters.clear()

    @property
    def origin(self) -> str:
        return self.signer.name

    @property
    def size(self) -> int:
        """Entries committed (and answered for)."""
        return self._cr.size

    # -- appending ---------------------------------------------------------------------------

    async def append(self, entry: AuditEntry) -> int:
        """Append ``entry``; returns its index once it is durable."""
        return await self.append_bytes(entry.to_bytes())

    def append_bytes(self, entry: bytes, *, alone: bool = False) -> Awaitable[int]:
        """Queue ``entry`` now (so the order of calls is the order in the log); the awaitable
        resolves to its index once it is durable. ``alone``: the caller knows nothing else is
        being appended, so a sleeping writer is woken now rather than once the loop iteration
        has queued everything it will (which makes one group of it)."""
        if self._closed:
            raise AuditError("audit log is closed (daemon stopping); retry on the next start")
        future: asyncio.Future[int] = self._loop.create_future()
        self._queue.append((entry, future))  # deque: safe against the writer's pops
        # Read after the append (the writer announces itself before it checks the queue). One
        # wake-up per loop iteration: what the iteration queued becomes one group.
        if self._writer_waiting:
            if alone:
                self._kick()
            elif not self._kick_due:
                self._kick_due = True
                self._loop.call_soon(self._kick)
        return future

    def _kick(self) -> None:
        self._kick_due = False
        with self._cond:
            self._cond.notify()

    def record(self, kind: str, **fields: Any) -> AuditEntry:
        """Build an entry of ``kind`` stamped now (helper for callers)."""
        return AuditEntry(time=now_rfc3339(), kind=kind, **fields)

    def _committed(self, done: _Committed) -> None:
        """On the loop: publish a committed group and answer its callers."""
        if done.error is not None:
            for future in done.futures:
                if not future.done():
                    future.set_exception(AuditError(
                        f"audit append failed ({done.error}); the entry was not recorded — "
                        "check disk space and the daemon log"
                    ))
            return
        self._cr = done.cr
        self.appended += len(done.futures)
        self.commits += 1
        for i, future in enumerate(done.futures):
            if not future.done():  # the caller went away; the entry is recorded all the same
                future.set_result(done.first + i)

    # -- the signed head ---------------------------------------------------------------------

    def checkpoint(self) -> str | None:
        """The signed checkpoint of every committed entry (signed here when newer than the
        cached one; identical to the one the writer stores for that size)."""
        cr = self._cr
        if cr.size == 0:
            return None
        if self._note is None or self._note[0] != cr.size:
            self._note = (cr.size, Checkpoint(self.origin, cr.size, cr.root()).sign([self.signer]))
        return self._note[1]

    async def store_head(self) -> None:
        """Return once the stored head covers every entry answered so far."""
        size = self._cr.size
        if self._closed:
            return
        future: asyncio.Future[None] = self._loop.create_future()
        with self._cond:
            if self._stored_head >= size:
                return
            self._head_waiters.append((size, future))
            self._head_wanted = True
            self._cond.notify()
        await future

    def reader(self) -> AuditReader:
        """A reader over this log whose head queries first store the current head."""
        return AuditReader(self.store, self.verifiers, before_head=self.store_head)

    async def tick(self) -> None:
        """Let the writer retain a checkpoint when ``checkpoint_every_s`` passed."""
        with self._cond:
            self._cond.notify()

    # -- the writer thread -------------------------------------------------------------------

    def _writer(self, ready: asyncio.Future[None]) -> None:
        try:
            db = sqlite3.connect(self.store.path, isolation_level=None, check_same_thread=False)
            db.execute(f"PRAGMA synchronous={self._entry_sync}")
            db.execute("PRAGMA busy_timeout=5000")
        except sqlite3.Error as exc:
            self._loop.call_soon_threadsafe(_settle, ready, AuditError(
                f"cannot open the audit log in {self.store.path}: {exc}; check permissions"))
            return
        self._db = db
        self._loop.call_soon_threadsafe(_settle, ready, None)
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing and not self._head_due():
                        self._writer_waiting = True
                        if not self._queue:
                            self._cond.wait(self._head_wait())
                        self._writer_waiting = False
                    batch = [self._queue.popleft()
                             for _ in range(min(len(self._queue), self.config.max_group))]
                    closing = self._closing and not self._queue
                if batch:
                    self._commit(batch)
                if closing:
                    self._write_head(final=True)
                    return
                if self._head_due():
                    self._write_head(final=False)
        finally:
            with contextlib.suppress(sqlite3.Error):
                db.close()

    def _head_wait(self) -> float | None:
        """Under the lock: how long the writer may sleep before a head is due."""
        retry = self._head_retry_at - time.monotonic()
        if retry > 0:
            return retry
        if self._stored_head >= self._wcr.size:
            return max(0.1, self.config.checkpoint_every_s)  # only time-based retention
        return max(0.0, HEAD_IDLE_S - (time.monotonic() - self._last_commit))

    def _head_due(self) -> bool:
        size = self._wcr.size
        now = time.monotonic()
        if now < self._head_retry_at:
            return False
        if self._stored_head >= size:
            return self._retain_due(size)  # time-based retention of an already-stored head
        return (self._head_wanted or self._retain_due(size)
                or now - self._last_commit >= HEAD_IDLE_S
                or now - self._last_head >= HEAD_MAX_LAG_S)

    def _retain_due(self, size: int) -> bool:
        grown = size - self._last_retained_size
        if grown <= 0:
            return False
        return (grown >= self.config.checkpoint_every_entries
                or self._clock() - self._last_retained_at >= self.config.checkpoint_every_s)

    def _commit(self, batch: list[tuple[bytes, asyncio.Future[int]]]) -> None:
        """One transaction holding the entries and their Merkle nodes; the frontier moves
        only after COMMIT returned."""
        assert self._db is not None
        db = self._db
        cr = self._wcr.copy()
        first = cr.size
        futures = [f for _, f in batch]
        try:
            nodes: list[tuple[int, bytes]] = []
            for entry, _ in batch:
                nodes.extend((n.key, n.hash) for n in cr.append(leaf_hash(entry)))
            rows = [(first + i, e) for i, (e, _) in enumerate(batch)]
            db.execute("BEGIN IMMEDIATE")
            try:
                # Multi-row INSERTs: sqlite3 releases the GIL around every statement step, and
                # each re-acquisition can wait behind the event loop; one step per ~500 rows
                # instead of one per row keeps the writer off the loop's back.
                _insert_rows(db, "audit_entry(seq, entry)", rows)
                _insert_rows(db, "audit_node(id, hash)", nodes)
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):
                    db.execute("ROLLBACK")
                raise
        except Exception as exc:
            log.exception("audit commit of %d entries failed", len(batch))
            self._loop.call_soon_threadsafe(self._committed, _Committed(first, cr, futures, exc))
            return
        self._wcr = cr
        self._last_commit = time.monotonic()
        self._loop.call_soon_threadsafe(self._committed, _Committed(first, cr, futures))

    def _write_head(self, *, final: bool) -> None:
        """Sign the head of every committed entry and store it (and retain it when due).
        Not fsynced by itself unless ``final``: a later group's fsync covers it, and a lost
        head is re-signed identically on the next open."""
        assert self._db is not None
        db = self._db
        cr = self._wcr
        now = time.monotonic()
        self._last_head = now
        with self._cond:
            self._head_wanted = False
        if cr.size == 0:
            self._release_head_waiters(0)
            return
        retain = self._retain_due(cr.size) or (final and cr.size > self._last_retained_size)
        if self._stored_head < cr.size or retain:
            note = Checkpoint(self.origin, cr.size, cr.root()).sign([self.signer])
            # sync=full: entries are already fsynced and a lost head is re-signed identically,
            # so the head needs no fsync of its own (but on close). sync=normal: the head's
            # fsync also makes every entry it covers durable before the checkpoint can leave
            # the node, so a power loss never takes the log back behind what a witness saw.
            head_sync = "NORMAL" if self.config.sync == "full" and not final else "FULL"
            try:
                if head_sync != self._entry_sync:
                    db.execute(f"PRAGMA synchronous={head_sync}")
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.execute(
                        "INSERT INTO audit_head(id, size, note) VALUES(0, ?, ?) ON CONFLICT(id) "
                        "DO UPDATE SET size=excluded.size, note=excluded.note",
                        (cr.size, note),
                    )
                    if retain:
                        db.execute("INSERT OR REPLACE INTO audit_checkpoint(size, note, created) "
                                   "VALUES(?, ?, ?)", (cr.size, note, self._clock()))
                    db.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(Exception):
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.Error:
                log.exception("storing the audit head at size %d failed; retrying in 1 s",
                              cr.size)
                self._head_retry_at = now + 1.0
                return
            finally:
                if head_sync != self._entry_sync:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute(f"PRAGMA synchronous={self._entry_sync}")
            self._stored_head = cr.size
            if retain:
                self._last_retained_size, self._last_retained_at = cr.size, self._clock()
        self._release_head_waiters(cr.size)

    def _release_head_waiters(self, size: int) -> None:
        with self._cond:
            due = [f for s, f in self._head_waiters if s <= size]
            self._head_waiters = [(s, f) for s, f in self._head_waiters if s > size]
        for future in due:
            self._loop.call_soon_threadsafe(_settle, future, None)


_ROWS_PER_INSERT = 500


def _insert_rows(db: sqlite3.Connection, table: str, rows: list[tuple[int, bytes]]) -> None:
    for i in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[i : i + _ROWS_PER_INSERT]
        db.execute(f"INSERT INTO {table} VALUES " + ",".join(["(?,?)"] * len(chunk)),
                   [value for row in chunk for value in row])


def _settle(future: asyncio.Future[Any], outcome: BaseException | None) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(None)


def _verify_stored(path: Path, verifiers: list[Verifier]) -> VerifyReport:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN")  # one read snapshot for checkpoints, entries and nodes
        checkpoints = [(int(size), str(note)) for size, note in db.execute(
            "SELECT size, note FROM audit_checkpoint ORDER BY size")]
        head = db.execute("SELECT size, note FROM audit_head WHERE id = 0").fetchone()
        if head is not None:
            checkpoints.append((int(head[0]), str(head[1])))
        gap: list[int] = []

        def entries() -> Iterator[bytes]:
            rows = db.execute("SELECT seq, entry FROM audit_entry ORDER BY seq")
            for index, (seq, entry) in enumerate(rows):
                if not gap and seq != index:
                    gap.append(index)
                yield _blob(entry)

        def stored(level: int, index: int) -> bytes | None:
            row = db.execute("SELECT hash FROM audit_node WHERE id = ?",
                             (node_key(level, index),)).fetchone()
            return bytes(row[0]) if row else None

        report = verify_log(entries(), checkpoints, verifiers, stored=stored)
    finally:
        db.close()
    if gap and report.ok:
        return VerifyReport(
            entries=report.entries, checkpoints=report.checkpoints,
            verified_size=report.verified_size, first_bad_index=gap[0], exact=True,
            problems=(f"entry index {gap[0]} is missing or out of place in the store",),
        )
    return report


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
    """Queries over a node's stored log; works on a live daemon's database (WAL readers).

    ``size()`` counts the committed entries; the stored head may trail them for a few
    milliseconds on a live log (see the module docstring). A reader made by
    :meth:`AuditLog.reader` has ``before_head`` set, so head queries first store the current
    head and always cover every answered entry.
    """

    def __init__(self, store: Store, verifiers: list[Verifier],
                 before_head: Callable[[], Awaitable[None]] | None = None) -> None:
        self.store = store
        self.verifiers = verifiers
        self._before_head = before_head

    async def _head_current(self) -> None:
        if self._before_head is not None:
            await self._before_head()

    async def size(self) -> int:
        rows = list(await self.store.conn.execute_fetchall(
            "SELECT (SELECT COALESCE(MAX(seq) + 1, 0) FROM audit_entry), "
            "(SELECT size FROM audit_head WHERE id = 0)"))
        entries, head = rows[0] if rows else (0, None)
        return max(int(entries or 0), int(head or 0))

    async def head(self) -> str | None:
        await self._head_current()
        async with self.store.conn.execute("SELECT note FROM audit_head WHERE id = 0") as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else None

    async def checkpoints(self) -> list[tuple[int, str]]:
        await self._head_current()
        async with self.store.conn.execute(
            "SELECT size, note FROM audit_checkpoint ORDER BY size"
        ) as cur:
            return [(int(s), str(n)) for s, n in await cur.fetchall()]

    async def checkpoint_at(self, size: int) -> str | None:
        await self._head_current()
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
        await self._head_current()
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
        await self._head_current()
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
        """Recompute the whole tree from the stored entries; check every stored checkpoint.
        Entries stream from the database on a thread of its own, one snapshot, so memory
        stays ~32 bytes per entry (the recomputed leaf hashes) however long the log is."""
        await self._head_current()
        return await asyncio.to_thread(_verify_stored, self.store.path, self.verifiers)

    async def iterate(self, start: int = 0) -> AsyncIterator[tuple[int, bytes]]:
        async with self.store.conn.execute(
            "SELECT seq, entry FROM audit_entry WHERE seq >= ? ORDER BY seq", (start,)
        ) as cur:
            async for seq, entry in cur:
                yield int(seq), _blob(entry)
