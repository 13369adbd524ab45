"""Federation identity: authority, enrollment, node certificates, revocation lists.

Owns: Ed25519 keys and their PEM forms, the federation authority's self-signed CA
certificate, the signed enrollment request, node certificates carrying the *attested*
attributes (tier, site, jurisdiction, labels), reading a certificate back into a
:class:`NodeIdentity`, and the authority-signed, versioned revocation list (a real
X.509 CRL, so OpenSSL refuses revoked peers during the TLS handshake).

Must never: read or write files, or read the clock — keys and certificates are bytes
in, bytes out, and ``now`` (an aware datetime) is passed in.

Choices, and why
----------------
* **Enrollment request = signed canonical JSON**, not a CSR. It carries nothing but the
  node id, public key and creation time, so there is no subject or extension field for
  a node to "self-declare" attributes in; it is readable when carried by hand, and its
  verification is one Ed25519 check over RFC 8785 bytes with a ``type`` field for
  domain separation (the node key signs other things too).
* **Attributes extension**: OID ``2.25.27744131331343370018985184879819438944.1``, a
  UUID-derived OID (ITU-T X.667, arc 2.25) so no registration is needed and it cannot
  collide; non-critical, so generic TLS stacks ignore it. Value: a DER UTF8String
  holding canonical JSON ``{"jurisdiction", "labels", "site", "tier"}``.
* **Revocation list = X.509 CRL** signed by the authority's Ed25519 key; its CRLNumber is
  the list's version. Revoked certificates are listed by serial (what OpenSSL checks),
  and the revoked node ids ride in a non-critical CRL extension (OID ``...944.2``,
  canonical JSON ``{"node_ids": [...]}``) so :func:`NodeIdentity` checks also catch a
  node whose serials the authority did not record.
* **Validity**: the authority certificate lasts 20 years — its key is kept offline and
  replacing it means re-enrolling every node; the node certificate defaults to 365 days
  and never outlives the authority. Every "not before" / "last update" is back-dated by
  one hour (:data:`CLOCK_SKEW`) so a node whose clock runs a little behind the
  authority's still accepts fresh documents. A CRL's nextUpdate is the authority's
  expiry: freshness of revocation comes from its version and gossip, and an air-gapped
  site must not lock itself out because no newer list could reach it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from federation.canonical import (
    b64decode,
    b64encode,
    canonical_json,
    parse_json_object,
    rfc3339,
    sha256_hex,
)
from federation.errors import BadCertificate, BadSignature, MalformedInput, Revoked, RollbackRefused

__all__ = [
    "AUTHORITY_VALIDITY",
    "CLOCK_SKEW",
    "NODE_ID_PATTERN",
    "OID_NODE_ATTRIBUTES",
    "OID_REVOKED_NODE_IDS",
    "TIERS",
    "Authority",
    "EnrollmentRequest",
    "NodeIdentity",
    "RevocationList",
    "certificate_serial",
    "fingerprint",
    "generate_key",
    "issue_node_certificate",
    "issue_revocation_list",
    "load_authority_certificate",
    "make_enrollment_request",
    "private_key_from_pem",
    "private_key_to_pem",
    "public_key_from_pem",
    "public_key_to_pem",
    "read_enrollment_request",
    "read_revocation_list",
    "validate_federation_name",
    "validate_node_id",
]

_OID_ARC = "2.25.27744131331343370018985184879819438944"
OID_NODE_ATTRIBUTES = x509.ObjectIdentifier(_OID_ARC + ".1")
OID_REVOKED_NODE_IDS = x509.ObjectIdentifier(_OID_ARC + ".2")

TIERS = ("edge", "onprem", "cloud")
CLOCK_SKEW = timedelta(hours=1)
AUTHORITY_VALIDITY = timedelta(days=20 * 365 + 5)
ENROLLMENT_TYPE = "outpost.enrollment-request.v1"
MAX_LABELS = 32
MAX_DOCUMENT_BYTES = 64 * 1024  # enrollment requests are ~300 bytes

# The one node-id rule (``node.config`` uses it for the configured name): one lowercase
# DNS label. Node ids go in the certificate's SAN, in the checkpoint origin (no '+',
# spaces or '/'), in URLs and as the mDNS instance label (one label, at most 63 bytes);
# lowercase only, because DNS would treat "Edge-1" and "edge-1" as one name while we
# would see two nodes. Federation names may be dotted DNS names.
_DNS_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
NODE_ID_PATTERN = _DNS_LABEL
_NODE_ID_RE = re.compile(NODE_ID_PATTERN)
_DNS_NAME_RE = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_SITE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_JURISDICTION_RE = re.compile(r"[A-Z]{2}")
_LABEL_KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,62}")
_LABEL_VALUE_RE = re.compile(r"[A-Za-z0-9._:/@-]{0,128}")


# --- names and attributes -----------------------------------------------------------


def validate_node_id(node_id: str) -> str:
    if not isinstance(node_id, str) or not _NODE_ID_RE.fullmatch(node_id):
        raise MalformedInput(
            f"node id {node_id!r} is invalid; use 1-63 characters a-z, 0-9 and '-', starting "
            "and ending with a letter or digit (one lowercase DNS label)"
        )
    return node_id


def validate_federation_name(name: str) -> str:
    if not isinstance(name, str) or len(name) > 253 or not _DNS_NAME_RE.fullmatch(name):
        raise MalformedInput(
            f"federation name {name!r} is invalid; use a lowercase DNS name "
            "(letters, digits, '-', dots between labels, at most 253 characters)"
        )
    if name == "local":
        raise MalformedInput("'local' is reserved for nodes not yet enrolled; pick another name")
    return name


def _validate_attributes(
    tier: str, site: str, jurisdiction: str, labels: Mapping[str, str]
) -> dict[str, Any]:
    if tier not in TIERS:
        raise MalformedInput(f"tier {tier!r} is invalid; use one of {', '.join(TIERS)}")
    if not isinstance(site, str) or not _SITE_RE.fullmatch(site):
        raise MalformedInput(f"site {site!r} is invalid; use 1-63 letters, digits, '.', '_' or '-'")
    if not isinstance(jurisdiction, str) or not _JURISDICTION_RE.fullmatch(jurisdiction):
        raise MalformedInput(
            f"jurisdiction {jurisdiction!r} is invalid; use an ISO 3166-1 alpha-2 code like DE"
        )
    if not isinstance(labels, Mapping) or len(labels) > MAX_LABELS:
        raise MalformedInput(f"labels must be a mapping of at most {MAX_LABELS} entries")
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL_KEY_RE.fullmatch(key):
            raise MalformedInput(
                f"label key {key!r} is invalid; start with a letter, then letters, digits, '._-'"
            )
        if not isinstance(value, str) or not _LABEL_VALUE_RE.fullmatch(value):
            raise MalformedInput(
                f"label {key}={value!r} is invalid; values use letters, digits and '._:/@-'"
            )
    return {"tier": tier, "site": site, "jurisdiction": jurisdiction, "labels": dict(labels)}


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError(
            "pass an aware datetime (e.g. datetime.now(UTC)); naive times are ambiguous"
        )
    return now


# --- keys ---------------------------------------------------------------------------


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_to_pem(key: Ed25519PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM; the caller stores it with file mode 0600."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_key_from_pem(pem: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise MalformedInput(f"not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise MalformedInput("private key is not Ed25519; create node keys with generate_key()")
    return key


def public_key_to_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_key_from_pem(pem: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise MalformedInput(f"not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise MalformedInput("public key is not Ed25519")
    return key


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(key: Ed25519PublicKey) -> str:
    """Hex SHA-256 of the raw 32-byte public key (what DNS-SD TXT and the CLI show)."""
    return sha256_hex(_raw(key))


# --- DER helpers for the custom extensions ------------------------------------------


def _der_utf8(text: bytes) -> bytes:
    n = len(text)
    if n < 0x80:
        length = bytes([n])
    else:
        octets = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(octets)]) + octets
    return b"\x0c" + length + text


def _der_utf8_read(der: bytes, what: str) -> bytes:
    if len(der) < 2 or der[0] != 0x0C:
        raise MalformedInput(f"{what} is not a DER UTF8String")
    n, pos = der[1], 2
    if n & 0x80:
        width = n & 0x7F
        if width == 0 or width > 4 or len(der) < 2 + width:
            raise MalformedInput(f"{what} has a bad DER length")
        n, pos = int.from_bytes(der[2 : 2 + width], "big"), 2 + width
    if len(der) != pos + n:
        raise MalformedInput(f"{what} has a DER length that does not match its size")
    return der[pos:]


def _json_extension(ext_value: x509.ExtensionType, what: str) -> dict[str, Any]:
    if not isinstance(ext_value, x509.UnrecognizedExtension):
        raise MalformedInput(f"{what} has an unexpected type")
    return parse_json_object(_der_utf8_read(ext_value.value, what), what)


# --- authority ----------------------------------------------------------------------


def _load_cert(data: bytes, what: str) -> x509.Certificate:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise MalformedInput(f"{what} is not a PEM or DER X.509 certificate ({exc})") from exc


def _common_name(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attrs) != 1 or not isinstance(attrs[0].value, str):
        raise BadCertificate("certificate name must have exactly one common name")
    return attrs[0].value


def load_authority_certificate(pem: bytes) -> x509.Certificate:
    """Parse and sanity-check a federation authority certificate (CA, Ed25519, self-signed)."""
    cert = _load_cert(pem, "authority certificate")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise BadCertificate(
            "authority certificate is not a CA; use the file from 'federation init'"
        )
    if not isinstance(cert.public_key(), Ed25519PublicKey):
        raise BadCertificate("authority certificate key is not Ed25519")
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise BadCertificate("authority certificate is not validly self-signed") from exc
    return cert


@dataclass(frozen=True)
class Authority:
    """The federation authority: its offline key and self-signed CA certificate.

    Iterates as ``(key, cert_pem)`` so ``key, cert_pem = Authority.create(...)`` works.
    """

    key: Ed25519PrivateKey
    cert_pem: bytes

    def __iter__(self) -> Iterator[Any]:
        return iter((self.key, self.cert_pem))

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def name(self) -> str:
        return _common_name(self.certificate.subject)

    @classmethod
    def create(cls, name: str, now: datetime) -> Authority:
        """A new authority key and a self-signed CA certificate named ``name`` (20 years)."""
        validate_federation_name(name)
        now = _aware(now)
        key = generate_key()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, name),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "outpost federation"),
            ]
        )
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + AUTHORITY_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, None)
        )
        return cls(key, cert.public_bytes(serialization.Encoding.PEM))

    @classmethod
    def load(cls, key_pem: bytes, cert_pem: bytes) -> Authority:
        """Load an authority from its PEM files, checking that key and certificate match."""
        key = private_key_from_pem(key_pem)
        cert = load_authority_certificate(cert_pem)
        public = cert.public_key()
        if not isinstance(public, Ed25519PublicKey) or _raw(public) != _raw(key.public_key()):
            raise MalformedInput("authority key does not match the authority certificate")
        return cls(key, cert_pem)


# --- enrollment ---------------------------------------------------------------------


@dataclass(frozen=True)
class EnrollmentRequest:
    """A node's verified request to be enrolled: who it says it is, and its key."""

    node_id: str
    public_key: Ed25519PublicKey
    created: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)


