"""A standing adversarial suite: the bridge's WebSocket server fuzzed with raw RFC 6455 frames over
a real socket while a well-behaved generation runs beside it, and with hypothesis-made JSON frames
over a proper client; the lifecycle checker runs over every conversation.

Each raw byte stream is also fed to ``expect``, a small independent model of how a conforming
server reads it (RFC 6455 §5: masking, reserved bits, opcodes, fragmentation, control frames,
close payloads, ``ws_max_size``): which pings it must answer, which messages it must deliver, and
whether (and with which close code) it must fail the connection. Each JSON frame carries its own
verdict, written from docs/protocol.md ("Bad input"), not from the bridge's code.

Examples are derandomized (the same inputs every run, no example database): the suite never
flakes on a new random draw, and a failure names its input. ``AISTREAM_FUZZ_EXPLORE=N`` runs N
times the examples with fresh random draws (a hunt, not CI); ``AISTREAM_FUZZ_SHRINK=1`` shrinks a
failing example (slow over sockets).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import hashlib
import itertools
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from conftest import (
    TERMINAL,
    UNIT,
    Conversation,
    Stack,
    StackFactory,
    WsClient,
    check_conversation,
)
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st
from websockets.asyncio.messages import MAX_FRAGMENTS

from aistream import codes
from aistream.bridge.connection import Connection
from aistream.settings import Settings
from aistream.testing.fake_upstream import Script

# --- shared ------------------------------------------------------------------------------------

SERVER_TYPES = {"ai:start", "ai:token", "ai:done", "ai:error"}
ERROR_CODES = {row.json for row in codes.CODES.values()}
FINISH_REASONS = {"stop", "length", "content_filter", "tool_calls"}


SHRINK = os.environ.get("AISTREAM_FUZZ_SHRINK") == "1"
"""Shrink a failing example (minutes over sockets); by default the failing input is reported
as found."""
EXPLORE = int(os.environ.get("AISTREAM_FUZZ_EXPLORE", "0"))
"""A hunt, not CI: EXPLORE times the examples, with fresh random draws."""


def fuzz_settings(max_examples: int) -> settings:
    """Hypothesis settings for socket tests: derandomized, no database, no deadline."""
    phases = [Phase.explicit, Phase.generate, *([Phase.shrink] if SHRINK else [])]
    return settings(
        max_examples=max_examples * max(EXPLORE, 1),
        phases=phases,
        deadline=None,
        derandomize=not EXPLORE,
        database=None,
        print_blob=False,
        suppress_health_check=[
            # One stack serves every example of a test: that is the point (it must survive them).
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


def assert_server_frame(frame: Any) -> None:
    """Fail unless ``frame`` is a well-formed frame the bridge may send (docs/protocol.md)."""
    assert isinstance(frame, dict), frame
    assert frame.get("type") in SERVER_TYPES, frame
    assert isinstance(frame.get("requestId"), str), frame
    kind = frame["type"]
    if kind == "ai:token":
        assert isinstance(frame.get("chunk"), str), frame
        assert isinstance(frame.get("seq"), int) and frame["seq"] >= 0, frame
        assert isinstance(frame.get("count"), int) and frame["count"] >= 1, frame
    elif kind == "ai:done":
        assert frame.get("finishReason") in FINISH_REASONS, frame
    elif kind == "ai:error":
        assert frame.get("code") in ERROR_CODES, frame
        assert isinstance(frame.get("message"), str) and frame["message"], frame
        assert isinstance(frame.get("retryable"), bool), frame


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 5 * UNIT) -> None:
    """Poll ``predicate`` (every 5 ms) until it holds; fail naming ``what`` after ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            # (the bridge has no event to wait on for these states)
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0.005)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


def served_by(stack: Stack, client: WsClient) -> Connection:
    """The bridge's Connection serving ``client``'s socket."""
    local = client.ws.local_address
    for connection in stack.bridge.connections:
        if connection.websocket.remote_address == local:
            return connection
    raise AssertionError(f"no bridge connection for {local}")


async def quiesce(stack: Stack) -> None:
    """Wait until the bridge holds no connection and the upstream no response (no ghosts)."""
    await wait_until(lambda: not stack.bridge.connections, "the bridge to drop every connection")
    try:
        await stack.fake.wait_for(lambda: not stack.fake.active(), 5 * UNIT)
    except TimeoutError:
        pytest.fail(f"ghost generations: {len(stack.fake.active())} upstream responses open")


async def serves_a_generation(stack: Stack, name: str) -> None:
    """A new connection is accepted and runs a generation to ``ai:done``."""
    client = await stack.client(name)
    await client.generate("after", "are you still there?")
    assert (await client.finish("after"))["type"] == "ai:done"
    await client.ws.close()


# --- RFC 6455, the client's side ---------------------------------------------------------------

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
VALID_OPCODES = {CONT, TEXT, BINARY, CLOSE, PING, PONG}
CONTROL = {CLOSE, PING, PONG}
NO_STATUS = 1005  # what an empty close payload stands for (never on the wire)
CLOSE_CODES = {1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)}
"""Close codes an endpoint may put on the wire (RFC 6455 §7.4.1 and the IANA registry)."""
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
RAW_MAX_SIZE = 1024  # ws_max_size of the raw-fuzz stack: oversized frames stay cheap


def mask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``key`` (RFC 6455 §5.3)."""
    n = len(payload)
    keys = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(keys, "big")).to_bytes(n, "big")


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    key: bytes = b"\x9a\x01\x5c\xe3",
    declared: int | None = None,
) -> bytes:
    """One frame as a client writes it; ``declared`` claims another payload length (64-bit form)."""
    length = len(payload) if declared is None else declared
    head = bytearray([(0x80 if fin else 0) | (rsv << 4) | opcode])
    bit = 0x80 if masked else 0
    if declared is None and length < 126:
        head.append(bit | length)
    elif declared is None and length < 1 << 16:
        head += bytes([bit | 126]) + length.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + length.to_bytes(8, "big")
    if not masked:
        return bytes(head) + payload
    return bytes(head) + key + mask(payload, key)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    """A close frame's payload."""
    return code.to_bytes(2, "big") + reason


