"""The air-gapped sync bundle: one file carried on removable media between sites.

Owns: the sync bundle file format (a contract: ``outpost bundle export`` writes it, ``outpost
bundle import`` reads it, on nodes of different releases), building it, verifying all of it
against the importer's federation authority, and planning what an import adds
(:func:`plan_merge`), so the node layer only copies bytes and applies the plan.

Must never: open files or sockets, read the clock (``created`` and ``now`` are passed in), or
accept part of a bundle. Verification is all or nothing: :func:`read_bundle` returns a
:class:`VerifiedBundle` only when every signature, certificate, proof and hash in the file
holds; otherwise it raises and nothing in the file may be used.

File format ``outpost.sync-bundle/1``
-------------------------------------
A small framed binary container::

    bundle    = magic head_len manifest signature blob*
    magic     = "outpost.sync-bundle/1\\n"      22 bytes, ASCII
    head_len  = uint32, big-endian            length of manifest, 2 .. MAX_MANIFEST_BYTES
    manifest  = RFC 8785 canonical JSON       (below); refused unless canonical
    signature = 64 bytes                      Ed25519 by the exporting node's key over
                                              magic || head_len || manifest
    blob      = raw model bytes               one per manifest "models" item, in that order,
                                              exactly "size" bytes; the file ends right
                                              after the last blob (trailing bytes refused)

The manifest (``?`` marks a key that is absent, never null, when the part is not carried)::

    {
      "format": "outpost.sync-bundle/1",
      "federation": "<federation name>",             # the authority certificate's CN
      "node_id": "<exporting node id>",
      "created": "<RFC 3339 UTC, e.g. 2025-01-31T12:00:00.000000Z>",
      "since": {"<log origin>": <size>, ...},        # what the export was asked to skip
      "node_certificate": "<exporter's certificate, PEM>",
      "certificates": ["<PEM>", ...],                # nodes (other than the exporter) whose
                                                     # logs are carried; one per node
      "policy"?: "<base64 of the policy bundle file>",   # outpost.policy-bundle/1, as signed
      "revocations"?: "<revocation list, PEM CRL>",
      "logs": [                                      # strictly increasing by origin
        {
          "origin": "outpost/<federation>/<node-id>",
          "checkpoint": "<C2SP signed note by that node's key>",
          "start": <first entry index>,
          "frontier": ["<base64 32-byte hash>", ...],     # compact range of [0, start)
          "entries": ["<base64 entry bytes>", ...],       # leaves [start, checkpoint size)
          "consistency"?: {"old_size": m, "new_size": n, "hashes": [...]}   # DESIGN §3
        }, ...
      ],
      "models": [{"name": ..., "version": ..., "sha256": "<hex>", "size": <bytes>}, ...]
    }

Choices, and why
----------------
* **Framed container, not one JSON document.** Models are hundreds of megabytes or more:
  base64 would add a third and force the whole file through a JSON parser in memory. Here
  the signed manifest (metadata, certificates, documents, log entries) comes first and the
  blobs follow raw, each bound to the signature by its SHA-256 and size in the manifest.
  An importer reads :data:`HEAD_PREFIX_BYTES`, asks :func:`head_size`, verifies the head
  with :func:`read_head` and then streams each blob to disk while hashing it
  (:meth:`ModelRef.verify`) — no model is ever held in memory, and nothing is used before
  the signature and certificates are checked. :func:`read_bundle` does the same on bytes
  in memory, for bundles whose models fit in RAM.
* **What the signature covers.** Everything except itself: the magic (so the signed bytes
  cannot be mistaken for a checkpoint note, an enrollment request or a datagram, which the
  node key also signs), the length, the manifest, and — through their hashes — the blobs.
  A byte changed anywhere makes the bundle refused whole.
* **Whose authority.** The importer trusts only *its* authority certificate: the exporter's
  certificate must chain to it and not be revoked, or the file is refused before anything
  in it is looked at. Policy and revocation list are authority-signed documents and are
  verified as such; the exporter's signature only says who packed them.
* **Log sections prove their position with a frontier, not per-entry proofs.** A section
  holds the checkpoint note, entries ``[start, size)`` and the *frontier* of ``[0, start)``:
  the hashes of the perfect subtrees that split the prefix (``merkle.CompactRange`` at
  ``start``, at most 53 hashes). The importer folds ``CompactRange(start,
  frontier).extend(leaf hashes)`` and requires the result to be the signed root at the
  signed size, with ``start + len(entries)`` equal to that size. Because the shape of an
  RFC 9162 tree is fixed by its size, every carried entry then sits at a fixed leaf
  position on a fixed path to the root, so a wrong, missing, extra or reordered entry
  would need a SHA-256 collision: the entries are proven to be exactly the log's leaves
  ``[start, size)`` with no trust in the exporter or the frontier. (The size equation is
  what pins the positions: the frontier is untrusted, and the signed root alone is a valid
  one-hash "frontier" of ``[0, 2**k)`` that folds to itself with no entries.) It costs
  one hash per entry (not ``log n``), and with ``start = 0`` the
  frontier is empty and the section is the whole log. The frontier also yields the root at
  every size from ``start`` to ``size`` (:meth:`VerifiedLog.root_at`), so an importer that
  holds the log up to any size in that span checks the bundle extends its copy without a
  separate consistency proof; :func:`plan_merge` does exactly that. Only an importer that
  holds *less* than ``start`` (e.g. a witness that kept a checkpoint but no entries) needs
  the optional ``consistency`` proof, from ``old_size < start`` to the checkpoint size
  (:meth:`VerifiedLog.extends`). Such a proof can only be checked against the importer's
  old root, so :func:`read_bundle` checks its shape and :meth:`VerifiedLog.extends` its
  hashes.
* **Entries are opaque bytes** (base64), not parsed as :class:`~federation.audit.AuditEntry`:
  a replica must be byte-exact, and an older node must still carry entry kinds a newer
  release appended.
* **Strictness.** One encoding per content (canonical JSON, sorted unique origins, exact key
  sets), so two bundles with one digest are the same bundle. A carried certificate that no
  log uses is refused, like any unknown part. A log of a revoked node is refused (with the
  whole bundle): its key may be in the wrong hands, so its checkpoints prove nothing; the
  exporter must leave such logs out.

Limits (``MAX_*`` below) bound what a file from removable media can make the importer parse
and hold in memory before and after the signature check; each says why.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from federation.canonical import (
    b64decode,
    b64encode,
    canonical_json,
    parse_json_object,
    rfc3339,
    sha256_hex,
)
from federation.errors import (
    BadCertificate,
    BadProof,
    BadSignature,
    MalformedInput,
)
from federation.identity import (
    NodeIdentity,
    RevocationList,
    load_authority_certificate,
    read_revocation_list,
    validate_node_id,
)
from federation.limits import MAX_MEMBERS
from federation.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    MAX_TREE_SIZE,
    CompactRange,
    ConsistencyProof,
    GetNode,
    consistency_proof,
    leaf_hash,
    verify_consistency,
)
from federation.note import Checkpoint, Verifier
from federation.policy_bundle import PolicyBundle
from federation.policy_bundle import read_bundle as read_policy_bundle

__all__ = [
    "FORMAT",
    "HEAD_PREFIX_BYTES",
    "MAGIC",
    "MAX_CERTIFICATE_BYTES",
    "MAX_ENTRY_BYTES",
    "MAX_LOGS",
    "MAX_MANIFEST_BYTES",
    "MAX_MODELS",
    "MAX_MODEL_BYTES",
    "MODEL_NAME_PATTERN",
    "MODEL_VERSION_PATTERN",
    "LogHead",
    "LogMerge",
    "LogSection",
    "MergePlan",
    "MergeStatus",
    "ModelBlob",
    "ModelRef",
    "VerifiedBundle",
    "VerifiedLog",
    "build_bundle",
    "build_head",
    "head_size",
    "plan_merge",
    "read_bundle",
    "read_head",
]

FORMAT: Final = "outpost.sync-bundle/1"
MAGIC: Final = (FORMAT + "\n").encode("ascii")
_LEN = struct.Struct(">I")
SIGNATURE_BYTES: Final = 64
#: Bytes to read before :func:`head_size` can say how long the signed head is.
HEAD_PREFIX_BYTES: Final = len(MAGIC) + _LEN.size

# --- limits --------------------------------------------------------------------------------

#: Largest manifest. It is parsed before its signature can be checked (the key is in a
#: certificate inside it) and every carried entry is held in memory, so this bounds what a
#: hostile file costs: ~64 MiB of JSON is ~150,000 typical audit entries (~300 bytes, ~400 in
#: base64). A larger backlog goes in several bundles: each section carries its own frontier,
#: so bundle k+1 starting where bundle k ended imports on its own.
MAX_MANIFEST_BYTES: Final = 64 << 20

#: One log per node of the federation, and a federation has at most MAX_MEMBERS nodes.
MAX_LOGS: Final = MAX_MEMBERS

#: An audit entry is metadata: the largest the audit module allows is ~6 KiB (nine 256-char
#: fields, a 1 KiB reason, 2 KiB detail). 64 KiB leaves room for fields appended later
#: while refusing anything that smuggles payloads.
MAX_ENTRY_BYTES: Final = 64 << 10

#: A node certificate is ~1 KiB of PEM; 64 KiB is the cap identity uses for documents.
MAX_CERTIFICATE_BYTES: Final = 64 << 10

#: A node holds a handful of models; the cap bounds the manifest's model list and the blob
#: loop, not the bytes.
MAX_MODELS: Final = 256

#: The format bounds a model only so its size stays exact in JSON (2**53 - 1). The real cap
#: is the importer's ``models.max_model_bytes``, checked against ``ModelRef.size`` from the
#: verified head before a byte of the blob is copied.
MAX_MODEL_BYTES: Final = 2**53 - 1

# Model names and versions: the pattern of models.names (not imported: federation does not
# depend on the models package). Names end up in paths and Cedar ids.
# The model-name rule is ``models.names`` (NAME_PATTERN, VERSION_PATTERN, no ".."); the
# protocol core does not import the runtime package, so it holds the same patterns, and
# tests/node/test_rules.py fails the day the two differ.
MODEL_NAME_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
MODEL_VERSION_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_MODEL_NAME_RE = re.compile(MODEL_NAME_PATTERN)
_MODEL_VERSION_RE = re.compile(MODEL_VERSION_PATTERN)
_SHA256_HEX_RE = re.compile(r"[0-9a-f]{64}")
_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z")

_REQUIRED = frozenset(
    {
        "format",
        "federation",
        "node_id",
        "created",
        "since",
        "node_certificate",
        "certificates",
        "logs",
        "models",
    }
)
_OPTIONAL = frozenset({"policy", "revocations"})
_LOG_REQUIRED = frozenset({"origin", "checkpoint", "start", "frontier", "entries"})
_LOG_OPTIONAL = frozenset({"consistency"})
_MODEL_KEYS = frozenset({"name", "version", "sha256", "size"})


# --- parts -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A model the bundle carries, as the signed manifest lists it (no bytes)."""

    name: str
    version: str
    sha256: str
    size: int

    def verify(self, sha256_hex_of_received: str, received_size: int) -> None:
        """Raise BadSignature unless streamed blob bytes hashed to what the manifest signed.

        For the node layer's streaming import: hash the blob while copying it to a
        temporary file, call this, and keep the file only if every blob passed.
        """
        if received_size != self.size or sha256_hex_of_received != self.sha256:
            raise BadSignature(
                f"model {self.name}:{self.version} does not match the signed manifest "
                f"(sha256 {sha256_hex_of_received[:16]}…, {received_size} bytes; signed "
                f"{self.sha256[:16]}…, {self.size} bytes): the file was altered or cut "
                "short; export the bundle again"
            )


