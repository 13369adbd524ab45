"""A multi-host test network made of Linux network namespaces joined by one bridge.

Owns: creating, wiring, partitioning and always tearing down a private test network::

    outpost-br-<uid>   a namespace holding bridge br0 (multicast snooping off, so mDNS floods)
      vh1 ... vhN      bridge ports, one veth pair per host
    outpost-h<i>-<uid> one namespace per host: lo up, eth0 = 10.200.<y>.<i>/24, route for
                       224.0.0.0/4 (multicast allowed), nothing else

Addresses: ``y`` is random per topology, so two runs on one machine (or a test that makes
two topologies) use different /24s inside 10.200.0.0/16. The addresses exist only inside the
namespaces created here: the root namespace, its interfaces and routes are never touched, and
the veth pairs are created directly inside the test namespaces (``ip -n``), so even their
names cannot clash with the machine's.

Must never: touch the root namespace's links, addresses or routes; delete a namespace it did
not create; kill a process it did not start (processes started by :meth:`Host.run` are
stopped by PID at teardown, before the namespaces go).

Usage::

    require_netns()                     # pytest.skip only if not root or `ip` is missing
    with Topology.create(3) as topo:
        proc = topo.hosts[0].run([sys.executable, "-m", "something"], stdout=PIPE)
        topo.link_down(topo.hosts[2])   # host 3's eth0 down: a pulled cable
        topo.partition([[h1, h2], [h3]])  # separate bridges per group
        topo.heal()
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import pytest

PREFIX = "outpost"
IP = "ip"


def require_netns() -> None:
    """Skip the calling test unless we can make namespaces: root and iproute2's `ip`.

    Only those two reasons skip. Anything else that fails while building the network is a
    test error, so CI (which runs as root with iproute2) really runs these tests.
    """
    if os.geteuid() != 0:
        pytest.skip("netns test: needs root to create network namespaces (run as root, as CI does)")
    if shutil.which(IP) is None:
        pytest.skip("netns test: needs iproute2's `ip` (apt-get install -y iproute2)")


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [IP, *(["-n", netns] if netns else []), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed ({result.returncode}): "
                           f"{result.stderr.strip()}")
    return result


@dataclass
class Host:
    """One host: a namespace with one interface (eth0) on the shared bridge."""

    index: int
    netns: str
    address: str
    bridge_port: str
    prefixlen: int = 24
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"h{self.index}"

    def run(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside this host's namespace; it is stopped at teardown if still up.

        ``ip netns exec`` execs the command, so the returned PID is the command's own.
        """
        proc: subprocess.Popen[Any] = subprocess.Popen(
            [IP, "netns", "exec", self.netns, *argv], **popen_kwargs)
        self.procs.append(proc)
        return proc

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``ip`` inside this host's namespace (e.g. ``host.ip("addr")``)."""
        return _ip(*args, netns=self.netns, check=check)


