"""The node's audit log on real SQLite: group commit, proofs that verify against the signed head,
restart, checkpoint cadence, and tamper detection that names the first bad index."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.merkle import leaf_hash, verify_consistency, verify_inclusion
from federation.note import Checkpoint
from node.audit import AuditError, AuditLog, AuditReader
from node.config import AuditSection
from node.store import Store

KEY = Ed25519PrivateKey.generate()


async def _open(tmp_path: Path, **config: int) -> tuple[Store, AuditLog]:
    store = await Store.open(tmp_path)
    log = await AuditLog.open(store, KEY, "node-a", None, AuditSection(**config))  # type: ignore[arg-type]
    return store, log


def _entry(log: AuditLog, i: int) -> bytes:
    return log.record("infer", model="m", version="1", caller=f"app{i}", outcome="ok").to_bytes()


async def _fill(log: AuditLog, n: int, concurrency: int = 16) -> list[int]:
    indexes: list[int] = []

    async def worker(w: int) -> None:
        for i in range(w, n, concurrency):
            indexes.append(await log.append_bytes(_entry(log, i)))

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return indexes


async def test_concurrent_appends_are_group_committed_with_dense_indexes(tmp_path: Path) -> None:
    store, log = await _open(tmp_path)
    indexes = await _fill(log, 400, concurrency=64)
    assert sorted(indexes) == list(range(400))
    assert log.size == 400
    assert log.commits < 400 / 4, "concurrent appends should share transactions"
    await log.close()
    await store.close()


async def test_proofs_verify_against_the_signed_head(tmp_path: Path) -> None:
    store, log = await _open(tmp_path)
    await _fill(log, 37)
    head = Checkpoint.open(log.checkpoint() or "", log.verifiers[-1])
    assert head.size == 37
    await log.close()
    reader = AuditReader(store, log.verifiers)
    entries = dict(await reader.entries())
    for index in (0, 1, 17, 31, 32, 36):
        proof = await reader.inclusion_proof(index)
        assert proof.leaf_hash == leaf_hash(entries[index])
        verify_inclusion(proof.leaf_hash, index, 37, list(proof.hashes), head.root_hash)
    for old in (1, 5, 16, 32, 36):
        proof = await reader.consistency_proof(old, 37)
        verify_consistency(old, 37, list(proof.hashes), await reader.root(old), head.root_hash)
    with pytest.raises(AuditError, match="not below"):
        await reader.inclusion_proof(37)
    with pytest.raises(AuditError):
        await reader.consistency_proof(0, 37)
    assert (await reader.verify()).ok
    await store.close()


async def test_restart_restores_the_frontier_and_keeps_verifying(tmp_path: Path) -> None:
    store, log = await _open(tmp_path)
    await _fill(log, 21)
    first_head = log.checkpoint()
    await log.close()
    await store.close()
    store, log = await _open(tmp_path)
    assert log.size == 21 and log.checkpoint() == first_head
    await _fill(log, 10)
    await log.close()
    reader = AuditReader(store, log.verifiers)
    report = await reader.verify()
    assert report.ok and report.entries == 31 and report.verified_size == 31
    # old checkpoint is provably a prefix of the new head
    proof = await reader.consistency_proof(21, 31)
    old = Checkpoint.open(first_head or "", log.verifiers[-1])
    new = Checkpoint.open(log.checkpoint() or "", log.verifiers[-1])
    verify_consistency(21, 31, list(proof.hashes), old.root_hash, new.root_hash)
    await store.close()


async def test_checkpoints_are_kept_on_the_entry_cadence(tmp_path: Path) -> None:
    store, log = await _open(tmp_path, checkpoint_every_entries=10)
    for i in range(35):
        await log.append_bytes(_entry(log, i))  # one per commit: cadence is exact
    await log.close()
    kept = [size for size, _ in await AuditReader(store, log.verifiers).checkpoints()]
    assert kept == [10, 20, 30, 35]  # 35 = the one kept at close
    await store.close()


def _tamper(db: Path, statement: str, *args: object) -> None:
    conn = sqlite3.connect(db)
    conn.execute(statement, args)
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("edit", "first_bad"),
    [
        ("edit", 13),
        ("delete", 13),
        ("insert", 13),
        ("reorder", 13),
        ("truncate", 40),
    ],
)
async def test_tampering_is_detected_and_located(tmp_path: Path, edit: str, first_bad: int) -> None:
    store, log = await _open(tmp_path, checkpoint_every_entries=8)
    for i in range(45):
        await log.append_bytes(_entry(log, i))
    await log.close()
    await store.close()
    db = tmp_path / "outpost.db"
    if edit == "edit":
        _tamper(db, "UPDATE audit_entry SET entry = replace(entry, 'app13', 'app99') WHERE seq=13")
    elif edit == "delete":
        _tamper(db, "DELETE FROM audit_entry WHERE seq = 13")
        _tamper(db, "UPDATE audit_entry SET seq = seq - 1 WHERE seq > 13")
    elif edit == "insert":
        _tamper(db, "UPDATE audit_entry SET seq = -seq - 1 WHERE seq >= 13")
        _tamper(db, "UPDATE audit_entry SET seq = -seq WHERE seq < 0")
        _tamper(db, "INSERT INTO audit_entry(seq, entry) VALUES(13, ?)", b'{"forged":true}')
    elif edit == "reorder":
        _tamper(db, "UPDATE audit_entry SET seq = -1 WHERE seq = 13")
        _tamper(db, "UPDATE audit_entry SET seq = 13 WHERE seq = 14")
        _tamper(db, "UPDATE audit_entry SET seq = 14 WHERE seq = -1")
    elif edit == "truncate":
        _tamper(db, "DELETE FROM audit_entry WHERE seq >= 40")
    store = await Store.open(tmp_path)
    report = await AuditReader(store, log.verifiers).verify()
    await store.close()
    assert not report.ok
    assert report.first_bad_index == first_bad, report.problems


@pytest.mark.integration
def test_cli_verify_names_the_first_bad_index(tmp_path: Path) -> None:
    from tests.conftest import init_node, outpost

    data_dir = tmp_path / "n"
    init_node(data_dir)
    from models.sample.dense import build_dense

    for i in range(3):
        model = tmp_path / f"m{i}.onnx"
        build_dense(model, width=8, layers=1, seed=i)
        outpost("models", "add", str(model), "--name", f"m{i}", data_dir=data_dir)
    assert "ok:" in outpost("audit", "verify", data_dir=data_dir).stdout
    _tamper(data_dir / "outpost.db",
            "UPDATE audit_entry SET entry = replace(entry, '\"m1\"', '\"mX\"') WHERE seq = 2")
    result = outpost("audit", "verify", data_dir=data_dir, check=False)
    assert result.returncode == 1
    assert "entry 2" in result.stderr


def test_record_time_is_spelled_like_rfc3339() -> None:
    """``now_rfc3339`` caches the date per second; it must spell time as ``rfc3339`` does."""
    import time
    from datetime import UTC, datetime

    from federation.canonical import rfc3339
    from node.audit import now_rfc3339

    for _ in range(3):
        before = rfc3339(datetime.now(UTC))
        stamp = now_rfc3339()
        after = rfc3339(datetime.now(UTC))
        assert before <= stamp <= after and len(stamp) == len(before)
        time.sleep(0.4)  # cross a second boundary at least once


@pytest.mark.parametrize(("sync", "entries", "head"), [
    ("full", 2, 1),    # entries fsynced before answering; the head rides on the next fsync
    ("normal", 1, 2),  # entries unsynced; the head's commit fsyncs them before it leaves
])
async def test_audit_sync_mode_decides_what_is_fsynced(
    tmp_path: Path, sync: str, entries: int, head: int
) -> None:
    store, log = await _open(tmp_path, sync=sync)  # type: ignore[arg-type]
    await _fill(log, 3)
    assert log._db is not None
    seen: list[str] = []
    log._db.set_trace_callback(seen.append)
    # What a group commit runs under (SQLite: 1 = NORMAL, 2 = FULL).
    mode = log._db.execute("PRAGMA synchronous").fetchone()[0]
    assert mode == entries
    await _fill(log, 3)
    await log.store_head()
    await log.close()
    pragmas = [s for s in seen if s.startswith("PRAGMA synchronous=")]
    expected_head = "FULL" if head == 2 else "NORMAL"
    assert f"PRAGMA synchronous={expected_head}" in pragmas, seen
    reader = AuditReader(store, log.verifiers)
    assert (await reader.verify()).ok
    await store.close()
