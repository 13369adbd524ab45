"""RFC 9162 §2.1 Merkle tree math for the audit log: hashing, proofs, verification.

Owns: leaf and interior hashing, the compact range (frontier) that makes appending
O(log n), proof *plans* (which stored perfect-subtree hashes a proof needs), proof
assembly and verification, an in-memory tree, and the JSON proof formats of DESIGN §3.

Must never: touch storage, sockets, files or the clock. Storage is reached only through
a ``get_node(level, index)`` callback or, for async stores, through a :class:`ProofPlan`
that lists the node ids to fetch in one query before assembling the proof.

Theory of operation
-------------------
Node ``(level, index)`` is the perfect subtree of ``2**level`` leaves starting at leaf
``index * 2**level``; level 0 nodes are the leaf hashes. Any range ``[begin, end)`` of
leaves splits greedily into a few such perfect nodes, and RFC 9162's MTH of a range
that starts on a subtree boundary (every range its recursion visits does) is the
right-fold ``H(n1, H(n2, ... nk))`` of that split. So a store that keeps every perfect
node that exists — the leaves plus about one interior node per leaf — can answer:

* a root at any size: fold the <= log2(n) nodes that split ``[0, size)``;
* an inclusion proof: ~log2(n) elements; at most one of them (the right-hand border
  sibling) is a non-perfect range and costs a further <= log2(n) nodes;
* a consistency proof: the same shape.

Appending leaf ``i`` creates node ``(0, i)`` plus one parent for every trailing 1-bit of
``i`` — amortised one interior node per append, O(log n) worst case — which
:meth:`CompactRange.append` returns so the caller can persist them in the same
transaction as the entry. :func:`node_key` gives each node one integer (in-order
position) so SQLite can keep them in an ``INTEGER PRIMARY KEY`` table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from federation.canonical import b64decode, b64encode, canonical_json, parse_json_object, sha256
from federation.errors import BadProof, MalformedInput

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "ConsistencyProof",
    "GetNode",
    "InclusionProof",
    "MemoryTree",
    "NodeHash",
    "NodeId",
    "ProofPlan",
    "consistency_plan",
    "consistency_proof",
    "inclusion_plan",
    "inclusion_proof",
    "leaf_hash",
    "node_from_key",
    "node_hash",
    "node_key",
    "range_nodes",
    "root",
    "root_from_leaves",
    "root_plan",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = sha256(b"")  # MTH({}) = SHA-256() per RFC 9162 §2.1.1

# A proof may not be longer than this many hashes: 2 * 64 covers any 64-bit tree size.
# Bounding it keeps a peer from making us hash megabytes of "proof".
MAX_PROOF_HASHES = 128
# Tree sizes are bounded so they stay exact in JSON (RFC 8785 numbers are doubles).
MAX_TREE_SIZE = 2**53

NodeId = tuple[int, int]
"""``(level, index)`` of a perfect subtree: ``2**level`` leaves from ``index * 2**level``."""

GetNode = Callable[[int, int], bytes]
"""Returns the hash of perfect node ``(level, index)``; only asked for nodes that exist."""


def leaf_hash(entry: bytes) -> bytes:
    """RFC 9162 leaf hash: SHA-256(0x00 || entry)."""
    return sha256(b"\x00" + entry)


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: SHA-256(0x01 || left || right)."""
    return sha256(b"\x01" + left + right)


def node_key(level: int, index: int) -> int:
    """One integer per perfect node: its in-order position in an infinite binary tree.

    Leaves get the even numbers (``2 * index``), level-1 nodes ``4 * index + 1``, and so
    on; a node's level is the number of trailing 1-bits of its key. The daemon uses this
    as an ``INTEGER PRIMARY KEY`` so one B-tree lookup (or one ``IN (...)`` query) finds
    any node.
    """
    if level < 0 or index < 0:
        raise ValueError(f"node ({level}, {index}) does not exist; level and index are >= 0")
    return (index << (level + 1)) + (1 << level) - 1


def node_from_key(key: int) -> NodeId:
    """Inverse of :func:`node_key`."""
    if key < 0:
        raise ValueError(f"node key {key} is negative; keys come from node_key()")
    level = (~key & (key + 1)).bit_length() - 1  # number of trailing 1-bits
    return level, key >> (level + 1)


