"""CLI operations for federation membership and the audit log, one function each.

Audit reads go straight to the database (SQLite WAL lets readers run beside the daemon), so
``outpost audit ...`` works the same whether the daemon runs or not. Changes (join, apply) go
through the daemon when it runs, so they take effect live, and are always audited.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from federation import identity
from federation.audit import log_origin
from federation.errors import FederationError
from node import authority, control
from node import config as cfg
from node.audit import AuditLog, AuditReader
from node.client import connect
from node.enrollment import (
    EnrollmentError,
    apply_document,
    install_certificate,
    load_identity,
    now,
)
from node.keys import load_key
from node.store import Store

T = TypeVar("T")


def _verifier_names(data_dir: Path) -> tuple[str, list[Any]]:
    config = cfg.load(data_dir)
    key = load_key(data_dir)
    ident = load_identity(data_dir)
    from federation.note import Signer

    names = [log_origin(config.node.name, None)]
    if ident is not None:
        names.append(ident.origin)
    return names[-1], [Signer(n, key).verifier for n in names]


def _read(data_dir: Path, fn: Callable[[AuditReader], Awaitable[T]]) -> T:
    _, verifiers = _verifier_names(data_dir)

    async def go() -> T:
        store = await Store.open(data_dir)
        try:
            return await fn(AuditReader(store, verifiers))
        finally:
            await store.close()

    return asyncio.run(go())


# -- audit -----------------------------------------------------------------------------------


def audit_tail(data_dir: Path, n: int, start: int | None = None) -> list[tuple[int, dict[str, Any]]]:
    async def tail(reader: AuditReader) -> list[tuple[int, bytes]]:
        return await (reader.entries(start) if start is not None else reader.tail(n))

    return [(i, json.loads(e)) for i, e in _read(data_dir, tail)]


def audit_tail_all(data_dir: Path, n: int) -> list[tuple[str, int, dict[str, Any]]]:
    """The newest ``n`` entries of this node's log and of every replica it holds (collected
    live or imported from sync bundles), merged by time: the estate's trail on a collector."""
    origin, _ = _verifier_names(data_dir)

    async def tail(reader: AuditReader) -> list[tuple[str, int, bytes]]:
        rows = [(origin, i, e) for i, e in await reader.tail(n)]
        async with reader.store.conn.execute(
            "SELECT origin, seq, entry FROM (SELECT origin, seq, entry FROM replica_entry "
            "ORDER BY rowid DESC LIMIT ?)", (n * 4,)
        ) as cur:
            rows += [(str(o), int(i), bytes(e)) for o, i, e in await cur.fetchall()]
        return rows

    merged = [(o, i, json.loads(e)) for o, i, e in _read(data_dir, tail)]
    merged.sort(key=lambda r: (r[2].get("time", ""), r[0], r[1]))
    return merged[-n:]


def audit_checkpoint(data_dir: Path, size: int | None = None) -> str:
    async def get(reader: AuditReader) -> str | None:
        return await (reader.head() if size is None else reader.checkpoint_at(size))

    note = _read(data_dir, get)
    if note is None:
        raise EnrollmentError(
            "no such checkpoint: the log is empty or that size was not kept; "
            "`outpost audit checkpoint --all` lists the kept ones"
        )
    return note


def audit_checkpoints(data_dir: Path) -> list[tuple[int, str]]:
    return _read(data_dir, lambda r: r.checkpoints())


def audit_vkey(data_dir: Path) -> str:
    _, verifiers = _verifier_names(data_dir)
    return str(verifiers[-1].vkey)


def audit_proof(data_dir: Path, index: int, size: int | None) -> dict[str, Any]:
    return _read(data_dir, lambda r: r.inclusion_proof(index, size)).to_json_obj()


def audit_consistency(data_dir: Path, old: int, new: int | None) -> dict[str, Any]:
    return _read(data_dir, lambda r: r.consistency_proof(old, new)).to_json_obj()


def audit_verify(data_dir: Path) -> dict[str, Any]:
    report = _read(data_dir, lambda r: r.verify())
    return {
        "ok": report.ok,
        "entries": report.entries,
        "checkpoints": report.checkpoints,
        "verified_size": report.verified_size,
        "first_bad_index": report.first_bad_index,
        "exact": report.exact,
        "problems": list(report.problems),
    }


# -- federation authority (offline, on the admin's machine) -----------------------------------


def federation_init(ca_dir: Path, name: str) -> dict[str, Any]:
    auth = authority.init_authority(ca_dir, name)
    return {"federation": name, "dir": str(ca_dir),
            "fingerprint": identity.fingerprint(auth.key.public_key())}


def federation_enroll(ca_dir: Path, request: Path, out: Path, *, tier: str, site: str,
                      jurisdiction: str, labels: dict[str, str], validity_days: int) -> dict[str, Any]:
    enrolled = authority.enroll(ca_dir, request.read_bytes(), tier=tier, site=site,
                                jurisdiction=jurisdiction, labels=labels,
                                validity_days=validity_days)
    out.write_bytes(enrolled.chain_pem)
    return {"node_id": enrolled.node_id, "serial": f"{enrolled.serial:x}", "certificate": str(out)}


