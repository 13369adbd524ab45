"""C2SP ``tlog-tiles``: tile addressing, tile and entry-bundle encoding, and rebuilding the
tiles of a log from its entries (what an offline verifier compares the served tiles with).

Owns: the tile paths ``tile/<L>/<N>[.p/<W>]`` and ``tile/entries/<N>[.p/<W>]`` (c2sp.org/
tlog-tiles; the Go reference is golang.org/x/mod/sumdb/tlog), which stored Merkle nodes a tile
is made of, which tiles exist at a tree size, the entry bundle format (big-endian uint16
length-prefixed entries), and :class:`TileBuilder`, which recomputes every tile of a tree from
its entries in O(log n) memory.

Must never: open sockets or files or read the clock; the daemon reads node hashes from its
store and the verifier fetches tiles over HTTP, both outside this module.

Theory of operation
-------------------
Tiles have height 8: the tile at level ``L``, index ``N`` holds, for ``i`` in 0..255, the hash
of the perfect subtree of ``256**L`` leaves starting at leaf ``(N * 256 + i) * 256**L`` — that
is the Merkle node ``(8 * L, N * 256 + i)`` of :mod:`federation.merkle`, which the daemon
already stores (``audit_node``). So serving a tile is one ``IN (...)`` query of up to 256 node
keys and a concatenation; nothing is precomputed or copied.

A full tile has 256 hashes (8,192 bytes) and never changes. At tree size ``s`` the rightmost
tile of level ``L`` is partial with ``floor(s / 256**L) mod 256`` hashes; any narrower partial
tile whose hashes exist is also a valid (immutable) tile of an earlier size, and is served.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from federation.errors import BadProof, MalformedInput
from federation.merkle import EMPTY_ROOT, HASH_SIZE, NodeId, node_hash

__all__ = [
    "FULL_WIDTH",
    "MAX_ENTRY_BYTES",
    "TILE_HEIGHT",
    "TileBuilder",
    "TileId",
    "decode_bundle",
    "decode_tile",
    "encode_bundle",
    "encode_index",
    "parse_tile_path",
    "tile_exists",
    "tile_nodes",
    "tiles_at",
]

TILE_HEIGHT = 8
FULL_WIDTH = 1 << TILE_HEIGHT  # 256 hashes or entries per full tile
# Entries are length-prefixed with a uint16 in bundles: larger entries cannot be served.
MAX_ENTRY_BYTES = 0xFFFF
# Tile levels are 0..63 by the spec (a decimal with no leading zeros).
MAX_LEVEL = 63
# The tile index bound keeps the served tree within merkle.MAX_TREE_SIZE (2**53 leaves).
MAX_INDEX = 2**53

_INDEX_PART = re.compile(r"x[0-9]{3}")
_LAST_PART = re.compile(r"[0-9]{3}")
_LEVEL = re.compile(r"0|[1-9][0-9]?")
_WIDTH = re.compile(r"[1-9][0-9]{0,2}")


@dataclass(frozen=True, slots=True)
class TileId:
    """A tile (``level`` >= 0) or an entry bundle (``level`` = -1), ``width`` 1..256."""

    level: int
    index: int
    width: int = FULL_WIDTH

    @property
    def is_entries(self) -> bool:
        return self.level < 0

    @property
    def is_full(self) -> bool:
        return self.width == FULL_WIDTH

    @property
    def path(self) -> str:
        """The path below the log's prefix, e.g. ``tile/0/x001/234.p/7``."""
        head = "tile/entries/" if self.is_entries else f"tile/{self.level}/"
        tail = "" if self.is_full else f".p/{self.width}"
        return head + encode_index(self.index) + tail

    @property
    def span(self) -> int:
        """Leaves one hash (or entry) of this tile covers: ``256**level``."""
        return 1 << (TILE_HEIGHT * max(self.level, 0))

    @property
    def end(self) -> int:
        """The tree size this tile needs: leaves up to the end of its last hash."""
        return (self.index * FULL_WIDTH + self.width) * self.span


def encode_index(index: int) -> str:
    """``1234067`` -> ``x001/x234/067``: 3-digit elements, all but the last prefixed ``x``."""
    if index < 0:
        raise ValueError(f"tile index {index} is negative")
    parts = [f"{index % 1000:03d}"]
    index //= 1000
    while index:
        parts.append(f"x{index % 1000:03d}")
        index //= 1000
    return "/".join(reversed(parts))


