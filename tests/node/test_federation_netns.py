"""Real `outpost run` daemons, each on its own host (a Linux network namespace on one bridge):
discovery by mDNS alone, policy spreading, partition and heal, a killed node, a revoked node.

Every daemon listens for peers on ``<its host's address>:8471`` (UDP gossip on the same port),
its app endpoint on the namespace's own loopback, and its admin socket in its data directory on
the shared filesystem, so the test process (in the root namespace) reads every node's view
through the admin socket and drives it with the CLI. Traffic between hosts only exists inside
the namespaces this test creates (tests/netns.py); every daemon is stopped by PID at teardown.

Nothing here measures time: waits are bounded polls (``eventually``) with generous limits.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w

from node.testing import ROOT, enroll, outpost
from node.testing import eventually as _eventually
from tests.netns import Host, Topology, namespaces, require_netns

pytestmark = [pytest.mark.netns, pytest.mark.integration, pytest.mark.slow]

PEER_PORT = 8471
PY = sys.executable
# Bounds for the waits below: detection with the `local` preset takes a few probe intervals
# (suspicion timeout 3 s, up to 6x that with no second accuser); reconnection after a heal
# waits for a reconnect round (10 s). The limits leave room for a loaded 2-core machine.
CONVERGE_S = 60.0
DETECT_S = 60.0
HEAL_S = 90.0
STAY_OUT_S = 25.0

# Run inside a host's namespace: GET /peer/v1/hello at a peer with a node's client certificate.
_HELLO = r"""
import json, sys
from pathlib import Path
import httpx
from node.tls import client_context
d, url = Path(sys.argv[1]), sys.argv[2]
ctx = client_context((d / "node.crt").read_bytes(), (d / "node.key").read_bytes(),
                     (d / "federation.crt").read_bytes())
try:
    with httpx.Client(verify=ctx, timeout=10) as http:
        r = http.get(f"{url}/peer/v1/hello")
        r.raise_for_status()
        print(json.dumps({"ok": True, "body": r.json()}))
except httpx.HTTPError as exc:
    print(json.dumps({"ok": False, "transport": isinstance(exc, httpx.TransportError),
                      "error": f"{type(exc).__name__}: {exc}"}))
"""

# Run inside a host's namespace: one connection (kept warm by a hello every second) on which
# commands read from stdin are sent; one JSON line answers each.
_HELD = r"""
import json, sys, threading, time
from pathlib import Path
import httpx
from federation.messages import Ping, encode
from node.tls import client_context
d, url, me, target = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = client_context((d / "node.crt").read_bytes(), (d / "node.key").read_bytes(),
                     (d / "federation.crt").read_bytes())
http = httpx.Client(verify=ctx, timeout=10, limits=httpx.Limits(max_connections=1))
lock = threading.Lock()

def call(command):
    with lock:
        if command == "hello":
            r = http.get(f"{url}/peer/v1/hello")
        else:
            ping = Ping(seq=1, source_id=me, source_addr="0.0.0.0:9", target_id=target)
            r = http.post(f"{url}/peer/v1/gossip", content=encode(ping))
        stream = r.extensions.get("network_stream")
        local = stream.get_extra_info("client_addr") if stream is not None else None
        return {"ok": r.is_success, "status": r.status_code, "body": r.text[:200],
                "local": list(local) if local else None}

def warm():
    while True:
        time.sleep(1.0)
        try:
            call("hello")
        except httpx.HTTPError:
            return

