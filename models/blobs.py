"""Content-addressed model files: ``<root>/<sha256>.onnx``.

Owns the blob directory: getting a file in (streamed, size-capped, hashed, fsynced,
validated, atomically renamed), finding, listing and removing blobs, and sweeping the
temporary files a crash left behind. A blob that exists is complete and valid: nothing
is ever written under a final name. Must never know model names or versions (the
daemon's manifests in SQLite map those to hashes) and never run inference.

Blocking file I/O: the daemon calls these methods through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from models.errors import InvalidModel, InvalidName
from models.signature import inspect_model

__all__ = ["BlobInfo", "BlobStore"]

TEMP_PREFIX = ".incoming-"
"""Temporary files start with this (hidden, and never a valid hash) so ``sweep`` finds them."""

_CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
_LIMIT_KEY = "models.max_model_bytes"


@dataclass(frozen=True, slots=True)
class BlobInfo:
    sha256: str
    size: int
    path: Path


class BlobStore:
    """Model files named by the SHA-256 of their content, in one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    # -- getting files in -------------------------------------------------------------

    def ingest(self, src: Path, *, max_bytes: int, expect_sha256: str | None = None) -> BlobInfo:
        """Copy the model file ``src`` into the store and return its blob.

        Refuses with InvalidModel, leaving nothing behind, when ``src`` exceeds
        ``max_bytes``, is not an ONNX model onnxruntime can load, or does not hash to
        ``expect_sha256`` (when given, e.g. for a model pulled from a peer). Ingesting
        content that is already stored returns the existing blob.
        """
        try:
            handle = src.open("rb")
        except OSError as exc:
            raise InvalidModel(
                f"cannot read model file {src}: {exc.strerror}; check the path"
            ) from exc
        with handle:
            if not os.path.isfile(handle.name):
                raise InvalidModel(f"{src} is not a regular file; give the path of an .onnx file")
            return self._ingest(
                iter(lambda: handle.read(_CHUNK), b""), str(src), max_bytes, expect_sha256
            )

    def ingest_bytes(
        self, data: bytes, *, max_bytes: int, expect_sha256: str | None = None
    ) -> BlobInfo:
        """Like ``ingest`` for a model already in memory."""
        view = memoryview(data)
        chunks = (view[i : i + _CHUNK] for i in range(0, len(view), _CHUNK))
        return self._ingest(chunks, "the uploaded model", max_bytes, expect_sha256)

    def _ingest(
        self,
        chunks: Iterable[bytes | memoryview],
        source: str,
        max_bytes: int,
        expect_sha256: str | None,
    ) -> BlobInfo:
        if expect_sha256 is not None:
            _check_sha(expect_sha256)
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=TEMP_PREFIX, suffix=".onnx")
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise InvalidModel(
                            f"{source} is larger than the {max_bytes}-byte limit; raise "
                            f"{_LIMIT_KEY} in the node config to accept bigger models"
                        )
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            if expect_sha256 is not None and sha != expect_sha256:
                raise InvalidModel(
                    f"{source} hashes to {sha}, not the expected {expect_sha256}; the copy is "
                    "corrupt or was altered, fetch it again"
                )
            final = self._path(sha)
            if final.exists():
                return BlobInfo(sha, size, final)
            try:
                inspect_model(tmp)
            except InvalidModel as exc:
                raise InvalidModel(str(exc).replace(str(tmp), source)) from exc
            os.chmod(tmp, 0o444)  # content-addressed: never modified in place
            os.replace(tmp, final)
            self._fsync_dir()
            return BlobInfo(sha, size, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    # -- looking blobs up ------------------------------------------------------------

    def path(self, sha256: str) -> Path:
        """Where the blob ``sha256`` lives (whether or not it exists)."""
        return self._path(_check_sha(sha256))

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def remove(self, sha256: str) -> bool:
        """Delete a blob; False when it was not there."""
        try:
            self.path(sha256).unlink()
        except FileNotFoundError:
            return False
        self._fsync_dir()
        return True

    def list(self) -> list[BlobInfo]:
        """Every stored blob, sorted by hash."""
        return sorted(self._scan(), key=lambda info: info.sha256)

    def sweep(self) -> int:
        """Remove temporary files left by an interrupted ingest; returns how many.

        Call at startup, before any ingest runs: it would also remove in-flight ones.
        """
        removed = 0
        for entry in os.scandir(self.root):
            if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
        return removed

    def _scan(self) -> Iterator[BlobInfo]:
        for entry in os.scandir(self.root):
            stem, _, ext = entry.name.partition(".")
            if ext == "onnx" and _SHA256.fullmatch(stem) and entry.is_file():
                yield BlobInfo(stem, entry.stat().st_size, Path(entry.path))

    def _path(self, sha256: str) -> Path:
        return self.root / f"{sha256}.onnx"

    def _fsync_dir(self) -> None:
        # Makes the rename/unlink itself durable, not just the file's bytes.
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _check_sha(sha256: str) -> str:
    if not isinstance(sha256, str) or _SHA256.fullmatch(sha256) is None:
        raise InvalidName(
            f"{sha256!r} is not a model blob hash: use 64 lowercase hex digits (SHA-256)"
        )
    return sha256
