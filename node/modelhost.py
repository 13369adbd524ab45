"""The models a node holds: catalogue rows (SQLite), blobs (files by hash) and loaded sessions.

One code path for both worlds: the CLI with the daemon stopped uses a ``ModelHost`` with no
backend (it only changes the catalogue and blobs); the daemon uses one with a backend, so an
added model is loaded live and a removed one is unloaded after its queue drains.

Hot path: :meth:`resolve` is a dict lookup; everything else is admin traffic.

On the trail whatever the moment of a crash: the catalogue row of an added (or the deletion of
a removed) model commits in one transaction with a ``model_change`` row naming the change;
the audit entry (carrying the change id) follows, then the row is deleted. A ``kill -9`` in
between leaves the row, and the next start (:meth:`ModelHost.load_all`) writes the entry,
marked ``detail.recovered``, unless the log already holds it. Blobs no catalogue row refers
to (a crash after the copy, before the catalogue) are removed at start too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from models import (
    Backend,
    BlobStore,
    InvalidName,
    LoadedModel,
    ModelError,
    inspect_model,
    parse_ref,
    validate_name,
    validate_version,
)
from node.audit import AuditLog
from node.errors import OperatorError
from node.store import (
    ModelChange,
    ModelExists,
    ModelRecord,
    Store,
    drop_change,
    next_version,
    pending_changes,
    put_change,
)

log = logging.getLogger("outpost.models")

BLOB_DIR = "blobs"


class ModelNotFound(OperatorError, LookupError):
    """No such model (or version) on this node; maps to HTTP 404."""


@dataclass
class Served:
    """A loaded model version as the endpoint sees it."""

    record: ModelRecord
    model: LoadedModel


class ModelHost:
    def __init__(
        self,
        store: Store,
        data_dir: Path,
        *,
        max_model_bytes: int,
        backend: Backend | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.store = store
        self.blobs = BlobStore(data_dir / BLOB_DIR)
        self.max_model_bytes = max_model_bytes
        self.backend = backend
        self.audit = audit
        # name -> version -> Served; "latest" is the most recently added version.
        self._served: dict[str, dict[str, Served]] = {}
        self._latest: dict[str, str] = {}
        self._lock = asyncio.Lock()

    # -- hot path ----------------------------------------------------------------------------

    def resolve(self, name: str, version: str | None = None) -> Served:
        versions = self._served.get(name)
        if not versions:
            raise ModelNotFound(
                f"model {name!r} is not served here; `outpost models list` shows what is"
            )
        if version is None:
            version = self._latest[name]
        served = versions.get(version)
        if served is None:
            raise ModelNotFound(
                f"model {name!r} has no version {version!r}; versions here: "
                f"{', '.join(sorted(versions))}"
            )
        return served

    def served(self) -> list[Served]:
        return [s for versions in self._served.values() for s in versions.values()]

    # -- lifecycle ---------------------------------------------------------------------------

    async def load_all(self) -> list[str]:
        """Load every catalogued model; returns the refs that failed (logged, not fatal).

        First puts on the trail the model changes a crash left without their entry, and
        removes blobs no model refers to."""
        self.blobs.sweep()
        await self.recover()
        failed: list[str] = []
        for record in await self.store.list_models():
            try:
                await self._load(record)
            except ModelError as exc:
                log.error("model %s not loaded: %s", record.ref, exc)
                failed.append(record.ref)
        return failed

    async def recover(self) -> int:
        """Entries for changes left by a crash; orphan blobs removed. Returns entries written."""
        written = 0
        if self.audit is not None:
            for change in await pending_changes(self.store):
                if not await self._on_trail(change):
                    await self.audit.append(self.audit.record(
                        change.kind, model=change.name, version=change.version,
                        caller="recovery", peer=change.peer,
                        reason="recovered at start: the node stopped after this change was "
                               "committed and before its audit entry was written",
                        detail={"sha256": change.sha256, "size": change.size,
                                "change": change.id, "recovered": True},
                    ))
                    written += 1
                    log.warning("%s %s:%s recovered onto the audit trail", change.kind,
                                change.name, change.version)
                await drop_change(self.store, change.id)
        used = {r.sha256 for r in await self.store.list_models()}
        for blob in self.blobs.list():
            if blob.sha256 not in used:
                self.blobs.remove(blob.sha256)
                log.warning("removed blob %s (%d bytes): no model refers to it (left by an "
                            "interrupted add)", blob.sha256, blob.size)
        return written

    async def _on_trail(self, change: ModelChange) -> bool:
        """Whether the log already holds the entry of ``change`` (written after its commit)."""
        assert self.audit is not None
        for _, raw in await self.audit.reader().entries(change.audit_size):
            detail = json.loads(raw).get("detail") or {}
            if detail.get("change") == change.id:
                return True
        return False

    def _change(self, kind: str, record: ModelRecord, peer: str | None = None) -> ModelChange:
        return ModelChange(os.urandom(8).hex(), kind, record.name, record.version, record.sha256,
                           record.size, peer, self.audit.size if self.audit else 0)

    async def close(self) -> None:
        for served in self.served():
            await served.model.close()
        self._served.clear()
        self._latest.clear()

    async def _load(self, record: ModelRecord) -> None:
        if self.backend is None:
            return
        path = self.blobs.path(record.sha256)
        model = await self.backend.load(record.name, record.version, path, record.signature)
        self._served.setdefault(record.name, {})[record.version] = Served(record, model)
        self._latest[record.name] = record.version
        log.info("model %s loaded on %s", record.ref, model.provider)

    # -- admin -------------------------------------------------------------------------------

    async def add(self, path: Path, name: str, version: str | None = None, *,
                  pulled_from: str | None = None) -> ModelRecord:
        """Validate and store ``path`` as ``name:version``, and load it when serving.

        Nothing is left behind on failure: the blob is removed unless another version uses it.
        """
        validate_name(name)
        if version is not None:
            validate_version(version)
        if not path.is_file():
            raise ModelError(f"{path} is not a file; give the path of an .onnx model")
        async with self._lock:
            if version is None:
                existing = [r.version for r in await self.store.list_models() if r.name == name]
                version = next_version(existing)
            if await self.store.get_model(name, version) is not None:
                raise ModelExists(
                    f"model {name}:{version} already exists; remove it first with "
                    f"`outpost models rm {name}:{version}` or choose another --version"
                )
            info = await asyncio.to_thread(self.blobs.ingest, path, max_bytes=self.max_model_bytes)
            try:
                signature = await asyncio.to_thread(inspect_model, info.path)
                kind = "model.pull" if pulled_from else "model.add"
                async with self.store.transaction():  # the row and its pending entry, together
                    record = await self.store.add_model(name, version, info.sha256, info.size,
                                                        signature)
                    change = self._change(kind, record, pulled_from)
                    await put_change(self.store, change)
                try:
                    await self._load(record)
                except BaseException:
                    async with self.store.transaction():
                        await self.store.remove_model(name, version)
                        await drop_change(self.store, change.id)
                    raise
            except BaseException:
                if not await self.store.sha256_in_use(info.sha256):
                    self.blobs.remove(info.sha256)
                raise
            await self._audit(kind, record, pulled_from, change.id)
            await drop_change(self.store, change.id)
            return record

    async def remove(self, ref: str) -> list[ModelRecord]:
        """Remove ``name`` (every version) or ``name:version``; returns what was removed."""
        name, version = parse_ref(ref)
        async with self._lock:
            records = [
                r
                for r in await self.store.list_models()
                if r.name == name and (version is None or r.version == version)
            ]
            if not records:
                raise ModelNotFound(
                    f"no model {ref!r} here; `outpost models list` shows what is"
                )
            for record in records:
                change = self._change("model.remove", record)
                async with self.store.transaction():
                    await self.store.remove_model(record.name, record.version)
                    await put_change(self.store, change)
                served = self._served.get(record.name, {}).pop(record.version, None)
                if served is not None:
                    await served.model.close()
                if not self._served.get(record.name):
                    self._served.pop(record.name, None)
                    self._latest.pop(record.name, None)
                elif self._latest.get(record.name) == record.version:
                    remaining = self._served[record.name]
                    self._latest[record.name] = max(
                        remaining.values(), key=lambda s: s.record.added_at
                    ).record.version
                if not await self.store.sha256_in_use(record.sha256):
                    self.blobs.remove(record.sha256)
                await self._audit("model.remove", record, None, change.id)
                await drop_change(self.store, change.id)
            return records

    async def _audit(self, kind: str, record: ModelRecord, peer: str | None,
                     change: str) -> None:
        if self.audit is not None:
            await self.audit.append(self.audit.record(
                kind, model=record.name, version=record.version, caller="admin", peer=peer,
                detail={"sha256": record.sha256, "size": record.size, "change": change},
            ))

    async def list(self) -> list[ModelRecord]:
        return await self.store.list_models()


__all__ = ["InvalidName", "ModelHost", "ModelNotFound", "Served"]