@dataclass(frozen=True, slots=True)
class ModelBlob:
    """A model with its bytes: ``sha256`` is the hex SHA-256 of ``data``."""

    name: str
    version: str
    sha256: str
    data: bytes = field(repr=False)

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.name, self.version, self.sha256, len(self.data))


@dataclass(frozen=True, slots=True)
class LogSection:
    """One log's part of a bundle, as the exporter provides it.

    ``entries`` are the log's leaves ``[start, size)`` where ``size`` is the checkpoint's;
    ``frontier`` is ``CompactRange`` at ``start``'s hashes (empty when ``start`` is 0);
    ``consistency`` optionally proves the checkpoint extends size ``old_size < start``.
    :meth:`from_store` fills frontier and proof from a node store.
    """

    origin: str
    checkpoint_note: str
    start: int
    frontier: tuple[bytes, ...]
    entries: tuple[bytes, ...]
    consistency: ConsistencyProof | None = None

    @classmethod
    def from_store(
        cls,
        origin: str,
        checkpoint_note: str,
        start: int,
        entries: Sequence[bytes],
        get_node: GetNode,
        *,
        consistency_from: int | None = None,
    ) -> LogSection:
        """Build a section from the log's node store (``merkle.GetNode``).

        ``get_node`` must answer for the nodes of ``CompactRange.nodes_for(start)`` and, if
        ``consistency_from`` is given, of ``consistency_plan(consistency_from, size)``.
        """
        size = _unverified_checkpoint(checkpoint_note).size
        frontier = tuple(get_node(lv, ix) for lv, ix in CompactRange.nodes_for(start))
        proof = None
        if consistency_from is not None:
            hashes = consistency_proof(consistency_from, size, get_node)
            proof = ConsistencyProof(consistency_from, size, tuple(hashes))
        return cls(origin, checkpoint_note, start, frontier, tuple(entries), proof)


