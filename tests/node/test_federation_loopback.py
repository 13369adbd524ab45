"""Real daemons federated on loopback with static seeds: membership, policy spreading, failure
detection, revocation, and the UDP gate against forged, replayed and oversized datagrams."""

from __future__ import annotations

import json
import signal
import socket

import pytest

from tests.conftest import outpost
from tests.fedharness import Fed, configure, eventually, free_port, peers, status  # noqa: F401  (re-exported)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_members_converge_and_policy_applied_anywhere_reaches_all(fed: Fed) -> None:
    fed.add("node-a")
    fed.add("node-b", seed="node-a")
    fed.add("node-c", tier="cloud", jurisdiction="US", seed="node-a")
    for name in ("node-a", "node-b", "node-c"):
        fed.start(name)
    for name in ("node-a", "node-b", "node-c"):
        eventually(lambda n=name: len([p for p in peers(fed.dirs[n]).values()
                                       if p["state"] == "alive"]) == 3, what=f"{name} sees 3")
    view = eventually(lambda: (v := peers(fed.dirs["node-a"]))["node-c"]["tier"] and v,
                      what="node-c's advert at node-a")
    assert view["node-c"]["tier"] == "cloud" and view["node-c"]["jurisdiction"] == "US"
    assert view["node-b"]["models"] == [] and view["node-b"]["queue"] == 0  # enrolled bare
    policy = fed.tmp / "p.cedar"
    policy.write_text('permit(principal, action == Action::"infer", resource);\n')
    bundle = fed.tmp / "b.json"
    outpost("policy", "sign", str(policy), "--version", "4", "--ca", str(fed.ca), "-o", str(bundle))
    outpost("policy", "apply", str(bundle), data_dir=fed.dirs["node-c"])
    for name in ("node-a", "node-b"):
        eventually(lambda n=name: status(fed.dirs[n])["policy_version"] == 4,
                   what=f"policy at {name}")
        kinds = [json.loads(line)["entry"] for line in
                 outpost("audit", "tail", "--json", data_dir=fed.dirs[name]).stdout.splitlines()]
        applied = [e for e in kinds if e["kind"] == "policy.apply"]
        assert applied and applied[-1]["policy_version"] == 4
        assert applied[-1]["caller"].startswith("gossip")
    # a node that was offline catches up after it comes back, without operator action
    eventually(lambda: all(p.get("checkpoint_size") for p in peers(fed.dirs["node-a"]).values()),
               what="checkpoints of every node witnessed at node-a")


def test_killed_node_is_detected_dead_and_revoked_node_is_cut_off(fed: Fed) -> None:
    fed.add("node-a")
    fed.add("node-b", seed="node-a")
    fed.add("node-c", seed="node-a")
    fed.add("node-d", seed="node-a")
    for name in fed.dirs:
        fed.start(name)
    for name in ("node-a", "node-b"):  # both must know node-d before it dies
        eventually(lambda n=name: len([p for p in peers(fed.dirs[n]).values()
                                       if p["state"] == "alive"]) == 4, what=f"4 alive at {name}")
    fed.procs["node-d"].signal(signal.SIGKILL)
    fed.procs["node-d"].wait()
    for name in ("node-a", "node-b"):
        eventually(lambda n=name: peers(fed.dirs[n])["node-d"]["state"] == "dead",
                   timeout=45, what=f"node-d dead at {name}")
    crl = fed.tmp / "crl.pem"
    outpost("federation", "revoke", "node-c", "--ca", str(fed.ca), "-o", str(crl))
    outpost("apply", str(crl), data_dir=fed.dirs["node-a"])
    eventually(lambda: peers(fed.dirs["node-b"])["node-c"]["state"] in ("suspect", "dead"),
               timeout=45, what="revoked node-c no longer alive at node-b")

    def dropped() -> bool:
        with fed.procs["node-b"].http() as http:
            metrics = http.get("/metrics").text
        return 'outpost_gossip_dropped_total{reason="unknown_sender"}' in metrics

    eventually(dropped, what="node-b drops the revoked node's datagrams")


def test_forged_replayed_and_oversized_datagrams_are_dropped_and_counted(fed: Fed) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from federation import envelope
    from federation.messages import Ping, encode
    from node.keys import load_key

    fed.add("node-a")
    fed.add("node-b", seed="node-a")
    fed.start("node-a")
    fed.start("node-b")
    eventually(lambda: len(peers(fed.dirs["node-a"])) == 2, what="b joined a")
    target = ("127.0.0.1", fed.ports["node-a"])
    ping = encode(Ping(seq=1, source_id="node-b", source_addr=f"127.0.0.1:{fed.ports['node-b']}",
                       target_id="node-a"))
    genuine = envelope.seal(load_key(fed.dirs["node-b"]), "node-b", 1, 1, ping)
    forged = envelope.seal(Ed25519PrivateKey.generate(), "node-b", 1, 2, ping)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(forged, target)
        udp.sendto(genuine, target)
        udp.sendto(genuine, target)  # replay
        udp.sendto(b"x" * 9000, target)

    def counted() -> bool:
        with fed.procs["node-a"].http() as http:
            text = http.get("/metrics").text
        return all(f'outpost_gossip_dropped_total{{reason="{r}"}}' in text
                   for r in ("forged", "oversized"))

    eventually(counted, what="drops counted")
    with fed.procs["node-a"].http() as http:
        text = http.get("/metrics").text
    # the genuine datagram's boot (1) is older than node-b's real boot: refused as a replay
    assert 'outpost_gossip_dropped_total{reason="replayed"}' in text


def test_audit_collectors_named_by_policy_replicate_verified_logs(fed: Fed) -> None:
    from tests.node.test_peer_endpoint import client_ctx, peer_url

    fed.add("node-a")
    fed.add("collector", tier="onprem", seed="node-a")
    fed.add("node-c", seed="node-a")
    policy = fed.tmp / "p.cedar"
    policy.write_text(
        'permit(principal, action == Action::"infer", resource);\n'
        'permit(principal, action == Action::"audit.replicate", resource)\n'
        '  when { principal.tier == "onprem" };\n')
    bundle = fed.tmp / "b.json"
    outpost("policy", "sign", str(policy), "--version", "1", "--ca", str(fed.ca), "-o", str(bundle))
    for name in fed.dirs:
        fed.start(name)
    outpost("policy", "apply", str(bundle), data_dir=fed.dirs["node-a"])
    for name in fed.dirs:
        eventually(lambda n=name: status(fed.dirs[n])["policy_version"] == 1, what="policy")

    def collected() -> bool:
        lines = outpost("audit", "tail", "--all", "-n", "200", "--json",
                        data_dir=fed.dirs["collector"]).stdout.splitlines()
        origins = {json.loads(line)["origin"] for line in lines}
        return {"outpost/acme/node-a", "outpost/acme/node-c"} <= origins

    eventually(collected, timeout=60, what="collector holds node-a's and node-c's logs")
    # a node that policy does not name a collector is refused the entries
    url = peer_url(fed.dirs["node-a"])
    import httpx

    with httpx.Client(verify=client_ctx(fed.dirs["node-c"]), timeout=10) as http:
        r = http.get(f"{url}/peer/v1/audit/entries", params={"start": 0})
    assert r.status_code == 403 and "collector" in r.json()["error"]
    with httpx.Client(verify=client_ctx(fed.dirs["collector"]), timeout=10) as http:
        r = http.get(f"{url}/peer/v1/audit/entries", params={"start": 0, "end": 2})
    assert r.status_code == 200 and [row["index"] for row in r.json()] == [0, 1]