@dataclass
class Expected:
    """What a conforming server does with a byte stream (``expect``)."""

    pings: list[bytes] = field(default_factory=list)
    """Payloads of the pings it must answer, in order."""
    messages: list[tuple[int, bytes]] = field(default_factory=list)
    """Complete data messages (opcode, payload) it reads before it stops reading."""
    violation: int | None = None
    """The close code it fails the connection with, if the stream breaks the protocol."""
    echo: bytes | None = None
    """The payload of a valid close frame: the server echoes it and closes."""
    fragmenting: bool = False
    """The stream ends inside a fragmented message."""
    too_many_fragments: bool = False
    """A message has more than MAX_FRAGMENTS frames: the server fails with 1009 once it reads
    that far (websockets' bound; without one, empty fragments would pile up without end)."""
    truncated: bool = False
    """The stream ends inside a frame."""

    @property
    def bad_text(self) -> bool:
        """A complete text message is not UTF-8 (the server fails with 1007 once it reads it)."""
        for opcode, payload in self.messages:
            if opcode == TEXT:
                try:
                    payload.decode()
                except UnicodeDecodeError:
                    return True
        return False

    @property
    def open(self) -> bool:
        """The server has no reason to close the connection."""
        return (
            self.violation is None
            and self.echo is None
            and not self.bad_text
            and not self.too_many_fragments
        )

    @property
    def handler_fails(self) -> bool:
        """The handler fails the connection when it reads a message (1007 or 1009): that races
        the parser, which may answer later pings or fail on later frames first."""
        return self.bad_text or self.too_many_fragments

    def close_codes(self) -> set[int]:
        """The close codes the server may send first (the handler's 1007 or 1009 races the
        parser's verdict)."""
        found: set[int] = set()
        if self.violation is not None:
            found.add(self.violation)
        elif self.echo is not None:
            found.add(int.from_bytes(self.echo[:2], "big") if self.echo else NO_STATUS)
        if self.bad_text:
            found.add(1007)
        if self.too_many_fragments:
            found.add(1009)
        return found


def expect(stream: bytes, max_size: int = RAW_MAX_SIZE) -> Expected:
    """Read ``stream`` as a conforming server with ``max_size`` would (RFC 6455 §5-7)."""
    out = Expected()
    pos = 0
    current: tuple[int, bytearray] | None = None  # the fragmented message being read
    fragments = 0  # frames of the current message
    end = len(stream)
    while pos < end:
        if pos + 2 > end:
            out.truncated = True
            break
        first, second = stream[pos], stream[pos + 1]
        fin, rsv, opcode = first & 0x80, first & 0x70, first & 0x0F
        if opcode not in VALID_OPCODES:
            out.violation = 1002  # §5.2: an unknown opcode fails the connection
            break
        if not second & 0x80:
            out.violation = 1002  # §5.1: a server closes on an unmasked frame
            break
        length, at = second & 0x7F, pos + 2
        width = {126: 2, 127: 8}.get(length, 0)
        if at + width > end:
            out.truncated = True
            break
        if width:
            length = int.from_bytes(stream[at : at + width], "big")
            at += width
        if length > max_size - (len(current[1]) if current else 0):
            out.violation = 1009  # §7.4.1: too big to process (known from the header alone)
            break
        if at + 4 + length > end:
            out.truncated = True
            break
        data = mask(stream[at + 4 : at + 4 + length], stream[at : at + 4])
        pos = at + 4 + length
        if rsv:
            out.violation = 1002  # §5.2: no extension was negotiated
            break
        if opcode in CONTROL and (length > 125 or not fin):
            out.violation = 1002  # §5.5: control frames are short and never fragmented
            break
        if opcode in (TEXT, BINARY):
            if current is not None:
                out.violation = 1002  # §5.4: a new message inside a fragmented one
                break
            if fin:
                out.messages.append((opcode, data))
            else:
                current, fragments = (opcode, bytearray(data)), 1
        elif opcode == CONT:
            if current is None:
                out.violation = 1002  # §5.4: a continuation of nothing
                break
            current[1].extend(data)
            fragments += 1
            if fragments > MAX_FRAGMENTS:
                out.too_many_fragments = True
            if fin:
                out.messages.append((current[0], bytes(current[1])))
                current = None
        elif opcode == PING:
            out.pings.append(data)
        elif opcode == CLOSE:
            if len(data) == 1:
                out.violation = 1002  # §5.5.1: a code is two bytes
                break
            if data:
                try:
                    data[2:].decode()
                except UnicodeDecodeError:
                    out.violation = 1007  # §5.5.1: the reason is UTF-8
                    break
                if int.from_bytes(data[:2], "big") not in CLOSE_CODES:
                    out.violation = 1002  # §7.4: not a code an endpoint may send
                    break
            if current is not None:
                out.violation = 1002  # (websockets: a close inside a fragmented message)
                break
            out.echo = data
            break
    out.fragmenting = current is not None
    return out