@dataclass(frozen=True)
class VerifiedLog:
    """A log section whose checkpoint and entries were verified.

    ``entries`` are proven to be the leaves ``[start, checkpoint.size)`` of the log whose
    signed head is ``checkpoint_note`` (signed by ``node_identity``'s key).
    """

    origin: str
    node_identity: NodeIdentity
    checkpoint: Checkpoint
    checkpoint_note: str
    start: int
    frontier: tuple[bytes, ...] = field(repr=False)
    entries: tuple[bytes, ...] = field(repr=False)
    consistency: ConsistencyProof | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return self.checkpoint.size

    def root_at(self, size: int) -> bytes:
        """The log's root at ``size`` (``start <= size <= self.size``), from the proven leaves."""
        if not self.start <= size <= self.size:
            raise ValueError(
                f"the bundle proves roots only for sizes {self.start}..{self.size}, not {size}"
            )
        cr = CompactRange(self.start, self.frontier)
        cr.extend(leaf_hash(e) for e in self.entries[: size - self.start])
        return cr.root()

    def extends(self, old_size: int, old_root: bytes) -> None:
        """Raise BadProof unless this checkpoint extends the tree ``old_size``/``old_root``.

        Sizes from ``start`` up use the carried leaves; smaller ones need the section's
        consistency proof from exactly ``old_size`` (size 0 needs nothing). Use it to
        feed a :class:`~federation.audit.Witness` or to check an importer's replica.
        """
        if old_size > self.size:
            raise BadProof(
                f"{self.origin}: the bundle's checkpoint (size {self.size}) is older than the "
                f"held size {old_size}; it cannot extend it"
            )
        if old_size == 0 or old_size >= self.start:
            got = EMPTY_ROOT if old_size == 0 else self.root_at(old_size)
            if got != old_root:
                raise BadProof(
                    f"{self.origin}: the held tree of size {old_size} is not a prefix of the "
                    f"signed checkpoint of size {self.size}: the copy held here differs from "
                    "the log (or the log forked); compare both with 'outpost audit verify'"
                )
            return
        if self.consistency is None or self.consistency.old_size != old_size:
            raise BadProof(
                f"{self.origin}: the bundle proves nothing about size {old_size} (its entries "
                f"start at {self.start}); export again with --since {old_size} for this log"
            )
        verify_consistency(
            old_size, self.size, self.consistency.hashes, old_root, self.checkpoint.root_hash
        )