def range_nodes(begin: int, end: int) -> list[NodeId]:
    """Split leaves ``[begin, end)`` into the fewest perfect nodes, left to right."""
    out: list[NodeId] = []
    while begin < end:
        # Largest aligned power of two that starts at `begin` and fits before `end`.
        level = (begin & -begin).bit_length() - 1 if begin else (end - begin).bit_length() - 1
        while begin + (1 << level) > end:
            level -= 1
        out.append((level, begin >> level))
        begin += 1 << level
    return out


def _fold(hashes: Sequence[bytes]) -> bytes:
    """Right-fold H(h1, H(h2, ... hk)): the MTH of a range from its perfect split."""
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def _largest_power_of_two_below(n: int) -> int:
    """The k of RFC 9162 §2.1.1: largest power of two strictly smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


@dataclass(frozen=True, slots=True)
class NodeHash:
    """A perfect node and its hash, as returned by :meth:`CompactRange.append`."""

    level: int
    index: int
    hash: bytes

    @property
    def key(self) -> int:
        """:func:`node_key` of this node, for the daemon's node table."""
        return node_key(self.level, self.index)


@dataclass(frozen=True)
class ProofPlan:
    """Which perfect nodes a proof (or root) needs, and how to combine them.

    ``elements[j]`` lists the nodes whose right-fold is the j-th proof hash (one node
    for a perfect sibling; several for the right-border sibling). Async stores fetch
    :attr:`nodes` in one query and call :meth:`assemble`; sync stores pass a callback.
    """

    elements: tuple[tuple[NodeId, ...], ...]

    @property
    def nodes(self) -> list[NodeId]:
        """Distinct node ids to fetch, in first-use order."""
        return list(dict.fromkeys(n for element in self.elements for n in element))

    def assemble(self, nodes: Mapping[NodeId, bytes] | GetNode) -> list[bytes]:
        """Turn fetched node hashes into proof hashes (RFC 9162 audit-path order)."""
        get: GetNode = (lambda lv, ix: nodes[(lv, ix)]) if isinstance(nodes, Mapping) else nodes
        out = []
        for element in self.elements:
            hashes = [get(level, index) for level, index in element]
            for h in hashes:
                if len(h) != HASH_SIZE:
                    raise ValueError(f"stored node hash has {len(h)} bytes, want {HASH_SIZE}")
            out.append(_fold(hashes))
        return out


def _check_size(name: str, value: int) -> None:
    if not 0 <= value <= MAX_TREE_SIZE:
        raise ValueError(f"{name}={value} is out of range; use 0 <= {name} <= 2**53")


def root_plan(size: int) -> ProofPlan:
    """Plan for the root of the first ``size`` leaves (one element; empty when size=0)."""
    _check_size("size", size)
    return ProofPlan((tuple(range_nodes(0, size)),) if size else ())


def inclusion_plan(index: int, size: int) -> ProofPlan:
    """Plan for the RFC 9162 §2.1.3.1 inclusion proof of leaf ``index`` in tree ``size``."""
    _check_size("size", size)
    if not 0 <= index < size:
        raise ValueError(
            f"leaf index {index} is not in a tree of size {size}; need 0 <= index < size"
        )
    top_down: list[tuple[NodeId, ...]] = []
    start, m, n = 0, index, size
    while n > 1:  # PATH(m, D[start:start+n]) of RFC 9162, unrolled
        k = _largest_power_of_two_below(n)
        if m < k:
            top_down.append(tuple(range_nodes(start + k, start + n)))
            n = k
        else:
            top_down.append(tuple(range_nodes(start, start + k)))
            start, m, n = start + k, m - k, n - k
    return ProofPlan(tuple(reversed(top_down)))


