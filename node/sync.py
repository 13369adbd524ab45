"""Sync bundles on disk: ``outpost bundle export`` and ``outpost bundle import`` (DESIGN §5).

Owns: gathering what a bundle carries from the node's store (its own log, the replicas it
holds of other nodes' logs, the policy bundle and revocation list in force, optionally its
models), writing the file, and importing one — verify all of it (``federation.syncbundle``),
plan the merge, apply the plan through the paths the rest of the node uses, and record the
import in the audit log. Also the replica tables (migration 4) that keep other nodes' logs
byte for byte, so they can be verified, shown, and carried on through the next air gap::

    replica_entry (origin, seq, entry)       leaves [0, size) of that log, no holes
    replica_head  (origin, size, note, cert)  its checkpoint at size, and the certificate whose
                                              key signed it (needed to export it again)

Must never: use any part of a bundle before all of it verified; merge a log that conflicts
with what is held or does not join up to it (those are reported, never merged); append to
the node's own audit log from a second process.

Where each part runs. Export only reads (SQLite WAL readers are safe beside the daemon), so
it runs in the CLI process either way. Import changes the node: with no daemon it runs in
the CLI process under the data-directory lock (``node.offline.run_offline``), through the
same ``node.documents.apply_signed`` as ``outpost apply`` and the same ``ModelHost.add``
as ``outpost models add``. When a daemon runs, only the daemon may append to its audit
log, so the CLI hands it the file's path over the admin socket (:data:`IMPORT_ROUTE`,
served by :func:`admin_route`) and the daemon imports it with its own document sink
(``node.documents.Documents.apply``, the handler of ``POST /apply``: documents take effect
live and spread by gossip) and its own model host (models load live). Either way import and replica writes use a connection of their own, so a
multi-statement transaction never interleaves with the audit writer's.

Blobs are streamed: the signed head is read and verified first (``read_head``), then each
model is copied to a temporary file in the blob directory while it is hashed; nothing is
applied until every blob matched the signed manifest and the file ended exactly after the
last one — the same all-or-nothing check as ``read_bundle``, without holding models in RAM.

Models are subject to ``model.pull`` as on the network: the importing node adds a model only
when the policy in force (the bundle's own, if newer) lets this node, with its attested
attributes, have that model; a denied model is reported and audited, never added.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from federation.audit import AuditEntry, log_origin, verify_log
from federation.canonical import parse_json_object, sha256_hex
from federation.errors import BadCertificate, FederationError, MalformedInput
from federation.identity import NodeIdentity, RevocationList
from federation.merkle import EMPTY_ROOT, CompactRange, leaf_hash
from federation.note import Checkpoint, Verifier
from federation.syncbundle import (
    HEAD_PREFIX_BYTES,
    SIGNATURE_BYTES,
    LogHead,
    LogMerge,
    LogSection,
    MergeStatus,
    ModelRef,
    VerifiedBundle,
    build_head,
    head_size,
    plan_merge,
    read_head,
)
from models import ModelError, inspect_model
from models.blobs import TEMP_PREFIX
from node.audit import AuditError, AuditLog, AuditReader, _fetch_nodes
from node.client import DaemonError, connect
from node.enrollment import (
    NODE_CERT,
    EnrollmentError,
    authority_pem,
    load_identity,
    now,
    revocations,
)
from node.errors import OperatorError
from node.keys import load_key
from node.limits import FILE_CHUNK_BYTES
from node.modelhost import BLOB_DIR, ModelHost
from node.offline import OfflineNode, read_store, run_offline
from node.store import Store, StoreError, get_doc

__all__ = [
    "IMPORT_ROUTE",
    "BundleError",
    "LiveNode",
    "admin_route",
    "export_bundle",
    "import_bundle",
    "replica_entries",
    "replicas",
    "verify_replicas",
]

#: Admin-socket route of a running daemon that imports a bundle file (JSON ``{"path": ...}``).
IMPORT_ROUTE = "/bundle/import"

_CHUNK = FILE_CHUNK_BYTES


class BundleError(OperatorError, ValueError):
    """A bundle cannot be written or imported here; the message names the fix.

    (Refusals of the file itself — bad signature, foreign federation, altered entries — are
    the ``FederationError`` that ``federation.syncbundle`` raised, passed through as is.)
    """


# -- replicas ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Replica:
    origin: str
    size: int
    note: str
    cert: bytes


async def _replica_heads(store: Store) -> dict[str, _Replica]:
    async with store.conn.execute(
        "SELECT origin, size, note, cert FROM replica_head ORDER BY origin"
    ) as cur:
        rows = await cur.fetchall()
    return {str(o): _Replica(str(o), int(s), str(n), bytes(c)) for o, s, n, c in rows}


async def _fold(
    store: Store, origin: str, start: int, end: int, cr: CompactRange, *, keep: bool
) -> list[bytes]:
    """Extend ``cr`` (at ``start``) with the held leaves [start, end); return them if ``keep``.

    Raises BundleError when the replica has a hole there (the store was edited or damaged).
    """
    kept: list[bytes] = []
    expected = start
    async with store.conn.execute(
        "SELECT seq, entry FROM replica_entry WHERE origin = ? AND seq >= ? AND seq < ? "
        "ORDER BY seq",
        (origin, start, end),
    ) as cur:
        async for seq, raw in cur:
            if int(seq) != expected:
                break
            entry = raw.encode() if isinstance(raw, str) else bytes(raw)
            cr.append(leaf_hash(entry))
            if keep:
                kept.append(entry)
            expected += 1
    if expected != end:
        raise BundleError(
            f"the replica of {origin} held here lacks entry {expected} of {end}: the database "
            "was edited or damaged"
        )
    return kept


async def _replica_root(store: Store, origin: str, size: int) -> bytes:
    cr = CompactRange()
    await _fold(store, origin, 0, size, cr, keep=False)
    return cr.root()


async def _own_root(reader: AuditReader, size: int) -> bytes:
    return EMPTY_ROOT if size == 0 else await reader.root(size)


def _public_key(cert_pem: bytes) -> Ed25519PublicKey:
    """The key a stored certificate binds, validity not checked (verifying history)."""
    key = x509.load_pem_x509_certificate(cert_pem).public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise BadCertificate("a replica's certificate does not hold an Ed25519 key")
    return key


def _read_store(data_dir: Path, fn: Callable[[Store], Awaitable[Any]]) -> Any:
    return read_store(data_dir, fn)


def replicas(data_dir: Path) -> list[dict[str, Any]]:
    """The other nodes' logs held here: origin, node id, size, checkpoint note."""

    async def go(store: Store) -> list[dict[str, Any]]:
        return [
            {"origin": r.origin, "node_id": r.origin.rsplit("/", 1)[-1], "size": r.size,
             "checkpoint": r.note}
            for r in (await _replica_heads(store)).values()
        ]

    rows: list[dict[str, Any]] = _read_store(data_dir, go)
    return rows


