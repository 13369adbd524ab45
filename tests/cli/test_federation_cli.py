"""Enrollment by hand-carried files through the real CLI: authority, request, certificate, join,
revocation — and the certificates it produces working for mutual TLS with Python's ssl."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from node.testing import enroll, init_node, outpost


@pytest.fixture
def fed(tmp_path: Path) -> Path:
    ca = tmp_path / "ca"
    outpost("federation", "init", "--dir", str(ca), "--name", "acme")
    return ca


def test_enroll_join_and_the_audit_trail(tmp_path: Path, fed: Path) -> None:
    data_dir = enroll(tmp_path, fed, "edge-1", "--tier", "edge", "--site", "berlin",
                      "--jurisdiction", "DE", "--label", "zone=dmz")
    from node.enrollment import load_identity

    ident = load_identity(data_dir)
    assert ident is not None
    assert (ident.federation, ident.tier, ident.site, ident.jurisdiction) == ("acme", "edge", "berlin", "DE")
    assert dict(ident.labels) == {"zone": "dmz"}
    assert outpost("audit", "vkey", data_dir=data_dir).stdout.startswith("outpost/acme/edge-1+")
    checkpoint = outpost("audit", "checkpoint", data_dir=data_dir).stdout
    assert checkpoint.splitlines()[0] == "outpost/acme/edge-1"
    entries = [json.loads(line)["entry"] for line in
               outpost("audit", "tail", "--json", data_dir=data_dir).stdout.splitlines()]
    assert entries[-1]["kind"] == "enroll" and entries[-1]["detail"]["jurisdiction"] == "DE"
    assert json.loads(outpost("audit", "verify", "--json", data_dir=data_dir).stdout)["ok"]


def test_join_refuses_foreign_or_mismatched_certificates(tmp_path: Path, fed: Path) -> None:
    enroll(tmp_path, fed, "node-a", "--tier", "onprem", "--site", "s", "--jurisdiction", "DE")
    other = tmp_path / "node-b"
    init_node(other, "node-b", "--no-sample")
    # node-a's certificate is for another node id and key
    result = outpost("join", str(tmp_path / "node-a.pem"), data_dir=other, check=False)
    assert result.returncode == 1 and "node-a" in result.stderr
    # same node id enrolled from a different key (an impostor's request)
    impostor = tmp_path / "impostor"
    init_node(impostor, "node-b", "--no-sample")
    req = tmp_path / "imp.req"
    outpost("join", "request", "-o", str(req), data_dir=impostor)
    outpost("federation", "enroll", str(req), "--ca", str(fed), "--tier", "edge", "--site", "s",
            "--jurisdiction", "DE", "-o", str(tmp_path / "imp.pem"))
    result = outpost("join", str(tmp_path / "imp.pem"), data_dir=other, check=False)
    assert result.returncode == 1 and "another key" in result.stderr
    assert not (other / "node.crt").exists()


def test_bad_attributes_are_refused_at_enrollment(tmp_path: Path, fed: Path) -> None:
    data_dir = tmp_path / "n"
    init_node(data_dir, "n", "--no-sample")
    req = tmp_path / "n.req"
    outpost("join", "request", "-o", str(req), data_dir=data_dir)
    result = outpost("federation", "enroll", str(req), "--ca", str(fed), "--tier", "edge",
                     "--site", "s", "--jurisdiction", "germany", "-o", str(tmp_path / "x.pem"),
                     check=False)
    assert result.returncode != 0 and "jurisdiction" in result.stderr.lower()


def test_revocation_list_applies_once_and_refuses_rollback(tmp_path: Path, fed: Path) -> None:
    data_dir = enroll(tmp_path, fed, "node-a", "--tier", "edge", "--site", "s", "--jurisdiction", "DE")
    v1, v2 = tmp_path / "crl1.pem", tmp_path / "crl2.pem"
    outpost("federation", "revoke", "node-x", "--ca", str(fed), "-o", str(v1))
    outpost("federation", "revoke", "node-y", "--ca", str(fed), "-o", str(v2))
    assert "v2" in outpost("apply", str(v2), data_dir=data_dir).stdout
    result = outpost("apply", str(v1), data_dir=data_dir, check=False)
    assert result.returncode == 1 and "not newer" in result.stderr
    # a list signed by another authority is refused whole
    other_ca = tmp_path / "other"
    outpost("federation", "init", "--dir", str(other_ca), "--name", "evil")
    forged = tmp_path / "forged.pem"
    outpost("federation", "revoke", "node-a", "--ca", str(other_ca), "-o", str(forged))
    result = outpost("apply", str(forged), data_dir=data_dir, check=False)
    assert result.returncode == 1
    kinds = [json.loads(line)["entry"]["kind"] for line in
             outpost("audit", "tail", "--json", data_dir=data_dir).stdout.splitlines()]
    assert kinds.count("revocation.apply") == 1


def _contexts(data_dir: Path, server: bool, crl: bytes | None = None) -> ssl.SSLContext:
    from node.tls import client_context, server_context

    make = server_context if server else client_context
    return make((data_dir / "node.crt").read_bytes(), (data_dir / "node.key").read_bytes(),
                (data_dir / "federation.crt").read_bytes(), crl)


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, ca: bytes) -> str | None:
    """One handshake and an echoed byte on loopback; the server's node id as the client saw
    it, or None when either side refused (TLS 1.3 reports a refused client certificate only
    after the client's handshake completes, so the echo is what proves acceptance)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server_error: list[BaseException] = []

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(tls.recv(1))
        except (ssl.SSLError, OSError) as exc:
            server_error.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port)) as raw, \
                client_ctx.wrap_socket(raw) as tls:
            from node.tls import peer_identity

            ident = peer_identity(tls, ca, datetime.now(UTC))
            tls.sendall(b"x")
            return ident.node_id if tls.recv(1) == b"x" else None
    except (ssl.SSLError, OSError):
        return None
    finally:
        thread.join(timeout=10)
        listener.close()


def test_cli_enrolled_nodes_speak_mutual_tls_and_revocation_refuses(tmp_path: Path, fed: Path) -> None:
    a = enroll(tmp_path, fed, "node-a", "--tier", "edge", "--site", "s", "--jurisdiction", "DE")
    b = enroll(tmp_path, fed, "node-b", "--tier", "cloud", "--site", "t", "--jurisdiction", "US")
    ca = (a / "federation.crt").read_bytes()
    assert _handshake(_contexts(a, server=True), _contexts(b, server=False), ca) == "node-a"
    crl = tmp_path / "crl.pem"
    outpost("federation", "revoke", "node-b", "--ca", str(fed), "-o", str(crl))
    refused = _handshake(_contexts(a, server=True, crl=crl.read_bytes()),
                         _contexts(b, server=False), ca)
    assert refused is None
