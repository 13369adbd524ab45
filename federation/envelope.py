"""Signed datagram envelopes with replay protection (the UDP half of peer authentication).

Every gossip datagram is wrapped as::

    b"OPG1" | len(node_id): u8 | node_id (UTF-8) | boot: u64 BE | seq: u64 BE | payload | sig (64)

``sig`` is the sender's Ed25519 signature over everything before it. ``boot`` identifies one run
of the sender (its start time in nanoseconds, so it grows across restarts) and ``seq`` counts its
datagrams within that run. A receiver keeps, per sender, the newest boot and a sliding window of
seen sequence numbers: a datagram from an older boot, below the window, or already seen is a
replay and is dropped. Pure bytes in, bytes out: keys and state are passed in.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from federation.errors import BadSignature, MalformedInput

MAGIC = b"OPG1"
SIG_BYTES = 64
_HEAD = struct.Struct(">QQ")
# A window of 1024 datagrams: reordering on a LAN or a WAN path stays far inside it, and the
# bitmap is a single int per sender.
REPLAY_WINDOW = 1024


@dataclass(frozen=True)
class Opened:
    node_id: str
    boot: int
    seq: int
    payload: bytes


def seal(key: Ed25519PrivateKey, node_id: str, boot: int, seq: int, payload: bytes) -> bytes:
    ident = node_id.encode()
    if not 0 < len(ident) < 256:
        raise ValueError("node id must be 1-255 bytes")
    body = MAGIC + bytes([len(ident)]) + ident + _HEAD.pack(boot, seq) + payload
    return body + key.sign(body)


def peek_sender(datagram: bytes) -> str:
    """The claimed sender, to look up its key; raises MalformedInput."""
    if len(datagram) < len(MAGIC) + 1 + _HEAD.size + SIG_BYTES or not datagram.startswith(MAGIC):
        raise MalformedInput("not an Outpost gossip datagram")
    n = datagram[len(MAGIC)]
    try:
        return datagram[len(MAGIC) + 1 : len(MAGIC) + 1 + n].decode()
    except UnicodeDecodeError:
        raise MalformedInput("sender id is not UTF-8") from None


def open_sealed(datagram: bytes, public_key: Ed25519PublicKey) -> Opened:
    node_id = peek_sender(datagram)
    start = len(MAGIC) + 1 + len(node_id.encode())
    if len(datagram) < start + _HEAD.size + SIG_BYTES:
        raise MalformedInput("datagram truncated")
    body, sig = datagram[:-SIG_BYTES], datagram[-SIG_BYTES:]
    try:
        public_key.verify(sig, body)
    except InvalidSignature:
        raise BadSignature(f"datagram claiming to be from {node_id} is not signed by it") from None
    boot, seq = _HEAD.unpack_from(body, start)
    return Opened(node_id, boot, seq, body[start + _HEAD.size :])


@dataclass
class ReplayGuard:
    """Per-sender (boot, highest seq, seen bitmap); :meth:`accept` is False for replays."""

    _state: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def accept(self, node_id: str, boot: int, seq: int) -> bool:
        held = self._state.get(node_id)
        if held is None or boot > held[0]:
            self._state[node_id] = (boot, seq, 1)
            return True
        held_boot, top, seen = held
        if boot < held_boot:
            return False
        if seq > top:
            shift = seq - top
            seen = ((seen << shift) | 1) & ((1 << REPLAY_WINDOW) - 1) if shift < REPLAY_WINDOW else 1
            self._state[node_id] = (boot, seq, seen)
            return True
        offset = top - seq
        if offset >= REPLAY_WINDOW or seen >> offset & 1:
            return False
        self._state[node_id] = (boot, top, seen | (1 << offset))
        return True
