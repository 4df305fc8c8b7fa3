"""A lean WebSocket client protocol, so the load client is never the bottleneck it measures.

Enough of RFC 6455 for a benchmark client: the opening handshake, unfragmented and fragmented
text/binary messages from the server, ping → pong, close. Frames to the server are masked with an
all-zero key (legal, and it saves XOR-ing every payload; servers do not check). Each received
message is handed to ``on_message`` with its arrival time (``time.monotonic()``), read once per
network read so a burst of frames shares one clock read. ``pause_reading`` makes it a client that
stops reading: the kernel buffers fill and the server sees backpressure.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time
from collections.abc import Callable

__all__ = ["WsClient", "connect"]

OnMessage = Callable[[bytes, float], None]

_OP_CONT, _OP_TEXT, _OP_BIN, _OP_CLOSE, _OP_PING, _OP_PONG = 0, 1, 2, 8, 9, 10
_ZERO_MASK = b"\x00\x00\x00\x00"


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + _ZERO_MASK + payload


class WsClient(asyncio.Protocol):
    """One client connection; ``connect`` returns it once the handshake is done."""

    def __init__(self, on_message: OnMessage) -> None:
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.open: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buf = bytearray()
        self._handshaken = False
        self._fragments: list[bytes] = []

    # --- transport callbacks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        buf = self._buf
        buf += data
        if not self._handshaken:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[:12])
            del buf[: end + 4]
            if b" 101" not in status:
                self._fail(ConnectionError(f"handshake refused: {status!r}"))
                return
            self._handshaken = True
            self.open.set_result(None)
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n, at = b1 & 0x7F, pos + 2
            if n == 126:
                if size - at < 2:
                    break
                n, at = struct.unpack_from("!H", buf, at)[0], at + 2
            elif n == 127:
                if size - at < 8:
                    break
                n, at = struct.unpack_from("!Q", buf, at)[0], at + 8
            if size - at < n:
                break
            payload = bytes(buf[at : at + n])
            pos = at + n
            self._on_frame(b0 & 0x80, b0 & 0x0F, payload, now)
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.open.done():
            self.open.set_exception(exc or ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    # --- frames -----------------------------------------------------------------------------

    def _on_frame(self, fin: int, opcode: int, payload: bytes, now: float) -> None:
        if opcode in (_OP_TEXT, _OP_BIN, _OP_CONT):
            if not fin:
                self._fragments.append(payload)
                return
            if self._fragments:
                payload = b"".join([*self._fragments, payload])
                self._fragments = []
            self.on_message(payload, now)
        elif opcode == _OP_PING:
            self._write(_frame(_OP_PONG, payload))
        elif opcode == _OP_CLOSE:
            self._write(_frame(_OP_CLOSE, payload[:2]))
            if self.transport is not None:
                self.transport.close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _fail(self, exc: Exception) -> None:
        if not self.open.done():
            self.open.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    # --- API --------------------------------------------------------------------------------

    def send_text(self, text: bytes) -> None:
        """Send one text message (already UTF-8 bytes)."""
        self._write(_frame(_OP_TEXT, text))

    def close(self) -> None:
        """Start the closing handshake (1000); the server then closes the TCP connection."""
        self._write(_frame(_OP_CLOSE, struct.pack("!H", 1000)))

    def abort(self) -> None:
        """Drop the TCP connection at once."""
        if self.transport is not None:
            self.transport.abort()

    def pause_reading(self) -> None:
        """Stop reading from the socket: a client that stops reading."""
        if self.transport is not None:
            self.transport.pause_reading()


async def connect(
    host: str, port: int, path: str, on_message: OnMessage, rcvbuf: int = 0
) -> WsClient:
    """Open a WebSocket connection and complete its handshake; ``rcvbuf``: the socket's
    SO_RCVBUF, set before connecting (0: the kernel's autotuning)."""
    loop = asyncio.get_running_loop()
    if rcvbuf:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
        _, client = await loop.create_connection(lambda: WsClient(on_message), sock=sock)
    else:
        _, client = await loop.create_connection(lambda: WsClient(on_message), host, port)
    key = base64.b64encode(os.urandom(16))
    assert client.transport is not None
    client.transport.write(
        b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
        % (path.encode(), host.encode(), port, key)
    )
    await client.open
    return client
