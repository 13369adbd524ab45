"""Minimal ASGI plumbing shared by the daemon's HTTP apps: reading bounded bodies, decoding
request compression, and sending JSON or raw responses.

No framework on purpose: the inference path is measured against a bare ASGI handler (DESIGN §9),
and the routing here is a handful of fixed paths.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

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
