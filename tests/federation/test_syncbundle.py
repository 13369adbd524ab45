"""Sync bundles: building, verifying whole-or-nothing, and planning the merge.

Invariant: ``read_bundle`` returns only when every part verifies against the importer's
authority — the exporter's certificate and signature, the policy bundle, the revocation
list, every log's certificate and signed checkpoint, every log's entries as exactly the
signed leaves ``[start, size)``, every model's bytes — and otherwise raises, so no part of
a bad bundle is ever used. ``plan_merge`` is idempotent: after applying its plan, the same
bundle plans nothing new.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.audit import AuditEntry, log_origin
from federation.canonical import b64decode, b64encode, rfc3339, sha256_hex
from federation.errors import (
    BadCertificate,
    BadProof,
    BadSignature,
    FederationError,
    MalformedInput,
    Revoked,
)
from federation.identity import (
    Authority,
    certificate_serial,
    generate_key,
    issue_node_certificate,
    issue_revocation_list,
    make_enrollment_request,
    read_revocation_list,
)
from federation.merkle import EMPTY_ROOT, CompactRange, MemoryTree, leaf_hash
from federation.note import Checkpoint, Signer
from federation.policy_bundle import sign_bundle
from federation.syncbundle import (
    HEAD_PREFIX_BYTES,
    MAGIC,
    LogHead,
    LogSection,
    MergeStatus,
    ModelBlob,
    ModelRef,
    VerifiedBundle,
    build_bundle,
    build_head,
    head_size,
    plan_merge,
    read_bundle,
    read_head,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
FED = "acme"
POLICY = "permit(principal, action, resource);"
MODEL = ModelBlob("digits", "1", sha256_hex(b"onnx-bytes" * 100), b"onnx-bytes" * 100)


@dataclass(frozen=True)
class Node:
    node_id: str
    key: Ed25519PrivateKey
    cert: bytes

    @property
    def origin(self) -> str:
        return log_origin(self.node_id, FED)


@dataclass(frozen=True)
class Log:
    node: Node
    entries: list[bytes]
    tree: MemoryTree

    def note(self, size: int | None = None, signer_key: Ed25519PrivateKey | None = None) -> str:
        n = self.tree.size if size is None else size
        key = signer_key or self.node.key
        return Checkpoint(self.node.origin, n, self.tree.root(n)).sign(
            [Signer(self.node.origin, key)]
        )

    def section(self, start: int, size: int | None = None, **kw: Any) -> LogSection:
        n = self.tree.size if size is None else size
        return LogSection.from_store(
            self.node.origin, self.note(n), start, self.entries[start:n], self.tree.get_node, **kw
        )


def enroll(authority: Authority, node_id: str) -> Node:
    key = generate_key()
    cert = issue_node_certificate(
        authority.key,
        authority.cert_pem,
        make_enrollment_request(node_id, key, NOW),
        "edge",
        "berlin-1",
        "DE",
        {},
        NOW - timedelta(hours=1),
    )
    return Node(node_id, key, cert)


def make_log(node: Node, n: int) -> Log:
    entries = [
        AuditEntry(
            time=rfc3339(NOW + timedelta(seconds=i)),
            kind="infer",
            model="digits",
            caller=f"app:{node.node_id}",
            decision="allow",
            input_sha256=sha256_hex(str(i).encode()),
        ).to_bytes()
        for i in range(n)
    ]
    return Log(node, entries, MemoryTree.from_entries(entries))


@pytest.fixture(scope="module")
def authority() -> Authority:
    return Authority.create(FED, NOW - timedelta(days=1))


@pytest.fixture(scope="module")
def foreign() -> Authority:
    """Another federation's authority, with the same name to show names are not trust."""
    return Authority.create(FED, NOW - timedelta(days=1))


@pytest.fixture(scope="module")
def exporter(authority: Authority) -> Node:
    return enroll(authority, "edge-1")


@pytest.fixture(scope="module")
def peer(authority: Authority) -> Node:
    return enroll(authority, "edge-2")


@pytest.fixture(scope="module")
def own_log(exporter: Node) -> Log:
    return make_log(exporter, 20)


