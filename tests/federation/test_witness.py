"""tlog-witness add-checkpoint and cosignature/v1, against the spec's answers.

Invariant: a witness cosigns only a checkpoint that its log signed and that extends the one it
holds (proven by an RFC 9162 consistency proof), answers 409 with the size it holds when the
client's old size is not it, 422 on a proof that fails, and keeps evidence when the origin
itself goes back (smaller or forked) or signs two roots for one size.
"""

from __future__ import annotations

import hashlib
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.audit import EquivocationEvidence
from federation.canonical import b64decode
from federation.errors import BadSignature, MalformedInput
from federation.merkle import MemoryTree
from federation.note import Checkpoint, Signer
from federation.witness import (
    CosignatureVerifier,
    Cosigner,
    RollbackEvidence,
    WitnessState,
    add_checkpoint_body,
    cosignatures,
    parse_add_checkpoint,
)

ORIGIN = "outpost/fed/edge"
LOG = Signer(ORIGIN, Ed25519PrivateKey.generate())
WITNESS = Cosigner("outpost/fed/onprem/witness", Ed25519PrivateKey.generate())
VERIFIERS = {ORIGIN: LOG.verifier}


def log_tree(n: int, fork: bool = False) -> MemoryTree:
    return MemoryTree.from_entries(b"e%d%s" % (i, b"f" if fork and i >= 5 else b"")
                                   for i in range(n))


def note(tree: MemoryTree, size: int) -> str:
    return Checkpoint(ORIGIN, size, tree.root(size)).sign([LOG])


def add(state: WitnessState, old: int, proof: list[bytes], n: str, *, origin: bool = True):
    return state.add_checkpoint(add_checkpoint_body(old, proof, n), VERIFIERS,
                                cosigner=WITNESS, now=1_700_000_000, from_origin=origin)


def test_first_checkpoint_then_consistent_growth_are_cosigned() -> None:
    tree, state = log_tree(20), WitnessState("w")
    r = add(state, 0, [], note(tree, 10))
    assert r.status == 200 and r.record is not None and r.record.size == 10
    r = add(state, 10, tree.consistency_proof(10, 20), note(tree, 20))
    assert r.status == 200 and state.held(ORIGIN).size == 20  # type: ignore[union-attr]
    # The same checkpoint again: cosigned, nothing changes.
    assert add(state, 20, [], note(tree, 20)).status == 200


def test_stale_old_size_gets_409_with_the_size_held() -> None:
    tree, state = log_tree(20), WitnessState("w")
    add(state, 0, [], note(tree, 10))
    r = add(state, 0, [], note(tree, 20))
    assert (r.status, r.body, r.content_type) == (409, "10\n", "text/x.tlog.size")
    assert r.evidence is None  # a client that does not know the size is not misbehaving


def test_bad_proof_gets_422_and_nothing_changes() -> None:
    tree, state = log_tree(20), WitnessState("w")
    add(state, 0, [], note(tree, 10))
    proof = tree.consistency_proof(10, 20)
    proof[0] = hashlib.sha256(b"x").digest()
    r = add(state, 10, proof, note(tree, 20), origin=False)
    assert r.status == 422 and r.evidence is None
    assert state.held(ORIGIN).size == 10  # type: ignore[union-attr]


def test_forked_log_is_refused_and_reported() -> None:
    tree, forked, state = log_tree(20), log_tree(20, fork=True), WitnessState("w")
    add(state, 0, [], note(tree, 10))
    r = add(state, 10, forked.consistency_proof(10, 20), note(forked, 20))
    assert r.status == 422
    assert isinstance(r.evidence, RollbackEvidence) and r.evidence.kind == "inconsistent"
    assert r.evidence.sizes(LOG.verifier) == (10, 20)
    assert RollbackEvidence.parse(r.evidence.to_json()) == r.evidence


def test_smaller_checkpoint_from_the_origin_is_rollback_evidence() -> None:
    tree, state = log_tree(20), WitnessState("w")
    add(state, 0, [], note(tree, 20))
    r = add(state, 0, [], note(tree, 8))
    assert r.status == 409 and isinstance(r.evidence, RollbackEvidence)
    assert r.evidence.kind == "smaller" and r.evidence.sizes(LOG.verifier) == (20, 8)
    # Replayed by someone else, the same old checkpoint proves nothing against the origin.
    other = WitnessState("w2")
    add(other, 0, [], note(tree, 20))
    assert add(other, 0, [], note(tree, 8), origin=False).evidence is None


