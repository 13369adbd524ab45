"""The audit log's entries, its verification against signed checkpoints, and witnessing.

Owns: the audit entry model (metadata only — never payloads) and its canonical bytes,
the checkpoint origin names, :func:`verify_log` (recompute the tree, check every signed
checkpoint, name the first bad entry), and the :class:`Witness` state machine peers use
to hold each other's checkpoints and catch equivocation.

Must never: do I/O, read the clock (``time`` is passed in), or put request or response
data in an entry — only its SHA-256.

What the daemon stores, and why each edit is caught
---------------------------------------------------
Four tables, written in one transaction per group commit::

    audit_entry      (seq INTEGER PRIMARY KEY, entry BLOB NOT NULL)  -- canonical JSON; seq = leaf index
    audit_node       (id INTEGER PRIMARY KEY, hash BLOB NOT NULL)    -- id = merkle.node_key(level, index)
    audit_head       (id INTEGER PRIMARY KEY CHECK (id = 0), size INTEGER NOT NULL, note TEXT NOT NULL)
    audit_checkpoint (size INTEGER PRIMARY KEY, note TEXT NOT NULL)  -- retained signed checkpoints

``audit_head`` is the newest checkpoint, replaced by every commit; ``audit_checkpoint``
keeps the ones gossiped to witnesses (rate-limited, e.g. one per 10 s) and the one at
``node.stop`` — their spacing bounds the window :func:`verify_log` can fall back to.

``audit_node`` holds every perfect-subtree hash including the leaves (level 0), i.e.
exactly what :meth:`merkle.CompactRange.append` returns; it makes proofs O(log n)
lookups. The signed checkpoints are the *only* trust anchor: everything else is a hint
that is believed only once it hashes up to a signed root.

One group commit: ``cr2 = cr.copy()``; for each entry ``nodes += cr2.append(leaf_hash(
entry))``; in one transaction insert the entries, insert ``(n.key, n.hash)`` for the
nodes, and store ``Checkpoint(origin, cr2.size, cr2.root()).sign([signer])`` as the
head checkpoint; after COMMIT answer the callers and keep ``cr = cr2``. On start,
``CompactRange.from_store(size, get_node)`` restores the frontier (<= 20 lookups at a
million entries). A crash between commits loses only unacknowledged entries and never
leaves entries without their nodes or head, so the log always verifies.

* **Detection.** :func:`verify_log` recomputes leaf hashes from the entries as stored,
  folds them with a compact range and compares the root at every checkpoint size. Any
  edit, deletion, insertion or reordering before a checkpoint changes the root there
  (the Merkle root commits to every leaf *and its position*); a truncation leaves the
  checkpoint's size unreachable. Changes after the newest checkpoint are not covered
  by any signature, which is why every group commit signs a new head and peers
  witness the heads.
* **Localisation.** The first failing checkpoint bounds the first bad index to the
  window since the last good one. To name the exact entry, ``verify_log`` takes the
  stored node table as untrusted hints and walks down from the signed root: a stored
  node is believed only if its children (or, at the top, the split of the tree size)
  hash to an already-believed node, and the walk follows the leftmost believed node
  whose recomputed hash differs. If only entries were touched (the usual tamper: edit
  the row a human reads) the walk ends at the exact leaf; if the attacker also
  rewrote the node table, the walk stops where the stored hashes stop adding up and
  the answer is a lower bound (``exact=False``) — still a window no larger than the
  checkpoint spacing. A separate per-entry hash chain would add nothing: an attacker
  who can rewrite entries can rewrite a chain; only the signature binds.
"""

from __future__ import annotations

import contextlib
import enum
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from federation.canonical import canonical_json, parse_json_object, rfc3339
from federation.errors import (
    BadProof,
    BadSignature,
    CheckpointEquivocation,
    MalformedInput,
    VerificationError,
)
from federation.merkle import (
    CompactRange,
    ConsistencyProof,
    leaf_hash,
    node_hash,
    range_nodes,
    verify_consistency,
)
from federation.note import Checkpoint, Verifier

