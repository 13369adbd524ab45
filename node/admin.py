"""The admin API: HTTP over a Unix socket in the data directory (``admin.sock``, mode 0600).

The CLI talks to a running daemon through it, so that ``outpost models add`` loads the model live
and ``outpost status`` shows the daemon's own view. Access control is the socket file's mode:
only the node's owner can connect. JSON in, JSON out; errors as ``{"error": ...}``: 400 for
the operator's mistakes (``node.errors.OperatorError``, and a document or model that does
not verify), 404 for an unknown model or route, 500 for everything else (a fault of the
node, logged with its traceback). Routes other modules own (bundle import, batch audit,
peers, policy explain) are registered by ``node.daemon`` with :meth:`AdminApp.route`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from federation.errors import FederationError
from models import ModelError
from node.audit import AuditError, AuditReader
from node.errors import OperatorError
from node.http import HTTPError, Receive, Scope, Send, read_body, send_error, send_json
from node.limits import ADMIN_MAX_BODY_BYTES
from node.modelhost import ModelHost, ModelNotFound

log = logging.getLogger("outpost.admin")

Handler = Callable[[dict[str, Any], str], Awaitable[tuple[int, Any]]]


class AdminApp:
    def __init__(
        self,
        host: ModelHost,
        status: Callable[[], Awaitable[dict[str, Any]]],
        audit: AuditReader | None = None,
        apply: Callable[[bytes], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self.host = host
        self.status = status
        self.audit = audit
        self.apply = apply
        # Extra routes (audit, policy, ...) registered by other components: (method, prefix).
        self.routes: dict[tuple[str, str], Handler] = {}

    def route(self, method: str, prefix: str, handler: Handler) -> None:
        self.routes[(method, prefix)] = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            await self._dispatch(scope, receive, send)
        except HTTPError as exc:
            await send_error(send, exc)
        except ModelNotFound as exc:
            await send_error(send, HTTPError(404, str(exc)))
        except (OperatorError, FederationError, ModelError) as exc:
            # The operator's request or the document/model it handed over is wrong: refuse it.
            # Anything else (NodeFault, a bug) is ours: 500, and the log has the traceback.
            await send_error(send, HTTPError(400, str(exc)))
        except Exception as exc:
            log.exception("admin %s %s failed", scope["method"], scope["path"])
            await send_error(send, HTTPError(500, f"internal error: {exc}; see the daemon log"))

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        body = await read_body(scope, receive, ADMIN_MAX_BODY_BYTES)
        try:
            payload: dict[str, Any] = json.loads(body) if body else {}
        except json.JSONDecodeError as exc:
            raise HTTPError(400, f"admin request body is not JSON: {exc}") from None
        query = _query(scope)
        if path == "/status" and method == "GET":
            await send_json(send, 200, await self.status())
        elif path == "/models" and method == "GET":
            await send_json(send, 200, [r.to_json() for r in await self.host.list()])
        elif path == "/models" and method == "POST":
            record = await self.host.add(
                Path(payload["path"]), payload["name"], payload.get("version"),
                pulled_from=payload.get("pulled_from"),
            )
            await send_json(send, 200, record.to_json())
        elif path.startswith("/models/") and method == "DELETE":
            removed = await self.host.remove(unquote(path[len("/models/"):]))
            await send_json(send, 200, [r.to_json() for r in removed])
        elif path.startswith("/audit/") and method == "GET" and self.audit is not None:
            await send_json(send, 200, await audit_query(self.audit, path[len("/audit/"):], query))
        elif path == "/apply" and method == "POST" and self.apply is not None:
            await send_json(send, 200, await self.apply(payload["document"].encode()))
        else:
            for (m, prefix), handler in self.routes.items():
                if m == method and (path == prefix or path.startswith(prefix + "/")):
                    status, result = await handler({**query, **payload}, path[len(prefix):])
                    await send_json(send, status, result)
                    return
            raise HTTPError(404, f"no admin endpoint {method} {path}")


def _int(query: dict[str, str], key: str, default: int | None = None) -> int | None:
    if key not in query or query[key] in ("", "None"):
        return default
    try:
        return int(query[key])
    except ValueError:
        raise HTTPError(400, f"{key} must be an integer, got {query[key]!r}") from None


async def audit_query(reader: AuditReader, what: str, query: dict[str, str]) -> Any:
    """The audit log's read API, shared by the admin socket and the peer endpoint (which
    serves witnesses only the checkpoint and proof views, see ``node.federate``):
    ``checkpoint[?size=N]``, ``entries?start=&end=``, ``proof?index=&size=``,
    ``consistency?old=&new=``, ``verify``. A bad query (size, index) is the caller's
    mistake: 400."""
    try:
        if what == "checkpoint":
            size = _int(query, "size")
            note = await (reader.head() if size is None else reader.checkpoint_at(size))
            if note is None:
                raise HTTPError(404, "no checkpoint of that size is kept; list them with "
                                     "`outpost audit checkpoint --all`")
            return {"checkpoint": note}
        if what == "checkpoints":
            return [{"size": s, "checkpoint": n} for s, n in await reader.checkpoints()]
        if what == "entries":
            rows = await reader.entries(_int(query, "start", 0) or 0, _int(query, "end"))
            return [{"index": i, "entry": json.loads(e)} for i, e in rows]
        if what == "proof":
            index = _int(query, "index")
            if index is None:
                raise HTTPError(400, "proof needs ?index=I")
            return (await reader.inclusion_proof(index, _int(query, "size"))).to_json_obj()
        if what == "consistency":
            old = _int(query, "old")
            if old is None:
                raise HTTPError(400, "consistency needs ?old=M")
            return (await reader.consistency_proof(old, _int(query, "new"))).to_json_obj()
        if what == "verify":
            report = await reader.verify()
            return {"ok": report.ok, "entries": report.entries,
                    "verified_size": report.verified_size,
                    "first_bad_index": report.first_bad_index, "problems": list(report.problems)}
    except AuditError as exc:
        raise HTTPError(400, str(exc)) from None
    raise HTTPError(404, f"no audit endpoint {what!r}")


def _query(scope: Scope) -> dict[str, str]:
    raw = scope.get("query_string", b"").decode()
    out: dict[str, str] = {}
    for pair in filter(None, raw.split("&")):
        key, _, value = pair.partition("=")
        out[unquote(key)] = unquote(value)
    return out