class Topology:
    """N hosts on one bridge; a context manager that always tears everything down."""

    def __init__(self, uid: str, subnet: str) -> None:
        self.uid = uid
        self.subnet = subnet  # e.g. "10.200.37"
        self.bridge_ns = f"{PREFIX}-br-{uid}"
        self.hosts: list[Host] = []
        self._namespaces: list[str] = []
        self._group_bridges: list[str] = []
        self._closed = False

    @classmethod
    def create(cls, n: int) -> Topology:
        """Build the network; on any failure, tear down what was built and re-raise."""
        if not 1 <= n <= 250:
            raise ValueError(f"Topology.create: n={n} must be between 1 and 250 (one /24)")
        topo = cls(secrets.token_hex(3), f"10.200.{secrets.randbelow(256)}")
        atexit.register(topo.close)  # backstop if the test process exits without __exit__
        try:
            topo._build(n)
        except BaseException:
            topo.close()
            raise
        return topo

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def host(self, index: int) -> Host:
        """Host by its 1-based index (the last octet of its address)."""
        return self.hosts[index - 1]

    # -- building --

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("link", "set", "lo", "up", netns=name)

    def _build(self, n: int) -> None:
        self._add_netns(self.bridge_ns)
        self._add_bridge("br0")
        for i in range(1, n + 1):
            host = Host(i, f"{PREFIX}-h{i}-{self.uid}", f"{self.subnet}.{i}", f"vh{i}")
            self._add_netns(host.netns)
            self.hosts.append(host)
            # Created inside the bridge namespace with its peer placed straight into the host's:
            # the root namespace never sees either end.
            _ip("link", "add", host.bridge_port, "type", "veth", "peer", "name", "eth0",
                "netns", host.netns, netns=self.bridge_ns)
            _ip("link", "set", host.bridge_port, "master", "br0", "up", netns=self.bridge_ns)
            host.ip("addr", "add", f"{host.address}/{host.prefixlen}", "dev", "eth0")
            host.ip("link", "set", "eth0", "multicast", "on", "up")
            host.ip("route", "add", "224.0.0.0/4", "dev", "eth0")

    def _add_bridge(self, name: str) -> None:
        _ip("link", "add", name, "type", "bridge", "mcast_snooping", "0", netns=self.bridge_ns)
        _ip("link", "set", name, "up", netns=self.bridge_ns)

    # -- faults --

    def link_down(self, host: Host) -> None:
        """Take the host's eth0 down (its address stays): nothing in or out, like a pulled cable."""
        host.ip("link", "set", "eth0", "down")

    def link_up(self, host: Host) -> None:
        host.ip("link", "set", "eth0", "up")
        # The kernel drops routes through a downed link; put the multicast one back.
        host.ip("route", "replace", "224.0.0.0/4", "dev", "eth0")

    def partition(self, groups: Sequence[Sequence[Host]]) -> None:
        """Split the hosts: each group gets its own bridge; hosts in no group are cut off.

        Links stay up (unlike :meth:`link_down`), so senders see no error: packets to the
        other side just vanish, as in a real partition.
        """
        self.heal()
        named = [h.index for g in groups for h in g]
        if len(named) != len(set(named)):
            raise ValueError("partition: a host appears in two groups")
        for h in self.hosts:
            _ip("link", "set", h.bridge_port, "nomaster", netns=self.bridge_ns)
        for g, group in enumerate(groups):
            bridge = f"br{g + 1}"
            self._add_bridge(bridge)
            self._group_bridges.append(bridge)
            for h in group:
                _ip("link", "set", h.bridge_port, "master", bridge, netns=self.bridge_ns)

    def heal(self) -> None:
        """Undo :meth:`partition`: every host back on the one bridge. Links downed stay down."""
        for h in self.hosts:
            _ip("link", "set", h.bridge_port, "master", "br0", netns=self.bridge_ns)
        for bridge in self._group_bridges:
            _ip("link", "del", bridge, netns=self.bridge_ns, check=False)
        self._group_bridges.clear()

    # -- teardown --

    def close(self) -> None:
        """Stop processes we started (by PID), then delete our namespaces. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for host in self.hosts:
            for proc in host.procs:
                _stop(proc)
        errors = []
        for name in reversed(self._namespaces):
            result = _ip("netns", "del", name, check=False)
            if result.returncode != 0:
                errors.append(f"{name}: {result.stderr.strip()}")
        self._namespaces.clear()
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        if errors:
            raise RuntimeError("netns teardown left namespaces behind: " + "; ".join(errors))


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=10)


def namespaces() -> list[str]:
    """Names of all network namespaces (for tests that check teardown)."""
    out = _ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@contextlib.contextmanager
def topology(n: int) -> Iterator[Topology]:
    """``with topology(3) as topo:`` — same as ``with Topology.create(3) as topo:``."""
    with Topology.create(n) as topo:
        yield topo
