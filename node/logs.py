"""The daemon's logging: one handler on stderr, text or JSON lines, quiet third parties.

Owns the log format, the per-request context (``request_id``: a contextvar set by the app
endpoint, so every line logged while serving a request carries it) and the levels of the
libraries the node uses. Must never log by itself or touch handlers it did not install.

JSON lines (``[log] format = "json"`` or ``outpost run --log-format json``)::

    {"time": "2026-12-04T05:40:00.123Z", "level": "INFO", "logger": "outpost.daemon",
     "message": "node a ready ...", "node_id": "a", "request_id": "…", "trace_id": "…"}
    # request_id while serving a request; trace_id when the app sent a W3C traceparent

Third-party loggers (uvicorn, aiohttp, httpx, zeroconf, ray, ...) log at WARNING and above
unless the node runs at DEBUG: at INFO one gossip POST is not a log line.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import sys
from typing import Any, TextIO

from node import trace

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")

# Libraries that are chatty at INFO (a line per HTTP request or mDNS change).
THIRD_PARTY = ("uvicorn", "uvicorn.error", "uvicorn.access", "aiohttp", "httpx", "httpcore",
               "zeroconf", "ray", "asyncio", "hpack", "filelock", "urllib3")

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "outpost_request_id", default=None)

_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Context(logging.Filter):
    """Stamps ``node_id`` and the current ``request_id`` on every record."""

    def __init__(self, node_id: str | None) -> None:
        super().__init__()
        self.node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.node_id = self.node_id
        record.request_id = request_id.get()
        record.trace_id = trace.trace_id()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; exceptions folded into ``exc`` (never a multi-line dump)."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        node_id = getattr(record, "node_id", None)
        if node_id:
            line["node_id"] = node_id
        rid = getattr(record, "request_id", None)
        if rid:
            line["request_id"] = rid
        tid = getattr(record, "trace_id", None)
        if tid:
            line["trace_id"] = tid
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(_TEXT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        rid = getattr(record, "request_id", None)
        return f"{text} [request {rid}]" if rid else text


_handler: logging.Handler | None = None


def setup(level: str = "info", fmt: str = "text", *, node_id: str | None = None,
          stream: TextIO | None = None) -> logging.Handler:
    """Install (or replace) the node's handler on the root logger and set the levels."""
    global _handler
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_Context(node_id))
    root.addHandler(handler)
    _handler = handler
    set_level(level)
    return handler


def set_node_id(node_id: str) -> None:
    if _handler is not None:
        for f in _handler.filters:
            if isinstance(f, _Context):
                f.node_id = node_id


def set_level(level: str) -> None:
    """The node's level; third parties stay at WARNING unless it is DEBUG. Safe live (SIGHUP)."""
    if level.lower() not in LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    numeric = logging.getLevelName(level.upper())
    logging.getLogger().setLevel(numeric)
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(numeric if numeric <= logging.DEBUG
                                         else max(numeric, logging.WARNING))