def replica_entries(data_dir: Path, origin: str, start: int = 0) -> list[tuple[int, bytes]]:
    """Entries ``[start, size)`` of the replica of ``origin`` (what ``audit tail --all`` shows)."""

    async def go(store: Store) -> list[tuple[int, bytes]]:
        async with store.conn.execute(
            "SELECT seq, entry FROM replica_entry WHERE origin = ? AND seq >= ? ORDER BY seq",
            (origin, start),
        ) as cur:
            return [(int(s), bytes(e)) for s, e in await cur.fetchall()]

    rows: list[tuple[int, bytes]] = _read_store(data_dir, go)
    return rows


def verify_replicas(data_dir: Path) -> list[dict[str, Any]]:
    """Recompute every replica's tree and check its stored checkpoint with its node's key."""

    async def go(store: Store) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for r in (await _replica_heads(store)).values():
            async with store.conn.execute(
                "SELECT entry FROM replica_entry WHERE origin = ? ORDER BY seq", (r.origin,)
            ) as cur:
                entries = [bytes(e) for (e,) in await cur.fetchall()]
            report = verify_log(entries, [(r.size, r.note)],
                                Verifier(r.origin, _public_key(r.cert)))
            out.append({"origin": r.origin, "size": r.size, "entries": len(entries),
                        "ok": report.ok and len(entries) == r.size,
                        "problems": list(report.problems)})
        return out

    rows: list[dict[str, Any]] = _read_store(data_dir, go)
    return rows


# -- export -----------------------------------------------------------------------------------


