"""Nodes witness each other through C2SP tlog-witness and serve their logs to peers as tiles
behind mutual TLS and the `audit.read` policy action. Real daemons on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from federation.witness import CosignatureVerifier, cosignatures
from tests.conftest import outpost, write_config
from tests.fedharness import Fed, eventually, free_port, status

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _peer_client(d: Path) -> httpx.Client:
    """An HTTPS client holding node ``d``'s own certificate (what a peer presents)."""
    from node.enrollment import AUTHORITY_CERT, NODE_CERT
    from node.keys import key_path
    from node.tls import client_context

    tls = client_context((d / NODE_CERT).read_bytes(), key_path(d).read_bytes(),
                         (d / AUTHORITY_CERT).read_bytes())
    return httpx.Client(verify=tls, timeout=30)


def test_peers_cosign_checkpoints_and_read_tiles_only_when_policy_allows(fed: Fed) -> None:
    a = fed.add("node-a")
    b = fed.add("node-b", seed="node-a")
    port = free_port()
    write_config(a, "audit", witness_quorum=1, tiles_listen=f"127.0.0.1:{port}")
    fed.start("node-a")
    fed.start("node-b")
    witness_b = outpost("audit", "witness-key", data_dir=b).stdout.strip()
    assert witness_b.startswith("outpost/acme/node-b/witness+")

    cosigned = eventually(lambda: outpost("audit", "checkpoint", "--cosigned", data_dir=a,
                                          check=False).stdout, timeout=60,
                          what="node-b cosigns node-a's checkpoint")
    assert cosignatures(cosigned, [CosignatureVerifier.from_vkey(witness_b)]) \
        .keys() == {"outpost/acme/node-b/witness"}

    # An auditor checks node-a's log with public keys only, requiring node-b's cosignature.
    vkey = outpost("audit", "vkey", data_dir=a).stdout.strip()
    url = f"http://127.0.0.1:{port}"
    state = fed.tmp / "verified.json"
    ok = json.loads(outpost("audit", "verify-log", url, "--vkey", vkey, "--witness", witness_b,
                            "--state", str(state), "--json").stdout)
    assert ok["ok"] and ok["cosignatures"] == ["outpost/acme/node-b/witness"]
    # A witness that did not cosign (node-a itself) does not count.
    witness_a = outpost("audit", "witness-key", data_dir=a).stdout.strip()
    missing = outpost("audit", "verify-log", url, "--vkey", vkey, "--witness", witness_a,
                      "--state", str(state), check=False)
    assert missing.returncode == 1 and "node-a/witness" in missing.stderr

    # Peer endpoint: tiles only for peers audit.read names (no policy: fail closed).
    peer_url = f"https://127.0.0.1:{fed.ports['node-a']}/peer/v1/tlog"
    with _peer_client(b) as http:
        denied = http.get(f"{peer_url}/checkpoint")
        assert denied.status_code == 403 and "audit.read" in denied.json()["error"]
    policy = fed.tmp / "p.cedar"
    policy.write_text('permit(principal, action == Action::"audit.read", resource)\n'
                      '  when { principal.site == "site-node-b" };\n')
    bundle = fed.tmp / "b.json"
    outpost("policy", "sign", str(policy), "--version", "1", "--ca", str(fed.ca), "-o",
            str(bundle))
    outpost("policy", "apply", str(bundle), data_dir=a)
    eventually(lambda: status(a)["policy_version"] == 1, what="policy at node-a")
    with _peer_client(b) as http:
        note = http.get(f"{peer_url}/checkpoint")
        assert note.status_code == 200 and note.text.startswith("outpost/acme/node-a\n")
        size = int(note.text.split("\n")[1])
        bundle_r = http.get(f"{peer_url}/outpost/acme/node-a/tile/entries/000.p/{min(size, 255)}")
        assert bundle_r.status_code == 200 and "immutable" in bundle_r.headers["cache-control"]
    # node-b's witness endpoint is the same one state: it holds what it cosigned.
    with _peer_client(a) as http:
        held = http.get(f"https://127.0.0.1:{fed.ports['node-b']}/peer/v1/witness/held",
                        params={"origin": "outpost/acme/node-a"})
        assert held.status_code == 200 and held.text.startswith("outpost/acme/node-a\n")


def test_collector_serves_the_replicas_it_holds_one_prefix_per_origin(fed: Fed) -> None:
    fed.add("node-a")
    collector = fed.add("collector", tier="onprem", seed="node-a")
    port = free_port()
    write_config(collector, "audit", tiles_listen=f"127.0.0.1:{port}")
    policy = fed.tmp / "p.cedar"
    policy.write_text('permit(principal, action == Action::"audit.replicate", resource)\n'
                      '  when { principal.tier == "onprem" };\n')
    bundle = fed.tmp / "b.json"
    outpost("policy", "sign", str(policy), "--version", "1", "--ca", str(fed.ca), "-o",
            str(bundle))
    fed.start("node-a")
    fed.start("collector")
    outpost("policy", "apply", str(bundle), data_dir=fed.dirs["node-a"])
    url = f"http://127.0.0.1:{port}/outpost/acme/node-a"

    def replicated() -> bool:
        return httpx.get(f"{url}/checkpoint").status_code == 200

    eventually(replicated, timeout=60, what="collector serves node-a's replica")
    vkey = outpost("audit", "vkey", data_dir=fed.dirs["node-a"]).stdout.strip()
    ok = json.loads(outpost("audit", "verify-log", url, "--vkey", vkey, "--state",
                            str(fed.tmp / "s.json"), "--json").stdout)
    assert ok["origin"] == "outpost/acme/node-a" and ok["entries"] == ok["size"] > 0
    # Its own log at the root and under its origin; an unknown origin is a 404.
    own = httpx.get(f"http://127.0.0.1:{port}/checkpoint").text
    assert own.startswith("outpost/acme/collector\n")
    assert httpx.get(f"http://127.0.0.1:{port}/outpost/acme/nobody/checkpoint").status_code == 404
