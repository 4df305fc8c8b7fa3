"""One client connection of the fake upstream, its HTTP/1.1 spoken by h11.

The server takes requests with ``next_request()`` and answers with ``send_head``, ``send_data``
(or ``send_pieces``) and ``send_end`` (or ``send_whole``); h11 parses the requests, frames the
bodies and decides whether the connection can carry another request (``next_cycle()``).
``read_until_closed()`` runs as its own task for the connection's whole life and hands h11 every
byte as it arrives, so the client's EOF or reset is seen at once, even while a response sleeps
or stalls: a client that half-closes its side is gone as far as the fake is concerned.
"""

from __future__ import annotations

import asyncio
import http
import socket
import struct
from dataclasses import dataclass
from typing import Literal

import h11

from aistream.testing.fake_upstream.records import RequestRecord

__all__ = ["BadRequestError", "Connection", "Request"]

READ_SIZE = 65536
"""Bytes asked of the socket per read."""
MAX_HEAD = 65536
"""Largest request head (or other incomplete event) h11 buffers before refusing it."""


@dataclass(frozen=True, slots=True)
class Request:
    """One whole HTTP request."""

    method: str
    path: str
    """The target without its query string."""
    headers: dict[str, str]
    """Names lowercased; of a repeated header the last value."""
    body: bytes


class BadRequestError(Exception):
    """The bytes on a connection are not an HTTP/1.1 request."""


class Connection:
    """One accepted TCP connection: its parser, its writer, and the response in progress."""

    def __init__(
        self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Wrap an accepted connection; nothing is read until ``read_until_closed`` runs."""
        self.number = number
        """Position of the connection among those the server accepted, from 1."""
        self.writer = writer
        self.eof = False
        """Whether the client's side has ended (EOF or reset)."""
        self.current: RequestRecord | None = None
        """The record of the response in progress."""
        self.response: asyncio.Task[bool] | None = None
        """The task writing the response in progress."""
        self._reader = reader
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self._readable = asyncio.Event()
        self._head_only = False

    # --- reading -----------------------------------------------------------------------------

    async def read_until_closed(self) -> Literal["eof", "reset"]:
        """Feed the parser everything the client sends; return how the client's side ended."""
        kind: Literal["eof", "reset"] = "eof"
        try:
            while data := await self._reader.read(READ_SIZE):
                self._h11.receive_data(data)
                self._readable.set()
        except (ConnectionError, OSError):
            kind = "reset"
        self.eof = True
        self._h11.receive_data(b"")
        self._readable.set()
        return kind

    async def next_request(self) -> Request | None:
        """Return the next whole request, or ``None`` once the client sends no more.

        Raises ``BadRequestError`` for bytes that are not a request; a client that leaves in
        the middle of a request's body is not answered (``None``).
        """
        head: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                if head is not None and self.eof:
                    return None
                raise BadRequestError(str(exc)) from exc
            if event is h11.NEED_DATA:
                self._readable.clear()
                await self._readable.wait()
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                self._head_only = head.method == b"HEAD"
                headers = {n.decode("latin-1"): v.decode("latin-1") for n, v in head.headers}
                target = head.target.decode("latin-1").split("?", 1)[0]
                return Request(head.method.decode("ascii"), target, headers, bytes(body))
            else:  # ConnectionClosed, or PAUSED: the client can send no other request
                return None

    # --- writing -----------------------------------------------------------------------------

    def send_head(self, status: int, headers: list[tuple[str, str]]) -> None:
        """Write a response's status line and headers (h11 adds the framing it needs)."""
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        self._send(h11.Response(status_code=status, headers=headers, reason=reason))

    def send_data(self, data: bytes) -> None:
        """Write part of a response body (a streamed body: one HTTP chunk)."""
        if data and not self._head_only:
            self._send(h11.Data(data=data))

    async def send_pieces(self, data: bytes, size: int, pause: float) -> None:
        """Write part of a response body in pieces of at most ``size`` bytes, each its own write
        (and HTTP chunk) followed by ``pause`` seconds, so that each is a network read of its own.
        """
        for start in range(0, len(data), size):
            self.send_data(data[start : start + size])
            await self.drain()
            await asyncio.sleep(pause)

    def send_end(self) -> None:
        """End the response body (a streamed body: the last, empty chunk)."""
        self._send(h11.EndOfMessage())

    def send_whole(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        """Write a whole response with a ``content-length`` body."""
        self.send_head(status, [*headers, ("content-length", str(len(data)))])
        self.send_data(data)
        self.send_end()

    def can_answer(self) -> bool:
        """Whether a response may start now (after a bad request too)."""
        return self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE)

    async def drain(self) -> None:
        """Wait until the socket has taken what was written, or enough of it."""
        await self.writer.drain()

    def next_cycle(self) -> bool:
        """After a response: whether the connection can take another request (keep-alive)."""
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
            return True
        return False

    async def reset(self) -> None:
        """Send what is buffered, then reset the TCP connection (RST)."""
        transport = self.writer.transport
        transport.set_write_buffer_limits(high=0)  # drain now waits for an empty buffer
        await self.writer.drain()
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()  # with SO_LINGER 0 the kernel sends RST

    def _send(self, event: h11.Event) -> None:
        data = self._h11.send(event)
        if data:
            self.writer.write(data)
