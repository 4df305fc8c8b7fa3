"""A pure, incremental Server-Sent Events decoder: bytes in, event data out.

Only what an OpenAI-compatible stream uses is kept: ``data:`` fields (joined with newlines when an
event has several), comments and other fields are skipped, an empty line dispatches the event.
Lines may end with LF, CRLF or CR, and may be split anywhere across network reads.

Memory is bounded whatever the upstream sends: a line still waiting for its end, or the data of
an event still waiting for its blank line, longer than ``max_event_bytes`` raises
``EventTooLarge`` (the caller ends that one stream; nothing else is affected).
"""

from __future__ import annotations

__all__ = ["EventTooLarge", "SSEDecoder"]


class EventTooLarge(ValueError):
    """An SSE line or event passed the decoder's ``max_event_bytes``."""


class SSEDecoder:
    """Feed it network bytes; it returns the ``data`` of every event completed by them."""

    __slots__ = ("_buffer", "_data", "_max", "_size")

    def __init__(self, max_event_bytes: int = 1 << 20) -> None:
        self._buffer = b""
        self._data: list[bytes] = []
        self._size = 0  # bytes in _data
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> list[bytes]:
        """Decode ``chunk``; return the data of each event it completes, in order."""
        buffer = self._buffer + chunk
        if b"\r" in buffer:
            # A CR at the very end may be the first half of a CRLF split across reads.
            keep_cr = buffer.endswith(b"\r")
            if keep_cr:
                buffer = buffer[:-1]
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if keep_cr:
                buffer += b"\r"
        *lines, self._buffer = buffer.split(b"\n")
        if len(self._buffer) > self._max:
            raise EventTooLarge(f"an SSE line of more than {self._max} bytes")
        events: list[bytes] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
                    self._size = 0
            elif line.startswith(b"data:"):
                value = line[5:]
                if value.startswith(b" "):
                    value = value[1:]
                self._size += len(value) + (1 if self._data else 0)  # as joined
                if self._size > self._max:
                    raise EventTooLarge(f"an SSE event of more than {self._max} bytes")
                self._data.append(value)
            # comments (":…") and other fields (event:, id:, retry:) are not used by the upstreams
        return events
