"""Discovery: seed back-off in virtual time, the TXT contract, and real mDNS between namespaces.

Invariants:
* SeedDialer retries every seed forever, never sooner than (1 - jitter) x and never later than
  the exponential schedule capped at backoff_max, and is a pure function of its rng.
* A peer is proposed only if its advertisement keeps the TXT contract; our own never.
* In namespaces joined by a bridge, with no seeds, every fake node finds every other one;
  a peer that leaves cleanly is reported lost at once (goodbye); one whose link goes down or
  that is partitioned away is reported lost once its records expire unanswered, and found
  again after the link heals.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from node.discovery import (
    MAX_CANDIDATES,
    MAX_TXT_BYTES,
    Advert,
    Candidate,
    Discovery,
    DiscoveryError,
    SeedDialer,
    _PeerTable,
    parse_candidate,
    service_name,
)
from tests.netns import Host, Topology, namespaces, require_netns

ROOT = Path(__file__).resolve().parents[2]

# ---- (a) SeedDialer, virtual time -------------------------------------------------------


def test_all_seeds_due_at_once_and_handed_out_once() -> None:
    dialer = SeedDialer(["a:1", "b:2", "a:1"], rng=random.Random(1))
    assert dialer.seeds == ["a:1", "b:2"]
    assert dialer.due(0.0) == ["a:1", "b:2"]
    assert dialer.due(0.0) == []  # in flight until reported
    assert dialer.next_due() is None


def test_backoff_doubles_to_the_ceiling_without_jitter() -> None:
    dialer = SeedDialer(["s:1"], backoff_initial=1.0, backoff_max=60.0, jitter=0.0)
    now, waits = 0.0, []
    for _ in range(9):
        assert dialer.due(now) == ["s:1"]
        nxt = dialer.failed("s:1", now)
        waits.append(nxt - now)
        assert dialer.due(nxt - 0.001) == []  # not a moment early
        now = nxt
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_jitter_stays_in_bounds_and_is_deterministic() -> None:
    def schedule(seed: int) -> list[float]:
        dialer = SeedDialer(["s:1"], backoff_initial=0.5, backoff_max=30.0, jitter=0.5,
                            rng=random.Random(seed))
        now, out = 0.0, []
        for n in range(1, 40):
            dialer.due(now)
            nxt = dialer.failed("s:1", now)
            base = min(30.0, 0.5 * 2 ** (n - 1))
            assert 0.5 * base <= nxt - now <= base
            out.append(nxt)
            now = nxt
        return out

    assert schedule(7) == schedule(7)
    assert schedule(7) != schedule(8)


def test_success_resets_backoff_and_recontacts_about_every_backoff_max() -> None:
    dialer = SeedDialer(["s:1"], backoff_initial=1.0, backoff_max=60.0, jitter=0.0)
    for now in range(5):
        dialer.due(float(now) * 100)
        dialer.failed("s:1", float(now) * 100)
    assert dialer.failures("s:1") == 5
    dialer.due(1000.0)
    assert dialer.succeeded("s:1", 1000.0) == 1060.0
    assert dialer.failures("s:1") == 0
    assert dialer.due(1059.0) == [] and dialer.due(1060.0) == ["s:1"]
    assert dialer.failed("s:1", 1060.0) == 1061.0  # back to the first step


def test_retries_forever_without_hammering() -> None:
    """A seed down for a day: a bounded number of attempts, and still tried at the end."""
    dialer = SeedDialer(["s:1", "t:2"], backoff_initial=1.0, backoff_max=60.0,
                        rng=random.Random(3))
    attempts: list[float] = []
    now, day = 0.0, 86400.0
    while now < day:
        for seed in dialer.due(now):
            attempts.append(now)
            dialer.failed(seed, now)
        nxt = dialer.next_due()
        assert nxt is not None
        now = max(now, nxt)
    # Two seeds, at most one attempt each per 30 s (60 s x (1 - jitter)) once capped.
    assert len(attempts) <= 2 * (day / 30 + 10)
    assert any(t > day - 120 for t in attempts)


def test_huge_failure_counts_do_not_overflow() -> None:
    dialer = SeedDialer(["s:1"], backoff_initial=1.0, backoff_max=60.0, jitter=0.0)
    assert dialer.delay(10**9) == 60.0


def test_seed_management_and_misuse() -> None:
    dialer = SeedDialer([], rng=random.Random(0))
    dialer.add("x:1", now=5.0)
    assert dialer.next_due() == 5.0 and dialer.due(4.0) == [] and dialer.due(5.0) == ["x:1"]
    dialer.discard("x:1")
    assert dialer.seeds == []
    with pytest.raises(KeyError, match="add\\(\\) it first"):
        dialer.failed("nope:1", 0.0)
    with pytest.raises(ValueError, match="backoff_initial <= backoff_max"):
        SeedDialer([], backoff_initial=5, backoff_max=1)
    with pytest.raises(ValueError, match="jitter must be between 0 and 1"):
        SeedDialer([], jitter=1.5)


# ---- the TXT contract -------------------------------------------------------------------

FP = "ab" * 32


def _props(**txt: str) -> dict[bytes, bytes | None]:
    return {k.encode(): v.encode() for k, v in txt.items()}


def test_advert_txt_round_trips_to_the_same_candidate() -> None:
    advert = Advert("edge-1", 8471, 8472, tier="edge", fingerprint=FP, federation="acme")
    assert advert.txt() == {"id": "edge-1", "tier": "edge", "peer": "8471", "udp": "8472",
                            "fp": FP, "fed": "acme"}
    props = _props(**advert.txt())
    got = parse_candidate(advert.service_name, props, ["10.0.0.2", "fe80::1%eth0", "10.0.0.1"])
    assert got == Candidate("edge-1", ["10.0.0.1", "10.0.0.2", "fe80::1%eth0"], 8471, 8472,
                            FP, "edge", "acme")


@pytest.mark.parametrize("change", [
    {"id": "Not_An_Id"},
    {"id": "other"},              # instance name says edge-1
    {"peer": "0"},
    {"udp": "70000"},
    {"peer": " 80"},
    {"peer": "\u0668\u0660"},     # Arabic-Indic digits: isdigit() but not a port
    {"fp": "XYZ"},
    {"tier": "x" * 200},
    {"fed": "a\x00b"},
    {"junk": "j" * MAX_TXT_BYTES},
])
def test_malformed_adverts_are_ignored(change: dict[str, str]) -> None:
    txt = {**Advert("edge-1", 8471, 8471).txt(), **change}
    assert parse_candidate(service_name("edge-1"), _props(**txt), ["10.0.0.1"]) is None


def test_unknown_keys_are_ignored_and_keys_are_case_insensitive() -> None:
    props = {b"ID": b"n1", b"Peer": b"1", b"udp": b"2", b"future": b"x", b"flag": None}
    got = parse_candidate(service_name("n1"), props, ["10.0.0.1"])
    assert got is not None and (got.node_id, got.peer_port, got.udp_port) == ("n1", 1, 2)
    assert parse_candidate(service_name("n1"), props, []) is None  # nowhere to dial


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"node_id": "Bad Id"}, "node name"),
    ({"peer_port": 0}, "peer port"),
    ({"udp_port": 65536}, "udp port"),
    ({"fingerprint": "ABCD"}, "lower-case hex"),
    ({"tier": "t\n"}, "printable"),
])
def test_advert_validation_names_the_field(kwargs: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {"node_id": "n1", "peer_port": 1, "udp_port": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        Advert(**fields)


# ---- the peer table (sans-time) ---------------------------------------------------------


def _cand(node_id: str, addr: str = "10.0.0.1") -> Candidate:
    return Candidate(node_id, [addr], 1, 1, "", "", "")


def test_peer_table_reports_new_changed_and_returning_peers_once() -> None:
    table = _PeerTable(random.Random(0))
    name = service_name("a")
    assert table.resolved(name, _cand("a")) == (True, False)
    assert table.resolved(name, _cand("a")) == (False, False)
    assert table.resolved(name, _cand("a", "10.0.0.9")) == (True, False)
    assert table.silent(name, 3.0) == _cand("a", "10.0.0.9")
    assert table.silent(name, 3.0) is None  # reported once
    assert table.probes_due(3.0) == []  # first probe after a back-off
    due_at = 3.0
    while not table.probes_due(due_at):
        due_at += 0.1
    assert 3.0 < due_at <= 4.1
    assert table.resolved(name, _cand("a")) == (True, True)
    assert table.goodbye(name) == _cand("a") and len(table) == 0


def test_peer_table_is_bounded() -> None:
    table = _PeerTable()
    for i in range(MAX_CANDIDATES):
        table.resolved(service_name(f"n{i}"), _cand(f"n{i}"))
    assert table.resolved(service_name("one-more"), _cand("one-more")) == (False, False)
    assert len(table) == MAX_CANDIDATES
    table.goodbye(service_name("n0"))
    assert table.resolved(service_name("one-more"), _cand("one-more")) == (True, False)


# ---- start-up errors name the fix (no sockets needed) -----------------------------------


async def test_interface_not_on_this_host_is_refused_with_the_fix() -> None:
    discovery = Discovery(Advert("n1", 8471, 8471), on_found=print, on_lost=print,
                          interfaces=["192.0.2.77"])  # TEST-NET-1: never assigned to a host
    with pytest.raises(DiscoveryError, match=r"discovery\.interfaces lists 192\.0\.2\.77.*"
                                             r"discovery\.mdns = false"):
        await discovery.start()
    await discovery.stop()  # harmless after a failed start


def test_constructor_validates_its_arguments() -> None:
    advert = Advert("n1", 8471, 8471)
    with pytest.raises(ValueError, match="not an IP address"):
        Discovery(advert, on_found=print, on_lost=print, interfaces=["eth0"])
    with pytest.raises(ValueError, match="record_ttl_s"):
        Discovery(advert, on_found=print, on_lost=print, record_ttl_s=0)


# ---- (b) real mDNS between network namespaces -------------------------------------------

FOUND_TIMEOUT_S = 30.0
LOST_TIMEOUT_S = 30.0   # record TTL 3 s + confirm 1 s + resolve 3 s, with ample slack
BACK_TIMEOUT_S = 60.0   # lost-peer probe back-off is at most a few seconds here
GOODBYE_TIMEOUT_S = 10.0


class Peer:
    """One ``tests.node._mdns_peer`` process in a host namespace, its JSON events collected."""

    def __init__(self, host: Host, node_id: str, log_dir: Path, *, bind: bool = True,
                 run: int = 1) -> None:
        self.node_id = node_id
        self.host = host
        self.events: list[dict[str, Any]] = []
        self._eof = False
        self._cond = threading.Condition()
        self._stderr_path = log_dir / f"{node_id}-{run}.stderr"
        self._stderr = self._stderr_path.open("w")
        argv = [sys.executable, "-m", "tests.node._mdns_peer", "--id", node_id,
                "--tier", "edge", "--fp", FP, "--fed", "test", "--peer-port", "8471",
                "--udp-port", "8472", "--record-ttl", "3", "--confirm-interval", "1"]
        if bind:
            argv += ["--interface", host.address]
        self.proc = host.run(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=self._stderr, text=True)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.events.append(json.loads(line))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for(self, what: str, pred: Callable[[dict[str, Any]], bool], timeout: float,
                 after: int = 0) -> dict[str, Any]:
        """First event (from index ``after``) matching ``pred``; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events[after:]:
                    if event["event"] == "error" and what != "error":
                        raise AssertionError(f"{self.node_id}: {event['message']}")
                    if pred(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    raise AssertionError(
                        f"{self.node_id} on {self.host.address}: no {what} within {timeout} s\n"
                        f"events: {self.events}\nstderr:\n{self.stderr_tail()}")
                self._cond.wait(min(left, 0.5))

    def found(self, node_id: str, timeout: float, after: int = 0) -> dict[str, Any]:
        return self.wait_for(f"found {node_id}", lambda e: e["event"] == "found"
                             and e["candidate"]["node_id"] == node_id, timeout, after)

    def lost(self, node_id: str, timeout: float, after: int = 0) -> dict[str, Any]:
        return self.wait_for(f"lost {node_id}", lambda e: e["event"] == "lost"
                             and e["node_id"] == node_id, timeout, after)

    def mark(self) -> int:
        with self._cond:
            return len(self.events)

    def send(self, line: str) -> None:
        """A command on stdin: ``stop`` (clean stop, goodbye) or ``fp <hex>`` (re-advertise)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        self.send("stop")

    def stderr_tail(self) -> str:
        self._stderr.flush()
        return "".join(self._stderr_path.read_text().splitlines(keepends=True)[-30:])

    def close(self) -> None:
        self._stderr.close()


@pytest.fixture
def net(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Topology, list[Peer]]]:
    """Three hosts on a bridge, a fake node on each (c binds to all interfaces, the default)."""
    require_netns()
    peers: list[Peer] = []
    with Topology.create(3) as topo:
        uid = topo.uid
        try:
            for host, node_id in zip(topo.hosts, "abc", strict=True):
                peers.append(Peer(host, node_id, tmp_path, bind=node_id != "c"))
            yield topo, peers
        finally:
            for peer in peers:
                peer.close()
    assert not [ns for ns in namespaces() if uid in ns], "namespaces left behind"


def _all_find_each_other(peers: list[Peer], after: dict[str, int] | None = None) -> float:
    """Wait until every peer found every other; returns when the last one was found, in seconds
    since its finder's process started."""
    slowest = 0.0
    for peer in peers:
        peer.wait_for("ready", lambda e: e["event"] == "ready", FOUND_TIMEOUT_S)
        for other in peers:
            if other is peer:
                continue
            event = peer.found(other.node_id, FOUND_TIMEOUT_S, (after or {}).get(peer.node_id, 0))
            cand = event["candidate"]
            assert cand == {"node_id": other.node_id, "addresses": [other.host.address],
                            "peer_port": 8471, "udp_port": 8472, "fingerprint": FP,
                            "tier": "edge", "federation": "test"}
            slowest = max(slowest, event["t"])
    for peer in peers:
        assert not [e for e in peer.events if e["event"] == "found"
                    and e["candidate"]["node_id"] == peer.node_id], "reported itself"
    return slowest


@pytest.mark.netns
@pytest.mark.slow
def test_mdns_peers_find_each_other_and_goodbye_is_reported(
        net: tuple[Topology, list[Peer]], tmp_path: Path) -> None:
    _, peers = net
    a, b, c = peers
    slowest = _all_find_each_other(peers)
    ready = max(e["t"] for p in peers for e in p.events if e["event"] == "ready")
    print(f"\nmDNS discovery: every peer found every other {slowest:.2f} s after process start "
          f"(start() returned after {ready:.2f} s: name probing and announcement)")

    # A changed advertisement (new certificate) is proposed again with the new fingerprint.
    marks = {p.node_id: p.mark() for p in peers}
    new_fp = "cd" * 32
    a.send(f"fp {new_fp}")
    a.wait_for("updated", lambda e: e["event"] == "updated", FOUND_TIMEOUT_S, marks["a"])
    for peer in (b, c):
        event = peer.found("a", FOUND_TIMEOUT_S, marks[peer.node_id])
        assert event["candidate"]["fingerprint"] == new_fp

    # Clean stop: goodbye, reported at once.
    marks = {p.node_id: p.mark() for p in peers}
    t0 = time.monotonic()
    b.stop()
    b.wait_for("stopped", lambda e: e["event"] == "stopped", GOODBYE_TIMEOUT_S)
    a.lost("b", GOODBYE_TIMEOUT_S, marks["a"])
    c.lost("b", GOODBYE_TIMEOUT_S, marks["c"])
    print(f"goodbye: lost reported {time.monotonic() - t0:.2f} s after stop was asked")
    assert b.proc.wait(timeout=10) == 0

    # The same node started again is announced and found again, and finds the others.
    marks = {p.node_id: p.mark() for p in (a, c)}
    b2 = Peer(b.host, "b", tmp_path, run=2)
    try:
        a.found("b", FOUND_TIMEOUT_S, marks["a"])
        c.found("b", FOUND_TIMEOUT_S, marks["c"])
        b2.found("a", FOUND_TIMEOUT_S)
        b2.found("c", FOUND_TIMEOUT_S)
    finally:
        b2.close()


@pytest.mark.netns
@pytest.mark.slow
def test_mdns_link_down_and_partition_are_noticed_and_heal(
        net: tuple[Topology, list[Peer]]) -> None:
    topo, peers = net
    a, b, c = peers
    _all_find_each_other(peers)
    h3 = topo.host(3)

    # Pulled cable: no goodbye; c's records expire unanswered at a and b.
    marks = {p.node_id: p.mark() for p in peers}
    t0 = time.monotonic()
    topo.link_down(h3)
    a.lost("c", LOST_TIMEOUT_S, marks["a"])
    b.lost("c", LOST_TIMEOUT_S, marks["b"])
    print(f"\nlink down: c reported lost after {time.monotonic() - t0:.2f} s")

    marks = {p.node_id: p.mark() for p in peers}
    t0 = time.monotonic()
    topo.link_up(h3)
    a.found("c", BACK_TIMEOUT_S, marks["a"])
    b.found("c", BACK_TIMEOUT_S, marks["b"])
    c.found("a", BACK_TIMEOUT_S, marks["c"])
    c.found("b", BACK_TIMEOUT_S, marks["c"])
    print(f"link up: all re-found after {time.monotonic() - t0:.2f} s")

    # Partition {a, b} | {c}: links stay up, packets across just vanish.
    marks = {p.node_id: p.mark() for p in peers}
    topo.partition([[topo.host(1), topo.host(2)], [h3]])
    a.lost("c", LOST_TIMEOUT_S, marks["a"])
    c.lost("a", LOST_TIMEOUT_S, marks["c"])
    c.lost("b", LOST_TIMEOUT_S, marks["c"])
    assert not [e for e in a.events[marks["a"]:] if e.get("node_id") == "b"], "a lost b"

    marks = {p.node_id: p.mark() for p in peers}
    t0 = time.monotonic()
    topo.heal()
    _all_find_each_other([a, c], after=marks)
    b.found("c", BACK_TIMEOUT_S, marks["b"])
    print(f"heal: all re-found after {time.monotonic() - t0:.2f} s")


@pytest.mark.netns
def test_mdns_port_taken_is_one_clear_error(tmp_path: Path) -> None:
    """Another program holding UDP 5353 exclusively (no SO_REUSEADDR, like a strict avahi)."""
    require_netns()
    with Topology.create(1) as topo:
        host = topo.host(1)
        blocker = host.run([sys.executable, "-c", (
            "import socket, sys, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.bind(('0.0.0.0', 5353)); print('bound', flush=True); time.sleep(120)")],
            stdout=subprocess.PIPE, text=True)
        assert blocker.stdout is not None and blocker.stdout.readline().strip() == "bound"
        peer = Peer(host, "a", tmp_path)
        try:
            error = peer.wait_for("error", lambda e: e["event"] == "error", FOUND_TIMEOUT_S)
            assert error["message"].startswith(f"mDNS cannot bind UDP 5353 on {host.address}: ")
            assert "set discovery.mdns = false or pick discovery.interfaces" in error["message"]
            assert peer.proc.wait(timeout=10) == 3
        finally:
            peer.close()

