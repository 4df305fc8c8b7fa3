"""Tests for the fake OpenAI-compatible upstream, driven through the real ``openai`` SDK."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from aistream.testing.fake_upstream import FakeUpstream, RequestRecord, Script

SCALE = float(os.environ.get("AISTREAM_TEST_TIME_SCALE", "1"))
"""Multiplies every time limit in this module, for slow machines."""
PROMPT = "hello there"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    """A started fake upstream, closed after the test."""
    async with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
async def client(fake: FakeUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    """An SDK client for the fake, without retries."""
    async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="test", max_retries=0) as sdk:
        yield sdk


async def _stream(
    client: openai.AsyncOpenAI, prompt: str = PROMPT, **kwargs: Any
) -> openai.AsyncStream[Any]:
    """Open a chat-completions stream."""
    stream: openai.AsyncStream[Any] = await client.chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": prompt}], stream=True, **kwargs
    )
    return stream


async def _collect(
    client: openai.AsyncOpenAI, prompt: str = PROMPT, **kwargs: Any
) -> tuple[str, list[str | None], Any]:
    """Stream one completion; return its text, every finish reason seen and the usage."""
    text, reasons, usage = "", [], None
    async with await _stream(client, prompt, **kwargs) as stream:
        async for chunk in stream:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                text += choice.delta.content or ""
                reasons.append(choice.finish_reason)
    return text, reasons, usage


async def _contents(stream: openai.AsyncStream[Any], into: list[str | None]) -> None:
    """Append the content of each chunk of ``stream`` to ``into`` until it ends or fails."""
    async for chunk in stream:
        into.append(chunk.choices[0].delta.content)


async def test_stream_yields_tokens_finish_reason_and_usage(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    """A default stream yields five tokens, finish reason stop and the usage asked for."""
    text, reasons, usage = await _collect(client, stream_options={"include_usage": True})
    assert text == "tok0 tok1 tok2 tok3 tok4 "
    assert reasons == [None] * 5 + ["stop"]
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (2, 5, 7)
    [record] = await fake.wait_requests(1)
    assert (record.outcome, record.status, record.tokens_sent) == ("completed", 200, 5)
    assert record.method == "POST"
    assert record.path == "/v1/chat/completions"
    assert record.body["model"] == "fake-model"
    assert record.headers["authorization"] == "Bearer test"
    assert record.finished_at is not None
    assert record.client_closed_at is None
    assert record.received_at <= record.finished_at <= time.monotonic()
    assert fake.active() == []


async def test_usage_is_only_sent_when_asked(client: openai.AsyncOpenAI) -> None:
    """Without include_usage (or with usage=False in the script) no usage chunk is sent."""
    assert (await _collect(client))[2] is None
    prompt = '#fake {"usage": false}'
    assert (await _collect(client, prompt, stream_options={"include_usage": True}))[2] is None


async def test_text_knob_and_max_tokens(fake: FakeUpstream, client: openai.AsyncOpenAI) -> None:
    """The text knob gives the tokens; max_tokens cuts them with finish reason length."""
    fake.script = Script(text="The quick brown fox.")
    assert await _collect(client) == ("The quick brown fox.", [None] * 4 + ["stop"], None)
    text, reasons, usage = await _collect(
        client, max_tokens=2, stream_options={"include_usage": True}
    )
    assert (text, reasons[-1], usage.completion_tokens) == ("The quick ", "length", 2)
    fake.script = Script(text="a b", tokens=5, finish_reason="content_filter")
    assert await _collect(client) == ("a b a b a ", [None] * 5 + ["content_filter"], None)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (401, openai.AuthenticationError),
        (400, openai.BadRequestError),
    ],
)
async def test_error_status_raises_matching_sdk_error(
    fake: FakeUpstream, client: openai.AsyncOpenAI, status: int, error: type[openai.APIStatusError]
) -> None:
    """A scripted status raises the SDK's matching exception with an OpenAI-style body."""
    fake.script = Script(status=status, retry_after=1.5, error_message="scripted")
    with pytest.raises(error) as caught:
        await _stream(client)
    assert caught.value.status_code == status
    assert caught.value.message.endswith("scripted")
    assert caught.value.response.headers["retry-after-ms"] == "1500"
    [record] = await fake.wait_requests(1)
    assert (record.status, record.outcome, record.tokens_sent) == (status, "completed", 0)


async def test_custom_error_body(fake: FakeUpstream, client: openai.AsyncOpenAI) -> None:
    """error_body is sent as given."""
    fake.script = Script(status=503, error_body={"error": {"message": "overloaded", "code": "x"}})
    with pytest.raises(openai.InternalServerError) as caught:
        await _stream(client)
    assert caught.value.code == "x"
    assert "overloaded" in caught.value.message


