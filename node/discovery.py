"""Finding peers: DNS-SD over mDNS on the local link, and static seeds retried with back-off.

Owns: advertising this node as ``<node-id>._outpost._tcp.local.`` and browsing the same
service type with python-zeroconf's asyncio API (:class:`Discovery`); turning what peers
advertise into :class:`Candidate` proposals; noticing when a proposed peer stops answering;
and the retry schedule for static seed addresses (:class:`SeedDialer`, sans-time).

Must never: treat a candidate as a member or trust anything it says. **Discovery only
proposes candidates; identity is proven later by the mutual-TLS handshake**, which checks
the certificate chains to the federation authority and names the node id. Anyone on the
link can advertise any TXT record, so a candidate's id, tier, fingerprint and federation are
hints for whom to dial first, never attributes that policy may read. This module also never
dials peers, reads the clock (``now`` comes in; asyncio's loop clock drives the I/O class) or
blocks the event loop.

Wire contract (TXT keys; unknown keys are ignored, so later versions may only ADD keys)::

    id=<node id>  tier=<tier or "">  peer=<peer TCP port>  udp=<gossip UDP port>
    fp=<certificate fingerprint, lower-case hex, or "">  fed=<federation name or "">

Theory of operation
-------------------
Found: the zeroconf browser reports a PTR for a name (``Added``) or new SRV/TXT/A data for
it (``Updated``); we resolve the name (SRV, TXT, A/AAAA, from zeroconf's cache or the
network), parse the TXT and call ``on_found(candidate)`` when the candidate is new, changed,
or back after being lost.

Lost, two ways, because mDNS gives two:

* Goodbye (RFC 6762 §10.1): a peer that stops cleanly sends its records with TTL 0 and the
  browser reports ``Removed`` at once -> ``on_lost(node_id)``.
* Silence: a peer whose link or host died sends nothing. The browser alone would notice only
  when the PTR expires, and zeroconf raises every PTR TTL it receives to at least 1125 s
  (``_DNS_PTR_MIN_TTL``, a guard against refresh storms), so that is ~19 minutes at best.
  Instead, every ``confirm_interval_s`` we re-resolve each candidate: while its address
  records (advertised with ``record_ttl_s``) are in the cache that costs nothing; once they
  expire it sends a QM question, whose multicast answer refreshes every listener's cache at
  once (so the link carries about one question and answer per peer per TTL, not one per
  pair). No answer within :data:`RESOLVE_TIMEOUT_S` -> ``on_lost``. A silent peer is thus
  reported lost within about ``record_ttl_s + confirm_interval_s + RESOLVE_TIMEOUT_S`` of its
  last answer (~128 s with the defaults; SWIM's failure detector is the fast path, this is a
  hint).

Back after silence: lost peers keep being probed with exponential back-off (a
:class:`SeedDialer` keyed by service name) for :data:`LOST_PROBE_FOR_S`; when one answers
again it is re-proposed, and we re-announce ourselves, because if it could not hear us
neither could we hear it, and it may have forgotten us. Goodbye'd peers are not probed: a
node that stops cleanly announces itself when it starts again.

Interfaces: ``interfaces=None`` uses every IPv4 interface and advertises every non-loopback
IPv4 address; a list of IPs binds mDNS to exactly those (IPv6 addresses in the list enable
IPv6) and advertises exactly those. This is what makes one veth inside a network namespace
work. Linux caveat: zeroconf's receive socket is bound to 0.0.0.0:5353, and with Linux's
default ``IP_MULTICAST_ALL`` it can also hear mDNS that *other* programs joined on other
interfaces. Harmless here: candidates are only proposals.

Exceptions: :class:`DiscoveryError` (a ``RuntimeError``) — mDNS could not start or advertise;
the message names the fix. ``ValueError`` — we were called with invalid arguments (an
invalid :class:`Advert`, seed back-off out of range). A peer's malformed advertisement is
never raised: it is logged at debug level and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import random
import re
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import ifaddr
from zeroconf import (
    BadTypeInNameException,
    DNSQuestionType,
    EventLoopBlocked,
    IPVersion,
    NonUniqueNameException,
    NotRunningException,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf import Error as ZeroconfError
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from node.config import ConfigError, validate_node_id
from node.errors import NodeFault

__all__ = [
    "DEFAULT_RECORD_TTL_S",
    "LOST_PROBE_FOR_S",
    "MAX_CANDIDATES",
    "MAX_TXT_BYTES",
    "RESOLVE_TIMEOUT_S",
    "SERVICE_TYPE",
    "Advert",
    "Candidate",
    "Discovery",
    "DiscoveryError",
    "SeedDialer",
    "parse_candidate",
]

log = logging.getLogger("outpost.discovery")

SERVICE_TYPE = "_outpost._tcp.local."

# ---- limits, and why -------------------------------------------------------------------

MAX_CANDIDATES = 1024
"""Most peers tracked (present + lost). Anyone on the link can advertise names, so the table
must be bounded; one broadcast domain holding more Outpost nodes than this should be split
and joined by seeds. Names beyond the bound are ignored (and logged) until others leave."""

MAX_TXT_BYTES = 400
"""Largest TXT record we send or accept, in wire bytes. RFC 6763 §6.2: up to 400 bytes fits
a single packet with the other records of an answer; ours needs ~150 (63-char id, 64-hex
SHA-256 fingerprint, short tier and federation). Larger ones from peers are ignored."""

MAX_VALUE_CHARS = 128
"""Longest TXT value we send or accept (fingerprint up to SHA-512 hex; names are shorter)."""

RESOLVE_TIMEOUT_S = 3.0
"""How long one resolve waits for answers. zeroconf asks a QU then QM question ~1 s apart,
so 3 s spans two retries; shorter would call a slow but live peer lost."""

MAX_CONCURRENT_RESOLVES = 32
"""Resolves in flight at once. Bounds the query burst (and our task count) when many nodes
boot together or a host floods the link with names."""

DEFAULT_RECORD_TTL_S = 120
"""TTL of the records that say where we are (SRV, A/AAAA). RFC 6762 §10 recommends 120 s for
records that carry a host name. Shorter: peers notice our silent death sooner, at the cost
of one question and answer per TTL on the link."""

LOST_PROBE_FOR_S = 4500.0
"""How long a silently lost peer keeps being probed (the RFC 6762 TTL for PTR records). After
that only its restart announcement, a seed or SWIM's reconnects bring it back."""

