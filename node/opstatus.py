"""What ``outpost status`` adds for an operator: federation, members by state, policy version,
audit size and head age, evidence, certificate expiry (and its 30-day warning).

Owns reading these facts, running daemon or not: the audit head and policy from the store
(SQLite readers do not block the daemon's writer), the certificate from its file, members and
evidence from the daemon when it runs. Never changes anything.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from node.enrollment import EnrollmentError, load_identity
from node.renew import expiry


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None


def _store_facts(data_dir: Path) -> dict[str, Any]:
    from node.store import Store, get_doc

    async def go() -> dict[str, Any]:
        store = await Store.open(data_dir)
        try:
            # the newest entry (seq is the leaf index): no scan of the log
            async with store.conn.execute(
                    "SELECT seq, entry FROM audit_entry ORDER BY seq DESC LIMIT 1") as cur:
                last = await cur.fetchone()
            size = int(last[0]) + 1 if last else 0
            head = bytes(last[1]) if last else None
            policy = await get_doc(store, "policy")
            revocation = await get_doc(store, "revocation")
            return {"size": size, "head": head,
                    "policy_version": policy[0] if policy else None,
                    "revocation_version": revocation[0] if revocation else None}
        finally:
            await store.close()

    return asyncio.run(go())


def details(data_dir: Path, info: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """``info`` (from ``node.ops.node_status``) plus the operator's facts, in place."""
    import json

    now = now or datetime.now(UTC)
    try:
        ident = load_identity(data_dir)
    except EnrollmentError as exc:
        ident = None
        info["certificate"] = {"error": str(exc)}
    if ident is not None:
        info["certificate"] = expiry(ident, now)
        info.setdefault("federation", ident.attributes() | {"federation": ident.federation})
    facts = _store_facts(data_dir)
    head_time = None
    if facts["head"] is not None:
        head_time = _parse_time(json.loads(facts["head"]).get("time", ""))
    db = data_dir / "outpost.db"
    info["audit"] = {
        **(info.get("audit") or {}),
        "size": facts["size"],
        "head_time": head_time.isoformat().replace("+00:00", "Z") if head_time else None,
        "head_age_s": round((now - head_time).total_seconds(), 1) if head_time else None,
        "database_bytes": sum(p.stat().st_size for p in data_dir.glob(db.name + "*")),
    }
    if info.get("policy_version") is None:
        info["policy_version"] = facts["policy_version"]
    info["revocation_version"] = facts["revocation_version"]
    if info.get("running") and ident is not None:
        from node.client import connect

        client = connect(data_dir)
        if client is not None:
            with client:
                rows = client.request("GET", "/peers")
                info["clock"] = client.request("GET", "/clock")
            # the member table includes this node itself
            info["members_by_state"] = dict(Counter(r["state"] for r in rows))
    info["evidence"] = {"equivocations": len(info.get("equivocations") or [])}
    return info