class RawClient:
    """A WebSocket client written by hand on a TCP socket: sends any bytes, and reads the server's
    frames strictly (unmasked, no reserved bits, known opcodes, short unfragmented controls, text
    frames that are JSON server frames, nothing after a close frame)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray()
        self.conversation = Conversation(name, abandoned=True)
        """Sent and received frames for the lifecycle checker. Abandoned: the socket may be
        closed under a running generation on purpose (its upstream must still close)."""
        self.pongs: list[bytes] = []
        self.frames: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.close_payload: bytes | None = None
        self.eof = False
        self._fragments: tuple[int, bytearray] | None = None

    @classmethod
    async def connect(cls, port: int, name: str, buffers: int = 0) -> RawClient:
        """Open a TCP connection (``buffers``: its SO_RCVBUF and SO_SNDBUF, else the kernel's
        autotuning) and complete the opening handshake (RFC 6455 §4.1)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if buffers:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffers)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffers)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        key = base64.b64encode(hashlib.sha1(name.encode()).digest()[:16])
        writer.write(
            b"GET /ws HTTP/1.1\r\n"
            + f"Host: 127.0.0.1:{port}\r\n".encode()
            + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            + b"Sec-WebSocket-Key: "
            + key
            + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        async with asyncio.timeout(5 * UNIT):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        headers = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
        headers = {k.strip().lower(): v.strip() for k, v in headers.items()}
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        assert headers.get(b"sec-websocket-accept") == accept, head
        return cls(reader, writer, name)

    def record_sent(self, messages: Sequence[tuple[int, bytes]]) -> None:
        """Record the JSON objects among ``messages`` as sent (generates the checker expects)."""
        for opcode, payload in messages:
            if opcode != TEXT:
                continue
            with contextlib.suppress(orjson.JSONDecodeError):
                decoded = orjson.loads(payload)
                if isinstance(decoded, dict):
                    self.conversation.events.append(("sent", decoded))

    async def send(self, data: bytes, pieces: Sequence[int] = ()) -> None:
        """Write ``data`` (split at ``pieces``, each piece its own write); a server that has
        already closed makes the rest vanish, which is fine."""
        cuts = [0, *sorted({p for p in pieces if 0 < p < len(data)}), len(data)]
        with contextlib.suppress(ConnectionError):
            for start, stop in itertools.pairwise(cuts):
                self.writer.write(data[start:stop])
                await self.writer.drain()
                if stop != len(data):
                    await asyncio.sleep(0.001)  # (a separate segment, most likely)

    async def read_until(self, done: Callable[[], bool], timeout: float = 5 * UNIT) -> None:
        """Read and check the server's frames until ``done()`` or end of stream."""
        try:
            async with asyncio.timeout(timeout):
                while not done() and not self.eof:
                    try:
                        chunk = await self.reader.read(65536)
                    except ConnectionError:
                        chunk = b""
                    if not chunk:
                        self.eof = True
                    self.buffer += chunk
                    self._parse()
        except TimeoutError:
            pytest.fail(f"{self.conversation.name}: the server neither answered nor closed")

    def _parse(self) -> None:
        buf = self.buffer
        while len(buf) >= 2:
            first, second = buf[0], buf[1]
            fin, opcode = bool(first & 0x80), first & 0x0F
            assert not first & 0x70, f"server frame with reserved bits: {bytes(buf[:2])!r}"
            assert opcode in VALID_OPCODES, f"server frame with opcode {opcode}"
            assert not second & 0x80, "a server must not mask its frames (RFC 6455 §5.1)"
            length, at = second & 0x7F, 2
            width = {126: 2, 127: 8}.get(length, 0)
            if len(buf) < at + width:
                return
            if width:
                length = int.from_bytes(buf[at : at + width], "big")
                at += width
            if len(buf) < at + length:
                return
            data = bytes(buf[at : at + length])
            del buf[: at + length]
            assert self.close_code is None, f"a frame after the server's close frame: {opcode}"
            if opcode in CONTROL:
                assert fin and length <= 125, "a bad control frame from the server"
            self._frame(fin, opcode, data)

    def _frame(self, fin: bool, opcode: int, data: bytes) -> None:
        if opcode == PONG:
            self.pongs.append(data)
        elif opcode == CLOSE:
            assert len(data) != 1, "a one-byte close payload from the server"
            self.close_payload = data
            self.close_code = int.from_bytes(data[:2], "big") if data else NO_STATUS
            if data:
                assert self.close_code in CLOSE_CODES, f"close code {self.close_code} on the wire"
                data[2:].decode()  # the reason is UTF-8
        elif opcode in (TEXT, BINARY):
            assert self._fragments is None, "a new server message inside a fragmented one"
            self._fragments = (opcode, bytearray(data))
        elif opcode == CONT:
            assert self._fragments is not None, "a continuation of nothing from the server"
            self._fragments[1].extend(data)
        if opcode in (TEXT, BINARY, CONT) and fin:
            assert self._fragments is not None
            kind, payload = self._fragments
            self._fragments = None
            assert kind == TEXT, "the bridge sends text frames only"
            message = orjson.loads(payload)
            assert_server_frame(message)
            self.frames.append(message)
            self.conversation.events.append(("recv", message))

    async def close(self) -> None:
        """Drop the TCP connection."""
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def invalid_reply(opcode: int, payload: bytes) -> str | None:
    """The ``requestId`` of the ``ai:error invalid_request`` a complete message gets, or None
    when it gets none (docs/protocol.md, "Bad input"); LookupError for a generate not judged
    here."""
    if opcode == BINARY:
        return ""
    if payload in RAW_GENERATES:
        return None
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(obj, dict):
        return ""
    rid = obj.get("requestId")
    if obj.get("type") not in ("ai:generate", "ai:cancel"):
        return rid if isinstance(rid, str) else ""
    if not isinstance(rid, str):
        return ""
    if obj["type"] == "ai:cancel":
        return "" if not rid or len(rid) > 128 else None
    raise LookupError(payload)


# --- raw-frame strategies ----------------------------------------------------------------------

BAD_UTF8 = [b"\xff", b"\x80", b"\xc0\x80", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80"]
SENTINEL = b'{"type":"ai:fuzz-sentinel","requestId":"sentinel"}'
RAW_GENERATES = (
    b'{"type":"ai:generate","requestId":"raw","prompt":"from the raw socket"}',
    # running until cancelled: when the socket fails, its upstream must close
    b'{"type":"ai:generate","requestId":"held","prompt":"#fake {\\"ttft\\": 60}"}',
)

text_payloads = st.one_of(
    st.sampled_from(
        [
            b'{"type":"ai:cancel","requestId":"nobody"}',
            b'{"type":"ai:cancel","requestId":"raw"}',
            b'{"type":"ai:cancel","requestId":"held"}',
            b'{"type":"ai:bogus","requestId":"b1"}',
            '{"type":"ai:bogus","requestId":"é🙂\\u0000"}'.encode(),
            b'{"type":"ai:generate"}',
            b"[]",
            b"null",
            b"{}",
            b"",
            *RAW_GENERATES,
            *RAW_GENERATES,
        ]
    ),
    st.text(max_size=40).map(str.encode),
    st.text(max_size=40).map(str.encode),
    st.sampled_from(BAD_UTF8).flatmap(  # invalid UTF-8 somewhere in valid text
        lambda bad: st.tuples(st.text(max_size=8), st.text(max_size=8)).map(
            lambda t: t[0].encode() + bad + t[1].encode()
        )
    ),
)
"""Text payloads: known frames (a quarter of them generates), any text, some not UTF-8."""
big_payloads = st.integers(RAW_MAX_SIZE - 1, RAW_MAX_SIZE + 1).map(lambda n: b"a" * n)


@st.composite
def data_message(draw: st.DrawFn, key: bytes) -> bytes:
    """A text or binary message, maybe fragmented (split anywhere, even inside a UTF-8
    sequence), maybe with pings and pongs between its fragments; a few at ws_max_size ± 1."""
    choice = draw(st.integers(0, 9))
    if choice == 0:
        opcode, payload = TEXT, draw(big_payloads)
    elif choice < 8:
        opcode, payload = TEXT, draw(text_payloads)
    else:
        opcode, payload = BINARY, draw(st.binary(max_size=40))
    cuts = sorted(draw(st.sets(st.integers(0, len(payload)), max_size=3)))
    pieces = [payload[a:b] for a, b in itertools.pairwise([0, *cuts, len(payload)])]
    out = bytearray()
    for i, piece in enumerate(pieces):
        out += frame(opcode if i == 0 else CONT, piece, fin=i == len(pieces) - 1, key=key)
        if i < len(pieces) - 1 and draw(st.integers(0, 2)) == 0:
            out += frame(draw(st.sampled_from([PING, PONG])), draw(st.binary(max_size=8)), key=key)
    return bytes(out)


close_payloads = st.one_of(
    st.just(b""),
    st.binary(min_size=1, max_size=1),
    st.builds(
        close_payload,
        st.sampled_from([*range(999, 1017), 2999, 3000, 4999, 5000, 0, 65535]),
        st.one_of(
            st.text(max_size=20).map(str.encode),
            st.sampled_from(BAD_UTF8),
            st.just(b"r" * 124),
        ),
    ),
)


@st.composite
def control_frame(draw: st.DrawFn, key: bytes) -> bytes:
    """A ping, pong or close; some too long, some with odd close codes or reasons."""
    opcode = draw(st.sampled_from([PING, PING, PONG, CLOSE]))
    if opcode == CLOSE:
        payload = draw(close_payloads)
    else:
        payload = draw(st.one_of(st.binary(max_size=12), st.binary(min_size=124, max_size=130)))
    return frame(opcode, payload, key=key)


@st.composite
def odd_frame(draw: st.DrawFn, key: bytes) -> bytes:
    """Any header bits: unmasked, reserved bits, unknown opcodes, a lone FIN-less frame."""
    return frame(
        draw(st.integers(0, 15)),
        draw(st.binary(max_size=16)),
        fin=draw(st.booleans()),
        rsv=draw(st.sampled_from([0, 0, 1, 2, 4, 7])),
        masked=draw(st.integers(0, 3)) > 0,
        key=key,
    )


@st.composite
def oversized_header(draw: st.DrawFn, key: bytes) -> bytes:
    """A header claiming far more than ws_max_size (up to 2**64 - 1), with a few bytes after."""
    return frame(
        draw(st.sampled_from([TEXT, BINARY, CONT, PING])),
        draw(st.binary(max_size=8)),
        masked=draw(st.integers(0, 3)) > 0,
        key=key,
        declared=draw(
            st.sampled_from([RAW_MAX_SIZE + 1, 65535, 1 << 32, (1 << 63) - 1, (1 << 64) - 1])
        ),
    )


@dataclass
class RawCase:
    """One raw-fuzz example: the bytes, a truncated frame to end with, how to split the writes."""

    stream: bytes
    tail: bytes
    pieces: list[int]


@st.composite
def raw_cases(draw: st.DrawFn) -> RawCase:
    """Mostly well-formed frames (with odd payloads, maybe a closing handshake), else
    anything: protocol breaks, oversized headers, garbage; sometimes a cut-off end."""
    key = draw(
        st.sampled_from([b"\x00\x00\x00\x00", b"\x9a\x01\x5c\xe3"])
        | st.binary(min_size=4, max_size=4)
    )
    if draw(st.sampled_from(["well-formed", "well-formed", "hostile"])) == "well-formed":
        event("raw: well-formed frames")
        pings = st.builds(
            frame, st.sampled_from([PING, PONG]), st.binary(max_size=125), key=st.just(key)
        )
        item = st.one_of(data_message(key), data_message(key), pings)
        items = draw(st.lists(item, min_size=1, max_size=8))
        if draw(st.integers(0, 5)) == 0:
            items.append(frame(CLOSE, draw(close_payloads), key=key))
    else:
        event("raw: hostile frames")
        item = st.one_of(
            data_message(key),
            data_message(key),
            control_frame(key),
            odd_frame(key),
            oversized_header(key),
            st.binary(min_size=1, max_size=12),  # garbage
        )
        items = draw(st.lists(item, min_size=1, max_size=8))
    stream = b"".join(items)
    tail = b""
    if draw(st.integers(0, 4)) == 0:
        whole = draw(data_message(key) | control_frame(key))
        tail = whole[: draw(st.integers(1, len(whole) - 1))]
    pieces = draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=3))
    return RawCase(stream, tail, pieces)


