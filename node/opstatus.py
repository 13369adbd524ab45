"""What ``outpost status`` adds for an operator: federation, members by state, policy version,
audit size and head age, evidence, certificate expiry (and its 30-day warning).

Owns reading these facts, running daemon or not: the audit head and policy from the store
(SQLite readers do not block the daemon's writer), the certificate from its file, members and
evidence from the daemon when it runs. Never changes anything.
"""

from __future__ import annotations

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
    """Read-only, straight from SQLite: never takes a write lock the daemon might want."""
    import sqlite3

    from node.store import DB_FILE

    path = data_dir / DB_FILE
    if not path.exists():
        return {"size": 0, "head": None, "policy_version": None, "revocation_version": None}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        # the newest entry (seq is the leaf index): no scan of the log
        last = conn.execute(
            "SELECT seq, entry FROM audit_entry ORDER BY seq DESC LIMIT 1").fetchone()
        docs = dict(conn.execute("SELECT kind, version FROM federation_doc").fetchall())
    except sqlite3.Error:
        return {"size": None, "head": None, "policy_version": None, "revocation_version": None}
    finally:
        conn.close()
    return {"size": int(last[0]) + 1 if last else 0, "head": bytes(last[1]) if last else None,
            "policy_version": docs.get("policy"), "revocation_version": docs.get("revocation")}


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
