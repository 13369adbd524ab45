"""Witnessing: C2SP ``tlog-witness`` (add-checkpoint), ``tlog-cosignature`` (``cosignature/v1``
Ed25519 cosignatures), and the one per-origin witness state every path goes through.

Owns: the add-checkpoint request body (``old <size>``, proof lines, blank line, signed
checkpoint) and its answers (200 with cosignature lines; 409 with the size held, as
``text/x.tlog.size``; 422 on a bad proof; 403/404/400), the cosignature line format and its
key id (algorithm byte 0x04), verifier keys for cosigners, and :class:`WitnessState`: the
latest checkpoint witnessed per origin, and the evidence a log that goes back produces.

Must never: do I/O or read the clock (``now`` is passed in, POSIX seconds), hold more than one
checkpoint per origin, or treat a relayed stale checkpoint as evidence against its origin.

Theory of operation
-------------------
One :class:`WitnessState` per node holds, per origin, the newest checkpoint this node has
verified as a consistent extension of everything it saw before. The tlog-witness endpoint
(``add-checkpoint``), gossiped checkpoint items (``federation.items``) and a restart (the
node layer loads the persisted records) all read and advance the same record, so what one
path learnt the other enforces. Transitions for a checkpoint C (signature verified) of origin
O, held H, in an add-checkpoint with old size ``m``:

======================================  ===========================  ======================
condition                               answer                       state / evidence
======================================  ===========================  ======================
m > C.size                              400                          —
no H, m = 0, empty proof                200 + cosignature            hold C (first use)
H and m != H.size                       409 ``H.size``               rollback if C.size <
                                                                     H.size and the origin
                                                                     itself submitted
m = H.size = C.size, same root          200 + cosignature            unchanged
m = H.size = C.size, other root         409 ``H.size``               equivocation
m = H.size < C.size, proof verifies     200 + cosignature            hold C
m = H.size < C.size, proof fails        422                          fork if the origin
                                                                     itself submitted
======================================  ===========================  ======================

"The origin itself submitted" is decided by the node layer from the mutual-TLS identity: a
stale or unprovable checkpoint relayed by anyone else proves nothing against the origin (an
old signed checkpoint can be replayed by anyone), but the origin presenting, as its current
head, a tree smaller than or not extending one it signed before is a log that went back.
Two signed checkpoints of one size with different roots are self-proving
(:class:`~federation.audit.EquivocationEvidence`) whoever submits them.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from federation.audit import EquivocationEvidence
from federation.canonical import b64decode, b64encode, canonical_json, parse_json_object, sha256
from federation.errors import (
    BadProof,
    BadSignature,
    CheckpointEquivocation,
    MalformedInput,
    VerificationError,
)
from federation.merkle import HASH_SIZE, verify_consistency
from federation.note import SIG_PREFIX, Checkpoint, Verifier, open_note, valid_key_name

__all__ = [
    "ALG_COSIGNATURE_V1",
    "MAX_PROOF_LINES",
    "AddResult",
    "CosignatureVerifier",
    "Cosigner",
    "RollbackEvidence",
    "WitnessRecord",
    "WitnessState",
    "add_checkpoint_body",
    "cosignatures",
    "parse_add_checkpoint",
]

ALG_COSIGNATURE_V1 = 0x04  # c2sp.org/tlog-cosignature: Ed25519 timestamped cosignature
# The spec: "The client MUST NOT send more than 63 consistency proof lines."
MAX_PROOF_LINES = 63
# A request is one checkpoint note and <= 63 proof lines: the note cap plus the proof.
MAX_ADD_CHECKPOINT_BYTES = 64 * 1024 + 64 * 46
SIZE_CONTENT_TYPE = "text/x.tlog.size"
_SIZE_RE = re.compile(r"0|[1-9][0-9]{0,19}")
_MAX_TIMESTAMP = 2**63 - 1


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def cosigner_key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    """SHA-256(<name> || "\\n" || 0x04 || pubkey)[:4] (tlog-cosignature, Ed25519)."""
    return sha256(name.encode() + b"\n" + bytes([ALG_COSIGNATURE_V1]) + _raw(public_key))[:4]


def cosigned_message(checkpoint_text: str, timestamp: int) -> bytes:
    """``cosignature/v1\\ntime <t>\\n`` followed by the whole checkpoint body."""
    return f"cosignature/v1\ntime {timestamp}\n{checkpoint_text}".encode()


@dataclass(frozen=True)
class CosignatureVerifier:
    """A witness's name and Ed25519 key, as a verifier of its cosignatures."""

    name: str
    public_key: Ed25519PublicKey

    def __post_init__(self) -> None:
        if not valid_key_name(self.name):
            raise ValueError(f"witness name {self.name!r} is invalid; no spaces or '+'")

    @property
    def key_id(self) -> bytes:
        return cosigner_key_id(self.name, self.public_key)

    @property
    def vkey(self) -> str:
        """``<name>+<hex id>+<base64(0x04 || pubkey)>`` (a signed-note vkey of type 0x04)."""
        body = b64encode(bytes([ALG_COSIGNATURE_V1]) + _raw(self.public_key))
        return f"{self.name}+{self.key_id.hex()}+{body}"

    @classmethod
    def from_vkey(cls, text: str) -> CosignatureVerifier:
        name, _, rest = text.strip().partition("+")
        hex_id, _, key_b64 = rest.partition("+")
        if not valid_key_name(name) or not re.fullmatch(r"[0-9a-fA-F]{8}", hex_id):
            raise MalformedInput("witness key must look like <name>+<8 hex>+<base64>")
        raw = b64decode(key_b64, what="witness public key")
        if len(raw) != 33 or raw[0] != ALG_COSIGNATURE_V1:
            raise MalformedInput(
                "witness key must be base64 of 0x04 and a 32-byte Ed25519 key (a cosignature/v1 "
                "vkey); `outpost audit witness-key` prints one"
            )
        verifier = cls(name, Ed25519PublicKey.from_public_bytes(raw[1:]))
        if verifier.key_id.hex() != hex_id.lower():
            raise MalformedInput(f"witness key id {hex_id} does not match its name and key; "
                                 "copy the vkey line whole")
        return verifier

    def verify_line(self, checkpoint_text: str, line: str) -> int | None:
        """The cosignature's timestamp if ``line`` is this witness's valid cosignature of the
        checkpoint; None if the line is someone else's. BadSignature if it is this witness's
        name and key id but does not verify."""
        parsed = _split_line(line)
        if parsed is None:
            return None
        name, raw = parsed
        if name != self.name or raw[:4] != self.key_id:
            return None
        if len(raw) != 4 + 8 + 64:
            raise BadSignature(f"cosignature by {name} has {len(raw)} bytes, want 76")
        (timestamp,) = struct.unpack(">Q", raw[4:12])
        if timestamp > _MAX_TIMESTAMP:
            raise BadSignature(f"cosignature by {name} has a timestamp beyond 2**63-1")
        try:
            self.public_key.verify(raw[12:], cosigned_message(checkpoint_text, timestamp))
        except InvalidSignature:
            raise BadSignature(f"cosignature by {name} does not verify over this checkpoint") \
                from None
        return int(timestamp)


