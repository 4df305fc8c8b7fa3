"""aistream.generator.openai_upstream: chunk parsing, error mapping, how the body is read
(straight from aiohttp under the SDK, paced under load) against the fake upstream, and the same
conversations through the SDK's public streaming path (the fallback)."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal

import aiohttp
import grpc
import httpx2
import openai
import orjson
import pytest
from conftest import UNIT, GrpcClient, settings_for

from aistream.generator.first_attempts import FirstAttempts
from aistream.generator.openai_upstream import OpenAIUpstream, map_sdk_error, parse_chunk
from aistream.generator.pacing import MIN_INTERVAL, ReadPacing
from aistream.generator.sdk_private import aiohttp_response, is_first_attempt
from aistream.generator.server import GeneratorServer
from aistream.generator.upstream import (
    Abortable,
    Delta,
    Message,
    UpstreamFailure,
    UpstreamRequest,
)
from aistream.testing.fake_upstream import FakeUpstream, Script
from aistream.v1 import events_pb2 as pb


def _request(request_id: str = "r1", prompt: str = "hello") -> UpstreamRequest:
    return UpstreamRequest(request_id, (Message("user", prompt),), None, 10_000, None)


_SHORT = '#fake {"tokens": 1, "interval": 0, "status": 200}'
"""A prompt the fake answers with one token, whatever its script."""


async def _warm(upstream: OpenAIUpstream) -> None:
    """Send one short request through the SDK, so later first attempts go straight to the
    transport (generator/first_attempts.py)."""
    async with upstream.stream(_request("warm", _SHORT)) as stream:
        assert [d async for d in stream][-1].finish_reason == "stop"


async def test_the_sdk_response_is_read_from_aiohttp_directly(fake: FakeUpstream) -> None:
    """The SDK's aiohttp transport is found under its response (so the body is read without the
    iterator wrappers); this fails if an SDK or httpx2 upgrade moves what is reached through."""
    client = openai.AsyncOpenAI(
        base_url=fake.base_url, api_key="k", http_client=openai.DefaultAioHttpClient()
    )
    try:
        async with client.chat.completions.with_streaming_response.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        ) as response:
            assert isinstance(aiohttp_response(response.http_response), aiohttp.ClientResponse)
    finally:
        await client.close()


def test_an_encoded_body_is_left_to_the_sdk() -> None:
    """A content-encoded body is not read raw (the SDK's iterator decodes it)."""
    response = httpx2.Response(
        200, headers={"content-encoding": "gzip"}, content=gzip.compress(b"")
    )
    assert aiohttp_response(response) is None


def test_read_pacing_spreads_the_budget_over_live_answers() -> None:
    """n live answers → n / budget seconds between reads, capped; nothing under the minimum."""
    pacing = ReadPacing(reads_per_s=1000, max_interval=0.2)
    assert pacing.interval() == 0.0
    for _ in range(100):
        pacing.opened()
    assert pacing.interval() == pytest.approx(0.1)
    for _ in range(400):
        pacing.opened()
    assert pacing.interval() == 0.2
    for _ in range(500 - int(MIN_INTERVAL * 1000) + 1):
        pacing.closed()
    assert pacing.interval() == 0.0
    assert ReadPacing(reads_per_s=0, max_interval=1.0).interval() == 0.0


async def _collect(upstream: OpenAIUpstream, request_id: str) -> tuple[list[Delta], float]:
    """Every delta of one answer, and when (loop time) the first token came."""
    deltas: list[Delta] = []
    first = 0.0
    async with upstream.stream(_request(request_id)) as stream:
        async for delta in stream:
            if delta.count and not first:
                first = asyncio.get_running_loop().time()
            deltas.append(delta)
    return deltas, first


@pytest.mark.parametrize("reads_per_s", [0, 10])
async def test_paced_reads_coalesce_tokens_and_lose_none(reads_per_s: int) -> None:
    """Under pacing, tokens that arrive between two reads come as one delta (count > 1), in
    order, none lost; without it, one per token. The first token is not held back."""
    script = Script(tokens=30, interval=0.005, usage=True)
    async with FakeUpstream(script) as fake:
        settings = settings_for(fake, upstream_reads_per_s=reads_per_s, max_read_interval=0.05)
        upstream = OpenAIUpstream(settings)
        try:
            start = asyncio.get_running_loop().time()
            deltas, first = await _collect(upstream, "r1")
        finally:
            await upstream.aclose()
        record = fake.records[0]
    text = "".join(d.text for d in deltas)
    assert sum(d.count for d in deltas) == 30
    assert text == "".join(script.token_texts())
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].completion_tokens == 30
    counted = [d.count for d in deltas if d.count]
    if reads_per_s:
        assert max(counted) > 1 and len(counted) < 30
    assert first - start < 2 * UNIT
    assert record.outcome == "completed"


