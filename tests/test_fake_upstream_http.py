"""The fake upstream's HTTP/1.1 (h11) on a raw socket: framing, keep-alive and half-closes."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from aistream.testing.fake_upstream import FakeUpstream, Script
from aistream.testing.fake_upstream.chunks import DONE, render_stream, sse_event, usage_chunk

SCALE = float(os.environ.get("AISTREAM_TEST_TIME_SCALE", "1"))
"""Multiplies every time limit in this module, for slow machines."""
BODY = json.dumps(
    {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
).encode()


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    """A started fake upstream, closed after the test."""
    async with FakeUpstream() as upstream:
        yield upstream


def _post(body: bytes = BODY, extra: bytes = b"") -> bytes:
    """A streaming completion request with a content-length body."""
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n%s\r\n%s" % (len(body), extra, body)
    )


async def _head(reader: asyncio.StreamReader) -> dict[str, str]:
    """Read a response head; return its headers, the status line under ``""``."""
    lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {"": lines[0]}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return headers


async def _chunks(reader: asyncio.StreamReader) -> list[bytes]:
    """Read a chunked response body; return its HTTP chunks' payloads, in order."""
    chunks = []
    async with asyncio.timeout(5 * SCALE):
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            chunks.append(await reader.readexactly(size))
            assert await reader.readexactly(2) == b"\r\n"
        assert await reader.readuntil(b"\r\n") == b"\r\n"  # no trailers
    return chunks


async def _stream_body(fake: FakeUpstream, script: Script, body: bytes = BODY) -> list[bytes]:
    """Send one streaming request answered by ``script``; return the body's HTTP chunks."""
    fake.script = script
    reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
    try:
        writer.write(_post(body))
        assert (await _head(reader))[""] == "HTTP/1.1 200 OK"
        return await _chunks(reader)
    finally:
        writer.close()
        await writer.wait_closed()


def _payloads(data: bytes) -> list[bytes]:
    """The payloads of the ``data:`` events of a stream."""
    events = data.split(b"\n\n")
    assert events.pop() == b""
    assert all(e.startswith(b"data: ") for e in events)
    return [e[6:] for e in events]


async def test_text_only_stream_is_byte_for_byte_the_cached_render(fake: FakeUpstream) -> None:
    """A text-only stream sends the text path's render, stamped, then usage (with details if
    scripted) and [DONE], whatever other new knobs say."""
    usage_body = json.dumps(
        {
            "model": "m",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "hi"}],
        }
    ).encode()
    for details, script in [
        ({}, Script(text='Sa\u00eft "\U0001f600"\n ok', tokens=4)),
        ({"reasoning": 3, "cached": 1}, Script(tokens=4, reasoning_tokens=3, cached_tokens=1)),
        ({}, Script(tokens=4, tool_call_split=2, reasoning_field="reasoning", write_bytes=4096)),
    ]:
        data = b"".join(await _stream_body(fake, script, usage_body))
        first = orjson.loads(_payloads(data)[0])
        chat_id, created = first["id"], first["created"]
        expected = render_stream(script.token_texts(), "m", "stop").stamp(chat_id, created)
        expected += sse_event(usage_chunk(chat_id, created, "m", 1, 4, **details)) + DONE
        assert data == expected


async def test_write_bytes_cuts_inside_utf8_characters(fake: FakeUpstream) -> None:
    """write_bytes sends the body in small HTTP chunks, cutting characters, yet it decodes."""
    text = "\u00e9\U0001f600" * 8
    chunks = await _stream_body(fake, Script(text_chunks=[text, "x"], reasoning=1, write_bytes=7))
    assert all(len(c) <= 7 for c in chunks)

    def broken(chunk: bytes) -> bool:
        """Whether a piece alone is not valid UTF-8."""
        try:
            chunk.decode()
        except UnicodeDecodeError:
            return True
        return False

    assert any(broken(c) for c in chunks)
    payloads = _payloads(b"".join(chunks).decode().encode())
    assert payloads[-1] == b"[DONE]"
    deltas = [orjson.loads(p)["choices"][0]["delta"] for p in payloads[:-1]]
    assert deltas == [
        {"role": "assistant", "reasoning_content": "think0 "},
        {"content": text},
        {"content": "x"},
        {},
    ]
    [record] = fake.records
    assert (record.outcome, record.tokens_sent) == ("completed", 3)


