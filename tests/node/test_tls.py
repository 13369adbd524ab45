"""Real mutual-TLS handshakes between enrolled nodes over a loopback socket pair.

Invariant: a handshake completes only when both certificates chain to the federation
authority, are within their validity, and (with the revocation list loaded) are not
revoked; peer_identity then yields the peer's attested identity.
"""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from federation.errors import BadCertificate, Revoked
from federation.identity import (
    Authority,
    NodeIdentity,
    certificate_serial,
    generate_key,
    issue_node_certificate,
    issue_revocation_list,
    make_enrollment_request,
    private_key_to_pem,
    read_enrollment_request,
    read_revocation_list,
)
from node.tls import client_context, peer_identity, server_context

NOW = datetime.now(UTC)  # OpenSSL checks validity against the real clock
IO_TIMEOUT = 20  # a safety net against a hung handshake, not an assertion


@dataclass
class Node:
    cert: bytes
    key: bytes


def enroll(authority: Authority, node_id: str, when: datetime = NOW, days: int = 365) -> Node:
    key = generate_key()
    request = read_enrollment_request(make_enrollment_request(node_id, key, when))
    cert = issue_node_certificate(
        authority.key, authority.cert_pem, request, "onprem", "lab", "FR", {}, when, days
    )
    return Node(cert, private_key_to_pem(key))


@pytest.fixture(scope="module")
def fed() -> Authority:
    return Authority.create("acme", NOW)


@dataclass
class Outcome:
    server: NodeIdentity | Exception
    client: NodeIdentity | Exception
    version: str | None = None


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, ca: bytes) -> Outcome:
    """Run both ends; each side's result is the peer identity it saw, or its exception.

    In TLS 1.3 the client finishes its handshake before the server has checked the
    client's certificate, so the client also reads one byte: a refusal shows there.
    """
    s_sock, c_sock = socket.socketpair()
    s_sock.settimeout(IO_TIMEOUT)
    c_sock.settimeout(IO_TIMEOUT)
    result: dict[str, object] = {}

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(s_sock, server_side=True) as tls:
                result["server"] = peer_identity(tls, ca, datetime.now(UTC))
                result["version"] = tls.version()
                tls.sendall(b"!")
        except Exception as exc:
            result["server"] = exc
        finally:
            s_sock.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(c_sock) as tls:
            ident = peer_identity(tls, ca, datetime.now(UTC))
            if tls.recv(1) != b"!":
                raise ConnectionError("server closed the connection")
            result["client"] = ident
    except Exception as exc:
        result["client"] = exc
    finally:
        c_sock.close()
        thread.join()
    return Outcome(result["server"], result["client"], result.get("version"))  # type: ignore[arg-type]