@dataclass(frozen=True)
class VerifiedBundle:
    """Everything in a bundle, verified against the importer's authority.

    ``revocations`` is the carried list (verified, whatever its version); ``models`` holds
    the blobs when read with :func:`read_bundle` and is empty after :func:`read_head`;
    ``model_refs`` always lists what the manifest signed. ``digest`` is the hex SHA-256 of
    the signed head: it names this bundle (e.g. in the import's audit entry).
    """

    federation: str
    created: str
    since: Mapping[str, int] = field(hash=False)
    exporter: NodeIdentity
    policy: PolicyBundle | None
    revocations: RevocationList | None
    logs: tuple[VerifiedLog, ...] = field(repr=False)
    model_refs: tuple[ModelRef, ...]
    models: tuple[ModelBlob, ...] = field(repr=False)
    digest: str
    head_size: int

    @property
    def policy_raw(self) -> bytes | None:
        """The policy bundle file exactly as signed (what the node stores and gossips)."""
        return None if self.policy is None else self.policy.raw

    @property
    def revocations_raw(self) -> bytes | None:
        """The CRL PEM exactly as signed."""
        return None if self.revocations is None else self.revocations.pem


# --- building --------------------------------------------------------------------------------


def build_head(
    *,
    federation: str,
    node_id: str,
    node_cert_pem: bytes,
    node_key: Ed25519PrivateKey,
    created: datetime,
    policy: bytes | None = None,
    revocations: bytes | None = None,
    logs: Sequence[LogSection] = (),
    certificates: Sequence[bytes] = (),
    models: Sequence[ModelRef] = (),
    since: Mapping[str, int] | None = None,
) -> bytes:
    """The signed head (magic, length, manifest, signature) of a bundle.

    For streaming export: write this, then each model's bytes in ``models`` order. Raises
    ValueError when the arguments could not make a bundle that verifies (key not the
    certificate's, entries that do not fold to their checkpoint, over a limit); these are
    the exporter's mistakes, so the message names the fix.
    """
    cert = _parse_cert_unverified(node_cert_pem, "node certificate")
    if _cert_names(cert) != (node_id, federation):
        raise ValueError(
            f"node certificate is for {_cert_names(cert)}, not ({node_id!r}, {federation!r}); "
            "pass this node's own certificate"
        )
    if _raw(node_key.public_key()) != _raw_of_cert(cert):
        raise ValueError("node_key is not the key of node_cert_pem; pass this node's own key")
    if len(logs) > MAX_LOGS or len(certificates) > MAX_LOGS or len(models) > MAX_MODELS:
        raise ValueError(f"at most {MAX_LOGS} logs and certificates and {MAX_MODELS} models")
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "federation": federation,
        "node_id": node_id,
        "created": rfc3339(created),
        "since": dict(since or {}),
        "node_certificate": _pem_text(node_cert_pem),
        "certificates": [_pem_text(c) for c in certificates],
        "logs": [_log_to_json(s) for s in sorted(logs, key=lambda s: s.origin)],
        "models": [_model_to_json(m) for m in models],
    }
    if policy is not None:
        manifest["policy"] = b64encode(policy)
    if revocations is not None:
        manifest["revocations"] = _pem_text(revocations)
    try:
        log_nodes = [_origin_node(s.origin, federation) for s in logs]
        for origin, size in (since or {}).items():
            _origin_node(origin, federation)
            _int({"size": size}, "size", f"since[{origin!r}]", 0, MAX_TREE_SIZE)
    except MalformedInput as exc:
        raise ValueError(str(exc)) from exc
    if len(set(log_nodes)) != len(log_nodes):
        raise ValueError("two log sections for one origin; pass one section per log")
    cert_nodes = [_cert_names(_parse_cert_unverified(c, "certificate"))[0] for c in certificates]
    if len(set(cert_nodes)) != len(cert_nodes) or set(cert_nodes) != set(log_nodes) - {node_id}:
        raise ValueError(
            "pass exactly one certificate per node whose log is carried (not the exporter's), "
            f"got certificates for {cert_nodes} and logs of {log_nodes}"
        )
    body = canonical_json(manifest)
    if len(body) > MAX_MANIFEST_BYTES:
        raise ValueError(
            f"manifest is {len(body)} bytes, over {MAX_MANIFEST_BYTES}; export fewer entries "
            "per bundle and carry the rest in a following bundle"
        )
    message = MAGIC + _LEN.pack(len(body)) + body
    return message + node_key.sign(message)


def build_bundle(
    *,
    federation: str,
    node_id: str,
    node_cert_pem: bytes,
    node_key: Ed25519PrivateKey,
    created: datetime,
    policy: bytes | None = None,
    revocations: bytes | None = None,
    logs: Sequence[LogSection] = (),
    certificates: Sequence[bytes] = (),
    models: Sequence[ModelBlob] = (),
    since: Mapping[str, int] | None = None,
) -> bytes:
    """The whole bundle file in memory (head, then the model blobs). See :func:`build_head`."""
    for m in models:
        if sha256_hex(m.data) != m.sha256:
            raise ValueError(f"model {m.name}:{m.version} bytes do not hash to its sha256")
    head = build_head(
        federation=federation,
        node_id=node_id,
        node_cert_pem=node_cert_pem,
        node_key=node_key,
        created=created,
        policy=policy,
        revocations=revocations,
        logs=logs,
        certificates=certificates,
        models=[m.ref for m in models],
        since=since,
    )
    return b"".join([head, *(m.data for m in models)])


