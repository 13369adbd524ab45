"""Policy-gated forwarding between real daemons on three hosts (Linux network namespaces on one
bridge, tests/netns.py), found by mDNS alone: an edge node (DE) that holds no model, an on-prem
node (DE) and a cloud node (US) that both hold ``digits``, under DESIGN §4's "personal data stays
off the cloud and in its jurisdiction; public data anywhere", plus a receiver-side
``forbid ... infer ... personal on cloud`` so the cloud refuses what the edge would never send.

Covered, on the real network path (each daemon's peer endpoint on its host's eth0):

- personal data overflowing the edge runs on-prem, never on the cloud; public data may burst to
  the cloud;
- with on-prem's cable pulled, personal data is refused (403/503) and not sent to the cloud;
- a forged forward (the edge's own certificate, from the edge's host, straight to the cloud's
  peer endpoint, bypassing the edge's policy) is refused by the cloud and audited there;
- audit entries on both ends of a forward name the same request (``detail.request``);
- **nothing leaves when denied**, measured on the wire: while a burst of denied personal
  requests with a large payload goes through the edge, the byte counters of the cloud's veth
  (and of the edge's) grow by far less than the payload (see ``test_with_on_prem_down_...``);
  the bridge does not flood unknown unicast to the cloud's port, so its veth counts only what
  is addressed to it (see ``_no_unknown_unicast_to``).

A forwarded request without explicit labels is refused by the receiver (it would otherwise be
judged with the receiver's own jurisdiction and default class).

The tests share one federation (a module fixture: starting three daemons and letting mDNS and
gossip converge is most of the cost) and run in file order; the last one pulls on-prem's cable
and puts it back. Each also runs alone (``-k``), on a federation of its own.

Apps reach a daemon's app endpoint on its host's own loopback, so requests are made by a small
client (``Agent``) running inside the host's namespace; the test process reads audit logs and
status through the admin sockets on the shared filesystem. Everything this module starts is
stopped by PID and every namespace is deleted at teardown. Nothing here measures time: waits are
bounded polls with generous limits.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from node.testing import EXAMPLE_POLICY, NO_PERSONAL_ON_CLOUD, ROOT, enroll, eventually, outpost
from tests.netns import Host, Topology, namespaces, require_netns
from tests.node.test_federation_netns import PY, Node, _configure

pytestmark = [pytest.mark.netns, pytest.mark.integration, pytest.mark.slow]

CONVERGE_S = 60.0
DETECT_S = 60.0
# Bound on one forwarded request: a peer whose cable was just pulled is given up on after this,
# so a request made before membership notices answers 503 in seconds, not after the default 10.
FORWARD_TIMEOUT_S = 3.0

# DESIGN §4's example and the receiving side's refusal.
POLICY = EXAMPLE_POLICY + NO_PERSONAL_ON_CLOUD

SAMPLE = json.loads((ROOT / "models" / "sample" / "digits.json").read_text())
IMAGE: list[float] = [float(v) for v in SAMPLE["examples"][0]["input"]]

# A personal payload big enough to see on the wire: 256 images of 64 pixels, each image's last
# pixel a recognisable marker (the ONNX input has a dynamic batch dimension). One request is
# 64 KiB even as raw FP32 (~80 KB as JSON), several times what gossip, SWIM and mDNS put on a
# link in a few seconds (measured here: 0-18 KB in 4 s), so one leaked request would stand out.
BURST_ROWS = 256
BURST_REQUESTS = 16
MARKER = 31337.0
# How long the byte counters keep watching after the last denied answer, so that a payload sent
# late (after the caller was answered) would be counted too: longer than one forward timeout.
SETTLE_S = FORWARD_TIMEOUT_S + 1.0
# The smallest form the payload of one such request takes on the wire: its raw FP32 tensor
# (the binary tensor extension). JSON, as sent here and as the edge re-encodes it, is larger.
TENSOR_BYTES = BURST_ROWS * 64 * 4

# Run inside a host's namespace: one JSON command per stdin line, one JSON line of results per
# command. Keeps one warm httpx client per certificate (None: a plain app client).
_AGENT = r"""
import json, sys
from pathlib import Path
import httpx
from node.tls import client_context

clients = {}