def make_enrollment_request(node_id: str, key: Ed25519PrivateKey, now: datetime) -> bytes:
    """``{"request": {...}, "signature": b64}`` as canonical JSON, signed by the node key."""
    validate_node_id(node_id)
    request = {
        "type": ENROLLMENT_TYPE,
        "node_id": node_id,
        "public_key": b64encode(_raw(key.public_key())),
        "created": rfc3339(_aware(now)),
    }
    signature = key.sign(canonical_json(request))
    return canonical_json({"request": request, "signature": b64encode(signature)})


def read_enrollment_request(data: bytes) -> EnrollmentRequest:
    """Parse an enrollment request and verify its self-signature."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise MalformedInput("enrollment request is too large; use 'outpost join request' output")
    doc = parse_json_object(data, "enrollment request")
    request = doc.get("request")
    if set(doc) != {"request", "signature"} or not isinstance(request, dict):
        raise MalformedInput('enrollment request must be {"request": {...}, "signature": "..."}')
    if set(request) != {"type", "node_id", "public_key", "created"}:
        raise MalformedInput("enrollment request needs exactly type, node_id, public_key, created")
    if request["type"] != ENROLLMENT_TYPE:
        raise MalformedInput(f"not an enrollment request (type {request['type']!r})")
    node_id = validate_node_id(request["node_id"])
    if not isinstance(request["created"], str):
        raise MalformedInput("enrollment request 'created' must be an RFC 3339 string")
    raw = b64decode(request["public_key"], length=32, what="enrollment public key")
    public = Ed25519PublicKey.from_public_bytes(raw)
    signature = b64decode(doc["signature"], length=64, what="enrollment signature")
    try:
        public.verify(signature, canonical_json(request))
    except InvalidSignature as exc:
        raise BadSignature(
            "enrollment request signature does not verify; it was altered after "
            "'outpost join request' — make a new request on the node"
        ) from exc
    return EnrollmentRequest(node_id, public, request["created"])


def issue_node_certificate(
    authority_key: Ed25519PrivateKey,
    authority_cert_pem: bytes,
    request: EnrollmentRequest | bytes,
    tier: str,
    site: str,
    jurisdiction: str,
    labels: Mapping[str, str],
    now: datetime,
    validity_days: int = 365,
) -> bytes:
    """Sign a node certificate binding the request's key and node id to attested attributes."""
    now = _aware(now)
    if isinstance(request, bytes):
        request = read_enrollment_request(request)
    attributes = _validate_attributes(tier, site, jurisdiction, labels)
    if not 1 <= validity_days <= 3650:
        raise ValueError(f"validity_days={validity_days} is out of range; use 1..3650")
    ca = load_authority_certificate(authority_cert_pem)
    ca_public = ca.public_key()
    if not isinstance(ca_public, Ed25519PublicKey) or _raw(ca_public) != _raw(
        authority_key.public_key()
    ):
        raise ValueError("authority key does not match the authority certificate")
    federation = _common_name(ca.subject)
    not_after = min(now + timedelta(days=validity_days), ca.not_valid_after_utc)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, request.node_id),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject)
        .public_key(request.public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(request.node_id),
                    x509.UniformResourceIdentifier(f"outpost://{federation}/{request.node_id}"),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(request.public_key), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
        )
        .add_extension(
            x509.UnrecognizedExtension(OID_NODE_ATTRIBUTES, _der_utf8(canonical_json(attributes))),
            critical=False,
        )
        .sign(authority_key, None)
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def certificate_serial(cert_pem: bytes) -> int:
    """The serial number of a certificate (what a revocation list lists)."""
    return _load_cert(cert_pem, "certificate").serial_number