@dataclass(frozen=True)
class Cosigner:
    """A witness's signing key (name: e.g. ``outpost/<federation>/<node-id>/witness``)."""

    name: str
    key: Ed25519PrivateKey

    @property
    def verifier(self) -> CosignatureVerifier:
        return CosignatureVerifier(self.name, self.key.public_key())

    def cosign(self, checkpoint_text: str, timestamp: int) -> str:
        """One ``— <name> <base64(key id || u64 time || sig)>`` line, with its newline."""
        if not 0 <= timestamp <= _MAX_TIMESTAMP:
            raise ValueError("cosignature timestamp must be within 0..2**63-1")
        sig = self.key.sign(cosigned_message(checkpoint_text, timestamp))
        raw = self.verifier.key_id + struct.pack(">Q", timestamp) + sig
        return f"{SIG_PREFIX}{self.name} {b64encode(raw)}\n"


def _split_line(line: str) -> tuple[str, bytes] | None:
    line = line.rstrip("\n")
    if not line.startswith(SIG_PREFIX):
        return None
    name, _, b64 = line[len(SIG_PREFIX):].partition(" ")
    try:
        raw = b64decode(b64, what="signature")
    except MalformedInput:
        return None
    return (name, raw) if len(raw) >= 5 else None


def signature_lines(note: str) -> tuple[str, list[str]]:
    """(checkpoint text, signature lines) of a signed note; MalformedInput when not one."""
    split = note.rfind("\n\n")
    if split < 0 or not note.endswith("\n"):
        raise MalformedInput("not a signed note: no blank line before the signatures")
    return note[: split + 1], [ln + "\n" for ln in note[split + 2 :].split("\n") if ln]