@pytest.mark.parametrize("reads_per_s", [0, 10])
async def test_paced_reads_coalesce_reasoning_too(reads_per_s: int) -> None:
    """Reasoning is paced like answer text: pieces that arrive between two reads come as one
    delta (merged by kind), in order, none lost, none mixed into the answer."""
    script = Script(tokens=5, reasoning=30, interval=0.005, usage=True)
    async with FakeUpstream(script) as fake:
        settings = settings_for(fake, upstream_reads_per_s=reads_per_s, max_read_interval=0.05)
        upstream = OpenAIUpstream(settings)
        try:
            deltas, _ = await _collect(upstream, "r1")
        finally:
            await upstream.aclose()
    assert sum(d.reasoning_count for d in deltas) == 30
    assert "".join(d.reasoning for d in deltas) == "".join(f"think{i} " for i in range(30))
    assert "".join(d.text for d in deltas) == "tok0 tok1 tok2 tok3 tok4 "
    assert all(not (d.reasoning and d.text) for d in deltas)
    counted = [d.reasoning_count for d in deltas if d.reasoning_count]
    if reads_per_s:
        assert max(counted) > 1 and len(counted) < 30
    else:
        assert len(counted) > 10  # (unpaced: about one read per piece)


async def test_an_answer_already_all_received_is_read_to_its_end_under_pacing() -> None:
    """A body that arrived whole — larger than one read, the HTTP message already complete — is
    read to its end under pacing: there is nothing left on the socket to hold (aiohttp refuses
    to pause a parser between messages), so no read is held and no token lost."""
    script = Script(tokens=1_000, interval=0, text="t" * 40, usage=True)  # ~110 KB, unpaced
    async with FakeUpstream(script) as fake:
        settings = settings_for(fake, upstream_reads_per_s=1, max_read_interval=0.05)
        upstream = OpenAIUpstream(settings)
        try:
            async with upstream.stream(_request()) as stream:
                await asyncio.sleep(0.2)  # the whole body arrives (two reads' worth)
                deltas = [delta async for delta in stream]
        finally:
            await upstream.aclose()
    assert sum(d.count for d in deltas) == 1_000
    assert deltas[-1].finish_reason == "stop"


async def test_a_held_answer_still_closes_its_connection_when_abandoned() -> None:
    """Leaving the stream while its socket is held (paused) closes the upstream connection."""
    async with FakeUpstream(Script(tokens=1000, interval=0.005)) as fake:
        settings = settings_for(fake, upstream_reads_per_s=1, max_read_interval=0.5)
        upstream = OpenAIUpstream(settings)
        try:
            async with upstream.stream(_request()) as stream:
                async for delta in stream:
                    if delta.count:
                        break  # the socket is now paused for 0.5 s
            record = await fake.wait_closed(fake.records[0], 2 * UNIT)
        finally:
            await upstream.aclose()
    assert record.outcome == "client_closed"
    assert record.tokens_sent < 1000


def test_parse_chunk_reads_text_finish_and_usage() -> None:
    """A chat-completion chunk gives its text, finish reason and usage."""
    delta = parse_chunk(
        b'{"choices":[{"delta":{"content":"Hi"},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":1}}'
    )
    assert (delta.text, delta.count, delta.finish_reason) == ("Hi", 1, "stop")
    assert (delta.prompt_tokens, delta.completion_tokens) == (3, 1)


