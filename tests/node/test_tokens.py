"""Tokens on a real SQLite store, without a daemon: what is stored, how a presented token is
judged, what a hand-edited row becomes, and the failure throttle (time passed in)."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from node.store import DB_FILE, Store
from node.tokens import (
    ANONYMOUS_APP,
    FAILURE_BURST,
    AppAuth,
    AuthFailure,
    FailureThrottle,
    TokenError,
    Tokens,
    mac_key,
    parse_attrs,
    parse_expires,
    parse_label,
)

T = TypeVar("T")
KEY = mac_key(b"k" * 32)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def run(tmp_path: Path, fn: Callable[[Tokens], Awaitable[T]], clock: Clock | None = None) -> T:
    async def go() -> T:
        store = await Store.open(tmp_path)
        try:
            tokens = Tokens(store, KEY, clock or Clock())
            await tokens.load()
            return await fn(tokens)
        finally:
            await store.close()

    return asyncio.run(go())


def test_only_the_hash_is_stored_and_the_secret_verifies(tmp_path: Path) -> None:
    async def go(tokens: Tokens) -> tuple[str, str]:
        secret, row = await tokens.add("camera-svc", {"purpose": "diagnosis"}, None)
        assert tokens.verify(secret).principal.attrs == {"purpose": "diagnosis"}
        assert tokens.verify(secret).token_id == row.id
        return secret, row.id

    secret, tid = run(tmp_path, go)
    db = sqlite3.connect(tmp_path / DB_FILE)
    stored = db.execute("SELECT * FROM app_token").fetchall()
    db.close()
    assert len(stored) == 1
    assert secret.encode() not in repr(stored).encode() and secret.split("_")[-1] not in repr(stored)
    assert bytes(stored[0][2]) == hashlib.sha256(secret.encode()).digest()
    assert secret.startswith(f"opt_{tid}_") and len(secret) == 60


def test_wrong_unknown_revoked_and_expired_tokens_are_401(tmp_path: Path) -> None:
    clock = Clock()

    async def go(tokens: Tokens) -> list[str]:
        secret, _ = await tokens.add("a", {}, 60.0)
        messages = []
        for bad in (secret[:-1] + ("A" if secret[-1] != "A" else "B"), "opt_000000000000_" + "x" * 43,
                    "nonsense"):
            with pytest.raises(AuthFailure) as caught:
                tokens.verify(bad)
            assert caught.value.status == 401 and caught.value.app is None
            messages.append(caught.value.message)
        clock.now += 61
        with pytest.raises(AuthFailure, match="expired") as caught:
            tokens.verify(secret)
        assert caught.value.app == "a"
        await tokens.add("b", {}, None)
        with pytest.raises(TokenError, match="revoke it first"):
            await tokens.add("b", {}, None)
        secret_b = (await tokens.add("c", {}, None))[0]
        await tokens.revoke("c")
        with pytest.raises(AuthFailure, match="revoked"):
            tokens.verify(secret_b)
        return messages

    messages = run(tmp_path, go, clock)
    assert "not known on this node" in messages[0] and "opt_<id>_<secret>" in messages[2]


def test_a_row_edited_by_hand_is_refused_not_believed(tmp_path: Path) -> None:
    secret = run(tmp_path, lambda t: t.add("a", {"purpose": "billing"}, 3600.0))[0]
    db = sqlite3.connect(tmp_path / DB_FILE)
    db.execute("""UPDATE app_token SET attrs='{"purpose":"diagnosis"}', expires=NULL""")
    db.commit()
    db.close()

    async def check(tokens: Tokens) -> list[dict[str, object]]:
        with pytest.raises(AuthFailure, match="integrity check") as caught:
            tokens.verify(secret)
        assert caught.value.status == 401
        return tokens.listing()

    assert run(tmp_path, check)[0]["state"] == "tampered"
    db = sqlite3.connect(tmp_path / DB_FILE)
    db.execute("UPDATE app_token SET attrs='not json', created='yesterday'")
    db.commit()
    db.close()
    assert run(tmp_path, check)[0]["state"] == "tampered"

    async def revoke(tokens: Tokens) -> str:
        await tokens.revoke("a")  # revoking a tampered token works and keeps it refused
        return tokens.listing()[0]["state"]

    assert run(tmp_path, revoke) == "tampered"


def test_authorization_headers_and_modes(tmp_path: Path) -> None:
    async def go(tokens: Tokens) -> None:
        secret, _ = await tokens.add("a", {}, None)
        optional = AppAuth(tokens, "optional", {0: "root-svc"})
        required = AppAuth(tokens, "required", {})
        assert optional.authenticate(None, None, "127.0.0.1") is ANONYMOUS_APP
        with pytest.raises(AuthFailure, match="requires app credentials"):
            required.authenticate(None, None, "127.0.0.2")
        assert required.authenticate(f"Bearer {secret}".encode(), None, "x").name == "a"
        assert required.authenticate(f"bearer  {secret} ".encode(), None, "x").name == "a"
        for raw, why in ((b"Basic dXNlcjpwdw==", "scheme 'Basic'"), (b"Bearer", "malformed"),
                         (b"Bearer a b", "malformed"), (b"Bearer " + b"x" * 600, "too long"),
                         ("Bearer tök".encode(), "malformed")):
            with pytest.raises(AuthFailure, match=why) as caught:
                optional.authenticate(raw, None, f"src-{why}")
            assert caught.value.status == 401
        assert optional.authenticate(None, 0, "uid:0").name == "root-svc"
        with pytest.raises(AuthFailure, match="uid 1234 is not mapped") as caught:
            optional.authenticate(None, 1234, "uid:1234")
        assert caught.value.status == 403 and caught.value.outcome == "forbidden"
        # a bearer token on the socket wins over the uid
        assert optional.authenticate(f"Bearer {secret}".encode(), 1234, "uid:1234").name == "a"

    run(tmp_path, go)


def test_uid_mapped_app_carries_its_tokens_attributes(tmp_path: Path) -> None:
    async def go(tokens: Tokens) -> None:
        auth = AppAuth(tokens, "optional", {1001: "cam"})
        assert dict(auth.authenticate(None, 1001, "uid:1001").principal.attrs) == {}
        await tokens.add("cam", {"purpose": "diagnosis"}, None)
        assert dict(auth.authenticate(None, 1001, "uid:1001").principal.attrs) == {
            "purpose": "diagnosis"}

    run(tmp_path, go)


def test_failures_are_throttled_per_source_and_valid_tokens_never(tmp_path: Path) -> None:
    clock = Clock()

    async def go(tokens: Tokens) -> None:
        secret, _ = await tokens.add("a", {}, None)
        auth = AppAuth(tokens, "required", {})
        statuses, audited = [], []
        for _ in range(FAILURE_BURST + 3):
            with pytest.raises(AuthFailure) as caught:
                auth.authenticate(b"Bearer wrong", None, "10.0.0.1")
            statuses.append(caught.value.status)
            audited.append(caught.value.audit)
        assert statuses == [401] * FAILURE_BURST + [429] * 3
        assert audited == [True] * (FAILURE_BURST + 1) + [False] * 2  # one entry says it began
        assert auth.authenticate(f"Bearer {secret}".encode(), None, "10.0.0.1").name == "a"
        with pytest.raises(AuthFailure) as caught:  # another source is unaffected
            auth.authenticate(b"Bearer wrong", None, "10.0.0.2")
        assert caught.value.status == 401
        clock.now += 5  # five more failures earned back
        for _ in range(5):
            with pytest.raises(AuthFailure) as caught:
                auth.authenticate(b"Bearer wrong", None, "10.0.0.1")
            assert caught.value.status == 401

    run(tmp_path, go, clock)


def test_throttle_memory_is_bounded() -> None:
    throttle = FailureThrottle(burst=1, refill_s=1.0, max_sources=10)
    for i in range(100):
        assert throttle.fail(f"s{i}", 0.0)[0]
    assert len(throttle._buckets) == 10


def test_cli_input_checks() -> None:
    assert parse_attrs(("purpose=diagnosis", "team=")) == {"purpose": "diagnosis", "team": ""}
    for bad in (("purpose",), ("1x=y",), ("a=1", "a=2"), tuple(f"k{i}=v" for i in range(17))):
        with pytest.raises(TokenError):
            parse_attrs(bad)
    assert parse_expires("90d") == 90 * 86400 and parse_expires(None) is None
    for bad in ("90", "1y", "0s", "99999d"):
        with pytest.raises(TokenError):
            parse_expires(bad)


def test_forward_labels_are_validated() -> None:
    good = parse_label(b'{"name":"cam","attrs":{"purpose":"x"},"token":"0123456789ab"}')
    assert good.name == "cam" and good.token_id == "0123456789ab"
    assert parse_label(b'{"name":"anonymous","attrs":{},"token":null}') is ANONYMOUS_APP
    assert parse_label(good.label().encode()) == good
    for bad in (b"[]", b"{", b'{"name":"Bad Name"}', b'{"name":"a","attrs":{"a":1}}',
                b'{"name":"a","token":"zz"}', b'{"name":"a","attrs":[]}',
                b'{"name":"anonymous","attrs":{"purpose":"diagnosis"}}'):
        with pytest.raises(ValueError):
            parse_label(bad)
