"""End to end: browser-protocol client → bridge → generator → fake upstream, all over sockets.

Every claim about the upstream is proved with the fake upstream's own records.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from conftest import TERMINAL, UNIT, Stack, StackFactory

from aistream.testing.fake_upstream import Script

SECRET = "SECRET-sk-live-abc 10.0.0.7 Traceback"


async def test_core_protocol_round_trip(stack: Stack) -> None:
    """A client knowing only the core protocol gets ai:start, ai:token…, ai:done."""
    client = await stack.client()
    await client.send('{"type":"ai:generate","requestId":"r1","prompt":"hi"}')
    frames = await client.until(lambda f: f["type"] in TERMINAL)
    types = [f["type"] for f in frames]
    assert (types[0], types[-1], set(types[1:-1])) == ("ai:start", "ai:done", {"ai:token"})
    assert all(f["requestId"] == "r1" for f in frames)
    # tokens read from the upstream together may arrive as one chunk (count > 1)
    assert "".join(f["chunk"] for f in frames[1:-1]) == "tok0 tok1 tok2 tok3 tok4 "
    assert sum(f["count"] for f in frames[1:-1]) == 5
    done = frames[-1]
    assert done["finishReason"] == "stop"
    assert done["usage"] == {
        "promptTokens": done["usage"]["promptTokens"],
        "completionTokens": 5,
        "source": "upstream",
    }
    assert done["durationMs"] >= done["ttftMs"] >= 0


async def test_ai_cancel_closes_the_upstream_connection(stack: Stack) -> None:
    """ai:cancel → ai:error cancelled, and the upstream's connection is closed promptly."""
    stack.fake.script = Script(tokens=10_000, interval=0.01)
    client = await stack.client()
    await client.generate("r1")
    await client.until(lambda f: f["type"] == "ai:token")
    await client.cancel("r1")
    end = await client.finish("r1")
    assert (end["type"], end["code"], end["retryable"]) == ("ai:error", "cancelled", False)
    record = await stack.fake.wait_closed(stack.fake.records[0], 2 * UNIT)
    assert record.outcome == "client_closed"


async def test_closing_the_socket_mid_stream_closes_the_upstream(stack: Stack) -> None:
    """A browser closing its WebSocket mid-stream closes the upstream request."""
    stack.fake.script = Script(tokens=10_000, interval=0.01)
    client = await stack.client()
    await client.generate("r1")
    await client.generate("r2")
    await stack.fake.wait_for(lambda: len(stack.fake.records) == 2)
    await client.until(lambda f: f["type"] == "ai:token")
    await client.ws.close()
    client.abandon()
    await stack.fake.wait_idle(2 * UNIT)
    assert [r.outcome for r in stack.fake.records] == ["client_closed", "client_closed"]


async def test_vanished_browser_is_ended_by_ping_timeout(make_stack: StackFactory) -> None:
    """A client that stops answering pings is dropped and its upstream closed."""
    stack = await make_stack(
        Script(tokens=10_000, interval=0.01),
        ws_ping_interval=0.2 * UNIT,
        ws_ping_timeout=0.2 * UNIT,
        ws_close_timeout=0.2 * UNIT,
    )
    client = await stack.client()
    await client.generate("r1")
    await client.until(lambda f: f["type"] == "ai:token")
    client.abandon()
    # Stop the client's transport from reading: no pong is ever sent, no close frame either.
    client.ws.transport.pause_reading()
    record = await stack.fake.wait_closed(stack.fake.records[0], 3 * UNIT)
    assert record.outcome == "client_closed"
    client.ws.transport.abort()


