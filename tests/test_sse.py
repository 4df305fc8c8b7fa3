"""aistream.generator.sse: the incremental SSE decoder, fed bytes split every possible way."""

from __future__ import annotations

import pytest
from aistream.generator.sse import SSEDecoder

STREAM = (
    b'data: {"a":1}\n\n: comment\n\ndata: {"b":2}\r\n\r\n'
    b"event: x\ndata: line1\ndata: line2\n\ndata: [DONE]\n\n"
)
EVENTS = [b'{"a":1}', b'{"b":2}', b"line1\nline2", b"[DONE]"]


def test_whole_stream_decodes() -> None:
    """Events, comments, CRLF and multi-line data decode in one feed."""
    assert SSEDecoder().feed(STREAM) == EVENTS


@pytest.mark.parametrize("size", [1, 2, 3, 7, 13])
def test_any_split_gives_the_same_events(size: int) -> None:
    """Splitting the bytes anywhere (even inside CRLF) gives the same events."""
    decoder = SSEDecoder()
    events = []
    for i in range(0, len(STREAM), size):
        events += decoder.feed(STREAM[i : i + size])
    assert events == EVENTS


def test_lone_cr_line_endings() -> None:
    """CR alone ends lines too (a trailing CR waits: it may be the first half of CRLF)."""
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\r\rdata: y\r\r") == [b"x"]
    assert decoder.feed(b"data: z\n\n") == [b"y", b"z"]


def test_incomplete_event_waits() -> None:
    """An event is only returned once its blank line arrives."""
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\n") == []
    assert decoder.feed(b"\n") == [b"x"]
