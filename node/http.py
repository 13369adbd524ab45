"""Minimal ASGI plumbing shared by the daemon's HTTP apps: reading bounded bodies, decoding
request compression, parsing request JSON and headers strictly (depth, hop counts, request ids:
always a 400, never a 500), moving large parses off the event loop, and sending JSON or raw
responses.

No framework on purpose: the inference path is measured against a bare ASGI handler (DESIGN §9),
and the routing here is a handful of fixed paths.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import multiprocessing
import re
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

import orjson

from node import limits

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_TYPE = (b"content-type", b"application/json")


class HTTPError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []
        self.audited = False
        """True once the refusal has its audit entry (the endpoint then adds none)."""

    def __reduce__(self) -> tuple[Any, ...]:  # raised in a decoding process, re-raised here
        return (_rebuild_error, (self.status, self.message, self.headers, self.audited))

    def recorded(self) -> HTTPError:
        self.audited = True
        return self


def _rebuild_error(status: int, message: str, headers: list[tuple[bytes, bytes]],
                   audited: bool) -> HTTPError:
    error = HTTPError(status, message, headers)
    error.audited = audited
    return error


T = TypeVar("T")


_pool: concurrent.futures.ProcessPoolExecutor | None = None


def _json_pool() -> concurrent.futures.ProcessPoolExecutor:
    global _pool
    if _pool is None:
        # forkserver: children start from a clean interpreter, not a fork of a daemon that
        # holds sockets, threads and the database.
        _pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=limits.JSON_DECODE_PROCESSES,
            mp_context=multiprocessing.get_context("forkserver"))
    return _pool


def close_pool() -> None:
    """Stop the JSON decoding processes (daemon shutdown)."""
    global _pool
    if _pool is not None:
        _pool.shutdown(wait=False, cancel_futures=True)
        _pool = None


async def off_loop(size: int, fn: Callable[..., T], *args: Any, json_bytes: int = 0) -> T:
    """``fn(*args)`` away from the event loop when it is big: in a decoding process when it
    parses more than ``OFFLOAD_JSON_PROCESS_BYTES`` of JSON text (the JSON parsers hold the
    GIL for the whole parse, so a thread would stall the loop all the same: 63 MiB of JSON held
    it 1.8 s and gossip flapped), on a worker thread when it works on more than
    ``OFFLOAD_DECODE_BYTES``, inline otherwise. ``fn`` must be a module-level function (its
    arguments and result cross a process boundary)."""
    if json_bytes > limits.OFFLOAD_JSON_PROCESS_BYTES:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_json_pool(), functools.partial(fn, *args))
    if size > limits.OFFLOAD_DECODE_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


def load_json_object(text: bytes, what: str) -> dict[str, Any]:
    """A JSON object from a request, or HTTPError 400 naming the fault (never a 500: nesting
    beyond the parsers' depth limit is refused like any other malformed JSON)."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if "recursion" in str(exc).lower():
            raise HTTPError(400, _too_deep(what)) from None
        try:  # the standard library also reads NaN/Infinity (tritonclient sends them)
            doc = json.loads(text)
        except RecursionError:
            raise HTTPError(400, _too_deep(what)) from None
        except (ValueError, UnicodeDecodeError) as exc2:
            raise HTTPError(400, f"{what} JSON is invalid: {exc2}") from None
    if not isinstance(doc, dict):
        raise HTTPError(400, f"{what} JSON must be an object with an 'inputs' list")
    return doc


def _too_deep(what: str) -> str:
    return (f"{what} JSON is nested deeper than {limits.MAX_JSON_DEPTH} levels; tensors nest "
            "only as deep as their rank: send flat data with a shape")


_HOPS = re.compile(rb"[0-9]{1,3}")
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")


def parse_hops(raw: bytes | None) -> int:
    """``Outpost-Hops`` of a forwarded request: a plain decimal in 1..MAX_HOPS, else 400."""
    if raw is None:
        return 1
    if not _HOPS.fullmatch(raw) or not 1 <= int(raw) <= limits.MAX_HOPS:
        shown = raw[:32].decode("ascii", "replace")
        raise HTTPError(400, f"Outpost-Hops {shown!r} is not a number from 1 to "
                             f"{limits.MAX_HOPS}; the sending node sets it")
    return int(raw)


def parse_request_id(raw: bytes | None) -> str:
    """``Outpost-Request-Id``: 1-64 of ``A-Za-z0-9._:-``, else 400."""
    if raw is None:
        return "forwarded"
    if not _REQUEST_ID.fullmatch(raw):
        raise HTTPError(400, "Outpost-Request-Id must be 1-64 characters of A-Z a-z 0-9 . _ : -")
    return raw.decode("ascii")


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, refused with 413 as soon as it would exceed ``limit`` bytes.

    ``Content-Encoding: gzip|deflate`` bodies are inflated, and the limit applies to the
    inflated size too, so a small compressed bomb cannot blow up memory.
    """
    declared = header(scope, b"content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise HTTPError(400, "Content-Length is not an integer") from None
        if length > limit:
            raise HTTPError(413, _too_large(length, limit))
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HTTPError(499, "client disconnected")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, _too_large(size, limit))
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    encoding = header(scope, b"content-encoding")
    if encoding and encoding.lower() not in (b"identity",):
        body = _inflate(body, encoding.lower(), limit)
    return body


def _inflate(body: bytes, encoding: bytes, limit: int) -> bytes:
    if encoding == b"gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == b"deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise HTTPError(
            415, f"Content-Encoding {encoding.decode(errors='replace')!r} is not supported; "
            "send gzip, deflate or no compression"
        )
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise HTTPError(400, f"request body is not valid {encoding.decode()} data: {exc}") from exc
    if len(out) > limit or inflater.unconsumed_tail:
        raise HTTPError(413, _too_large(len(out), limit) + " (after decompression)")
    return out


def _too_large(size: int, limit: int) -> str:
    return (
        f"request body of {size} bytes exceeds the limit of {limit} bytes; send smaller "
        "batches or raise node.max_body_bytes in outpost.toml"
    )


async def send_response(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [*headers, (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})


async def send_json(
    send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    await send_response(send, status, body, [JSON_TYPE, *(headers or [])])


async def send_error(send: Send, error: HTTPError) -> None:
    await send_json(send, error.status, {"error": error.message}, error.headers)