def test_two_roots_for_one_size_is_equivocation() -> None:
    tree, forked, state = log_tree(20), log_tree(20, fork=True), WitnessState("w")
    add(state, 0, [], note(tree, 10))
    r = add(state, 10, [], note(forked, 10), origin=False)
    assert r.status == 409 and isinstance(r.evidence, EquivocationEvidence)
    r.evidence.verify(LOG.verifier)


@pytest.mark.parametrize(("body", "status"), [
    (b"old 5\n\n", 400),
    (b"nonsense", 400),
    (add_checkpoint_body(0, [], Checkpoint("outpost/fed/other", 1, b"\0" * 32).sign([LOG])),
     404),
])
def test_bad_requests(body: bytes, status: int) -> None:
    r = WitnessState("w").add_checkpoint(body, VERIFIERS, cosigner=WITNESS, now=1)
    assert r.status == status


def test_unsigned_or_foreign_signed_checkpoint_is_403_and_old_beyond_size_400() -> None:
    tree = log_tree(10)
    stranger = Signer(ORIGIN, Ed25519PrivateKey.generate())
    forged = Checkpoint(ORIGIN, 10, tree.root(10)).sign([stranger])
    assert add(WitnessState("w"), 0, [], forged).status == 403
    assert add(WitnessState("w"), 11, [], note(tree, 10)).status == 400


def test_cosignature_format_and_verification() -> None:
    tree, state = log_tree(10), WitnessState("w")
    n = note(tree, 10)
    line = add(state, 0, [], n).body
    assert line.startswith("\u2014 outpost/fed/onprem/witness ") and line.endswith("\n")
    raw = b64decode(line.split(" ")[2].strip())
    key_id = hashlib.sha256(WITNESS.name.encode() + b"\n\x04"
                            + WITNESS.verifier.public_key.public_bytes_raw()).digest()[:4]
    assert raw[:4] == key_id and struct.unpack(">Q", raw[4:12])[0] == 1_700_000_000
    text = Checkpoint(ORIGIN, 10, tree.root(10)).to_text()
    WITNESS.verifier.public_key.verify(
        raw[12:], b"cosignature/v1\ntime 1700000000\n" + text.encode())
    cosigned = n + line
    vkey = WITNESS.verifier.vkey
    assert vkey.split("+")[1] == key_id.hex()
    assert cosignatures(cosigned, [CosignatureVerifier.from_vkey(vkey)]) == {
        WITNESS.name: 1_700_000_000}
    other = Cosigner("w2", Ed25519PrivateKey.generate()).verifier
    assert cosignatures(cosigned, [other]) == {}
    tampered = cosigned.replace("\n10\n", "\n11\n")
    with pytest.raises(BadSignature):
        cosignatures(tampered, [WITNESS.verifier])
    with pytest.raises(MalformedInput):
        CosignatureVerifier.from_vkey(LOG.vkey)  # a log key (0x01) is not a cosigner key


def test_request_body_round_trip() -> None:
    tree = log_tree(20)
    proof = tree.consistency_proof(10, 20)
    old, got, n = parse_add_checkpoint(add_checkpoint_body(10, proof, note(tree, 20)))
    assert (old, got, n) == (10, proof, note(tree, 20))
    with pytest.raises(MalformedInput):
        parse_add_checkpoint(b"old 010\n\n" + note(tree, 20).encode())
    with pytest.raises(MalformedInput):
        parse_add_checkpoint(b"old 1\n" + b"AAAA\n" * 64 + b"\n")


def test_gossip_and_protocol_share_one_record() -> None:
    tree, state = log_tree(30), WitnessState("w")
    assert state.observe(note(tree, 10), LOG.verifier, None, 5) is not None
    # The protocol now knows 10: a client with old 0 learns it.
    assert add(state, 0, [], note(tree, 20)).body == "10\n"
    assert add(state, 10, tree.consistency_proof(10, 20), note(tree, 20)).status == 200
    # Gossip of an older checkpoint changes nothing; a newer one needs a proof from 20.
    assert state.observe(note(tree, 15), LOG.verifier, None, 6) is None
    rec = state.observe(note(tree, 30), LOG.verifier, tree.consistency_proof(20, 30), 7)
    assert rec is not None and rec.size == 30
