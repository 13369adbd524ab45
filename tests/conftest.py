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

#: How long an async test's event loop may stand still before the test fails, on an idle
#: machine. Blocking calls the guard exists to catch (starting a daemon, a subprocess.run, a
#: sync HTTP call, a model load or a file copy on the loop) take from a fraction of a second
#: to seconds; legitimate work between two awaits takes milliseconds. Measured on this 2-core
#: machine shared by ~8 test runs: at load average 11 the longest stall of any async test
#: outside the selector was 0.25 s (time parked in the selector is not counted at all, see
#: LoopBlockGuard); the real blocks found took 1-3 s (start_daemon 3.2 s, ray.shutdown 1.5 s,
#: shutil.copytree 1.0 s under load, each on the loop). 1 s flaked once in a fixture
#: teardown (1.05 s) on a busy run, so 2 s, scaled by the run queue.
LOOP_BLOCK_BASE_S = 2.0
#: Code on a starved CPU takes longer in proportion to the run queue per core (load average
#: / cores; here it reached 15: a directory copy on the loop took 1.03 s at load average
#: ~25). The threshold scales by that factor, capped, so the same blocking code trips it at
#: any load, and a loaded machine does not fail innocent tests.
LOOP_BLOCK_MAX_SCALE = 5.0


def loop_block_threshold() -> float:
    """The threshold for a test starting now: OUTPOST_LOOP_BLOCK_S if set (as is), else
    LOOP_BLOCK_BASE_S scaled by the load per core (1 to LOOP_BLOCK_MAX_SCALE)."""
    if "OUTPOST_LOOP_BLOCK_S" in os.environ:
        return float(os.environ["OUTPOST_LOOP_BLOCK_S"])
    per_core = os.getloadavg()[0] / len(os.sched_getaffinity(0))
    return LOOP_BLOCK_BASE_S * min(max(per_core, 1.0), LOOP_BLOCK_MAX_SCALE)


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
    """Fails the test if its event loop stood still longer than ``loop_block_threshold()``
    (added to every async test; ``@pytest.mark.blocks_loop(reason)`` turns it off)."""
    with LoopBlockGuard(asyncio.get_running_loop(), loop_block_threshold()) as guard:
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
