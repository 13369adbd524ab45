"""Audit entries, log verification against signed checkpoints, and the witness.

Invariant for verify_log: a log that is exactly what the node signed verifies; any
edit, deletion, insertion, reordering or truncation before a checkpoint is reported
with the first index at which the stored log differs from the signed one (exactly,
when the stored node table still adds up to the signed root; as a lower bound no
earlier than the last good checkpoint otherwise).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.audit import (
    AuditEntry,
    EquivocationEvidence,
    HeldCheckpoint,
    Witness,
    WitnessOutcome,
    log_origin,
    rfc3339,
    verify_log,
)
from federation.canonical import sha256_hex
from federation.errors import (
    BadProof,
    BadSignature,
    CheckpointEquivocation,
    Equivocation,
    MalformedInput,
)
from federation.merkle import ConsistencyProof, MemoryTree
from federation.note import Checkpoint, Signer

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ORIGIN = log_origin("node-a", "acme")
CHECKPOINT_SIZES = (8, 16, 25, 40)


def make_entries(n: int) -> list[bytes]:
    return [
        AuditEntry(
            time=rfc3339(T0 + timedelta(seconds=i)),
            kind="infer",
            model="digits",
            caller="app:test",
            data_class="public",
            decision="allow",
            input_sha256=sha256_hex(str(i).encode()),
        ).to_bytes()
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer(ORIGIN, Ed25519PrivateKey.generate())


def signed_log(
    signer: Signer, n: int = 40, sizes: tuple[int, ...] = CHECKPOINT_SIZES
) -> tuple[list[bytes], list[tuple[int, str]], MemoryTree]:
    """Entries, (size, note) checkpoints, and the stored node table as the daemon keeps them."""
    data = make_entries(n)
    tree = MemoryTree.from_entries(data)
    checkpoints = [(s, Checkpoint(ORIGIN, s, tree.root(s)).sign([signer])) for s in sizes]
    return data, checkpoints, tree


# --- entries -----------------------------------------------------------------------------


def test_entry_is_canonical_json_without_absent_fields() -> None:
    e = AuditEntry(time="2025-03-01T12:00:00.000000Z", kind="node.start", detail={"pid": 7})
    assert (
        e.to_bytes()
        == b'{"detail":{"pid":7},"kind":"node.start","time":"2025-03-01T12:00:00.000000Z"}'
    )
    assert AuditEntry.parse(e.to_bytes()) == e


def test_entry_round_trip_with_all_fields() -> None:
    e = AuditEntry(
        time=rfc3339(T0),
        kind="forward",
        model="digits",
        version="1",
        caller="app:x",
        data_class="personal",
        decision="deny",
        outcome="refused",
        policy_version=4,
        peer="node-b",
        input_sha256="ab" * 32,
        reason="policy forbids cloud",
        detail={"hops": 1, "route": "forwarded", "cached": False, "note": None},
    )
    assert AuditEntry.parse(e.to_bytes()) == e
    assert json.loads(e.to_bytes())["policy_version"] == 4


@pytest.mark.parametrize(
    "kwargs",
    [
        {"time": "2025-03-01 12:00:00Z", "kind": "infer"},
        {"time": "2025-03-01T12:00:00+01:00", "kind": "infer"},
        {"time": "2025-02-30T12:00:00Z", "kind": "infer"},
        {"time": "2025-03-01T12:00:00Z", "kind": "rm -rf"},
        {"time": "2025-03-01T12:00:00Z", "kind": "infer", "input_sha256": "AB" * 32},
        {"time": "2025-03-01T12:00:00Z", "kind": "infer", "policy_version": True},
        {"time": "2025-03-01T12:00:00Z", "kind": "infer", "model": "x" * 300},
        {"time": "2025-03-01T12:00:00Z", "kind": "infer", "detail": {"payload": "x" * 5000}},
        {"time": "2025-03-01T12:00:00Z", "kind": "infer", "detail": {"nested": {"a": 1}}},
    ],
)
def test_entry_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(MalformedInput):
        AuditEntry(**kwargs)  # type: ignore[arg-type]


def test_parse_refuses_non_canonical_bytes() -> None:
    e = AuditEntry(time=rfc3339(T0), kind="infer")
    with pytest.raises(MalformedInput):
        AuditEntry.parse(b'{"time": "' + e.time.encode() + b'", "kind": "infer"}')
    with pytest.raises(MalformedInput):
        AuditEntry.parse(b'{"kind":"infer","secret":"payload","time":"' + e.time.encode() + b'"}')


def test_origins() -> None:
    assert log_origin("node-a", "acme") == "outpost/acme/node-a"
    assert log_origin("node-a") == "outpost/local/node-a"


# --- verify_log ----------------------------------------------------------------------------


def test_intact_log_verifies(signer: Signer) -> None:
    data, cps, tree = signed_log(signer)
    report = verify_log(data, cps, signer.verifier, stored=tree.get_node)
    assert report.ok and report.verified_size == 40 and report.checkpoints == 4
    assert report.first_bad_index is None and report.unverified_tail == 0
    report.raise_for_problems()


def edit(data: list[bytes], k: int) -> list[bytes]:
    out = list(data)
    out[k] = out[k].replace(b'"decision":"allow"', b'"decision":"deny"')
    assert out[k] != data[k]
    return out


def delete(data: list[bytes], k: int) -> list[bytes]:
    return data[:k] + data[k + 1 :]


def insert(data: list[bytes], k: int) -> list[bytes]:
    forged = AuditEntry(time=rfc3339(T0), kind="node.stop").to_bytes()
    return [*data[:k], forged, *data[k:]]


def reorder(data: list[bytes], k: int) -> list[bytes]:
    out = list(data)
    out[k], out[k + 1] = out[k + 1], out[k]
    return out


TAMPERS = {"edit": edit, "delete": delete, "insert": insert, "reorder": reorder}
POSITIONS = (0, 3, 7, 8, 15, 20, 24, 30, 38)


@pytest.mark.parametrize("how", sorted(TAMPERS))
@pytest.mark.parametrize("k", POSITIONS)
def test_tampering_is_found_at_the_exact_first_bad_index(signer: Signer, how: str, k: int) -> None:
    data, cps, tree = signed_log(signer)
    tampered = TAMPERS[how](data, k)
    report = verify_log(tampered, cps, signer.verifier, stored=tree.get_node)
    assert not report.ok
    assert report.first_bad_index == k and report.exact
    window_end = next(s for s in CHECKPOINT_SIZES if s > k)
    assert report.bad_checkpoint_size == window_end
    assert report.verified_size == max([0, *(s for s in CHECKPOINT_SIZES if s <= k)])
    assert f"entry {k}" in report.problems[0]
    with pytest.raises(BadProof):
        report.raise_for_problems()


@pytest.mark.parametrize("how", sorted(TAMPERS))
@pytest.mark.parametrize("k", POSITIONS)
def test_without_stored_hashes_the_window_is_named(signer: Signer, how: str, k: int) -> None:
    data, cps, _ = signed_log(signer)
    report = verify_log(TAMPERS[how](data, k), cps, signer.verifier)
    window_start = max([0, *(s for s in CHECKPOINT_SIZES if s <= k)])
    assert report.first_bad_index == window_start and not report.exact
    assert report.bad_checkpoint_size == next(s for s in CHECKPOINT_SIZES if s > k)


@pytest.mark.parametrize("how", sorted(TAMPERS))
def test_checkpoint_per_entry_pins_the_index_without_stored_hashes(
    signer: Signer, how: str
) -> None:
    data, cps, _ = signed_log(signer, 20, tuple(range(1, 21)))
    report = verify_log(TAMPERS[how](data, 11), cps, signer.verifier)
    assert report.first_bad_index == 11 and report.exact


def test_rewritten_node_table_gives_a_lower_bound_not_a_wrong_answer(signer: Signer) -> None:
    data, cps, _ = signed_log(signer)
    tampered = edit(data, 20)
    rewritten = MemoryTree.from_entries(tampered)  # attacker recomputed every stored hash
    report = verify_log(tampered, cps, signer.verifier, stored=rewritten.get_node)
    assert report.first_bad_index == 16 and not report.exact and report.bad_checkpoint_size == 25


def test_partly_rewritten_node_table_still_narrows_the_window(signer: Signer) -> None:
    data, cps, tree = signed_log(signer)
    tampered = edit(data, 21)
    forged = MemoryTree.from_entries(tampered)

    def stored(level: int, index: int) -> bytes:
        # The attacker fixed the leaf hash but not the interior nodes above it.
        return forged.get_node(0, index) if level == 0 else tree.get_node(level, index)

    report = verify_log(tampered, cps, signer.verifier, stored=stored)
    assert report.first_bad_index == 20 and not report.exact  # the pair (20, 21)


def test_truncation_names_the_first_missing_entry(signer: Signer) -> None:
    data, cps, tree = signed_log(signer)
    report = verify_log(data[:33], cps, signer.verifier, stored=tree.get_node)
    assert report.first_bad_index == 33 and report.exact and report.bad_checkpoint_size == 40
    report = verify_log(data[:25], cps, signer.verifier)
    assert report.first_bad_index == 25 and report.exact


def test_tail_after_last_checkpoint(signer: Signer) -> None:
    data, cps, tree = signed_log(signer, 40, (8, 16, 25))
    report = verify_log(data, cps, signer.verifier, stored=tree.get_node)
    assert report.ok and report.unverified_tail == 15
    report = verify_log(edit(data, 30), cps, signer.verifier, stored=tree.get_node)
    assert report.first_bad_index == 30 and "after the newest checkpoint" in report.problems[0]


def test_forged_or_misfiled_checkpoints_are_problems(signer: Signer) -> None:
    data, cps, tree = signed_log(signer)
    other = Signer(ORIGIN, Ed25519PrivateKey.generate())
    forged = (25, Checkpoint(ORIGIN, 25, tree.root(25)).sign([other]))
    report = verify_log(data, [*cps, forged], signer.verifier, stored=tree.get_node)
    assert not report.ok and report.first_bad_index is None
    with pytest.raises(BadSignature):
        report.raise_for_problems()
    misfiled = (17, cps[1][1])
    assert not verify_log(data, [*cps, misfiled], signer.verifier).ok


def test_two_signed_roots_for_one_size_are_reported(signer: Signer) -> None:
    data, cps, _ = signed_log(signer)
    fork = MemoryTree.from_entries(edit(data, 3))
    report = verify_log(
        data, [*cps, (16, Checkpoint(ORIGIN, 16, fork.root(16)).sign([signer]))], signer.verifier
    )
    assert any("equivocation" in p for p in report.problems)


# --- witness ---------------------------------------------------------------------------------


def test_witness_state_machine(signer: Signer) -> None:
    data = make_entries(30)
    tree = MemoryTree.from_entries(data)

    def note(size: int, t: MemoryTree = tree) -> str:
        return Checkpoint(ORIGIN, size, t.root(size)).sign([signer])

    w = Witness()
    assert w.update(note(10), signer.verifier) is WitnessOutcome.ACCEPTED
    assert w.update(note(10), signer.verifier) is WitnessOutcome.UNCHANGED
    assert w.update(note(5), signer.verifier) is WitnessOutcome.STALE
    with pytest.raises(BadProof, match="need a consistency proof"):
        w.update(note(20), signer.verifier)
    with pytest.raises(BadProof):
        w.update(note(20), signer.verifier, tree.consistency_proof(11, 20))
    with pytest.raises(BadProof, match="need 10->20"):
        w.update(
            note(20),
            signer.verifier,
            ConsistencyProof(11, 20, tuple(tree.consistency_proof(11, 20))),
        )
    proof = ConsistencyProof(10, 20, tuple(tree.consistency_proof(10, 20)))
    assert w.update(note(20), signer.verifier, proof) is WitnessOutcome.ACCEPTED
    held = w.held(ORIGIN)
    assert held is not None and held.checkpoint.size == 20
    assert (
        w.update(note(30), signer.verifier, tree.consistency_proof(20, 30))
        is WitnessOutcome.ACCEPTED
    )

    # A fork at the held size: self-proving evidence with both notes.
    fork = MemoryTree.from_entries(edit(data, 2))
    with pytest.raises(CheckpointEquivocation) as info:
        w.update(note(30, fork), signer.verifier)
    assert isinstance(info.value, Equivocation)
    evidence = info.value.evidence
    evidence.verify(signer.verifier)
    assert set(evidence.notes) == {note(30), note(30, fork)}
    assert EquivocationEvidence.parse(evidence.to_json()) == evidence
    assert w.held(ORIGIN) == HeldCheckpoint(
        Checkpoint.parse(note(30).split("\n\n")[0] + "\n"), note(30)
    )


def test_witness_refuses_forks_hidden_behind_a_growing_size(signer: Signer) -> None:
    data = make_entries(12)
    tree, fork = MemoryTree.from_entries(data), MemoryTree.from_entries(edit(data, 1))
    w = Witness()
    w.update(Checkpoint(ORIGIN, 6, tree.root(6)).sign([signer]), signer.verifier)
    with pytest.raises(BadProof):
        w.update(
            Checkpoint(ORIGIN, 12, fork.root(12)).sign([signer]),
            signer.verifier,
            fork.consistency_proof(6, 12),
        )


def test_witness_refuses_bad_signatures_and_evidence_that_is_not_a_fork(signer: Signer) -> None:
    tree = MemoryTree.from_entries(make_entries(4))
    other = Signer(ORIGIN, Ed25519PrivateKey.generate())
    with pytest.raises(BadSignature):
        Witness().update(Checkpoint(ORIGIN, 4, tree.root()).sign([other]), signer.verifier)
    same = Checkpoint(ORIGIN, 4, tree.root()).sign([signer])
    with pytest.raises(MalformedInput):
        EquivocationEvidence.of(ORIGIN, 4, same, same).verify(signer.verifier)
    with pytest.raises(BadSignature):
        bogus = Checkpoint(ORIGIN, 4, bytes(32)).sign([other])
        EquivocationEvidence.of(ORIGIN, 4, same, bogus).verify(signer.verifier)


# --- canonical bytes (what every entry and signed document is made of) ---------------------


def test_canonical_json_known_answer() -> None:
    from federation.canonical import canonical_json

    # RFC 8785: keys sorted by UTF-16 code units, no whitespace, ES6 number formatting.
    value = {"b": [1, 1.5, 1e21, None, True], "a": "\u20ac", "\u00e9": {"z": 0, "y": -0.0}}
    assert canonical_json(value) == (
        b'{"a":"\xe2\x82\xac","b":[1,1.5,1e+21,null,true],"\xc3\xa9":{"y":0,"z":0}}'
    )
    with pytest.raises(MalformedInput):
        canonical_json({"big": 2**60})
    with pytest.raises(MalformedInput):
        canonical_json({1: "non-string key"})


def test_strict_base64_and_json_objects() -> None:
    from federation.canonical import b64decode, parse_json_object

    assert b64decode("AAE=", length=2) == b"\x00\x01"
    for bad in ("AAE", "AA E=", "AAF=", "_-8=", "AAE=\n"):
        with pytest.raises(MalformedInput):
            b64decode(bad)
    with pytest.raises(MalformedInput):
        b64decode("AAE=", length=3)
    for bad_json in (b'{"a":1,"a":2}', b'{"a":NaN}', b"[1]", b"{"):
        with pytest.raises(MalformedInput):
            parse_json_object(bad_json, "doc")


def test_canonical_json_fast_path_matches_rfc8785() -> None:
    """Invariant: canonical_json's standard-library fast path produces exactly the bytes of
    the rfc8785 package for every value it accepts."""
    import rfc8785
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from federation.canonical import canonical_json

    edges = st.sampled_from([2**53 - 1, 2**53, -(2**53 - 1), -(2**53)])
    scalars = st.none() | st.booleans() | edges | st.integers(-(2**54), 2**54) | st.text()
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)

    @settings(max_examples=400, deadline=None)
    @given(values)
    def check(value: object) -> None:
        try:
            expected = rfc8785.dumps(value)
        except Exception:  # no canonical form: canonical_json must refuse it too
            with pytest.raises(MalformedInput):
                canonical_json(value)
            return
        assert canonical_json(value) == expected

    check()


def test_entry_bytes_match_rfc8785_for_any_valid_entry() -> None:
    """Invariant: ``AuditEntry.to_bytes`` (which skips re-checking what validation proved) gives
    exactly the rfc8785 package's bytes — non-ASCII text and keys, big integers included."""
    import rfc8785
    from hypothesis import given, settings
    from hypothesis import strategies as st

    text = st.text(max_size=40)
    edges = st.sampled_from([2**53 - 1, 2**53, -(2**53 - 1), -(2**53)])
    detail = st.dictionaries(st.text(max_size=8), st.none() | st.booleans() | edges
                             | st.integers(-(2**60), 2**60) | text, max_size=5)

    @settings(max_examples=400, deadline=None)
    @given(text, text, st.none() | st.sampled_from([2**53 - 1, 2**53]) | st.integers(0, 2**60),
           st.none() | detail)
    def check(model: str, caller: str, policy_version: int | None,
              details: dict[str, object] | None) -> None:
        fields = {"time": "2026-01-02T03:04:05.000006Z", "kind": "infer", "model": model,
                  "caller": caller, "policy_version": policy_version, "detail": details}
        try:
            expected = rfc8785.dumps({k: v for k, v in fields.items() if v is not None})
        except Exception:  # no canonical form: refused when built or when encoded
            with pytest.raises(MalformedInput):
                AuditEntry(**fields).to_bytes()  # type: ignore[arg-type]
            return
        assert AuditEntry(**fields).to_bytes() == expected  # type: ignore[arg-type]

    check()


def test_detail_size_bound_is_exact_at_the_limit() -> None:
    """The cheap size bound never lets an oversized detail through: escapes count in full."""
    from federation.audit import MAX_DETAIL_BYTES

    quotes = '"' * (MAX_DETAIL_BYTES // 2)  # each escapes to two bytes: just over the limit
    with pytest.raises(MalformedInput, match="larger than"):
        AuditEntry(time="2026-01-02T03:04:05Z", kind="infer", detail={"q": quotes})
    fits = "x" * (MAX_DETAIL_BYTES - 16)
    assert AuditEntry(time="2026-01-02T03:04:05Z", kind="infer", detail={"q": fits}).to_bytes()