def consistency_plan(old_size: int, new_size: int) -> ProofPlan:
    """Plan for the RFC 9162 §2.1.4.1 consistency proof between two tree sizes."""
    _check_size("old_size", old_size)
    _check_size("new_size", new_size)
    if old_size > new_size:
        raise ValueError(f"old_size {old_size} > new_size {new_size}; swap them")
    if old_size in (0, new_size):
        return ProofPlan(())
    top_down: list[tuple[NodeId, ...]] = []
    start, m, n, whole = 0, old_size, new_size, True
    while m != n:  # SUBPROOF(m, D[start:start+n], whole) of RFC 9162, unrolled
        k = _largest_power_of_two_below(n)
        if m <= k:
            top_down.append(tuple(range_nodes(start + k, start + n)))
            n = k
        else:
            top_down.append(tuple(range_nodes(start, start + k)))
            start, m, n, whole = start + k, m - k, n - k, False
    if not whole:
        top_down.append(tuple(range_nodes(start, start + m)))
    return ProofPlan(tuple(reversed(top_down)))


def root(size: int, get_node: GetNode) -> bytes:
    """Root hash of the first ``size`` leaves of a node store."""
    hashes = root_plan(size).assemble(get_node)
    return hashes[0] if hashes else EMPTY_ROOT


def inclusion_proof(index: int, size: int, get_node: GetNode) -> list[bytes]:
    """Inclusion proof for leaf ``index`` in tree ``size`` from a node store."""
    return inclusion_plan(index, size).assemble(get_node)


def consistency_proof(old_size: int, new_size: int, get_node: GetNode) -> list[bytes]:
    """Consistency proof from tree ``old_size`` to tree ``new_size`` from a node store."""
    return consistency_plan(old_size, new_size).assemble(get_node)


def root_from_leaves(leaf_hashes: Iterable[bytes]) -> bytes:
    """Root of a tree given its leaf hashes (not entries), in O(log n) memory."""
    cr = CompactRange()
    cr.extend(leaf_hashes)
    return cr.root()


# --- verification (RFC 9162 §2.1.3.2 and §2.1.4.2) -------------------------------


