"""RFC 9162 / RFC 6962 Merkle math: known answers, exhaustive small trees, tampering.

Invariant under test: for every tree size n and every leaf index / old size, the proofs
built from stored perfect-subtree hashes equal the RFC's recursive definitions, verify
with the RFC verification algorithms, and every single-bit change to a proof is refused.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.canonical import b64encode
from federation.errors import BadProof, MalformedInput
from federation.merkle import (
    EMPTY_ROOT,
    CompactRange,
    ConsistencyProof,
    InclusionProof,
    MemoryTree,
    consistency_plan,
    consistency_proof,
    inclusion_plan,
    inclusion_proof,
    leaf_hash,
    node_from_key,
    node_hash,
    node_key,
    range_nodes,
    root,
    root_from_leaves,
    verify_consistency,
    verify_inclusion,
)

# The 8-leaf test tree of the RFC 6962 reference implementations (Certificate
# Transparency's merkle_tree_test.cc, transparency-dev/merkle testonly/constants.go).
LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (leaf number, 1-based as in the reference tests; tree size; audit path)
INCLUSION = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (3, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        2,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]


# --- RFC 9162 §2.1 written as the RFC writes it: the reference to compare against ---


def ref_mth(d: list[bytes]) -> bytes:
    if not d:
        return EMPTY_ROOT
    if len(d) == 1:
        return leaf_hash(d[0])
    k = 1 << ((len(d) - 1).bit_length() - 1)
    return node_hash(ref_mth(d[:k]), ref_mth(d[k:]))


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = 1 << ((len(d) - 1).bit_length() - 1)
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def entries(n: int) -> list[bytes]:
    return [f"entry-{i}".encode() for i in range(n)]


def flipped(h: bytes, bit: int = 0) -> bytes:
    return bytes([h[0] ^ (1 << bit)]) + h[1:]


# --- known answers ---------------------------------------------------------------------


def test_empty_root_is_sha256_of_nothing() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert MemoryTree().root() == EMPTY_ROOT
    assert CompactRange().root() == EMPTY_ROOT


def test_reference_roots_for_every_size() -> None:
    tree = MemoryTree.from_entries(LEAVES)
    for size, want in enumerate(ROOTS, start=1):
        assert tree.root(size).hex() == want
        assert root_from_leaves(leaf_hash(e) for e in LEAVES[:size]).hex() == want


@pytest.mark.parametrize(("leaf", "size", "path"), INCLUSION)
def test_reference_inclusion_proofs(leaf: int, size: int, path: list[str]) -> None:
    tree = MemoryTree.from_entries(LEAVES)
    proof = tree.inclusion_proof(leaf - 1, size)
    assert [h.hex() for h in proof] == path
    verify_inclusion(
        leaf_hash(LEAVES[leaf - 1]), leaf - 1, size, proof, bytes.fromhex(ROOTS[size - 1])
    )


@pytest.mark.parametrize(("old", "new", "path"), CONSISTENCY)
def test_reference_consistency_proofs(old: int, new: int, path: list[str]) -> None:
    tree = MemoryTree.from_entries(LEAVES)
    proof = tree.consistency_proof(old, new)
    assert [h.hex() for h in proof] == path
    verify_consistency(
        old, new, proof, bytes.fromhex(ROOTS[old - 1]), bytes.fromhex(ROOTS[new - 1])
    )


def test_reference_consistency_rejects_wrong_old_root() -> None:
    # The tampered case of the reference test data: right proof, another tree's root.
    proof = [bytes.fromhex(h) for h in CONSISTENCY[2][2]]
    with pytest.raises(BadProof):
        verify_consistency(6, 8, proof, bytes.fromhex(ROOTS[4]), bytes.fromhex(ROOTS[7]))


# --- exhaustive small trees ----------------------------------------------------------------


def test_every_proof_of_trees_up_to_70_matches_the_rfc_recursion() -> None:
    data = entries(70)
    tree = MemoryTree.from_entries(data)
    for n in range(1, 71):
        r = tree.root(n)
        assert r == ref_mth(data[:n])
        for i in range(n):
            proof = tree.inclusion_proof(i, n)
            assert proof == ref_path(i, data[:n])
            verify_inclusion(leaf_hash(data[i]), i, n, proof, r)
        for m in range(1, n + 1):
            proof = tree.consistency_proof(m, n)
            assert proof == (ref_subproof(m, data[:n], True) if m < n else [])
            verify_consistency(m, n, proof, tree.root(m), r)


@pytest.mark.parametrize("n", sorted({(1 << k) + d for k in range(1, 11) for d in (-1, 0, 1)}))
def test_sizes_around_powers_of_two(n: int) -> None:
    tree = MemoryTree.from_entries(entries(n))
    r = tree.root()
    assert r == root_from_leaves(tree.levels[0])
    picks = sorted({0, 1, n // 2, n - 2, n - 1} & set(range(n)))
    for i in picks:
        proof = tree.inclusion_proof(i)
        assert len(proof) == len(inclusion_plan(i, n).elements)
        verify_inclusion(tree.levels[0][i], i, n, proof, r)
    for m in sorted({1, 2, n // 2, n - 1, n} & set(range(1, n + 1))):
        verify_consistency(m, n, tree.consistency_proof(m), tree.root(m), r)


def test_tampered_inclusion_proofs_are_refused() -> None:
    tree = MemoryTree.from_entries(entries(21))
    n, r = 21, tree.root()
    for i in range(n):
        leaf = tree.levels[0][i]
        proof = tree.inclusion_proof(i)
        for j in range(len(proof)):
            bad = list(proof)
            bad[j] = flipped(bad[j], j % 8)
            with pytest.raises(BadProof):
                verify_inclusion(leaf, i, n, bad, r)
        with pytest.raises(BadProof):
            verify_inclusion(flipped(leaf), i, n, proof, r)
        with pytest.raises(BadProof):
            verify_inclusion(leaf, i, n, proof[:-1], r)
        with pytest.raises(BadProof):
            verify_inclusion(leaf, i, n, [*proof, proof[0]], r)
        with pytest.raises(BadProof):
            verify_inclusion(leaf, (i + 1) % n, n, proof, r)
        with pytest.raises(BadProof):
            verify_inclusion(leaf, i, n, proof, flipped(r))
    with pytest.raises(BadProof):
        verify_inclusion(tree.levels[0][0], 21, 21, [], r)


def test_tampered_consistency_proofs_are_refused() -> None:
    tree = MemoryTree.from_entries(entries(21))
    n, r = 21, tree.root()
    for m in range(1, n):
        old = tree.root(m)
        proof = tree.consistency_proof(m)
        for j in range(len(proof)):
            bad = list(proof)
            bad[j] = flipped(bad[j])
            with pytest.raises(BadProof):
                verify_consistency(m, n, bad, old, r)
        with pytest.raises(BadProof):
            verify_consistency(m, n, proof[:-1], old, r)
        with pytest.raises(BadProof):
            verify_consistency(m, n, [*proof, proof[0]], old, r)
        with pytest.raises(BadProof):
            verify_consistency(m, n, proof, flipped(old), r)
        with pytest.raises(BadProof):
            verify_consistency(m, n, proof, old, flipped(r))
    with pytest.raises(BadProof):
        verify_consistency(5, 5, [], tree.root(5), tree.root(6))
    with pytest.raises(BadProof):
        verify_consistency(0, 5, [], flipped(EMPTY_ROOT), tree.root(5))
    with pytest.raises(BadProof):
        verify_consistency(6, 5, [], tree.root(6), tree.root(5))
    verify_consistency(0, 5, [], EMPTY_ROOT, tree.root(5))
    verify_consistency(5, 5, [], tree.root(5), tree.root(5))


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 600), st.data())
def test_proofs_verify_for_random_sizes(n: int, data: st.DataObject) -> None:
    # Invariant: any proof the store produces verifies against the store's own roots.
    tree = MemoryTree.from_entries(entries(n))
    i = data.draw(st.integers(0, n - 1))
    m = data.draw(st.integers(1, n))
    verify_inclusion(tree.levels[0][i], i, n, tree.inclusion_proof(i), tree.root())
    verify_consistency(m, n, tree.consistency_proof(m), tree.root(m), tree.root())


# --- the store interface -------------------------------------------------------------------


def test_compact_range_returns_exactly_the_nodes_to_persist() -> None:
    n = 300
    data = entries(n)
    tree = MemoryTree.from_entries(data)
    table: dict[int, bytes] = {}
    cr = CompactRange()
    for i, e in enumerate(data):
        created = cr.append(leaf_hash(e))
        assert created[0].level == 0 and created[0].index == i
        assert len(created) == 1 + ((~i & (i + 1)).bit_length() - 1)  # 1 + trailing ones of i
        for node in created:
            assert node.key not in table
            table[node.key] = node.hash
        assert cr.root() == tree.root(i + 1)
    # Every perfect node exists exactly once, keyed by node_key.
    assert len(table) == sum(len(level) for level in tree.levels)
    for level, hashes in enumerate(tree.levels):
        for index, h in enumerate(hashes):
            assert table[node_key(level, index)] == h

    def get(level: int, index: int) -> bytes:
        # Only complete subtrees within the tree size may be asked for.
        assert (index + 1) << level <= n
        return table[node_key(level, index)]

    assert root(n, get) == tree.root()
    for i in (0, 1, 100, 255, 256, 299):
        assert inclusion_proof(i, n, get) == tree.inclusion_proof(i)
    for m in (1, 7, 128, 200, 299, 300):
        assert consistency_proof(m, n, get) == tree.consistency_proof(m)
    restored = CompactRange.from_store(n, get)
    assert restored.root() == cr.root() and restored.hashes == cr.hashes
    copy = cr.copy()
    copy.append(leaf_hash(b"more"))
    assert cr.size == n and copy.size == n + 1


def test_proof_plans_fetch_few_nodes_in_one_batch() -> None:
    n = 1_000_000
    plan = inclusion_plan(123_457, n)
    assert len(plan.elements) == 20
    # At most one non-perfect sibling, so ~2 log2(n) node reads at worst.
    assert len(plan.nodes) <= 40
    assert sum(len(e) > 1 for e in plan.elements) <= 1
    cplan = consistency_plan(999_999, n)
    assert len(cplan.nodes) <= 40
    tree = MemoryTree.from_entries(entries(77))
    fetched = {nid: tree.get_node(*nid) for nid in inclusion_plan(70, 77).nodes}
    assert inclusion_plan(70, 77).assemble(fetched) == tree.inclusion_proof(70)


def test_node_keys_are_unique_and_invertible() -> None:
    seen = set()
    for level in range(8):
        for index in range(200):
            key = node_key(level, index)
            assert node_from_key(key) == (level, index)
            seen.add(key)
    assert len(seen) == 8 * 200
    assert node_key(0, 5) == 10 and node_key(1, 0) == 1


def test_range_nodes_split_is_minimal_and_covers() -> None:
    for begin in range(0, 40):
        for end in range(begin, 70):
            nodes = range_nodes(begin, end)
            covered = [i for lv, ix in nodes for i in range(ix << lv, (ix + 1) << lv)]
            assert covered == list(range(begin, end))


# --- JSON export -----------------------------------------------------------------------------


def test_inclusion_proof_json_round_trip_and_contract_shape() -> None:
    tree = MemoryTree.from_entries(entries(13))
    p = InclusionProof(5, 13, tree.levels[0][5], tuple(tree.inclusion_proof(5)))
    obj = json.loads(p.to_json())
    assert set(obj) == {"leaf_index", "tree_size", "leaf_hash", "hashes"}
    assert obj["leaf_hash"] == b64encode(tree.levels[0][5])
    assert InclusionProof.parse(p.to_json()) == p
    p.verify(tree.root())


def test_consistency_proof_json_round_trip() -> None:
    tree = MemoryTree.from_entries(entries(13))
    p = ConsistencyProof(6, 13, tuple(tree.consistency_proof(6)))
    assert set(json.loads(p.to_json())) == {"old_size", "new_size", "hashes"}
    assert ConsistencyProof.parse(p.to_json().decode()) == p
    p.verify(tree.root(6), tree.root())


@pytest.mark.parametrize(
    "mutate",
    [
        lambda o: o.update(leaf_index=13),  # index not below size
        lambda o: o.update(tree_size=True),  # bool is not a size
        lambda o: o.update(tree_size=-1),
        lambda o: o.update(hashes=o["hashes"][:-1]),  # wrong length for (5, 13)
        lambda o: o.update(hashes=[*o["hashes"], o["hashes"][0]]),
        lambda o: o.update(leaf_hash=b64encode(b"x" * 31)),
        lambda o: o["hashes"].__setitem__(0, "not base64!"),
        lambda o: o.update(extra=1),
        lambda o: o.pop("leaf_hash"),
    ],
)
def test_inclusion_proof_parse_refuses_bad_shapes(mutate) -> None:  # type: ignore[no-untyped-def]
    tree = MemoryTree.from_entries(entries(13))
    obj = InclusionProof(5, 13, tree.levels[0][5], tuple(tree.inclusion_proof(5))).to_json_obj()
    mutate(obj)
    with pytest.raises(MalformedInput):
        InclusionProof.parse(json.dumps(obj))


@pytest.mark.parametrize(
    "obj",
    [
        {"old_size": 7, "new_size": 6, "hashes": []},
        {"old_size": 3, "new_size": 6, "hashes": []},
        {"old_size": 6, "new_size": 6, "hashes": [b64encode(bytes(32))]},
        {"old_size": 1, "new_size": 2, "hashes": [b64encode(bytes(33))]},
        {"old_size": "1", "new_size": 2, "hashes": [b64encode(bytes(32))]},
    ],
)
def test_consistency_proof_parse_refuses_bad_shapes(obj: dict[str, object]) -> None:
    with pytest.raises(MalformedInput):
        ConsistencyProof.parse(json.dumps(obj))
