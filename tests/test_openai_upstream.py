"""generator.openai_upstream, the pure parts: chunk parsing, error mapping, body reading."""

from __future__ import annotations

import gzip

import httpx2
import openai
import pytest

from aistream.v1 import events_pb2 as pb
from generator.openai_upstream import _body, map_sdk_error, parse_chunk
from generator.upstream import UpstreamFailure


async def _read(response: httpx2.Response) -> bytes:
    return b"".join([chunk async for chunk in _body(response)])


@pytest.mark.parametrize("encoding", [None, "gzip"])
async def test_body_is_decoded_whatever_the_content_encoding(encoding: str | None) -> None:
    """An SSE body reads the same with or without a content encoding."""
    raw = b'data: {"choices":[]}\n\n'
    headers = {"content-encoding": encoding} if encoding else {}
    content = gzip.compress(raw) if encoding else raw
    assert await _read(httpx2.Response(200, headers=headers, content=content)) == raw


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