LOST_PROBE_MAX_INTERVAL_S = 60.0
"""Ceiling of the back-off between probes of one lost peer."""

REANNOUNCE_MIN_INTERVAL_S = 10.0
"""Least time between two of our re-announcements (triggered when lost peers come back), so a
flapping link cannot make us flood it."""

_FINGERPRINT = re.compile(r"^[0-9a-f]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class DiscoveryError(NodeFault):
    """mDNS could not start or advertise; the message names the fix."""


# ---- what is advertised and what is proposed ----------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A peer proposed by discovery: where to dial and what it claims, none of it proven."""

    node_id: str
    addresses: list[str]
    peer_port: int
    udp_port: int
    fingerprint: str
    tier: str
    federation: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _check_port(key: str, value: int) -> int:
    if not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"discovery: {key} port {value!r} must be between 1 and 65535")
    return value


def _check_text(key: str, value: str) -> str:
    if len(value) > MAX_VALUE_CHARS or _CONTROL.search(value):
        raise ValueError(
            f"discovery: {key} {value!r} must be at most {MAX_VALUE_CHARS} printable characters"
        )
    return value


@dataclass(frozen=True)
class Advert:
    """What this node advertises. Validated at construction; messages name the field."""

    node_id: str
    peer_port: int
    udp_port: int
    tier: str = ""
    fingerprint: str = ""
    federation: str = ""

    def __post_init__(self) -> None:
        try:
            validate_node_id(self.node_id)
        except ConfigError as exc:
            raise ValueError(f"discovery: {exc}") from exc
        _check_port("peer", self.peer_port)
        _check_port("udp", self.udp_port)
        _check_text("tier", self.tier)
        _check_text("federation", self.federation)
        _check_text("fingerprint", self.fingerprint)
        if not _FINGERPRINT.match(self.fingerprint):
            raise ValueError(
                f"discovery: fingerprint {self.fingerprint!r} must be lower-case hex or empty"
            )
        size = txt_size(self.txt())
        if size > MAX_TXT_BYTES:
            raise ValueError(f"discovery: TXT record is {size} bytes; shorten tier or federation "
                             f"so it fits {MAX_TXT_BYTES}")

    @property
    def service_name(self) -> str:
        return service_name(self.node_id)

    def txt(self) -> dict[str, str]:
        return {"id": self.node_id, "tier": self.tier, "peer": str(self.peer_port),
                "udp": str(self.udp_port), "fp": self.fingerprint, "fed": self.federation}


