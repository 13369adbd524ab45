"""``node.testing``, the helpers every test leans on: waiting, ports, the example policy, the
loop-blocking guard — each shown to fail when it should, not only to pass."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from federation.policy import DataAttrs, NodeAttrs, PolicyEngine, read_bundle, sign_bundle
from node.testing import (
    EXAMPLE_POLICY,
    LoopBlockGuard,
    eventually,
    eventually_async,
    free_port,
    no_loop_blocking,
)

# -- waiting ---------------------------------------------------------------------------------


def test_eventually_returns_the_first_truthy_value() -> None:
    calls = iter([0, None, [], {"ready": True}])
    assert eventually(lambda: next(calls), timeout=5, interval=0) == {"ready": True}


def test_eventually_names_what_it_waited_for_and_the_last_value() -> None:
    with pytest.raises(AssertionError, match=r"waiting for the moon: last=\[\]\nlogs here"):
        eventually(list, timeout=0.05, what="the moon", interval=0.01, diagnose=lambda: "logs here")


def test_eventually_retries_only_the_exceptions_it_is_told() -> None:
    attempts: list[int] = []

    def flaky() -> int:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("not yet")
        return len(attempts)

    assert eventually(flaky, timeout=5, interval=0, retry_on=(ConnectionError,)) == 3
    with pytest.raises(ZeroDivisionError):
        eventually(lambda: 1 / 0, timeout=5, retry_on=(ConnectionError,))
    with pytest.raises(AssertionError, match="ConnectionError"):
        eventually(
            lambda: flaky() and (_ for _ in ()).throw(ConnectionError("down")),
            timeout=0.05,
            interval=0.01,
            retry_on=(ConnectionError,),
        )


async def test_eventually_async_awaits_async_checks_and_lets_the_loop_run() -> None:
    done = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, done.set)

    async def is_done() -> bool:
        return done.is_set()

    assert await eventually_async(is_done, timeout=5, interval=0.01) is True
    assert await eventually_async(done.is_set, timeout=5) is True
    with pytest.raises(AssertionError, match="never"):
        await eventually_async(lambda: False, timeout=0.05, what="never", interval=0.01)


def test_free_port_is_free_for_tcp_and_udp() -> None:
    port = free_port()
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", port))
        udp.bind(("127.0.0.1", port))


# -- the example policy ----------------------------------------------------------------------


def test_the_example_policy_decides_as_design_says() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    engine = PolicyEngine(
        read_bundle(
            sign_bundle(key, EXAMPLE_POLICY, 1, "2025-01-31T12:00:00Z", "acme"), key.public_key()
        )
    )
    edge = NodeAttrs("edge", "edge", "berlin", "DE")
    onprem_de = NodeAttrs("onprem", "onprem", "munich", "DE")
    onprem_fr = NodeAttrs("paris", "onprem", "paris", "FR")
    cloud_de = NodeAttrs("cloud", "cloud", "frankfurt", "DE")

    def forward(data_class: str, target: NodeAttrs) -> tuple[str, ...] | None:
        d = engine.decide_forward(edge, DataAttrs("r", data_class, "DE", "digits:1"), target, 0)
        return d.policy_ids if d.allowed else None

    assert forward("personal", onprem_de) == ("personal-stays-home",)
    assert forward("personal", cloud_de) is None  # off the cloud
    assert forward("personal", onprem_fr) is None  # and in its jurisdiction
    assert forward("public", cloud_de) == ("public-anywhere",)
    assert forward("restricted", onprem_de) is None  # anything else stays
    infer = engine.decide_infer("app", DataAttrs("r", "personal", "DE", "digits:1"), edge, 0)
    assert infer.policy_ids == ("infer-anywhere",)


# -- the loop-blocking guard -----------------------------------------------------------------


@pytest.mark.blocks_loop("blocks on purpose, to show the guard notices")
async def test_the_guard_catches_a_blocking_sleep_and_names_where(
    loop_block_guard: LoopBlockGuard,
) -> None:
    time.sleep(loop_block_guard.threshold * 1.5)  # the deliberate mistake
    await asyncio.sleep(0.2)  # the watchdog sees the loop turn again and measures the stall
    [stall] = loop_block_guard.stalls
    assert stall.seconds >= loop_block_guard.threshold
    assert "test_the_guard_catches_a_blocking_sleep_and_names_where" in stall.stack
    assert "time.sleep(loop_block_guard.threshold * 1.5)" in stall.stack
    assert "event loop blocked for" in loop_block_guard.report()
    loop_block_guard.stalls.clear()


async def test_an_idle_loop_is_not_a_blocked_loop() -> None:
    """Waiting (in the selector) for longer than the threshold is no stall."""
    with no_loop_blocking(threshold=0.25) as guard:
        await asyncio.sleep(0.8)
        await asyncio.to_thread(time.sleep, 0.6)  # blocking, but off the loop
    assert guard.stalls == []


@pytest.mark.blocks_loop("blocks on purpose, to show no_loop_blocking raises")
async def test_no_loop_blocking_raises_with_the_stack() -> None:
    blocked = r"(?s)blocked for .*time\.sleep\(0\.5\)"
    with pytest.raises(AssertionError, match=blocked), no_loop_blocking(threshold=0.15):
        time.sleep(0.5)
        await asyncio.sleep(0.1)


def test_an_async_test_that_blocks_its_loop_fails(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The autouse guard, end to end: an unmarked async test that sleeps on its loop fails,
    naming the line (the marked case is the test above)."""
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makeconftest(
        "from tests.conftest import loop_block_guard, pytest_collection_modifyitems, "
        "pytest_configure  # noqa: F401\n"
    )
    monkeypatch.setenv("OUTPOST_LOOP_BLOCK_S", "0.5")  # as set, not scaled by the load
    pytester.makepyfile(
        test_blocking="""
import asyncio, time

async def test_sleeps_on_the_loop():
    time.sleep(1.0)
    await asyncio.sleep(0.2)
"""
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_sleeps_on_the_loop*",
            "*event loop blocked for * s (> 0.5 s) at:*",
            "*time.sleep(1.0)*",
        ]
    )


def test_the_helpers_module_is_not_imported_by_the_daemon_or_cli() -> None:
    """node.testing serves tests, bench and the demo; the product never depends on it."""
    root = Path(__file__).resolve().parents[2]
    for package in ("node", "cli", "federation", "models"):
        for path in (root / package).rglob("*.py"):
            if path.name == "testing.py" or path.name == "demo.py":
                continue
            assert "node.testing" not in path.read_text(), path