def export_bundle(
    data_dir: Path,
    out: Path,
    *,
    since: Mapping[str, int] | None = None,
    include_models: bool = False,
    receiver_cert: bytes | None = None,
) -> dict[str, Any]:
    """Write a sync bundle of this node to ``out``; returns what it carries.

    ``since`` maps a log origin (or a bare node id of this federation) to the size the
    receiver already holds; that log's section then starts there. ``receiver_cert`` (the
    receiving node's certificate PEM) makes this node decide ``model.pull`` for it, as it
    would for that node pulling over the network: models it may not have stay home (listed in
    ``models_left_out``). Without it the importing node decides. Reads only: safe with the
    daemon running.
    """
    key = load_key(data_dir)
    ident = load_identity(data_dir)
    ca = authority_pem(data_dir)
    if ident is None or ca is None:
        raise EnrollmentError(
            "this node is not enrolled, so no federation node could verify its bundle; run "
            "`outpost join CERT` first"
        )
    wanted = _expand_since(since or {}, ident.federation)
    cert_pem = (data_dir / NODE_CERT).read_bytes()
    result: dict[str, Any] = read_store(data_dir, lambda store: _export(
        store, data_dir, out, key, ident, ca, cert_pem, wanted, include_models, receiver_cert))
    return result


def _expand_since(since: Mapping[str, int], federation: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, size in since.items():
        origin = name if "/" in name else log_origin(name, federation)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BundleError(f"--since {name}={size!r}: the size must be an integer >= 0")
        out[origin] = size
    return out


async def _export(
    store: Store,
    data_dir: Path,
    out: Path,
    key: Ed25519PrivateKey,
    ident: NodeIdentity,
    ca: bytes,
    cert_pem: bytes,
    since: dict[str, int],
    include_models: bool,
    receiver_cert: bytes | None = None,
) -> dict[str, Any]:
    sections = [await _own_section(store, key, ident.origin, since.get(ident.origin, 0))]
    certs: list[bytes] = []
    left_out: list[dict[str, str]] = []
    crl = await revocations(store, data_dir)
    for replica in (await _replica_heads(store)).values():
        if replica.origin == ident.origin:
            continue
        try:
            section = await _replica_section(store, replica, ca, crl,
                                             since.get(replica.origin, 0))
        except (FederationError, BundleError) as exc:
            # The importer would refuse the whole bundle for this one log (revoked or
            # expired node, damaged copy), so it stays home and the operator is told.
            left_out.append({"origin": replica.origin, "reason": str(exc)})
            continue
        sections.append(section)
        certs.append(replica.cert)
    policy = await get_doc(store, "policy")
    crl_doc = await get_doc(store, "revocation")
    records = await store.list_models() if include_models else []
    models_left_out: list[dict[str, str]] = []
    if records and receiver_cert is not None:
        refusal = _receiver_decider(receiver_cert, ca, crl, policy[1] if policy else None,
                                    data_dir)
        kept = []
        for r in records:
            reason = refusal(r.name, r.version)
            if reason is None:
                kept.append(r)
            else:
                models_left_out.append({"model": f"{r.name}:{r.version}", "reason": reason})
        records = kept
    refs = [ModelRef(r.name, r.version, r.sha256, r.size) for r in records]
    head = build_head(
        federation=ident.federation,
        node_id=ident.node_id,
        node_cert_pem=cert_pem,
        node_key=key,
        created=now(),
        policy=policy[1] if policy else None,
        revocations=crl_doc[1] if crl_doc else None,
        logs=sections,
        certificates=certs,
        models=refs,
        since=since,
    )
    blob_dir = data_dir / BLOB_DIR
    size = await asyncio.to_thread(
        _write_file, out, head, [(ref, blob_dir / f"{ref.sha256}.onnx") for ref in refs]
    )
    return {
        "file": str(out),
        "bytes": size,
        "digest": sha256_hex(head[:-SIGNATURE_BYTES]),
        "federation": ident.federation,
        "node_id": ident.node_id,
        "since": since,
        "logs": [
            {"origin": s.origin, "start": s.start, "size": s.start + len(s.entries),
             "entries": len(s.entries)}
            for s in sorted(sections, key=lambda s: s.origin)
        ],
        "policy_version": policy[0] if policy else None,
        "revocation_version": crl_doc[0] if crl_doc else None,
        "models": [{"name": r.name, "version": r.version, "sha256": r.sha256, "size": r.size}
                   for r in refs],
        "left_out": left_out,
        "models_left_out": models_left_out,
    }


async def _own_section(
    store: Store, key: Ed25519PrivateKey, origin: str, since: int
) -> LogSection:
    # One statement, so size and note are of one commit.
    async with store.conn.execute("SELECT size, note FROM audit_head WHERE id = 0") as cur:
        row = await cur.fetchone()
    if row is None or not str(row[1]).startswith(origin + "\n"):
        raise BundleError(
            f"this node's audit log has no checkpoint as {origin} yet; run `outpost join CERT` "
            "(it records the enrollment) before exporting"
        )
    size, note = int(row[0]), str(row[1])
    start = min(since, size)
    reader = AuditReader(store, [])
    rows = await reader.entries(start, size)
    wanted = CompactRange.nodes_for(start)
    nodes = await _fetch_nodes(store, wanted)
    if len(rows) != size - start or any(n not in nodes for n in wanted):
        raise AuditError(
            f"this node's audit log lacks entries or Merkle nodes below size {size}; run "
            "`outpost audit verify` to locate the damage"
        )
    entries = [e for _, e in rows]
    section = LogSection.from_store(origin, note, start, entries, lambda lv, ix: nodes[(lv, ix)])
    checkpoint = Checkpoint.open(note, Verifier(origin, key.public_key()))
    cr = CompactRange(start, section.frontier)
    cr.extend(leaf_hash(e) for e in entries)
    if cr.root() != checkpoint.root_hash:
        raise AuditError(
            f"this node's audit log does not match its own checkpoint at size {size}; run "
            "`outpost audit verify` to locate the damage"
        )
    return section


async def _replica_section(
    store: Store, replica: _Replica, ca: bytes, crl: RevocationList | None, since: int
) -> LogSection:
    ident = NodeIdentity.from_certificate(replica.cert, ca, now())
    if ident.origin != replica.origin:
        raise BadCertificate(f"the stored certificate is of {ident.origin}, not {replica.origin}")
    if crl is not None:
        crl.check(ident)
    checkpoint = Checkpoint.open(replica.note, Verifier(replica.origin, ident.public_key))
    start = min(since, replica.size)
    cr = CompactRange()
    await _fold(store, replica.origin, 0, start, cr, keep=False)
    frontier = cr.hashes
    entries = await _fold(store, replica.origin, start, replica.size, cr, keep=True)
    if checkpoint.size != replica.size or cr.root() != checkpoint.root_hash:
        raise BundleError(
            f"the replica of {replica.origin} held here does not match its checkpoint (the "
            "database was edited or damaged); it was left out"
        )
    return LogSection(replica.origin, replica.note, start, frontier, tuple(entries))


def _write_file(out: Path, head: bytes, blobs: Sequence[tuple[ModelRef, Path]]) -> int:
    """Write head then blobs to a temporary file beside ``out``, check each blob's hash on the
    way, then rename: a failed export never leaves a half bundle under the name asked for."""
    try:
        fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    except OSError as exc:
        raise BundleError(f"cannot write {out}: {exc.strerror}; check the directory") from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(head)
            total = len(head)
            for ref, path in blobs:
                digest, size = hashlib.sha256(), 0
                try:
                    src = path.open("rb")
                except OSError as exc:
                    raise BundleError(
                        f"model {ref.name}:{ref.version}: blob {path} cannot be read "
                        f"({exc.strerror}); export without --models or add the model again"
                    ) from exc
                with src:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        f.write(chunk)
                if digest.hexdigest() != ref.sha256 or size != ref.size:
                    raise BundleError(
                        f"model {ref.name}:{ref.version}: blob {path} no longer hashes to its "
                        "sha256 (damaged on disk); remove and add the model again"
                    )
                total += size
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
        return total
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise BundleError(f"cannot write {out}: {exc.strerror or exc}") from exc
        raise


# -- import -----------------------------------------------------------------------------------


class LiveNode(Protocol):
    """What the import needs of a running daemon (wired in ``node.daemon``)."""

    @property
    def data_dir(self) -> Path: ...

    @property
    def store(self) -> Store: ...

    @property
    def audit(self) -> AuditLog: ...

    @property
    def host(self) -> ModelHost: ...

    async def apply(self, body: bytes) -> dict[str, Any]: ...


def import_bundle(data_dir: Path, path: Path) -> dict[str, Any]:
    """Verify the bundle at ``path`` whole and merge what is new; returns what it did.

    Raises (and changes nothing) when any part of the file does not verify against this
    node's federation authority and the revocation list in force.
    """
    client = connect(data_dir)
    if client is not None:
        with client:
            try:
                result: dict[str, Any] = client.request(
                    "POST", IMPORT_ROUTE, {"path": str(path.resolve())}
                )
            except DaemonError as exc:
                if exc.status == 404 and "no admin endpoint" in str(exc):
                    raise DaemonError(
                        "the running daemon does not import bundles (no admin route POST "
                        f"{IMPORT_ROUTE}); stop it, run `outpost bundle import` again, then "
                        "start it", 404,
                    ) from None
                raise
            return result
    if load_identity(data_dir) is None:
        raise EnrollmentError(
            "this node is not enrolled, so it cannot check a bundle's signatures; run "
            "`outpost join CERT` first"
        )

    async def go(node: OfflineNode) -> dict[str, Any]:
        return await _import(node, path)

    return run_offline(data_dir, "outpost bundle import", go)


AdminHandler = Callable[[dict[str, Any], str], Awaitable[tuple[int, Any]]]


def admin_route(daemon: LiveNode) -> AdminHandler:
    """The daemon's handler for :data:`IMPORT_ROUTE`; register it with
    ``admin.route("POST", sync.IMPORT_ROUTE, sync.admin_route(daemon))``."""
    lock = asyncio.Lock()

    async def handle(payload: dict[str, Any], _rest: str) -> tuple[int, Any]:
        path = payload.get("path")
        if not isinstance(path, str) or not os.path.isabs(path):
            return 400, {"error": "bundle import needs {\"path\": ABSOLUTE_PATH}"}
        try:
            async with lock:
                return 200, await _import(daemon, Path(path))
        except (OperatorError, FederationError, ModelError) as exc:
            # A fault of the node (NodeFault: store, audit log) goes on to the admin API: 500.
            return 400, {"error": str(exc)}

    return handle


@dataclass
class _Verified:
    bundle: VerifiedBundle
    certs: dict[str, bytes]  # node id -> certificate PEM, for every node whose log is carried
    files: dict[tuple[str, str], Path] = field(default_factory=dict)  # models to add


def _read_file(
    path: Path,
    ca: bytes,
    crl: RevocationList | None,
    held: Mapping[tuple[str, str], str],
    max_model_bytes: int,
    tmp_dir: Path,
) -> _Verified:
    """Verify the whole file (blocking; run in a thread). Models not held by name:version
    are left in temporary files in ``tmp_dir``; nothing is kept when anything fails."""
    try:
        f = path.open("rb")
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror}") from exc
    files: dict[tuple[str, str], Path] = {}
    try:
        with f:
            prefix = f.read(HEAD_PREFIX_BYTES)
            n = head_size(prefix)
            head = prefix + f.read(n - len(prefix))
            if len(head) != n:
                raise MalformedInput(
                    f"sync bundle is cut short ({len(head)} bytes, its head needs {n}); copy "
                    "it again"
                )
            bundle = read_head(head, authority_cert_pem=ca, now=now(), revocations=crl)
            for ref in bundle.model_refs:
                keep = (ref.name, ref.version) not in held
                if keep and ref.size > max_model_bytes:
                    raise BundleError(
                        f"model {ref.name}:{ref.version} is {ref.size} bytes, over this node's "
                        f"models.max_model_bytes ({max_model_bytes}); raise it in the config or "
                        "ask for a bundle exported without --models"
                    )
                got = _copy_blob(f, ref, tmp_dir if keep else None)
                if got is not None:
                    files[(ref.name, ref.version)] = got
            if f.read(1):
                raise MalformedInput(
                    "sync bundle has bytes after its last model (appended to, or not a bundle "
                    "file); copy it again"
                )
        for (name, version), tmp in files.items():
            try:
                inspect_model(tmp)
            except ModelError as exc:
                raise BundleError(
                    f"model {name}:{version} in the bundle does not load here "
                    f"({str(exc).replace(str(tmp), 'the model')}); nothing was imported"
                ) from exc
        return _Verified(bundle, _carried_certs(head, ca), files)
    except BaseException:
        for tmp in files.values():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


