"""Talking to a running daemon from another process (the CLI, tests, tools).

The admin API is reached over ``<data-dir>/admin.sock``; the app endpoint at the address in
``daemon.json``. Errors come back as :class:`DaemonError` carrying the daemon's one-line message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from node import control
from node.errors import OperatorError


class DaemonError(OperatorError):
    """The daemon answered with an error, or could not be reached."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class AdminClient:
    def __init__(self, data_dir: Path, info: control.RuntimeInfo, timeout: float = 600.0) -> None:
        self.info = info
        transport = httpx.HTTPTransport(uds=info.admin_socket)
        self._http = httpx.Client(transport=transport, base_url="http://outpost", timeout=timeout)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        try:
            response = self._http.request(method, path, json=payload)
        except httpx.HTTPError as exc:
            raise DaemonError(
                f"cannot reach the daemon's admin socket {self.info.admin_socket}: {exc}; "
                "is `outpost run` still running?"
            ) from exc
        data = response.json() if response.content else None
        if response.status_code >= 400:
            message = data.get("error") if isinstance(data, dict) else response.text
            raise DaemonError(str(message), response.status_code)
        return data


def connect(data_dir: Path) -> AdminClient | None:
    """An admin client when a daemon is running on ``data_dir``, else None."""
    info = control.read_runtime(data_dir)
    return AdminClient(data_dir, info) if info else None