@pytest.mark.parametrize("data", [b"{not json", b"[1]", b'{"error":{"message":"boom"}}'])
def test_parse_chunk_refuses_what_is_not_a_chunk(data: bytes) -> None:
    """Malformed JSON, a non-object and an error event are upstream failures."""
    with pytest.raises(UpstreamFailure) as info:
        parse_chunk(data)
    assert info.value.code == pb.ERROR_CODE_UPSTREAM_ERROR
    assert "boom" not in info.value.message


def test_map_sdk_error_unknown_is_internal() -> None:
    """An exception the table does not know becomes internal, with a generic message."""
    failure = map_sdk_error(RuntimeError("secret detail"))
    assert failure.code == pb.ERROR_CODE_INTERNAL
    assert "secret" not in failure.message


def test_map_sdk_error_timeout() -> None:
    """The SDK's timeout is our timeout (retryable)."""
    request = httpx2.Request("POST", "http://127.0.0.1:1/v1/chat/completions")
    failure = map_sdk_error(openai.APITimeoutError(request=request))
    assert (failure.code, failure.retryable) == (pb.ERROR_CODE_TIMEOUT, True)


@pytest.mark.parametrize(
    ("warm", "sdk_path"),
    [(False, "auto"), (True, "auto"), (False, "public")],
    ids=["sdk", "first-attempt", "public"],
)
async def test_abort_closes_the_connection_before_the_block_is_left(
    warm: bool, sdk_path: Literal["auto", "public"]
) -> None:
    """``abort()`` (what a cancel calls) closes the upstream connection at once: the upstream
    sees it while the reading code is still inside its ``async with`` — whether the SDK opened
    the request, its first attempt went straight to the transport, or the SDK's public path
    streams it."""
    async with FakeUpstream(Script(tokens=1000, interval=0.01)) as fake:
        upstream = OpenAIUpstream(settings_for(fake), sdk_path=sdk_path)
        try:
            if warm:
                await _warm(upstream)
                fake.clear()
            opened = upstream.stream(_request())
            assert isinstance(opened, Abortable)
            async with opened as stream:
                async for delta in stream:
                    if delta.count:
                        break
                opened.abort()
                record = await fake.wait_closed(fake.records[0], 2 * UNIT)
                assert record.outcome == "client_closed"
        finally:
            await upstream.aclose()


async def test_first_attempts_send_what_the_sdk_sends() -> None:
    """Once the SDK has sent a request, first attempts go straight to its transport with the
    same URL, headers and body (only the length differs with the body); the response is read
    from aiohttp directly as before."""
    async with FakeUpstream(Script(tokens=3)) as fake:
        upstream = OpenAIUpstream(settings_for(fake))
        try:
            for request_id in ("r1", "r2-longer-id"):
                deltas, _ = await _collect(upstream, request_id)
                assert sum(d.count for d in deltas) == 3
            assert upstream._first.sent_first == 1
            response = await upstream._first.send_first(b'{"model":"m","messages":[]}')
            try:
                assert isinstance(aiohttp_response(response), aiohttp.ClientResponse)
            finally:
                await response.aclose()
        finally:
            await upstream.aclose()
    by_sdk, direct = fake.records[0], fake.records[1]
    assert (direct.method, direct.path, direct.body) == (by_sdk.method, by_sdk.path, by_sdk.body)
    assert direct.headers.pop("content-length") == str(len(orjson.dumps(direct.body)))
    by_sdk.headers.pop("content-length")
    assert direct.headers == by_sdk.headers
    assert direct.headers["authorization"] == "Bearer test-key"
    assert direct.headers["x-stainless-retry-count"] == "0"