# --- raw-frame fuzzing -------------------------------------------------------------------------


async def fuzz_raw(stack: Stack, case: RawCase, name: str) -> None:
    """Play ``case`` on a raw socket and check the server did what ``expect`` says it must."""
    client = await RawClient.connect(stack.bridge.port, name)
    expected = expect(case.stream)
    stream = case.stream
    if expected.open and not expected.truncated:
        if expected.fragmenting:  # finish the message, so a sentinel can follow
            stream += frame(CONT, b"", fin=True)
        # The sentinel's answer comes after every answer to what came before it.
        stream += frame(TEXT, SENTINEL)
        expected = expect(stream)
        assert expected.open and expected.messages[-1] == (TEXT, SENTINEL)
    elif expected.open:
        event("raw: ends inside a frame")
        # The stream ends inside a frame (garbage claimed more bytes than follow): the server
        # must wait for the rest; nothing tells when it has read what came before, so only the
        # frames received until the end of the example are checked.
        client.record_sent(expected.messages)
        await client.send(stream, case.pieces)
        await client.close()
        check_conversation(client.conversation)
        return
    client.record_sent(expected.messages)
    await client.send(stream, case.pieces)
    if expected.open:
        event(f"raw: open, {len(expected.messages) - 1} messages, {len(expected.pings)} pings")
        await client.read_until(lambda: any(f["requestId"] == "sentinel" for f in client.frames))
        assert client.close_code is None and not client.eof, "closed for no reason"
        assert client.pongs == expected.pings, "every ping is answered, in order (§5.5.2)"
        try:
            wanted = [invalid_reply(op, data) for op, data in expected.messages[:-1]]
        except LookupError:
            wanted = None
        got = [
            f["requestId"]
            for f in client.frames
            if f["type"] == "ai:error" and f["code"] == "invalid_request"
        ]
        assert got[-1] == "sentinel"
        if wanted is not None:
            assert got[:-1] == [w for w in wanted if w is not None], "one answer per bad message"
        if case.tail:  # a frame cut off mid-way, then the TCP connection goes
            await client.send(case.tail)
        else:  # the closing handshake, by the book
            await client.send(frame(CLOSE, close_payload(1000, b"bye")))
            await client.read_until(lambda: client.eof)
            assert client.close_payload == close_payload(1000, b"bye"), "the close is echoed"
    else:
        await client.read_until(lambda: client.eof)
        event(f"raw: closed {client.close_code} (expected {sorted(expected.close_codes())})")
        assert client.close_code is not None, "the server dropped the socket without a close frame"
        assert client.close_code in expected.close_codes(), (
            f"close code {client.close_code}, expected one of {expected.close_codes()}"
        )
        if expected.echo is not None and client.close_payload != expected.echo:
            assert expected.handler_fails, "the close frame is echoed"
        assert client.pongs == expected.pings[: len(client.pongs)], "pongs answer pings in order"
        if not expected.handler_fails:
            assert client.pongs == expected.pings, "every ping before the failure is answered"
    await client.close()
    check_conversation(client.conversation)


