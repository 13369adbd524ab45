"""Shared fixtures: real daemons as subprocesses on loopback, each in its own data directory,
the CLI in-process, and a guard failing async tests that block their event loop.

The helpers themselves live in ``node.testing`` (bench/ and the demo use them too); the
names below are re-exported for the tests that import them from here.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from node.testing import (  # noqa: F401  (re-exported)
    OUTPOST,
    ROOT,
    DaemonProc,
    Federation,
    LoopBlockGuard,
    init_node,
    outpost,
    start_daemon,
    write_config,
)

pytest_plugins = ["pytester"]  # tests/node/test_testing.py runs the guard on a test of its own

#: How long an async test's event loop may stand still before the test fails. Blocking
#: calls the guard exists to catch (starting a daemon, a subprocess.run, a sync HTTP call, a
#: model load on the loop) take from a fraction of a second to seconds. Legitimate work
#: between two awaits is milliseconds, but on this 2-core machine shared by ~8 test runs
#: (load average 11) the longest stall of any async test outside the selector measured
#: 0.25 s with a 0.1 s threshold (time in the selector is not counted at all, see
#: LoopBlockGuard). 1 s keeps four times that margin and still caught the two real blocks
#: found (start_daemon and ray.shutdown on the loop, 1.5-3 s). OUTPOST_LOOP_BLOCK_S
#: overrides it.
LOOP_BLOCK_THRESHOLD_S = float(os.environ.get("OUTPOST_LOOP_BLOCK_S", "1.0"))


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    data_dir = tmp_path / "node"
    init_node(data_dir)
    return data_dir


@pytest.fixture
def daemon(node_dir: Path) -> Iterator[DaemonProc]:
    proc = start_daemon(node_dir)
    yield proc
    proc.stop()


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[Federation]:
    """An empty federation (authority in tmp_path/ca); add nodes, start them; all stopped after."""
    federation = Federation(tmp_path)
    yield federation
    federation.stop_all()


@pytest.fixture(scope="session")
def sample_digits() -> dict[str, object]:
    return json.loads((ROOT / "models" / "sample" / "digits.json").read_text())


@pytest.fixture(scope="session")
def ray_session() -> Iterator[object]:
    """One local Ray for the whole session (2 CPUs), started on first use, through the same
    connection owner the backends use (so they adopt it); shut down at the end. Tests that
    stop Ray must see it back up before they finish (``ray_up`` restarts it otherwise)."""
    from models import _ray_driver

    ray = _ray_driver.import_ray()
    _ray_connect()
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_up(ray_session: object) -> object:
    """``ray_session``, connected again if an earlier test stopped it."""
    _ray_connect()
    return ray_session


def _ray_connect() -> None:
    from models import _ray_driver

    _ray_driver.driver().connect(
        "local", _ray_driver.init_kwargs("local", RAY_CPUS, "outpost-tests", ship_code=False),
        timeout=120,
    )


RAY_CPUS = 2


# -- the event loop guard ----------------------------------------------------------------------


@pytest.fixture
async def loop_block_guard(request: pytest.FixtureRequest) -> AsyncIterator[LoopBlockGuard]:
    """Fails the test if its event loop stood still longer than LOOP_BLOCK_THRESHOLD_S
    (added to every async test; ``@pytest.mark.blocks_loop(reason)`` turns it off)."""
    with LoopBlockGuard(asyncio.get_running_loop(), LOOP_BLOCK_THRESHOLD_S) as guard:
        yield guard
    if guard.stalls and request.node.get_closest_marker("blocks_loop") is None:
        pytest.fail(guard.report(), pytrace=False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        function = getattr(item, "function", None)
        fixturenames = getattr(item, "fixturenames", None)
        if (inspect.iscoroutinefunction(function) and fixturenames is not None
                and "loop_block_guard" not in fixturenames):
            fixturenames.append("loop_block_guard")


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    config.addinivalue_line(
        "markers", "blocks_loop(reason): this async test blocks its event loop on purpose; "
        "the loop-blocking guard lets it pass")