@pytest.fixture(scope="module")
def peer_log(peer: Node) -> Log:
    return make_log(peer, 29)


@pytest.fixture(scope="module")
def policy(authority: Authority) -> bytes:
    return sign_bundle(authority.key, POLICY, 3, "2025-05-31T12:00:00Z", FED)


@pytest.fixture(scope="module")
def crl(authority: Authority) -> bytes:
    return issue_revocation_list(authority, [("gone-1", None)], 2, NOW)


@pytest.fixture
def export(
    exporter: Node, peer: Node, own_log: Log, peer_log: Log, policy: bytes, crl: bytes
) -> Callable[..., bytes]:
    """Build a full bundle (both logs, policy, CRL, one model); keywords override parts."""

    def build(**overrides: Any) -> bytes:
        args: dict[str, Any] = {
            "federation": FED,
            "node_id": exporter.node_id,
            "node_cert_pem": exporter.cert,
            "node_key": exporter.key,
            "created": NOW,
            "policy": policy,
            "revocations": crl,
            "logs": [own_log.section(0), peer_log.section(13)],
            "certificates": [peer.cert],
            "models": [MODEL],
            "since": {peer.origin: 13},
        }
        args.update(overrides)
        return build_bundle(**args)

    return build


@pytest.fixture
def read(authority: Authority) -> Callable[..., VerifiedBundle]:
    def run(data: bytes, **kw: Any) -> VerifiedBundle:
        return read_bundle(data, authority_cert_pem=authority.cert_pem, now=NOW, **kw)

    return run


def resign(data: bytes, key: Ed25519PrivateKey, edit: Callable[[dict[str, Any]], None]) -> bytes:
    """Edit the manifest and sign it again with ``key``: a bundle the exporter itself forged."""
    n = head_size(data)
    manifest = json.loads(data[HEAD_PREFIX_BYTES : n - 64])
    edit(manifest)
    body = rfc8785.dumps(manifest)
    message = MAGIC + len(body).to_bytes(4, "big") + body
    return message + key.sign(message) + data[n:]


# --- round trip ------------------------------------------------------------------------------


def test_round_trip_verifies_every_part(
    export: Callable[..., bytes],
    read: Callable[..., VerifiedBundle],
    exporter: Node,
    peer: Node,
    own_log: Log,
    peer_log: Log,
    policy: bytes,
    crl: bytes,
) -> None:
    data = export()
    assert data.startswith(b"outpost.sync-bundle/1\n")
    got = read(data)
    assert got.exporter.node_id == "edge-1" and got.federation == FED
    assert got.created == "2025-06-01T12:00:00.000000Z"
    assert dict(got.since) == {peer.origin: 13}
    assert got.policy is not None and got.policy.version == 3 and got.policy_raw == policy
    assert got.revocations is not None and got.revocations.version == 2
    assert got.revocations_raw == crl
    assert [log.origin for log in got.logs] == [exporter.origin, peer.origin]
    own, other = got.logs
    assert (own.start, own.size, list(own.entries)) == (0, 20, own_log.entries)
    assert (other.start, other.size, list(other.entries)) == (13, 29, peer_log.entries[13:])
    assert other.node_identity.node_id == "edge-2"
    assert other.checkpoint.root_hash == peer_log.tree.root()
    assert got.models == (MODEL,) and got.model_refs == (MODEL.ref,)
    assert got.digest == sha256_hex(data[: got.head_size - 64])
    assert got.head_size + len(MODEL.data) == len(data)


def test_minimal_bundle_has_only_the_header(
    export: Callable[..., bytes], read: Callable[..., VerifiedBundle]
) -> None:
    got = read(
        export(policy=None, revocations=None, logs=[], certificates=[], models=[], since=None)
    )
    assert (got.policy, got.revocations, got.logs, got.models, dict(got.since)) == (
        None,
        None,
        (),
        (),
        {},
    )