_raw_examples = itertools.count()


@pytest.fixture
async def raw_stack(make_stack: StackFactory) -> Stack:
    """The stack every raw-fuzz example of a test shares (small ws_max_size, no rate limit)."""
    return await make_stack(
        Script(tokens=3), ws_max_size=RAW_MAX_SIZE, frames_per_second=10_000, frames_burst=10_000
    )


HELD = RAW_GENERATES[1]
SPLIT = '{"type":"ai:bogus","requestId":"é🙂"}'.encode()


def fragmented(count: int) -> bytes:
    """The message ``{}`` in ``count`` frames, all but two of them empty."""
    middle = frame(CONT, b"", fin=False) * (count - 2)
    return frame(TEXT, b"{", fin=False) + middle + frame(CONT, b"}")


def held_then(*frames: bytes, tail: bytes = b"") -> RawCase:
    """A generation started on the fuzzed socket (running until cancelled), then ``frames``."""
    return RawCase(frame(TEXT, HELD) + b"".join(frames), tail, [])


@fuzz_settings(max_examples=100)
@given(case=raw_cases())
@example(case=held_then(frame(TEXT, b"{}", masked=False)))  # 1002 under a running generation
@example(case=held_then(frame(TEXT, b'{"requestId":"\xff"}')))  # 1007, from the handler
@example(case=held_then(frame(CLOSE, close_payload(1001, "départ".encode()))))  # echoed
@example(case=held_then(frame(BINARY, b"", declared=(1 << 64) - 1)))  # 1009 from the header
@example(case=held_then(tail=frame(TEXT, b"cut off")[:5]))  # EOF inside a frame
@example(
    case=RawCase(frame(TEXT, HELD, fin=False) + frame(PING, b"mid") + frame(CONT, b""), b"", [])
)
@example(case=RawCase(fragmented(MAX_FRAGMENTS), b"", []))  # the most fragments allowed
@example(case=RawCase(fragmented(MAX_FRAGMENTS + 1), b"", []))  # one more: 1009
@example(  # a UTF-8 sequence split across fragments is still one valid character
    case=RawCase(
        frame(TEXT, SPLIT[:-3], fin=False)
        + frame(CONT, SPLIT[-3:-1], fin=False)
        + frame(CONT, SPLIT[-1:]),
        b"",
        [],
    )
)
async def test_raw_frames_never_harm_a_running_generation(raw_stack: Stack, case: RawCase) -> None:
    """Any frames on a socket get answers or a close per RFC 6455; a generation beside is intact."""
    n = next(_raw_examples)
    stack = raw_stack
    text = f"span{n} ünï {n}🙂 ok{n} end"
    script = {"text": text, "tokens": len(text.split()), "interval": 0.02 * UNIT}
    prompt = "#fake " + orjson.dumps(script).decode()
    good = await stack.client(f"good-{n}")
    await good.generate("span", prompt)
    try:
        await good.until(lambda f: f["type"] == "ai:token")  # running when the fuzzing starts
        await fuzz_raw(stack, case, f"raw-{n}")
        frames = await good.until(lambda f: f["type"] in TERMINAL)
        tokens = [
            f for f in good.conversation.events if f[0] == "recv" and f[1]["type"] == "ai:token"
        ]
        assert frames[-1]["type"] == "ai:done", frames[-1]
        assert all(f["requestId"] == "span" for f in received(good))
        sent = Script(text=text, tokens=script["tokens"]).token_texts()
        assert "".join(f["chunk"] for _, f in tokens) == "".join(sent)
        assert sum(f["count"] for _, f in tokens) == len(sent)
        (record,) = [r for r in stack.fake.records if r.body["messages"][-1]["content"] == prompt]
        assert (record.outcome, record.tokens_sent) == ("completed", len(sent))
    except BaseException:
        good.abandon()  # (the failure is reported; an unfinished conversation would add noise)
        raise
    await good.ws.close()
    await serves_a_generation(stack, f"after-raw-{n}")
    await quiesce(stack)


# --- JSON-level fuzzing ------------------------------------------------------------------------

_HAS_MODEL_LIMIT = any(f.name == "max_model_chars" for f in dataclasses.fields(Settings))
LIMITS: dict[str, Any] = {
    "max_request_id_chars": 128,
    "max_prompt_chars": 64,
    "max_messages": 3,
    "max_history_chars": 100,
    **({"max_model_chars": 32} if _HAS_MODEL_LIMIT else {}),
}
"""Small limits for the JSON-fuzz stacks, so over-limit frames stay cheap."""
MISSING: Any = object()  # a key left out of the frame
OK, TYPE, LIMIT, BAD_ID = "ok", "type", "limit", "bad_id"
"""How a field value fares (docs/protocol.md, "Bad input"): fine; the wrong type (answered with
the frame's id); over a limit or empty (the id too); an unusable id (answered with "")."""

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
plain_text = st.text(min_size=1, max_size=20).filter(lambda s: not s.lstrip().startswith("#fake"))
"""Prompt and message text (never the fake upstream's ``#fake`` directive)."""

VALID_IDS = ["a", "b", "é🙂", "\u0000", " ", "\u2028", "x" * 128, "𝟘" * 128]