def client(cert):
    if cert not in clients:
        if cert:
            d = Path(cert)
            ctx = client_context((d / "node.crt").read_bytes(), (d / "node.key").read_bytes(),
                                 (d / "federation.crt").read_bytes())
            clients[cert] = httpx.Client(verify=ctx, timeout=30)
        else:
            clients[cert] = httpx.Client(timeout=30)
    return clients[cert]

for line in sys.stdin:
    cmd = json.loads(line)
    out = []
    for _ in range(cmd.get("repeat", 1)):
        try:
            r = client(cmd.get("cert")).request(
                cmd["method"], cmd["url"], headers=cmd.get("headers") or {},
                content=cmd["body"].encode() if cmd.get("body") is not None else None)
            try:
                doc = r.json()
            except ValueError:
                doc = r.text
            out.append({"status": r.status_code, "doc": doc})
        except httpx.HTTPError as exc:
            out.append({"status": None, "doc": {"error": f"{type(exc).__name__}: {exc}"}})
    print(json.dumps(out), flush=True)
"""


class Agent:
    """An HTTP client living in one host's namespace, driven over its stdin/stdout."""

    def __init__(self, host: Host) -> None:
        self.proc = host.run([PY, "-c", _AGENT], cwd=ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put("")

    def request(self, method: str, url: str, body: Any = None, *, cert: Path | None = None,
                headers: dict[str, str] | None = None, repeat: int = 1,
                timeout: float = 120.0) -> list[dict[str, Any]]:
        assert self.proc.stdin is not None
        cmd = {"method": method, "url": url, "repeat": repeat, "headers": headers or {},
               "cert": str(cert) if cert else None,
               "body": None if body is None else (body if isinstance(body, str)
                                                  else json.dumps(body))}
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"agent gave no answer within {timeout:.0f} s to {method} "
                                 f"{url}") from None
        assert line, f"agent exited: {self.proc.stderr.read() if self.proc.stderr else ''}"
        return list(json.loads(line))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # our own child, by PID
        self.proc.wait(timeout=10)


@dataclass
class Site:
    node: Node
    agent: Agent

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def host(self) -> Host:
        return self.node.host

    @property
    def app_url(self) -> str:
        info = json.loads((self.node.data_dir / "daemon.json").read_text())
        return f"http://{info['listen']}"

    def infer(self, body: dict[str, Any], repeat: int = 1, timeout: float = 120.0
              ) -> list[dict[str, Any]]:
        return self.agent.request("POST", f"{self.app_url}/v2/models/digits/infer", body,
                                  repeat=repeat, timeout=timeout)

    def peer_requests(self) -> float:
        """This daemon's ``outpost_peer_requests_total{route="infer"}``."""
        [answer] = self.agent.request("GET", f"{self.app_url}/metrics")
        assert answer["status"] == 200, answer
        total = 0.0
        for line in str(answer["doc"]).splitlines():
            if line.startswith('outpost_peer_requests_total{route="infer"}'):
                total += float(line.split()[-1])
        return total

    def audit(self) -> list[dict[str, Any]]:
        out = outpost("audit", "tail", "-n", "5000", "--json", data_dir=self.node.data_dir).stdout
        return [json.loads(line)["entry"] for line in out.splitlines()]

    def states(self) -> dict[str, str]:
        return self.node.states()

    def link_bytes(self) -> tuple[int, int]:
        """(rx, tx) byte counters of this host's veth end (eth0), read inside its namespace."""
        [link] = json.loads(self.host.ip("-s", "-j", "link", "show", "dev", "eth0").stdout)
        return int(link["stats64"]["rx"]["bytes"]), int(link["stats64"]["tx"]["bytes"])


class Sites:
    def __init__(self, topo: Topology, tmp: Path) -> None:
        self.topo = topo
        self.tmp = tmp
        self.ca = tmp / "ca"
        self.all: list[Site] = []

    @property
    def edge(self) -> Site:
        return self.all[0]

    @property
    def onprem(self) -> Site:
        return self.all[1]

    @property
    def cloud(self) -> Site:
        return self.all[2]

    def log_tails(self, lines: int = 40) -> str:
        return "\n".join(f"--- {s.name} log (last {lines} lines) ---\n" + "".join(s.node.log[-lines:])
                         for s in self.all)

    def wait(self, check: Any, what: str, timeout: float = CONVERGE_S) -> Any:
        return eventually(check, timeout, what, interval=0.5, diagnose=self.log_tails)


