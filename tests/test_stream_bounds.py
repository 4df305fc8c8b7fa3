"""The generator's memory per gRPC call is bounded whatever the client sends or fails to read.

A client that writes and does not read is slowed to its reading speed: the session applies no
further event while its outbox is over its bounds, and gRPC flow control then stops the client's
writes. Nothing is dropped and the call is not ended. Bounds are asserted on the process's memory
(client and generator share it: the client's own buffers are bounded by flow control too) and on
the outbox, never on speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import grpc
import pytest
from conftest import (
    UNIT,
    Conversation,
    PeakRss,
    StackFactory,
    check_conversation,
    recorded_frame,
    settings_for,
)

from aistream.generator.server import GeneratorServer
from aistream.generator.service import Capacity, StreamSession
from aistream.generator.simulated import SimulatedUpstream, answer_tokens
from aistream.testing.fake_upstream import Script
from aistream.v1 import events_pb2 as pb
from aistream.v1.generator_pb2_grpc import GeneratorStub

MB = 1_000_000
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16 * 1024)]
"""Client channel options: a fixed 16 KiB HTTP/2 window, so a client that reads slowly holds back
the generator's writes at once (grpc otherwise grows the window to megabytes)."""
FLOOD = 200_000
"""Events a flooding client tries to push (in batches of BATCH)."""
BATCH = 1000
RSS_BOUND = 50 * MB
"""Most the process may grow while one client floods (when the reader never waited, 200k invalid
events grew it ~100 MB, 200k Generates ~300 MB)."""


@pytest.fixture
async def generator() -> AsyncIterator[Callable[..., Any]]:
    """Start an in-process generator (simulated model) with setting overrides; its port."""
    started: list[GeneratorServer] = []

    async def start(**overrides: Any) -> tuple[GeneratorServer, int]:
        server = GeneratorServer(settings_for(None, **overrides))
        started.append(server)
        return server, await server.start()

    yield start
    for server in started:
        await server.stop(drain_timeout=0)


def _invalid(i: int) -> pb.ClientEvent:
    """An event the generator rejects with an Error (three kinds, in turn)."""
    if i % 3 == 0:
        return pb.ClientEvent()  # neither generate nor cancel
    if i % 3 == 1:
        return pb.ClientEvent(generate=pb.Generate(request_id="", prompt="x" * 200))
    return _cancel("c" * 200)  # an over-long request id


def _generate(request_id: str, prompt: str = "hi") -> pb.ClientEvent:
    return pb.ClientEvent(generate=pb.Generate(request_id=request_id, prompt=prompt))


def _cancel(request_id: str) -> pb.ClientEvent:
    return pb.ClientEvent(cancel=pb.Cancel(request_id=request_id))


async def _push(call: Any, events: Iterable[pb.ClientEvent], progress: list[int]) -> None:
    """Write ``events`` in batches of BATCH, counting what was written, never reading."""
    batch: list[pb.ClientEvent] = []
    for event in events:
        batch.append(event)
        if len(batch) == BATCH:
            await call.write(pb.ClientEventBatch(events=batch))
            progress[0] += len(batch)
            batch = []
    if batch:
        await call.write(pb.ClientEventBatch(events=batch))
        progress[0] += len(batch)


async def _until_stuck_or_done(task: asyncio.Task[None], progress: list[int]) -> None:
    """Until ``task`` is done or has written nothing for a second."""
    seen, quiet = -1, 0
    while not task.done() and quiet < 10:
        await asyncio.sleep(0.1 * UNIT)
        quiet = quiet + 1 if progress[0] == seen else 0
        seen = progress[0]


async def _until(predicate: Callable[[], bool], timeout: float = 10 * UNIT) -> None:
    """Until ``predicate()`` holds (polled every 10 ms)."""
    async with asyncio.timeout(timeout):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