@pytest.mark.parametrize(
    ("retries", "answers", "statuses", "code"),
    [
        (1, [500, 200], [500, 200], None),
        (0, [500], [500], pb.ERROR_CODE_UPSTREAM_ERROR),
        (2, [400], [400], pb.ERROR_CODE_UPSTREAM_ERROR),
        (1, [429, 429], [429, 429], pb.ERROR_CODE_RATE_LIMITED),
        (2, [401], [401], pb.ERROR_CODE_UPSTREAM_ERROR),
    ],
    ids=["retried", "no-retries", "not-retryable", "retries-spent", "refused-credentials"],
)
async def test_a_failed_first_attempt_is_the_sdks_first_attempt(
    retries: int, answers: list[int], statuses: list[int], code: int | None
) -> None:
    """A first attempt that fails is handed to the SDK, which takes it as its own first
    attempt: its retry rules decide, Retry-After is honoured, its typed error ends it, and the
    upstream gets exactly 1 + (retries the SDK chose) requests — never one more."""
    queue = iter(answers)
    scripts = {
        status: Script(tokens=2) if status == 200 else Script(status=status, retry_after=0.05)
        for status in answers
    }
    async with FakeUpstream(Script(tokens=1)) as fake:
        upstream = OpenAIUpstream(settings_for(fake, upstream_max_retries=retries))
        try:
            await _warm(upstream)
            fake.clear()
            fake.script_for = lambda body: scripts[next(queue)]
            if code is None:
                deltas, _ = await _collect(upstream, "r1")
                assert sum(d.count for d in deltas) == 2
            else:
                with pytest.raises(UpstreamFailure) as info:
                    await _collect(upstream, "r1")
                assert info.value.code == code
            assert upstream._first.sent_first == 1
        finally:
            await upstream.aclose()
    assert [r.status for r in fake.records] == statuses
    if len(fake.records) == 2:  # the SDK waited as the 429/500 asked before trying again
        assert fake.records[1].received_at - fake.records[0].received_at >= 0.05
    assert fake.records[-1].headers["x-stainless-retry-count"] == str(len(statuses) - 1)


async def test_a_first_attempt_that_cannot_connect_is_the_sdks_to_judge() -> None:
    """The upstream gone after the SDK's first request: the first attempt's connection error
    goes to the SDK, which reports it as it would its own (unavailable)."""
    fake = FakeUpstream(Script(tokens=1))
    await fake.start()
    upstream = OpenAIUpstream(settings_for(fake, upstream_max_retries=1))
    try:
        await _warm(upstream)
        await fake.close()
        with pytest.raises(UpstreamFailure) as info:
            await _collect(upstream, "r1")
        assert (info.value.code, info.value.retryable) == (pb.ERROR_CODE_UNAVAILABLE, True)
        assert upstream._first.sent_first == 1
    finally:
        await upstream.aclose()


async def test_a_replay_the_sdk_never_took_is_closed() -> None:
    """A failed first attempt's response is closed when the block ends, taken or not."""
    transport = FirstAttempts(
        httpx2.MockTransport(lambda request: httpx2.Response(500)), "/x", is_first_attempt
    )
    response = httpx2.Response(503, stream=httpx2.ByteStream(b"busy"))
    async with transport.replaying(response):
        pass
    assert response.is_closed


async def test_the_fast_path_is_used_when_the_sdk_passes_its_checks() -> None:
    """With the installed SDK, answers are read straight from aiohttp and, after the first,
    sent as first attempts below the SDK (a regression here would only be slower)."""
    async with FakeUpstream(Script(tokens=3)) as fake:
        upstream = OpenAIUpstream(settings_for(fake))
        try:
            assert upstream.path == "fast"
            for request_id in ("r1", "r2"):
                opened = upstream.stream(_request(request_id))
                async with opened as stream:
                    assert [d async for d in stream][-1].finish_reason == "stop"
                assert getattr(opened, "direct", False)
            assert upstream._first is not None and upstream._first.sent_first == 1
        finally:
            await upstream.aclose()


# --- the same conversations on both paths (gRPC in, fake upstream out) ------------------------

SECRET = "SECRET-upstream-detail-10.1.2.3"
SdkPath = Literal["auto", "public"]
Gen = Callable[..., Awaitable[GrpcClient]]