def cosignatures(note: str, witnesses: Iterable[CosignatureVerifier]) -> dict[str, int]:
    """Witness name -> timestamp for every valid cosignature on ``note`` by a given witness.
    Lines from unknown keys are ignored; a known key's bad cosignature raises BadSignature."""
    text, lines = signature_lines(note)
    out: dict[str, int] = {}
    for w in witnesses:
        for line in lines:
            ts = w.verify_line(text, line)
            if ts is not None:
                out[w.name] = ts
                break
    return out


# --- the add-checkpoint request -------------------------------------------------------


def add_checkpoint_body(old_size: int, proof: Sequence[bytes], note: str) -> bytes:
    if len(proof) > MAX_PROOF_LINES:
        raise ValueError(f"a consistency proof has at most {MAX_PROOF_LINES} hashes")
    lines = [f"old {old_size}\n", *(b64encode(h) + "\n" for h in proof), "\n"]
    return ("".join(lines) + note).encode()


def parse_add_checkpoint(body: bytes) -> tuple[int, list[bytes], str]:
    """(old size, proof hashes, signed checkpoint note); MalformedInput names the bad part."""
    if len(body) > MAX_ADD_CHECKPOINT_BYTES:
        raise MalformedInput(f"add-checkpoint body is larger than {MAX_ADD_CHECKPOINT_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedInput("add-checkpoint body is not UTF-8") from None
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise MalformedInput("add-checkpoint body needs a blank line before the checkpoint")
    lines = head.split("\n")
    if not lines[0].startswith("old ") or not _SIZE_RE.fullmatch(lines[0][4:]):
        raise MalformedInput("add-checkpoint body must start with 'old <size>' (decimal, no "
                             "leading zeros)")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise MalformedInput(f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof = [b64decode(ln, length=HASH_SIZE, what="consistency proof line") for ln in lines[1:]]
    return int(lines[0][4:]), proof, note


# --- the state ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WitnessRecord:
    """The newest consistent checkpoint witnessed for one origin, and when (POSIX seconds)."""

    origin: str
    size: int
    root_hash: bytes
    note: str
    updated: int


@dataclass(frozen=True)
class RollbackEvidence:
    """The origin, having signed ``held``, presented ``offered`` as its current head: smaller
    (``kind`` = ``smaller``) or not provably extending it (``inconsistent``). Both notes are
    signed by the origin; ``reporter`` is the witness that saw it presented."""

    origin: str
    kind: str
    held_note: str
    offered_note: str
    reporter: str

    def sizes(self, verifier: Verifier) -> tuple[int, int]:
        """(held size, offered size), after checking both notes are the origin's."""
        held = Checkpoint.open(self.held_note, verifier)
        offered = Checkpoint.open(self.offered_note, verifier)
        if held.origin != self.origin or offered.origin != self.origin:
            raise MalformedInput("rollback evidence notes are not of its origin")
        if self.kind == "smaller" and not offered.size < held.size:
            raise MalformedInput("rollback evidence 'smaller' but the offered tree is not smaller")
        if self.kind == "inconsistent" and not offered.size > held.size:
            raise MalformedInput("rollback evidence 'inconsistent' needs a larger offered tree")
        return held.size, offered.size

    def to_json(self) -> bytes:
        return canonical_json({"origin": self.origin, "kind": self.kind, "held": self.held_note,
                               "offered": self.offered_note, "reporter": self.reporter})

    @classmethod
    def parse(cls, data: bytes | str) -> RollbackEvidence:
        obj = parse_json_object(data, "rollback evidence")
        keys = {"origin", "kind", "held", "offered", "reporter"}
        if set(obj) != keys or not all(isinstance(obj[k], str) for k in keys) \
                or obj["kind"] not in ("smaller", "inconsistent"):
            raise MalformedInput('rollback evidence must be {"origin", "kind": smaller|'
                                 'inconsistent, "held", "offered", "reporter"} strings')
        return cls(obj["origin"], obj["kind"], obj["held"], obj["offered"], obj["reporter"])


@dataclass(frozen=True)
class AddResult:
    """The answer to an add-checkpoint: HTTP status, body, content type; and what changed."""

    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"
    record: WitnessRecord | None = None  # the new record to persist before answering
    evidence: EquivocationEvidence | RollbackEvidence | None = None


@dataclass
class WitnessState:
    """Per-origin latest witnessed checkpoint; see the module's transition table.

    ``verifiers`` maps origins to their log keys (the node layer fills it from certificates and
    ``audit.witnesses`` config); unknown origins get 404 as the spec says.
    """

    name: str
    records: dict[str, WitnessRecord] = field(default_factory=dict)
    evidence: list[EquivocationEvidence | RollbackEvidence] = field(default_factory=list)

    def held(self, origin: str) -> WitnessRecord | None:
        return self.records.get(origin)

    def load(self, records: Iterable[WitnessRecord]) -> None:
        for r in records:
            self.records[r.origin] = r

    def _remember(self, ev: EquivocationEvidence | RollbackEvidence) -> None:
        if ev not in self.evidence:
            self.evidence.append(ev)
            del self.evidence[:-256]  # bounded: the node layer persists and gossips it

    def add_checkpoint(self, body: bytes, verifier_for: dict[str, Verifier], *,
                       cosigner: Cosigner, now: int, from_origin: bool = False) -> AddResult:
        """Judge one add-checkpoint request body; never raises on bad input."""
        try:
            old, proof, note = parse_add_checkpoint(body)
        except MalformedInput as exc:
            return AddResult(400, f"{exc}\n")
        try:
            origin = Checkpoint.parse(signature_lines(note)[0]).origin
        except MalformedInput as exc:
            return AddResult(400, f"the checkpoint is malformed: {exc}\n")
        verifier = verifier_for.get(origin)
        if verifier is None:
            return AddResult(404, f"unknown log origin {origin!r}; this witness does not "
                                  "witness it\n")
        try:
            text, _ = open_note(note, [verifier])
            cp = Checkpoint.parse(text)
        except (VerificationError, MalformedInput) as exc:
            return AddResult(403, f"checkpoint not signed by the log's key: {exc}\n")
        if cp.origin != verifier.name:
            return AddResult(403, "checkpoint origin is not the signer's name\n")
        if old > cp.size:
            return AddResult(400, f"old size {old} is larger than the checkpoint size {cp.size}\n")
        held = self.records.get(origin)
        held_size = held.size if held else 0
        if old != held_size:
            ev: EquivocationEvidence | RollbackEvidence | None = None
            if held is not None and cp.size == held.size and cp.root_hash != held.root_hash:
                ev = EquivocationEvidence.of(origin, cp.size, held.note, note)
            elif held is not None and cp.size < held.size and from_origin:
                ev = RollbackEvidence(origin, "smaller", held.note, note, self.name)
            if ev is not None:
                self._remember(ev)
            return AddResult(409, f"{held_size}\n", SIZE_CONTENT_TYPE, evidence=ev)
        if held is not None and cp.size == held.size:
            if cp.root_hash != held.root_hash:
                ev = EquivocationEvidence.of(origin, cp.size, held.note, note)
                self._remember(ev)
                return AddResult(409, f"{held_size}\n", SIZE_CONTENT_TYPE, evidence=ev)
            if proof:
                return AddResult(422, "consistency proof between equal sizes must be empty\n")
            return AddResult(200, cosigner.cosign(text, now))
        try:
            if held is None:
                if proof:
                    raise BadProof("consistency proof from size 0 must be empty")
            else:
                verify_consistency(held.size, cp.size, proof, held.root_hash, cp.root_hash)
        except BadProof as exc:
            ev_r = None
            if held is not None and from_origin:
                ev_r = RollbackEvidence(origin, "inconsistent", held.note, note, self.name)
                self._remember(ev_r)
            return AddResult(422, f"consistency proof does not verify: {exc}\n", evidence=ev_r)
        record = WitnessRecord(origin, cp.size, cp.root_hash, note, now)
        self.records[origin] = record
        return AddResult(200, cosigner.cosign(text, now), record=record)

    def observe(self, note: str, verifier: Verifier, proof: Sequence[bytes] | None,
                now: int) -> WitnessRecord | None:
        """A checkpoint learnt by gossip (any relay): advance the record when it is a proven
        extension (or the first seen); return the new record to persist, else None. Raises
        BadProof when no proof from the held size is given or it fails, so the caller can
        ask the origin for one; equivocation is remembered as evidence and raised."""
        cp = Checkpoint.open(note, verifier)
        held = self.records.get(cp.origin)
        if held is not None:
            if cp.size < held.size:
                return None
            if cp.size == held.size:
                if cp.root_hash != held.root_hash:
                    ev = EquivocationEvidence.of(cp.origin, cp.size, held.note, note)
                    self._remember(ev)
                    raise CheckpointEquivocation(
                        f"{cp.origin} signed two roots for size {cp.size}", ev)
                return None
            if proof is None:
                raise BadProof(f"no consistency proof from the witnessed size {held.size}")
            verify_consistency(held.size, cp.size, proof, held.root_hash, cp.root_hash)
        record = WitnessRecord(cp.origin, cp.size, cp.root_hash, note, now)
        self.records[cp.origin] = record
        return record