# --- reading a node certificate -----------------------------------------------------


@dataclass(frozen=True)
class NodeIdentity:
    """Who a peer is, as attested by the federation authority in its certificate."""

    node_id: str
    federation: str
    tier: str
    site: str
    jurisdiction: str
    labels: Mapping[str, str] = field(hash=False)
    fingerprint: str
    serial: int
    not_valid_after: datetime
    public_key: Ed25519PublicKey = field(hash=False, compare=False, repr=False)

    @property
    def origin(self) -> str:
        """This node's audit log origin / checkpoint key name."""
        return f"outpost/{self.federation}/{self.node_id}"

    def attributes(self) -> dict[str, Any]:
        """The attested attributes as the policy entity model uses them."""
        return {
            "node_id": self.node_id,
            "tier": self.tier,
            "site": self.site,
            "jurisdiction": self.jurisdiction,
            "labels": dict(self.labels),
        }

    @classmethod
    def from_certificate(
        cls, cert: bytes, authority_cert_pem: bytes, now: datetime
    ) -> NodeIdentity:
        """Verify a node certificate (PEM or DER) against the authority and read it.

        Raises BadCertificate naming the failed check: issuer/signature, validity at
        ``now``, CA flag, key usage, names or the attributes extension.
        """
        now = _aware(now)
        leaf = _load_cert(cert, "node certificate")
        ca = load_authority_certificate(authority_cert_pem)
        federation = _common_name(ca.subject)
        if not ca.not_valid_before_utc <= now <= ca.not_valid_after_utc:
            raise BadCertificate(
                f"the authority certificate of {federation!r} is not valid at {rfc3339(now)}; "
                "check the clock or renew the federation"
            )
        try:
            leaf.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise BadCertificate(
                f"certificate was not issued by the federation authority {federation!r}; "
                "enroll the node with this federation ('outpost federation enroll')"
            ) from exc
        if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
            raise BadCertificate(
                f"node certificate is not valid at {rfc3339(now)} (valid "
                f"{rfc3339(leaf.not_valid_before_utc)} to {rfc3339(leaf.not_valid_after_utc)}); "
                "re-enroll the node or fix its clock"
            )
        public = leaf.public_key()
        if not isinstance(public, Ed25519PublicKey):
            raise BadCertificate("node certificate key is not Ed25519")
        ext = leaf.extensions
        try:
            bc = ext.get_extension_for_class(x509.BasicConstraints).value
            eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
            san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
            attrs_ext = ext.get_extension_for_oid(OID_NODE_ATTRIBUTES).value
        except x509.ExtensionNotFound as exc:
            raise BadCertificate(
                f"node certificate lacks a required extension ({exc}); issue it with "
                "'outpost federation enroll'"
            ) from exc
        if bc.ca:
            raise BadCertificate("a CA certificate cannot be used as a node certificate")
        if not {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(eku):
            raise BadCertificate("node certificate must allow both TLS server and client auth")
        node_id = _common_name(leaf.subject)
        dns = san.get_values_for_type(x509.DNSName)
        if dns != [node_id]:
            raise BadCertificate("node certificate's DNS name does not match its node id")
        try:
            validate_node_id(node_id)
            raw = _json_extension(attrs_ext, "node attributes extension")
            if set(raw) != {"tier", "site", "jurisdiction", "labels"}:
                raise MalformedInput("attributes must be exactly tier, site, jurisdiction, labels")
            attributes = _validate_attributes(
                raw["tier"], raw["site"], raw["jurisdiction"], raw["labels"]
            )
        except MalformedInput as exc:
            raise BadCertificate(f"node certificate attributes are invalid: {exc}") from exc
        return cls(
            node_id=node_id,
            federation=federation,
            tier=attributes["tier"],
            site=attributes["site"],
            jurisdiction=attributes["jurisdiction"],
            labels=attributes["labels"],
            fingerprint=fingerprint(public),
            serial=leaf.serial_number,
            not_valid_after=leaf.not_valid_after_utc,
            public_key=public,
        )


# --- revocation ---------------------------------------------------------------------


@dataclass(frozen=True)
class RevocationList:
    """A verified, versioned revocation list (the CRL's CRLNumber is the version)."""

    version: int
    serials: frozenset[int]
    node_ids: frozenset[str]
    issued: datetime
    pem: bytes = field(repr=False)

    def is_revoked(self, identity: NodeIdentity) -> bool:
        return identity.serial in self.serials or identity.node_id in self.node_ids

    def check(self, identity: NodeIdentity) -> None:
        """Raise Revoked if ``identity`` is on this list."""
        if self.is_revoked(identity):
            raise Revoked(
                f"node {identity.node_id} (serial {identity.serial:x}) is revoked by "
                f"revocation list v{self.version}; re-enroll it if that was a mistake"
            )

    def accepts_update(self, new: RevocationList) -> None:
        """Return if ``new`` may replace this list; raise RollbackRefused otherwise."""
        if new.version <= self.version:
            raise RollbackRefused(
                f"revocation list v{new.version} is not newer than the held v{self.version}; "
                "issue a new list with a higher version"
            )


def issue_revocation_list(
    authority: Authority,
    revoked: Iterable[tuple[str, int | None]],
    version: int,
    now: datetime,
) -> bytes:
    """A CRL (PEM) listing ``(node_id, serial or None)`` pairs, with CRLNumber ``version``.

    Serials let OpenSSL refuse the certificate in the handshake; node ids let
    :meth:`RevocationList.check` refuse any certificate of that node after it.
    """
    now = _aware(now)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 2**63:
        raise ValueError(f"revocation list version must be an integer >= 1, got {version!r}")
    ca = load_authority_certificate(authority.cert_pem)
    node_ids: set[str] = set()
    serials: set[int] = set()
    for node_id, serial in revoked:
        node_ids.add(validate_node_id(node_id))
        if serial is not None:
            serials.add(serial)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now - CLOCK_SKEW)
        .next_update(ca.not_valid_after_utc)
        .add_extension(x509.CRLNumber(version), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.UnrecognizedExtension(
                OID_REVOKED_NODE_IDS, _der_utf8(canonical_json({"node_ids": sorted(node_ids)}))
            ),
            critical=False,
        )
    )
    for serial in sorted(serials):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - CLOCK_SKEW)
            .build()
        )
    crl = builder.sign(authority.key, None)
    return crl.public_bytes(serialization.Encoding.PEM)


