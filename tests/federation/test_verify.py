"""Offline verification with public keys only, and the entry filters of tail/export.

Invariant: verify_entry_proof accepts exactly the entry at the proven index of the signed tree;
judge reports a smaller remembered-after tree as ROLLBACK and another root at the remembered
size as FORK, and nothing else."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.errors import FederationError
from federation.merkle import InclusionProof, MemoryTree
from federation.note import Checkpoint, Signer
from federation.verify import EntryFilter, Remembered, judge, parse_time, verify_entry_proof

SIGNER = Signer("outpost/acme/edge", Ed25519PrivateKey.generate())
ENTRIES = [b'{"i":%d}' % i for i in range(9)]
TREE = MemoryTree.from_entries(ENTRIES)


def note(size: int, tree: MemoryTree = TREE) -> str:
    return Checkpoint(SIGNER.name, size, tree.root(size)).sign([SIGNER])


def proof(index: int, size: int) -> bytes:
    return InclusionProof(index, size, TREE.levels[0][index],
                          tuple(TREE.inclusion_proof(index, size))).to_json()


def test_entry_proof_good_and_tampered() -> None:
    assert verify_entry_proof(SIGNER.vkey, note(9), ENTRIES[3], proof(3, 9)).size == 9
    for args, why in [
        ((SIGNER.vkey, note(9), ENTRIES[4], proof(3, 9)), "does not hash"),
        ((SIGNER.vkey, note(8), ENTRIES[3], proof(3, 9)), "tree size 9"),
        ((Signer("outpost/acme/edge", Ed25519PrivateKey.generate()).vkey, note(9), ENTRIES[3],
          proof(3, 9)), "no signature from a known key"),
        ((SIGNER.vkey, note(9).replace("\n9\n", "\n8\n"), ENTRIES[3], proof(3, 9)),
         "does not verify"),
    ]:
        with pytest.raises(FederationError, match=why):
            verify_entry_proof(*args)


def test_judge_rollback_and_fork() -> None:
    cp9 = Checkpoint.open(note(9), SIGNER.verifier)
    prev = Remembered(SIGNER.name, 5, TREE.root(5), note(5))
    assert judge(None, cp9, None) is None
    assert judge(prev, cp9, TREE.root(5)) is None
    assert "FORK" in (judge(prev, cp9, MemoryTree.from_entries(b"x%d" % i for i in range(5))
                            .root()) or "")
    ahead = Remembered(SIGNER.name, 12, b"\0" * 32, "")
    assert "ROLLBACK" in (judge(ahead, cp9, None) or "")
    assert Remembered.from_json(SIGNER.name, prev.to_json()) == prev


def test_entry_filter() -> None:
    e = {"time": "2026-01-02T03:04:05.123456Z", "kind": "infer", "model": "digits",
         "version": "1", "caller": "app@127.0.0.1", "outcome": "admitted"}
    assert EntryFilter().empty and EntryFilter().matches(e)
    assert EntryFilter(kind="infer", model="digits:1", outcome="admitted").matches(e)
    assert not EntryFilter(model="digits:2").matches(e)
    assert not EntryFilter(caller="other").matches(e)
    assert EntryFilter(since=parse_time("2026-01-02", "s")).matches(e)
    assert not EntryFilter(since=parse_time("2026-01-02T03:04:06Z", "s")).matches(e)
    assert EntryFilter(until=parse_time("2026-01-02T03:04:06Z", "u")).matches(e)
    assert not EntryFilter(until=parse_time("2026-01-02T03:04:05.123456Z", "u")).matches(e)
    with pytest.raises(FederationError, match="2026-01-02"):
        parse_time("yesterday", "--since")
