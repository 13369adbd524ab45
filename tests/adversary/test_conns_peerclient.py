"""``node.peerclient`` in process against a scripted hostile enrolled node over real mutual
TLS: a connection must prove it is the node chosen before a byte of the request is written."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from node.peerclient import PeerClients, PeerRefused, Refusal
from tests.adversary._conns import Hostile, Interposer
from tests.cli.test_federation_cli import enroll
from tests.conftest import outpost
from tests.fedharness import free_port

pytestmark = pytest.mark.integration


def test_a_peer_that_is_not_the_node_chosen_gets_nothing_and_is_reported_once(
        tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    outpost("federation", "init", "--dir", str(ca), "--name", "acme")
    attrs = ("--tier", "edge", "--site", "s", "--jurisdiction", "DE")
    edge = enroll(tmp_path, ca, "edge", *attrs)
    evil = Hostile(enroll(tmp_path, ca, "evil", *attrs))
    mitm = Interposer(evil, free_port(), free_port(), "onprem", b"x").start()
    mitm.set_mode("impersonate")
    seen: list[Refusal] = []

    async def go() -> tuple[list[str], str, int]:
        clients = PeerClients((edge / "node.crt").read_bytes(), (edge / "node.key").read_bytes(),
                              (edge / "federation.crt").read_bytes(), None, seen.append)
        errors = []
        try:
            for _ in range(3):  # chosen as onprem: refused every time, reported once
                with pytest.raises(PeerRefused) as refused:
                    await clients.request("onprem", mitm.address, "POST", "/peer/v1/infer/m",
                                          body=b"personal data", purpose="forward",
                                          timeout_s=10)
                errors.append(str(refused.value))
            # an address no member holds (a seed): any enrolled node may answer, and says who
            answer: Any = await clients.request(None, mitm.address, "POST", "/peer/v1/gossip",
                                                body=b"", purpose="gossip", timeout_s=10)
            return errors, answer.peer.node_id, answer.status
        finally:
            await clients.close()

    try:
        errors, who, status = asyncio.run(go())
    finally:
        mitm.stop()
    assert all("not the expected 'onprem'" in e for e in errors)
    assert [(r.expected, r.presented, r.purpose, r.address) for r in seen] == [
        ("onprem", "evil", "forward", mitm.address)]
    assert (who, status) == ("evil", 204)
    # the refused requests never reached the attacker: only the seed's gossip did
    assert mitm.requests == ["POST /peer/v1/gossip HTTP/1.1"]
    assert mitm.connections >= 4
