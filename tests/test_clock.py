"""The wake-up the scheduler and dispatcher sleep on: a shutdown's cancel is never lost in it."""

from __future__ import annotations

import asyncio

import pytest

from warnd.clock import Wakeup


async def test_a_cancel_that_comes_with_a_wake_still_cancels() -> None:
    """New work and the shutdown arriving together: a waiter not yet finished ends cancelled.

    On Python 3.11 `asyncio.wait_for` returned normally when the cancel came one loop turn after
    the wake, and the scheduler ran on through the shutdown until systemd killed it. Every
    turn up to three is tried; a wait that had already returned before the cancel is fine.
    """
    for turns in range(4):
        wake = Wakeup()
        task = asyncio.create_task(wake.wait(wake.waiter(), 10))
        await asyncio.sleep(0)  # the task now waits on the event
        wake.set()
        for _ in range(turns):
            await asyncio.sleep(0)
        if task.done():
            continue  # woken and returned before the cancel: nothing to lose
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_wake_before_the_wait_is_not_lost_and_the_timeout_returns() -> None:
    """A waiter registered before the work was committed returns at once; with no work, at the timeout."""
    wake = Wakeup()
    event = wake.waiter()
    wake.set()
    async with asyncio.timeout(1):
        await wake.wait(event, 10)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await wake.wait(wake.waiter(), 0.05)
    assert loop.time() - started >= 0.04
    assert not wake._waiters  # every waiter unregistered
