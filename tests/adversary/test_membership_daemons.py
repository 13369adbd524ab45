"""Hostile enrolled node vs. real daemons on loopback: membership rows 1, 2, 3, 5 and 12.

Federation: edge (node-a, DE), onprem (DE), later a newcomer and a node that gets killed.
Mallory is enrolled (a stolen edge box: its key and certificate only) and attacks with a
script (``tests/adversary/_membership.py``). Each step asserts the attack fails and the
honest federation goes on.
"""

from __future__ import annotations

import signal
import time

import pytest

from federation.limits import MAX_UINT
from federation.messages import (
    Alive,
    Compound,
    Dead,
    MemberPushPull,
    PingReq,
    StateDigest,
    Suspect,
)
from federation.statements import Ed25519Signer, sign
from node.keys import load_key
from tests.adversary._membership import Listener, Mallory
from tests.fedharness import Fed, eventually, peers

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def alive_at(fed: Fed, observer: str, n: int) -> bool:
    return len([p for p in peers(fed.dirs[observer]).values() if p["state"] == "alive"]) == n


def test_hostile_node_cannot_hijack_kill_revive_flood_or_reflect(fed: Fed) -> None:
    fed.add("node-a")
    fed.add("onprem", tier="onprem", seed="node-a")
    fed.add("node-c", seed="node-a")
    mallory_dir = fed.add("mallory")  # enrolled, never started: a script holds its key
    fed.start("node-a")
    fed.start("onprem")
    fed.start("node-c")
    for name in ("node-a", "onprem"):
        eventually(lambda n=name: alive_at(fed, n, 3), what=f"3 alive at {name}")
    a_addr = f"127.0.0.1:{fed.ports['node-a']}"
    onprem_addr = f"127.0.0.1:{fed.ports['onprem']}"
    before = peers(fed.dirs["node-a"])["onprem"]
    mallory = Mallory(mallory_dir, "mallory")
    bystander = Listener()
    try:
        m_alive = mallory.sign(Alive("mallory", mallory.address, 1, b""))
        # Row 1: alive(onprem, <mallory's address>, 2^64-1), signed by Mallory's key (the
        # only one it has) and unsigned; over TLS in a join table and by datagram.
        hijack = (mallory.sign(Alive("onprem", mallory.address, MAX_UINT, b"")),
                  Alive("onprem", mallory.address, MAX_UINT, b""))
        # Row 2: dead(onprem, 2^64-1) with the accuser spoofed (node-c) and as Mallory.
        kill = (mallory.sign(Dead("onprem", MAX_UINT, "node-c")),
                mallory.sign(Dead("onprem", MAX_UINT, "mallory")),
                mallory.sign(Suspect("onprem", MAX_UINT, "mallory")))
        # Row 5: 10,050 invented members.
        ghosts = tuple(mallory.sign(Alive(f"ghost-{i}", f"198.51.100.{i % 250}:{1000 + i}",
                                          1, b"")) for i in range(10_050))
        r = mallory.post(a_addr, MemberPushPull("mallory", mallory.address, True, False,
                                                (m_alive, *hijack, *ghosts, *kill)))
        assert r.status_code == 204, r.text
        # Row 12: ping-req and digest naming a bystander's address.
        for i in range(20):
            mallory.datagram(a_addr, Compound((*hijack, *kill, PingReq(
                1000 + i, "mallory", bystander.udp_address, "onprem", bystander.udp_address,
                True))))
            mallory.datagram(a_addr, PingReq(2000 + i, "mallory", bystander.udp_address,
                                             "ghost-1", bystander.udp_address, True))
        r = mallory.post(a_addr, StateDigest("mallory", bystander.tcp_address, None, None, ()))
        assert r.status_code == 204, r.text
        time.sleep(3.0)
        mallory.drain()

        # Attacks failed: onprem is where it signed it is, alive, its incarnation usable.
        for name in ("node-a", "onprem", "node-c"):
            view = peers(fed.dirs[name])
            assert view["onprem"]["state"] == "alive", name
            assert view["onprem"]["address"] == onprem_addr, name
            assert view["onprem"]["incarnation"] < MAX_UINT // 2, name
            assert not [n for n in view if n.startswith("ghost-")], name
        assert peers(fed.dirs["node-a"])["onprem"]["incarnation"] >= before["incarnation"]
        assert bystander.hits() == 0  # nothing reflected to the bystander

        # A newcomer is admitted despite the flood.
        fed.add("newcomer", seed="node-a")
        fed.start("newcomer")
        eventually(lambda: peers(fed.dirs["node-a"]).get("newcomer", {}).get("state")
                   == "alive", timeout=60, what="newcomer admitted at node-a")
        # Mallory answers no probes (it is a script): the four honest daemons.
        eventually(lambda: {"node-a", "onprem", "node-c", "newcomer"} <= {
            n for n, p in peers(fed.dirs["newcomer"]).items() if p["state"] == "alive"},
            timeout=60, what="newcomer sees the honest nodes alive")

        # Row 3: node-c is killed; its own last alive, replayed, does not revive it.
        last = peers(fed.dirs["node-a"])["node-c"]
        replay = sign(Ed25519Signer(load_key(fed.dirs["node-c"])),
                      Alive("node-c", last["address"], last["incarnation"], b""))
        fed.procs["node-c"].signal(signal.SIGKILL)
        fed.procs["node-c"].wait()
        eventually(lambda: peers(fed.dirs["node-a"])["node-c"]["state"] == "dead",
                   timeout=60, what="node-c dead at node-a")
        for _ in range(20):
            mallory.datagram(a_addr, replay)
            time.sleep(0.1)
        assert mallory.post(a_addr, MemberPushPull("mallory", mallory.address, False, True,
                                                   (m_alive, replay))).status_code == 204
        time.sleep(1.0)
        assert peers(fed.dirs["node-a"])["node-c"]["state"] == "dead"
        assert peers(fed.dirs["node-a"])["onprem"]["state"] == "alive"
        assert bystander.hits() == 0
    finally:
        mallory.close()
        bystander.close()