@pytest.fixture(params=["auto", "public"], ids=["fast", "public"])
async def gen(request: pytest.FixtureRequest, fake: FakeUpstream) -> AsyncIterator[Gen]:
    """Start a generator on the fake whose upstream streams by the fast or the public path;
    returns a recording gRPC client. At the end no upstream request or connection is left."""
    sdk_path: SdkPath = request.param
    started: list[tuple[GeneratorServer, grpc.aio.Channel, GrpcClient]] = []

    async def start(**overrides: object) -> GrpcClient:
        settings = settings_for(fake, **overrides)
        upstream = OpenAIUpstream(settings, sdk_path=sdk_path)
        assert upstream.path == ("fast" if sdk_path == "auto" else "public")
        server = GeneratorServer(settings, upstream=upstream)
        port = await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        client = GrpcClient(channel, f"grpc-{sdk_path}")
        started.append((server, channel, client))
        return client

    yield start
    for server, channel, client in started:
        client.call.cancel()
        await channel.close(None)
        await server.stop(drain_timeout=0)
    await fake.wait_for(lambda: not fake.active() and not fake.connections)


async def _answer(client: GrpcClient, request_id: str) -> tuple[list[str], str, pb.ServerEvent]:
    """Read ``request_id``'s events to its end: their kinds, its text, the terminal event."""
    kinds: list[str] = []
    text = ""
    while True:
        event = await client.recv()
        kind = event.WhichOneof("event")
        assert kind is not None
        kinds.append(kind)
        if kind == "token":
            text += event.token.chunk
        if kind in ("done", "error"):
            return kinds, text, event


async def test_a_complete_answer(fake: FakeUpstream, gen: Gen) -> None:
    """Start, the tokens in order, then Done with the finish reason and the upstream's usage."""
    fake.script = Script(tokens=4, interval=0.005)
    client = await gen()
    await client.generate("r1", "tell me")
    kinds, text, end = await _answer(client, "r1")
    assert kinds[0] == "start" and kinds[-1] == "done" and set(kinds[1:-1]) == {"token"}
    assert text == "tok0 tok1 tok2 tok3 "
    assert end.done.finish_reason == pb.FINISH_REASON_STOP
    assert end.done.usage.source == pb.USAGE_SOURCE_UPSTREAM
    assert end.done.usage.completion_tokens == 4
    assert fake.records[0].body["stream_options"] == {"include_usage": True}
    assert fake.records[0].outcome == "completed"


async def test_a_finish_reason_without_usage_is_done_with_an_estimate(
    fake: FakeUpstream, gen: Gen
) -> None:
    """An upstream that sends no usage: Done with its finish reason and estimated usage."""
    fake.script = Script(tokens=3, usage=False, finish_reason="length")
    client = await gen()
    await client.generate("r1")
    _, _, end = await _answer(client, "r1")
    assert end.done.finish_reason == pb.FINISH_REASON_LENGTH
    assert end.done.usage.source == pb.USAGE_SOURCE_ESTIMATED
    assert end.done.usage.completion_tokens == 3


async def test_cancel_closes_the_upstream(fake: FakeUpstream, gen: Gen) -> None:
    """Cancel ends the id with Error(cancelled) and the upstream sees its connection closed."""
    fake.script = Script(tokens=1000, interval=0.01)
    client = await gen()
    await client.generate("r1")
    while (await client.recv()).WhichOneof("event") != "token":
        pass
    await client.cancel("r1")
    end = await client.finish("r1")
    assert end.error.code == pb.ERROR_CODE_CANCELLED
    record = await fake.wait_closed(fake.records[0], 2 * UNIT)
    assert record.outcome == "client_closed"
    assert record.tokens_sent < 1000


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (400, pb.ERROR_CODE_UPSTREAM_ERROR, False),
        (401, pb.ERROR_CODE_UPSTREAM_ERROR, False),
        (429, pb.ERROR_CODE_RATE_LIMITED, True),
        (500, pb.ERROR_CODE_UPSTREAM_ERROR, True),
    ],
)
async def test_status_errors_map_to_the_same_codes(
    fake: FakeUpstream, gen: Gen, status: int, code: int, retryable: bool
) -> None:
    """An error status ends in its code, without the upstream's text."""
    fake.script = Script(status=status, error_message=SECRET)
    client = await gen()
    await client.generate("r1")
    end = await client.finish("r1")
    assert (end.error.code, end.error.retryable) == (code, retryable)
    assert SECRET not in str(end)


