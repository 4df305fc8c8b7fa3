"""Resumable generations on the generator (issue 19): positions on every event, a token on the
start, the log replayed after a position and followed live on any call — no gap, no duplicate,
one terminal — a generation that outlives its call for ``resume_grace``, ``not_found`` for
anything that does not open it, and cancel from a follower."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from conftest import UNIT, GrpcClient, Stack, StackFactory

from aistream.testing.fake_upstream import Script
from aistream.v1 import events_pb2 as pb

SLOW = Script(tokens=40, interval=0.02)
"""About a second of answer: long enough to drop a call in the middle."""


def _kind(event: pb.ServerEvent) -> str:
    kind = event.WhichOneof("event")
    assert kind is not None
    return kind


def _body(event: pb.ServerEvent) -> Any:
    return getattr(event, _kind(event))


def _text(events: list[pb.ServerEvent]) -> str:
    return "".join(e.token.chunk for e in events if _kind(e) == "token")


def _end_of(event: pb.ServerEvent) -> int:
    """The last position an event covers."""
    body = _body(event)
    return int(body.seq) + max(int(getattr(body, "count", 1) or 1), 1) - 1


async def _until_end(client: GrpcClient, request_id: str, timeout: float = 10 * UNIT) -> list[Any]:
    events = []
    async with asyncio.timeout(timeout):
        while True:
            event = await client.recv(timeout)
            if _body(event).request_id != request_id:
                continue
            events.append(event)
            if _kind(event) in ("done", "error"):
                return events


async def _resume(
    client: GrpcClient, request_id: str, token: str, after_seq: int | None = None, **extra: Any
) -> None:
    resume = pb.Resume(request_id=request_id, resume_token=token, **extra)
    if after_seq is not None:
        resume.after_seq = after_seq
    await client.send(pb.ClientEvent(resume=resume))


def _channel(stack: Stack) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{stack.generator.port}")


async def _reference_text(stack: Stack) -> str:
    """What the script answers, read whole on a call of its own (not resumable)."""
    async with _channel(stack) as channel:
        client = GrpcClient(channel, "reference")
        await client.generate("ref")
        return _text(await _until_end(client, "ref"))


async def test_every_event_of_a_resumable_generation_has_a_position(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(Script(tokens=6))
    async with _channel(stack) as channel:
        client = GrpcClient(channel, "a")
        await client.generate("r", resumable=True)
        events = await _until_end(client, "r")
    start, *parts, end = events
    assert _kind(start) == "start" and start.start.HasField("seq") and start.start.seq == 0
    assert start.start.resume_token
    position = 1
    for part in parts:
        assert _body(part).seq == position
        position = _end_of(part) + 1
    assert _kind(end) == "done" and end.done.HasField("seq") and end.done.seq == position


async def test_a_plain_generation_is_numbered_as_before(make_stack: StackFactory) -> None:
    stack = await make_stack(Script(tokens=3))
    async with _channel(stack) as channel:
        client = GrpcClient(channel, "a")
        await client.generate("r")
        start, first, *_, end = await _until_end(client, "r")
    assert not start.start.HasField("seq") and not start.start.resume_token
    assert first.token.seq == 0 and not end.done.HasField("seq")


async def test_resume_after_the_end_replays_the_suffix_and_the_terminal(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(Script(tokens=8, interval=0.01))  # (a token a read)
    async with _channel(stack) as channel:
        client = GrpcClient(channel, "a")
        await client.generate("r", resumable=True)
        events = await _until_end(client, "r")
        token = events[0].start.resume_token
        cut = events[3]  # the client holds up to here
        other = GrpcClient(channel, "b")
        await _resume(other, "again", token, _end_of(cut), client_request_id="r")
        replay = await _until_end(other, "again")
        await _resume(other, "whole", token, client_request_id="r")
        whole = await _until_end(other, "whole")
    assert _text(events[:4]) + _text(replay) == _text(events)
    assert _kind(replay[-1]) == "done" and replay[-1].done.seq == events[-1].done.seq
    assert _body(replay[0]).seq == _end_of(cut) + 1
    assert _kind(whole[0]) == "start" and _text(whole) == _text(events)


async def test_a_generation_outlives_its_call_and_resumes_live_on_another(
    make_stack: StackFactory,
) -> None:
    """The call that asked for it ends mid-stream: the generation runs on (its upstream stays
    open); another call resumes from the last position it held and gets the rest, live, with
    no gap and no duplicate — the text equals the upstream's."""
    stack = await make_stack(SLOW, resume_grace=10.0)
    expected = await _reference_text(stack)
    async with _channel(stack) as first_channel:
        first = GrpcClient(first_channel, "first")
        first.abandon()
        await first.generate("r", resumable=True)
        held: list[pb.ServerEvent] = []
        while len([e for e in held if _kind(e) == "token"]) < 5:
            held.append(await first.recv())
        first.call.cancel()  # the connection drops mid-stream
    await asyncio.sleep(0.2)
    resumable = stack.fake.records[-1]
    assert resumable.client_closed_at is None  # still generating, with no reader
    async with _channel(stack) as channel:
        second = GrpcClient(channel, "second")
        token = held[0].start.resume_token
        await _resume(second, "r", token, _end_of(held[-1]))
        rest = await _until_end(second, "r")
    assert _text(held) + _text(rest) == expected
    assert _kind(rest[-1]) == "done"