def _copy_blob(f: BinaryIO, ref: ModelRef, tmp_dir: Path | None) -> Path | None:
    digest, size = hashlib.sha256(), 0
    out: BinaryIO | None = None
    tmp: Path | None = None
    if tmp_dir is not None:
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix=TEMP_PREFIX + "bundle-", suffix=".onnx")
        out, tmp = os.fdopen(fd, "wb"), Path(name)
    try:
        while size < ref.size:
            chunk = f.read(min(_CHUNK, ref.size - size))
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
            if out is not None:
                out.write(chunk)
        ref.verify(digest.hexdigest(), size)
    except BaseException:
        if out is not None:
            out.close()
        if tmp is not None:
            tmp.unlink()
        raise
    if out is not None:
        out.close()
    return tmp


def _carried_certs(head: bytes, ca: bytes) -> dict[str, bytes]:
    """Node id -> PEM of the certificates in a head ``read_head`` already verified."""
    manifest = parse_json_object(head[HEAD_PREFIX_BYTES:-SIGNATURE_BYTES], "sync bundle manifest")
    pems = [manifest["node_certificate"], *manifest["certificates"]]
    out: dict[str, bytes] = {}
    for text in pems:
        pem = str(text).encode("ascii")
        out[NodeIdentity.from_certificate(pem, ca, now()).node_id] = pem
    return out