@pytest.mark.parametrize(
    ("overrides", "script", "words"),
    [
        ({"first_token_timeout": 0.3}, Script(ttft=30), "first token"),
        ({"stall_timeout": 0.3}, Script(tokens=10, stall_after=2), "stalled"),
        ({"deadline": 0.3}, Script(tokens=10_000, interval=0.01), "time limit"),
    ],
)
async def test_time_limits_end_in_timeout(
    make_stack: StackFactory, overrides: dict[str, float], script: Script, words: str
) -> None:
    """Each time limit ends the generation with ai:error timeout and closes the upstream."""
    stack = await make_stack(script, **{k: v * UNIT for k, v in overrides.items()})
    client = await stack.client()
    await client.generate("r1")
    end = await client.finish("r1")
    assert (end["type"], end["code"], end["retryable"]) == ("ai:error", "timeout", True)
    assert words in end["message"]
    assert (await stack.fake.wait_closed(stack.fake.records[0])).outcome == "client_closed"


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "upstream_error"),
        (401, "upstream_error"),
        (429, "rate_limited"),
        (500, "upstream_error"),
    ],
)
async def test_upstream_http_errors_reach_the_browser_typed(
    make_stack: StackFactory, status: int, code: str
) -> None:
    """400/401/429/500 before the first token end in their code, with no upstream text."""
    stack = await make_stack(Script(status=status, error_message=SECRET))
    client = await stack.client()
    await client.generate("r1")
    frames = await client.until(lambda f: f["type"] in TERMINAL)
    assert frames[-1]["code"] == code
    assert not any(
        part in orjson.dumps(frames).decode() for part in ("SECRET", "10.0.0.7", "Trace")
    )


@pytest.mark.parametrize(
    "script",
    [
        Script(tokens=10, close_after=4),
        Script(tokens=10, reset_after=4),
        Script(tokens=10, malformed_after=4),
        Script(tokens=10, error_event_after=4, error_message=SECRET),
    ],
)
async def test_mid_stream_failures_are_errors_not_done(
    make_stack: StackFactory, script: Script
) -> None:
    """A stream cut or broken after tokens is ai:error upstream_error, never ai:done."""
    stack = await make_stack(script)
    client = await stack.client()
    await client.generate("r1")
    frames = await client.until(lambda f: f["type"] in TERMINAL)
    assert sum(f.get("count", 0) for f in frames if f["type"] == "ai:token") == 4
    assert (frames[-1]["type"], frames[-1]["code"]) == ("ai:error", "upstream_error")
    assert frames[-1]["retryable"] is True
    assert "SECRET" not in orjson.dumps(frames).decode()


async def test_twenty_interleaved_generations_on_one_socket(stack: Stack) -> None:
    """20 concurrent generations on one socket each get their text and exactly one terminal."""
    stack.fake.script = Script(tokens=30, interval=0.002)
    client = await stack.client()
    ids = {f"r{i:02d}" for i in range(20)}
    for rid in sorted(ids):
        await client.generate(rid)
    by_id = await client.finish_all(ids)
    for rid in ids:
        frames = by_id[rid]
        assert [f["type"] for f in frames].count("ai:done") == 1
        assert "".join(f.get("chunk", "") for f in frames) == "".join(f"tok{i} " for i in range(30))
    assert len(stack.fake.records) == 20


async def test_repeated_id_does_not_start_a_second_generation(stack: Stack) -> None:
    """Sending the same generate again while it runs starts nothing new upstream."""
    stack.fake.script = Script(tokens=10, interval=0.01)
    client = await stack.client()
    for _ in range(3):
        await client.generate("dup")
    frames = await client.until(lambda f: f["type"] in TERMINAL)
    assert [f["type"] for f in frames].count("ai:start") == 1
    assert len(stack.fake.records) == 1


BAD_FRAMES: list[tuple[str | bytes, str]] = [
    ("this is not json", ""),
    ("[1,2,3]", ""),
    ('"a string"', ""),
    (b"\x00\x01binary", ""),
    ('{"type":"ai:explode","requestId":"bad1"}', "bad1"),
    ('{"type":"ai:generate","prompt":"no id"}', ""),
    ('{"type":"ai:generate","requestId":"","prompt":"empty id"}', ""),
    ('{"type":"ai:generate","requestId":42,"prompt":"numeric id"}', ""),
    ('{"type":"ai:generate","requestId":"bad2","prompt":12}', "bad2"),
    ('{"type":"ai:generate","requestId":"bad3","prompt":"x","maxTokens":"lots"}', "bad3"),
    ('{"type":"ai:generate","requestId":"bad4"}', "bad4"),
    (
        '{"type":"ai:generate","requestId":"bad5","messages":[{"role":"wizard","content":"x"}]}',
        "bad5",
    ),
    ('{"type":"ai:cancel"}', ""),
    ('{"type":"ai:generate","requestId":"' + "x" * 500 + '","prompt":"long id"}', ""),
]


