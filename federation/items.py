"""What the gossiped items of a federation contain, and the validator that judges them.

State sync (``statesync``) spreads opaque versioned items; this module gives them meaning:

============================  ===============  ==============  ==========================
kind                          origin           key             version / value
============================  ===============  ==============  ==========================
CAPABILITY_ADVERT             the node         ``advert``      increasing counter / signed
                                                               {cert, body}: what the node
                                                               can do, with its certificate
POLICY_BUNDLE                 ``@authority``   ``policy``      bundle version / the signed
                                                               bundle file, byte for byte
REVOCATION_LIST               ``@authority``   ``revocations`` CRL number / the CRL (PEM)
AUDIT_CHECKPOINT              the node         ``checkpoint``  tree size / signed note +
                                                               consistency proofs from the
                                                               node's earlier sizes
EQUIVOCATION_EVIDENCE         the node         ``fork:<size>`` 1 / two signed notes
============================  ===============  ==============  ==========================

:class:`ItemValidator` verifies every item before state sync stores or passes it on:
authority signatures (policy, revocations), certificate chains and node signatures
(adverts), witness consistency (checkpoints: a newer checkpoint is accepted only with a
valid RFC 9162 consistency proof from the one held), and evidence. Revoked nodes' items are
refused. Must never do I/O or read the clock: ``now`` is set by the caller before each call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation import identity
from federation.audit import EquivocationEvidence
from federation.canonical import b64decode, b64encode, canonical_json, parse_json_object
from federation.errors import FederationError, MalformedInput
from federation.identity import NodeIdentity, RevocationList
from federation.merkle import verify_consistency
from federation.messages import Item, ItemKind
from federation.note import Checkpoint, Verifier
from federation.statesync import ACCEPT, Reject, Verdict

AUTHORITY_ORIGIN = "@authority"
ADVERT_KEY = "advert"
POLICY_KEY = "policy"
REVOCATIONS_KEY = "revocations"
CHECKPOINT_KEY = "checkpoint"

# A checkpoint item carries consistency proofs from this many of the node's earlier gossiped
# sizes, so a witness that missed a few updates can still verify without a round trip.
MAX_PROOFS_PER_CHECKPOINT = 8


@dataclass(frozen=True)
class Advert:
    """A verified capability advert: who the node is (attested) and what it says it can do."""

    identity: NodeIdentity
    version: int
    body: Mapping[str, Any]


def _advert_signed_bytes(origin: str, version: int, body: Mapping[str, Any], cert: str) -> bytes:
    # The certificate is signed too: a relay must not swap in another (older) certificate of
    # the same key at the same version.
    return canonical_json({"origin": origin, "kind": "advert", "version": version, "body": body,
                           "cert": cert})


def make_advert(key: Ed25519PrivateKey, node_id: str, cert_pem: bytes, version: int,
                body: Mapping[str, Any]) -> Item:
    """The node's capability advert item, signed by its own key."""
    signature = key.sign(_advert_signed_bytes(node_id, version, body, cert_pem.decode()))
    value = canonical_json({"cert": cert_pem.decode(), "body": dict(body),
                            "sig": b64encode(signature)})
    return Item(node_id, ItemKind.CAPABILITY_ADVERT, ADVERT_KEY, version, value)


def make_policy_item(bundle_raw: bytes, version: int) -> Item:
    return Item(AUTHORITY_ORIGIN, ItemKind.POLICY_BUNDLE, POLICY_KEY, version, bundle_raw)


def make_revocation_item(crl_pem: bytes, version: int) -> Item:
    return Item(AUTHORITY_ORIGIN, ItemKind.REVOCATION_LIST, REVOCATIONS_KEY, version, crl_pem)


def make_checkpoint_item(node_id: str, size: int, note: str,
                         proofs: Mapping[int, list[bytes]]) -> Item:
    """A checkpoint of ``node_id``'s log with consistency proofs from earlier sizes."""
    kept = dict(sorted(proofs.items())[-MAX_PROOFS_PER_CHECKPOINT:])
    value = canonical_json({
        "note": note,
        "proofs": {str(m): [b64encode(h) for h in hashes] for m, hashes in kept.items()},
    })
    return Item(node_id, ItemKind.AUDIT_CHECKPOINT, CHECKPOINT_KEY, size, value)


def make_evidence_item(evidence: EquivocationEvidence, node_id: str) -> Item:
    return Item(node_id, ItemKind.EQUIVOCATION_EVIDENCE, f"fork:{evidence.size}", 1,
                evidence.to_json())


