"""The federation authority's directory, kept offline by the admin (``outpost federation ...``).

Layout of ``--ca DIR``::

    authority.key   Ed25519 private key, PEM, mode 0600 — the root of trust; keep it offline
    authority.crt   self-signed CA certificate, shared with every node inside enrollment files
    issued.json     node id -> certificate serials issued, so a revocation can name serials
    revoked.json    {"version": N, "nodes": [...]} — the last revocation list issued

Everything is files carried by hand: no network. The crypto is ``federation.identity``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from federation import identity
from federation.identity import Authority
from node.durable import private_dir, write_atomic
from node.errors import OperatorError

KEY_FILE = "authority.key"
CERT_FILE = "authority.crt"
ISSUED_FILE = "issued.json"
REVOKED_FILE = "revoked.json"


class AuthorityError(OperatorError):
    """The authority directory is missing, incomplete or inconsistent."""


def _now() -> datetime:
    return datetime.now(UTC)


def _write_private(path: Path, data: bytes) -> None:
    write_atomic(path, data, exclusive=True)


def _write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True))


def init_authority(ca_dir: Path, name: str) -> Authority:
    identity.validate_federation_name(name)
    if (ca_dir / KEY_FILE).exists():
        raise AuthorityError(
            f"{ca_dir} already holds a federation authority; it is kept (a new one would "
            "orphan every enrolled node). Use another --dir for a new federation"
        )
    private_dir(ca_dir)  # 0700 also when the directory already existed
    authority = Authority.create(name, _now())
    _write_private(ca_dir / KEY_FILE, identity.private_key_to_pem(authority.key))
    write_atomic(ca_dir / CERT_FILE, authority.cert_pem)
    _write_json(ca_dir / ISSUED_FILE, {})
    _write_json(ca_dir / REVOKED_FILE, {"version": 0, "nodes": []})
    return authority


def load_authority(ca_dir: Path) -> Authority:
    try:
        key_pem = (ca_dir / KEY_FILE).read_bytes()
        cert_pem = (ca_dir / CERT_FILE).read_bytes()
    except FileNotFoundError:
        raise AuthorityError(
            f"{ca_dir} is not a federation authority directory; create one with "
            f"`outpost federation init --dir {ca_dir} --name FED`"
        ) from None
    return Authority.load(key_pem, cert_pem)


@dataclass(frozen=True)
class Enrolled:
    node_id: str
    serial: int
    chain_pem: bytes


def enroll(ca_dir: Path, request: bytes, *, tier: str, site: str, jurisdiction: str,
           labels: dict[str, str], validity_days: int = 365) -> Enrolled:
    """Sign a node certificate; the output file holds the node certificate then the
    authority certificate, so ``outpost join`` needs nothing else."""
    authority = load_authority(ca_dir)
    req = identity.read_enrollment_request(request)
    cert = identity.issue_node_certificate(
        authority.key, authority.cert_pem, req, tier, site, jurisdiction, labels, _now(),
        validity_days=validity_days,
    )
    serial = identity.certificate_serial(cert)
    issued: dict[str, list[int]] = json.loads((ca_dir / ISSUED_FILE).read_text())
    issued.setdefault(req.node_id, []).append(serial)
    _write_json(ca_dir / ISSUED_FILE, issued)
    return Enrolled(req.node_id, serial, cert + authority.cert_pem)


def revoke(ca_dir: Path, node_ids: list[str]) -> tuple[int, bytes]:
    """A new revocation list (next version) with every node revoked so far plus ``node_ids``."""
    authority = load_authority(ca_dir)
    state = json.loads((ca_dir / REVOKED_FILE).read_text())
    issued: dict[str, list[int]] = json.loads((ca_dir / ISSUED_FILE).read_text())
    nodes = sorted(set(state["nodes"]) | {identity.validate_node_id(n) for n in node_ids})
    version = int(state["version"]) + 1
    pairs: list[tuple[str, int | None]] = []
    for node in nodes:
        serials = issued.get(node, [])
        pairs.extend((node, s) for s in serials) if serials else pairs.append((node, None))
    pem = identity.issue_revocation_list(authority, pairs, version, _now())
    _write_json(ca_dir / REVOKED_FILE, {"version": version, "nodes": nodes})
    return version, pem
