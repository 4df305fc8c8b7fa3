"""aistream.generator.limits: one lazily re-armed timer enforcing first-token, stall and total
limits."""

from __future__ import annotations

import asyncio

import pytest
from conftest import UNIT

from aistream.generator.limits import TimeLimits


async def _watched(limits: TimeLimits, body: asyncio.Future[None]) -> str:
    task = asyncio.current_task()
    assert task is not None
    limits.start(task)
    try:
        await body
    except asyncio.CancelledError:
        if limits.claimed(task):
            return limits.reason(asyncio.get_running_loop().time())
        raise
    finally:
        limits.stop()
    return "finished"


async def test_first_token_limit() -> None:
    """With no token, the first-token limit passes."""
    now = asyncio.get_running_loop().time()
    limits = TimeLimits(now, 0.05 * UNIT, 10, now + 10)
    reason = await _watched(limits, asyncio.get_running_loop().create_future())
    assert reason.startswith("no first token")


async def test_stall_counts_from_the_last_token_not_the_first_token_limit() -> None:
    """After a token the stall limit applies, even when it comes before the first-token one."""
    loop = asyncio.get_running_loop()
    now = loop.time()
    limits = TimeLimits(now, 10, 0.05 * UNIT, now + 10)
    limits.token(now)
    started = loop.time()
    reason = await _watched(limits, loop.create_future())
    assert "stalled" in reason
    assert loop.time() - started < 5  # not the 10 s first-token limit


async def test_a_pause_longer_than_the_stall_limit_is_a_slow_consumer() -> None:
    """Waiting downstream longer than the stall limit fires as a slow consumer."""
    loop = asyncio.get_running_loop()
    now = loop.time()
    limits = TimeLimits(now, 10, 0.05 * UNIT, now + 10)
    limits.token(now)
    limits.pause(loop.time())
    await _watched(limits, loop.create_future())
    assert limits.slow_consumer


async def test_a_short_pause_is_not_a_stall() -> None:
    """A wait downstream shorter than the stall limit, then tokens again: no limit passes."""
    loop = asyncio.get_running_loop()
    now = loop.time()
    limits = TimeLimits(now, 10, 0.1 * UNIT, now + 10)
    limits.token(now)

    async def body() -> None:
        limits.pause(loop.time())
        await asyncio.sleep(0.05 * UNIT)
        limits.resume(loop.time())
        for _ in range(3):
            await asyncio.sleep(0.03 * UNIT)
            limits.token(loop.time())

    assert await _watched(limits, asyncio.ensure_future(body())) == "finished"
    assert not limits.slow_consumer


async def test_tokens_keep_it_alive() -> None:
    """Regular tokens within the stall limit never trip it."""
    loop = asyncio.get_running_loop()
    now = loop.time()
    limits = TimeLimits(now, 10, 0.1 * UNIT, now + 10)

    async def steady() -> None:
        for _ in range(10):
            await asyncio.sleep(0.02 * UNIT)
            limits.token(loop.time())

    assert await _watched(limits, asyncio.ensure_future(steady())) == "finished"


async def test_outside_cancel_is_not_claimed() -> None:
    """A cancellation from outside propagates even if a limit also passed."""
    loop = asyncio.get_running_loop()
    now = loop.time()
    limits = TimeLimits(now, 0.01, 10, now + 10)
    task = asyncio.create_task(_watched(limits, loop.create_future()))
    await asyncio.sleep(0)
    task.cancel()  # someone else cancels first
    await asyncio.sleep(0.05)
    with pytest.raises(asyncio.CancelledError):
        await task