threading.Thread(target=warm, daemon=True).start()
for line in sys.stdin:
    try:
        out = call(line.strip())
    except httpx.HTTPError as exc:
        out = {"ok": False, "transport": isinstance(exc, httpx.TransportError),
               "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out), flush=True)
"""


def eventually(check: Callable[[], Any], timeout: float, what: str, *,
               fed: NetFed | None = None) -> Any:
    """``node.testing.eventually`` every 0.5 s, with the daemons' log tails on a timeout."""
    return _eventually(check, timeout, what, interval=0.5,
                       diagnose=fed.log_tails if fed is not None else None)


class Node:
    """One enrolled node on one host; the daemon runs inside the host's namespace."""

    def __init__(self, name: str, host: Host, data_dir: Path) -> None:
        self.name = name
        self.host = host
        self.data_dir = data_dir
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []

    @property
    def address(self) -> str:
        return f"{self.host.address}:{PEER_PORT}"

    @property
    def peer_url(self) -> str:
        return f"https://{self.address}"

    def start(self, timeout: float = 90.0) -> None:
        """Start `outpost run` in the namespace and wait for its ready line."""
        self.log = []
        proc = self.host.run(
            [PY, "-m", "cli.main", "run", "--data-dir", str(self.data_dir),
             "--listen", "127.0.0.1:0", "--peer-listen", self.address],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.proc = proc
        ready = threading.Event()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.log.append(line)
                if "ready on " in line:
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{self.name} did not become ready:\n{''.join(self.log)}")

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after a bound; by PID, only our own process."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.log.append(f"[test] {self.name} still running 30 s after SIGTERM: SIGKILL\n")
                proc.kill()
                proc.wait(timeout=10)
        return proc.returncode

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    # -- the daemon's views, through its admin socket --

    def admin(self, path: str) -> Any:
        transport = httpx.HTTPTransport(uds=str(self.data_dir / "admin.sock"))
        with httpx.Client(transport=transport, base_url="http://admin", timeout=10) as http:
            response = http.get(path)
            response.raise_for_status()
            return response.json()

    def view(self) -> dict[str, dict[str, Any]]:
        return {row["node_id"]: row for row in self.admin("/peers")}

    def states(self) -> dict[str, str]:
        return {node_id: row["state"] for node_id, row in self.view().items()}

    def status(self) -> dict[str, Any]:
        return dict(self.admin("/status"))

    def audit(self) -> list[dict[str, Any]]:
        out = outpost("audit", "tail", "--json", data_dir=self.data_dir).stdout
        return [json.loads(line)["entry"] for line in out.splitlines()]


class NetFed:
    """A federation authority and one enrolled node per host, found by mDNS (no seeds)."""

    def __init__(self, tmp: Path, topo: Topology) -> None:
        self.tmp = tmp
        self.topo = topo
        self.ca = tmp / "ca"
        outpost("federation", "init", "--dir", str(self.ca), "--name", "acme")
        self.nodes: list[Node] = []
        for host in topo.hosts:
            name = f"node-{host.index}"
            d = enroll(tmp, self.ca, name, "--tier", "edge", "--site", "lab",
                       "--jurisdiction", "DE")
            _configure(d, host.address)
            self.nodes.append(Node(name, host, d))

    def start_all(self) -> None:
        for node in self.nodes:  # one at a time: the machine may have two cores
            node.start()

    def stop_all(self) -> None:
        for node in self.nodes:  # SIGTERM to all first: they drain in parallel
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            node.stop()

    def names(self) -> set[str]:
        return {n.name for n in self.nodes}

    def wait_all_alive(self, nodes: list[Node] | None = None, timeout: float = CONVERGE_S) -> None:
        """Every node in ``nodes`` sees every node of the federation alive."""
        for node in nodes or self.nodes:
            eventually(partial(_sees_alive, node, self.names()),
                       timeout, f"{node.name} to see {sorted(self.names())} alive", fed=self)

    def sign_policy(self, version: int) -> Path:
        cedar = self.tmp / f"p{version}.cedar"
        cedar.write_text('permit(principal, action == Action::"infer", resource);\n'
                         f'// version {version}\n')
        bundle = self.tmp / f"policy-{version}.json"
        outpost("policy", "sign", str(cedar), "--version", str(version), "--ca", str(self.ca),
                "-o", str(bundle))
        return bundle

    def hello(self, from_host: Host, cert_of: Node, to: Node) -> dict[str, Any]:
        """From ``from_host``'s namespace, GET ``to``'s hello with ``cert_of``'s certificate."""
        proc = from_host.run([PY, "-c", _HELLO, str(cert_of.data_dir), to.peer_url],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        return dict(json.loads(out))

    def log_tails(self, lines: int = 25) -> str:
        return "\n".join(f"--- {n.name} log (last {lines} lines) ---\n" + "".join(n.log[-lines:])
                         for n in self.nodes)


def _configure(data_dir: Path, address: str) -> None:
    path = data_dir / "outpost.toml"
    raw = tomllib.loads(path.read_text())
    raw["federation"].update({"seeds": [], "preset": "local", "advert_interval_s": 1.0,
                              "checkpoint_interval_s": 1.0,
                              "advertise": f"{address}:{PEER_PORT}"})
    raw["discovery"] = {"mdns": True, "interfaces": [address], "confirm_interval_s": 2.0}
    path.write_text(tomli_w.dumps(raw))


def _alive(node: Node) -> set[str]:
    return {n for n, s in node.states().items() if s == "alive"}


def _sees_alive(node: Node, names: set[str]) -> bool:
    return _alive(node) >= names


def _has_policy(node: Node, version: int) -> bool:
    return bool(node.status()["policy_version"] == version)


def _state_in(node: Node, of: str, states: set[str]) -> bool:
    """``of``'s state in ``node``'s view is one of ``states`` ("gone" when not listed)."""
    return node.states().get(of, "gone") in states


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[NetFed]:
    require_netns()
    with Topology.create(3) as topo:
        uid = topo.uid
        federation = NetFed(tmp_path, topo)
        try:
            yield federation
        finally:
            federation.stop_all()
            print(federation.log_tails(60))  # shown by pytest only when the test failed
    assert not [ns for ns in namespaces() if uid in ns], "namespaces left behind"


def test_nodes_find_each_other_by_mdns_with_no_seeds(fed: NetFed) -> None:
    for node in fed.nodes:
        raw = tomllib.loads((node.data_dir / "outpost.toml").read_text())
        assert raw["federation"]["seeds"] == [] and raw["discovery"]["mdns"] is True
    fed.start_all()
    fed.wait_all_alive()
    rows = json.loads(outpost("peers", "--json", data_dir=fed.nodes[0].data_dir).stdout)
    by_id = {r["node_id"]: r for r in rows}
    assert set(by_id) == fed.names()
    for node in fed.nodes:
        assert by_id[node.name]["address"] == node.address  # each reached on its own host
    eventually(lambda: all(r["tier"] == "edge" and r["jurisdiction"] == "DE"
                           for r in fed.nodes[0].view().values()),
               CONVERGE_S, "every node's attested advert at node-1", fed=fed)
    assert fed.nodes[2].status()["members"] == 3


def test_policy_applied_on_one_node_reaches_all(fed: NetFed) -> None:
    fed.start_all()
    fed.wait_all_alive()
    outpost("policy", "apply", str(fed.sign_policy(5)), data_dir=fed.nodes[1].data_dir)
    for node in fed.nodes:
        eventually(partial(_has_policy, node, 5), CONVERGE_S,
                   f"policy v5 at {node.name}", fed=fed)
    for node in (fed.nodes[0], fed.nodes[2]):
        applied = [e for e in node.audit() if e["kind"] == "policy.apply"]
        assert applied and applied[-1]["policy_version"] == 5
        assert applied[-1]["caller"].startswith("gossip")


def test_partitioned_node_is_detected_and_rejoins_with_the_new_policy_after_heal(
        fed: NetFed) -> None:
    n1, n2, n3 = fed.nodes
    fed.start_all()
    fed.wait_all_alive()
    outpost("policy", "apply", str(fed.sign_policy(1)), data_dir=n1.data_dir)
    for node in fed.nodes:
        eventually(partial(_has_policy, node, 1), CONVERGE_S,
                   f"policy v1 at {node.name}", fed=fed)

    fed.topo.link_down(n3.host)  # a pulled cable: no goodbye
    for node in (n1, n2):
        eventually(partial(_state_in, node, n3.name, {"dead"}), DETECT_S,
                   f"{n3.name} dead at {node.name}", fed=fed)
        assert _alive(node) == {n1.name, n2.name}  # the majority still sees itself
    eventually(lambda: _alive(n3) == {n3.name}, DETECT_S, "node-3 to see itself alone", fed=fed)

    # The majority moves on while node-3 is cut off.
    outpost("policy", "apply", str(fed.sign_policy(2)), data_dir=n1.data_dir)
    eventually(lambda: n2.status()["policy_version"] == 2, CONVERGE_S, "policy v2 at node-2",
               fed=fed)
    assert n3.status()["policy_version"] == 1

    fed.topo.link_up(n3.host)  # no operator action from here on
    fed.wait_all_alive(timeout=HEAL_S)
    eventually(lambda: n3.status()["policy_version"] == 2, HEAL_S, "policy v2 at node-3",
               fed=fed)
    applied = [e for e in n3.audit() if e["kind"] == "policy.apply"]
    assert applied[-1]["policy_version"] == 2 and applied[-1]["caller"].startswith("gossip")


def test_killed_daemon_is_detected_dead(fed: NetFed) -> None:
    n1, n2, n3 = fed.nodes
    fed.start_all()
    fed.wait_all_alive()
    n3.kill()  # SIGKILL: no leave message, no mDNS goodbye
    for node in (n1, n2):
        eventually(partial(_state_in, node, n3.name, {"dead"}), DETECT_S,
                   f"{n3.name} dead at {node.name}", fed=fed)
        assert _alive(node) == {n1.name, n2.name}


def test_revoked_node_is_refused_and_drops_out_of_every_view(fed: NetFed) -> None:
    n1, n2, n3 = fed.nodes
    fed.start_all()
    fed.wait_all_alive()
    # Before: node-3's certificate opens the peer endpoints of the others from node-3's host.
    for other in (n1, n2):
        answer = fed.hello(n3.host, n3, other)
        if isinstance(answer.get("body"), dict):
            answer["body"].pop("time", None)  # the peer's clock (node.clock), not compared here
        assert answer == {"ok": True, "body": {"node_id": other.name, "you": n3.name}}
    # node-3 also holds a connection to node-1 opened before the revocation, kept warm.
    held = HeldConnection(n3.host, n3, n1)
    try:
        before = held.ask("hello")
        assert before["ok"], before

        crl = fed.tmp / "crl.pem"
        outpost("federation", "revoke", n3.name, "--ca", str(fed.ca), "-o", str(crl))
        outpost("apply", str(crl), data_dir=n1.data_dir)
        # Gossip from the revoked node is refused even on the connection it already had.
        after = held.ask("gossip")
        assert not after["ok"] and after.get("status") == 403, after
        assert after.get("local", before["local"]) == before["local"], "connection was not held"
    finally:
        held.close()
    eventually(lambda: any(e["kind"] == "revocation.apply" and e["caller"].startswith("gossip")
                           for e in n2.audit()),
               CONVERGE_S, "the revocation list at node-2 by gossip", fed=fed)

    for other in (n1, n2):
        refused = fed.hello(n3.host, n3, other)
        assert not refused["ok"] and refused["transport"], refused  # refused at the handshake
        # Same host, same network path, a certificate that is not revoked: still let in.
        assert fed.hello(n3.host, n2 if other is n1 else n1, other)["ok"]
    for node in (n1, n2):
        eventually(partial(_state_in, node, n3.name, {"suspect", "dead", "gone"}),
                   DETECT_S, f"revoked {n3.name} no longer alive at {node.name}", fed=fed)
    # Nor does the federation keep talking to it: node-3 ends up seeing nobody alive.
    eventually(lambda: _alive(n3) == {n3.name}, DETECT_S, "node-3 cut off from the others",
               fed=fed)
    # And it stays out, over more than two reconnect rounds (10 s each with the local preset)
    # in which both sides keep trying to reach each other.
    deadline = time.monotonic() + STAY_OUT_S
    while time.monotonic() < deadline:
        for node in (n1, n2):
            assert _alive(node) == {n1.name, n2.name}, (node.name, node.states())
        assert _alive(n3) == {n3.name}, n3.states()
        time.sleep(0.5)

    # The others tell it nothing more either: node-2 leaves, node-1 learns it, node-3 must not
    # (node-1 keeps trying to reconnect to node-3 as to any dead member: the TLS handshake with
    # a revoked server has to fail on node-1's side).
    assert n2.stop() == 0, "".join(n2.log[-30:])
    eventually(lambda: n1.states().get(n2.name) == "left", CONVERGE_S, "node-2 left at node-1",
               fed=fed)
    deadline = time.monotonic() + STAY_OUT_S
    while time.monotonic() < deadline:
        assert n3.states().get(n2.name) == "dead", n3.states()
        time.sleep(0.5)


class HeldConnection:
    """A client in a host's namespace holding one kept-alive connection to a peer endpoint."""

    def __init__(self, host: Host, cert_of: Node, to: Node) -> None:
        self.proc = host.run([PY, "-c", _HELD, str(cert_of.data_dir), to.peer_url,
                              cert_of.name, to.name],
                             cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()  # the script answers every command within 10 s
        assert line, self.proc.stderr.read() if self.proc.stderr else "no answer"
        return dict(json.loads(line))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