async def test_nothing_opens_a_generation_but_its_token_and_request_id(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(Script(tokens=3))
    async with _channel(stack) as channel:
        client = GrpcClient(channel, "a")
        await client.generate("r", resumable=True)
        token = (await _until_end(client, "r"))[0].start.resume_token
        key, secret = token.split(".")
        wrong_secret = key + "." + ("A" if secret[0] != "A" else "B") + secret[1:]
        cases = {
            "unknown": "0" * 32 + "." + secret,
            "wrong-secret": wrong_secret,
            "garbage": "not a token",
        }
        for name, bad in cases.items():
            await _resume(client, name, bad, client_request_id="r")
        await _resume(client, "other-id", token, client_request_id="someone-else")
        answers = [await client.recv() for _ in range(len(cases) + 1)]
    assert {_body(e).request_id for e in answers} == {*cases, "other-id"}
    for answer in answers:
        assert _kind(answer) == "error"
        assert answer.error.code == pb.ERROR_CODE_NOT_FOUND and not answer.error.retryable
    assert len({e.error.message for e in answers}) == 1  # the same answer, whatever was wrong


async def test_a_follower_cancels_and_the_upstream_closes(make_stack: StackFactory) -> None:
    stack = await make_stack(SLOW, resume_grace=10.0)
    async with _channel(stack) as channel:
        first = GrpcClient(channel, "first")
        first.abandon()
        await first.generate("r", resumable=True)
        start = await first.recv()
        token = start.start.resume_token
        second = GrpcClient(channel, "second")
        await _resume(second, "mine", token, 0, client_request_id="r")
        await second.recv()  # a replayed or live part
        await second.cancel("mine")
        end = (await _until_end(second, "mine"))[-1]
        first.call.cancel()
    assert _kind(end) == "error" and end.error.code == pb.ERROR_CODE_CANCELLED
    async with asyncio.timeout(5 * UNIT):
        while stack.fake.records[-1].client_closed_at is None:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_with_no_reader_for_the_grace_it_is_cancelled_and_that_end_is_replayed(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(Script(tokens=400, interval=0.02), resume_grace=0.3)
    async with _channel(stack) as channel:
        first = GrpcClient(channel, "first")
        first.abandon()
        await first.generate("r", resumable=True)
        token = (await first.recv()).start.resume_token
        first.call.cancel()
    async with asyncio.timeout(5 * UNIT):
        records = stack.fake.records
        while not records or records[-1].client_closed_at is None:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    async with _channel(stack) as channel:
        later = GrpcClient(channel, "later")
        await _resume(later, "r", token, 0)
        replay = await _until_end(later, "r")
    end = replay[-1]
    assert _kind(end) == "error" and end.error.code == pb.ERROR_CODE_CANCELLED
    assert "resume" in end.error.message


async def test_two_followers_get_every_event(make_stack: StackFactory) -> None:
    stack = await make_stack(SLOW)
    expected = await _reference_text(stack)
    async with _channel(stack) as channel:
        first = GrpcClient(channel, "first")
        await first.generate("r", resumable=True)
        start = await first.recv()
        second = GrpcClient(channel, "second")
        await _resume(second, "tab2", start.start.resume_token, -1, client_request_id="r")
        one, two = await asyncio.gather(_until_end(first, "r"), _until_end(second, "tab2"))
    assert _text(one) == _text(two) == expected


@pytest.mark.parametrize("after_seq", [2, 10_000])
async def test_a_position_that_ends_no_event_is_an_invalid_request(
    make_stack: StackFactory, after_seq: int
) -> None:
    stack = await make_stack(Script(tokens=20))  # (read at once: parts of several tokens)
    async with _channel(stack) as channel:
        client = GrpcClient(channel, "a")
        await client.generate("r", resumable=True)
        events = await _until_end(client, "r")
        if after_seq == 2 and not any(_end_of(e) > 2 > _body(e).seq for e in events[1:-1]):
            pytest.skip("the script's parts do not straddle position 2")
        await _resume(client, "x", events[0].start.resume_token, after_seq, client_request_id="r")
        answer = await client.recv()
    assert _kind(answer) == "error" and answer.error.code == pb.ERROR_CODE_INVALID_REQUEST


async def test_a_call_forgets_the_generations_it_followed_once_they_end(
    make_stack: StackFactory,
) -> None:
    """A bridge's call lives for as long as the bridge: what it follows must not pile up."""
    stack = await make_stack(Script(tokens=4, interval=0.01))
    async with _channel(stack) as channel:
        client = GrpcClient(channel, "a")
        for i in range(5):
            await client.generate(f"r{i}", resumable=True)
            events = await _until_end(client, f"r{i}")
            await _resume(
                client, f"again{i}", events[0].start.resume_token, 0, client_request_id=f"r{i}"
            )
            await _until_end(client, f"again{i}")
        (session,) = stack.generator.service._sessions
        assert session._keys == {}
        assert len(stack.generator.service._resumables) == 0