def federation_revoke(ca_dir: Path, node_ids: list[str], out: Path) -> dict[str, Any]:
    version, pem = authority.revoke(ca_dir, node_ids)
    out.write_bytes(pem)
    return {"version": version, "file": str(out)}


def policy_sign(ca_dir: Path, policy: Path, version: int, out: Path,
                schema: Path | None = None, entities: Path | None = None) -> dict[str, Any]:
    from federation.canonical import rfc3339
    from federation.policy import sign_bundle

    auth = authority.load_authority(ca_dir)
    body = sign_bundle(
        auth.key, policy.read_text(), version, rfc3339(now()), auth.name,
        schema=schema.read_text() if schema else None,
        entities=json.loads(entities.read_text()) if entities else None,
    )
    out.write_bytes(body)
    return {"federation": auth.name, "version": version, "file": str(out)}


def policy_show(data_dir: Path) -> dict[str, Any] | None:
    """The policy bundle in force on this node, or None (the node then forwards nothing)."""
    from federation.policy import read_bundle
    from node.enrollment import authority_pem
    from node.store import get_doc

    async def get() -> tuple[int, bytes] | None:
        store = await Store.open(data_dir)
        try:
            return await get_doc(store, "policy")
        finally:
            await store.close()

    held = asyncio.run(get())
    ca = authority_pem(data_dir)
    if held is None or ca is None:
        return None
    bundle = read_bundle(held[1], identity.load_authority_certificate(ca).public_key())  # type: ignore[arg-type]
    return {
        "federation": bundle.federation,
        "version": bundle.version,
        "issued_at": bundle.issued_at,
        "digest": bundle.digest,
        "policies": bundle.policies,
    }


def peers(data_dir: Path) -> list[dict[str, Any]]:
    client = connect(data_dir)
    if client is None:
        raise EnrollmentError(
            f"no daemon is running on {data_dir}; membership is live state — start it with "
            "`outpost run`"
        )
    with client:
        rows: list[dict[str, Any]] = client.request("GET", "/peers")
        return rows


def policy_explain(data_dir: Path, data_class: str, jurisdiction: str | None, target: str,
                   model: str) -> dict[str, Any]:
    client = connect(data_dir)
    if client is None:
        raise EnrollmentError(
            f"no daemon is running on {data_dir}; explain needs the target's attested "
            "attributes, which the running node learns from its peers"
        )
    from urllib.parse import urlencode

    query = {"data_class": data_class, "to": target, "model": model}
    if jurisdiction:
        query["jurisdiction"] = jurisdiction
    with client:
        result: dict[str, Any] = client.request("GET", "/policy/explain?" + urlencode(query))
        return result


# -- node side -------------------------------------------------------------------------------


def join_request(data_dir: Path, out: Path) -> dict[str, Any]:
    config = cfg.load(data_dir)
    key = load_key(data_dir)
    out.write_bytes(identity.make_enrollment_request(config.node.name, key, now()))
    return {"node_id": config.node.name, "request": str(out),
            "fingerprint": identity.fingerprint(key.public_key())}


def join(data_dir: Path, cert: Path, seeds: list[str]) -> dict[str, Any]:
    config = cfg.load(data_dir)
    key = load_key(data_dir)
    if control.daemon_running(data_dir):
        raise EnrollmentError(
            "the daemon is running; stop it, run `outpost join` (it changes the node's identity "
            "and audit origin), then start it again"
        )
    with control.offline_lock(data_dir, "outpost join"):
        ident = install_certificate(data_dir, cert.read_bytes(), config.node.name, key)
        if seeds:
            for seed in seeds:
                cfg.parse_hostport(seed, key="--seed")
            cfg.save(data_dir, config.replace("federation", seeds=sorted(set(seeds))))

        async def record() -> None:
            store = await Store.open(data_dir)
            try:
                audit = await AuditLog.open(store, key, config.node.name, ident.federation,
                                            config.audit)
                await audit.append(audit.record(
                    "enroll", caller="admin", peer=ident.federation,
                    detail={"tier": ident.tier, "site": ident.site,
                            "jurisdiction": ident.jurisdiction, "serial": f"{ident.serial:x}"},
                ))
                await audit.close()
            finally:
                await store.close()

        asyncio.run(record())
    return {**ident.attributes(), "federation": ident.federation, "origin": ident.origin}


def apply(data_dir: Path, document: Path) -> dict[str, Any]:
    body = document.read_bytes()
    client = connect(data_dir)
    if client is not None:
        with client:
            result: dict[str, Any] = client.request(
                "POST", "/apply", {"document": body.decode("utf-8", errors="strict")}
            )
            return result
    config = cfg.load(data_dir)
    key = load_key(data_dir)
    ident = load_identity(data_dir)

    async def go() -> dict[str, Any]:
        store = await Store.open(data_dir)
        try:
            applied = await apply_document(store, data_dir, body)
            if applied.unchanged:
                return applied.to_json()
            audit = await AuditLog.open(store, key, config.node.name,
                                        ident.federation if ident else None, config.audit)
            await audit.append(audit.record(f"{applied.kind}.apply", **applied.audit_fields()))
            await audit.close()
            return applied.to_json()
        finally:
            await store.close()

    with control.offline_lock(data_dir, "outpost apply"):
        return asyncio.run(go())


__all__ = ["EnrollmentError", "FederationError"]