def personal(marker: float = 0.0, rows: int = 1, data_class: str | None = "personal",
             jurisdiction: str | None = None) -> dict[str, Any]:
    """An OIP request labelled ``data_class`` (personal unless told) of ``rows`` images."""
    return request_body(marker, rows, data_class, jurisdiction)


def public(marker: float = 0.0, rows: int = 1) -> dict[str, Any]:
    return request_body(marker, rows, "public", None)


def request_body(marker: float, rows: int, data_class: str | None,
                 jurisdiction: str | None) -> dict[str, Any]:
    """An OIP request of ``rows`` images, each with ``marker`` as its last pixel."""
    data = [v for _ in range(rows) for v in (*IMAGE[:63], marker)]
    params: dict[str, Any] = {}
    if data_class:
        params["outpost.data_class"] = data_class
    if jurisdiction:
        params["outpost.jurisdiction"] = jurisdiction
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 64], "data": data}],
            "parameters": params}


def _configure_site(data_dir: Path, address: str) -> None:
    _configure(data_dir, address)  # mDNS on the host's eth0, no seeds, the `local` preset
    path = data_dir / "outpost.toml"
    raw = tomllib.loads(path.read_text())
    raw.setdefault("placement", {})["forward_timeout_s"] = FORWARD_TIMEOUT_S
    path.write_text(tomli_w.dumps(raw))


def _no_unknown_unicast_to(topo: Topology, host: Host) -> None:
    """Stop the bridge flooding unknown unicast out of ``host``'s port (broadcast and multicast,
    so ARP and mDNS, still flood). Without this the cloud's veth counts frames that are not for
    it: when on-prem's cable is pulled the bridge forgets on-prem's MAC, and the edge's TLS
    segments still in flight to on-prem are flooded to every other port (measured: 80-90 KB
    at the cloud's veth, dropped there by the kernel as addressed to another host). With this,
    the cloud's link carries only what is addressed to the cloud, which is what "nothing is
    sent to the denied peer" is about."""
    subprocess.run(["ip", "-n", topo.bridge_ns, "link", "set", "dev", host.bridge_port, "type",
                    "bridge_slave", "flood", "off"], check=True, capture_output=True, timeout=30)


def _edge_sees_model_holders(edge: Site, names: set[str]) -> bool:
    rows = edge.node.view()
    return all(rows.get(n, {}).get("state") == "alive" and rows[n].get("models") for n in names)


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:
    require_netns()
    tmp = tmp_path_factory.mktemp("fwd-netns")
    with Topology.create(3) as topo:
        uid = topo.uid
        s = Sites(topo, tmp)
        try:
            _no_unknown_unicast_to(topo, topo.host(3))
            outpost("federation", "init", "--dir", str(s.ca), "--name", "acme")
            roles = [("edge", "edge", "DE"), ("onprem", "onprem", "DE"), ("cloud", "cloud", "US")]
            for host, (name, tier, jurisdiction) in zip(topo.hosts, roles, strict=True):
                d = enroll(tmp, s.ca, name, "--tier", tier, "--site", f"site-{name}",
                           "--jurisdiction", jurisdiction)
                _configure_site(d, host.address)
                if name != "edge":  # the edge box cannot run the model itself
                    outpost("models", "add", str(ROOT / "models" / "sample" / "digits.onnx"),
                            "--name", "digits", "--version", "1", data_dir=d)
                s.all.append(Site(Node(name, host, d), Agent(host)))
            for site in s.all:  # one at a time: the machine may have two cores
                site.node.start()
            cedar = tmp / "policy.cedar"
            cedar.write_text(POLICY)
            bundle = tmp / "policy.json"
            outpost("policy", "sign", str(cedar), "--version", "1", "--ca", str(s.ca),
                    "-o", str(bundle))
            outpost("policy", "apply", str(bundle), data_dir=s.edge.node.data_dir)
            for site in s.all:
                s.wait(lambda site=site: site.node.status()["policy_version"] == 1,
                       f"policy v1 at {site.name} (by gossip from the edge)")
            s.wait(lambda: _edge_sees_model_holders(s.edge, {"onprem", "cloud"}),
                   "the edge to see on-prem and cloud alive, with their models, found by mDNS")
            yield s
        finally:
            for site in s.all:
                site.agent.close()
            for site in s.all:  # SIGTERM to all first: they drain in parallel
                if site.node.proc is not None and site.node.proc.poll() is None:
                    site.node.proc.send_signal(signal.SIGTERM)
            for site in s.all:
                site.node.stop()
            print(s.log_tails(60))  # shown by pytest only when a test failed
    assert not [ns for ns in namespaces() if uid in ns], "namespaces left behind"


