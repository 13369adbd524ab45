"""Clock skew: the tolerances Outpost has, and noticing when this node's clock is beyond them.

Edge and air-gapped boxes often have bad clocks (no RTC battery, no NTP). What a wrong clock
breaks, and by how much it may be wrong first:

==================== =========== ==========================================================
what                 tolerance   why
==================== =========== ==========================================================
certificates, CRLs   1 hour      the authority back-dates every "not before" / "last update"
                                 by ``federation.identity.CLOCK_SKEW``; a clock further
                                 behind refuses fresh certificates (its own included, at
                                 start), one ahead treats certificates as expired early
audit checkpoints    unlimited   C2SP checkpoints carry no time: witnesses compare sizes
                                 and roots, never clocks
gossip, adverts      unlimited   replay protection counts (boot, seq); advert age is measured
                                 from local receipt on the monotonic clock
audit entry times    5 minutes   entries carry this node's wall time; beyond
                                 :data:`WARN_OFFSET_S` an investigator lining up several
                                 nodes' trails is misled, so the node warns
==================== =========== ==========================================================

The node measures its offset against its peers (``GET /peer/v1/hello`` answers with the
peer's time; offset = peer time - midpoint of the request), takes the median over a few peers,
and warns in the log (and ``outpost_clock_offset_seconds``, ``outpost status``) once it is
beyond :data:`WARN_OFFSET_S`, louder beyond the certificate tolerance. :func:`wall` is the one
clock this module reads, so tests inject a skewed one. Never changes the system clock.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from typing import TYPE_CHECKING, Any

from federation.identity import CLOCK_SKEW

if TYPE_CHECKING:
    from node.ports import RunningNode

log = logging.getLogger("outpost.clock")

WARN_OFFSET_S = 300.0  # audit entry times: see the table above
CERT_TOLERANCE_S = CLOCK_SKEW.total_seconds()
PEERS_ASKED = 3  # a median of three outvotes one peer with a bad clock
CHECK_INTERVAL_S = 600.0  # offsets drift slowly; one small request per peer per 10 minutes
RETRY_S = 5.0  # until the first measurement (no peers known yet)


def wall() -> float:
    """This node's wall clock (seconds since the epoch). Tests replace it."""
    return time.time()


def offset_from(sent: float, received: float, peer_time: float) -> float:
    """Peer clock minus ours, assuming the peer stamped its answer mid-way (NTP's estimate);
    positive: this node is behind."""
    return peer_time - (sent + received) / 2


def judge(offsets: dict[str, float]) -> dict[str, Any]:
    """The report for measured offsets: median, peers, and a warning sentence if beyond."""
    if not offsets:
        return {"offset_s": None, "peers": {}, "warning": None}
    median = statistics.median(offsets.values())
    warning = None
    if abs(median) > WARN_OFFSET_S:
        direction = "behind" if median > 0 else "ahead of"
        hours = abs(median) / 3600
        size = f"{hours:.1f} h" if hours >= 1 else f"{abs(median):.0f} s"
        consequence = ("beyond the 1 h certificate tolerance: fresh certificates and "
                       "revocation lists will be refused or expire early"
                       if abs(median) > CERT_TOLERANCE_S else
                       "audit entry times are off by as much")
        warning = (f"this node's clock is {size} {direction} its peers "
                   f"({', '.join(sorted(offsets))}); {consequence}; fix the clock (NTP, "
                   "chrony, or `date -s` on an air-gapped box)")
    return {"offset_s": round(median, 3), "peers": {k: round(v, 3) for k, v in offsets.items()},
            "warning": warning}


async def measure(daemon: RunningNode) -> dict[str, float]:
    """Offsets against up to :data:`PEERS_ASKED` live peers."""
    cluster, clients = daemon.cluster, daemon.peer_clients
    if cluster is None or clients is None:
        return {}
    offsets: dict[str, float] = {}
    for candidate in cluster.candidates(time.monotonic())[:PEERS_ASKED]:
        address = cluster.address_of(candidate.node_id)
        if address is None:
            continue
        sent = wall()
        try:
            response = await clients.request(candidate.node_id, address, "GET",
                                             "/peer/v1/hello", purpose="clock", timeout_s=5.0)
            received = wall()
            peer_time = float(response.json()["time"])
        except Exception as exc:  # a peer that cannot answer is simply not counted
            log.debug("clock check with %s failed: %s", candidate.node_id, exc)
            continue
        offsets[candidate.node_id] = offset_from(sent, received, peer_time)
    return offsets


async def watch_forever(daemon: RunningNode, report: dict[str, Any]) -> None:
    """Measure now and then; keep ``report`` current; warn while beyond the tolerance."""
    while True:
        offsets = await measure(daemon)
        if offsets:
            report.update(judge(offsets), measured_at=wall())
            if report["warning"]:
                log.warning("%s", report["warning"])
        await asyncio.sleep(CHECK_INTERVAL_S if offsets else RETRY_S)