def parse_tile_path(path: str) -> TileId:
    """Parse ``tile/<L>/<N>[.p/<W>]`` or ``tile/entries/<N>[.p/<W>]`` (no leading slash).

    Raises MalformedInput naming what is wrong; accepts only the canonical spelling, so one
    tile has one URL (caches and the immutable headers depend on that).
    """
    parts = path.split("/")
    if len(parts) < 3 or parts[0] != "tile":
        raise MalformedInput("tile paths look like tile/<L>/<N>[.p/<W>] or tile/entries/<N>")
    level_text, rest = parts[1], parts[2:]
    if level_text == "entries":
        level = -1
    elif _LEVEL.fullmatch(level_text) and int(level_text) <= MAX_LEVEL:
        level = int(level_text)
    else:
        raise MalformedInput(f"tile level {level_text!r} must be a decimal 0..63 or 'entries'")
    width = FULL_WIDTH
    if len(rest) >= 2 and rest[-2].endswith(".p"):
        width_text = rest[-1]
        if not _WIDTH.fullmatch(width_text) or int(width_text) >= FULL_WIDTH:
            raise MalformedInput(f"partial tile width {width_text!r} must be a decimal 1..255")
        width = int(width_text)
        rest = [*rest[:-2], rest[-2][:-2]]
    if not rest or not _LAST_PART.fullmatch(rest[-1]) or not all(
        _INDEX_PART.fullmatch(p) for p in rest[:-1]
    ):
        raise MalformedInput("tile index must be 3-digit path elements, all but the last "
                             "starting with 'x' (e.g. x001/x234/067)")
    if len(rest) > 1 and rest[0] == "x000":
        raise MalformedInput("tile index has a leading x000 element; use the shortest form")
    index = 0
    for p in rest:
        index = index * 1000 + int(p.lstrip("x"))
    if index >= MAX_INDEX:
        raise MalformedInput(f"tile index {index} is beyond any tree this log can hold")
    return TileId(level, index, width)


def tile_nodes(tile: TileId) -> list[NodeId]:
    """The stored Merkle nodes ``(level, index)`` whose hashes make up a hash tile, in order."""
    if tile.is_entries:
        raise ValueError("entry bundles are made of entries, not nodes")
    first = tile.index * FULL_WIDTH
    return [(TILE_HEIGHT * tile.level, first + i) for i in range(tile.width)]


def tile_exists(tile: TileId, size: int) -> bool:
    """Whether a tree of ``size`` leaves holds every hash (or entry) of ``tile``."""
    return tile.end <= size


def tiles_at(size: int) -> list[TileId]:
    """The rightmost tile of every level at tree size ``size`` (partial or full), bottom up:
    with the full tiles to their left they hold every hash a proof at ``size`` needs."""
    out: list[TileId] = []
    level = 0
    while (size >> (TILE_HEIGHT * level)) > 0:
        count = size >> (TILE_HEIGHT * level)  # hashes that exist at this level
        width = count % FULL_WIDTH
        index = count // FULL_WIDTH
        if width:
            out.append(TileId(level, index, width))
        else:
            out.append(TileId(level, index - 1))
        level += 1
    return out


def encode_tile(hashes: Iterable[bytes]) -> bytes:
    data = b"".join(hashes)
    if len(data) % HASH_SIZE:
        raise ValueError("tile hashes must be 32 bytes each")
    return data


def decode_tile(data: bytes, width: int) -> list[bytes]:
    """Split a served tile into its hashes; MalformedInput unless exactly ``width`` hashes."""
    if len(data) != width * HASH_SIZE:
        raise MalformedInput(f"tile has {len(data)} bytes, a tile of width {width} has "
                             f"{width * HASH_SIZE}")
    return [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]


def encode_bundle(entries: Iterable[bytes]) -> bytes:
    """Entries as big-endian uint16 length-prefixed records (C2SP entry bundle)."""
    out = bytearray()
    for entry in entries:
        if len(entry) > MAX_ENTRY_BYTES:
            raise ValueError(f"entry of {len(entry)} bytes does not fit a bundle (max 65535)")
        out += struct.pack(">H", len(entry))
        out += entry
    return bytes(out)


def decode_bundle(data: bytes, width: int | None = None) -> list[bytes]:
    """Entries of a bundle; MalformedInput on a truncated record or (given ``width``) a count
    that is not ``width``."""
    entries: list[bytes] = []
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise MalformedInput("entry bundle ends inside a length prefix")
        (n,) = struct.unpack_from(">H", data, pos)
        pos += 2
        if pos + n > len(data):
            raise MalformedInput("entry bundle ends inside an entry")
        entries.append(data[pos : pos + n])
        pos += n
        if len(entries) > FULL_WIDTH:
            raise MalformedInput("entry bundle holds more than 256 entries")
    if width is not None and len(entries) != width:
        raise MalformedInput(f"entry bundle holds {len(entries)} entries, expected {width}")
    return entries


