"""Files the node writes for itself, written so that a crash or a power cut leaves either the
old file or the new one, never an empty or half-written one, and readable by the owner only.

Owns the one way to write such a file (config, key, certificates, tokens, runtime info): write
a temporary file in the same directory, fsync it, rename it over the target, fsync the
directory (without the last step the rename itself can be lost: a simulated power cut right
after ``outpost init`` brought ``outpost.toml`` back empty, and the daemon then started with
an empty node name). Also owns the modes of the private directories (data directory,
authority directory: 0700) and of the database files (0600), also when they already existed.

Must never: decide what goes in a file, or loosen a mode.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from node.limits import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE


def fsync_dir(directory: Path) -> None:
    """Make renames and unlinks in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | str, *, mode: int = PRIVATE_FILE_MODE,
                 exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` atomically and durably, with ``mode``.

    ``exclusive``: refuse with FileExistsError when ``path`` exists (two concurrent
    ``outpost init`` runs cannot both write a key): the file is linked into place, not renamed.
    """
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # O_CREAT's mode is cut by the umask, and a stale tmp kept its own
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(path.parent)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) or tighten it: mode 0700 whether or not it existed."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    tighten(path, PRIVATE_DIR_MODE)
    return path


def tighten(path: Path, mode: int) -> None:
    """Take away every permission beyond ``mode`` (never adds any); a missing path is left."""
    try:
        current = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return
    if current & ~mode:
        os.chmod(path, current & mode)


def private_files(*paths: Path) -> None:
    """Mode 0600 on each of ``paths`` that exists (database, WAL, shared memory)."""
    for path in paths:
        tighten(path, PRIVATE_FILE_MODE)


__all__ = ["fsync_dir", "private_dir", "private_files", "tighten", "write_atomic"]
