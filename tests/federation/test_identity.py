"""Enrollment, node certificates and revocation lists, with no sockets.

Invariant: a NodeIdentity comes only out of a certificate that this federation's
authority signed, that is valid at ``now`` and that carries well-formed attested
attributes; everything else is BadCertificate with a message that names the fix.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.errors import (
    BadCertificate,
    BadSignature,
    MalformedInput,
    Revoked,
    RollbackRefused,
)
from federation.identity import (
    OID_NODE_ATTRIBUTES,
    Authority,
    NodeIdentity,
    certificate_serial,
    fingerprint,
    generate_key,
    issue_node_certificate,
    issue_revocation_list,
    make_enrollment_request,
    private_key_from_pem,
    private_key_to_pem,
    public_key_from_pem,
    public_key_to_pem,
    read_enrollment_request,
    read_revocation_list,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def authority() -> Authority:
    return Authority.create("acme", NOW - timedelta(days=1))


def enroll(
    authority: Authority,
    node_id: str = "node-a",
    now: datetime = NOW,
    *,
    tier: str = "edge",
    site: str = "berlin-1",
    jurisdiction: str = "DE",
    labels: dict[str, str] | None = None,
    validity_days: int = 365,
) -> tuple[Ed25519PrivateKey, bytes]:
    key = generate_key()
    request = read_enrollment_request(make_enrollment_request(node_id, key, now))
    cert = issue_node_certificate(
        authority.key,
        authority.cert_pem,
        request,
        tier,
        site,
        jurisdiction,
        {"gpu": "none"} if labels is None else labels,
        now,
        validity_days,
    )
    return key, cert


def test_authority_certificate(authority: Authority) -> None:
    key, pem = authority  # unpacks as (key, cert_pem)
    cert = x509.load_pem_x509_certificate(pem)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert bc.critical and bc.value.ca
    assert ku.key_cert_sign and ku.crl_sign
    assert authority.name == "acme"
    assert cert.not_valid_after_utc - cert.not_valid_before_utc > timedelta(days=19 * 365)
    loaded = Authority.load(private_key_to_pem(key), pem)
    assert loaded.cert_pem == pem
    with pytest.raises(MalformedInput):
        Authority.load(private_key_to_pem(generate_key()), pem)


def test_authority_name_rules() -> None:
    with pytest.raises(MalformedInput):
        Authority.create("local", NOW)
    with pytest.raises(MalformedInput):
        Authority.create("Acme Corp", NOW)


def test_key_pem_round_trips() -> None:
    key = generate_key()
    assert private_key_from_pem(private_key_to_pem(key)).public_key() == key.public_key()
    assert public_key_from_pem(public_key_to_pem(key.public_key())) == key.public_key()
    assert len(fingerprint(key.public_key())) == 64
    with pytest.raises(MalformedInput):
        private_key_from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


def test_enrollment_request_round_trip() -> None:
    key = generate_key()
    data = make_enrollment_request("edge-7-site-b", key, NOW)
    request = read_enrollment_request(data)
    assert request.node_id == "edge-7-site-b"
    assert request.fingerprint == fingerprint(key.public_key())
    assert request.created == "2025-06-01T12:00:00.000000Z"
    assert json.loads(data)["request"]["type"] == "outpost.enrollment-request.v1"


def test_altered_enrollment_request_is_refused() -> None:
    data = make_enrollment_request("node-a", generate_key(), NOW)
    with pytest.raises(BadSignature):
        read_enrollment_request(data.replace(b"node-a", b"node-b"))
    doc = json.loads(data)
    doc["request"]["tier"] = "cloud"  # a node may not self-declare attributes
    with pytest.raises(MalformedInput):
        read_enrollment_request(json.dumps(doc).encode())
    with pytest.raises(MalformedInput):
        read_enrollment_request(b"not json")


@pytest.mark.parametrize("node_id", ["Node-A", "node a", "node+a", "node/a", "-node", "", "a" * 64])
def test_bad_node_ids_are_refused(node_id: str) -> None:
    with pytest.raises(MalformedInput):
        make_enrollment_request(node_id, generate_key(), NOW)


def test_certificate_round_trip(authority: Authority) -> None:
    key, cert = enroll(authority, labels={"gpu": "a100", "team": "vision"}, tier="cloud")
    ident = NodeIdentity.from_certificate(cert, authority.cert_pem, NOW)
    assert ident.node_id == "node-a" and ident.federation == "acme"
    assert (ident.tier, ident.site, ident.jurisdiction) == ("cloud", "berlin-1", "DE")
    assert dict(ident.labels) == {"gpu": "a100", "team": "vision"}
    assert ident.fingerprint == fingerprint(key.public_key())
    assert ident.serial == certificate_serial(cert)
    assert ident.origin == "outpost/acme/node-a"
    assert ident.attributes()["labels"] == {"gpu": "a100", "team": "vision"}
    parsed = x509.load_pem_x509_certificate(cert)
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["outpost://acme/node-a"]
    ext = parsed.extensions.get_extension_for_oid(OID_NODE_ATTRIBUTES)
    assert not ext.critical
    der = parsed.public_bytes(serialization.Encoding.DER)
    assert NodeIdentity.from_certificate(der, authority.cert_pem, NOW) == ident


@pytest.mark.parametrize(
    "kw",
    [
        {"tier": "fog"},
        {"jurisdiction": "de"},
        {"jurisdiction": "DEU"},
        {"site": "berlin 1"},
        {"site": ""},
        {"labels": {"bad key": "x"}},
        {"labels": {"k": "has space"}},
        {"labels": {f"k{i}": "v" for i in range(40)}},
    ],
)
def test_attribute_validation(authority: Authority, kw: dict[str, Any]) -> None:
    with pytest.raises(MalformedInput):
        enroll(authority, **kw)


def test_certificate_from_another_authority_is_refused(authority: Authority) -> None:
    other = Authority.create("acme", NOW - timedelta(days=1))  # same name, other key
    _, cert = enroll(other)
    with pytest.raises(BadCertificate, match="not issued by the federation authority"):
        NodeIdentity.from_certificate(cert, authority.cert_pem, NOW)


def test_expired_and_not_yet_valid_certificates_are_refused(authority: Authority) -> None:
    _, cert = enroll(authority, validity_days=30)
    NodeIdentity.from_certificate(cert, authority.cert_pem, NOW + timedelta(days=29))
    with pytest.raises(BadCertificate, match="not valid at"):
        NodeIdentity.from_certificate(cert, authority.cert_pem, NOW + timedelta(days=31))
    with pytest.raises(BadCertificate, match="not valid at"):
        NodeIdentity.from_certificate(cert, authority.cert_pem, NOW - timedelta(hours=2))


def test_self_signed_impostor_is_refused(authority: Authority) -> None:
    impostor = Authority.create("acme", NOW)
    with pytest.raises(BadCertificate):
        NodeIdentity.from_certificate(impostor.cert_pem, authority.cert_pem, NOW)


def test_authority_certificate_is_not_a_node_certificate(authority: Authority) -> None:
    with pytest.raises(BadCertificate):
        NodeIdentity.from_certificate(authority.cert_pem, authority.cert_pem, NOW)


def test_certificate_without_attributes_is_refused(authority: Authority) -> None:
    key = generate_key()
    ca = x509.load_pem_x509_certificate(authority.cert_pem)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "node-a")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .sign(authority.key, None)
        .public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(BadCertificate, match="lacks a required extension"):
        NodeIdentity.from_certificate(cert, authority.cert_pem, NOW)


def test_revocation_list_round_trip_and_rollback(authority: Authority) -> None:
    _, cert_b = enroll(authority, "node-b")
    _, cert_c = enroll(authority, "node-c")
    crl1 = read_revocation_list(
        issue_revocation_list(authority, [("node-b", certificate_serial(cert_b))], 1, NOW),
        authority.cert_pem,
    )
    assert crl1.version == 1 and crl1.node_ids == {"node-b"}
    assert crl1.serials == {certificate_serial(cert_b)}
    ident_b = NodeIdentity.from_certificate(cert_b, authority.cert_pem, NOW)
    ident_c = NodeIdentity.from_certificate(cert_c, authority.cert_pem, NOW)
    with pytest.raises(Revoked):
        crl1.check(ident_b)
    crl1.check(ident_c)

    crl2 = read_revocation_list(
        issue_revocation_list(authority, [("node-b", None), ("node-c", None)], 2, NOW),
        authority.cert_pem,
    )
    assert crl2.serials == frozenset() and crl2.is_revoked(ident_c)  # by node id alone
    crl1.accepts_update(crl2)
    with pytest.raises(RollbackRefused):
        crl2.accepts_update(crl1)
    with pytest.raises(RollbackRefused):
        crl2.accepts_update(crl2)


def test_revocation_list_from_another_authority_is_refused(authority: Authority) -> None:
    other = Authority.create("acme", NOW)
    with pytest.raises(BadSignature):
        read_revocation_list(issue_revocation_list(other, [], 5, NOW), authority.cert_pem)
    with pytest.raises(MalformedInput):
        read_revocation_list(b"garbage", authority.cert_pem)
