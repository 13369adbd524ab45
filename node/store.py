"""The node's SQLite database: one file, WAL mode, schema versioned by ordered migrations.

Owns the connection, the migrations and the small typed queries every component uses. It never
decides anything (no policy, no validation beyond integrity) and never touches model blobs,
which live beside the database as files named by hash (``models.blobs``).

Durability: ``synchronous=FULL`` in WAL mode, so a committed transaction survives power loss;
callers that need many durable writes per second batch them (group commit, ``node.audit``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from models import ModelSignature
from node.durable import private_dir, private_files
from node.errors import NodeFault, OperatorError

DB_FILE = "outpost.db"


class StoreError(NodeFault):
    """The database cannot be opened or used; the message names the file and the fix."""


class ModelExists(OperatorError):
    """A model of that name and version is already held; remove it or pick another version."""


@dataclass(frozen=True)
class ModelRecord:
    name: str
    version: str
    sha256: str
    size: int
    signature: ModelSignature
    added_at: float

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            "added_at": self.added_at,
            "signature": self.signature.to_json(),
        }


# Each migration is a list of statements, applied in one transaction; index + 1 = user_version.
# ONLY APPEND: a released migration never changes, later ones adjust what came before.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE models (
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            size INTEGER NOT NULL,
            signature TEXT NOT NULL,
            added_at REAL NOT NULL,
            PRIMARY KEY (name, version)
        )""",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ],
    # 2: the audit log (layout and reasons in federation/audit.py)
    [
        "CREATE TABLE audit_entry (seq INTEGER PRIMARY KEY, entry BLOB NOT NULL)",
        "CREATE TABLE audit_node (id INTEGER PRIMARY KEY, hash BLOB NOT NULL)",
        "CREATE TABLE audit_head (id INTEGER PRIMARY KEY CHECK (id = 0),"
        " size INTEGER NOT NULL, note TEXT NOT NULL)",
        "CREATE TABLE audit_checkpoint (size INTEGER PRIMARY KEY, note TEXT NOT NULL,"
        " created REAL NOT NULL)",
    ],
    # 3: authority-signed documents in force (revocation list, policy bundle): newest only
    [
        "CREATE TABLE federation_doc (kind TEXT PRIMARY KEY, version INTEGER NOT NULL,"
        " body BLOB NOT NULL, applied REAL NOT NULL)",
    ],
    # 4: other nodes' logs held as replicas (sync bundles; node/sync.py): their entries byte for
    # byte, leaves [0, size) with no holes, and the newest checkpoint that verified them with the
    # certificate of the key that signed it, so the replica can be verified and exported again
    [
        "CREATE TABLE replica_entry (origin TEXT NOT NULL, seq INTEGER NOT NULL,"
        " entry BLOB NOT NULL, PRIMARY KEY (origin, seq))",
        "CREATE TABLE replica_head (origin TEXT PRIMARY KEY, size INTEGER NOT NULL,"
        " note TEXT NOT NULL, cert BLOB NOT NULL)",
    ],
    # model changes whose audit entry may not be written yet (node/modelhost.py): inserted in
    # the transaction that changes the catalogue, deleted once the entry is durable; a row
    # left by a crash is put on the trail at the next start, marked recovered
    [
        "CREATE TABLE model_change (id TEXT PRIMARY KEY, kind TEXT NOT NULL,"
        " name TEXT NOT NULL, version TEXT NOT NULL, sha256 TEXT NOT NULL,"
        " size INTEGER NOT NULL, peer TEXT, audit_size INTEGER NOT NULL,"
        " created REAL NOT NULL)",
    ],
    # trail (node/trail.py, federation/witness.py): the newest checkpoint this node witnessed
    # per origin (one record per origin, read and advanced by gossip and by tlog-witness), the
    # evidence of origins whose log went back or forked, and the cosignatures witnesses gave
    # this node's checkpoints (the note they cosigned, one line per witness)
    [
        "CREATE TABLE witness_state (origin TEXT PRIMARY KEY, size INTEGER NOT NULL,"
        " root BLOB NOT NULL, note TEXT NOT NULL, updated INTEGER NOT NULL)",
        "CREATE TABLE witness_evidence (id INTEGER PRIMARY KEY, origin TEXT NOT NULL,"
        " kind TEXT NOT NULL, body BLOB NOT NULL UNIQUE, seen REAL NOT NULL)",
        "CREATE TABLE audit_cosignature (size INTEGER NOT NULL, witness TEXT NOT NULL,"
        " note TEXT NOT NULL, line TEXT NOT NULL, PRIMARY KEY (size, witness))",
    ],
    # apps: bearer tokens of local apps (node/tokens.py): the secret's SHA-256 only, the
    # attributes policy sees, and a MAC over the row so a hand edit is detected
    [
        "CREATE TABLE app_token (id TEXT PRIMARY KEY, name TEXT NOT NULL, hash BLOB NOT NULL,"
        " attrs TEXT NOT NULL, created REAL NOT NULL, expires REAL, revoked REAL,"
        " last_used REAL, mac BLOB NOT NULL)",
        "CREATE INDEX app_token_name ON app_token(name)",
    ],
]