def read_checkpoint_item(item: Item) -> tuple[str, dict[int, list[bytes]]]:
    doc = parse_json_object(item.value, "checkpoint item")
    note = doc.get("note")
    proofs = doc.get("proofs")
    if not isinstance(note, str) or not isinstance(proofs, dict):
        raise MalformedInput("checkpoint item needs 'note' (string) and 'proofs' (object)")
    parsed: dict[int, list[bytes]] = {}
    for size, hashes in proofs.items():
        if not str(size).isdigit() or not isinstance(hashes, list):
            raise MalformedInput("checkpoint item proofs must map sizes to hash lists")
        parsed[int(size)] = [b64decode(h, length=32, what="proof hash") for h in hashes]
    return note, parsed


def read_advert(item: Item, authority_cert_pem: bytes, now: datetime) -> Advert:
    """Verify an advert: certificate chains to the authority, is this origin's, signed it."""
    doc = parse_json_object(item.value, "capability advert")
    cert, body, sig = doc.get("cert"), doc.get("body"), doc.get("sig")
    if not isinstance(cert, str) or not isinstance(body, dict) or not isinstance(sig, str):
        raise MalformedInput("capability advert needs 'cert', 'body' and 'sig'")
    ident = NodeIdentity.from_certificate(cert.encode(), authority_cert_pem, now)
    if ident.node_id != item.origin:
        raise MalformedInput(
            f"advert of {item.origin!r} carries the certificate of {ident.node_id!r}"
        )
    try:
        ident.public_key.verify(b64decode(sig, length=64, what="advert signature"),
                                _advert_signed_bytes(item.origin, item.version, body, cert))
    except InvalidSignature:
        from federation.errors import BadSignature

        raise BadSignature(f"advert of {item.origin} is not signed by its key") from None
    return Advert(ident, item.version, body)