def service_name(node_id: str) -> str:
    return f"{node_id}.{SERVICE_TYPE}"


def txt_size(txt: Mapping[str, str]) -> int:
    """Wire size of a TXT record: one length byte plus ``key=value`` per entry."""
    return sum(1 + len(k.encode()) + 1 + len(v.encode()) for k, v in txt.items())


def parse_candidate(name: str, properties: Mapping[bytes, bytes | None],
                    addresses: Iterable[str]) -> Candidate | None:
    """The candidate a resolved service proposes, or None (logged) if it breaks the contract.

    Pure: no I/O. ``name`` is the DNS-SD instance name; it must be ``<id>._outpost._tcp.local.``
    so that zeroconf's name-conflict probing also keeps ids unique on the link.
    """
    try:
        txt: dict[str, str] = {}
        for raw_key, raw_value in properties.items():
            key = raw_key.decode("ascii").lower()  # RFC 6763 §6.4: keys are case-insensitive
            value = (raw_value or b"").decode("utf-8")
            txt.setdefault(key, value)  # §6.4: the first occurrence wins
        if txt_size(txt) > MAX_TXT_BYTES:
            raise ValueError(f"TXT record over {MAX_TXT_BYTES} bytes")
        node_id = validate_node_id(txt.get("id", ""))
        if name.lower() != service_name(node_id):
            raise ValueError(f"instance name {name!r} does not match id={node_id}")
        peer_port = _parse_port("peer", txt.get("peer", ""))
        udp_port = _parse_port("udp", txt.get("udp", ""))
        fingerprint = _check_text("fingerprint", txt.get("fp", ""))
        if not _FINGERPRINT.match(fingerprint):
            raise ValueError("fp is not lower-case hex")
        tier = _check_text("tier", txt.get("tier", ""))
        federation = _check_text("federation", txt.get("fed", ""))
        addrs = sorted(set(addresses), key=_address_order)
        if not addrs:
            raise ValueError("no addresses")
    except (ValueError, UnicodeDecodeError) as exc:  # ConfigError is a ValueError
        log.debug("ignoring mDNS service %s: %s", name, exc)
        return None
    return Candidate(node_id, addrs, peer_port, udp_port, fingerprint, tier, federation)


def _parse_port(key: str, value: str) -> int:
    # str.isdigit() alone would accept non-ASCII digits, int() also signs and spaces.
    if not (value.isascii() and value.isdigit() and len(value) <= 5):
        raise ValueError(f"{key}={value!r} is not a port number")
    return _check_port(key, int(value))


def _address_order(address: str) -> tuple[int, str]:
    return (ipaddress.ip_address(address.split("%", 1)[0]).version, address)


# ---- static seeds -----------------------------------------------------------------------


@dataclass
class _Attempts:
    next_at: float = -math.inf  # due at once
    failures: int = 0
    in_flight: bool = False


