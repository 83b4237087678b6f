"""Deadlines kept by one timer behave as asyncio.timeout does: a block past its deadline is
TimeoutError, someone else's cancellation stays a cancellation, and blocks nest."""

import asyncio
import time

import pytest

from service.deadlines import Deadlines

RESOLUTION = 0.02


async def test_a_block_past_its_deadline_is_timeout_error_and_one_in_time_is_not() -> None:
    deadlines = Deadlines(RESOLUTION)
    started = time.monotonic()
    with pytest.raises(TimeoutError), deadlines.after(0.1) as late:
        await asyncio.sleep(10)
    elapsed = time.monotonic() - started
    assert late.expired
    assert 0.1 <= elapsed < 1
    with deadlines.after(1) as early:
        await asyncio.sleep(0.01)
    assert not early.expired
    assert not deadlines._pending


async def test_many_tasks_each_at_its_own_deadline() -> None:
    deadlines = Deadlines(RESOLUTION)

    async def sleep_under(seconds: float) -> str:
        try:
            with deadlines.after(seconds):
                await asyncio.sleep(0.3)
        except TimeoutError:
            return "timed out"
        return "finished"

    outcomes = await asyncio.gather(*(sleep_under(s) for s in (0.05, 0.1, 2, 3)))
    assert outcomes == ["timed out", "timed out", "finished", "finished"]
    assert not deadlines._pending


async def test_a_cancellation_of_someone_else_stays_a_cancellation() -> None:
    deadlines = Deadlines(RESOLUTION)
    entered = asyncio.Event()

    async def wait() -> None:
        with deadlines.after(0.05):
            entered.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(wait())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_deadlines_nest() -> None:
    deadlines = Deadlines(RESOLUTION)
    with deadlines.after(1) as outer:
        with pytest.raises(TimeoutError), deadlines.after(0.05) as inner:
            await asyncio.sleep(10)
        assert inner.expired
        await asyncio.sleep(0.01)  # the outer block goes on, its task not cancelled
    assert not outer.expired
    with pytest.raises(TimeoutError), deadlines.after(0.05) as outer, deadlines.after(5) as inner:
        await asyncio.sleep(10)
    assert outer.expired
    assert not inner.expired
