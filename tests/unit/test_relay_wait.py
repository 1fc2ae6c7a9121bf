"""The relay's idle wait: woken by a notification, ended by a timeout, and always stoppable."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from complaints_shared.outbox import woken


async def waiting_forever(event: asyncio.Event) -> None:
    """As the relay leads: clear, (drain,) wait to be woken, again."""
    while True:
        event.clear()
        await woken(event, 3600)


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
async def test_a_task_cancelled_as_its_wake_up_arrives_stops(turns: int):
    """A cancellation that arrives with the wake-up (``turns`` loop turns after it) ends the
    task; ``asyncio.wait_for`` on Python 3.11 swallowed it in the first three cases, and the
    relay went on waiting for an hour, holding its service's shutdown."""
    event = asyncio.Event()
    task = asyncio.create_task(waiting_forever(event))
    for _ in range(3):
        await asyncio.sleep(0)  # it waits now
    event.set()
    for _ in range(turns):
        await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=1)
    if not done:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert done and task.cancelled()


async def test_the_wait_ends_when_woken_or_after_its_time():
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await woken(event, 0.05)
    assert loop.time() - started >= 0.05
    asyncio.get_running_loop().call_later(0.01, event.set)
    started = loop.time()
    await woken(event, 3600)
    assert loop.time() - started < 1
