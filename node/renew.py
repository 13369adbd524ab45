"""Certificate renewal without downtime, and the expiry warning.

The authority signs certificates and stays offline, so renewal is the enrollment round trip
again, applied live at the end:

1. ``outpost join renew -o REQ`` — this node's enrollment request (same key, same node id),
   plus the exact ``outpost federation enroll`` line that reissues its current attributes;
2. the admin enrolls it with the authority, as at first enrollment;
3. ``outpost join CERT`` — checked like a first join (same authority, node id and key); while
   the daemon runs it goes to the daemon, which swaps the certificate into its TLS contexts
   (new handshakes use it; open connections finish on the old one), into its gossip adverts
   and its identity, and records an ``enroll`` entry (``detail.renewal``) in the audit trail. No restart.

Owns the warning horizon (:data:`WARN_DAYS`): ``outpost status``, the log (daily) and the
``outpost_certificate_expiry_timestamp_seconds`` metric all read :func:`expiry`.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from federation import identity
from federation.identity import NodeIdentity
from node import config as cfg
from node.enrollment import NODE_CERT, EnrollmentError, install_certificate, load_identity
from node.http import HTTPError
from node.keys import load_key

if TYPE_CHECKING:
    from node.ports import RunningNode

log = logging.getLogger("outpost.renew")

# Warn this long before the node certificate expires: a month leaves time for a hand-carried
# request to reach an offline authority and back.
WARN_DAYS = 30
# How often the running daemon checks (and, inside WARN_DAYS, warns in its log).
CHECK_INTERVAL_S = 6 * 3600.0
RENEW_ROUTE = "/identity/renew"


def expiry(ident: NodeIdentity | None, now: datetime | None = None) -> dict[str, Any] | None:
    """``{not_valid_after, days_left, warning}`` of this node's certificate (None if not
    enrolled); ``warning`` is a sentence naming the fix once inside :data:`WARN_DAYS`."""
    if ident is None:
        return None
    now = now or datetime.now(UTC)
    left = (ident.not_valid_after - now).total_seconds() / 86400
    warning = None
    if left <= WARN_DAYS:
        warning = (f"node certificate expires in {left:.0f} day(s) "
                   f"({ident.not_valid_after:%Y-%m-%d}); renew it: `outpost join renew -o REQ`")
    return {"not_valid_after": ident.not_valid_after.isoformat().replace("+00:00", "Z"),
            "days_left": round(left, 1), "serial": f"{ident.serial:x}", "warning": warning}


def renewal_request(data_dir: Path, out: Path) -> dict[str, Any]:
    """Write this enrolled node's renewal request to ``out``."""
    ident = load_identity(data_dir)
    if ident is None:
        raise EnrollmentError("this node is not enrolled yet; use `outpost join request` for a "
                              "first enrollment")
    config = cfg.load(data_dir)
    key = load_key(data_dir)
    out.write_bytes(identity.make_enrollment_request(config.node.name, key,
                                                     datetime.now(UTC)))
    labels = " ".join(f"--label {k}={v}" for k, v in sorted(ident.labels.items()))
    command = (f"outpost federation enroll {out} --ca CA_DIR --tier {ident.tier} "
               f"--site {ident.site} --jurisdiction {ident.jurisdiction} {labels}".rstrip()
               + f" -o {ident.node_id}.pem")
    return {"node_id": ident.node_id, "request": str(out), "federation": ident.federation,
            "expiry": expiry(ident), "enroll_command": command}


def is_renewal(data_dir: Path) -> bool:
    return (data_dir / NODE_CERT).exists()


async def renew_live(daemon: RunningNode, chain: bytes) -> dict[str, Any]:
    """In the daemon: install ``chain`` (checked as at join) and use it from now on."""
    if daemon.enrollment is None:
        raise HTTPError(400, "this node runs unenrolled; stop it and `outpost join CERT`")
    old = daemon.enrollment.identity
    key = load_key(daemon.data_dir)
    try:
        ident = await asyncio.to_thread(install_certificate, daemon.data_dir, chain,
                                        daemon.node_id, key)
    except EnrollmentError as exc:
        raise HTTPError(400, str(exc)) from None
    node_pem = (daemon.data_dir / NODE_CERT).read_bytes()
    # Both directions present it from the next handshake (the peer clients follow).
    daemon.enrollment.credentials.reload_certificate(node_pem)
    daemon.enrollment.identity = ident
    daemon.enrollment.cluster.deps.cert_pem = node_pem  # the next advert carries it
    await daemon.audit.append(daemon.audit.record(
        "enroll", caller="admin", peer=ident.federation,
        detail={"renewal": True, "tier": ident.tier, "site": ident.site,
                "jurisdiction": ident.jurisdiction,
                "serial": f"{ident.serial:x}", "previous_serial": f"{old.serial:x}",
                "not_valid_after": ident.not_valid_after.isoformat()}))
    log.info("node certificate renewed: serial %x valid until %s", ident.serial,
             ident.not_valid_after.isoformat())
    facts = expiry(ident)
    if facts and facts["warning"]:  # renewed, yet still inside the horizon: say so now
        log.warning("%s", facts["warning"])
    return {**ident.attributes(), "federation": ident.federation, "origin": ident.origin,
            "renewed": True, "expiry": expiry(ident)}


def admin_route(daemon: RunningNode) -> Any:
    async def route(payload: dict[str, Any], _rest: str) -> tuple[int, Any]:
        return 200, await renew_live(daemon, payload["certificate"].encode())

    return route


async def warn_forever(daemon: RunningNode, interval: float = CHECK_INTERVAL_S) -> None:
    """Log the expiry warning now and every ``interval`` while inside the horizon."""
    while True:
        facts = expiry(daemon.identity)
        if facts and facts["warning"]:
            log.warning("%s", facts["warning"])
        await asyncio.sleep(interval)