Migration = Callable[[aiosqlite.Connection], Awaitable[None]]


class Store:
    """An open database. Create with :meth:`open`; one per process and data directory."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path

    @classmethod
    async def open(cls, data_dir: Path, migrations: Sequence[list[str]] = MIGRATIONS) -> Store:
        path = data_dir / DB_FILE
        # Owner only, also when the directory or the files already existed (an `init` into an
        # existing 0755 directory left outpost.db 0644). SQLite creates -wal and -shm with the
        # database's mode; existing ones are tightened here too.
        with contextlib.suppress(FileNotFoundError, PermissionError):
            private_dir(data_dir)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            private_files(path, path.with_name(DB_FILE + "-wal"),
                          path.with_name(DB_FILE + "-shm"))
        try:
            conn = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {path}: {exc}; check permissions") from exc
        store = cls(conn, path)
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=FULL")
            await conn.execute("PRAGMA foreign_keys=ON")
            await conn.execute("PRAGMA busy_timeout=5000")
            await store._migrate(migrations)
        except sqlite3.DatabaseError as exc:
            await conn.close()
            raise StoreError(
                f"database {path} is corrupt or not an Outpost database ({exc}); restore it "
                "from a backup, or move it aside and run `outpost init` to start empty"
            ) from exc
        return store

    async def close(self) -> None:
        await self.conn.close()

    async def _migrate(self, migrations: Sequence[list[str]]) -> None:
        async with self.conn.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        current = int(row[0]) if row else 0
        if current > len(migrations):
            raise StoreError(
                f"database {self.path} has schema version {current}, newer than this Outpost "
                f"knows ({len(migrations)}); upgrade Outpost"
            )
        for number in range(current, len(migrations)):
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in migrations[number]:
                    await self.conn.execute(statement)
                await self.conn.execute(f"PRAGMA user_version={number + 1}")
                await self.conn.execute("COMMIT")
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise

    async def schema_version(self) -> int:
        async with self.conn.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    # -- meta ---------------------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        async with self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)) as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else None

    async def set_meta(self, key: str, value: str) -> None:
        await self.conn.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
        )

    # -- models -------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """Statements in the block commit together or not at all."""
        await self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            await self.conn.execute("ROLLBACK")
            raise
        await self.conn.execute("COMMIT")

    async def add_model(
        self, name: str, version: str, sha256: str, size: int, signature: ModelSignature
    ) -> ModelRecord:
        record = ModelRecord(name, version, sha256, size, signature, time.time())
        try:
            await self.conn.execute(
                "INSERT INTO models(name, version, sha256, size, signature, added_at) "
                "VALUES(?, ?, ?, ?, ?, ?)",
                (name, version, sha256, size, json.dumps(signature.to_json()), record.added_at),
            )
        except sqlite3.IntegrityError:
            raise ModelExists(
                f"model {name}:{version} already exists; remove it first with "
                f"`outpost models rm {name}:{version}` or choose another --version"
            ) from None
        return record

    async def remove_model(self, name: str, version: str) -> ModelRecord | None:
        record = await self.get_model(name, version)
        if record is not None:
            await self.conn.execute(
                "DELETE FROM models WHERE name=? AND version=?", (name, version)
            )
        return record

    async def list_models(self) -> list[ModelRecord]:
        async with self.conn.execute(
            "SELECT name, version, sha256, size, signature, added_at FROM models "
            "ORDER BY name, added_at"
        ) as cur:
            rows = await cur.fetchall()
        return [_model(row) for row in rows]

    async def get_model(self, name: str, version: str) -> ModelRecord | None:
        async with self.conn.execute(
            "SELECT name, version, sha256, size, signature, added_at FROM models "
            "WHERE name=? AND version=?",
            (name, version),
        ) as cur:
            row = await cur.fetchone()
        return _model(row) if row else None

    async def sha256_in_use(self, sha256: str) -> bool:
        async with self.conn.execute("SELECT 1 FROM models WHERE sha256=? LIMIT 1", (sha256,)) as cur:
            return await cur.fetchone() is not None


async def get_doc(store: Store, kind: str) -> tuple[int, bytes] | None:
    async with store.conn.execute(
        "SELECT version, body FROM federation_doc WHERE kind = ?", (kind,)
    ) as cur:
        row = await cur.fetchone()
    return (int(row[0]), bytes(row[1])) if row else None


async def put_doc(store: Store, kind: str, version: int, body: bytes) -> None:
    await store.conn.execute(
        "INSERT INTO federation_doc(kind, version, body, applied) VALUES(?, ?, ?, ?) "
        "ON CONFLICT(kind) DO UPDATE SET version=excluded.version, body=excluded.body, "
        "applied=excluded.applied",
        (kind, version, body, time.time()),
    )


def _model(row: Any) -> ModelRecord:
    return ModelRecord(
        name=row[0],
        version=row[1],
        sha256=row[2],
        size=int(row[3]),
        signature=ModelSignature.from_json(json.loads(row[4])),
        added_at=float(row[5]),
    )


@dataclass(frozen=True)
class ModelChange:
    """A catalogue change whose audit entry is not known to be durable (``model_change``)."""

    id: str
    kind: str  # model.add | model.pull | model.remove
    name: str
    version: str
    sha256: str
    size: int
    peer: str | None
    audit_size: int  # the log's size before the change: its entry, if any, comes after


async def put_change(store: Store, change: ModelChange) -> None:
    await store.conn.execute(
        "INSERT INTO model_change(id, kind, name, version, sha256, size, peer, audit_size, "
        "created) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (change.id, change.kind, change.name, change.version, change.sha256, change.size,
         change.peer, change.audit_size, time.time()),
    )


async def drop_change(store: Store, change_id: str) -> None:
    await store.conn.execute("DELETE FROM model_change WHERE id = ?", (change_id,))


async def pending_changes(store: Store) -> list[ModelChange]:
    async with store.conn.execute(
        "SELECT id, kind, name, version, sha256, size, peer, audit_size FROM model_change "
        "ORDER BY created"
    ) as cur:
        rows = await cur.fetchall()
    return [ModelChange(r[0], r[1], r[2], r[3], r[4], int(r[5]), r[6], int(r[7])) for r in rows]


def next_version(existing: Sequence[str]) -> str:
    """The version ``models add`` gives when none is named: one more than the highest integer."""
    numbers = [int(v) for v in existing if v.isdigit()]
    return str(max(numbers, default=0) + 1)
