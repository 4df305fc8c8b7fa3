"""Shedding load by measured headroom: the loop-lag window (pure), the timer on a real loop, and
admission on both hops — a saturated process refuses a new generation at once with
``too_many_requests`` and ``retryAfterMs`` while the ones it runs go on."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from conftest import UNIT, GrpcClient, StackFactory

from aistream.headroom import TICKS_PER_WINDOW, Headroom, LagWindow, Limit
from aistream.settings import Settings
from aistream.testing.fake_upstream import Script
from aistream.v1 import events_pb2 as pb

# --- the window ----------------------------------------------------------------------------------


def test_sustained_lag_is_the_ninth_of_ten_over_a_covered_window() -> None:
    window = LagWindow(1.0)
    for i in range(10):  # ticks every 0.1 s, late by 0.06 … 0.15
        window.add(0.1 * (i + 1), 0.06 + 0.01 * i)
    assert window.sustained(1.0) == pytest.approx(0.14)


def test_a_spike_is_not_saturation_but_late_turns_that_keep_coming_are() -> None:
    """One late tick (a collector pause) among punctual ones leaves the measure at 0; two of ten
    are a loop that is late again and again."""
    window = LagWindow(1.0)
    for i in range(10):
        window.add(0.1 * (i + 1), 0.5 if i == 4 else 0.0)
    assert window.sustained(1.0) == 0.0
    window.add(1.05, 0.3)
    assert window.sustained(1.05) == pytest.approx(0.3)


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


# --- the limit -----------------------------------------------------------------------------------

LATE, CALM = 0.02, 0.001  # lags over and well under the threshold below
WINDOW = 1.0


def test_no_limit_until_the_loop_is_late() -> None:
    limit = Limit(threshold=0.01, window=WINDOW)
    for i in range(50):
        limit.update(0.1 * i, CALM, running=500)
    assert limit.value == math.inf and limit.admits(10_000)


def test_the_first_overload_sets_the_limit_at_what_runs_then_cuts_come_once_per_window() -> None:
    limit = Limit(threshold=0.01, window=WINDOW)
    limit.update(1.0, LATE, running=500)
    assert limit.value == 500
    assert not limit.admits(500) and limit.admits(499)
    limit.update(1.5, LATE, running=500)  # within the window: the first has not had time to show
    assert limit.value == 500
    limit.update(2.0, LATE, running=500)
    assert limit.value == pytest.approx(500 * Limit.BACKOFF)
    limit.update(2.5, LATE, running=400)
    assert limit.value == pytest.approx(400)
    limit.update(3.0, LATE, running=400)
    assert limit.value == pytest.approx(400 * Limit.BACKOFF)


def test_no_cut_for_a_lag_so_few_generations_cannot_have_caused_and_never_below_the_floor() -> None:
    limit = Limit(threshold=0.01, window=WINDOW)
    limit.update(1.0, LATE, running=Limit.FLOOR - 1)  # (accepting connections, a pause)
    assert limit.value == math.inf
    limit.update(2.0, LATE, running=Limit.FLOOR)
    limit.update(3.0, LATE, running=Limit.FLOOR)
    assert limit.value == Limit.FLOOR


def test_a_calm_loop_raises_a_binding_limit_quickly_back_to_its_last_cut_then_slowly() -> None:
    limit = Limit(threshold=0.01, window=WINDOW)
    limit.update(1.0, LATE, running=100)  # the limit: 100
    limit.update(2.0, LATE, running=100)  # cut from 100 to 80
    assert limit.value == pytest.approx(80)
    limit.update(2.1, CALM, running=80)  # binding, under the last cut: recovers quickly
    assert limit.value == pytest.approx(80 * (1 + Limit.RECOVERY))
    limit.update(2.2, 0.008, running=84)  # under the threshold, not calm: holds
    assert limit.value == pytest.approx(84)
    limit.update(2.3, CALM, running=10)  # calm, but nobody reaches the limit: holds
    assert limit.value == pytest.approx(84)
    for i in range(10):
        limit.update(3.0 + 0.1 * i, CALM, running=int(limit.value))
    assert 100 < limit.value < 100 * (1 + Limit.RECOVERY) ** 2
    past = limit.value
    limit.update(4.0, CALM, running=int(limit.value))  # past the last cut: carefully
    assert limit.value == pytest.approx(past + max(1.0, past * Limit.GROWTH))


def test_the_first_overload_recovers_quickly_it_may_be_a_passing_burst() -> None:
    limit = Limit(threshold=0.01, window=WINDOW)
    limit.update(1.0, LATE, running=50)  # a ramp of new connections, say
    for i in range(20):
        limit.update(1.1 + 0.1 * i, CALM, running=int(limit.value))
    assert limit.value > 50 * (1 + Limit.RECOVERY) ** 19


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
    """A loop kept late cuts the limit below the generations running: saturated; once it is
    calm, the limit grows back past them."""
    headroom = Headroom(threshold=0.03, window=0.3)
    running = 20
    headroom.start(lambda: running)
    try:
        await asyncio.sleep(0.4)
        assert not headroom.saturated and headroom.lag < 0.03 and headroom.limit == math.inf
        async with hogging(0.06):
            await until(lambda: headroom.saturated)
            assert headroom.lag > 0.03 and headroom.limit <= running
        await until(lambda: not headroom.saturated)
        assert running < headroom.limit < math.inf
    finally:
        headroom.stop()
    assert not headroom.saturated  # stopped: never


async def test_no_threshold_never_sheds() -> None:
    headroom = Headroom(threshold=0.0, window=0.3)
    headroom.start(lambda: 100)
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


async def test_a_saturated_bridge_sheds_new_generations_and_keeps_the_running_ones(
    make_stack: StackFactory,
) -> None:
    """While the loop is kept late, the limit drops to what runs and a new ai:generate gets
    too_many_requests (retryable, with retryAfterMs) at once; the generations already running
    finish; once the loop has room again, generations are accepted."""
    stack = await make_stack(Script(tokens=100, interval=0.02), **SHED)
    client = await stack.client()
    running = [f"running-{i}" for i in range(Limit.FLOOR)]
    for rid in running:
        await client.generate(rid)
    for rid in running:
        await client.until(lambda f, rid=rid: f["type"] == "ai:token" and f["requestId"] == rid)
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
    ends = await client.finish_all(set(running), 20 * UNIT)
    assert all(frames[-1]["type"] == "ai:done" for frames in ends.values())
    await until(lambda: not headroom.saturated)
    await client.generate("later")
    assert (await client.finish("later", 10 * UNIT))["type"] == "ai:done"
    # only the shed generate never reached the upstream
    assert len(stack.fake.records) == Limit.FLOOR + 1


async def test_a_saturated_generator_sheds_new_generations_on_the_grpc_hop(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(Script(tokens=100, interval=0.02), **SHED)
    headroom = stack.generator.service.headroom
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.generator.port}") as channel:
        client = GrpcClient(channel, "grpc")
        running = [f"running-{i}" for i in range(Limit.FLOOR)]
        for rid in running:
            await client.generate(rid)
        started: set[str] = set()
        while started != set(running):
            event = await client.recv()
            assert event.WhichOneof("event") in ("start", "token")
            if event.WhichOneof("event") == "start":
                started.add(event.start.request_id)
        async with hogging(0.06):
            await until(lambda: headroom.saturated)
            await client.generate("shed")
            refusal = (await client.finish("shed", 10 * UNIT)).error
        assert refusal.code == pb.ERROR_CODE_TOO_MANY_REQUESTS and refusal.retryable
        assert refusal.HasField("retry_after_ms") and refusal.retry_after_ms == 750
        ends: dict[str, str | None] = {}
        async with asyncio.timeout(20 * UNIT):
            while len(ends) < len(running):  # (in whatever order they end)
                event = await client.recv()
                kind = event.WhichOneof("event")
                if kind in ("done", "error"):
                    ends[getattr(event, kind).request_id] = kind
        assert ends == dict.fromkeys(running, "done")


async def test_the_bridge_refuses_what_the_generator_said_it_has_no_room_for(
    make_stack: StackFactory,
) -> None:
    """The generator reports its room on every batch; while it has none, the bridge refuses a
    new generation itself (a shed refusal, with the hint) instead of forwarding it — and
    forwards again once a generation has ended."""
    stack = await make_stack(
        Script(tokens=60, interval=0.02), max_generations=2, shed_retry_after_ms=750
    )
    client = await stack.client()
    for rid in ("a", "b"):
        await client.generate(rid)
        await client.until(lambda f, rid=rid: f["type"] == "ai:token" and f["requestId"] == rid)
    await client.until(lambda f: f["type"] == "ai:token")  # a batch since both started
    await client.generate("shed")
    refusal = await client.finish("shed", 10 * UNIT)
    assert (refusal["code"], refusal["retryAfterMs"]) == ("too_many_requests", 750)
    # the bridge's words, not the generator's ("at its generation limit"): never forwarded
    assert refusal["message"] == "the server is at capacity; try again shortly"
    assert (await client.finish("a", 10 * UNIT))["type"] == "ai:done"
    await client.generate("after")
    assert (await client.finish("after", 10 * UNIT))["type"] == "ai:done"


async def test_the_room_a_batch_tells_counts_the_generations_it_ends(
    make_stack: StackFactory,
) -> None:
    """The batch that ends a generation tells the room it leaves, once: the bridge forwards one
    new generation for it and refuses the next itself — the generator never refuses one (a
    refusal a round trip late)."""
    stack = await make_stack(
        Script(tokens=60, interval=0.02), max_generations=2, shed_retry_after_ms=750
    )
    client = await stack.client()
    await client.generate("a")
    # b starts half-way through a: the two end ~0.6 s apart, and so do the next ones
    await client.until(lambda f: f["type"] == "ai:token" and f["seq"] >= 30, 10 * UNIT)
    await client.generate("b")
    for round_ in range(3):
        ended = await client.until(lambda f: f["type"] in ("ai:done", "ai:error"), 10 * UNIT)
        assert ended[-1]["type"] == "ai:done"
        await asyncio.sleep(0.1)  # (batches of the other's tokens come meanwhile)
        await client.generate(f"x{round_}")
        await client.generate(f"y{round_}")
        refusal = await client.finish(f"y{round_}", 10 * UNIT)
        assert refusal["code"] == "too_many_requests"
        # the bridge's words, not the generator's ("at its generation limit")
        assert refusal["message"] == "the server is at capacity; try again shortly"
        await client.until(
            lambda f, r=round_: f["type"] == "ai:start" and f["requestId"] == f"x{r}"
        )
    ends = await client.finish_all({"x1", "x2"}, 20 * UNIT)
    assert all(frames[-1]["type"] == "ai:done" for frames in ends.values())
