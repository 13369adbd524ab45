"""The daemon's one task owner. Invariants: a failing task is logged and hurts no sibling;
close() always returns — one-shot work may finish, loops are cancelled, and a task that
ignores cancellation is left behind rather than waited for forever."""

from __future__ import annotations

import asyncio
import contextlib

from node.tasks import TaskOwner


async def test_failures_stay_alone_and_close_drains_one_shot_work() -> None:
    owner = TaskOwner()
    done: list[str] = []
    steps: list[int] = []

    async def fail() -> None:
        raise RuntimeError("boom")

    async def work() -> None:
        await asyncio.sleep(0)
        done.append("work")

    async def step() -> None:
        steps.append(1)
        if len(steps) == 1:
            raise RuntimeError("one bad round")

    owner.spawn(fail(), name="fails")
    owner.every(0, step, name="loop")
    owner.spawn(work(), name="work")
    while len(steps) < 3:  # the loop survived its failed round
        await asyncio.sleep(0)
    await owner.close()
    assert done == ["work"] and owner.running == 0
    owner.spawn(work(), name="late")  # refused while closing: never runs
    await asyncio.sleep(0)
    assert done == ["work"]


async def test_close_is_bounded_when_a_task_ignores_cancellation() -> None:
    owner = TaskOwner()
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    owner.spawn(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    await owner.close(drain_s=0.01, cancel_s=0.01)  # returns although the task lives on
    assert owner.running == 1
    release.set()
    while owner.running:
        await asyncio.sleep(0)