@dataclass
class _LogRow:
    origin: str
    status: str
    held: int
    appended: int = 0
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"origin": self.origin, "status": self.status, "held": self.held,
                "appended": self.appended, "size": self.held + self.appended,
                "reason": self.reason}


async def _import(node: LiveNode, path: Path) -> dict[str, Any]:
    ca = authority_pem(node.data_dir)
    if ca is None:
        raise EnrollmentError(
            "this node is not enrolled, so it cannot check a bundle's signatures; run "
            "`outpost join CERT` first"
        )
    db = await Store.open(node.data_dir)  # reads and replica writes: never the audit writer's
    files: dict[tuple[str, str], Path] = {}
    try:
        crl = await revocations(db, node.data_dir)
        held_models = {(r.name, r.version): r.sha256 for r in await db.list_models()}
        verified = await asyncio.to_thread(
            _read_file, path, ca, crl, held_models, node.host.max_model_bytes,
            node.host.blobs.root,
        )
        files = verified.files
        bundle = verified.bundle
        # -- plan: what is new, what is refused ------------------------------------------
        own = node.audit.origin
        reader = AuditReader(db, [])
        heads = await _replica_heads(db)
        held_logs: dict[str, LogHead] = {}
        damaged: dict[str, str] = {}
        for log in bundle.logs:
            if log.origin == own:
                size = await reader.size()
                held_logs[own] = LogHead(size, await _own_root(reader, size))
            elif log.origin in heads:
                held = heads[log.origin]
                try:
                    held_logs[log.origin] = LogHead(
                        held.size, await _replica_root(db, log.origin, held.size))
                except BundleError as exc:
                    damaged[log.origin] = str(exc)
        policy = await get_doc(db, "policy")
        crl_doc = await get_doc(db, "revocation")
        plan = plan_merge(
            held_logs, policy[0] if policy else None, crl_doc[0] if crl_doc else None, bundle,
            held_models=[r.sha256 for r in bundle.model_refs
                         if held_models.get((r.name, r.version)) == r.sha256],
        )
        rows: list[_LogRow] = []
        appends: list[LogMerge] = []
        for merge in plan.logs:
            row = await _judge(merge, own, damaged, held_logs, bundle, reader, db)
            rows.append(row)
            if row.status == MergeStatus.APPEND.value:
                appends.append(merge)
        model_rows: list[dict[str, Any]] = []
        for ref in bundle.model_refs:
            have = held_models.get((ref.name, ref.version))
            status = "held" if have == ref.sha256 else "add" if have is None else "conflict"
            model_rows.append({"name": ref.name, "version": ref.version, "sha256": ref.sha256,
                               "status": status,
                               "reason": "" if status != "conflict" else
                               f"this node holds {ref.name}:{ref.version} with another sha256 "
                               f"({have}); not replaced"})
        # -- apply ------------------------------------------------------------------------
        done: dict[str, Any] = {"policy": None, "revocations": None, "entries": 0, "models": 0}
        conflicts = [r for r in rows if r.status == MergeStatus.CONFLICT.value]
        try:
            if plan.revocations is not None:
                await node.apply(plan.revocations.pem)
                done["revocations"] = plan.revocations.version
            if plan.policy is not None:
                await node.apply(plan.policy.raw)
                done["policy"] = plan.policy.version
            if appends:
                await _append_replicas(db, appends, verified.certs)
                for row in rows:
                    if row.status == MergeStatus.APPEND.value:
                        row.status = "appended"
                done["entries"] = sum(len(m.entries) for m in appends)
            allowed = await _pull_decider(db, node.data_dir) if any(
                m["status"] == "add" for m in model_rows) else None
            for m in model_rows:
                if m["status"] == "add" and allowed is not None:
                    refusal = allowed(m["name"], m["version"])
                    if refusal is not None:
                        m["status"], m["reason"] = "denied", refusal
                        continue
                    record = await node.host.add(files[(m["name"], m["version"])], m["name"],
                                                 m["version"])
                    m["status"] = "added"
                    done["models"] += 1
                    if record.sha256 != m["sha256"]:  # the temporary file changed under us
                        await node.host.remove(f"{m['name']}:{m['version']}")
                        raise BundleError(f"model {m['name']}:{m['version']} changed while "
                                          "being added; import again")
        finally:
            changed = (done["policy"] is not None or done["revocations"] is not None
                       or done["entries"] > 0 or done["models"] > 0)
            denied = sum(1 for m in model_rows if m["status"] == "denied")
            audit_index = None
            if changed or conflicts or denied:
                audit_index = await node.audit.append(
                    _audit_entry(node.audit, bundle, rows, done, len(conflicts), denied))
    finally:
        for tmp in files.values():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        await db.close()
    problems = [f"{r.origin}: {r.status}: {r.reason}" for r in rows
                if r.status in (MergeStatus.CONFLICT.value, MergeStatus.GAP.value)]
    problems += [f"model {m['name']}:{m['version']}: {m['reason']}" for m in model_rows
                 if m["status"] in ("conflict", "denied")]
    return {
        "bundle": bundle.digest,
        "from": bundle.exporter.node_id,
        "federation": bundle.federation,
        "created": bundle.created,
        "nothing_new": not changed,
        "policy": done["policy"],
        "revocations": done["revocations"],
        "entries": done["entries"],
        "logs": [r.to_json() for r in rows],
        "models": model_rows,
        "problems": problems,
        "audit_index": audit_index,
    }


