"""Issue 10, rows 1 (the connection part), 4 and 15, against real daemons on loopback.

A federation of edge (DE), onprem (DE) and cloud (US) under "personal data stays on prem in its
jurisdiction", plus "evil": an enrolled edge box that turned hostile and holds only its own key
and certificate. Evil owns the address the federation has for onprem (``_conns.Interposer``):
even with membership pointing at the attacker, the edge must refuse the connection because the
TLS peer is not the node it chose — before a byte of personal data leaves — audit that, and go
on serving through the real onprem once the bytes reach it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from federation.identity import read_revocation_list
from tests.adversary._conns import Hostile, Interposer
from tests.conftest import ROOT, outpost
from tests.fedharness import Fed, configure, eventually, free_port, peers, status

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POLICY = """
@id("infer-anywhere")
permit(principal, action == Action::"infer", resource);
@id("no-personal-on-cloud")
forbid(principal, action == Action::"infer", resource)
  when { resource.data_class == "personal" && context.executor.tier == "cloud" };
@id("public-anywhere")
permit(principal, action == Action::"forward", resource)
  when { resource.data_class == "public" };
@id("pull-anywhere")
permit(principal, action == Action::"model.pull", resource);
@id("personal-stays-home")
permit(principal, action == Action::"forward", resource)
  when { resource.data_class == "personal" && context.target.tier != "cloud"
         && context.target.jurisdiction == resource.jurisdiction };