@pytest.mark.parametrize("start", range(0, 30))
def test_every_start_verifies_and_gives_roots_from_start(
    start: int,
    export: Callable[..., bytes],
    read: Callable[..., VerifiedBundle],
    peer_log: Log,
) -> None:
    (log,) = read(export(logs=[peer_log.section(start)])).logs
    assert log.start == start and list(log.entries) == peer_log.entries[start:]
    assert len(log.frontier) == len(CompactRange.nodes_for(start))
    for size in range(start, 30):
        assert log.root_at(size) == peer_log.tree.root(size)
    if start:
        with pytest.raises(ValueError, match="only for sizes"):
            log.root_at(start - 1)


def test_streaming_head_then_blobs(
    export: Callable[..., bytes], authority: Authority, peer: Node
) -> None:
    data = export()
    n = head_size(data[:HEAD_PREFIX_BYTES])
    head = read_head(data[:n], authority_cert_pem=authority.cert_pem, now=NOW)
    assert head.models == () and head.model_refs == (MODEL.ref,) and len(head.logs) == 2
    blob = data[n:]
    head.model_refs[0].verify(sha256_hex(blob), len(blob))
    with pytest.raises(BadSignature, match="does not match the signed manifest"):
        head.model_refs[0].verify(sha256_hex(blob[:-1]), len(blob) - 1)
    with pytest.raises(MalformedInput, match="length field"):
        read_head(data[: n + 1], authority_cert_pem=authority.cert_pem, now=NOW)


# --- refused whole ---------------------------------------------------------------------------


def test_a_flipped_byte_anywhere_is_refused_whole(
    export: Callable[..., bytes], read: Callable[..., VerifiedBundle]
) -> None:
    data = export()
    n = head_size(data)
    # Every byte of the framing, the signature and the start/end of the blob; a stride
    # through the manifest (certificates, policy, CRL, notes, frontier, entries).
    positions = {
        *range(HEAD_PREFIX_BYTES),
        *range(n - 64, n + 16),
        *range(len(data) - 16, len(data)),
        *range(HEAD_PREFIX_BYTES, n - 64, 23),
    }
    for i in sorted(positions):
        bad = bytearray(data)
        bad[i] ^= 0x01
        with pytest.raises(FederationError):
            read(bytes(bad))
    for cut in (data[:-1], data + b"\x00", data[: n - 1], data[:10]):
        with pytest.raises(MalformedInput):
            read(cut)


def test_non_canonical_manifest_is_refused(
    export: Callable[..., bytes], read: Callable[..., VerifiedBundle], exporter: Node
) -> None:
    data = export(models=[])
    manifest = json.loads(data[HEAD_PREFIX_BYTES:-64])
    body = json.dumps(manifest, indent=1).encode()  # same value, other bytes
    message = MAGIC + len(body).to_bytes(4, "big") + body
    with pytest.raises(MalformedInput, match="canonical"):
        read(message + exporter.key.sign(message))