async def _finishes(channel: grpc.aio.Channel) -> None:
    """A generation on a new call of ``channel`` runs from Start to Done."""
    call = GeneratorStub(channel).StreamBatches()
    await call.write(pb.ClientEventBatch(events=[_generate("n")]))
    kinds: list[str] = []
    async with asyncio.timeout(10 * UNIT):
        async for batch in call:
            kinds += [str(e.WhichOneof("event")) for e in batch.events]
            if kinds[-1] in ("done", "error"):
                break
    assert (kinds[0], kinds[-1]) == ("start", "done"), kinds
    call.cancel()


async def _flood_without_reading(
    generator: Callable[..., Any], events: Iterator[pb.ClientEvent], **overrides: Any
) -> tuple[PeakRss, StreamSession, GeneratorServer]:
    """Push ``events`` on a StreamBatches call that never reads until the client is stuck (or
    done); a neighbour on another channel meanwhile. The RSS sampled, the flood's session and
    the server."""
    server, port = await generator(**overrides)
    async with PeakRss() as rss, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = GeneratorStub(channel).StreamBatches()
        progress = [0]
        pusher = asyncio.create_task(_push(call, events, progress))
        await _until_stuck_or_done(pusher, progress)
        (session,) = server.service._sessions
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as other:
            await _finishes(other)  # another client
        await _finishes(channel)  # another call of the same client
        call.cancel()
        pusher.cancel()
        await asyncio.gather(pusher, return_exceptions=True)
    return rss, session, server


async def test_invalid_events_from_a_client_that_never_reads_stay_bounded(
    generator: Callable[..., Any],
) -> None:
    """200k invalid events pushed by a client that never reads: its outbox stays at its bound,
    the process grows < 50 MB, and generations on other calls (its own, another client's)
    complete."""
    rss, session, server = await _flood_without_reading(
        generator, (_invalid(i) for i in range(FLOOD))
    )
    assert len(session.outbox) <= 2 * server.settings.stream_buffer
    assert rss.growth < RSS_BOUND, rss.growth


async def test_generates_from_a_client_that_never_reads_stay_bounded(
    generator: Callable[..., Any],
) -> None:
    """200k valid Generates (fast simulated model: starts, tokens, terminals and refusals) pushed
    by a client that never reads: the process grows < 50 MB, other calls' generations complete
    (the stream may hold 500 of the process's 2000 generations, as when clients share it)."""
    rss, session, server = await _flood_without_reading(
        generator,
        (_generate(f"g{i}") for i in range(FLOOD)),
        simulated_ttft=0.0,
        simulated_tokens_per_s=0.0,
        max_generations=2000,
        max_generations_per_stream=500,
    )
    # the bound, plus the terminal of every generation still running when it was reached
    settings = server.settings
    assert len(session.outbox) <= 2 * settings.stream_buffer + settings.max_generations_per_stream
    assert rss.growth < RSS_BOUND, rss.growth


class _Recorder:
    """Records a call's conversation for the lifecycle checker (conftest)."""

    def __init__(self, name: str) -> None:
        self.conversation = Conversation(name)
        self.events: list[pb.ServerEvent] = []

    def sent(self, event: pb.ClientEvent) -> None:
        kind = event.WhichOneof("event")
        if kind is not None:
            body = getattr(event, kind)
            self.conversation.events.append(
                ("sent", {"type": f"ai:{kind}", "requestId": body.request_id})
            )

    def received(self, event: pb.ServerEvent) -> None:
        self.conversation.events.append(("recv", recorded_frame(event)))
        self.events.append(event)


def _mixed(n: int) -> list[pb.ClientEvent]:
    """Generates (some cancelled at once), invalid events, and cancels of unknown ids."""
    events: list[pb.ClientEvent] = []
    for i in range(n):
        if i % 4 == 0:
            events.append(_generate(f"g{i}", '#simulate {"tokens": 5, "reasoning": 2}\nhi'))
        elif i % 4 == 1:
            events.append(_invalid(i))
        elif i % 4 == 2:
            events.append(_cancel(f"unknown{i}"))
        else:
            events.append(_generate(f"c{i}", "bye"))
            events.append(_cancel(f"c{i}"))
    return events