def _graded(*groups: tuple[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[tuple[Any, str]]:
    return st.one_of(*(values.map(lambda v, g=grade: (v, g)) for grade, values in groups))


good_messages = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"])},
    optional={"content": plain_text, "name": json_scalars},
)
FIELDS: dict[str, tuple[st.SearchStrategy[tuple[Any, str]], st.SearchStrategy[tuple[Any, str]]]]
FIELDS = {
    # key: (good values, bad values), each value with its grade
    "requestId": (
        _graded((OK, st.sampled_from(VALID_IDS))),
        _graded(
            (BAD_ID, st.sampled_from(["", "x" * 129])),
            (TYPE, st.sampled_from([MISSING, None, 7, True, [], {"id": "a"}])),
        ),
    ),
    "prompt": (
        _graded((OK, st.sampled_from([MISSING, "p" * 64, "  "]) | plain_text | plain_text)),
        _graded((LIMIT, st.just("p" * 65)), (TYPE, st.sampled_from([None, 12, True, [], {}]))),
    ),
    "messages": (
        _graded((OK, st.just(MISSING) | st.lists(good_messages, max_size=3))),
        _graded(
            (LIMIT, st.lists(good_messages, min_size=4, max_size=4)),
            (LIMIT, st.just([{"content": "no role"}])),
            (
                TYPE,
                st.sampled_from(
                    [
                        None,
                        {},
                        "hi",
                        [3],
                        [{"role": "tool", "content": "x"}],
                        [{"role": "USER", "content": "x"}],
                        [{"role": None, "content": "x"}],
                        [{"role": "user", "content": None}],
                        [{"role": "user", "content": 5}],
                    ]
                ),
            ),
        ),
    ),
    "model": (
        _graded(
            (OK, st.sampled_from([MISSING, "", "m" * 32, "gpt-4o-mini", "модель/🙂"]) | plain_text)
        ),
        _graded(
            (LIMIT if _HAS_MODEL_LIMIT else OK, st.just("m" * 33)),
            (TYPE, st.sampled_from([None, 5, [], {}])),
        ),
    ),
    "maxTokens": (
        _graded((OK, st.sampled_from([MISSING, None, 1, 2, 4096, 10**6, (1 << 32) - 1]))),
        _graded(
            (LIMIT, st.just(0)), (TYPE, st.sampled_from([-1, 1 << 32, 1.5, 5.0, "5", True, []]))
        ),
    ),
    "temperature": (
        _graded((OK, st.sampled_from([MISSING, None, 0, 2, 0.7, 1, -0.0, 2.0]))),
        _graded(
            (LIMIT, st.sampled_from([-0.1, 2.0001, 1e300, -1e300])),
            (TYPE, st.sampled_from(["1", True, [], {}])),
        ),
    ),
    "timeoutMs": (
        _graded(
            (OK, st.sampled_from([MISSING, None, 60_000, (1 << 32) - 1])),
            ("fast", st.sampled_from([1, 20])),  # valid, and may end in ai:error timeout
        ),
        _graded((LIMIT, st.just(0)), (TYPE, st.sampled_from([-5, 1 << 32, 1.5, "x", False]))),
    ),
    "tools": (
        _graded(
            (
                OK,
                st.sampled_from(
                    [
                        MISSING,
                        [],
                        [{"name": "f"}],
                        [
                            {
                                "name": "get_weather",
                                "description": "é🙂",
                                "parameters": {
                                    "type": "object",
                                    "properties": {"city": {"type": "string"}},
                                },
                            },
                            {"name": "g-2_x", "parameters": {}},
                        ],
                    ]
                ),
            )
        ),
        _graded(
            (
                LIMIT,
                st.sampled_from(
                    [
                        [{"name": "bad name"}],
                        [{}],
                        [{"name": "f"}, {"name": "f"}],
                        [{"name": "f", "parameters": [1]}],
                        [{"name": "f", "parameters": "schema"}],
                        [{"name": "f", "parameters": {"type": 12}}],
                        [{"name": "x" * 65}],
                    ]
                ),
            ),
            (TYPE, st.sampled_from(["x", [3], {"name": "f"}, [{"name": 5}], [None]])),
        ),
    ),
    "toolChoice": (
        _graded((OK, st.sampled_from([MISSING, None, "auto", "none"]))),
        _graded((LIMIT, st.sampled_from(["sometimes", 5, [], {"name": 5}, {"name": "nope"}]))),
    ),
    "responseFormat": (
        # (a valid one asks the fake's plain words to be JSON: an invalid_output, judged elsewhere)
        _graded((OK, st.sampled_from([MISSING, None]))),
        _graded(
            (
                LIMIT,
                st.sampled_from(
                    [
                        {},
                        {"type": "json_schema"},
                        {"type": "json_schema", "schema": "x"},
                        {"type": "json_schema", "schema": {"type": 12}},
                        {"type": "json_object", "schema": {}},
                    ]
                ),
            ),
            (
                TYPE,
                st.sampled_from(["json", 5, {"type": "xml"}, {"type": "json_schema", "strict": 1}]),
            ),
        ),
    ),
}
"""For each key of an ai:generate, values that pass and values that do not (with their grade)."""


@dataclass
class Sent:
    """One fuzzed frame and its verdict: ``kind`` is ``invalid`` (answered with ai:error
    invalid_request, its requestId one of ``ids``), ``generate`` (accepted: start … terminal),
    ``cancel`` (no answer of its own) or ``unknown`` (not judged here)."""

    wire: str | bytes
    kind: str
    ids: frozenset[str] = frozenset()
    request_id: str = ""
    must_finish: bool = False
    """A generate with no short timeoutMs: it must end in ai:done."""


def encode_pairs(pairs: Sequence[tuple[str, Any]]) -> str:
    """A JSON object from key-value pairs, duplicates kept in order (the last one counts)."""
    return (
        "{"
        + ",".join(orjson.dumps(k).decode() + ":" + orjson.dumps(v).decode() for k, v in pairs)
        + "}"
    )


@st.composite
def generate_frames(draw: st.DrawFn, ids: st.SearchStrategy[str] | None = None) -> Sent:
    """An ai:generate with each field valid, over a limit, or of the wrong type; unknown keys,
    duplicate keys, null for optional fields. ``ids``: the valid request ids to use."""
    count = draw(st.sampled_from([0, 0, 0, 1, 1, 2]))  # how many keys to break
    broken = draw(st.sets(st.sampled_from(sorted(FIELDS)), min_size=count, max_size=count))
    drawn = {key: draw(FIELDS[key][key in broken]) for key in FIELDS}
    if ids is not None and "requestId" not in broken:
        drawn["requestId"] = (draw(ids), OK)
    rid, rid_grade = drawn.pop("requestId")
    grades = {rid_grade}
    pairs: list[tuple[str, Any]] = [("type", "ai:generate")]
    if rid is not MISSING:
        pairs.append(("requestId", rid))
    values: dict[str, Any] = {}
    for key, (value, grade) in drawn.items():
        values[key] = value
        if value is not MISSING:
            pairs.append((key, value))
            grades.add(grade)
    extra = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2))
    pairs += [
        (k, v) for k, v in extra.items() if k not in values and k not in ("type", "requestId")
    ]
    pairs = draw(st.permutations(pairs))
    if draw(st.integers(0, 4)) == 0:  # a decoy: an earlier duplicate of a key
        key = draw(st.sampled_from([k for k, _ in pairs]))
        pairs.insert(0, (key, draw(json_scalars)))
    wire = encode_pairs(pairs)
    if rid_grade == TYPE:
        return Sent(wire, "invalid", frozenset({""}))
    if TYPE in grades:  # the field's error carries whatever id the frame has
        return Sent(wire, "invalid", frozenset({rid, ""} if rid_grade == BAD_ID else {rid}))
    if rid_grade == BAD_ID:
        return Sent(wire, "invalid", frozenset({""}))
    prompt = values["prompt"] if values["prompt"] is not MISSING else ""
    history = values["messages"] if isinstance(values["messages"], list) else []
    contents = [m.get("content", "") for m in history]
    if not prompt and not any(contents):
        grades.add(LIMIT)
    if len(prompt) + sum(map(len, contents)) > LIMITS["max_history_chars"]:
        grades.add(LIMIT)
    if LIMIT in grades:
        return Sent(wire, "invalid", frozenset({rid}))
    return Sent(wire, "generate", request_id=rid, must_finish="fast" not in grades)