__all__ = [
    "KINDS",
    "AuditEntry",
    "EquivocationEvidence",
    "HeldCheckpoint",
    "StoredNode",
    "VerifyReport",
    "Witness",
    "WitnessOutcome",
    "log_origin",
    "rfc3339",
    "verify_log",
]

# ONLY APPEND: entry kinds are part of the log format that external tools read.
KINDS = frozenset(
    {
        "node.start",
        "node.stop",
        "model.add",
        "model.remove",
        "model.pull",
        "infer",
        "forward",
        "enroll",
        "join",
        "policy.apply",
        "revocation.apply",
        "equivocation",
        "token.add",
        "token.revoke",
        "audit.replicate",
        "peer.refused",
        "rollback",
        "app.refused",  # credentials refused on the app endpoint (outside an infer path)
    }
)
# An entry is metadata: these bounds keep a buggy caller from smuggling payloads in.
MAX_TEXT = 256
MAX_REASON = 1024
MAX_DETAIL_KEYS = 16
MAX_DETAIL_BYTES = 2048

_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_TEXT_FIELDS = ("model", "version", "caller", "data_class", "decision", "outcome", "peer")
_OPTIONAL_FIELDS = (*_TEXT_FIELDS, "policy_version", "input_sha256", "reason")


def log_origin(node_id: str, federation: str | None = None) -> str:
    """Checkpoint origin and signing-key name: ``outpost/<federation>/<node-id>``.

    Before enrollment there is no federation yet, so the origin is
    ``outpost/local/<node-id>`` (identity refuses a federation named ``local``).
    """
    return f"outpost/{federation or 'local'}/{node_id}"


@dataclass(frozen=True)
class AuditEntry:
    """One audit log entry. ``to_bytes()`` is what is hashed and stored.

    Absent optional fields are omitted from the JSON rather than written as null, so
    adding a field later does not change the bytes of old entries.
    """

    time: str
    kind: str
    model: str | None = None
    version: str | None = None
    caller: str | None = None
    data_class: str | None = None
    decision: str | None = None
    outcome: str | None = None
    policy_version: int | None = None
    peer: str | None = None
    input_sha256: str | None = None
    reason: str | None = None
    detail: Mapping[str, str | int | bool | None] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        # Runs once per inference: plain loops, no helper call per field.
        if not isinstance(self.time, str) or not _TIME_RE.fullmatch(self.time):
            raise MalformedInput(
                f"audit time {self.time!r} is not RFC 3339 UTC; format it with rfc3339(now)"
            )
        _check_date(self.time[:19])
        if self.kind not in KINDS:
            raise MalformedInput(
                f"audit kind {self.kind!r} is unknown; use one of {sorted(KINDS)} "
                "(or append a new kind to audit.KINDS)"
            )
        for name, value in zip(_TEXT_FIELDS, (self.model, self.version, self.caller,
                                              self.data_class, self.decision, self.outcome,
                                              self.peer), strict=True):
            if value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT):
                _check_text(name, value, MAX_TEXT)  # raises with the message
        _check_text("reason", self.reason, MAX_REASON)
        pv = self.policy_version
        if pv is not None and (isinstance(pv, bool) or not isinstance(pv, int) or pv < 0):
            raise MalformedInput(f"policy_version must be an integer >= 0, got {pv!r}")
        if self.input_sha256 is not None and not _SHA256_RE.fullmatch(self.input_sha256):
            raise MalformedInput("input_sha256 must be 64 lowercase hex digits (sha256_hex(data))")
        if self.detail is not None:
            _check_detail(self.detail)

    def to_json_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"time": self.time, "kind": self.kind}
        for name, value in zip(_OPTIONAL_FIELDS, (
            self.model, self.version, self.caller, self.data_class, self.decision,
            self.outcome, self.peer, self.policy_version, self.input_sha256, self.reason,
        ), strict=True):
            if value is not None:
                obj[name] = value
        if self.detail is not None:
            obj["detail"] = dict(self.detail)
        return obj

    def to_bytes(self) -> bytes:
        """Canonical JSON (RFC 8785): the leaf data of the Merkle tree."""
        obj = self.to_json_obj()
        pv = self.policy_version
        if (pv is None or pv <= _SAFE_INT) and (self.detail is None or _plain_detail(self.detail)):
            # The fields are validated str / int / dict-of-scalars with ASCII keys: the fast
            # path canonical_json would take after checking that again (it runs per request).
            with contextlib.suppress(orjson.JSONEncodeError):  # lone surrogates: rfc8785 judges
                return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
        return canonical_json(obj)

    def leaf_hash(self) -> bytes:
        return leaf_hash(self.to_bytes())

    @classmethod
    def parse(cls, data: bytes) -> AuditEntry:
        """Parse stored entry bytes; they must be exactly the canonical encoding."""
        obj = parse_json_object(data, "audit entry")
        known = {
            "time",
            "kind",
            *_TEXT_FIELDS,
            "policy_version",
            "input_sha256",
            "reason",
            "detail",
        }
        unknown = set(obj) - known
        if unknown:
            raise MalformedInput(f"audit entry has unknown fields {sorted(unknown)}")
        if "time" not in obj or "kind" not in obj:
            raise MalformedInput("audit entry needs 'time' and 'kind'")
        if "detail" in obj and not isinstance(obj["detail"], dict):
            raise MalformedInput("audit entry 'detail' must be an object")
        entry = cls(**obj)
        if entry.to_bytes() != data:
            raise MalformedInput(
                "audit entry is not in canonical form; entries are stored as to_bytes()"
            )
        return entry


