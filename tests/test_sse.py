"""aistream.generator.sse: the incremental SSE decoder, fed bytes split every possible way."""

from __future__ import annotations

import pytest

from aistream.generator.sse import EventTooLarge, SSEDecoder

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


def test_an_event_up_to_the_cap_passes_and_one_byte_more_does_not() -> None:
    """The cap counts an event's data (lines joined); at the cap it passes, past it it raises."""
    decoder = SSEDecoder(max_event_bytes=10)
    assert decoder.feed(b"data: 1234\ndata: 56789\n\n") == [b"1234\n56789"]
    with pytest.raises(EventTooLarge):
        decoder.feed(b"data: 12345\ndata: 678901\n\n")


def test_data_lines_without_a_blank_line_are_cut_at_the_cap() -> None:
    """Many small data lines and no blank line: EventTooLarge once they pass the cap."""
    decoder = SSEDecoder(max_event_bytes=1000)
    with pytest.raises(EventTooLarge):
        for _ in range(1000):
            decoder.feed(b"data: x\n")


def test_a_line_that_never_ends_is_cut_at_the_cap() -> None:
    """Bytes with no line ending at all: EventTooLarge once the waiting line passes the cap."""
    decoder = SSEDecoder(max_event_bytes=1000)
    assert decoder.feed(b"data: " + b"x" * 900) == []
    with pytest.raises(EventTooLarge):
        decoder.feed(b"x" * 200)