class SeedDialer:
    """When to dial each seed: exponential back-off with jitter, forever, sans-time.

    ``due(now)`` hands out the seeds to dial now and marks them in flight; report each one
    back with ``failed(seed, now)`` or ``succeeded(seed, now)`` (until then it is not handed
    out again). After the n-th consecutive failure the next attempt waits
    ``min(backoff_max, backoff_initial * 2**(n-1))`` scaled by a random factor in
    ``[1 - jitter, 1]``: the ceiling is never exceeded, and nodes that lost the same seed at
    the same moment spread their retries instead of arriving together when it returns
    (with the default ``jitter=0.5``: "equal jitter"). After a success the seed is due again
    after about ``backoff_max``: re-contacting seeds once a minute is what lets the halves of
    a healed partition find each other. Deterministic with an injected ``rng``.
    """

    def __init__(self, seeds: Iterable[str], backoff_initial: float = 1.0,
                 backoff_max: float = 60.0, jitter: float = 0.5,
                 rng: random.Random | None = None) -> None:
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("seed back-off: need 0 < backoff_initial <= backoff_max "
                             f"(got {backoff_initial} and {backoff_max})")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"seed back-off: jitter must be between 0 and 1 (got {jitter})")
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._seeds: dict[str, _Attempts] = {}
        for seed in seeds:
            self.add(seed)

    @property
    def seeds(self) -> list[str]:
        return list(self._seeds)

    def add(self, seed: str, now: float = -math.inf) -> None:
        """Track a seed (no-op if tracked); it is due at ``now`` (default: at once)."""
        self._seeds.setdefault(seed, _Attempts(next_at=now))

    def discard(self, seed: str) -> None:
        self._seeds.pop(seed, None)

    def failures(self, seed: str) -> int:
        return self._get(seed).failures

    def due(self, now: float) -> list[str]:
        """Seeds to dial now, in the order given; each is marked in flight until reported."""
        ready = [s for s, a in self._seeds.items() if not a.in_flight and a.next_at <= now]
        for seed in ready:
            self._seeds[seed].in_flight = True
        return ready

    def next_due(self) -> float | None:
        """When the next seed not in flight becomes due (sleep until then), or None."""
        times = [a.next_at for a in self._seeds.values() if not a.in_flight]
        return min(times) if times else None

    def failed(self, seed: str, now: float) -> float:
        """Record a failed dial; returns when the seed is due again."""
        attempts = self._get(seed)
        attempts.failures += 1
        attempts.in_flight = False
        attempts.next_at = now + self.delay(attempts.failures)
        return attempts.next_at

    def succeeded(self, seed: str, now: float) -> float:
        """Record a successful contact (back-off resets); returns when to re-contact it."""
        attempts = self._get(seed)
        attempts.failures = 0
        attempts.in_flight = False
        attempts.next_at = now + self._jittered(self.backoff_max)
        return attempts.next_at

    def delay(self, failures: int) -> float:
        """Wait after ``failures`` consecutive failures (>= 1), jitter applied."""
        exponent = min(max(failures, 1) - 1, 64)  # 2**64 s is past any ceiling; no overflow
        return self._jittered(min(self.backoff_max, self.backoff_initial * 2.0**exponent))

    def _jittered(self, base: float) -> float:
        return base * (1.0 - self.jitter * self._rng.random())

    def _get(self, seed: str) -> _Attempts:
        try:
            return self._seeds[seed]
        except KeyError:
            raise KeyError(f"{seed!r} is not a tracked seed; add() it first") from None


# ---- the peer table (sans-time) ------------------------------------------------------------