def test_sites_found_each_other_by_mdns_with_their_attested_attributes(sites: Sites) -> None:
    for site in sites.all:
        raw = tomllib.loads((site.node.data_dir / "outpost.toml").read_text())
        assert raw["federation"]["seeds"] == [] and raw["discovery"]["mdns"] is True
    view = sites.edge.node.view()
    expected = {"onprem": ("onprem", "DE"), "cloud": ("cloud", "US")}
    for name, (tier, jurisdiction) in expected.items():
        row = view[name]
        assert (row["tier"], row["jurisdiction"]) == (tier, jurisdiction), row
        node = next(s.node for s in sites.all if s.name == name)
        assert row["address"] == node.address  # reached on its own host, not on loopback


def test_personal_goes_on_prem_never_to_the_cloud_and_public_may_burst(sites: Sites) -> None:
    edge, onprem, cloud = sites.edge, sites.onprem, sites.cloud
    cloud_before = cloud.peer_requests()
    for marker in range(5):
        [r] = edge.infer(personal(float(marker)))
        assert r["status"] == 200, r
        params = r["doc"]["parameters"]
        assert params["outpost.served_by"] == "onprem", params
        assert params["outpost.route"] == "forwarded", params
    # The same on the wire, with a payload large enough to see: it crosses to on-prem's link
    # and not to the cloud's (gossip flows to both, so the cloud is held to less than one
    # request's worth, not to zero).
    big = personal(MARKER, rows=BURST_ROWS)
    size = TENSOR_BYTES
    onprem_rx0, cloud_rx0 = onprem.link_bytes()[0], cloud.link_bytes()[0]
    answers = edge.infer(big, repeat=4)
    onprem_rx1, cloud_rx1 = onprem.link_bytes()[0], cloud.link_bytes()[0]
    assert [r["status"] for r in answers] == [200] * 4, answers
    assert {r["doc"]["parameters"]["outpost.served_by"] for r in answers} == {"onprem"}
    seen = {"onprem rx": onprem_rx1 - onprem_rx0, "cloud rx": cloud_rx1 - cloud_rx0,
            "one request": size}
    print(f"bytes while personal data went on-prem: {seen}")
    assert onprem_rx1 - onprem_rx0 >= 4 * size, seen
    assert cloud_rx1 - cloud_rx0 < size, seen
    # No class: the node's default class never leaves, and the edge cannot run the model.
    [r] = edge.infer(personal(data_class=None))
    assert r["status"] == 403 and "restricted" in r["doc"]["error"], r
    # Public data may go anywhere that holds the model.
    [r] = edge.infer(public())
    assert r["status"] == 200, r
    assert r["doc"]["parameters"]["outpost.served_by"] in ("onprem", "cloud")
    assert cloud.peer_requests() - cloud_before <= 1  # at most the public request
    assert not [e for e in cloud.audit() if e["kind"] == "infer" and e["data_class"] == "personal"
                and e.get("outcome") == "admitted"]