@dataclass
class ItemValidator:
    """The :class:`statesync.Validator` of a node: everything is verified before it is kept.

    Set :attr:`now` before handing messages to state sync. :attr:`identities` fills with the
    attested identity of every node whose advert verified; the I/O layer uses it to verify
    those nodes' datagrams and checkpoints.
    """

    authority_cert_pem: bytes
    now: datetime
    revocations: RevocationList | None = None
    identities: dict[str, NodeIdentity] = field(default_factory=dict)
    #: (origin, held size, offered size) of checkpoints refused only for want of a proof:
    #: the I/O layer may fetch the proof from the origin and put the item again.
    wants_proof: list[tuple[str, int, int]] = field(default_factory=list)
    #: The node's one per-origin witness state (``federation.witness.WitnessState``), shared
    #: with the tlog-witness endpoint and persisted by the I/O layer. When set, a checkpoint is
    #: judged against the record witnessed there (which survives restarts), not against the
    #: item held in memory, and accepted checkpoints advance it.
    witness: Any = None

    def __post_init__(self) -> None:
        authority = identity.load_authority_certificate(self.authority_cert_pem)
        self._authority_key = authority.public_key()
        self._federation = identity._common_name(authority.subject)

    def verifier(self, node_id: str) -> Verifier | None:
        ident = self.identities.get(node_id)
        if ident is None:
            return None
        return Verifier(ident.origin, ident.public_key)

    def validate(self, item: Item, current: Item | None) -> Verdict:
        try:
            return self._validate(item, current)
        except FederationError as exc:
            return Reject(str(exc))
        except (ValueError, KeyError, TypeError) as exc:
            return Reject(f"malformed {item.kind.name.lower()} item: {exc}")

    def _validate(self, item: Item, current: Item | None) -> Verdict:
        kind = item.kind
        if kind is ItemKind.CAPABILITY_ADVERT:
            if item.key != ADVERT_KEY:
                return Reject(f"capability adverts live at key {ADVERT_KEY!r}, not {item.key!r}")
            advert = read_advert(item, self.authority_cert_pem, self.now)
            if self.revocations is not None:
                self.revocations.check(advert.identity)
            self.identities[item.origin] = advert.identity
            return ACCEPT
        if kind is ItemKind.POLICY_BUNDLE:
            from federation.policy import read_bundle

            if item.origin != AUTHORITY_ORIGIN or item.key != POLICY_KEY:
                return Reject("policy bundles are authority items (@authority/policy)")
            bundle = read_bundle(item.value, self._authority_key,  # type: ignore[arg-type]
                                 federation=self._federation)
            if bundle.version != item.version:
                return Reject(f"item version {item.version} != bundle version {bundle.version}")
            return ACCEPT
        if kind is ItemKind.REVOCATION_LIST:
            if item.origin != AUTHORITY_ORIGIN or item.key != REVOCATIONS_KEY:
                return Reject("revocation lists are authority items (@authority/revocations)")
            crl = identity.read_revocation_list(item.value, self.authority_cert_pem)
            if crl.version != item.version:
                return Reject(f"item version {item.version} != list version {crl.version}")
            return ACCEPT
        if kind is ItemKind.AUDIT_CHECKPOINT:
            return self._checkpoint(item, current)
        if kind is ItemKind.EQUIVOCATION_EVIDENCE:
            verifier = self.verifier(item.origin)
            if verifier is None:
                return Reject(f"no verified advert of {item.origin} yet")
            if item.key.startswith("rollback:"):
                from federation.witness import RollbackEvidence

                rollback = RollbackEvidence.parse(item.value)
                held_size, offered_size = rollback.sizes(verifier)
                if item.key != f"rollback:{held_size}:{offered_size}" or item.version != 1:
                    return Reject(f"rollback evidence lives at key 'rollback:{held_size}:"
                                  f"{offered_size}' version 1")
                return ACCEPT
            evidence = EquivocationEvidence.parse(item.value)
            if item.key != f"fork:{evidence.size}" or item.version != 1:
                return Reject(f"evidence of size {evidence.size} lives at key "
                              f"'fork:{evidence.size}' version 1, not {item.key!r} "
                              f"version {item.version}")
            evidence.verify(verifier)
            return ACCEPT
        return Reject(f"unknown item kind {kind!r}")

    def _checkpoint(self, item: Item, current: Item | None) -> Verdict:
        if item.key != CHECKPOINT_KEY:
            # Elsewhere it would be a second, unwitnessed slot: TOFU without a proof.
            return Reject(f"checkpoints live at key {CHECKPOINT_KEY!r}, not {item.key!r}")
        verifier = self.verifier(item.origin)
        if verifier is None:
            return Reject(f"no verified advert of {item.origin} yet; cannot check its checkpoint")
        if self.revocations is not None:
            self.revocations.check(self.identities[item.origin])
        note, proofs = read_checkpoint_item(item)
        checkpoint = Checkpoint.open(note, verifier)
        if checkpoint.size != item.version:
            return Reject(f"item version {item.version} != checkpoint size {checkpoint.size}")
        if self.witness is not None:
            return self._witnessed(item, note, proofs, checkpoint, verifier)
        if current is None:
            return ACCEPT  # first contact: trust on first use, as any witness
        held_note, _ = read_checkpoint_item(current)
        held = Checkpoint.open(held_note, verifier)
        if held.size == 0:
            return ACCEPT
        proof = proofs.get(held.size)
        if proof is None:
            want = (item.origin, held.size, checkpoint.size)
            if want not in self.wants_proof:
                self.wants_proof.append(want)
                del self.wants_proof[:-64]  # bounded: the I/O layer drains it
            return Reject(
                f"checkpoint {checkpoint.size} of {item.origin} has no consistency proof from "
                f"the held size {held.size}"
            )
        verify_consistency(held.size, checkpoint.size, proof, held.root_hash,
                           checkpoint.root_hash)
        return ACCEPT


    def _witnessed(self, item: Item, note: str, proofs: Mapping[int, list[bytes]],
                   checkpoint: Checkpoint, verifier: Verifier) -> Verdict:
        from federation.errors import BadProof, CheckpointEquivocation

        held = self.witness.held(checkpoint.origin)
        proof = proofs.get(held.size) if held is not None else None
        try:
            self.witness.observe(note, verifier, proof, int(self.now.timestamp()))
        except CheckpointEquivocation:
            return ACCEPT  # state sync reports the Conflict; the witness kept the evidence
        except BadProof as exc:
            if held is not None and proof is None:
                want = (item.origin, held.size, checkpoint.size)
                if want not in self.wants_proof:
                    self.wants_proof.append(want)
                    del self.wants_proof[:-64]  # bounded: the I/O layer drains it
            return Reject(f"checkpoint {checkpoint.size} of {item.origin}: {exc}")
        if held is not None and checkpoint.size < held.size:
            return Reject(f"checkpoint {checkpoint.size} of {item.origin} is older than the "
                          f"witnessed {held.size}")
        return ACCEPT


def advert_from_store(item: Item | None, authority_cert_pem: bytes, now: datetime) -> Advert | None:
    """Re-read a stored (already validated) advert; None when absent or no longer valid."""
    if item is None:
        return None
    try:
        return read_advert(item, authority_cert_pem, now)
    except FederationError:
        return None


def canonical_body(body: Mapping[str, Any]) -> bytes:
    return canonical_json(dict(body))
