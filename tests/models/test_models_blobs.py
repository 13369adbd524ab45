"""BlobStore: content addressing, validation on the way in, nothing left behind.

Invariant: after any ``ingest`` — successful or refused — the store directory holds
exactly the complete, valid blobs, each named by its SHA-256, and no temporary file.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from models import BlobInfo, BlobStore, InvalidModel, InvalidName
from models.blobs import TEMP_PREFIX

LIMIT = 10 << 20


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def _entries(store: BlobStore) -> list[str]:
    return sorted(os.listdir(store.root))


def test_ingest_names_the_blob_by_its_hash(store: BlobStore, digits_path: Path) -> None:
    data = digits_path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    info = store.ingest(digits_path, max_bytes=LIMIT)
    assert info == BlobInfo(sha, len(data), store.root / f"{sha}.onnx")
    assert info.path.read_bytes() == data
    assert not info.path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert _entries(store) == [f"{sha}.onnx"]
    assert store.has(sha) and store.path(sha) == info.path
    assert store.list() == [info]


def test_ingest_is_idempotent(store: BlobStore, digits_path: Path) -> None:
    first = store.ingest(digits_path, max_bytes=LIMIT)
    again = store.ingest(digits_path, max_bytes=LIMIT)
    from_memory = store.ingest_bytes(digits_path.read_bytes(), max_bytes=LIMIT)
    assert first == again == from_memory
    assert _entries(store) == [f"{first.sha256}.onnx"]


def test_ingest_checks_an_expected_hash(store: BlobStore, digits_path: Path) -> None:
    sha = hashlib.sha256(digits_path.read_bytes()).hexdigest()
    assert store.ingest(digits_path, max_bytes=LIMIT, expect_sha256=sha).sha256 == sha
    store.remove(sha)
    with pytest.raises(InvalidModel, match="not the expected"):
        store.ingest(digits_path, max_bytes=LIMIT, expect_sha256="0" * 64)
    assert _entries(store) == []


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "oversized"])
def test_refused_files_leave_nothing_behind(
    kind: str, store: BlobStore, digits_path: Path, tmp_path: Path
) -> None:
    data = digits_path.read_bytes()
    content = {
        "empty": b"",
        "text": b"hello, I am not a model\n",
        "truncated": data[: len(data) - 100],
        "oversized": data,
    }[kind]
    src = tmp_path / f"{kind}.onnx"
    src.write_bytes(content)
    limit = len(data) - 1 if kind == "oversized" else LIMIT
    with pytest.raises(InvalidModel) as info:
        store.ingest(src, max_bytes=limit)
    message = str(info.value)
    assert str(src) in message  # names the user's file, not our temp file
    assert TEMP_PREFIX not in message
    if kind == "oversized":
        assert f"{limit}-byte limit" in message and "models.max_model_bytes" in message
    else:
        assert "ONNX model" in message
    with pytest.raises(InvalidModel):
        store.ingest_bytes(content, max_bytes=limit)
    assert _entries(store) == []


def test_oversized_stream_stops_early(store: BlobStore, tmp_path: Path) -> None:
    class Source:
        reads = 0

        def __iter__(self):  # type: ignore[no-untyped-def]
            while True:
                Source.reads += 1
                yield b"\0" * 1024

    with pytest.raises(InvalidModel, match="larger than the 4096-byte limit"):
        store._ingest(Source(), "stream", 4096, None)
    assert Source.reads == 5
    assert _entries(store) == []


def test_unreadable_sources(store: BlobStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidModel, match="cannot read model file"):
        store.ingest(tmp_path / "missing.onnx", max_bytes=LIMIT)
    with pytest.raises(InvalidModel):
        store.ingest(tmp_path, max_bytes=LIMIT)
    with pytest.raises(InvalidModel, match="not a regular file"):
        store.ingest(Path("/dev/null"), max_bytes=LIMIT)
    assert _entries(store) == []


def test_remove_list_and_sweep(store: BlobStore, digits_path: Path) -> None:
    info = store.ingest(digits_path, max_bytes=LIMIT)
    leftover = store.root / f"{TEMP_PREFIX}crashed.onnx"
    leftover.write_bytes(b"partial")
    (store.root / "notes.txt").write_text("not a blob")
    assert store.list() == [info]
    assert store.sweep() == 1
    assert not leftover.exists() and (store.root / "notes.txt").exists()
    assert store.remove(info.sha256) is True
    assert store.remove(info.sha256) is False
    assert not store.has(info.sha256) and store.list() == []


@pytest.mark.parametrize(
    "sha", ["", "../../etc/passwd", "a" * 63, "A" * 64, "g" * 64, "a" * 64 + "/..", None]
)
def test_hashes_are_validated(store: BlobStore, sha: object) -> None:
    for call in (store.path, store.has, store.remove):
        with pytest.raises(InvalidName, match="64 lowercase hex"):
            call(sha)  # type: ignore[arg-type]