def _check_text(name: str, value: object, limit: int) -> None:
    if value is None:
        return
    if not isinstance(value, str) or len(value) > limit:
        raise MalformedInput(f"audit field {name!r} must be a string of at most {limit} characters")


_SAFE_INT = 2**53 - 1  # I-JSON safe integers: what RFC 8785 (and rfc8785) accepts
_valid_dates: set[str] = set()


def _check_date(day_and_time: str) -> None:
    """``YYYY-MM-DDTHH:MM:SS`` is a real date and time (remembered: entries share seconds)."""
    if day_and_time in _valid_dates:
        return
    try:
        datetime.fromisoformat(day_and_time)
    except ValueError as exc:
        raise MalformedInput(f"audit time {day_and_time!r} is not a real date/time") from exc
    if len(_valid_dates) > 4096:
        _valid_dates.clear()
    _valid_dates.add(day_and_time)


def _plain_detail(detail: Mapping[str, object]) -> bool:
    return all(k.isascii() and (type(v) is not int or -_SAFE_INT <= v <= _SAFE_INT)
               for k, v in detail.items())


def _check_detail(detail: Mapping[str, object]) -> None:
    if not isinstance(detail, Mapping) or len(detail) > MAX_DETAIL_KEYS:
        raise MalformedInput(f"audit detail must be a dict with at most {MAX_DETAIL_KEYS} keys")
    bound = 2
    for key, value in detail.items():
        if not isinstance(key, str) or not (value is None or isinstance(value, str | int)):
            raise MalformedInput("audit detail maps strings to str, int, bool or None only")
        # Worst case per character is a 6-byte escape; an int beyond ±2**53 forces the exact
        # encoding (which refuses it). Exact encoding only when the bound may be exceeded.
        if isinstance(value, str):
            size = len(value)
        elif isinstance(value, int) and not -_SAFE_INT <= value <= _SAFE_INT:
            size = MAX_DETAIL_BYTES
        else:
            size = 24
        bound += 6 * (len(key) + size) + 8
    if bound > MAX_DETAIL_BYTES and len(canonical_json(dict(detail))) > MAX_DETAIL_BYTES:
        raise MalformedInput(
            f"audit detail is larger than {MAX_DETAIL_BYTES} bytes; log hashes, not payloads"
        )


# --- verifying a stored log ---------------------------------------------------------