@st.composite
def cancel_frames(draw: st.DrawFn, ids: st.SearchStrategy[str] | None = None) -> Sent:
    """An ai:cancel for a known, unknown or unusable id, maybe with unknown keys."""
    rid, grade = draw(FIELDS["requestId"][draw(st.integers(0, 3)) == 0])
    if ids is not None and grade == OK:
        rid = draw(ids)
    pairs: list[tuple[str, Any]] = [("type", "ai:cancel")]
    if rid is not MISSING:
        pairs.append(("requestId", rid))
    pairs += list(
        draw(st.dictionaries(st.sampled_from(["prompt", "x", "seq"]), json_scalars)).items()
    )
    wire = encode_pairs(draw(st.permutations(pairs)))
    if grade == OK:
        return Sent(wire, "cancel", request_id=rid)
    return Sent(wire, "invalid", frozenset({""}))


def judge_value(value: Any) -> Sent:
    """The verdict on an arbitrary JSON value sent as a frame."""
    wire = orjson.dumps(value).decode()
    if not isinstance(value, dict):
        return Sent(wire, "invalid", frozenset({""}))
    rid = value.get("requestId")
    rid = rid if isinstance(rid, str) else ""
    if value.get("type") in ("ai:generate", "ai:cancel"):
        return Sent(wire, "unknown", frozenset({rid, ""}), request_id=rid)
    return Sent(wire, "invalid", frozenset({rid}))


NOT_JSON = [
    '{"type":"ai:generate",',
    "{'type': 'ai:cancel', 'requestId': 'a'}",
    "\ufeff{}",
    "NaN",
    "1e400",
    '{"type":"ai:generate","requestId":"a","prompt":"\\ud800"}',  # a lone surrogate escape
    "[" * 1100 + "]" * 1100,  # past the parser's depth limit
    "",
    " ",
]
DEEP_GENERATE = (
    '{"type":"ai:generate","requestId":"a","prompt":"deep","x":' + "[" * 500 + "]" * 500 + "}"
)
"""Deeply nested (within the parser's limit) under an unknown key: ignored, a valid generate."""

not_client_types = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["ai:start", "ai:done", "AI:GENERATE", "ai:generate ", "", "ai:", "generate", None, 1]
        )
    },
    optional={"requestId": st.sampled_from(VALID_IDS) | json_scalars, "prompt": json_scalars},
).map(judge_value)
"""Objects whose ``type`` is not one a client may send (some a server's, some nearly right)."""
json_frames = st.one_of(
    generate_frames(),
    generate_frames(),
    generate_frames(),
    cancel_frames(),
    json_values.map(judge_value),
    not_client_types,
    st.sampled_from(NOT_JSON).map(lambda t: Sent(t, "invalid", frozenset({""}))),
    st.text(max_size=30).map(lambda t: Sent("x" + t, "invalid", frozenset({""}))),
    st.binary(max_size=30).map(lambda b: Sent(b, "invalid", frozenset({""}))),
    st.just(Sent(DEEP_GENERATE, "generate", request_id="a", must_finish=True)),
)


def matches(got: Sequence[Any], wanted: Sequence[tuple[frozenset[Any], bool]]) -> bool:
    """Whether ``got`` is ``wanted`` in order, each item one of its options (optional ones may
    be missing)."""

    @functools.cache
    def match(i: int, j: int) -> bool:
        if j == len(wanted):
            return i == len(got)
        options, optional = wanted[j]
        if optional and match(i, j + 1):
            return True
        return i < len(got) and got[i] in options and match(i + 1, j + 1)

    return match(0, 0)


REFUSED = ("invalid_request", "too_many_requests")
"""Codes of the answers a frame gets at once, from the bridge itself."""


def sync_replies(client: WsClient) -> list[tuple[str, str]]:
    """(code, requestId) of the invalid_request and too_many_requests errors received."""
    return [
        (frame["code"], frame["requestId"])
        for direction, frame in client.conversation.events
        if direction == "recv"
        and frame["type"] == "ai:error"
        and frame["code"] in REFUSED
        and not frame["requestId"].startswith("sentinel")
    ]


def received(client: WsClient) -> Iterator[dict[str, Any]]:
    """Every frame ``client`` received, each checked to be a well-formed server frame."""
    for direction, frame in client.conversation.events:
        if direction == "recv":
            assert_server_frame(frame)
            yield frame


async def sentinel(client: WsClient, name: str) -> None:
    """Send an invalid frame and read up to its answer: every earlier answer is in."""
    await client.send({"type": "ai:fuzz-sentinel", "requestId": name})
    await client.until(lambda f: f["requestId"] == name)


@pytest.fixture
async def json_stack(make_stack: StackFactory) -> Stack:
    """The stack every JSON-fuzz example shares: small limits, no frame-rate limit."""
    return await make_stack(
        Script(tokens=3, interval=0.005 * UNIT),  # long enough for duplicates and cancels to meet
        frames_per_second=10_000,
        frames_burst=10_000,
        **LIMITS,
    )


_json_examples = itertools.count()


@fuzz_settings(max_examples=150)
@given(frames=st.lists(json_frames, min_size=1, max_size=10))
async def test_json_frames_are_answered_by_the_book(json_stack: Stack, frames: list[Sent]) -> None:
    """Each bad frame gets its invalid_request, each valid generate a start and one terminal."""
    n = next(_json_examples)
    client = await json_stack.client(f"json-{n}")
    try:
        for sent in frames:
            await client.send(sent.wire)
        await sentinel(client, "sentinel-1")
        connection = served_by(json_stack, client)
        await wait_until(lambda: connection.in_flight == 0, "every generation to end")
        await sentinel(client, "sentinel-2")
        frames_in = list(received(client))
        wanted = [
            (frozenset(("invalid_request", i) for i in s.ids), s.kind == "unknown")
            for s in frames
            if s.kind in ("invalid", "unknown")
        ]
        got = sync_replies(client)
        assert matches(got, wanted), f"answers {got}, expected {wanted}"
        generated = {s.request_id for s in frames if s.kind == "generate"}
        loose = {s.request_id for s in frames if s.kind in ("cancel", "unknown")}
        loose |= {s.request_id for s in frames if s.kind == "generate" and not s.must_finish}
        for rid in generated:
            own = [f for f in frames_in if f["requestId"] == rid and f.get("code") not in REFUSED]
            assert own and own[0]["type"] == "ai:start", f"{rid!r} was accepted: {own}"
            for end in (f for f in own if f["type"] in TERMINAL):
                if rid in loose:
                    assert end["type"] == "ai:done" or end["code"] in ("cancelled", "timeout"), end
                else:
                    assert end["type"] == "ai:done", end
        event(f"json: {len(got)} invalid, {len(generated)} generated")
        await client.generate("after-json", "still there?")
        assert (await client.finish("after-json"))["type"] == "ai:done"
    except BaseException:
        client.abandon()
        raise
    finally:
        await client.ws.close()
    await quiesce(json_stack)