"""

DIGITS = ROOT / "models" / "sample" / "digits.onnx"
SAMPLE = json.loads((ROOT / "models" / "sample" / "digits.json").read_text())
EVIL_BLOB = b"not the digits model; the attacker's own bytes\n" * 4096


def body(data_class: str, marker: float = 0.0) -> dict[str, Any]:
    row = [*SAMPLE["examples"][0]["input"][:63], marker]
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": row}],
            "parameters": {"outpost.data_class": data_class}}


def audit(d: Path) -> list[dict[str, Any]]:
    lines = outpost("audit", "tail", "-n", "1000", "--json", data_dir=d).stdout.splitlines()
    return [json.loads(line)["entry"] for line in lines]


def refused(d: Path, purpose: str) -> list[dict[str, Any]]:
    return [e for e in audit(d) if e["kind"] == "peer.refused"
            and e.get("detail", {}).get("purpose") == purpose]


class World:
    def __init__(self, fed: Fed, mitm: Interposer, evil: Hostile) -> None:
        self.fed, self.mitm, self.evil = fed, mitm, evil

    def dir(self, name: str) -> Path:
        return self.fed.dirs[name]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    fed = Fed(tmp_path_factory.mktemp("conns"))
    edge = fed.add("edge", tier="edge", jurisdiction="DE")
    onprem = fed.add("onprem", tier="onprem", jurisdiction="DE", seed="edge")
    fed.add("cloud", tier="cloud", jurisdiction="US", seed="edge")
    evil = Hostile(fed.add("evil", tier="edge", jurisdiction="DE"))  # never runs a daemon
    # onprem's address, as the federation knows it, is one the attacker owns
    front = free_port()
    configure(onprem, seeds=[f"127.0.0.1:{fed.ports['edge']}"], advertise=f"127.0.0.1:{front}")
    mitm = Interposer(evil, front, fed.ports["onprem"], "onprem", EVIL_BLOB).start()
    for name in ("onprem", "cloud"):
        outpost("models", "add", str(DIGITS), "--name", "digits", "--version", "1",
                data_dir=fed.dirs[name])
    cedar = fed.tmp / "policy.cedar"
    cedar.write_text(POLICY)
    signed = fed.tmp / "policy.json"
    outpost("policy", "sign", str(cedar), "--version", "1", "--ca", str(fed.ca), "-o", str(signed))
    try:
        for name in ("edge", "onprem", "cloud"):
            fed.start(name)
        outpost("policy", "apply", str(signed), data_dir=edge)
        def policy_everywhere() -> bool:
            return all(status(fed.dirs[n])["policy_version"] == 1
                       for n in ("edge", "onprem", "cloud"))

        eventually(policy_everywhere, what="policy v1 on every node")

        def edge_sees_holders() -> bool:
            view = peers(edge)
            return (view.get("onprem", {}).get("address") == mitm.address
                    and all(view.get(n, {}).get("state") == "alive" and view[n]["models"]
                            for n in ("onprem", "cloud")))

        eventually(edge_sees_holders, what="edge sees onprem (at the attacker's address) and cloud")
        yield World(fed, mitm, evil)
    finally:
        fed.stop_all()
        mitm.stop()


def post(world: World, data_class: str, marker: float) -> httpx.Response:
    with world.fed.procs["edge"].http(timeout=60) as http:
        return http.post("/v2/models/digits/infer", json=body(data_class, marker))


def test_edge_refuses_a_node_posing_as_onprem_and_personal_data_still_reaches_onprem(
        world: World) -> None:
    edge, mitm = world.dir("edge"), world.mitm
    # The honest path first: through the attacker's address, bytes relayed, onprem answers.
    r = post(world, "personal", 1.0)
    assert r.status_code == 200, r.text
    assert r.json()["parameters"]["outpost.served_by"] == "onprem"
    before = len(refused(edge, "forward"))
    mitm.set_mode("impersonate")

    def refused_once() -> Any:
        r = post(world, "personal", 2.0)
        assert r.status_code != 200, f"the edge took an answer from the attacker: {r.text}"
        return len(refused(edge, "forward")) > before and r

    r = eventually(refused_once, what="a forward refused for the wrong TLS peer")
    assert r.status_code == 503 and "onprem" in r.json()["error"]
    assert mitm.connections >= 1  # the edge did reach the attacker (and saw its certificate)
    assert mitm.app_bytes == 0 and mitm.requests == []  # not one byte of the request
    entry = refused(edge, "forward")[-1]
    assert entry["peer"] == "onprem" and entry["detail"]["presented"] == "evil"
    assert entry["detail"]["address"] == mitm.address
    assert "not the expected 'onprem'" in entry["reason"]
    assert any("refused the connection to onprem" in line for line in world.fed.procs["edge"].log)
    failed = [e for e in audit(edge) if e["kind"] == "forward" and e["decision"] == "failed"]
    assert "not that node" in failed[-1]["reason"]  # the trail says why nothing was sent
    # personal data never went to the cloud instead
    assert all(e.get("data_class") != "personal" for e in audit(world.dir("cloud"))
               if e["kind"] == "infer")
    # Once the bytes reach the real onprem again, personal data is served there.
    mitm.set_mode("relay")
    r = eventually(lambda: (resp := post(world, "personal", 3.0)).status_code == 200 and resp,
                   what="personal data served by the real onprem")
    assert r.json()["parameters"]["outpost.served_by"] == "onprem"
    served = [e for e in audit(world.dir("onprem")) if e["kind"] == "infer"
              and e.get("caller", "").endswith("node:edge") and e.get("data_class") == "personal"]
    assert served and mitm.app_bytes == 0


def test_pull_from_a_node_posing_as_onprem_is_refused_and_nothing_is_installed(
        world: World) -> None:
    edge, mitm = world.dir("edge"), world.mitm
    mitm.set_mode("impersonate")
    connections = mitm.connections
    result = outpost("models", "pull", "digits:1", "--from", "onprem", data_dir=edge,
                     check=False)
    assert result.returncode == 1, result.stdout
    assert "not the expected 'onprem'" in result.stderr
    assert mitm.connections > connections and mitm.requests == []
    assert json.loads(outpost("models", "list", "--json", data_dir=edge).stdout) == []
    assert not list((edge / "blobs").glob(".pull-*"))
    assert refused(edge, "model.pull")[-1]["detail"]["presented"] == "evil"
    # from the real onprem, the pull works and is verified against onprem's signed advert
    mitm.set_mode("relay")
    pulled = json.loads(outpost("models", "pull", "digits:1", "--from", "onprem", "--json",
                                data_dir=edge).stdout)
    assert pulled["sha256"] == hashlib.sha256(DIGITS.read_bytes()).hexdigest()
    assert pulled["source"] == "onprem"
    assert [e for e in audit(edge) if e["kind"] == "model.pull"][-1]["peer"] == "onprem"


def test_a_certificate_revoked_live_fails_the_handshake_both_ways(world: World) -> None:
    edge = world.dir("edge")
    proc = world.fed.procs["edge"]
    peer_port = world.fed.ports["edge"]
    evil = world.evil

    def hello(ctx: ssl.SSLContext) -> bytes:
        with socket.create_connection(("127.0.0.1", peer_port), timeout=10) as raw:
            try:
                with ctx.wrap_socket(raw) as tls:
                    tls.sendall(b"GET /peer/v1/hello HTTP/1.1\r\nhost: edge\r\n\r\n")
                    answer = b""
                    while not answer.endswith(b"}") and (chunk := tls.recv(4096)):
                        answer += chunk
                    return answer
            except (OSError, ssl.SSLError):
                return b""

    assert b'evil' in hello(evil.client_context())  # enrolled: served until revoked
    crl = world.fed.tmp / "crl-evil.pem"
    outpost("federation", "revoke", "evil", "--ca", str(world.fed.ca), "-o", str(crl))
    mark = len(proc.log)
    outpost("apply", str(crl), data_dir=edge)  # live, through the running daemon
    assert hello(evil.client_context()) == b""
    lines = eventually(lambda: [line for line in proc.log[mark:]
                                if "refused in the TLS handshake" in line],
                       what="the edge's log line for the refused handshake")
    assert "certificate revoked" in lines[-1]
    assert not any("refused after handshake" in line for line in proc.log[mark:])
    # an honest node still connects
    cloud = Hostile(world.dir("cloud"))
    assert b'cloud' in hello(cloud.client_context())

    # Outbound, the same list: the peer clients refuse the revoked server in the handshake.
    from node.peerclient import PeerClients, PeerRefused

    d = edge
    revocations = read_revocation_list(crl.read_bytes(), (d / "federation.crt").read_bytes())
    seen: list[Any] = []

    async def connect() -> tuple[str, str]:
        clients = PeerClients((d / "node.crt").read_bytes(), (d / "node.key").read_bytes(),
                              (d / "federation.crt").read_bytes(), None, seen.append)
        world.mitm.set_mode("impersonate")
        try:
            before = (await clients.request("evil", world.mitm.address, "GET", "/peer/v1/x",
                                            purpose="test", timeout_s=10)).peer.node_id
            clients.update_revocations(revocations)  # live, as PeerCredentials hands it on
            with pytest.raises(PeerRefused) as refusal:
                await clients.request("evil", world.mitm.address, "GET", "/peer/v1/x",
                                      purpose="test", timeout_s=10)
            return before, str(refusal.value)
        finally:
            await clients.close()
            world.mitm.set_mode("relay")

    before, after = asyncio.run(connect())
    assert before == "evil" and "certificate revoked" in after
    assert seen[-1].expected == "evil" and seen[-1].purpose == "test"