def _log_to_json(s: LogSection) -> dict[str, Any]:
    cp = _unverified_checkpoint(s.checkpoint_note)
    if cp.origin != s.origin:
        raise ValueError(f"section origin {s.origin!r} is not its checkpoint's {cp.origin!r}")
    if not 0 <= s.start <= cp.size or s.start + len(s.entries) != cp.size:
        raise ValueError(
            f"{s.origin}: entries must be exactly [start, {cp.size}); got start {s.start} and "
            f"{len(s.entries)} entries"
        )
    if any(len(e) > MAX_ENTRY_BYTES for e in s.entries):
        raise ValueError(f"{s.origin}: an entry is over {MAX_ENTRY_BYTES} bytes")
    cr = CompactRange(s.start, s.frontier)
    cr.extend(leaf_hash(e) for e in s.entries)
    if cr.root() != cp.root_hash:
        raise ValueError(
            f"{s.origin}: frontier and entries do not fold to the checkpoint root; take the "
            "frontier with CompactRange.nodes_for(start) from the same log as the entries"
        )
    obj: dict[str, Any] = {
        "origin": s.origin,
        "checkpoint": s.checkpoint_note,
        "start": s.start,
        "frontier": [b64encode(h) for h in s.frontier],
        "entries": [b64encode(e) for e in s.entries],
    }
    if s.consistency is not None:
        if s.consistency.new_size != cp.size or not 0 < s.consistency.old_size < s.start:
            raise ValueError(
                f"{s.origin}: consistency proof must go from a size in 1..{s.start - 1} to "
                f"{cp.size}; sizes from start up are already proven by the frontier"
            )
        obj["consistency"] = s.consistency.to_json_obj()
    return obj


def _model_to_json(m: ModelRef) -> dict[str, Any]:
    _check_model_ref(m, ValueError)
    return {"name": m.name, "version": m.version, "sha256": m.sha256, "size": m.size}


# --- reading ---------------------------------------------------------------------------------


def head_size(prefix: bytes) -> int:
    """Length of the signed head, from at least the first :data:`HEAD_PREFIX_BYTES` bytes."""
    if len(prefix) < HEAD_PREFIX_BYTES or prefix[: len(MAGIC)] != MAGIC:
        raise MalformedInput(
            f"not a sync bundle (it does not start with {FORMAT!r}); pass a file written by "
            "'outpost bundle export'"
        )
    n = int(_LEN.unpack_from(prefix, len(MAGIC))[0])
    if not 2 <= n <= MAX_MANIFEST_BYTES:
        raise MalformedInput(
            f"sync bundle manifest length {n} is outside 2..{MAX_MANIFEST_BYTES}; the file is "
            "damaged or not a bundle"
        )
    return HEAD_PREFIX_BYTES + n + SIGNATURE_BYTES


def read_bundle(
    data: bytes,
    *,
    authority_cert_pem: bytes,
    now: datetime,
    revocations: RevocationList | None = None,
) -> VerifiedBundle:
    """Verify a whole bundle held in memory; return it, or raise and use none of it.

    Raises MalformedInput (not a bundle, bad shape, over a limit), BadCertificate
    (exporter or a log's node not of this federation, or expired), Revoked, BadSignature
    (bundle, checkpoint, policy, revocation list or model bytes altered or signed by
    another key), BadProof (log entries are not the signed log's leaves) or PolicyError.
    ``revocations`` is the list the importer holds; the newer of it and the carried one is
    applied to every certificate.
    """
    n = head_size(data[:HEAD_PREFIX_BYTES])
    if len(data) < n:
        raise MalformedInput(f"sync bundle is cut short ({len(data)} bytes, head needs {n})")
    bundle = read_head(
        data[:n], authority_cert_pem=authority_cert_pem, now=now, revocations=revocations
    )
    rest = memoryview(data)[n:]
    expected = sum(m.size for m in bundle.model_refs)
    if len(rest) != expected:
        raise MalformedInput(
            f"sync bundle has {len(rest)} bytes after its head, the manifest signs {expected}: "
            "the file was cut short or had bytes appended; copy it again"
        )
    blobs: list[ModelBlob] = []
    offset = 0
    for ref in bundle.model_refs:
        blob = bytes(rest[offset : offset + ref.size])
        offset += ref.size
        ref.verify(sha256_hex(blob), len(blob))
        blobs.append(ModelBlob(ref.name, ref.version, ref.sha256, blob))
    return replace(bundle, models=tuple(blobs))


