"""A pure, incremental Server-Sent Events decoder: bytes in, event data out.

Only what an OpenAI-compatible stream uses is kept: ``data:`` fields (joined with newlines when an
event has several), comments and other fields are skipped, an empty line dispatches the event.
Lines may end with LF, CRLF or CR, and may be split anywhere across network reads.
"""

from __future__ import annotations

__all__ = ["SSEDecoder"]


class SSEDecoder:
    """Feed it network bytes; it returns the ``data`` of every event completed by them."""

    __slots__ = ("_buffer", "_data")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []

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
        events: list[bytes] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
            # comments (":…") and other fields (event:, id:, retry:) are not used by the upstreams
        return events