async def test_close_after_ends_without_finish_reason(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    """close_after ends the body cleanly after N tokens, with no finish reason and no [DONE]."""
    fake.script = Script(close_after=2)
    text, reasons, _ = await _collect(client, stream_options={"include_usage": True})
    assert (text, reasons) == ("tok0 tok1 ", [None, None])
    [record] = await fake.wait_requests(1)
    assert (record.outcome, record.tokens_sent) == ("scripted_end", 2)
    assert record.finished_at is not None


async def test_reset_after_raises_connection_error(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    """reset_after resets the TCP connection after N tokens: the SDK raises APIConnectionError."""
    fake.script = Script(reset_after=2, interval=0.01)
    received: list[str | None] = []
    stream = await _stream(client)
    with pytest.raises(openai.APIConnectionError):
        await _contents(stream, received)
    assert received == ["tok0 ", "tok1 "]
    [record] = await fake.wait_requests(1)
    assert (record.outcome, record.tokens_sent) == ("reset", 2)
    await fake.wait_for(lambda: fake.connections == 0)


async def test_malformed_after_surfaces(fake: FakeUpstream, client: openai.AsyncOpenAI) -> None:
    """malformed_after sends a data line that is not JSON; the SDK fails to decode it."""
    fake.script = Script(malformed_after=1)
    received: list[str | None] = []
    stream = await _stream(client)
    with pytest.raises(json.JSONDecodeError):
        await _contents(stream, received)
    assert received == ["tok0 "]
    [record] = await fake.wait_requests(1)
    assert (record.outcome, record.tokens_sent) == ("scripted_end", 1)


async def test_error_event_after_raises_api_error(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    """error_event_after sends an error object mid-stream; the SDK raises APIError."""
    fake.script = Script(error_event_after=3, error_message="boom")
    with pytest.raises(openai.APIError, match="boom"):
        await _collect(client)
    [record] = await fake.wait_requests(1)
    assert (record.outcome, record.tokens_sent) == ("scripted_end", 3)


@pytest.mark.parametrize(
    "script",
    [
        Script(ttft=60),
        Script(interval=60),
        Script(stall_after=2, tokens=100),
        Script(tokens=200_000),
    ],
    ids=["ttft", "interval", "stall", "streaming"],
)
async def test_closing_the_sdk_stream_is_recorded_promptly(
    fake: FakeUpstream, client: openai.AsyncOpenAI, script: Script
) -> None:
    """Closing the SDK stream early is seen at once, even while the fake sleeps or stalls."""
    fake.script = script
    async with await _stream(client) as stream:
        if script.ttft == 0:
            await anext(aiter(stream))
        closing = time.monotonic()
    [record] = await fake.wait_requests(1)
    await fake.wait_closed(record, timeout=2 * SCALE)
    assert record.outcome == "client_closed"
    assert record.finished_at is None
    assert record.client_closed_at is not None
    assert record.client_closed_at - closing < 1 * SCALE
    assert record.client_close in ("eof", "reset", "write_error")
    assert fake.active() == []
    await fake.wait_for(lambda: fake.connections == 0)


async def test_cancelling_a_request_waiting_for_headers_is_recorded(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    """A request cancelled while the fake holds back its headers ends as client_closed."""
    fake.script = Script(headers_delay=60)
    request = asyncio.create_task(_stream(client))
    [record] = await fake.wait_requests(1)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert (await fake.wait_closed(record, timeout=2 * SCALE)).outcome == "client_closed"
    assert record.status is None
    assert record.headers_sent_at is None


async def test_stream_close_method_is_recorded(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    """await stream.close() mid-stream ends the fake's response as client_closed."""
    fake.script = Script(interval=60)
    stream = await _stream(client)
    await anext(aiter(stream))
    await stream.close()
    [record] = await fake.wait_requests(1)
    assert (await fake.wait_closed(record, timeout=2 * SCALE)).outcome == "client_closed"
    assert record.tokens_sent == 1


async def test_fake_directive_in_prompt(fake: FakeUpstream, client: openai.AsyncOpenAI) -> None:
    """A '#fake {...}' prompt overrides the default script for that request only."""
    fake.script = Script(tokens=3)
    assert (await _collect(client, '#fake {"tokens": 1, "finish_reason": "length"} hi'))[1] == [
        None,
        "length",
    ]
    with pytest.raises(openai.RateLimitError):
        await _stream(client, '#fake {"status": 429}')
    with pytest.raises(openai.BadRequestError, match="unknown script key"):
        await _stream(client, '#fake {"nope": 1}')
    assert (await _collect(client))[0] == "tok0 tok1 tok2 "
    assert [r.status for r in fake.records] == [200, 429, 400, 200]


async def test_script_for_callback(fake: FakeUpstream, client: openai.AsyncOpenAI) -> None:
    """script_for picks a script per request body; None falls back to the default."""

    def pick(body: Any) -> Script | None:
        """Script by model name."""
        return Script(tokens=1) if body["model"] == "one" else None

    fake.script_for = pick
    assert (await _collect(client))[0] == "tok0 tok1 tok2 tok3 tok4 "
    stream = await client.chat.completions.create(
        model="one", messages=[{"role": "user", "content": "x"}], stream=True
    )
    assert [c.choices[0].delta.content async for c in stream] == ["tok0 ", None]


async def test_keep_alive_serves_requests_on_one_connection(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    """Sequential requests from one client reuse one keep-alive connection."""
    for _ in range(3):
        await _collect(client)
    with pytest.raises(openai.RateLimitError):
        await _stream(client, '#fake {"status": 429}')
    await _collect(client, '#fake {"close_after": 1}')
    await _collect(client)
    assert {r.connection for r in fake.records} == {1}
    assert fake.connections == 1
    assert fake.connections_opened == 1


async def test_timings_are_honoured(fake: FakeUpstream, client: openai.AsyncOpenAI) -> None:
    """headers_delay, ttft and interval delay the response by at least their amounts."""
    fake.script = Script(headers_delay=0.05, ttft=0.05, interval=0.02, tokens=3)
    await _collect(client)
    [record] = fake.records
    assert record.headers_sent_at is not None
    assert record.first_token_at is not None
    assert record.finished_at is not None
    assert record.headers_sent_at - record.received_at >= 0.049
    assert record.first_token_at - record.headers_sent_at >= 0.049
    assert record.finished_at - record.first_token_at >= 0.039


async def test_many_tokens_at_full_speed(fake: FakeUpstream) -> None:
    """With interval 0 a long stream arrives whole and in order, one SSE event per token."""
    fake.script = Script(tokens=20_000)
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    events = []
    url = f"{fake.base_url}/chat/completions"
    async with httpx2.AsyncClient() as http, http.stream("POST", url, json=body) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["transfer-encoding"] == "chunked"
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    texts = [c["choices"][0]["delta"].get("content") for c in chunks]
    assert texts == [f"tok{i} " for i in range(20_000)] + [None]
    assert len({c["id"] for c in chunks}) == 1
    assert fake.records[0].tokens_sent == 20_000


async def test_control_endpoints(fake: FakeUpstream, client: openai.AsyncOpenAI) -> None:
    """/_fake/script sets the default script, /_fake/records lists, /_fake/reset clears."""
    async with httpx2.AsyncClient(base_url=fake.base_url.removesuffix("/v1")) as http:
        answer = await http.post("/_fake/script", json={"tokens": 2, "ttft": 0.01})
        assert answer.status_code == 200
        assert answer.json()["tokens"] == 2
        assert fake.script == Script(tokens=2, ttft=0.01)
        assert (await http.post("/_fake/script", json={"tokens": "x"})).status_code == 400
        assert (await http.get("/_fake/script")).json()["ttft"] == 0.01

        assert (await _collect(client))[0] == "tok0 tok1 "
        [record] = (await http.get("/_fake/records")).json()
        assert record["outcome"] == "completed"
        assert record["tokens_sent"] == 2
        assert record["script"]["tokens"] == 2
        assert record["body"]["messages"][0]["content"] == PROMPT
        assert record["received_at"] <= record["finished_at"] <= time.monotonic()
        stats = (await http.get("/_fake/stats")).json()
        assert stats == {"connections": 1, "active": 0, "requests": 1}

        assert (await http.post("/_fake/reset")).status_code == 200
        assert (await http.get("/_fake/records")).json() == []
        assert fake.records == []
        assert (await http.get("/_fake/nothing")).status_code == 404


async def test_unknown_route_and_non_streaming_are_answered(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    """Unknown routes get 404 and non-streaming completions 400, both recorded."""
    with pytest.raises(openai.NotFoundError):
        await client.models.list()
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert [(r.path, r.status) for r in fake.records] == [
        ("/v1/models", 404),
        ("/v1/chat/completions", 400),
    ]


async def test_raw_http_pipelined_requests_and_bad_request(fake: FakeUpstream) -> None:
    """Two requests sent back to back on one socket are answered in order; garbage gets 400."""
    reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
    try:
        request = b"GET /_fake/stats HTTP/1.1\r\nhost: x\r\n\r\n"
        writer.write(request + request)
        for _ in range(2):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            assert json.loads(await reader.readexactly(length))["connections"] == 0
        writer.write(b"nonsense\r\n\r\n")
        assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 400 ")
        await reader.read()  # the fake closes the connection
    finally:
        writer.close()
        await writer.wait_closed()


async def test_wait_helpers_time_out(fake: FakeUpstream) -> None:
    """The wait helpers raise TimeoutError when nothing happens."""
    with pytest.raises(TimeoutError):
        await fake.wait_requests(1, timeout=0.01)
    record = RequestRecord(0, 0, "GET", "/", {}, None, time.monotonic())
    with pytest.raises(TimeoutError):
        await fake.wait_closed(record, timeout=0.01)


async def test_close_ends_responses_in_progress(client: openai.AsyncOpenAI) -> None:
    """Closing the fake ends a stalled response as server_closed and the client sees an error."""
    fake = FakeUpstream(Script(stall_after=1))
    await fake.start()
    sdk = client.with_options(base_url=fake.base_url)
    try:
        stream = await _stream(sdk)
        await anext(aiter(stream))
        [record] = await fake.wait_requests(1)
    finally:
        await fake.close()
    assert record.outcome == "server_closed"
    assert record.finished_at is not None
    assert fake.active() == []
    assert fake.connections == 0
    with pytest.raises(openai.APIConnectionError):
        await anext(aiter(stream))


async def _deltas(client: openai.AsyncOpenAI, prompt: str = PROMPT, **kwargs: Any) -> list[Any]:
    """Stream one completion; return every chunk's delta (finish chunk included) and the usage."""
    deltas: list[Any] = []
    async with await _stream(client, prompt, **kwargs) as stream:
        async for chunk in stream:
            deltas += [choice.delta for choice in chunk.choices]
            if chunk.usage is not None:
                deltas.append(chunk.usage)
    return deltas


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning_then_answer_with_usage_details(
    fake: FakeUpstream, client: openai.AsyncOpenAI, field: str
) -> None:
    """Reasoning streams first under its field; usage counts every event and has the details."""
    fake.script = Script(
        reasoning=2, reasoning_field=field, tokens=2, reasoning_tokens=2, cached_tokens=1
    )
    *deltas, finish, usage = await _deltas(client, stream_options={"include_usage": True})
    assert [(d.role, d.model_extra.get(field), d.content) for d in deltas] == [
        ("assistant", "think0 ", None),
        (None, "think1 ", None),
        (None, None, "tok0 "),
        (None, None, "tok1 "),
    ]
    assert finish.model_extra == {}
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (2, 4, 6)
    assert usage.completion_tokens_details.reasoning_tokens == 2
    assert usage.prompt_tokens_details.cached_tokens == 1
    [record] = fake.records
    assert (record.outcome, record.tokens_sent) == ("completed", 4)


async def test_parallel_tool_calls_reach_the_sdk(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    """Interleaved tool-call pieces rebuild each call exactly; the finish reason is tool_calls."""
    weather = '{"city": "Z\\"rich \\u00e9", "note": "caf\u00e9 \U0001f600"}'
    fake.script = Script(
        text="Checking.",
        tool_calls=[
            {"name": "get_weather", "arguments": weather, "id": "call_w"},
            {"name": "get_time", "arguments": "{}"},
        ],
        tool_call_split=3,
    )
    calls: dict[int, dict[str, str]] = {}
    order, text, reasons = [], "", []
    async with await _stream(client) as stream:
        async for chunk in stream:
            [choice] = chunk.choices
            text += choice.delta.content or ""
            reasons.append(choice.finish_reason)
            for piece in choice.delta.tool_calls or ():
                order.append(piece.index)
                call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += piece.id or ""
                call["name"] += piece.function.name or ""
                call["arguments"] += piece.function.arguments or ""
    assert text == "Checking."
    assert reasons[-1] == "tool_calls"
    assert order[:4] == [0, 1, 0, 1]  # the openings, then "{}": one fragment of call 1
    assert calls[0] == {"id": "call_w", "name": "get_weather", "arguments": weather}
    assert calls[1]["id"].startswith("call_1_")
    assert (calls[1]["name"], calls[1]["arguments"]) == ("get_time", "{}")
    assert json.loads(weather) == json.loads(calls[0]["arguments"])
    [record] = fake.records
    assert record.tokens_sent == 1 + len(order)  # the text, then one event per piece


async def test_refusal_reaches_the_sdk(fake: FakeUpstream, client: openai.AsyncOpenAI) -> None:
    """A refusal streams as delta.refusal pieces instead of content."""
    fake.script = Script(refusal="I can't help with that.")
    *deltas, finish = await _deltas(client)
    assert "".join(d.refusal for d in deltas) == "I can't help with that."
    assert {d.content for d in deltas} == {None}
    assert finish.refusal is None


async def test_request_parts_are_recorded(fake: FakeUpstream, client: openai.AsyncOpenAI) -> None:
    """Tools, tool choice, response format and tool messages reach the record's parsed body."""
    tools: Any = [
        {
            "type": "function",
            "function": {"name": "f", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages: Any = [
        {"role": "user", "content": '#fake {"tool_calls": [{"name": "f", "arguments": "{}"}]}'},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    stream = await client.chat.completions.create(
        model="m",
        messages=messages,
        tools=tools,
        tool_choice="auto",
        response_format={"type": "json_object"},
        stream=True,
    )
    reasons = [c.choices[0].finish_reason async for c in stream]
    assert reasons[-1] == "tool_calls"  # the directive in the last user message still counts
    [record] = fake.records
    assert record.param("tools") == tools
    assert record.param("tool_choice") == "auto"
    assert record.param("response_format") == {"type": "json_object"}
    assert record.param("nothing", 0) == 0
    assert [m["role"] for m in record.messages] == ["user", "assistant", "tool"]
    assert record.messages[1]["tool_calls"] == [call]
    assert record.messages[2] == messages[2]
    saved = json.loads(json.dumps(record.to_json()))  # as /_fake/records sends it
    assert Script.from_json(saved["script"]) == record.script


async def test_endings_and_timings_count_every_event(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    """Ending knobs, ttft and interval count reasoning and text chunks alike, in stream order."""
    fake.script = Script(reasoning=2, text_chunks=["a", "b"], close_after=3)
    deltas = await _deltas(client)
    assert [d.model_extra.get("reasoning_content") or d.content for d in deltas] == [
        "think0 ",
        "think1 ",
        "a",
    ]
    [record] = fake.records
    assert (record.outcome, record.tokens_sent) == ("scripted_end", 3)

    fake.clear()
    fake.script = Script(reasoning=2, text_chunks=["a"], ttft=0.05, interval=0.02)
    *_, usage = await _deltas(client, max_tokens=10, stream_options={"include_usage": True})
    assert usage.completion_tokens == 3
    [record] = fake.records
    assert record.headers_sent_at is not None
    assert record.first_token_at is not None
    assert record.finished_at is not None
    assert record.first_token_at - record.headers_sent_at >= 0.049
    assert record.finished_at - record.first_token_at >= 0.039  # two more events

    *deltas, _ = await _deltas(client, '#fake {"interval": 0} hi', max_tokens=1)
    assert [d.model_extra["reasoning_content"] for d in deltas] == ["think0 "]
    assert fake.records[-1].tokens_sent == 1


def test_script_validation() -> None:
    """Scripts reject impossible values and unknown keys."""
    with pytest.raises(ValueError, match="interval"):
        Script(interval=-1)
    with pytest.raises(ValueError, match="status"):
        Script(status=42)
    with pytest.raises(ValueError, match="unknown script key"):
        Script.from_json({"speed": 1})
    with pytest.raises(ValueError, match="usage"):
        Script.from_json({"usage": 1})
    assert Script.from_json({"ttft": 1, "error_body": "x"}) == Script(ttft=1, error_body=b"x")
    script = Script(text="  one two", error_body={"a": 1}, tokens=3)
    assert Script.from_json(script.to_json()) == script
    assert script.token_texts() == ["  one ", "two ", "  one "]


async def test_command_line_serves_until_sigterm() -> None:
    """The CLI prints its URL once listening, serves requests and exits 0 on SIGTERM."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aistream.testing.fake_upstream",
        "--script",
        '{"tokens": 2}',
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30 * SCALE):
            line = (await process.stdout.readline()).decode()
        prefix = "fake-upstream listening on "
        assert line.startswith(prefix)
        base_url = line.removeprefix(prefix).strip()
        assert base_url.startswith("http://127.0.0.1:")
        assert base_url.endswith("/v1")
        async with openai.AsyncOpenAI(base_url=base_url, api_key="t", max_retries=0) as sdk:
            assert await _collect(sdk) == ("tok0 tok1 ", [None, None, "stop"], None)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30 * SCALE):
            assert await process.wait() == 0
        assert await process.stdout.read() == b""
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