def test_receiver_refuses_a_forged_forward_and_audits_match(sites: Sites) -> None:
    edge, onprem, cloud = sites.edge, sites.onprem, sites.cloud
    # The edge's own certificate, from the edge's host, straight to the cloud's peer endpoint:
    # the edge's policy would never send this, so the cloud must refuse it on its own.
    forged_id = f"forged-{uuid.uuid4().hex[:12]}"
    [r] = edge.agent.request(
        "POST", f"{cloud.node.peer_url}/peer/v1/infer/digits",
        personal(4242.0, jurisdiction="DE"), cert=edge.node.data_dir,
        headers={"outpost-hops": "1", "outpost-request-id": forged_id})
    assert r["status"] == 403, r
    assert "no-personal-on-cloud" in r["doc"]["error"], r
    refused = [e for e in cloud.audit() if e["kind"] == "infer"
               and e.get("detail", {}).get("request") == forged_id]
    assert len(refused) == 1, refused
    assert refused[0]["outcome"] == "denied" and refused[0]["caller"] == "node:edge"
    assert refused[0]["data_class"] == "personal" and refused[0]["policy_version"] == 1
    # The edge never decided that request: it is on the cloud's record only.
    assert not [e for e in edge.audit() if e.get("detail", {}).get("request") == forged_id]

    # A genuine forward is on both records, linked by the request id.
    [r] = edge.infer(personal(7.0))
    assert r["status"] == 200 and r["doc"]["parameters"]["outpost.served_by"] == "onprem", r
    sent = [e for e in edge.audit() if e["kind"] == "forward"][-1]
    assert sent["decision"] == "allowed" and sent["peer"] == "onprem", sent
    assert sent["policy_version"] == 1 and sent["data_class"] == "personal"
    served = [e for e in onprem.audit() if e["kind"] == "infer"
              and e.get("detail", {}).get("request") == sent["detail"]["request"]]
    assert len(served) == 1, (sent, served)
    assert served[0]["outcome"] == "admitted"
    assert served[0]["caller"] == "app:anonymous via node:edge"
    assert served[0]["data_class"] == "personal" and served[0]["policy_version"] == 1
    assert served[0]["detail"]["jurisdiction"] == "DE" and served[0]["detail"]["hops"] == 1
    assert not [e for e in cloud.audit()
                if e.get("detail", {}).get("request") == sent["detail"]["request"]]

    explained = json.loads(outpost("policy", "explain", "--data-class", "personal", "--to",
                                   "cloud", "--json", data_dir=edge.node.data_dir,
                                   check=False).stdout)
    assert explained["allowed"] is False, explained


def test_forwarded_data_without_a_jurisdiction_keeps_the_one_where_it_entered(
        sites: Sites) -> None:
    """DE data sent by the DE edge with no jurisdiction label must not become US data at the
    cloud: a receiver-side rule such as ``executor.jurisdiction == resource.jurisdiction``
    would otherwise let any forged forward through. Refusing the unlabelled forward (400/403)
    is as good as judging it DE."""
    edge, cloud = sites.edge, sites.cloud
    forged_id = f"nojur-{uuid.uuid4().hex[:12]}"
    [r] = edge.agent.request(
        "POST", f"{cloud.node.peer_url}/peer/v1/infer/digits", personal(1.0),
        cert=edge.node.data_dir,
        headers={"outpost-hops": "1", "outpost-request-id": forged_id})
    if r["status"] == 400:
        return  # refusing an unlabelled forward outright is a fix too
    assert r["status"] == 403, r
    [entry] = [e for e in cloud.audit() if e.get("detail", {}).get("request") == forged_id]
    assert entry["detail"]["jurisdiction"] == "DE", entry


