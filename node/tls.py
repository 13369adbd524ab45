"""Mutual-TLS contexts for peer traffic, built from the federation's PEM documents.

Owns: turning a node's certificate and key, the authority certificate and the current
revocation list (CRL) into ``ssl.SSLContext`` objects for both ends of a peer
connection, and reading the verified peer's :class:`NodeIdentity` after the handshake.

Must never: trust anything but the federation authority (no system CA store), allow
TLS below 1.3, or leave key material on disk.

Choices, and why
----------------
* **Hostname checking is off; identity is checked after the handshake.** Peers are
  reached by the addresses mDNS and seeds give (mostly IPs), node ids are not in DNS,
  and a server never has a "hostname" for its client. So both ends require a
  certificate chaining to the authority during the handshake, and then call
  :func:`peer_identity` — one code path for both sides — which reads the attested
  attributes, checks validity at ``now``, the revocation list by node id, and (for a
  client that dialled a known node) ``expected_node_id``. ``node.peerclient`` runs it on every
  outbound connection before the request is written; ``node.peer`` on every inbound one.
* **Revocation in the handshake.** With a CRL, ``VERIFY_CRL_CHECK_LEAF`` makes OpenSSL
  refuse a revoked peer's certificate by serial (checked by tests with an Ed25519-signed
  CRL). Without a CRL the flag must stay off, since OpenSSL would then refuse every
  peer for "unable to get certificate CRL". Pass only a CRL that
  ``federation.identity.read_revocation_list`` accepted: one from another authority
  would make OpenSSL refuse every peer the same way.
* **PEM bytes in, no files left behind.** ``ssl`` loads certificates, keys and CRLs only
  from paths. On Linux the PEMs go into anonymous ``memfd`` files opened through
  ``/proc/self/fd`` (never on a file system); elsewhere into a private temporary
  directory (mode 0700, files 0600) that is deleted as soon as OpenSSL has read them —
  OpenSSL copies everything into the context at load time. Rebuild the context to pick
  up a new revocation list — and hand the new one to each *new* connection: OpenSSL copies
  the verification flags into a connection when it is created, so swapping contexts inside a
  handshake (an SNI callback) would not turn on the CRL check (``node.peer``).
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from datetime import datetime

from federation.errors import BadCertificate
from federation.identity import NodeIdentity, RevocationList

__all__ = ["client_context", "peer_identity", "server_context"]


@contextlib.contextmanager
def _private_paths(*blobs: bytes) -> Iterator[list[str]]:
    """Paths from which OpenSSL can read ``blobs``, valid only inside the block."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and os.path.isdir("/proc/self/fd"):
        fds: list[int] = []
        try:
            for blob in blobs:
                fd = memfd_create("outpost-tls", getattr(os, "MFD_CLOEXEC", 0))
                fds.append(fd)
                os.write(fd, blob)
            yield [f"/proc/self/fd/{fd}" for fd in fds]
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="outpost-tls-") as directory:  # mode 0700
        paths = []
        for i, blob in enumerate(blobs):
            path = os.path.join(directory, f"{i}.pem")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            paths.append(path)
        yield paths


def _context(
    server: bool, cert_pem: bytes, key_pem: bytes, authority_cert_pem: bytes, crl_pem: bytes | None
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # see module docstring: identity is checked by peer_identity()
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    trust = authority_cert_pem if crl_pem is None else authority_cert_pem + b"\n" + crl_pem
    try:
        with _private_paths(cert_pem, key_pem, trust) as (cert_path, key_path, trust_path):
            ctx.load_cert_chain(cert_path, key_path)
            ctx.load_verify_locations(cafile=trust_path)
    except ssl.SSLError as exc:
        raise BadCertificate(
            f"cannot load the node certificate, key, authority or revocation list into TLS "
            f"({exc.reason or exc}); check they are the PEM files from enrollment"
        ) from exc
    if crl_pem is not None:
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def server_context(
    cert_pem: bytes, key_pem: bytes, authority_cert_pem: bytes, crl_pem: bytes | None = None
) -> ssl.SSLContext:
    """TLS 1.3 server context that requires a client certificate from the federation."""
    return _context(True, cert_pem, key_pem, authority_cert_pem, crl_pem)


def client_context(
    cert_pem: bytes, key_pem: bytes, authority_cert_pem: bytes, crl_pem: bytes | None = None
) -> ssl.SSLContext:
    """TLS 1.3 client context that presents our certificate and verifies the server's."""
    return _context(False, cert_pem, key_pem, authority_cert_pem, crl_pem)


def peer_identity(
    ssl_object: ssl.SSLObject | ssl.SSLSocket,
    authority_cert_pem: bytes,
    now: datetime,
    *,
    expected_node_id: str | None = None,
    revocations: RevocationList | None = None,
) -> NodeIdentity:
    """The verified peer's identity after a completed handshake.

    Raises BadCertificate (no certificate, or not a valid node certificate, or not the
    node we dialled) or Revoked (its node id or serial is on ``revocations``).
    """
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise BadCertificate(
            "peer presented no certificate; the TLS context must require one (server_context)"
        )
    identity = NodeIdentity.from_certificate(der, authority_cert_pem, now)
    if revocations is not None:
        revocations.check(identity)
    if expected_node_id is not None and identity.node_id != expected_node_id:
        raise BadCertificate(
            f"peer is {identity.node_id!r}, not the expected {expected_node_id!r}; the address "
            "now belongs to another node — refresh it from discovery"
        )
    return identity
