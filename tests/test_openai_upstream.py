"""aistream.generator.openai_upstream: chunk parsing, error mapping, and how the body is read
(straight from aiohttp under the SDK, paced under load) against the fake upstream."""

from __future__ import annotations

import asyncio
import gzip

import aiohttp
import httpx2
import openai
import orjson
import pytest
from aistream.generator.first_attempts import FirstAttempts
from aistream.generator.openai_upstream import (
    OpenAIUpstream,
    _aiohttp_response,
    map_sdk_error,
    parse_chunk,
)
from aistream.generator.pacing import MIN_INTERVAL, ReadPacing
from aistream.generator.upstream import Abortable, Delta, UpstreamFailure, UpstreamRequest
from conftest import UNIT, settings_for

from aistream.testing.fake_upstream import FakeUpstream, Script
from aistream.v1 import events_pb2 as pb


def _request(request_id: str = "r1", prompt: str = "hello") -> UpstreamRequest:
    return UpstreamRequest(request_id, (("user", prompt),), None, 10_000, None)


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
            assert isinstance(_aiohttp_response(response.http_response), aiohttp.ClientResponse)
    finally:
        await client.close()


def test_an_encoded_body_is_left_to_the_sdk() -> None:
    """A content-encoded body is not read raw (the SDK's iterator decodes it)."""
    response = httpx2.Response(
        200, headers={"content-encoding": "gzip"}, content=gzip.compress(b"")
    )
    assert _aiohttp_response(response) is None


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


@pytest.mark.parametrize("warm", [False, True], ids=["sdk", "first-attempt"])
async def test_abort_closes_the_connection_before_the_block_is_left(warm: bool) -> None:
    """``abort()`` (what a cancel calls) closes the upstream connection at once: the upstream
    sees it while the reading code is still inside its ``async with`` — whether the SDK opened
    the request or its first attempt went straight to the transport."""
    async with FakeUpstream(Script(tokens=1000, interval=0.01)) as fake:
        upstream = OpenAIUpstream(settings_for(fake))
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
                assert isinstance(_aiohttp_response(response), aiohttp.ClientResponse)
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
    transport = FirstAttempts(httpx2.MockTransport(lambda request: httpx2.Response(500)), "/x")
    response = httpx2.Response(503, stream=httpx2.ByteStream(b"busy"))
    async with transport.replaying(response):
        pass
    assert response.is_closed