@pytest.mark.parametrize("method", ["Stream", "StreamBatches"])
async def test_a_slow_reader_gets_every_answer_in_lifecycle_order(
    generator: Callable[..., Any], method: str
) -> None:
    """A client that reads slower than it writes (through a 16 KiB window, a 4-event outbox)
    gets every answer, complete and in lifecycle order: backpressure, nothing dropped."""
    # (its generations wait for the slow reader, the upstream unread meanwhile: on a slow
    # machine longer than the suite's 5 s stall limit, which is not what this tests)
    _, port = await generator(
        stream_buffer=4, stream_buffer_bytes=1024, simulated_ttft=0.0, stall_timeout=60 * UNIT
    )
    events = _mixed(1000)
    recorder = _Recorder(method)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=SMALL_WINDOW) as channel:
        stub = GeneratorStub(channel)

        async def write() -> None:
            if method == "Stream":
                for event in events:
                    recorder.sent(event)
                    await call.write(event)
            else:
                for start in range(0, len(events), 50):
                    for event in events[start : start + 50]:
                        recorder.sent(event)
                    await call.write(pb.ClientEventBatch(events=events[start : start + 50]))
            await call.done_writing()

        call: Any = stub.Stream() if method == "Stream" else stub.StreamBatches()
        writer = asyncio.create_task(write())
        async with asyncio.timeout(60 * UNIT):
            async for message in call:
                await asyncio.sleep(0.001)
                for event in [message] if method == "Stream" else message.events:
                    recorder.received(event)
        await writer
        assert await call.code() == grpc.StatusCode.OK
    check_conversation(recorder.conversation)  # one start, parts, one terminal; all answered
    got = recorder.events
    ends = {e.done.request_id: e for e in got if e.HasField("done")}
    ends |= {e.error.request_id: e for e in got if e.HasField("error")}
    answer = "".join(answer_tokens("hi", 5))
    for i in range(0, 1000, 4):
        assert ends[f"g{i}"].done.usage.completion_tokens == 5 + 2  # answer and reasoning
        assert "".join(e.token.chunk for e in got if e.token.request_id == f"g{i}") == answer
        # cancelled at once, or (if the reader paused between the two) perhaps done first
        end = ends[f"c{i + 3}"]
        assert end.HasField("done") or end.error.code == pb.ERROR_CODE_CANCELLED
    rejections = [e for e in got if e.WhichOneof("event") == "error" and not e.error.request_id]
    assert len(rejections) == 250
    assert all(e.error.code == pb.ERROR_CODE_INVALID_REQUEST for e in rejections)


async def test_pressure_pauses_the_call_and_never_ends_it(generator: Callable[..., Any]) -> None:
    """A client that pushes 20k invalid events without reading is paused, not ended: once it
    reads it gets all 20k errors, and the call ends OK when it half-closes."""
    server, port = await generator()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=SMALL_WINDOW) as channel:
        call = GeneratorStub(channel).StreamBatches()
        progress = [0]
        pusher = asyncio.create_task(_push(call, (_invalid(i) for i in range(20_000)), progress))
        await _until(
            lambda: any(session.outbox.over for session in server.service._sessions)
        )  # its reader is paused
        received = 0
        reader = aiter(call)
        async with asyncio.timeout(30 * UNIT):
            while received < 20_000:
                batch = await anext(reader)
                assert {e.error.code for e in batch.events} == {pb.ERROR_CODE_INVALID_REQUEST}
                received += len(batch.events)
        await pusher
        await call.done_writing()
        assert [batch async for batch in reader] == []
        assert received == 20_000
        assert await call.code() == grpc.StatusCode.OK
        assert await call.details() in ("", None)


# --- the session alone, no sockets ------------------------------------------------------------


async def _batches(events: list[pb.ClientEvent]) -> AsyncIterator[pb.ClientEventBatch]:
    """One ClientEventBatch holding every event."""
    yield pb.ClientEventBatch(events=events)