def test_altered_entries_are_bad_proof_even_when_re_signed(
    export: Callable[..., bytes],
    read: Callable[..., VerifiedBundle],
    exporter: Node,
    peer_log: Log,
) -> None:
    """The exporter itself cannot make entries the log did not sign pass: BadProof."""
    data = export()

    def peer_section(edit: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
        def apply(manifest: dict[str, Any]) -> None:
            edit(manifest["logs"][1])

        return apply

    def changed(s: dict[str, Any]) -> None:
        entry = json.loads(b64decode(s["entries"][3]))
        entry["decision"] = "deny"
        s["entries"][3] = b64encode(rfc8785.dumps(entry))

    def reordered(s: dict[str, Any]) -> None:
        s["entries"][2], s["entries"][5] = s["entries"][5], s["entries"][2]

    def removed_last(s: dict[str, Any]) -> None:
        s["entries"].pop()

    def removed_first_with_honest_frontier(s: dict[str, Any]) -> None:
        # Drop the first entry and claim the rest start one later, with the true
        # frontier for that start: the entries now sit at the wrong positions.
        s["entries"].pop(0)
        s["start"] += 1
        s["frontier"] = [b64encode(h) for h in peer_log.section(s["start"]).frontier]
        s["entries"].append(b64encode(b"{}"))

    def inserted(s: dict[str, Any]) -> None:
        s["entries"].insert(4, s["entries"][4])
        s["entries"].pop()

    def bad_frontier(s: dict[str, Any]) -> None:
        s["frontier"][0] = b64encode(leaf_hash(b"forged"))

    for edit in (
        changed,
        reordered,
        removed_last,
        removed_first_with_honest_frontier,
        inserted,
        bad_frontier,
    ):
        with pytest.raises(BadProof):
            read(resign(data, exporter.key, peer_section(edit)))


def test_entries_must_reach_the_signed_size(
    export: Callable[..., bytes],
    read: Callable[..., VerifiedBundle],
    exporter: Node,
    peer_log: Log,
) -> None:
    """A frontier is untrusted: the signed root alone, as the one-hash frontier of [0, 16),
    folds to the signed root with no entries at all. Only the signed size stops it."""

    def root_as_frontier(m: dict[str, Any]) -> None:
        s = m["logs"][1]
        s["start"], s["entries"] = 16, []
        s["frontier"] = [b64encode(peer_log.tree.root())]

    with pytest.raises(BadProof, match="do not reach the signed size"):
        read(resign(export(), exporter.key, root_as_frontier))


def test_checkpoint_signed_by_the_wrong_key_is_refused(
    export: Callable[..., bytes],
    read: Callable[..., VerifiedBundle],
    exporter: Node,
    peer_log: Log,
) -> None:
    for key in (exporter.key, generate_key()):  # the exporter's key, or anyone's
        forged = LogSection.from_store(
            peer_log.node.origin,
            peer_log.note(signer_key=key),
            0,
            peer_log.entries,
            peer_log.tree.get_node,
        )
        with pytest.raises(BadSignature):
            read(export(logs=[forged]))


def test_a_log_must_come_with_its_nodes_certificate(
    export: Callable[..., bytes], read: Callable[..., VerifiedBundle], exporter: Node, peer: Node
) -> None:
    data = export()

    def drop_certificate(m: dict[str, Any]) -> None:
        m["certificates"] = []

    def drop_peer_log(m: dict[str, Any]) -> None:
        del m["logs"][1]

    def duplicate_certificate(m: dict[str, Any]) -> None:
        m["certificates"] *= 2

    with pytest.raises(BadCertificate, match="no certificate"):
        read(resign(data, exporter.key, drop_certificate))
    with pytest.raises(MalformedInput, match="no log of theirs"):
        read(resign(data, exporter.key, drop_peer_log))
    with pytest.raises(MalformedInput, match="two certificates"):
        read(resign(data, exporter.key, duplicate_certificate))


def test_foreign_origin_is_refused(
    export: Callable[..., bytes], read: Callable[..., VerifiedBundle], exporter: Node
) -> None:
    def other_federation(m: dict[str, Any]) -> None:
        m["logs"][0]["origin"] = "outpost/globex/edge-1"

    with pytest.raises(MalformedInput, match="own federation"):
        read(resign(export(), exporter.key, other_federation))


def test_exporter_of_another_federation_is_refused(
    export: Callable[..., bytes], read: Callable[..., VerifiedBundle], foreign: Authority
) -> None:
    stranger = enroll(foreign, "edge-1")  # same names, other authority
    data = export(
        node_cert_pem=stranger.cert,
        node_key=stranger.key,
        logs=[],
        certificates=[],
    )
    with pytest.raises(BadCertificate, match="not issued by the federation authority"):
        read(data)


def test_header_must_name_the_certificates_node(
    export: Callable[..., bytes], read: Callable[..., VerifiedBundle], exporter: Node
) -> None:
    def impersonate(m: dict[str, Any]) -> None:
        m["node_id"] = "edge-2"

    with pytest.raises(BadCertificate, match="says it is from"):
        read(resign(export(), exporter.key, impersonate))


def test_signature_by_another_key_is_refused(
    export: Callable[..., bytes], read: Callable[..., VerifiedBundle]
) -> None:
    with pytest.raises(BadSignature, match="altered after export"):
        read(resign(export(), generate_key(), lambda m: None))


def test_revoked_exporter_is_refused(
    export: Callable[..., bytes],
    read: Callable[..., VerifiedBundle],
    authority: Authority,
    exporter: Node,
) -> None:
    revoking = issue_revocation_list(
        authority, [("edge-1", certificate_serial(exporter.cert))], 4, NOW
    )
    held = read_revocation_list(revoking, authority.cert_pem)
    with pytest.raises(Revoked):
        read(export(), revocations=held)  # by the list the importer holds
    with pytest.raises(Revoked):
        read(export(revocations=revoking))  # by the newer list the bundle carries
    # A carried list older than the held one does not override it (newest wins).
    newer_clean = read_revocation_list(
        issue_revocation_list(authority, [], 9, NOW), authority.cert_pem
    )
    assert read(export(revocations=revoking), revocations=newer_clean).revocations == held


def test_log_of_a_revoked_node_is_refused(
    export: Callable[..., bytes], read: Callable[..., VerifiedBundle], authority: Authority
) -> None:
    held = read_revocation_list(
        issue_revocation_list(authority, [("edge-2", None)], 5, NOW), authority.cert_pem
    )
    with pytest.raises(Revoked, match="edge-2"):
        read(export(), revocations=held)


def test_policy_or_crl_of_another_authority_is_refused(
    export: Callable[..., bytes], read: Callable[..., VerifiedBundle], foreign: Authority
) -> None:
    foreign_policy = sign_bundle(foreign.key, POLICY, 99, "2025-05-31T12:00:00Z", FED)
    with pytest.raises(BadSignature, match="policy bundle"):
        read(export(policy=foreign_policy))
    foreign_crl = issue_revocation_list(foreign, [], 99, NOW)
    with pytest.raises(BadSignature, match="revocation list"):
        read(export(revocations=foreign_crl))


def test_model_with_wrong_hash_is_refused(
    export: Callable[..., bytes], read: Callable[..., VerifiedBundle], exporter: Node
) -> None:
    lying = ModelRef("digits", "1", sha256_hex(b"the real model"), len(MODEL.data))
    head = build_head(
        federation=FED,
        node_id=exporter.node_id,
        node_cert_pem=exporter.cert,
        node_key=exporter.key,
        created=NOW,
        models=[lying],
    )
    with pytest.raises(BadSignature, match="digits:1"):
        read(head + MODEL.data)
    with pytest.raises(ValueError, match="do not hash"):
        export(models=[ModelBlob("digits", "1", lying.sha256, MODEL.data)])


def test_builder_refuses_what_would_not_verify(
    export: Callable[..., bytes], exporter: Node, peer: Node, peer_log: Log
) -> None:
    with pytest.raises(ValueError, match="not the key"):
        export(node_key=generate_key())
    with pytest.raises(ValueError, match="certificate is for"):
        export(node_id="edge-9")
    section = peer_log.section(13)
    broken = LogSection(
        section.origin, section.checkpoint_note, 13, section.frontier, section.entries[::-1]
    )
    with pytest.raises(ValueError, match="do not fold"):
        export(logs=[broken])
    with pytest.raises(ValueError, match="one section per log"):
        export(logs=[section, section])
    for logs, certs in (([], [peer.cert]), ([section], []), ([section], [peer.cert] * 2)):
        with pytest.raises(ValueError, match="one certificate per node"):
            export(logs=logs, certificates=certs)
    with pytest.raises(ValueError, match="outpost/acme/<node-id>"):
        export(since={"outpost/globex/edge-2": 3})
    with pytest.raises(ValueError, match="integer"):
        export(since={peer.origin: -1})


# --- consistency for importers holding less than start -----------------------------------------


def test_consistency_proof_extends_an_older_held_checkpoint(
    export: Callable[..., bytes],
    read: Callable[..., VerifiedBundle],
    exporter: Node,
    peer_log: Log,
) -> None:
    data = export(logs=[peer_log.section(13, consistency_from=5)])
    (log,) = read(data).logs
    log.extends(5, peer_log.tree.root(5))
    log.extends(0, EMPTY_ROOT)
    for size in range(13, 30):
        log.extends(size, peer_log.tree.root(size))
    with pytest.raises(BadProof):
        log.extends(5, peer_log.tree.root(6))
    with pytest.raises(BadProof, match="proves nothing about size 7"):
        log.extends(7, peer_log.tree.root(7))
    with pytest.raises(BadProof, match="older than the held size"):
        log.extends(30, peer_log.tree.root(29))

    def forge(m: dict[str, Any]) -> None:
        m["logs"][0]["consistency"]["hashes"][0] = b64encode(leaf_hash(b"x"))

    (forged,) = read(resign(data, exporter.key, forge)).logs  # shape is fine...
    with pytest.raises(BadProof):  # ...but it proves nothing
        forged.extends(5, peer_log.tree.root(5))


# --- plan_merge --------------------------------------------------------------------------------


def apply(plan_logs: Any, held: dict[str, LogHead], bundle: VerifiedBundle) -> None:
    """What the node layer does with a plan: append, then hold the new head."""
    by_origin = {log.origin: log for log in bundle.logs}
    for m in plan_logs:
        if m.status is MergeStatus.APPEND:
            assert m.first == held.get(m.origin, LogHead(0, EMPTY_ROOT)).size
            held[m.origin] = LogHead(m.end, by_origin[m.origin].checkpoint.root_hash)


def test_plan_merge_is_idempotent(
    export: Callable[..., bytes],
    read: Callable[..., VerifiedBundle],
    own_log: Log,
    peer_log: Log,
) -> None:
    bundle = read(export())
    held: dict[str, LogHead] = {}
    first = plan_merge(held, None, None, bundle)
    assert not first.nothing_new
    statuses = {m.origin: m.status for m in first.logs}
    # Nothing held: the whole own log appends; the peer section starts at 13, a gap.
    assert statuses == {
        own_log.node.origin: MergeStatus.APPEND,
        peer_log.node.origin: MergeStatus.GAP,
    }
    (append,) = first.appends
    assert (append.first, append.end, list(append.entries)) == (0, 20, own_log.entries)
    assert first.policy is bundle.policy and first.revocations is bundle.revocations
    assert first.models == (MODEL.ref,)

    apply(first.logs, held, bundle)
    assert first.policy is not None and first.revocations is not None
    again = plan_merge(
        held,
        first.policy.version,
        first.revocations.version,
        bundle,
        held_models={MODEL.sha256},
    )
    assert again.nothing_new
    assert {m.origin: m.status for m in again.logs}[own_log.node.origin] is MergeStatus.UP_TO_DATE


def test_plan_merge_appends_only_what_is_new(
    export: Callable[..., bytes], read: Callable[..., VerifiedBundle], peer_log: Log
) -> None:
    bundle = read(export(logs=[peer_log.section(13)], policy=None, revocations=None, models=[]))
    origin = peer_log.node.origin

    def plan(size: int, root: bytes | None = None) -> Any:
        held = {origin: LogHead(size, peer_log.tree.root(size) if root is None else root)}
        (m,) = plan_merge(held, None, None, bundle).logs
        return m

    m = plan(20)
    assert m.status is MergeStatus.APPEND
    assert (m.first, m.end, list(m.entries)) == (20, 29, peer_log.entries[20:])
    assert plan(13).first == 13 and plan(13).end == 29
    assert plan(29).status is MergeStatus.UP_TO_DATE
    assert plan(10).status is MergeStatus.GAP and "--since 10" in plan(10).reason
    conflict = plan(20, peer_log.tree.root(21))
    assert conflict.status is MergeStatus.CONFLICT and not conflict.entries
    assert plan(29, peer_log.tree.root(28)).status is MergeStatus.CONFLICT

    longer = make_log(peer_log.node, 35)  # the importer already holds more
    held = {origin: LogHead(35, longer.tree.root())}
    (stale,) = plan_merge(held, None, None, bundle).logs
    assert stale.status is MergeStatus.STALE and not stale.entries


def test_plan_merge_never_rolls_back_policy_or_revocations(
    export: Callable[..., bytes], read: Callable[..., VerifiedBundle]
) -> None:
    bundle = read(export())  # policy v3, revocations v2
    for held_policy, held_crl, want in ((3, 2, False), (7, 5, False), (2, 1, True)):
        plan = plan_merge({}, held_policy, held_crl, bundle)
        assert (plan.policy is not None, plan.revocations is not None) == (want, want)