async def _judge(
    merge: LogMerge,
    own: str,
    damaged: Mapping[str, str],
    held_logs: Mapping[str, LogHead],
    bundle: VerifiedBundle,
    reader: AuditReader,
    db: Store,
) -> _LogRow:
    """One log's outcome. ``plan_merge`` decides from sizes and the held root; here the node
    adds what only it knows: its own log is never merged (a bundle holding more of it, or a
    different one, means this node's log was rolled back or its key signs another log), a
    damaged replica is refused, and a held copy longer than the bundle must still agree with
    the bundle's checkpoint — two different signed trees of one log are a fork."""
    held = held_logs.get(merge.origin, LogHead(0, EMPTY_ROOT)).size
    status = merge.status
    if merge.origin in damaged:
        return _LogRow(merge.origin, MergeStatus.CONFLICT.value, held, 0, damaged[merge.origin])
    log = next(x for x in bundle.logs if x.origin == merge.origin)
    if status is MergeStatus.STALE and log.size > 0:
        if merge.origin == own:
            root = await reader.root(log.size)
        else:
            root = await _replica_root(db, merge.origin, log.size)
        if root != log.checkpoint.root_hash:
            return _LogRow(merge.origin, MergeStatus.CONFLICT.value, held, 0,
                           f"the bundle's checkpoint at size {log.size} differs from the copy "
                           "held here at that size: the log forked (or was rewritten); keep "
                           "both and compare them with `outpost audit verify`")
    if merge.origin == own and status not in (MergeStatus.UP_TO_DATE, MergeStatus.STALE):
        return _LogRow(merge.origin, MergeStatus.CONFLICT.value, held, 0,
                       f"the bundle carries this node's own log up to size {log.size}, which "
                       f"this node's log (size {held}) does not match: was the data directory "
                       "restored from an older backup? Not merged")
    return _LogRow(merge.origin, status.value, held, len(merge.entries), merge.reason)