def contexts(
    server: Node, client: Node, ca: bytes, crl: bytes | None = None
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    return server_context(server.cert, server.key, ca, crl), client_context(
        client.cert, client.key, ca, crl
    )


def test_two_enrolled_nodes_complete_a_mutual_handshake(fed: Authority) -> None:
    a, b = enroll(fed, "node-a"), enroll(fed, "node-b")
    out = handshake(*contexts(a, b, fed.cert_pem), fed.cert_pem)
    assert isinstance(out.server, NodeIdentity) and out.server.node_id == "node-b"
    assert isinstance(out.client, NodeIdentity) and out.client.node_id == "node-a"
    assert out.client.tier == "onprem" and out.client.jurisdiction == "FR"
    assert out.version == "TLSv1.3"


def test_node_of_another_federation_is_refused(fed: Authority) -> None:
    other = Authority.create("acme", NOW)  # even with the same name
    a, stranger = enroll(fed, "node-a"), enroll(other, "node-x")
    # The stranger dials in, trusting our authority so that only our check can fail:
    # our server refuses its certificate.
    out = handshake(
        server_context(a.cert, a.key, fed.cert_pem),
        client_context(stranger.cert, stranger.key, fed.cert_pem),
        fed.cert_pem,
    )
    assert isinstance(out.server, ssl.SSLCertVerificationError)
    assert isinstance(out.client, Exception)
    # We dial the stranger (which would accept us): our client refuses its certificate.
    out = handshake(
        server_context(stranger.cert, stranger.key, fed.cert_pem),
        client_context(a.cert, a.key, fed.cert_pem),
        fed.cert_pem,
    )
    assert isinstance(out.client, ssl.SSLCertVerificationError)
    assert not isinstance(out.server, NodeIdentity)


def test_expired_certificate_is_refused(fed: Authority) -> None:
    a = enroll(fed, "node-a")
    old = enroll(fed, "node-old", when=NOW - timedelta(days=10), days=2)
    out = handshake(*contexts(a, old, fed.cert_pem), fed.cert_pem)
    assert isinstance(out.server, ssl.SSLCertVerificationError)
    assert "expired" in str(out.server)
    out = handshake(*contexts(old, a, fed.cert_pem), fed.cert_pem)
    assert isinstance(out.client, ssl.SSLCertVerificationError)


def self_signed_copy(node: Node) -> Node:
    """An impostor: the same node id and attributes, but signed by its own key."""
    real = x509.load_pem_x509_certificate(node.cert)
    key = serialization.load_pem_private_key(node.key, None)
    builder = (
        x509.CertificateBuilder()
        .subject_name(real.subject)
        .issuer_name(real.subject)
        .public_key(real.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(real.not_valid_before_utc)
        .not_valid_after(real.not_valid_after_utc)
    )
    for ext in real.extensions:
        if not isinstance(ext.value, x509.AuthorityKeyIdentifier):
            builder = builder.add_extension(ext.value, ext.critical)
    cert = builder.sign(key, None)  # type: ignore[arg-type]
    return Node(cert.public_bytes(serialization.Encoding.PEM), node.key)


def test_self_signed_impostor_is_refused(fed: Authority) -> None:
    a = enroll(fed, "node-a")
    impostor = self_signed_copy(enroll(fed, "node-b"))
    out = handshake(*contexts(a, impostor, fed.cert_pem), fed.cert_pem)
    assert isinstance(out.server, ssl.SSLCertVerificationError)
    out = handshake(*contexts(impostor, a, fed.cert_pem), fed.cert_pem)
    assert isinstance(out.client, ssl.SSLCertVerificationError)


def test_revoked_node_is_refused_in_the_handshake(fed: Authority) -> None:
    a, b, c = enroll(fed, "node-a"), enroll(fed, "node-b"), enroll(fed, "node-c")
    crl = issue_revocation_list(fed, [("node-b", certificate_serial(b.cert))], 1, NOW)
    # Without the revocation list the handshake works ...
    assert isinstance(handshake(*contexts(a, b, fed.cert_pem), fed.cert_pem).server, NodeIdentity)
    # ... with it, OpenSSL refuses node-b's certificate, in either role.
    out = handshake(*contexts(a, b, fed.cert_pem, crl), fed.cert_pem)
    assert isinstance(out.server, ssl.SSLCertVerificationError)
    assert "revoked" in str(out.server)
    out = handshake(*contexts(b, a, fed.cert_pem, crl), fed.cert_pem)
    assert isinstance(out.client, ssl.SSLCertVerificationError)
    # A node that is not on the list still gets in with the list loaded.
    out = handshake(*contexts(a, c, fed.cert_pem, crl), fed.cert_pem)
    assert isinstance(out.server, NodeIdentity) and out.server.node_id == "node-c"


def test_peer_identity_checks_expected_node_and_node_id_revocation(fed: Authority) -> None:
    a, b = enroll(fed, "node-a"), enroll(fed, "node-b")
    s_ctx, c_ctx = contexts(a, b, fed.cert_pem)
    by_id = read_revocation_list(
        issue_revocation_list(fed, [("node-a", None)], 2, NOW), fed.cert_pem
    )
    s_sock, c_sock = socket.socketpair()
    s_sock.settimeout(IO_TIMEOUT)
    c_sock.settimeout(IO_TIMEOUT)
    thread = threading.Thread(target=lambda: s_ctx.wrap_socket(s_sock, server_side=True).close())
    thread.start()
    try:
        with c_ctx.wrap_socket(c_sock) as tls:
            now = datetime.now(UTC)
            assert (
                peer_identity(tls, fed.cert_pem, now, expected_node_id="node-a").node_id == "node-a"
            )
            with pytest.raises(BadCertificate, match="not the expected"):
                peer_identity(tls, fed.cert_pem, now, expected_node_id="node-z")
            with pytest.raises(Revoked):
                peer_identity(tls, fed.cert_pem, now, revocations=by_id)
    finally:
        thread.join()
        s_sock.close()


def test_contexts_are_tls13_only_and_trust_only_the_authority(fed: Authority) -> None:
    a = enroll(fed, "node-a")
    for ctx in contexts(a, a, fed.cert_pem):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert len(ctx.get_ca_certs()) == 1
    with pytest.raises(BadCertificate):
        server_context(a.cert, b"not a key", fed.cert_pem)


def test_without_memfd_the_pem_files_are_private_and_removed(
    fed: Authority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import tempfile

    import node.tls as tls_module

    monkeypatch.delattr(os, "memfd_create", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen: list[tuple[str, int]] = []
    real_load = ssl.SSLContext.load_cert_chain

    def spy(self: ssl.SSLContext, certfile: str, keyfile: str) -> None:
        seen.extend((p, os.stat(p).st_mode & 0o777) for p in (certfile, keyfile))
        seen.append((os.path.dirname(certfile), os.stat(os.path.dirname(certfile)).st_mode & 0o777))
        real_load(self, certfile, keyfile)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    a, b = enroll(fed, "node-a"), enroll(fed, "node-b")
    s_ctx = tls_module.server_context(a.cert, a.key, fed.cert_pem)
    c_ctx = tls_module.client_context(b.cert, b.key, fed.cert_pem)
    assert [mode for _, mode in seen] == [0o600, 0o600, 0o700, 0o600, 0o600, 0o700]
    assert all(path.startswith(str(tmp_path)) for path, _ in seen)
    assert list(tmp_path.iterdir()) == []  # nothing left on disk
    out = handshake(s_ctx, c_ctx, fed.cert_pem)
    assert isinstance(out.server, NodeIdentity) and isinstance(out.client, NodeIdentity)