def read_head(
    head: bytes,
    *,
    authority_cert_pem: bytes,
    now: datetime,
    revocations: RevocationList | None = None,
) -> VerifiedBundle:
    """Verify a bundle's signed head (exactly :func:`head_size` bytes); models not included.

    Everything but the blob bytes is verified, as in :func:`read_bundle`; the caller then
    streams each blob of ``model_refs`` and checks it with :meth:`ModelRef.verify`.
    """
    n = head_size(head[:HEAD_PREFIX_BYTES])
    if len(head) != n:
        raise MalformedInput(f"sync bundle head is {len(head)} bytes, its length field says {n}")
    message, signature = head[:-SIGNATURE_BYTES], head[-SIGNATURE_BYTES:]
    body = message[HEAD_PREFIX_BYTES:]
    manifest = parse_json_object(body, "sync bundle manifest")
    if canonical_json(manifest) != body:
        raise MalformedInput(
            "sync bundle manifest is not RFC 8785 canonical JSON (re-encoded or hand-edited); "
            "import the file exactly as 'outpost bundle export' wrote it"
        )
    _expect_keys(manifest, _REQUIRED, _OPTIONAL, "sync bundle manifest")
    if manifest["format"] != FORMAT:
        raise MalformedInput(
            f"sync bundle format {manifest['format']!r} is not {FORMAT!r}; upgrade this node"
        )
    federation = _str(manifest, "federation", "sync bundle")
    node_id = _str(manifest, "node_id", "sync bundle")

    # Who packed it: only then is anything else in the file worth looking at.
    exporter = NodeIdentity.from_certificate(
        _pem_bytes(manifest, "node_certificate"), authority_cert_pem, now
    )
    if (exporter.node_id, exporter.federation) != (node_id, federation):
        raise BadCertificate(
            f"sync bundle says it is from {node_id!r} of {federation!r} but its certificate is "
            f"{exporter.node_id!r} of {exporter.federation!r}"
        )
    try:
        exporter.public_key.verify(signature, message)
    except InvalidSignature as exc:
        raise BadSignature(
            f"sync bundle signature by {node_id} does not verify: the file was altered after "
            "export (or damaged on the media); export it again"
        ) from exc

    carried_crl = None
    if "revocations" in manifest:
        carried_crl = read_revocation_list(
            _pem_bytes(manifest, "revocations", limit=MAX_MANIFEST_BYTES), authority_cert_pem
        )
    crl = _newest(revocations, carried_crl)
    if crl is not None:
        crl.check(exporter)

    policy = None
    if "policy" in manifest:
        raw = b64decode(manifest["policy"], what="sync bundle policy")
        authority = load_authority_certificate(authority_cert_pem).public_key()
        if not isinstance(authority, Ed25519PublicKey):  # load_authority_certificate ensures it
            raise BadCertificate("authority certificate key is not Ed25519")
        policy = read_policy_bundle(raw, authority, federation=federation)

    identities = _read_certificates(manifest, exporter, authority_cert_pem, now, crl)
    logs = _read_logs(manifest, federation, identities)
    used = {log.node_identity.node_id for log in logs}
    unused = sorted(set(identities) - used - {exporter.node_id})
    if unused:
        raise MalformedInput(
            f"sync bundle carries certificates of {unused} but no log of theirs; carry a "
            "certificate only with its node's log"
        )
    return VerifiedBundle(
        federation=federation,
        created=_created(manifest),
        since=_since(manifest, federation),
        exporter=exporter,
        policy=policy,
        revocations=carried_crl,
        logs=logs,
        model_refs=_model_refs(manifest),
        models=(),
        digest=sha256_hex(message),
        head_size=n,
    )


def _read_certificates(
    manifest: Mapping[str, Any],
    exporter: NodeIdentity,
    authority_cert_pem: bytes,
    now: datetime,
    crl: RevocationList | None,
) -> dict[str, NodeIdentity]:
    certs = _list(manifest, "certificates", "sync bundle", MAX_LOGS)
    identities = {exporter.node_id: exporter}
    for i, pem in enumerate(certs):
        if not isinstance(pem, str) or len(pem) > MAX_CERTIFICATE_BYTES:
            raise MalformedInput(f"sync bundle certificate {i} must be PEM text")
        identity = NodeIdentity.from_certificate(
            _ascii(pem, "certificate"), authority_cert_pem, now
        )
        if identity.node_id in identities:
            raise MalformedInput(
                f"sync bundle carries two certificates for {identity.node_id}; carry one"
            )
        if crl is not None:
            crl.check(identity)
        identities[identity.node_id] = identity
    return identities


def _read_logs(
    manifest: Mapping[str, Any], federation: str, identities: Mapping[str, NodeIdentity]
) -> tuple[VerifiedLog, ...]:
    out: list[VerifiedLog] = []
    previous = ""
    for i, obj in enumerate(_list(manifest, "logs", "sync bundle", MAX_LOGS)):
        what = f"sync bundle log {i}"
        if not isinstance(obj, dict):
            raise MalformedInput(f"{what} must be an object")
        _expect_keys(obj, _LOG_REQUIRED, _LOG_OPTIONAL, what)
        origin = _str(obj, "origin", what)
        if origin <= previous:
            raise MalformedInput(f"{what}: logs must be sorted by origin, each once")
        previous = origin
        identity = identities.get(_origin_node(origin, federation))
        if identity is None:
            raise BadCertificate(
                f"{what}: no certificate of the node of {origin} is carried; carry it in "
                "'certificates' so the checkpoint can be verified"
            )
        out.append(_read_log(obj, origin, identity, what))
    return tuple(out)


def _read_log(
    obj: Mapping[str, Any], origin: str, identity: NodeIdentity, what: str
) -> VerifiedLog:
    note = _str(obj, "checkpoint", what)
    checkpoint = Checkpoint.open(note, Verifier(origin, identity.public_key))
    size = checkpoint.size
    if size > MAX_TREE_SIZE:
        raise MalformedInput(f"{what}: checkpoint size {size} is beyond 2**53")
    start = _int(obj, "start", what, 0, size)
    want = len(CompactRange.nodes_for(start))
    frontier = _hash_list(obj, "frontier", what, want)
    raw_entries = _list(obj, "entries", what, MAX_TREE_SIZE)
    if start + len(raw_entries) != size:
        raise BadProof(
            f"{what}: {len(raw_entries)} entries from {start} do not reach the signed size "
            f"{size}; entries are missing or extra"
        )
    entries = tuple(b64decode(e, what=f"{what} entry") for e in raw_entries)
    if any(len(e) > MAX_ENTRY_BYTES for e in entries):
        raise MalformedInput(f"{what}: an entry is over {MAX_ENTRY_BYTES} bytes")
    cr = CompactRange(start, frontier)
    cr.extend(leaf_hash(e) for e in entries)
    if cr.root() != checkpoint.root_hash:
        raise BadProof(
            f"{what}: entries [{start}, {size}) of {origin} are not the leaves of its signed "
            "checkpoint (an entry was changed, removed, added or moved); export again"
        )
    consistency = None
    if "consistency" in obj:
        if not isinstance(obj["consistency"], dict):
            raise MalformedInput(f"{what}: 'consistency' must be an object")
        consistency = ConsistencyProof.parse(obj["consistency"])
        if consistency.new_size != size or not 0 < consistency.old_size < start:
            raise MalformedInput(
                f"{what}: consistency proof must go from a size in 1..{start - 1} to {size}"
            )
    return VerifiedLog(
        origin=origin,
        node_identity=identity,
        checkpoint=checkpoint,
        checkpoint_note=note,
        start=start,
        frontier=frontier,
        entries=entries,
        consistency=consistency,
    )