async def test_raw_deltas_go_out_verbatim(fake: FakeUpstream) -> None:
    """Each raw delta is sent as given, one chunk each, then the finish chunk."""
    raw: list[dict[str, Any]] = [
        {"tool_calls": [{"index": 7, "function": {"arguments": '"x'}}]},
        {"tool_calls": "garbage"},
        {"content": None, "role": "robot", "extra": {"\u00e9": [1.5, None, True]}},
        {},
    ]
    data = b"".join(await _stream_body(fake, Script(raw_deltas=raw)))
    payloads = _payloads(data)
    assert payloads.pop() == b"[DONE]"
    assert len(payloads) == len(raw) + 1
    for payload, delta in zip(payloads, raw, strict=False):
        assert b'"delta":' + orjson.dumps(delta) + b',"logprobs"' in payload
    assert orjson.loads(payloads[-1])["choices"][0]["finish_reason"] == "stop"
    assert [orjson.loads(p)["choices"][0]["delta"] for p in payloads[:-1]] == raw


async def test_half_close_after_the_request_counts_as_gone(fake: FakeUpstream) -> None:
    """A client that half-closes its side while a stream stalls is recorded as closed by EOF."""
    fake.script = Script(stall_after=1)
    reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
    try:
        writer.write(_post())
        assert (await _head(reader))[""] == "HTTP/1.1 200 OK"
        [record] = await fake.wait_requests(1)
        await fake.wait_for(lambda: record.tokens_sent == 1)
        writer.write_eof()
        await fake.wait_closed(record, timeout=2 * SCALE)
        assert (record.outcome, record.client_close) == ("client_closed", "eof")
        await asyncio.wait_for(reader.read(), 5 * SCALE)  # the fake closes its side too
    finally:
        writer.close()
        await writer.wait_closed()


async def test_chunked_request_body_and_connection_close(fake: FakeUpstream) -> None:
    """A chunked request body is read whole; ``connection: close`` is honoured after the stream."""
    half = len(BODY) // 2
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
        b"connection: close\r\n\r\n%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n"
        % (half, BODY[:half], len(BODY) - half, BODY[half:])
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
    try:
        writer.write(request)
        head = await _head(reader)
        assert head["connection"] == "close"
        assert head["transfer-encoding"] == "chunked"
        rest = await asyncio.wait_for(reader.read(), 5 * SCALE)  # to EOF: the fake closed
        assert rest.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
        [record] = fake.records
        assert (record.outcome, record.tokens_sent, record.body["model"]) == ("completed", 5, "m")
    finally:
        writer.close()
        await writer.wait_closed()


async def test_head_request_gets_no_body_and_keeps_the_connection(fake: FakeUpstream) -> None:
    """A HEAD request to an unknown path gets a 404 head only; the connection serves on."""
    reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
    try:
        writer.write(b"HEAD /v1/models HTTP/1.1\r\nhost: x\r\n\r\n" + _post())
        head = await _head(reader)
        assert head[""] == "HTTP/1.1 404 Not Found"
        assert int(head["content-length"]) > 0
        assert (await _head(reader))[""] == "HTTP/1.1 200 OK"  # no 404 body came between
        await fake.wait_idle()
        assert [(r.method, r.status, r.connection) for r in fake.records] == [
            ("HEAD", 404, 1),
            ("POST", 200, 1),
        ]
    finally:
        writer.close()
        await writer.wait_closed()


async def test_client_leaving_mid_body_is_not_answered(fake: FakeUpstream) -> None:
    """A request whose body never arrives whole is neither recorded nor answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
    try:
        writer.write(_post()[:-3])
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5 * SCALE) == b""
        assert fake.records == []
    finally:
        writer.close()
        await writer.wait_closed()


async def test_oversized_head_gets_400(fake: FakeUpstream) -> None:
    """A request head beyond the limit is refused with a 400 and the connection closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n")
        head = await _head(reader)
        assert head[""] == "HTTP/1.1 400 Bad Request"
        assert head["connection"] == "close"
        body = await asyncio.wait_for(reader.read(), 5 * SCALE)
        assert json.loads(body)["error"]["type"] == "bad_request"
        assert fake.records == []
    finally:
        writer.close()
        await writer.wait_closed()