async def test_retries_and_unreachable(fake: FakeUpstream, gen: Gen) -> None:
    """A 500 then a good answer is Done after two requests; a refused connection is
    unavailable (retryable)."""
    answers = iter([Script(status=500, retry_after=0.01), Script(tokens=3)])
    fake.script_for = lambda body: next(answers)
    client = await gen(upstream_max_retries=2)
    await client.generate("r1")
    assert (await client.finish("r1")).WhichOneof("event") == "done"
    assert [r.status for r in fake.records] == [500, 200]
    closed = FakeUpstream()
    await closed.start()
    url = closed.base_url
    await closed.close()
    client = await gen(base_url=url)
    await client.generate("r2")
    end = await client.finish("r2")
    assert (end.error.code, end.error.retryable) == (pb.ERROR_CODE_UNAVAILABLE, True)


@pytest.mark.parametrize(
    ("script", "words"),
    [
        (Script(tokens=10, close_after=3), "before finishing"),
        (Script(tokens=10, reset_after=3), "connection failed"),
        (Script(tokens=10, malformed_after=3), "malformed"),
        (Script(tokens=10, error_event_after=3, error_message=SECRET), "failed during"),
    ],
    ids=["truncated", "reset", "malformed", "error-event"],
)
async def test_a_cut_stream_is_an_error_never_done(
    fake: FakeUpstream, gen: Gen, script: Script, words: str
) -> None:
    """Truncation, reset, malformed SSE and error events after tokens end in a retryable
    upstream_error saying which, with the tokens sent so far counted."""
    fake.script = script
    client = await gen()
    await client.generate("r1")
    end = await client.finish("r1")
    assert end.WhichOneof("event") == "error"
    assert (end.error.code, end.error.retryable) == (pb.ERROR_CODE_UPSTREAM_ERROR, True)
    assert words in end.error.message
    assert SECRET not in str(end)
    assert end.error.usage.completion_tokens == 3


@pytest.mark.parametrize("sdk_path", ["auto", "public"])
async def test_every_part_decodes_the_same_on_both_paths(
    sdk_path: Literal["auto", "public"],
) -> None:
    """Reasoning (vLLM's field name here), text, a refusal, parallel tool-call pieces and usage
    details come out of the fast path and the SDK's public, typed path alike (the typed chunks'
    unknown fields, such as ``reasoning``, go through the same decoder)."""
    calls = [
        {"id": "c0", "name": "f", "arguments": '{"a": "é\\"x"}'},
        {"id": "c1", "name": "g", "arguments": "[1, 2, 3]"},
    ]
    script = Script(
        reasoning=3,
        reasoning_field="reasoning",
        text_chunks=["Hi ", "there"],
        refusal="no way",
        tool_calls=calls,
        reasoning_tokens=3,
        cached_tokens=4,
    )
    async with FakeUpstream(script) as fake:
        upstream = OpenAIUpstream(settings_for(fake), sdk_path=sdk_path)
        try:
            assert upstream.path == ("public" if sdk_path == "public" else "fast")
            async with upstream.stream(_request()) as stream:
                deltas = [delta async for delta in stream]
        finally:
            await upstream.aclose()
    assert "".join(d.reasoning for d in deltas) == "think0 think1 think2 "
    assert "".join(d.text for d in deltas) == "Hi there"
    assert "".join(d.refusal for d in deltas).split() == ["no", "way"]
    pieces = [piece for d in deltas for piece in d.calls or []]
    for index, call in enumerate(calls):
        mine = [p for p in pieces if p.index == index]
        assert (mine[0].id, mine[0].name) == (call["id"], call["name"])
        assert "".join(p.arguments for p in mine) == call["arguments"]
    assert deltas[-1].finish_reason == "tool_calls" or any(
        d.finish_reason == "tool_calls" for d in deltas
    )
    usage = [d for d in deltas if d.prompt_tokens is not None]
    assert (usage[-1].reasoning_tokens, usage[-1].cached_tokens) == (3, 4)