def _model_refs(manifest: Mapping[str, Any]) -> tuple[ModelRef, ...]:
    refs: list[ModelRef] = []
    seen: set[tuple[str, str]] = set()
    for i, obj in enumerate(_list(manifest, "models", "sync bundle", MAX_MODELS)):
        what = f"sync bundle model {i}"
        if not isinstance(obj, dict):
            raise MalformedInput(f"{what} must be an object")
        _expect_keys(obj, _MODEL_KEYS, frozenset(), what)
        ref = ModelRef(
            _str(obj, "name", what),
            _str(obj, "version", what),
            _str(obj, "sha256", what),
            _int(obj, "size", what, 0, MAX_MODEL_BYTES),
        )
        _check_model_ref(ref, MalformedInput)
        if (ref.name, ref.version) in seen:
            raise MalformedInput(f"{what}: {ref.name}:{ref.version} is listed twice")
        seen.add((ref.name, ref.version))
        refs.append(ref)
    return tuple(refs)


def _created(manifest: Mapping[str, Any]) -> str:
    created = _str(manifest, "created", "sync bundle")
    if not _TIME_RE.fullmatch(created):
        raise MalformedInput(f"sync bundle 'created' {created!r} is not RFC 3339 UTC")
    return created


def _since(manifest: Mapping[str, Any], federation: str) -> dict[str, int]:
    since = manifest["since"]
    if not isinstance(since, dict) or len(since) > MAX_LOGS:
        raise MalformedInput(f"sync bundle 'since' must map at most {MAX_LOGS} origins to sizes")
    for origin in since:
        _origin_node(origin, federation)
        _int(since, origin, "sync bundle 'since'", 0, MAX_TREE_SIZE)
    return dict(since)


# --- merging ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogHead:
    """What the importer holds of a log: its size and root there (size 0: EMPTY_ROOT)."""

    size: int
    root: bytes


class MergeStatus(enum.Enum):
    APPEND = "append"  # entries [first, size) are new and extend the held copy
    UP_TO_DATE = "up-to-date"  # the held copy already has everything the bundle has
    STALE = "stale"  # the held copy is longer than the bundle's checkpoint
    GAP = "gap"  # the bundle starts after the held size; needs an earlier bundle
    CONFLICT = "conflict"  # the held copy is not a prefix of the signed log


@dataclass(frozen=True)
class LogMerge:
    """What to do with one log: append ``entries`` at ``first``, then store the checkpoint."""

    origin: str
    status: MergeStatus
    first: int
    entries: tuple[bytes, ...] = field(repr=False)
    checkpoint_note: str
    reason: str = ""

    @property
    def end(self) -> int:
        return self.first + len(self.entries)


@dataclass(frozen=True)
class MergePlan:
    """The new parts of a bundle; applying the plan makes a second import a no-op."""

    logs: tuple[LogMerge, ...]
    policy: PolicyBundle | None
    revocations: RevocationList | None
    #: Models whose hash is not held yet; their bytes are in ``bundle.models`` (or, after
    #: :func:`read_head`, streamed by the node layer).
    models: tuple[ModelRef, ...]

    @property
    def appends(self) -> tuple[LogMerge, ...]:
        return tuple(m for m in self.logs if m.status is MergeStatus.APPEND)

    @property
    def nothing_new(self) -> bool:
        return (
            not self.appends
            and self.policy is None
            and self.revocations is None
            and not self.models
        )


def plan_merge(
    held_logs: Mapping[str, LogHead],
    held_policy_version: int | None,
    held_revocation_version: int | None,
    bundle: VerifiedBundle,
    *,
    held_models: Collection[str] = (),
) -> MergePlan:
    """Decide what a verified bundle adds to what the importer holds.

    ``held_logs`` maps origin to the held size and root there (absent: nothing held);
    the root is needed, not just the size, because appending to a copy that is not a
    prefix of the signed log would give a replica that never verifies. Policy and
    revocations are applied only when strictly newer (the ``accepts_update`` rule);
    ``held_models`` are blob hashes already stored.
    """
    logs = tuple(_plan_log(log, held_logs.get(log.origin)) for log in bundle.logs)
    policy = bundle.policy
    if policy is not None and held_policy_version is not None:
        policy = policy if policy.version > held_policy_version else None
    crl = bundle.revocations
    if crl is not None and held_revocation_version is not None:
        crl = crl if crl.version > held_revocation_version else None
    held = set(held_models)
    models = tuple(m for m in bundle.model_refs if m.sha256 not in held)
    return MergePlan(logs, policy, crl, models)