@pytest.mark.parametrize(
    ("flood", "limit"),
    [
        ("invalid", 1000),
        ("refused", 0),  # the process is at its generation limit: every Generate refused
        ("start-and-cancel", 1000),
    ],
)
async def test_one_huge_batch_is_applied_only_as_fast_as_its_replies_leave(
    flood: str, limit: int
) -> None:
    """One ClientEventBatch of 10k events that each queue a reply: the reader stops between
    its events at twice the outbox bound and goes on as the writer takes events; none is lost."""
    settings = settings_for(None, stream_buffer=16, simulated_ttft=60.0)
    session = StreamSession(SimulatedUpstream(settings), settings, "test", Capacity(limit))
    if flood == "invalid":
        events = [_invalid(i) for i in range(10_000)]
    elif flood == "refused":
        events = [_generate(f"r{i}") for i in range(10_000)]
    else:
        events = [e for i in range(5_000) for e in (_generate(f"s{i}"), _cancel(f"s{i}"))]
    reader = asyncio.create_task(session.read_batches(_batches(events)))
    replies = 0
    try:
        while not reader.done():
            await asyncio.sleep(0)
            assert len(session.outbox) <= 2 * 16
            if session.outbox.over:  # the reader waits: the writer takes a few events
                replies += len(await session.outbox.get_batch(8))
        await reader
        while len(session.outbox):
            replies += len(await session.outbox.get_batch(8))
    finally:
        await session.close()
    assert replies == 10_000


async def test_cancels_of_unknown_ids_queue_nothing() -> None:
    """100k Cancels of ids never started: no reply, nothing queued, the reader never waits."""
    settings = settings_for(None)
    session = StreamSession(SimulatedUpstream(settings), settings, "test", Capacity(10))
    await session.read_batches(_batches([_cancel(f"u{i}") for i in range(100_000)]))
    assert len(session.outbox) == 0
    assert session.outbox.peak_bytes == 0


async def test_cancels_go_before_data_in_a_batch_that_waits(make_stack: StackFactory) -> None:
    """Control before data: a batch whose events wait for room (its client reads nothing, the
    outbox is over its bounds) still has its cancels of running generations applied at once —
    their upstreams close now, not when the client reads again. The generates behind the wait
    stay unapplied (bounded memory)."""
    stack = await make_stack(
        Script(tokens=100_000),
        stream_buffer=4,
        stream_buffer_bytes=1024,
        stall_timeout=30 * UNIT,
    )
    first = [_generate(f"g{i}", f"p{i}") for i in range(3)]
    then = [_generate(f"g{i}", f"p{i}") for i in range(3, 400)]
    then += [_cancel("g0"), _cancel("g1"), _cancel("g2")]
    target = f"127.0.0.1:{stack.generator.port}"
    fake = stack.fake

    def record(prompt: str) -> Any:
        return next((r for r in fake.records if r.messages[-1]["content"] == prompt), None)

    async with grpc.aio.insecure_channel(target, options=SMALL_WINDOW) as channel:
        call = GeneratorStub(channel).StreamBatches()
        await call.write(pb.ClientEventBatch(events=first))  # three answers streaming
        await fake.wait_for(lambda: all(record(f"p{i}") for i in range(3)), 5 * UNIT)
        # Many more generates, then cancels of the first three: the starts put the outbox over
        # its bounds part-way through, and the rest of the batch waits for room.
        await call.write(pb.ClientEventBatch(events=then))
        for i in range(3):  # cancelled while the client still reads nothing
            closed = await fake.wait_closed(record(f"p{i}"), 3 * UNIT)
            assert closed.outcome == "client_closed"
        started = len(fake.records)
        assert started < 400, "the batch waited for room (else nothing was tested)"
        assert all(record(f"p{i}").active for i in range(3, started))
        call.cancel()
    await fake.wait_idle(5 * UNIT)