def _check_hashes(hashes: Sequence[bytes], what: str) -> None:
    if len(hashes) > MAX_PROOF_HASHES:
        raise BadProof(f"{what} has {len(hashes)} hashes, more than any tree needs")
    for h in hashes:
        if not isinstance(h, bytes) or len(h) != HASH_SIZE:
            raise BadProof(f"{what} holds a hash that is not {HASH_SIZE} bytes")


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root_hash: bytes
) -> None:
    """Check that ``leaf`` (a leaf hash) is at ``index`` in the tree ``size``/``root_hash``.

    Raises BadProof, naming what failed; returns None when the proof holds.
    """
    _check_hashes([leaf, root_hash, *proof], "inclusion proof")
    if not 0 <= index < size:
        raise BadProof(f"leaf index {index} is not within tree size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise BadProof(f"inclusion proof for {index} in {size} is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise BadProof(f"inclusion proof for {index} in {size} is too short")
    if r != root_hash:
        raise BadProof(f"inclusion proof for leaf {index} does not lead to the root of size {size}")


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """Check that tree ``old_size``/``old_root`` is a prefix of ``new_size``/``new_root``.

    Raises BadProof, naming what failed; returns None when the proof holds. Size 0 is
    consistent with anything (its root must be the empty hash); equal sizes need an
    empty proof and equal roots.
    """
    _check_hashes([old_root, new_root, *proof], "consistency proof")
    if not 0 <= old_size <= new_size:
        raise BadProof(f"old size {old_size} is not within 0..new size {new_size}")
    if old_size == 0:
        if proof:
            raise BadProof("consistency proof from size 0 must be empty")
        if old_root != EMPTY_ROOT:
            raise BadProof("a tree of size 0 must have the empty root SHA-256('')")
        return
    if old_size == new_size:
        if proof:
            raise BadProof("consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise BadProof(f"two different roots for the same size {old_size}")
        return
    path = list(proof)
    if not path:
        raise BadProof(f"consistency proof from {old_size} to {new_size} is empty")
    if old_size & (old_size - 1) == 0:  # old tree is perfect: its root is the first node
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise BadProof(f"consistency proof from {old_size} to {new_size} is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise BadProof(f"consistency proof from {old_size} to {new_size} is too short")
    if fr != old_root:
        raise BadProof(f"consistency proof does not reproduce the old root of size {old_size}")
    if sr != new_root:
        raise BadProof(f"consistency proof does not reproduce the new root of size {new_size}")


# --- incremental state --------------------------------------------------------------


class CompactRange:
    """The frontier of an append-only tree: the perfect nodes that split ``[0, size)``.

    Holds <= log2(size)+1 hashes, gives the root in O(log n), and appends in amortised
    O(1) hashing. Restore it after a restart with :meth:`from_store` (it needs exactly
    the nodes of ``range_nodes(0, size)``, see :meth:`nodes_for`).
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        _check_size("size", size)
        want = len(range_nodes(0, size))
        if len(hashes) != want:
            raise ValueError(f"a compact range of size {size} has {want} hashes, got {len(hashes)}")
        self._size = size
        self._hashes = list(hashes)

    @staticmethod
    def nodes_for(size: int) -> list[NodeId]:
        """The node ids to load to restore a range of ``size`` (left to right)."""
        return range_nodes(0, size)

    @classmethod
    def from_store(cls, size: int, get_node: GetNode) -> CompactRange:
        """Rebuild the frontier for ``size`` from a node store."""
        return cls(size, [get_node(lv, ix) for lv, ix in cls.nodes_for(size)])

    @property
    def size(self) -> int:
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        return tuple(self._hashes)

    def copy(self) -> CompactRange:
        """An independent copy: extend the copy, commit, then keep it (or drop it on error)."""
        return CompactRange(self._size, self._hashes)

    def append(self, leaf: bytes) -> list[NodeHash]:
        """Add one leaf hash; return the new perfect nodes (the leaf first) to persist."""
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"leaf hash has {len(leaf)} bytes, want {HASH_SIZE}; use leaf_hash()")
        index, level, h = self._size, 0, leaf
        created = [NodeHash(0, index, h)]
        while index & 1:  # a left sibling at this level is waiting in the frontier
            h = node_hash(self._hashes.pop(), h)
            index >>= 1
            level += 1
            created.append(NodeHash(level, index, h))
        self._hashes.append(h)
        self._size += 1
        return created

    def extend(self, leaves: Iterable[bytes]) -> list[NodeHash]:
        """Append several leaf hashes; return all new perfect nodes."""
        out: list[NodeHash] = []
        for leaf in leaves:
            out.extend(self.append(leaf))
        return out

    def root(self) -> bytes:
        return _fold(self._hashes) if self._hashes else EMPTY_ROOT


class MemoryTree:
    """Every perfect node in memory, as a list of levels (``levels[l][i]`` = node (l, i)).

    For tests, simulations and verifiers that hold a whole log; about 2n hashes.
    """

    __slots__ = ("levels",)

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self.levels: list[list[bytes]] = [[]]
        for leaf in leaf_hashes:
            self.append_leaf(leaf)

    @classmethod
    def from_entries(cls, entries: Iterable[bytes]) -> MemoryTree:
        return cls(leaf_hash(e) for e in entries)

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def append_entry(self, entry: bytes) -> None:
        self.append_leaf(leaf_hash(entry))

    def append_leaf(self, leaf: bytes) -> None:
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"leaf hash has {len(leaf)} bytes, want {HASH_SIZE}; use leaf_hash()")
        self.levels[0].append(leaf)
        level, index = 0, self.size - 1
        while index & 1:
            parent = node_hash(self.levels[level][index - 1], self.levels[level][index])
            level, index = level + 1, index >> 1
            if len(self.levels) == level:
                self.levels.append([])
            self.levels[level].append(parent)

    def get_node(self, level: int, index: int) -> bytes:
        return self.levels[level][index]

    def _size_or_current(self, size: int | None) -> int:
        n = self.size if size is None else size
        if not 0 <= n <= self.size:
            raise ValueError(f"size {n} is beyond this tree's {self.size} leaves")
        return n

    def root(self, size: int | None = None) -> bytes:
        return root(self._size_or_current(size), self.get_node)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_proof(index, self._size_or_current(size), self.get_node)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        return consistency_proof(old_size, self._size_or_current(new_size), self.get_node)


# --- JSON export (DESIGN §3 contract) ------------------------------------------------


def _int_field(obj: Mapping[str, Any], key: str, what: str) -> int:
    value = obj.get(key)
    # bool is an int in Python; a JSON `true` is not a tree size.
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedInput(f"{what}: {key!r} must be an integer")
    if not 0 <= value <= MAX_TREE_SIZE:
        raise MalformedInput(f"{what}: {key!r}={value} is out of range 0..2**53")
    return value


def _hashes_field(obj: Mapping[str, Any], what: str, want: int) -> tuple[bytes, ...]:
    value = obj.get("hashes")
    if not isinstance(value, list):
        raise MalformedInput(f"{what}: 'hashes' must be a list of base64 strings")
    if len(value) != want:
        raise MalformedInput(f"{what}: 'hashes' has {len(value)} entries, this proof needs {want}")
    return tuple(b64decode(h, length=HASH_SIZE, what=f"{what} hash") for h in value)


def _json_object(
    data: bytes | str | Mapping[str, Any], what: str, keys: set[str]
) -> Mapping[str, Any]:
    obj = data if isinstance(data, Mapping) else parse_json_object(data, what)
    if set(obj) != keys:
        raise MalformedInput(f"{what} must have exactly the keys {sorted(keys)}, got {sorted(obj)}")
    return obj


@dataclass(frozen=True)
class InclusionProof:
    """``{"leaf_index", "tree_size", "leaf_hash", "hashes"}`` of DESIGN §3."""

    leaf_index: int
    tree_size: int
    leaf_hash: bytes
    hashes: tuple[bytes, ...]

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "leaf_index": self.leaf_index,
            "tree_size": self.tree_size,
            "leaf_hash": b64encode(self.leaf_hash),
            "hashes": [b64encode(h) for h in self.hashes],
        }

    def to_json(self) -> bytes:
        """Canonical (RFC 8785) JSON bytes."""
        return canonical_json(self.to_json_obj())

    @classmethod
    def parse(cls, data: bytes | str | Mapping[str, Any]) -> InclusionProof:
        """Parse and validate shape, sizes and proof length; raises MalformedInput."""
        what = "inclusion proof"
        obj = _json_object(data, what, {"leaf_index", "tree_size", "leaf_hash", "hashes"})
        index = _int_field(obj, "leaf_index", what)
        size = _int_field(obj, "tree_size", what)
        if index >= size:
            raise MalformedInput(f"{what}: leaf_index {index} must be below tree_size {size}")
        leaf = b64decode(obj["leaf_hash"], length=HASH_SIZE, what=f"{what} leaf_hash")
        hashes = _hashes_field(obj, what, len(inclusion_plan(index, size).elements))
        return cls(index, size, leaf, hashes)

    def verify(self, root_hash: bytes) -> None:
        verify_inclusion(self.leaf_hash, self.leaf_index, self.tree_size, self.hashes, root_hash)


@dataclass(frozen=True)
class ConsistencyProof:
    """``{"old_size", "new_size", "hashes"}`` of DESIGN §3."""

    old_size: int
    new_size: int
    hashes: tuple[bytes, ...]

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "old_size": self.old_size,
            "new_size": self.new_size,
            "hashes": [b64encode(h) for h in self.hashes],
        }

    def to_json(self) -> bytes:
        """Canonical (RFC 8785) JSON bytes."""
        return canonical_json(self.to_json_obj())

    @classmethod
    def parse(cls, data: bytes | str | Mapping[str, Any]) -> ConsistencyProof:
        """Parse and validate shape, sizes and proof length; raises MalformedInput."""
        what = "consistency proof"
        obj = _json_object(data, what, {"old_size", "new_size", "hashes"})
        old = _int_field(obj, "old_size", what)
        new = _int_field(obj, "new_size", what)
        if old > new:
            raise MalformedInput(f"{what}: old_size {old} must not exceed new_size {new}")
        hashes = _hashes_field(obj, what, len(consistency_plan(old, new).elements))
        return cls(old, new, hashes)

    def verify(self, old_root: bytes, new_root: bytes) -> None:
        verify_consistency(self.old_size, self.new_size, self.hashes, old_root, new_root)
