"""Model names, versions and references (``name[:version]``).

Owns the allowed pattern. Names travel in URLs, file listings, audit entries and Cedar
entity ids (``Model::"<name>:<version>"``), so the pattern is deliberately conservative:
ASCII letters, digits, ``_``, ``.`` and ``-``, starting with a letter or digit, no ``..``.
That rules out path traversal (``/``, ``\\``, ``..``), hidden files, NUL, whitespace and
the ``:`` that separates name from version. Must never touch the file system.
"""

from __future__ import annotations

import re

from models.errors import InvalidName

__all__ = ["NAME_PATTERN", "VERSION_PATTERN", "parse_ref", "validate_name", "validate_version"]

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
"""A model name: 1-128 characters; also must not contain ``..``."""

VERSION_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
"""A model version: 1-64 characters, e.g. ``1``, ``2024-06-01``, ``v1.2``; no ``..``."""

_NAME = re.compile(NAME_PATTERN)
_VERSION = re.compile(VERSION_PATTERN)


def _check(kind: str, value: object, regex: re.Pattern[str], pattern: str) -> str:
    # fullmatch, not match with "$": "$" also matches before a trailing newline.
    if not isinstance(value, str) or regex.fullmatch(value) is None or ".." in value:
        raise InvalidName(
            f"invalid model {kind} {value!r}: use 1-{_max_len(pattern)} characters matching "
            f"{pattern} (letters, digits, '_', '.', '-'; starts with a letter or digit; no '..')"
        )
    return value


def _max_len(pattern: str) -> int:
    return int(pattern.rsplit(",", 1)[1].rstrip("}")) + 1


def validate_name(name: object) -> str:
    """Return ``name`` if it is an allowed model name, else raise InvalidName."""
    return _check("name", name, _NAME, NAME_PATTERN)


def validate_version(version: object) -> str:
    """Return ``version`` if it is an allowed model version, else raise InvalidName."""
    return _check("version", version, _VERSION, VERSION_PATTERN)


def parse_ref(ref: str) -> tuple[str, str | None]:
    """Split ``name[:version]`` into a validated name and version (None when absent)."""
    name, sep, version = ref.partition(":")
    validate_name(name)
    if not sep:
        return name, None
    return name, validate_version(version)
