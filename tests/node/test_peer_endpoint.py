"""The peer endpoint of real daemons: mutual TLS between enrolled nodes, the caller's attested
identity reaching the handler, witnesses reading checkpoints, and revocation applied live."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import httpx
import pytest

from federation.note import Checkpoint, Verifier
from tests.cli.test_federation_cli import enroll
from tests.conftest import outpost, start_daemon

pytestmark = pytest.mark.integration


def client_ctx(data_dir: Path) -> ssl.SSLContext:
    from node.tls import client_context

    return client_context((data_dir / "node.crt").read_bytes(), (data_dir / "node.key").read_bytes(),
                          (data_dir / "federation.crt").read_bytes())


def peer_url(data_dir: Path) -> str:
    info = json.loads((data_dir / "daemon.json").read_text())
    return f"https://{info['peer_listen']}"


def test_peers_authenticate_by_certificate_and_revocation_applies_live(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    outpost("federation", "init", "--dir", str(ca), "--name", "acme")
    a = enroll(tmp_path, ca, "node-a", "--tier", "onprem", "--site", "s1", "--jurisdiction", "DE")
    b = enroll(tmp_path, ca, "node-b", "--tier", "edge", "--site", "s2", "--jurisdiction", "DE")
    c = enroll(tmp_path, ca, "node-c", "--tier", "cloud", "--site", "s3", "--jurisdiction", "US")
    other_ca = tmp_path / "other"
    outpost("federation", "init", "--dir", str(other_ca), "--name", "acme")
    stranger = enroll(tmp_path, other_ca, "node-x", "--tier", "edge", "--site", "s", "--jurisdiction", "DE")
    daemon = start_daemon(a)
    try:
        url = peer_url(a)
        with httpx.Client(verify=client_ctx(b), timeout=10) as http:
            hello = http.get(f"{url}/peer/v1/hello").json()
            assert hello.pop("time") > 0  # peers estimate clock offsets from it (node.clock)
            assert hello == {"node_id": "node-a", "you": "node-b"}
            note = http.get(f"{url}/peer/v1/audit/checkpoint").json()["checkpoint"]
            # the app endpoint is plain HTTP and has no peer routes
        vkey = outpost("audit", "vkey", data_dir=a).stdout.strip()
        checkpoint = Checkpoint.open(note, Verifier.from_vkey(vkey))
        assert checkpoint.origin == "outpost/acme/node-a" and checkpoint.size >= 2
        with httpx.Client(verify=client_ctx(stranger), timeout=10) as http, pytest.raises(httpx.TransportError):
            http.get(f"{url}/peer/v1/hello").raise_for_status()
        with httpx.Client(timeout=10, verify=False) as http, pytest.raises(httpx.TransportError):
            http.get(f"{url}/peer/v1/hello")  # no client certificate at all
        crl = tmp_path / "crl.pem"
        outpost("federation", "revoke", "node-b", "--ca", str(ca), "-o", str(crl))
        outpost("apply", str(crl), data_dir=a)  # through the running daemon
        with httpx.Client(verify=client_ctx(b), timeout=10) as http, pytest.raises(httpx.TransportError):
            http.get(f"{url}/peer/v1/hello").raise_for_status()
        with httpx.Client(verify=client_ctx(c), timeout=10) as http:
            assert http.get(f"{url}/peer/v1/hello").json()["you"] == "node-c"
    finally:
        assert daemon.stop() == 0