StoredNode = Callable[[int, int], "bytes | None"]
"""Untrusted lookup of a stored node hash ``(level, index)``; None when absent."""


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify_log` found.

    ``first_bad_index`` is the first entry that differs from what the log signed (an
    edit, the entry after a deletion, an inserted or moved entry, or the first missing
    one); when ``exact`` is False it is a lower bound (the entry is in
    ``[first_bad_index, bad_checkpoint_size)``).
    """

    entries: int
    checkpoints: int
    verified_size: int
    first_bad_index: int | None = None
    exact: bool = False
    bad_checkpoint_size: int | None = None
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def unverified_tail(self) -> int:
        """Entries after the newest verified checkpoint: not yet covered by a signature."""
        return max(0, self.entries - self.verified_size)

    def raise_for_problems(self) -> None:
        """Raise BadProof (tampered entries) or BadSignature (bad checkpoints) if not ok."""
        if self.first_bad_index is not None:
            raise BadProof(self.problems[0])
        if self.problems:
            raise BadSignature(self.problems[0])


def verify_log(
    entries: Iterable[bytes],
    checkpoints: Iterable[tuple[int, str]],
    verifier: Verifier | Sequence[Verifier],
    *,
    stored: StoredNode | None = None,
) -> VerifyReport:
    """Recompute the tree from ``entries`` and check it against every signed checkpoint.

    ``checkpoints`` are ``(size, signed note)`` rows as stored; ``verifier`` is the log's
    key (its name is the origin) — or several keys when the log's origin changed over its
    life (a node's log is ``outpost/local/<id>`` until it is enrolled, then
    ``outpost/<federation>/<id>``, same key): each checkpoint is checked with the key named
    by its origin line. ``stored`` optionally looks up the daemon's stored
    node hashes (``audit_node``), used only to pinpoint the first bad entry. Tampering is
    reported, not raised; call :meth:`VerifyReport.raise_for_problems` to raise.
    """
    problems: list[str] = []
    signed: dict[int, Checkpoint] = {}
    by_name = {v.name: v for v in ([verifier] if isinstance(verifier, Verifier) else verifier)}
    first = next(iter(by_name.values()))
    for row_size, note in checkpoints:
        origin = note.split("\n", 1)[0]
        try:
            cp = Checkpoint.open(note, by_name.get(origin, first))
        except (VerificationError, MalformedInput) as exc:
            problems.append(f"checkpoint stored at size {row_size} does not verify: {exc}")
            continue
        if cp.size != row_size:
            problems.append(f"checkpoint stored at size {row_size} is for size {cp.size}")
            continue
        held = signed.setdefault(cp.size, cp)
        if held.root_hash != cp.root_hash:
            problems.append(
                f"two signed checkpoints for size {cp.size} with different roots: the log's "
                "key signed a fork (equivocation); treat the node's key as compromised"
            )

    sizes = sorted(signed)
    leaves = bytearray()  # recomputed leaf hashes, 32 bytes each, for localisation
    cr = CompactRange()
    verified = 0
    pending = iter(sizes)
    next_size = next(pending, None)
    while next_size == 0:  # a size-0 checkpoint has nothing to compare but its root
        verified = 0
        next_size = next(pending, None)
    failure: tuple[int, bool, int] | None = None
    for entry in entries:
        leaf = leaf_hash(entry)
        leaves += leaf
        cr.append(leaf)
        if next_size is not None and cr.size == next_size:
            if cr.root() != signed[next_size].root_hash:
                failure = _localize(signed[next_size], verified, leaves, stored)
                break
            verified = next_size
            next_size = next(pending, None)
    n_read = len(leaves) // 32
    if failure is None and next_size is not None:  # log ends before a signed size
        failure = _localize(signed[next_size], verified, leaves, stored)
    if 0 in signed and signed[0].root_hash != CompactRange().root():
        problems.append("checkpoint for size 0 has a non-empty root; it was forged or damaged")

    first_bad, exact, bad_size = None, False, None
    if failure is not None:
        first_bad, exact, bad_size = failure
        where = f"entry {first_bad}" if exact else f"an entry in [{first_bad}, {bad_size})"
        problems.insert(
            0,
            f"audit log does not match its signed checkpoint of size {bad_size}: {where} was "
            "edited, deleted, inserted or moved (or the log was truncated); restore the "
            "entries from an audit collector's replica",
        )
    elif stored is not None:
        for index in range(verified, n_read):  # unsigned tail: check the store agrees
            if _get(stored, 0, index) != bytes(leaves[32 * index : 32 * index + 32]):
                problems.append(
                    f"entry {index} (after the newest checkpoint) does not match its stored "
                    "leaf hash; the store is damaged or was edited"
                )
                first_bad, exact = index, True
                break
    return VerifyReport(
        entries=n_read,
        checkpoints=len(signed),
        verified_size=verified,
        first_bad_index=first_bad,
        exact=exact,
        bad_checkpoint_size=bad_size,
        problems=tuple(problems),
    )


def _get(stored: StoredNode, level: int, index: int) -> bytes | None:
    try:
        return stored(level, index)
    except (KeyError, IndexError):
        return None


def _localize(
    cp: Checkpoint, verified: int, leaves: bytearray, stored: StoredNode | None
) -> tuple[int, bool, int]:
    """(first bad index, exact?, checkpoint size) for a checkpoint that did not match.

    ``[0, verified)`` is known good. Walk down from the signed root through stored
    nodes that provably hash up to it (see the module docstring).
    """
    n_rec = len(leaves) // 32
    size = cp.size
    fallback = (min(verified, n_rec), size - verified == 1 or verified == n_rec, size)
    if stored is None:
        return fallback

    def recomputed(level: int, index: int) -> bytes | None:
        lo, hi = index << level, (index + 1) << level
        if hi > n_rec:
            return None
        cr = CompactRange()
        cr.extend(bytes(leaves[32 * i : 32 * i + 32]) for i in range(lo, hi))
        return cr.root()

    top = range_nodes(0, size)
    hints = [_get(stored, level, index) for level, index in top]
    if any(h is None for h in hints):
        return fallback
    believed = [h for h in hints if h is not None]
    acc = believed[-1]
    for h in reversed(believed[:-1]):
        acc = node_hash(h, acc)
    if acc != cp.root_hash:
        return fallback  # the stored top nodes were rewritten too
    for (level, index), h in zip(top, believed, strict=True):
        if (index + 1) << level <= verified or recomputed(level, index) == h:
            continue
        while level > 0:
            left = _get(stored, level - 1, 2 * index)
            right = _get(stored, level - 1, 2 * index + 1)
            if left is None or right is None or node_hash(left, right) != h:
                return (max(verified, index << level), False, size)
            if recomputed(level - 1, 2 * index) != left:
                level, index, h = level - 1, 2 * index, left
            else:
                level, index, h = level - 1, 2 * index + 1, right
        return (index, True, size)
    return fallback


# --- witnessing ---------------------------------------------------------------------


@dataclass(frozen=True)
class HeldCheckpoint:
    """A checkpoint a witness holds, with the signed note that proves it."""

    checkpoint: Checkpoint
    note: str


@dataclass(frozen=True)
class EquivocationEvidence:
    """Two validly signed checkpoints of one origin and size with different roots.

    Self-proving: :meth:`verify` needs only the origin's verifier key. The notes are
    kept in sorted order so that the same fork gives the same evidence bytes anywhere.
    """

    origin: str
    size: int
    notes: tuple[str, str]

    @classmethod
    def of(cls, origin: str, size: int, note_a: str, note_b: str) -> EquivocationEvidence:
        first, second = sorted((note_a, note_b))
        return cls(origin, size, (first, second))

    def verify(self, verifier: Verifier) -> None:
        """Raise unless both notes verify under ``verifier`` and really conflict."""
        a, b = (Checkpoint.open(n, verifier) for n in self.notes)
        if (a.origin, a.size) != (self.origin, self.size) or (b.origin, b.size) != (
            self.origin,
            self.size,
        ):
            raise MalformedInput("equivocation evidence notes are not for its origin and size")
        if a.root_hash == b.root_hash:
            raise MalformedInput("equivocation evidence notes have the same root; no fork shown")

    def to_json(self) -> bytes:
        return canonical_json({"origin": self.origin, "size": self.size, "notes": list(self.notes)})

    @classmethod
    def parse(cls, data: bytes | str) -> EquivocationEvidence:
        obj = parse_json_object(data, "equivocation evidence")
        notes = obj.get("notes")
        size = obj.get("size")
        if (
            set(obj) != {"origin", "size", "notes"}
            or not isinstance(obj.get("origin"), str)
            or not isinstance(size, int)
            or isinstance(size, bool)
            or not isinstance(notes, list)
            or len(notes) != 2
            or not all(isinstance(n, str) for n in notes)
        ):
            raise MalformedInput(
                'equivocation evidence must be {"origin": str, "size": int, "notes": [str, str]}'
            )
        return cls.of(obj["origin"], size, notes[0], notes[1])


class WitnessOutcome(enum.Enum):
    ACCEPTED = "accepted"  # first checkpoint of this origin, or a proven extension
    UNCHANGED = "unchanged"  # same size and root as held
    STALE = "stale"  # smaller than held; kept the held one


class Witness:
    """Holds the newest checkpoint of every origin; accepts only proven extensions.

    The daemon's witness state is :class:`federation.witness.WitnessState` (persisted, shared
    by gossip and the tlog-witness endpoint); this in-memory class remains for simulations
    and sync-bundle checks that need only the transition table below.

    Transitions for a validly signed checkpoint C of origin O, held H:

    ====================  ======================================  ============
    condition             action                                  result
    ====================  ======================================  ============
    no H                  hold C (trust on first use)             ACCEPTED
    C.size < H.size       keep H                                  STALE
    same size, same root  keep H                                  UNCHANGED
    same size, other root keep H                                  raise CheckpointEquivocation
    C.size > H.size       verify consistency proof H -> C         ACCEPTED / raise BadProof
    ====================  ======================================  ============

    A failing proof is BadProof, not equivocation: the proof came from whoever relayed
    it, so it proves nothing about the log; only two signed heads do.
    """

    def __init__(self, held: Iterable[HeldCheckpoint] = ()) -> None:
        self._held: dict[str, HeldCheckpoint] = {h.checkpoint.origin: h for h in held}

    def held(self, origin: str) -> HeldCheckpoint | None:
        return self._held.get(origin)

    def all_held(self) -> list[HeldCheckpoint]:
        """Everything held, to persist (sorted by origin)."""
        return [self._held[o] for o in sorted(self._held)]

    def update(
        self,
        note: str,
        verifier: Verifier,
        proof: ConsistencyProof | Sequence[bytes] | None = None,
    ) -> WitnessOutcome:
        """Consider a signed checkpoint from ``verifier``'s log; see the class table."""
        cp = Checkpoint.open(note, verifier)
        held = self._held.get(cp.origin)
        if held is None:
            self._held[cp.origin] = HeldCheckpoint(cp, note)
            return WitnessOutcome.ACCEPTED
        old = held.checkpoint
        if cp.size < old.size:
            return WitnessOutcome.STALE
        if cp.size == old.size:
            if cp.root_hash == old.root_hash:
                return WitnessOutcome.UNCHANGED
            evidence = EquivocationEvidence.of(cp.origin, cp.size, held.note, note)
            raise CheckpointEquivocation(
                f"{cp.origin} signed two different roots for size {cp.size}; gossip the "
                "evidence and tell the admin to revoke the node",
                evidence,
            )
        if proof is None:
            raise BadProof(
                f"need a consistency proof from size {old.size} to {cp.size} for {cp.origin}"
            )
        if isinstance(proof, ConsistencyProof):
            if (proof.old_size, proof.new_size) != (old.size, cp.size):
                raise BadProof(
                    f"consistency proof is for {proof.old_size}->{proof.new_size}, "
                    f"need {old.size}->{cp.size}; ask the log for the right sizes"
                )
            hashes: Sequence[bytes] = proof.hashes
        else:
            hashes = proof
        verify_consistency(old.size, cp.size, hashes, old.root_hash, cp.root_hash)
        self._held[cp.origin] = HeldCheckpoint(cp, note)
        return WitnessOutcome.ACCEPTED