async def _append_replicas(
    db: Store, appends: Sequence[LogMerge], certs: Mapping[str, bytes]
) -> None:
    """Append the planned entries and checkpoints in one transaction (all logs or none)."""
    conn = db.conn
    try:
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for m in appends:
                async with conn.execute(
                    "SELECT size FROM replica_head WHERE origin = ?", (m.origin,)
                ) as cur:
                    row = await cur.fetchone()
                if (int(row[0]) if row else 0) != m.first:
                    raise BundleError(
                        f"the replica of {m.origin} changed during the import; import again"
                    )
                await conn.executemany(
                    "INSERT INTO replica_entry(origin, seq, entry) VALUES(?, ?, ?)",
                    [(m.origin, m.first + i, e) for i, e in enumerate(m.entries)],
                )
                await conn.execute(
                    "INSERT INTO replica_head(origin, size, note, cert) VALUES(?, ?, ?, ?) "
                    "ON CONFLICT(origin) DO UPDATE SET size=excluded.size, note=excluded.note, "
                    "cert=excluded.cert",
                    (m.origin, m.end, m.checkpoint_note, certs[m.origin.rsplit("/", 1)[-1]]),
                )
            await conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise StoreError(
            f"cannot store the replicas in {db.path} ({exc}); check disk space, or run "
            "`outpost bundle import` again"
        ) from exc