# --- JSON-level fuzzing over the frame budget --------------------------------------------------

RATE_BURST = 5
HOLD = "#fake " + orjson.dumps({"ttft": 60}).decode()
"""A generation that stays running (no first token for a minute) until it is cancelled."""
bad_frames = st.one_of(
    not_client_types,
    st.sampled_from(NOT_JSON).map(lambda t: Sent(t, "invalid", frozenset({""}))),
    st.binary(max_size=10).map(lambda b: Sent(b, "invalid", frozenset({""}))),
)
rate_frames = st.lists(
    st.one_of(
        generate_frames(ids=st.integers(0, 999).map("g{}".format)),
        generate_frames(ids=st.integers(0, 999).map("g{}".format)),
        cancel_frames(ids=st.integers(0, 999).map("c{}".format)),  # never a running id
        bad_frames,
    ),
    min_size=RATE_BURST,
    max_size=12,
    unique_by=lambda s: s.request_id if s.kind == "generate" else (s.kind, s.wire),
)


@pytest.fixture
async def rate_stack(make_stack: StackFactory) -> Stack:
    """The stack every rate-limit example shares: a burst of RATE_BURST frames, no refill."""
    return await make_stack(
        Script(tokens=3), frames_per_second=0.001, frames_burst=RATE_BURST, **LIMITS
    )


def ended(client: WsClient, request_ids: set[str]) -> bool:
    """Whether every one of ``request_ids`` has had its terminal frame (not a refusal)."""
    seen = {
        frame["requestId"]
        for direction, frame in client.conversation.events
        if direction == "recv" and frame["type"] in TERMINAL and frame.get("code") not in REFUSED
    }
    return request_ids <= seen


_rate_examples = itertools.count()


@fuzz_settings(max_examples=40)
@given(frames=rate_frames)
async def test_frames_over_the_budget_are_refused_and_the_socket_goes_on(
    rate_stack: Stack, frames: list[Sent]
) -> None:
    """Past frames_burst a generate gets too_many_requests, a bad frame nothing; cancels pass."""
    n = next(_rate_examples)
    client = await rate_stack.client(f"rate-{n}")
    try:
        await client.generate("hold", HOLD)  # spends one frame of the budget
        await client.until(lambda f: f["type"] == "ai:start")
        budget = RATE_BURST - 1
        wanted: list[tuple[frozenset[tuple[str, str]], bool]] = []
        accepted: dict[str, Sent] = {}
        for sent in frames:
            await client.send(sent.wire)
            if sent.kind == "invalid":
                if budget:
                    wanted.append((frozenset(("invalid_request", i) for i in sent.ids), False))
                else:  # no answer (docs/protocol.md); too_many_requests would do as well
                    wanted.append((frozenset(("too_many_requests", i) for i in sent.ids), True))
                budget = max(budget - 1, 0)
            elif sent.kind == "generate":
                if budget:
                    accepted[sent.request_id] = sent
                else:
                    wanted.append((frozenset({("too_many_requests", sent.request_id)}), False))
                budget = max(budget - 1, 0)
        event(f"rate: {len(accepted)} accepted, {len(wanted)} answered or dropped")
        await client.cancel("hold")  # over the budget, and it still passes
        assert (await client.finish("hold"))["code"] == "cancelled"
        if not ended(client, set(accepted)):
            await client.until(lambda _: ended(client, set(accepted)))
        got = sync_replies(client)
        assert matches(got, wanted), f"answers {got}, expected {wanted}"
        frames_in = list(received(client))
        assert all(f["retryable"] for f in frames_in if f.get("code") == "too_many_requests")
        for rid, sent in accepted.items():
            own = [f for f in frames_in if f["requestId"] == rid and f.get("code") not in REFUSED]
            assert own[0]["type"] == "ai:start", own
            if sent.must_finish:
                assert own[-1]["type"] == "ai:done", own[-1]
        assert client.ws.close_code is None, "the socket stays open"
    except BaseException:
        client.abandon()
        raise
    finally:
        await client.ws.close()
    await serves_a_generation(rate_stack, f"after-rate-{n}")
    await quiesce(rate_stack)


# --- defects found, now closed ----------------------------------------------------------------


# Found by this suite: an ai:error answering a bad frame echoed the frame's requestId at any
# length (up to ws_max_size), and the outbox counted an error event by its message alone, so 60
# answers of ~500 KB waited for a socket that read nothing while the outbox counted ~8 KB.
async def test_answers_to_bad_frames_stay_within_the_send_buffer(make_stack: StackFactory) -> None:
    """Answers to bad frames waiting for a socket that reads nothing stay in ws_send_buffer."""
    stack = await make_stack()
    limit = stack.bridge.settings.ws_send_buffer
    client = await RawClient.connect(stack.bridge.port, "hoarder", buffers=64 * 1024)
    bad = b'{"type":"ai:nope","requestId":"' + b"x" * 500_000 + b'"}'
    client.record_sent([(TEXT, bad)] * 60)
    sender = asyncio.create_task(client.send(frame(TEXT, bad) * 60))  # 30 MB, never reading
    done, _ = await asyncio.wait([sender], timeout=5 * UNIT)
    if not done:  # the bridge stopped reading the socket: nothing piles up (bounded)
        sender.cancel()
        await client.close()
        return
    await client.read_until(lambda: len(client.frames) == 60 or client.close_code is not None)
    answered = sum(len(orjson.dumps(f)) for f in client.frames)
    await client.close()
    check_conversation(client.conversation)
    # (the outbox may hold twice its bound; the kernel's socket buffers hold up to ~1 MiB more)
    assert client.close_code == 1008 or answered <= 2 * limit + (1 << 20), (
        f"{answered} bytes of answers waited for a socket that read nothing "
        f"(ws_send_buffer {limit}), and it was not cut off"
    )
