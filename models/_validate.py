"""Range checks for the config dataclasses of ``models`` (runtime, ray): one error shape,
naming the ``outpost.toml`` key and the allowed range."""

from __future__ import annotations

from models.errors import InvalidConfig


def check(section: str, ok: bool, field: str, allowed: str, value: object) -> None:
    if not ok:
        raise InvalidConfig(f"{section}.{field} must be {allowed}, got {value!r}")


def check_int(section: str, value: object, field: str, low: int, high: int) -> None:
    ok = type(value) is int and low <= value <= high
    check(section, ok, field, f"an integer from {low} to {high}", value)


def check_num(section: str, value: object, field: str, low: float, high: float) -> None:
    ok = type(value) in (int, float) and low <= value <= high  # type: ignore[operator]
    check(section, ok, field, f"a number from {low:g} to {high:g}", value)