@pytest.mark.parametrize(("frame", "request_id"), BAD_FRAMES)
async def test_bad_frames_get_invalid_request_and_the_socket_carries_on(
    stack: Stack, frame: str | bytes, request_id: str
) -> None:
    """Each bad frame → ai:error invalid_request (with its id when readable); the next valid
    request on the same socket succeeds and a generation already running is unaffected."""
    stack.fake.script = Script(tokens=20, interval=0.005)
    client = await stack.client()
    await client.generate("running")
    await client.until(lambda f: f["type"] == "ai:token")
    await client.send(frame)
    error = await client.until(lambda f: f["type"] == "ai:error")
    assert (error[-1]["code"], error[-1]["requestId"], error[-1]["retryable"]) == (
        "invalid_request",
        request_id,
        False,
    )
    await client.generate("after")
    by_id = await client.finish_all({"running", "after"})
    assert by_id["running"][-1]["type"] == "ai:done"
    assert by_id["after"][-1]["type"] == "ai:done"


async def test_cancel_for_unknown_id_is_a_noop(stack: Stack) -> None:
    """ai:cancel for an id never sent gets no answer; the socket goes on."""
    client = await stack.client()
    await client.cancel("ghost")
    await client.generate("r1")
    frames = await client.until(lambda f: f["type"] in TERMINAL)
    assert frames[0] == {"type": "ai:start", "requestId": "r1", "model": "gpt-4o-mini"}


async def test_generator_unreachable_gives_unavailable_and_bridge_keeps_serving(
    make_stack: StackFactory,
) -> None:
    """With the generator gone, generates get ai:error unavailable (retryable); the socket lives."""
    stack = await make_stack()
    await stack.generator.stop(drain_timeout=0)
    client = await stack.client()
    await client.generate("r1")
    end = await client.finish("r1")
    assert (end["code"], end["retryable"]) == ("unavailable", True)
    await client.generate("r2")
    end = await client.finish("r2")
    assert end["code"] == "unavailable"


async def test_frames_are_text_and_uncompressed(stack: Stack) -> None:
    """The bridge negotiates no permessage-deflate by default and sends text frames."""
    client = await stack.client()
    assert client.ws.response is not None
    assert "Sec-WebSocket-Extensions" not in client.ws.response.headers
    await client.generate("r1")
    message = await asyncio.wait_for(client.ws.recv(), 5 * UNIT)
    assert isinstance(message, str)
    client.conversation.events.append(("recv", orjson.loads(message)))
    await client.finish("r1")


async def test_frame_over_max_size_closes_with_1009(make_stack: StackFactory) -> None:
    """A message larger than ws_max_size closes the socket with 1009 (message too big)."""
    stack = await make_stack(ws_max_size=1024)
    client = await stack.client()
    await client.ws.send("x" * 2048)
    await client.ws.wait_closed()
    assert client.ws.close_code == 1009
    second = await stack.client()  # the bridge goes on serving
    await second.generate("r1")
    assert (await second.finish("r1"))["type"] == "ai:done"


async def test_invalid_utf8_closes_with_1007_and_the_bridge_goes_on(stack: Stack) -> None:
    """A text frame that is not UTF-8 is a protocol error (1007); other connections carry on."""
    from websockets.frames import Frame, Opcode

    other = await stack.client("other")
    await other.generate("r1")
    client = await stack.client()
    client.abandon()
    # write a raw text frame with invalid UTF-8 through the protocol layer
    client.ws.protocol.send_frame(Frame(Opcode.TEXT, b"\xff\xfe"))
    client.ws.send_data()
    await client.ws.wait_closed()
    assert client.ws.close_code == 1007
    assert (await other.finish("r1"))["type"] == "ai:done"
