"""Offline verification of an Outpost trail with nothing but public keys: one entry against a
signed checkpoint, and a whole log against what a verifier remembered from earlier runs.

Owns: :func:`verify_entry_proof` (vkey + signed checkpoint + entry bytes + inclusion proof
JSON), :class:`Remembered` (the last checkpoint a verifier checked for an origin, like the Go
checksum database client's cache) and :func:`judge`, which says whether a newly verified
checkpoint extends the remembered one, or shows a rollback or a fork. Audit-entry filters
(:class:`EntryFilter`) used by ``tail`` and ``export`` live here too: pure functions of an entry.

Must never: read files, fetch URLs or look at the clock; the CLI does the I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from federation.canonical import b64decode, b64encode
from federation.errors import BadProof, MalformedInput
from federation.merkle import InclusionProof, leaf_hash
from federation.note import Checkpoint, Verifier

__all__ = ["EntryFilter", "Remembered", "judge", "parse_time", "verify_entry_proof"]


def verify_entry_proof(vkey: str, note: str, entry: bytes, proof_json: bytes | str) -> Checkpoint:
    """Check that ``entry`` is in the log whose signed checkpoint is ``note``.

    Raises a FederationError subclass whose message is the reason (bad key, bad signature,
    proof for another tree size, entry not the proven leaf, proof does not lead to the root).
    """
    verifier = Verifier.from_vkey(vkey)
    checkpoint = Checkpoint.open(note, verifier)
    proof = InclusionProof.parse(proof_json)
    if proof.tree_size != checkpoint.size:
        raise BadProof(f"the proof is for tree size {proof.tree_size} but the checkpoint is for "
                       f"{checkpoint.size}; fetch both at the same size (`outpost audit proof "
                       f"--index {proof.leaf_index} --size {checkpoint.size}`)")
    if leaf_hash(entry) != proof.leaf_hash:
        raise BadProof(f"the entry does not hash to the proof's leaf {proof.leaf_index}: it was "
                       "changed, or it is another entry (check the file is the exact bytes "
                       "logged, without a trailing newline)")
    proof.verify(checkpoint.root_hash)
    return checkpoint


@dataclass(frozen=True)
class Remembered:
    """The last checkpoint a verifier checked for one origin."""

    origin: str
    size: int
    root_hash: bytes
    note: str

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "root": b64encode(self.root_hash), "note": self.note}

    @classmethod
    def from_json(cls, origin: str, obj: Mapping[str, Any]) -> Remembered:
        size, root, note = obj.get("size"), obj.get("root"), obj.get("note")
        if not isinstance(size, int) or not isinstance(root, str) or not isinstance(note, str):
            raise MalformedInput(f"remembered checkpoint of {origin} is damaged; delete its "
                                 "entry from the state file to start over")
        return cls(origin, size, b64decode(root, length=32, what="remembered root"), note)


def judge(previous: Remembered | None, checkpoint: Checkpoint,
          root_at_previous: bytes | None) -> str | None:
    """None when ``checkpoint`` extends ``previous`` (or nothing was remembered); otherwise
    the reason it does not: a rollback (smaller) or a fork (other root at the old size)."""
    if previous is None:
        return None
    if checkpoint.size < previous.size:
        return (f"ROLLBACK: {checkpoint.origin} now serves size {checkpoint.size}, but size "
                f"{previous.size} was verified before; the log was cut back")
    if root_at_previous != previous.root_hash:
        return (f"FORK: {checkpoint.origin} at size {previous.size} no longer has the root "
                "verified before; the log was rewritten")
    return None


def parse_time(text: str, what: str) -> datetime:
    """RFC 3339 (``2026-01-02T03:04:05Z``) or a date (``2026-01-02``, midnight UTC)."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise MalformedInput(f"{what} {text!r} is not a date or RFC 3339 time, e.g. "
                             "2026-01-02 or 2026-01-02T03:04:05Z") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class EntryFilter:
    """Which entries ``audit tail`` and ``audit export`` keep; every given field must match.
    ``since`` is inclusive, ``until`` exclusive; text fields match exactly (``model`` as
    ``name`` or ``name:version``)."""

    since: datetime | None = None
    until: datetime | None = None
    kind: str | None = None
    model: str | None = None
    caller: str | None = None
    outcome: str | None = None
    app: str | None = None  # the app an entry names (``detail.app``, both ends of a forward)

    @property
    def empty(self) -> bool:
        return self == EntryFilter()

    def matches(self, entry: Mapping[str, Any]) -> bool:
        for name in ("kind", "caller", "outcome"):
            want = getattr(self, name)
            if want is not None and entry.get(name) != want:
                return False
        if self.app is not None:
            detail = entry.get("detail")
            if not isinstance(detail, Mapping) or detail.get("app") != self.app:
                return False
        if self.model is not None:
            name, _, version = self.model.partition(":")
            if entry.get("model") != name or (version and entry.get("version") != version):
                return False
        if self.since is None and self.until is None:
            return True
        try:
            when = datetime.fromisoformat(str(entry.get("time", "")))
        except ValueError:
            return False
        if self.since is not None and when < self.since:
            return False
        return self.until is None or when < self.until
