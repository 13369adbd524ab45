"""The node's Ed25519 key on disk: created once at ``outpost init``, mode 0600, never overwritten.

Owns only the key file. What the key signs (checkpoints, datagrams, enrollment requests) and
what certifies it (the federation authority) live in ``federation``.
"""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.durable import write_atomic
from node.errors import OperatorError

KEY_FILE = "node.key"


class NodeKeyError(OperatorError):
    """The node key is missing, unreadable or not an Ed25519 private key."""


def key_path(data_dir: Path) -> Path:
    return data_dir / KEY_FILE


def create_key(data_dir: Path) -> tuple[Ed25519PrivateKey, bool]:
    """Create the node key unless one exists. Returns (key, created)."""
    path = key_path(data_dir)
    if path.exists():
        return load_key(data_dir), False
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Exclusive: two concurrent `outpost init` runs cannot both write a key; durable: a power
    # cut cannot leave an empty key file behind.
    write_atomic(path, pem, exclusive=True)
    return key, True


def load_key(data_dir: Path) -> Ed25519PrivateKey:
    path = key_path(data_dir)
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        raise NodeKeyError(
            f"node key {path} is missing; run `outpost init --data-dir {data_dir}`"
        ) from None
    except OSError as exc:
        raise NodeKeyError(
            f"node key {path} is unreadable ({exc.strerror}); check its owner and mode (0600)"
        ) from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise NodeKeyError(
            f"node key {path} is readable by other users (mode {stat.S_IMODE(mode):04o}); "
            f"run `chmod 600 {path}`"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise NodeKeyError(
            f"node key {path} is not a PEM private key ({exc}); restore it from backup"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise NodeKeyError(f"node key {path} is not an Ed25519 key; restore it from backup")
    return key
