"""Canonical bytes for everything Outpost hashes or signs.

Owns: RFC 8785 (JSON Canonicalization Scheme) encoding through the ``rfc8785`` package,
SHA-256, and strict standard base64. Every signed or hashed document in ``federation``
goes through :func:`canonical_json` so that two implementations that agree on the
*value* agree on the *bytes*; verifiers re-canonicalize what they parse and compare.

Must never: do I/O, read the clock, or accept "almost" base64 (whitespace, missing
padding, URL-safe alphabet) — a lenient decoder gives one value several encodings,
which breaks "same value, same bytes".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import orjson
import rfc8785

from federation.errors import MalformedInput

__all__ = [
    "b64decode",
    "b64encode",
    "canonical_json",
    "parse_json_object",
    "rfc3339",
    "sha256",
    "sha256_hex",
]


_SAFE_INT = 2**53 - 1  # I-JSON safe integers: what RFC 8785 (and rfc8785) accepts


def _plain(obj: Any, depth: int = 0) -> bool:
    if depth > 32:
        return False
    kind = type(obj)
    if kind is str or kind is bool or obj is None:
        return True
    if kind is int:
        return bool(-_SAFE_INT <= obj <= _SAFE_INT)
    if kind is dict:
        return all(type(k) is str and k.isascii() and _plain(v, depth + 1)
                   for k, v in obj.items())
    if kind is list or kind is tuple:
        return all(_plain(v, depth + 1) for v in obj)
    return False


def canonical_json(obj: Any) -> bytes:
    """Encode ``obj`` as RFC 8785 canonical JSON (UTF-8 bytes, sorted keys, no spaces).

    Raises MalformedInput when the value has no canonical form (non-string keys,
    integers beyond ±2**53, NaN/infinite floats, non-JSON types), because such a value
    usually came from a peer's document; build it from JSON types to fix it.
    """
    if _plain(obj):
        # For dicts/lists of ASCII-keyed str, bool, None and safe ints, orjson's sorted compact
        # output is byte-identical to RFC 8785 (same escapes, same key order for ASCII keys,
        # same integer spelling; property-tested against rfc8785) and ~20x faster: audit
        # entries take this path once per inference. Anything else goes to rfc8785.
        try:
            return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:  # lone surrogates: let rfc8785 judge them
            pass
    try:
        return rfc8785.dumps(obj)
    except (rfc8785.CanonicalizationError, TypeError) as exc:
        raise MalformedInput(
            f"value has no RFC 8785 canonical JSON form ({exc}); use only str keys, "
            "ints within ±2**53, finite floats, str, bool, None, lists and dicts"
        ) from exc


def parse_json_object(data: bytes | str, what: str) -> dict[str, Any]:
    """Parse a JSON object, raising MalformedInput that names ``what`` on any failure.

    Duplicate keys are refused: JSON parsers disagree on which duplicate wins, so a
    document with duplicates could verify as one value and be acted on as another.
    """

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise MalformedInput(f"{what}: duplicate JSON key {key!r}; send each key once")
            out[key] = value
        return out

    def no_constants(name: str) -> Any:
        # Python's json accepts NaN and Infinity; JSON (and RFC 8785) does not.
        raise MalformedInput(f"{what}: {name} is not JSON; send finite numbers")

    try:
        value = json.loads(data, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedInput(f"{what} is not valid JSON ({exc}); send UTF-8 JSON") from exc
    if not isinstance(value, dict):
        raise MalformedInput(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def sha256(data: bytes) -> bytes:
    """SHA-256 digest (32 bytes)."""
    return hashlib.sha256(data).digest()


def sha256_hex(data: bytes) -> str:
    """SHA-256 digest as 64 lowercase hex characters."""
    return hashlib.sha256(data).hexdigest()


def b64encode(data: bytes) -> str:
    """Standard base64 (RFC 4648 §4) with padding, as text."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str, *, length: int | None = None, what: str = "value") -> bytes:
    """Strict standard base64 decode; optionally require exactly ``length`` bytes.

    Strict means: standard alphabet only, correct padding, and the text must be the
    canonical encoding of the bytes it decodes to (no stray non-zero padding bits).
    """
    if not isinstance(text, str):
        raise MalformedInput(f"{what} must be a base64 string, got {type(text).__name__}")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise MalformedInput(
            f"{what} is not standard base64 ({exc}); encode with RFC 4648 §4 and padding"
        ) from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise MalformedInput(f"{what} is not canonical base64; re-encode the raw bytes")
    if length is not None and len(raw) != length:
        raise MalformedInput(f"{what} must decode to {length} bytes, got {len(raw)}")
    return raw


def rfc3339(now: datetime) -> str:
    """``now`` as RFC 3339 UTC with microseconds, e.g. ``2025-01-02T03:04:05.000006Z``.

    One fixed width so timestamps inside signed documents have a single spelling.
    """
    if now.tzinfo is None:
        raise ValueError(
            "pass an aware datetime (e.g. datetime.now(UTC)); naive times are ambiguous"
        )
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
