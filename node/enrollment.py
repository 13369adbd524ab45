"""The node's membership in a federation, on disk: its certificate and the authority's.

``<data-dir>/node.crt`` and ``<data-dir>/federation.crt`` are written by ``outpost join`` after
checking that the certificate is the authority's, is for this node's id and this node's key.
Authority-signed documents (revocation lists and policy bundles) are verified, checked
against rollback and stored by :func:`apply_document`; callers go through
``node.documents.apply_signed``, which also records the change in the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation import identity
from federation.errors import FederationError, RollbackRefused
from federation.identity import NodeIdentity, RevocationList
from node.durable import write_atomic
from node.errors import OperatorError
from node.store import Store, get_doc, put_doc

NODE_CERT = "node.crt"
AUTHORITY_CERT = "federation.crt"
_PEM_CERT = b"-----BEGIN CERTIFICATE-----"
_PEM_CRL = b"-----BEGIN X509 CRL-----"


class EnrollmentError(OperatorError):
    """Enrollment files are missing, foreign or inconsistent; the message names the fix."""


def now() -> datetime:
    return datetime.now(UTC)


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def split_chain(pem: bytes) -> list[bytes]:
    parts = pem.split(_PEM_CERT)
    return [_PEM_CERT + p for p in parts[1:]]


def load_identity(data_dir: Path) -> NodeIdentity | None:
    """This node's attested identity, or None before ``outpost join``."""
    cert_path = data_dir / NODE_CERT
    if not cert_path.exists():
        return None
    try:
        return NodeIdentity.from_certificate(
            cert_path.read_bytes(), (data_dir / AUTHORITY_CERT).read_bytes(), now()
        )
    except (FederationError, FileNotFoundError) as exc:
        raise EnrollmentError(
            f"the node certificate in {data_dir} does not verify ({exc}); if its dates are "
            f"right, this machine's clock is not (it says {now():%Y-%m-%d %H:%M} UTC): fix "
            "the clock; otherwise re-enroll with `outpost join request` and `outpost join CERT`"
        ) from exc


def authority_pem(data_dir: Path) -> bytes | None:
    path = data_dir / AUTHORITY_CERT
    return path.read_bytes() if path.exists() else None


def install_certificate(data_dir: Path, chain: bytes, node_id: str,
                        key: Ed25519PrivateKey) -> NodeIdentity:
    """Check and install the output of ``outpost federation enroll``."""
    certs = split_chain(chain)
    if len(certs) < 2:
        raise EnrollmentError(
            "the file must hold the node certificate followed by the authority certificate, "
            "as written by `outpost federation enroll`"
        )
    node_pem, ca_pem = certs[0], certs[-1]
    try:
        ident = NodeIdentity.from_certificate(node_pem, ca_pem, now())
    except FederationError as exc:
        raise EnrollmentError(f"certificate refused: {exc}") from exc
    if ident.node_id != node_id:
        raise EnrollmentError(
            f"certificate is for node {ident.node_id!r}, but this node is {node_id!r}; use the "
            "certificate issued for this node's request"
        )
    if identity.fingerprint(key.public_key()) != ident.fingerprint:
        raise EnrollmentError(
            "certificate is for another key than this node's; enroll this node's own request "
            "(`outpost join request`)"
        )
    existing = authority_pem(data_dir)
    if existing is not None and existing != ca_pem:
        raise EnrollmentError(
            "this node already belongs to another federation authority; a node cannot move "
            "between federations — initialise a new data directory instead"
        )
    write_atomic(data_dir / AUTHORITY_CERT, ca_pem)
    write_atomic(data_dir / NODE_CERT, node_pem)
    return ident


@dataclass(frozen=True)
class Applied:
    kind: str
    version: int
    summary: str
    unchanged: bool = False
    """The very document was already in force: nothing stored, audited or spread."""

    def audit_fields(self) -> dict[str, object]:
        """The audit entry recording this change (kind ``policy.apply``/``revocation.apply``)."""
        fields: dict[str, object] = {"caller": "admin", "reason": self.summary}
        if self.kind == "policy":
            fields["policy_version"] = self.version
        else:
            fields["detail"] = {"version": self.version}
        return fields

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "version": self.version, "summary": self.summary,
                "unchanged": self.unchanged}


def policy_bundle(body: bytes, data_dir: Path) -> Any:
    """Verify a stored policy bundle against this node's authority (a ``PolicyBundle``)."""
    from federation.policy import read_bundle

    ca = authority_pem(data_dir)
    if ca is None:
        raise EnrollmentError("not enrolled: no authority certificate to check policy against")
    authority = identity.load_authority_certificate(ca)
    return read_bundle(body, authority.public_key(),  # type: ignore[arg-type]
                       federation=identity._common_name(authority.subject))


async def revocations(store: Store, data_dir: Path) -> RevocationList | None:
    held = await get_doc(store, "revocation")
    ca = authority_pem(data_dir)
    if held is None or ca is None:
        return None
    return identity.read_revocation_list(held[1], ca)


async def apply_document(store: Store, data_dir: Path, body: bytes) -> Applied:
    """Verify an authority-signed document, refuse rollback, store it. Raises FederationError
    or EnrollmentError with the reason; changes nothing on refusal."""
    ca = authority_pem(data_dir)
    if ca is None:
        raise EnrollmentError(
            "this node is not enrolled, so it cannot check authority-signed documents; run "
            "`outpost join CERT` first"
        )
    if _PEM_CRL in body:
        new = identity.read_revocation_list(body, ca)
        same = await get_doc(store, "revocation")
        if same is not None and same == (new.version, body):  # applying twice: a no-op
            return Applied("revocation", new.version,
                           f"revocation list v{new.version} is already in force; nothing "
                           "changed", unchanged=True)
        held = await revocations(store, data_dir)
        if held is not None:
            held.accepts_update(new)
        await put_doc(store, "revocation", new.version, body)
        revoked = ", ".join(sorted(new.node_ids)) or "nobody"
        return Applied("revocation", new.version, f"revocation list v{new.version}: {revoked}")
    from federation.policy import read_bundle

    authority = identity.load_authority_certificate(ca)
    bundle = read_bundle(body, authority.public_key(),  # type: ignore[arg-type]
                         federation=identity._common_name(authority.subject))
    held_doc = await get_doc(store, "policy")
    if held_doc is not None and held_doc == (bundle.version, body):  # applying twice: a no-op
        return Applied("policy", bundle.version, f"policy bundle v{bundle.version} is already "
                       "in force; nothing changed", unchanged=True)
    if held_doc is not None and bundle.version <= held_doc[0]:
        raise RollbackRefused(
            f"bundle version {bundle.version} is not newer than the version {held_doc[0]} in "
            f"force; sign it with --version {held_doc[0] + 1} or higher"
        )
    await put_doc(store, "policy", bundle.version, body)
    return Applied("policy", bundle.version, f"policy bundle v{bundle.version}")
