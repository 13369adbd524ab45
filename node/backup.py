"""``outpost backup`` and ``outpost restore``: a consistent copy of a node, taken online.

Owns the backup layout and its checks. A backup is a directory (mode 0700: it holds the node's
private key)::

    BACKUP/
      manifest.json      node id, time, outpost version, sha256 and size of every file below
      outpost.db         SQLite online backup API: one consistent snapshot, taken while the
                         daemon keeps writing (no lock on the data directory is needed)
      outpost.toml  node.key  node.crt  federation.crt     (those that exist)
      blobs/<sha256>.onnx                                   every model file the snapshot names

Order matters: the database snapshot first, then the blobs. A model file is written before
its row, so every row in the snapshot has its file already; blobs added after the snapshot are
simply not needed by it.

Restore copies a backup into a data directory that holds no node, checking every file against
the manifest first; the restored node's audit log then verifies (``outpost audit verify``).
Never touches a data directory that already holds a node, and never overwrites the backup.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from node.config import CONFIG_FILE
from node.enrollment import AUTHORITY_CERT, NODE_CERT
from node.errors import OperatorError
from node.keys import KEY_FILE
from node.store import DB_FILE

MANIFEST = "manifest.json"
FORMAT = "outpost-backup/1"
_FILES = (CONFIG_FILE, KEY_FILE, NODE_CERT, AUTHORITY_CERT)


class BackupError(OperatorError, RuntimeError):
    """A backup or restore cannot be done; the message names the fix."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def backup(data_dir: Path, out: Path) -> dict[str, Any]:
    """Copy ``data_dir`` (running daemon or not) into the new directory ``out``."""
    db = data_dir / DB_FILE
    if not db.exists():
        raise BackupError(f"{data_dir} holds no node ({DB_FILE} missing); check --data-dir")
    if out.exists() and any(out.iterdir()):
        raise BackupError(f"{out} exists and is not empty; give a new directory")
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    started = time.monotonic()
    source = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    target = sqlite3.connect(out / DB_FILE)
    try:
        # One step: in WAL mode the copy reads one snapshot while the daemon keeps writing;
        # a copy in several steps would restart whenever the log grew between two of them.
        source.backup(target, pages=-1)
        target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        models = [(row[0], row[1], row[2]) for row in
                  target.execute("SELECT name, version, sha256 FROM models")]
    finally:
        target.close()
        source.close()
    for name in _FILES:
        if (data_dir / name).exists():
            shutil.copy2(data_dir / name, out / name)
    blobs = out / "blobs"
    blobs.mkdir()
    for name, version, sha in models:
        src = data_dir / "blobs" / f"{sha}.onnx"
        if not src.exists():
            raise BackupError(f"model {name}:{version} has no file {src}; the node's store is "
                              "damaged — re-add the model, then back up again")
        if not (blobs / src.name).exists():
            shutil.copy2(src, blobs / src.name)
    files = {str(p.relative_to(out)): {"sha256": _sha256(p), "size": p.stat().st_size}
             for p in sorted(out.rglob("*")) if p.is_file()}
    from importlib.metadata import PackageNotFoundError, version

    from node.config import load

    try:
        outpost_version = version("outpost")
    except PackageNotFoundError:
        outpost_version = "0+unknown"
    node_id = load(data_dir).node.name
    manifest = {"format": FORMAT, "node_id": node_id, "created": time.time(),
                "outpost_version": outpost_version, "files": files}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return {"backup": str(out), "node_id": node_id, "files": len(files), "models": len(models),
            "bytes": sum(f["size"] for f in files.values()),
            "seconds": round(time.monotonic() - started, 3)}


def verify(backup_dir: Path) -> dict[str, Any]:
    """The manifest, after checking every file it lists; BackupError naming the first bad one."""
    try:
        manifest: dict[str, Any] = json.loads((backup_dir / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(f"{backup_dir} is not an outpost backup ({MANIFEST} missing)") from None
    except json.JSONDecodeError as exc:
        raise BackupError(f"{backup_dir / MANIFEST} is damaged ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{backup_dir} is a {manifest.get('format')!r} backup; this outpost "
                          f"reads {FORMAT}")
    for rel, facts in manifest["files"].items():
        path = backup_dir / rel
        if not path.is_file() or _sha256(path) != facts["sha256"]:
            raise BackupError(f"backup file {path} is missing or changed since the backup was "
                              "taken; use another backup")
    return manifest


def restore(backup_dir: Path, data_dir: Path) -> dict[str, Any]:
    """Copy a checked backup into ``data_dir``, which must not hold a node."""
    manifest = verify(backup_dir)
    if (data_dir / CONFIG_FILE).exists() or (data_dir / DB_FILE).exists():
        raise BackupError(f"{data_dir} already holds a node; restore into an empty directory "
                          "(stop and move the old one aside first)")
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    (data_dir / "blobs").mkdir(exist_ok=True)
    for rel in manifest["files"]:
        tmp = data_dir / (rel + ".restoring")
        shutil.copy2(backup_dir / rel, tmp)
        os.replace(tmp, data_dir / rel)
    if (data_dir / KEY_FILE).exists():
        os.chmod(data_dir / KEY_FILE, 0o600)
    return {"data_dir": str(data_dir), "node_id": manifest["node_id"],
            "files": len(manifest["files"]),
            "backup_created": manifest["created"]}