class _PeerTable:
    """Which advertised peers we believe present, which are lost, and when to probe the lost.

    Keyed by lower-cased service name. Returns what to report; the caller does the I/O.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self.present: dict[str, Candidate] = {}
        self._lost_since: dict[str, float] = {}
        self._probes = SeedDialer([], backoff_initial=1.0, backoff_max=LOST_PROBE_MAX_INTERVAL_S,
                                  rng=rng)
        self._full_warned = False

    def __len__(self) -> int:
        return len(self.present) + len(self._lost_since)

    def knows(self, name: str) -> bool:
        return name in self.present or name in self._lost_since

    def has_room_for(self, name: str) -> bool:
        if self.knows(name) or len(self) < MAX_CANDIDATES:
            return True
        if not self._full_warned:
            self._full_warned = True
            log.warning("mDNS: tracking %d peers already (MAX_CANDIDATES); ignoring %s and any "
                        "further new names until some leave", MAX_CANDIDATES, name)
        return False

    def resolved(self, name: str, candidate: Candidate) -> tuple[bool, bool]:
        """A name resolved to ``candidate``: (report it?, was it lost?)."""
        was_lost = self._forget_lost(name)
        if not was_lost and not self.has_room_for(name):
            return False, False
        changed = self.present.get(name) != candidate
        self.present[name] = candidate
        return changed or was_lost, was_lost

    def silent(self, name: str, now: float) -> Candidate | None:
        """A present peer stopped answering: start probing it; returns it to report lost."""
        candidate = self.present.pop(name, None)
        if candidate is not None:
            self._lost_since[name] = now
            # The resolve that just failed counts as the first failed probe.
            self._probes.add(name, now + self._probes.delay(1))
        return candidate

    def goodbye(self, name: str) -> Candidate | None:
        """The peer withdrew its service: forget it (no probing); returns it if it was present."""
        self._forget_lost(name)
        return self.present.pop(name, None)

    def probes_due(self, now: float) -> list[str]:
        for name, since in list(self._lost_since.items()):
            if now - since > LOST_PROBE_FOR_S:
                self._forget_lost(name)
        return self._probes.due(now)

    def probe_failed(self, name: str, now: float) -> None:
        if name in self._lost_since:
            self._probes.failed(name, now)

    def _forget_lost(self, name: str) -> bool:
        self._probes.discard(name)
        self._full_warned = False
        return self._lost_since.pop(name, None) is not None


# ---- the I/O shell ----------------------------------------------------------------------------

_T = TypeVar("_T")
OnFound = Callable[[Candidate], None]
OnLost = Callable[[str], None]


class Discovery:
    """Advertise ``advert`` over mDNS and report peers advertising the same service type.

    ``on_found(candidate)`` is called for a new peer, a changed advertisement, or a peer back
    after being lost; ``on_lost(node_id)`` when a peer sent goodbye or stopped answering. Both
    run on the event loop and must not block; an exception from them is logged and ignored.
    Our own advertisement is never reported.
    """

    def __init__(self, advert: Advert, *, on_found: OnFound, on_lost: OnLost,
                 interfaces: list[str] | None = None,
                 record_ttl_s: int = DEFAULT_RECORD_TTL_S,
                 confirm_interval_s: float = 5.0,
                 rng: random.Random | None = None) -> None:
        if not 1 <= record_ttl_s <= 4500:
            raise ConfigError(f"discovery: record_ttl_s {record_ttl_s} must be between 1 and 4500")
        if not 0.1 <= confirm_interval_s <= 600:
            raise ConfigError(
                f"discovery: confirm_interval_s {confirm_interval_s} must be between 0.1 and 600")
        for ip in interfaces or []:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise ConfigError(f"discovery.interfaces: {ip!r} is not an IP address; list the "
                                 "IPs of this host's interfaces (e.g. 192.168.1.10)") from None
        self._advert = advert
        self._on_found = on_found
        self._on_lost = on_lost
        self._interfaces = list(interfaces) if interfaces else None
        self._record_ttl_s = record_ttl_s
        self._confirm_interval_s = confirm_interval_s
        self._rng = rng
        self._table = _PeerTable(rng)
        self._aiozc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._registered = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._resolving: set[str] = set()
        self._limit = asyncio.Semaphore(MAX_CONCURRENT_RESOLVES)
        self._last_announce = -math.inf
        self._stopping = False

    @property
    def advert(self) -> Advert:
        return self._advert

    @property
    def candidates(self) -> list[Candidate]:
        """Peers currently believed present."""
        return list(self._table.present.values())

    @property
    def addresses(self) -> list[str]:
        """The addresses we advertise (after :meth:`start`)."""
        return self._info.parsed_addresses() if self._info is not None else []

    # -- lifecycle --

    async def start(self) -> None:
        """Bind mDNS, probe our name, announce it and start browsing.

        Raises DiscoveryError (naming the fix) if mDNS cannot bind or the name is taken.
        """
        if self._aiozc is not None:
            raise RuntimeError("Discovery.start() called twice; create a new Discovery instead")
        where = ", ".join(self._interfaces) if self._interfaces else "all interfaces"
        addresses = self._addresses_to_advertise()
        try:
            if self._interfaces:
                aiozc = AsyncZeroconf(interfaces=list(self._interfaces))
            else:
                aiozc = AsyncZeroconf(ip_version=IPVersion.V4Only)
        except OSError as exc:
            raise DiscoveryError(
                f"mDNS cannot bind UDP 5353 on {where}: {exc.strerror or exc}; "
                "set discovery.mdns = false or pick discovery.interfaces") from exc
        except (RuntimeError, ZeroconfError) as exc:
            raise DiscoveryError(f"mDNS cannot start on {where}: {exc}; "
                                 "set discovery.mdns = false or pick discovery.interfaces") from exc
        self._aiozc = aiozc
        self._stopping = False
        try:
            await self._register(aiozc, addresses, where)
            self._browser = AsyncServiceBrowser(
                aiozc.zeroconf, SERVICE_TYPE, handlers=[self._on_state_change])
            self._spawn(self._confirm_loop())
        except BaseException:
            await self.stop()
            raise
        port = self._advert.peer_port
        log.info("mDNS: advertising %s as %s (multicast on %s)", self._advert.service_name,
                 ", ".join(f"{a}:{port}" for a in addresses), where)

    async def stop(self) -> None:
        """Send goodbye for our service, stop browsing and release the sockets. Idempotent."""
        aiozc, self._aiozc = self._aiozc, None
        if aiozc is None:
            return
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        browser, self._browser = self._browser, None
        with contextlib.suppress(Exception):
            if browser is not None:
                await browser.async_cancel()
        info, self._info = self._info, None
        registered, self._registered = self._registered, False
        try:
            # Only if our name was granted: a goodbye for a name another node won the probe
            # for would make every peer drop that node.
            if info is not None and registered and not aiozc.zeroconf.done:
                await asyncio.wait_for(await aiozc.async_unregister_service(info), timeout=5.0)
        except (ZeroconfError, OSError, TimeoutError) as exc:
            log.warning("mDNS: goodbye for %s not sent (%s); peers will notice by TTL",
                        self._advert.service_name, exc)
        finally:
            with contextlib.suppress(Exception):
                await aiozc.async_close()
        self._table = _PeerTable(self._rng)

    async def update(self, advert: Advert) -> None:
        """Change what we advertise (e.g. the fingerprint after enrollment); same node id."""
        if advert.node_id != self._advert.node_id:
            raise ValueError("discovery: the node id cannot change while running; "
                             "stop() and start a new Discovery")
        self._advert = advert
        if self._aiozc is not None and self._info is not None and self._registered:
            self._info = self._service_info(self._info.parsed_addresses())
            await self._announce(await self._aiozc.async_update_service(self._info))

    # -- advertising --

    def _addresses_to_advertise(self) -> list[str]:
        local: set[str] = set()
        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                local.add(ip.ip if isinstance(ip.ip, str) else ip.ip[0])
        if self._interfaces:
            missing = [ip for ip in self._interfaces if ip.split("%", 1)[0] not in local]
            if missing:
                raise DiscoveryError(
                    f"discovery.interfaces lists {', '.join(missing)}, not an address of this "
                    f"host (it has {', '.join(sorted(local)) or 'none'}); list this host's IPs "
                    "or set discovery.mdns = false")
            return list(self._interfaces)
        ours = sorted(ip for ip in local
                      if ipaddress.ip_address(ip.split("%", 1)[0]).version == 4
                      and not ipaddress.ip_address(ip).is_loopback)
        if not ours:
            raise DiscoveryError("mDNS: this host has no non-loopback IPv4 address to advertise; "
                                 "set discovery.interfaces or discovery.mdns = false")
        return ours

    def _service_info(self, addresses: list[str]) -> AsyncServiceInfo:
        return AsyncServiceInfo(
            SERVICE_TYPE, self._advert.service_name, port=self._advert.peer_port,
            properties=dict(self._advert.txt()),
            # Our own host name, so we never collide with (or answer for) the machine's
            # avahi/systemd-resolved name.
            server=f"outpost-{self._advert.node_id}.local.",
            host_ttl=self._record_ttl_s, parsed_addresses=addresses)

    async def _register(self, aiozc: AsyncZeroconf, addresses: list[str], where: str) -> None:
        self._info = self._service_info(addresses)
        try:
            await aiozc.zeroconf.async_wait_for_start()
            if not aiozc.zeroconf.engine.senders:
                raise DiscoveryError(
                    f"mDNS could not join the multicast group on {where} (interface down or "
                    "without MULTICAST?); bring it up, pick discovery.interfaces or set "
                    "discovery.mdns = false")
            announced = await aiozc.async_register_service(self._info)
        except NonUniqueNameException as exc:
            raise DiscoveryError(
                f"another host on this link already advertises {self._advert.service_name}: two "
                f"nodes share the id {self._advert.node_id!r}; give each node its own name "
                "(outpost init --name)") from exc
        except (NotRunningException, EventLoopBlocked) as exc:
            raise DiscoveryError(f"mDNS did not start on {where} ({type(exc).__name__}); "
                                 "check the event loop is not blocked, or set "
                                 "discovery.mdns = false") from exc
        except BadTypeInNameException as exc:  # Advert validation should make this impossible
            raise DiscoveryError(f"mDNS refused the service name {self._advert.service_name!r}; "
                                 "use a node id of a-z, 0-9 and '-'") from exc
        self._registered = True
        self._last_announce = asyncio.get_running_loop().time()
        await self._announce(announced)

    async def _announce(self, pending: Awaitable[object]) -> None:
        try:
            await pending
        except (ZeroconfError, OSError) as exc:
            log.warning("mDNS: announcement of %s failed: %s", self._advert.service_name, exc)

    async def _reannounce(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._aiozc is None or self._info is None:
            return
        if now - self._last_announce < REANNOUNCE_MIN_INTERVAL_S:
            return
        self._last_announce = now
        await self._announce(await self._aiozc.async_update_service(self._info))

    # -- browsing --

    def _on_state_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                         state_change: ServiceStateChange) -> None:
        key = name.lower()
        if self._stopping or key == self._advert.service_name.lower():
            return
        if state_change is ServiceStateChange.Removed:
            self._report_lost(self._table.goodbye(key), "goodbye")
        elif key not in self._resolving and self._table.has_room_for(key):
            self._spawn(self._resolve(name, confirming=False))

    async def _resolve(self, name: str, *, confirming: bool) -> bool:
        """Resolve one name and update the table; True if it answered."""
        key = name.lower()
        if key in self._resolving or self._aiozc is None:
            return True
        self._resolving.add(key)
        try:
            async with self._limit:
                info = AsyncServiceInfo(SERVICE_TYPE, name)
                # Confirmations ask QM so the multicast answer refreshes every peer's cache.
                question = DNSQuestionType.QM if confirming else None
                ok = await info.async_request(self._aiozc.zeroconf, RESOLVE_TIMEOUT_S * 1000,
                                              question_type=question)
        except (ZeroconfError, OSError) as exc:
            log.debug("mDNS: resolving %s failed: %s", name, exc)
            ok = False
        finally:
            self._resolving.discard(key)
        if not ok:
            return False
        candidate = parse_candidate(name, info.properties, info.parsed_scoped_addresses())
        if candidate is None or candidate.node_id == self._advert.node_id:
            return True
        report, was_lost = self._table.resolved(key, candidate)
        if report:
            self._call(self._on_found, candidate)
        if was_lost:
            await self._reannounce()
        return True

    async def _confirm_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._confirm_interval_s)
            now = loop.time()
            present = list(self._table.present)
            probes = self._table.probes_due(now)
            await asyncio.gather(*(self._confirm(name) for name in present),
                                 *(self._probe(name) for name in probes))

    async def _confirm(self, key: str) -> None:
        if not await self._resolve(key, confirming=True) and key in self._table.present:
            now = asyncio.get_running_loop().time()
            self._report_lost(self._table.silent(key, now), "no answer")

    async def _probe(self, key: str) -> None:
        if not await self._resolve(key, confirming=True):
            self._table.probe_failed(key, asyncio.get_running_loop().time())

    def _report_lost(self, candidate: Candidate | None, why: str) -> None:
        if candidate is not None:
            log.info("mDNS: lost %s (%s)", candidate.node_id, why)
            self._call(self._on_lost, candidate.node_id)

    def _call(self, callback: Callable[[_T], None], arg: _T) -> None:
        try:
            callback(arg)
        except Exception:
            log.exception("mDNS: discovery callback %r failed; continuing", callback)

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        async def run() -> None:
            await coro

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("mDNS: discovery task failed", exc_info=task.exception())
