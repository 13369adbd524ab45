"""The node exception tree: one root, the operator's mistakes apart from internal faults.

Invariants: every public exception class ``node`` defines derives from ``NodeError`` (so the
CLI catches one class), and the admin API answers 400 only for the operator's mistakes (and
for documents or models that do not verify), never for an arbitrary ``ValueError``."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
from typing import Any

import pytest

import node
from federation.errors import BadSignature
from node.admin import AdminApp
from node.batchio import BatchError
from node.config import ConfigError
from node.errors import NodeError, NodeFault, OperatorError
from node.store import StoreError

# Not errors of the node: HTTPError carries an HTTP response inside the ASGI apps and never
# leaves them.
_NOT_NODE_ERRORS = {"node.http.HTTPError"}


def _node_exception_classes() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.iter_modules(node.__path__):
        if info.name in ("daemon",):  # imports uvicorn/models: covered via node.errors
            continue
        module = importlib.import_module(f"node.{info.name}")
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__ == module.__name__ and not name.startswith("_")):
                found.append(obj)
    return found


def test_every_public_node_exception_has_the_node_root() -> None:
    classes = _node_exception_classes()
    assert len(classes) >= 15
    strays = [f"{c.__module__}.{c.__name__}" for c in classes
              if not issubclass(c, NodeError)
              and f"{c.__module__}.{c.__name__}" not in _NOT_NODE_ERRORS]
    assert strays == []
    for c in classes:
        if issubclass(c, NodeError) and c not in (NodeError,):
            # each is on exactly one side: the operator's or the node's
            assert issubclass(c, OperatorError) != issubclass(c, NodeFault), c


def test_old_catch_sites_still_catch() -> None:
    """Classes that were ValueErrors stay ValueErrors (code that catches those still works)."""
    assert issubclass(ConfigError, ValueError) and issubclass(BatchError, ValueError)


class _Host:
    async def list(self) -> list[Any]:
        return []


async def _call(app: AdminApp, path: str) -> tuple[int, dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": path, "query_string": b"",
               "headers": []},
              receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body)


@pytest.mark.parametrize(("error", "status"), [
    (ConfigError("bad setting; fix it"), 400),
    (BadSignature("does not verify; sign it again"), 400),
    (ValueError("a bug somewhere"), 500),
    (StoreError("database broken; restore it"), 500),
])
async def test_admin_api_refuses_only_operator_errors_with_400(error: Exception,
                                                                status: int) -> None:
    async def status_fn() -> dict[str, Any]:
        return {}

    app = AdminApp(_Host(), status_fn)  # type: ignore[arg-type]

    async def failing(_payload: dict[str, Any], _rest: str) -> tuple[int, Any]:
        raise error

    app.route("GET", "/fail", failing)
    got, body = await _call(app, "/fail")
    assert got == status
    assert str(error) in body["error"]
