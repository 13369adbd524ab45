"""App identity wired into a node: the daemon side (token index, admin routes, last-use
flushing, the app socket) and the CLI side (``outpost token ...``, ``audit tail --app``).

Glue only: what a token is and how it is checked lives in ``node.tokens``; the socket's peer
credentials in ``node.appsock``. Every operation works with or without a running daemon: online
it goes through the admin socket, so ``token revoke`` takes effect on the very next request;
offline it opens the store under the data-directory lock. Both paths audit ``token.add`` and
``token.revoke``; neither ever stores or logs a secret.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node import config as cfg
from node.appsock import AppSocketError, bind_app_socket, resolve_uids
from node.audit import AuditLog
from node.client import connect
from node.keys import load_key
from node.offline import OfflineNode, run_offline
from node.store import Store
from node.tokens import (
    AppAuth,
    TokenError,
    TokenRow,
    Tokens,
    mac_key,
    parse_expires,
)

if TYPE_CHECKING:
    import socket

    from node.admin import AdminApp

T = TypeVar("T")

__all__ = ["AppSocketError", "admin_routes", "bind",
           "open_auth", "token_add", "token_list", "token_revoke"]


def _key_of(key: Ed25519PrivateKey) -> bytes:
    return mac_key(key.private_bytes_raw())


# -- daemon side ---------------------------------------------------------------------------------


async def open_auth(store: Store, key: Ed25519PrivateKey, node: cfg.NodeSection) -> AppAuth:
    """The token index loaded and the request authenticator built from ``[node]``."""
    tokens = Tokens(store, _key_of(key))
    await tokens.load()
    return AppAuth(tokens, node.app_auth, resolve_uids(node.app_uids))


def bind(node: cfg.NodeSection) -> socket.socket:
    """The app socket's listening socket (``AppSocketError`` names the key to fix)."""
    return bind_app_socket(Path(node.app_socket), node.app_socket_group)


def _added(row: TokenRow, secret: str, now: float) -> dict[str, Any]:
    return {**row.to_json(now), "secret": secret}


def _attrs_for_audit(attrs: dict[str, str]) -> str:
    """The attributes policy will see, as issued; their hash when long (an entry's detail is
    bounded: ASCII-escaped, 600 characters stay under it even with every backslash doubled)."""
    text = json.dumps(attrs, sort_keys=True)
    return text if len(text) <= 600 else "sha256:" + hashlib.sha256(text.encode()).hexdigest()


async def _audit_change(audit: AuditLog, kind: str, rows: list[TokenRow]) -> None:
    for row in rows:
        await audit.append(audit.record(
            kind, caller="admin",
            detail={"app": row.name, "token": row.id, "attrs": _attrs_for_audit(dict(row.attrs)),
                    "expires": int(row.expires) if row.expires is not None else None},
        ))


async def _add(tokens: Tokens, audit: AuditLog, payload: dict[str, Any]) -> dict[str, Any]:
    attrs = payload.get("attrs") or {}
    if not isinstance(attrs, dict):
        raise TokenError("attrs must be an object of strings")
    secret, row = await tokens.add(str(payload.get("name", "")), attrs,
                                   parse_expires(payload.get("expires")))
    await _audit_change(audit, "token.add", [row])
    return _added(row, secret, tokens.clock())


async def _revoke(tokens: Tokens, audit: AuditLog, name: str) -> list[dict[str, Any]]:
    rows = await tokens.revoke(name)
    await _audit_change(audit, "token.revoke", rows)
    now = tokens.clock()
    return [r.to_json(now) for r in rows]


def admin_routes(admin: AdminApp, tokens: Tokens, audit: AuditLog) -> None:
    """``GET /tokens``, ``POST /tokens`` (add), ``POST /tokens/revoke`` on the admin socket."""

    async def listing(_payload: dict[str, Any], _rest: str) -> tuple[int, Any]:
        await tokens.flush_last_use()
        return 200, tokens.listing()

    async def add(payload: dict[str, Any], rest: str) -> tuple[int, Any]:
        if rest == "/revoke":
            return 200, await _revoke(tokens, audit, str(payload.get("name", "")))
        if rest:
            raise TokenError(f"no admin endpoint POST /tokens{rest}")
        return 200, await _add(tokens, audit, payload)

    admin.route("GET", "/tokens", listing)
    admin.route("POST", "/tokens", add)


# -- CLI side ------------------------------------------------------------------------------------


def _offline(data_dir: Path, holder: str,
             fn: Callable[[Tokens, AuditLog], Awaitable[T]]) -> T:
    """Run ``fn`` on the tokens and audit log of a stopped node (``node.offline``)."""

    async def go(node: OfflineNode) -> T:
        tokens = Tokens(node.store, _key_of(load_key(data_dir)))
        await tokens.load()
        return await fn(tokens, node.audit)

    return run_offline(data_dir, holder, go)


def token_add(data_dir: Path, name: str, attrs: dict[str, str], expires: str | None
              ) -> dict[str, Any]:
    parse_expires(expires)  # a bad duration is refused before anything is touched
    payload = {"name": name, "attrs": attrs, "expires": expires}
    client = connect(data_dir)
    if client is not None:
        with client:
            result: dict[str, Any] = client.request("POST", "/tokens", payload)
            return result
    return _offline(data_dir, "outpost token add", lambda t, a: _add(t, a, payload))


def token_revoke(data_dir: Path, name: str) -> list[dict[str, Any]]:
    client = connect(data_dir)
    if client is not None:
        with client:
            result: list[dict[str, Any]] = client.request("POST", "/tokens/revoke",
                                                          {"name": name})
            return result
    return _offline(data_dir, "outpost token revoke", lambda t, a: _revoke(t, a, name))


def token_list(data_dir: Path) -> list[dict[str, Any]]:
    client = connect(data_dir)
    if client is not None:
        with client:
            result: list[dict[str, Any]] = client.request("GET", "/tokens")
            return result

    async def listing(tokens: Tokens, _audit: AuditLog) -> list[dict[str, Any]]:
        return tokens.listing()

    return _offline(data_dir, "outpost token list", listing)


def entry_app(entry: dict[str, Any]) -> str | None:
    """The app an audit entry names (``detail.app``, both ends of a forward)."""
    detail = entry.get("detail")
    app = detail.get("app") if isinstance(detail, dict) else None
    return app if isinstance(app, str) else None