def subtree_root(hashes: list[bytes]) -> bytes:
    """Root of a perfect tree of 256 hashes (a full tile's hash one level up)."""
    level = hashes
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


class TileBuilder:
    """Recompute every tile of a tree of ``size`` leaves from its entries, in order.

    Feed entries (e.g. one bundle at a time) with :meth:`add`; it returns the full tiles those
    leaves completed, with their bytes; :meth:`finish` returns the rightmost partial tiles and
    :meth:`root` the tree's root. The caller compares each with what the log serves. Memory:
    at most 255 pending hashes per level, plus the frontier (<= 64 hashes).

    One pass, about two hashes per leaf: the frontier (the compact range of RFC 9162 roots,
    kept here as a bare stack of hashes) merges perfect subtrees as leaves arrive, and every
    merge that completes a subtree of ``256**L`` leaves (level ``8 * L``) is exactly the next
    hash of the level-``L`` tile, so tiles cost no hashing of their own.
    """

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError("size must be >= 0")
        self.size = size
        self._pending: list[list[bytes]] = [[]]
        self._stack: list[bytes] = []
        self._count = 0
        self._marks: dict[int, bytes] = {}
        self._watch: set[int] = set()

    def watch(self, size: int) -> None:
        """Remember the root at tree size ``size`` as it goes past (for :meth:`root_at`)."""
        if 0 < size <= self.size:
            self._watch.add(size)

    def root_at(self, size: int) -> bytes | None:
        return self._marks.get(size)

    @property
    def count(self) -> int:
        return self._count

    def add(self, entries: Iterable[bytes]) -> list[tuple[TileId, bytes]]:
        done: list[tuple[TileId, bytes]] = []
        stack, pending, sha = self._stack, self._pending, hashlib.sha256
        for entry in entries:
            n = self._count
            if n >= self.size:
                raise BadProof(f"more entries than the tree size {self.size}")
            h = sha(b"\x00" + entry).digest()
            pending[0].append(h)
            level = 0
            while n & 1:  # merge with the waiting left sibling, as CompactRange.append does
                h = sha(b"\x01" + stack.pop() + h).digest()
                n >>= 1
                level += 1
                if level % TILE_HEIGHT == 0:
                    tile_level = level // TILE_HEIGHT
                    if len(pending) <= tile_level:
                        pending.append([])
                    pending[tile_level].append(h)
            stack.append(h)
            self._count += 1
            if level >= TILE_HEIGHT:  # 256 more leaves: a level-0 tile (and maybe more)
                self._emit(done)
            if self._count in self._watch:
                self._marks[self._count] = self.root()
        return done

    def _emit(self, done: list[tuple[TileId, bytes]]) -> None:
        for level, hashes in enumerate(self._pending):
            if len(hashes) == FULL_WIDTH:
                index = (self._count >> (TILE_HEIGHT * (level + 1))) - 1
                done.append((TileId(level, index), b"".join(hashes)))
                self._pending[level] = []

    def finish(self) -> list[tuple[TileId, bytes]]:
        """The partial tiles of the tree (once every entry was added)."""
        if self._count != self.size:
            raise BadProof(f"only {self._count} of {self.size} entries were added")
        out: list[tuple[TileId, bytes]] = []
        for tile in tiles_at(self.size):
            if tile.is_full:
                continue
            pending = self._pending[tile.level] if tile.level < len(self._pending) else []
            out.append((tile, b"".join(pending)))
        return out

    def root(self) -> bytes:
        """RFC 9162 root of the leaves added so far: the right fold of the frontier."""
        if not self._stack:
            return EMPTY_ROOT
        acc = self._stack[-1]
        for h in reversed(self._stack[:-1]):
            acc = node_hash(h, acc)
        return acc


def bundles(size: int) -> Iterator[TileId]:
    """Every entry bundle of a tree of ``size`` leaves, left to right (the last may be partial)."""
    full, rest = divmod(size, FULL_WIDTH)
    for n in range(full):
        yield TileId(-1, n)
    if rest:
        yield TileId(-1, full, rest)


__all__ += ["bundles", "encode_tile", "subtree_root"]