def _plan_log(log: VerifiedLog, held: LogHead | None) -> LogMerge:
    held = held or LogHead(0, EMPTY_ROOT)
    note = log.checkpoint_note
    if held.size > log.size:
        return LogMerge(log.origin, MergeStatus.STALE, held.size, (), note)
    if held.size < log.start:
        return LogMerge(
            log.origin,
            MergeStatus.GAP,
            held.size,
            (),
            note,
            f"holds {held.size} entries, the bundle starts at {log.start}; import a bundle "
            f"exported with --since {held.size} first",
        )
    try:
        log.extends(held.size, held.root)
    except BadProof as exc:
        return LogMerge(log.origin, MergeStatus.CONFLICT, held.size, (), note, str(exc))
    if held.size == log.size:
        return LogMerge(log.origin, MergeStatus.UP_TO_DATE, held.size, (), note)
    entries = log.entries[held.size - log.start :]
    return LogMerge(log.origin, MergeStatus.APPEND, held.size, entries, note)


# --- small helpers -----------------------------------------------------------------------------


def _newest(a: RevocationList | None, b: RevocationList | None) -> RevocationList | None:
    if a is None or b is None:
        return a or b
    return b if b.version > a.version else a


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _parse_cert_unverified(pem: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise ValueError(f"{what} is not a PEM certificate ({exc})") from exc


def _cert_names(cert: x509.Certificate) -> tuple[str, str]:
    def one(oid: x509.ObjectIdentifier) -> str:
        attrs = cert.subject.get_attributes_for_oid(oid)
        return str(attrs[0].value) if len(attrs) == 1 else ""

    return one(NameOID.COMMON_NAME), one(NameOID.ORGANIZATION_NAME)


def _raw_of_cert(cert: x509.Certificate) -> bytes:
    key = cert.public_key()
    return _raw(key) if isinstance(key, Ed25519PublicKey) else b""


def _pem_text(pem: bytes) -> str:
    try:
        return pem.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ValueError("PEM documents are ASCII; pass the PEM bytes, not DER") from exc


def _ascii(text: str, what: str) -> bytes:
    try:
        return text.encode("ascii")
    except UnicodeEncodeError as exc:
        raise MalformedInput(f"sync bundle {what} is not ASCII PEM") from exc


def _pem_bytes(obj: Mapping[str, Any], key: str, limit: int = MAX_CERTIFICATE_BYTES) -> bytes:
    text = _str(obj, key, "sync bundle")
    if len(text) > limit:
        raise MalformedInput(f"sync bundle {key!r} is over {limit} bytes")
    return _ascii(text, key)


def _unverified_checkpoint(note: str) -> Checkpoint:
    """The checkpoint in a note, signature not checked (for the exporter's sanity checks)."""
    split = note.find("\n\n")
    if split < 0:
        raise ValueError("checkpoint_note is not a signed note; pass Checkpoint.sign() output")
    try:
        return Checkpoint.parse(note[: split + 1])
    except MalformedInput as exc:
        raise ValueError(f"checkpoint_note does not hold a checkpoint ({exc})") from exc


def _origin_node(origin: object, federation: str) -> str:
    parts = origin.split("/") if isinstance(origin, str) else []
    if len(parts) != 3 or parts[:2] != ["outpost", federation]:
        raise MalformedInput(
            f"log origin {origin!r} is not 'outpost/{federation}/<node-id>'; a bundle carries "
            "only logs of its own federation"
        )
    return validate_node_id(parts[2])


def _check_model_ref(ref: ModelRef, error: type[Exception]) -> None:
    if not isinstance(ref.name, str) or not _MODEL_NAME_RE.fullmatch(ref.name) or ".." in ref.name:
        raise error(f"model name {ref.name!r} is not a valid model name")
    if (
        not isinstance(ref.version, str)
        or not _MODEL_VERSION_RE.fullmatch(ref.version)
        or ".." in ref.version
    ):
        raise error(f"model version {ref.version!r} is not a valid model version")
    if not isinstance(ref.sha256, str) or not _SHA256_HEX_RE.fullmatch(ref.sha256):
        raise error(f"model sha256 {ref.sha256!r} must be 64 lowercase hex digits")
    if not 0 <= ref.size <= MAX_MODEL_BYTES:
        raise error(f"model size {ref.size} is out of range 0..{MAX_MODEL_BYTES}")


def _expect_keys(
    obj: Mapping[str, Any], required: frozenset[str], optional: frozenset[str], what: str
) -> None:
    keys = set(obj)
    if not keys >= required or not keys <= required | optional:
        raise MalformedInput(
            f"{what}: missing {sorted(required - keys)}, unknown {sorted(keys - required - optional)}"
            "; the file is damaged or from an incompatible release"
        )


def _str(obj: Mapping[str, Any], key: str, what: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise MalformedInput(f"{what}: {key!r} must be a string")
    return value


def _int(obj: Mapping[str, Any], key: str, what: str, lo: int, hi: int) -> int:
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise MalformedInput(f"{what}: {key!r} must be an integer in {lo}..{hi}")
    return value


def _list(obj: Mapping[str, Any], key: str, what: str, limit: int) -> list[Any]:
    value = obj[key]
    if not isinstance(value, list) or len(value) > limit:
        raise MalformedInput(f"{what}: {key!r} must be a list of at most {limit} items")
    return value


def _hash_list(obj: Mapping[str, Any], key: str, what: str, want: int) -> tuple[bytes, ...]:
    value = _list(obj, key, what, want)
    if len(value) != want:
        raise MalformedInput(f"{what}: {key!r} has {len(value)} hashes, this start needs {want}")
    return tuple(b64decode(h, length=HASH_SIZE, what=f"{what} {key} hash") for h in value)