def read_revocation_list(pem: bytes, authority_cert_pem: bytes) -> RevocationList:
    """Parse a CRL and verify it is signed by the federation authority."""
    try:
        crl = x509.load_pem_x509_crl(pem)
    except ValueError as exc:
        raise MalformedInput(f"not a PEM revocation list ({exc})") from exc
    ca = load_authority_certificate(authority_cert_pem)
    public = ca.public_key()
    if crl.issuer != ca.subject or not isinstance(public, Ed25519PublicKey):
        raise BadSignature("revocation list is not from this federation's authority")
    if not crl.is_signature_valid(public):
        raise BadSignature(
            "revocation list signature does not verify; get it again from the authority"
        )
    try:
        version = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        ids_ext = crl.extensions.get_extension_for_oid(OID_REVOKED_NODE_IDS).value
    except x509.ExtensionNotFound as exc:
        raise MalformedInput(
            f"revocation list lacks {exc}; issue it with 'outpost federation revoke'"
        ) from exc
    ids = _json_extension(ids_ext, "revoked node ids extension").get("node_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise MalformedInput('revoked node ids extension must be {"node_ids": [str, ...]}')
    return RevocationList(
        version=version,
        serials=frozenset(r.serial_number for r in crl),
        node_ids=frozenset(ids),
        issued=crl.last_update_utc,
        pem=pem,
    )