def test_with_on_prem_down_personal_is_refused_and_nothing_reaches_the_cloud(
        sites: Sites) -> None:
    """Invariant: while on-prem is unreachable, no personal payload reaches the cloud — not as a
    request its handler sees (metric, audit) and not as bytes on its link. Gossip, SWIM probes
    and mDNS keep flowing, so the wire check compares the growth of the cloud's byte counters
    with the payload that was denied, not with zero: BURST_REQUESTS requests of ~80 KB of JSON
    each went through the edge, and the cloud's veth must see less than ONE of them (counted at its
    smallest encoding, the 64 KiB FP32 tensor) in that window, which stays open SETTLE_S after
    the last answer so that a payload sent late would be counted too. A control follows: the same
    payload labelled public does show up on the cloud's counters.
    The same holds for the edge's own veth: the payload never left the edge host at all."""
    edge, onprem, cloud = sites.edge, sites.onprem, sites.cloud
    sites.topo.link_down(onprem.host)  # a pulled cable: no goodbye
    try:
        # Before membership notices: the edge may still try on-prem (and fail: 503), but it
        # never fails over to the cloud, the one model holder left.
        cloud_before = cloud.peer_requests()
        cloud_rx0 = cloud.link_bytes()[0]
        early = edge.infer(personal(100.0, rows=BURST_ROWS), repeat=3, timeout=60)
        cloud_rx1 = cloud.link_bytes()[0]
        print("personal requests right after the cable was pulled:",
              [(r["status"], r["doc"].get("error", "")[:160]) for r in early],
              f"cloud rx {cloud_rx1 - cloud_rx0} bytes")
        for r in early:
            assert r["status"] in (403, 503), r
        assert cloud_rx1 - cloud_rx0 < TENSOR_BYTES, (cloud_rx1 - cloud_rx0, TENSOR_BYTES)
        assert cloud.peer_requests() == cloud_before

        sites.wait(lambda: edge.states().get("onprem") in ("suspect", "dead"),
                   "on-prem no longer alive at the edge", timeout=DETECT_S)

        burst = personal(MARKER, rows=BURST_ROWS)
        size = TENSOR_BYTES
        assert len(json.dumps(burst, separators=(",", ":"))) > size
        edge_denied_before = len([e for e in edge.audit() if e["kind"] == "forward"
                                  and e["decision"] == "denied"])
        cloud_infers_before = len([e for e in cloud.audit() if e["kind"] == "infer"])
        cloud_before = cloud.peer_requests()
        # The background for comparison (printed, not asserted): an idle window as long.
        idle0 = cloud.link_bytes()[0]
        time.sleep(SETTLE_S)
        idle = cloud.link_bytes()[0] - idle0
        cloud_rx0, cloud_tx0 = cloud.link_bytes()
        edge_rx0, edge_tx0 = edge.link_bytes()
        answers = edge.infer(burst, repeat=BURST_REQUESTS)
        time.sleep(SETTLE_S)  # an observation window, not a timing assertion
        cloud_rx1, cloud_tx1 = cloud.link_bytes()
        edge_rx1, edge_tx1 = edge.link_bytes()
        for r in answers:
            # Only the cloud holds the model now, and policy keeps personal data off it: 403,
            # naming why.
            assert r["status"] == 403, r
            assert "cloud" in r["doc"]["error"], r
        payload = size * BURST_REQUESTS
        seen = {"cloud rx": cloud_rx1 - cloud_rx0, "cloud tx": cloud_tx1 - cloud_tx0,
                "edge rx": edge_rx1 - edge_rx0, "edge tx": edge_tx1 - edge_tx0,
                "cloud rx when idle": idle, "one request": size, "payload": payload}
        print(f"bytes during the denied burst: {seen}")
        assert cloud_rx1 - cloud_rx0 < size, seen
        assert edge_tx1 - edge_tx0 < size, seen
        assert cloud.peer_requests() == cloud_before
        assert len([e for e in cloud.audit() if e["kind"] == "infer"]) == cloud_infers_before
        # The sender recorded every refusal.
        denied = [e for e in edge.audit() if e["kind"] == "forward" and e["decision"] == "denied"]
        assert len(denied) - edge_denied_before == BURST_REQUESTS
        assert all(e["data_class"] == "personal" and e.get("peer") is None
                   for e in denied[edge_denied_before:])

        # Public data still bursts to the cloud, and both ends record the same request. The
        # same payload labelled public is the control for the wire check above: when it is
        # allowed, the cloud's counters do see it.
        cloud_before = cloud.peer_requests()
        cloud_rx0 = cloud.link_bytes()[0]
        [r] = edge.infer(public(MARKER, rows=BURST_ROWS))
        cloud_rx1 = cloud.link_bytes()[0]
        assert r["status"] == 200, r
        assert r["doc"]["parameters"]["outpost.served_by"] == "cloud", r
        assert cloud_rx1 - cloud_rx0 >= size, (cloud_rx1 - cloud_rx0, size)
        assert cloud.peer_requests() - cloud_before == 1
        sent = [e for e in edge.audit() if e["kind"] == "forward"][-1]
        assert sent["decision"] == "allowed" and sent["peer"] == "cloud", sent
        served = [e for e in cloud.audit() if e["kind"] == "infer"
                  and e.get("detail", {}).get("request") == sent["detail"]["request"]]
        assert len(served) == 1 and served[0]["outcome"] == "admitted", (sent, served)
        assert served[0]["data_class"] == "public"
        assert served[0]["caller"] == "app:anonymous via node:edge"
        assert not [e for e in cloud.audit() if e["kind"] == "infer"
                    and e["data_class"] == "personal" and e.get("outcome") == "admitted"]
    finally:
        sites.topo.link_up(onprem.host)
    # Cable back in: on-prem rejoins with no operator action and takes personal data again.
    sites.wait(lambda: edge.states().get("onprem") == "alive", "on-prem alive again at the edge",
               timeout=DETECT_S)
    [r] = edge.infer(personal(200.0))
    assert r["status"] == 200 and r["doc"]["parameters"]["outpost.served_by"] == "onprem", r
