"""Shedding load by measured headroom: the loop-lag window (pure), the timer on a real loop, and
admission on both hops — a saturated process refuses a new generation at once with
``too_many_requests`` and ``retryAfterMs`` while the ones it runs go on."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from conftest import UNIT, GrpcClient, StackFactory

from aistream.headroom import TICKS_PER_WINDOW, Headroom, LagWindow
from aistream.settings import Settings
from aistream.testing.fake_upstream import Script
from aistream.v1 import events_pb2 as pb

# --- the window ----------------------------------------------------------------------------------


def test_sustained_lag_is_the_smallest_over_a_covered_window() -> None:
    window = LagWindow(1.0)
    for i in range(10):  # ticks every 0.1 s, late by 0.06 … 0.15
        window.add(0.1 * (i + 1), 0.06 + 0.01 * i)
    assert window.sustained(1.0) == pytest.approx(0.06)


def test_a_spike_is_not_saturation() -> None:
    """One late tick (a collector pause) among punctual ones leaves the window's floor at 0."""
    window = LagWindow(1.0)
    for i in range(10):
        window.add(0.1 * (i + 1), 0.5 if i == 4 else 0.0)
    assert window.sustained(1.0) == 0.0


def test_a_window_not_yet_covered_says_nothing() -> None:
    window = LagWindow(1.0)
    window.add(5.0, 0.2)
    window.add(5.1, 0.2)
    assert window.sustained(5.1) == 0.0


def test_old_ticks_leave_the_window() -> None:
    window = LagWindow(1.0)
    for i in range(10):
        window.add(0.1 * (i + 1), 0.0)
    for i in range(12):  # the loop becomes saturated: each tick late by 0.15
        window.add(1.0 + 0.25 * (i + 1), 0.15)
    assert window.sustained(4.0) == pytest.approx(0.15)


def test_a_loop_blocked_for_the_whole_window_is_as_late_as_its_pending_tick() -> None:
    window = LagWindow(1.0)
    window.add(0.1, 0.0)
    assert window.sustained(2.5, overdue=2.3) == pytest.approx(2.3)


# --- the timer on a real loop --------------------------------------------------------------------


async def hog(block: float) -> None:
    """Keep this loop busy: ``block`` seconds of CPU between yields, until cancelled."""
    while True:
        time.sleep(block)  # noqa: ASYNC251 - blocking the loop is the point
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def hogging(block: float) -> AsyncIterator[None]:
    task = asyncio.create_task(hog(block))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate: Callable[[], bool], timeout: float = 5 * UNIT) -> None:
    """Poll ``predicate`` (a property of the loop's state: no event to wait for)."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_headroom_sees_a_saturated_loop_and_its_recovery() -> None:
    headroom = Headroom(threshold=0.03, window=0.3)
    headroom.start()
    try:
        await asyncio.sleep(0.4)
        assert not headroom.saturated and headroom.lag < 0.03
        async with hogging(0.06):
            await until(lambda: headroom.saturated)
            assert headroom.lag > 0.03
        await until(lambda: not headroom.saturated)
    finally:
        headroom.stop()
    assert not headroom.saturated  # stopped: never


async def test_no_threshold_never_sheds() -> None:
    headroom = Headroom(threshold=0.0, window=0.3)
    headroom.start()
    async with hogging(0.06):
        await asyncio.sleep(0.5)
        assert not headroom.saturated
    headroom.stop()


def test_settings_make_the_headroom() -> None:
    headroom = Headroom.of(
        Settings(shed_loop_lag_ms=40, shed_window_ms=500, shed_retry_after_ms=750)
    )
    assert (headroom.threshold, headroom.retry_after_ms) == (0.04, 750)
    assert TICKS_PER_WINDOW >= 5


# --- admission on both hops ----------------------------------------------------------------------

SHED = {"shed_loop_lag_ms": 30.0, "shed_window_ms": 300.0, "shed_retry_after_ms": 750}


async def test_a_saturated_bridge_sheds_new_generations_and_keeps_the_running_one(
    make_stack: StackFactory,
) -> None:
    """While the loop is saturated a new ai:generate gets too_many_requests (retryable, with
    retryAfterMs) at once; the generation already running finishes; once the loop has room
    again, generations are accepted."""
    stack = await make_stack(Script(tokens=40, interval=0.02), **SHED)
    client = await stack.client()
    await client.generate("running")
    await client.until(lambda f: f["type"] == "ai:token")
    headroom = stack.bridge.headroom
    async with hogging(0.06):
        await until(lambda: headroom.saturated)
        await client.generate("shed")
        refusal = await client.finish("shed", 10 * UNIT)
    assert (refusal["type"], refusal["code"], refusal["retryable"]) == (
        "ai:error",
        "too_many_requests",
        True,
    )
    assert refusal["retryAfterMs"] == 750
    assert (await client.finish("running", 10 * UNIT))["type"] == "ai:done"
    await until(lambda: not headroom.saturated)
    await client.generate("later")
    assert (await client.finish("later", 10 * UNIT))["type"] == "ai:done"
    # only the shed generate never reached the upstream
    assert len(stack.fake.records) == 2


async def test_a_saturated_generator_sheds_new_generations_on_the_grpc_hop(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(Script(tokens=40, interval=0.02), **SHED)
    headroom = stack.generator.service.headroom
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.generator.port}") as channel:
        client = GrpcClient(channel, "grpc")
        await client.generate("running")
        first = await client.recv()
        assert first.WhichOneof("event") == "start"
        async with hogging(0.06):
            await until(lambda: headroom.saturated)
            await client.generate("shed")
            refusal = (await client.finish("shed", 10 * UNIT)).error
        assert refusal.code == pb.ERROR_CODE_TOO_MANY_REQUESTS and refusal.retryable
        assert refusal.HasField("retry_after_ms") and refusal.retry_after_ms == 750
        end = await client.finish("running", 10 * UNIT)
        assert end.WhichOneof("event") == "done"