def _receiver_decider(cert_pem: bytes, ca: bytes, crl: RevocationList | None,
                      policy: bytes | None, data_dir: Path) -> Callable[[str, str], str | None]:
    """``model.pull`` as this node decides it for the node of ``cert_pem`` pulling over the
    network (principal = that node's attested attributes, this node's policy)."""
    from federation.policy_engine import NodeAttrs, PolicyEngine
    from node.enrollment import policy_bundle

    receiver = NodeIdentity.from_certificate(cert_pem, ca, now())
    if crl is not None:
        crl.check(receiver)
    engine = PolicyEngine()
    if policy is not None:
        engine.apply(policy_bundle(policy, data_dir))
    them = NodeAttrs(**receiver.attributes())

    def refusal(name: str, version: str) -> str | None:
        decision = engine.decide_model_pull(them, name, version)
        if decision.allowed:
            return None
        return (f"policy does not let {them.node_id} have {name}:{version} (model.pull): "
                f"{'; '.join(decision.reasons) or 'denied'}; left out")

    return refusal


async def _pull_decider(db: Store, data_dir: Path) -> Callable[[str, str], str | None]:
    """``model.pull`` as the network path decides it, for this node taking a model from a
    bundle: principal = this node's attested attributes, under the policy held now (the
    bundle's own, when it brought a newer one). Returns None (allowed) or the refusal."""
    from federation.policy_engine import NodeAttrs, PolicyEngine
    from node.enrollment import policy_bundle

    engine = PolicyEngine()
    held = await get_doc(db, "policy")
    if held is not None:
        engine.apply(policy_bundle(held[1], data_dir))
    ident = load_identity(data_dir)
    if ident is None:
        raise EnrollmentError("this node is not enrolled; run `outpost join CERT` first")
    me = NodeAttrs(**ident.attributes())

    def refusal(name: str, version: str) -> str | None:
        decision = engine.decide_model_pull(me, name, version)
        if decision.allowed:
            return None
        return (f"policy does not let {me.node_id} have {name}:{version} (model.pull, as for a "
                f"network pull): {'; '.join(decision.reasons) or 'denied'}; not added")

    return refusal


def _audit_entry(
    audit: AuditLog, bundle: VerifiedBundle, rows: Sequence[_LogRow], done: Mapping[str, Any],
    conflicts: int, denied: int = 0,
) -> AuditEntry:
    appended = [r for r in rows if r.status == "appended"]
    parts = []
    if done["revocations"] is not None:
        parts.append(f"revocation list v{done['revocations']}")
    if done["policy"] is not None:
        parts.append(f"policy v{done['policy']}")
    parts += [f"{r.origin} +{r.appended}" for r in appended]
    if done["models"]:
        parts.append(f"{done['models']} model(s)")
    if conflicts:
        parts.append(f"{conflicts} log(s) refused as conflicting")
    if denied:
        parts.append(f"{denied} model(s) refused by model.pull policy")
    reason = f"sync bundle from {bundle.exporter.node_id}: " + ", ".join(parts)
    if len(reason) > 1024:
        reason = reason[:1021] + "..."
    return audit.record(
        "audit.replicate",
        caller="admin",
        peer=bundle.exporter.node_id,
        input_sha256=bundle.digest,
        reason=reason,
        detail={
            "via": "sync-bundle",
            "created": bundle.created,
            "logs": len(appended),
            "entries": int(done["entries"]),
            "policy": done["policy"],
            "revocations": done["revocations"],
            "models": int(done["models"]),
            "conflicts": conflicts,
            "models_denied": denied,
        },
    )
