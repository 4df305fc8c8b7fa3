"""A fast fake OpenAI-compatible upstream for benchmarks: ``python -m bench.upstream``.

It answers ``POST /v1/chat/completions`` (``"stream": true``) with chat-completion chunks as
server-sent events, scripted by the prompt (``bench.spec``), and keeps one record per request: when
it arrived, when the first token was written, when the client closed the connection. It is built to
cost as little CPU as possible, so it is never what a scenario measures: one ``asyncio.Protocol``
per connection, token chunks rendered once (by the product's fake upstream,
``aistream.testing.fake_upstream.chunks``) and cycled (reasoning chunks too, one table per delta
key, streamed before the answer's on the same schedule), each paced stream on its own absolute
schedule (no task, no drift; with no scripted TTFT the first token goes out as the request is
read), an unpaced stream written in batches as fast as the socket's flow control allows. Paced
tokens due in the same millisecond share one timer (``_Slots``): at 1,000 streams that is ~1,000
timers a second instead of 30,000, each of which cost a heap push and pop compared by a Python
``__lt__``; a token goes out at most 1 ms after its time, never before.

The client closing its connection is noticed in ``eof_received``/``connection_lost``, so a
record's ``closed_at`` is the moment the kernel told us. Control: ``GET /_bench/records``,
``POST /_bench/reset``, ``GET /_bench/stats``. Times are ``time.monotonic()``, comparable across
processes on one Linux machine.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import resource
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from aistream.testing.fake_upstream.chunks import DONE, completion_chunk, sse_event, usage_chunk
from bench.spec import REASONING_FIELDS, parse_prompt, reasoning_text, token_text

__all__ = ["Record", "main"]

_CYCLE = 1000  # distinct token chunks, cycled
_BATCH = 128  # tokens per write when unpaced
_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n"
)
_ID, _CREATED, _MODEL = "chatcmpl-bench", 1_700_000_000, "bench"  # the same in every chunk


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(payload: bytes) -> bytes:
    """One SSE event, rendered by the product's fake upstream, framed as one HTTP chunk."""
    return _http_chunk(sse_event(payload))


def _chunk(delta: dict[str, str], finish: str | None) -> bytes:
    return completion_chunk(_ID, _CREATED, _MODEL, delta, finish)


_TOKENS = [_event(_chunk({"content": token_text(i)}, None)) for i in range(_CYCLE)]
_FIRST = _event(_chunk({"role": "assistant", "content": token_text(0)}, None))
_DONE = _http_chunk(DONE) + b"0\r\n\r\n"
_REASONING: dict[str, tuple[bytes, list[bytes]]] = {}
"""Delta key → (first reasoning chunk, with the role; the cycled ones), rendered on first use."""


_FINISH = {reason: _event(_chunk({}, reason)) for reason in ("stop", "length")}


def _finish(reason: str, usage: tuple[int, int, int] | None) -> bytes:
    """The finish chunk, the usage chunk (prompt, completion and reasoning tokens) if asked for,
    ``[DONE]`` and the end of the body."""
    out = _FINISH[reason]
    if usage is not None:
        prompt, completion, reasoning = usage
        chunk = usage_chunk(_ID, _CREATED, _MODEL, prompt, completion, reasoning=reasoning or None)
        out += _event(chunk)
    return out + _DONE


def _reasoning_chunks(field: str) -> tuple[bytes, list[bytes]]:
    rendered = _REASONING.get(field)
    if rendered is None:
        first = _event(_chunk({"role": "assistant", field: reasoning_text(0)}, None))
        cycled = [_event(_chunk({field: reasoning_text(i)}, None)) for i in range(_CYCLE)]
        rendered = _REASONING[field] = (first, cycled)
    return rendered


def _tokens(start: int, end: int) -> bytes:
    return b"".join(_FIRST if i == 0 else _TOKENS[i % _CYCLE] for i in range(start, end))


def _events(start: int, end: int, reasoning: int, field: str) -> bytes:
    """Events ``start`` to ``end`` of a stream whose first ``reasoning`` events are reasoning
    (the first of all carries the role) and the rest answer tokens."""
    if not reasoning:
        return _tokens(start, end)
    first, cycled = _reasoning_chunks(field)
    return b"".join(
        (first if i == 0 else cycled[i % _CYCLE])
        if i < reasoning
        else _TOKENS[(i - reasoning) % _CYCLE]
        for i in range(start, end)
    )


@dataclass(slots=True)
class Record:
    """What happened to one request."""

    tag: str
    received_at: float
    first_token_at: float | None = None
    """When the first chunk (reasoning or answer) was written."""
    tokens_sent: int = 0
    """Chunks written, reasoning and answer."""
    ended_at: float | None = None
    """When the whole answer had been written."""
    closed_at: float | None = None
    """When the client closed the connection while the answer was in progress."""
    outcome: str = "in_progress"


def _loop_time(loop: asyncio.AbstractEventLoop, monotonic: float) -> float:
    """The event loop's clock reading at ``time.monotonic()`` time ``monotonic``."""
    return loop.time() + (monotonic - time.monotonic())


class _Slots:
    """Paced writes due in the same millisecond, run by one timer."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._due: dict[int, list[tuple[_Connection, _Stream]]] = {}

    def add(self, at: float, connection: _Connection, stream: _Stream) -> None:
        """Run ``connection._tick(stream)`` at monotonic time ``at`` (rounded up to the ms)."""
        slot = math.ceil(at * 1000)
        waiting = self._due.get(slot)
        if waiting is None:
            waiting = self._due[slot] = []
            self._loop.call_at(_loop_time(self._loop, slot / 1000), self._run, slot)
        waiting.append((connection, stream))

    def _run(self, slot: int) -> None:
        for connection, stream in self._due.pop(slot):
            connection._tick(stream)  # a no-op if the stream has ended meanwhile


class _Server:
    """Shared state: the records and the paced schedule."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.connections = 0
        self.slots = _Slots()


class _Stream:
    """One answer in progress on a connection."""

    __slots__ = (
        "body",
        "field",
        "handle",
        "interval",
        "next",
        "reasoning",
        "record",
        "start",
        "tail",
        "total",
    )

    def __init__(
        self,
        record: Record,
        total: int,
        interval: float,
        start: float,
        tail: bytes,
        reasoning: int = 0,
        field: str = REASONING_FIELDS[0],
    ):
        self.record = record
        self.total = total
        self.reasoning = reasoning
        # the first `reasoning` events are reasoning, under the delta key `field`
        self.field = field
        self.interval = interval
        self.start = start
        self.tail = tail
        self.next = 0
        self.handle: asyncio.Handle | None = None
        self.body = b""


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._stream: _Stream | None = None
        self._paused = False
        self._loop = asyncio.get_running_loop()

    # --- transport callbacks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server.connections += 1

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while self._stream is None and self._handle_request():
            pass

    def eof_received(self) -> bool:
        self._client_closed()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._client_closed()
        self._server.connections -= 1

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        stream = self._stream
        if stream is not None and stream.interval == 0 and stream.handle is None:
            self._pump(stream)

    # --- requests ---------------------------------------------------------------------------

    def _handle_request(self) -> bool:
        """Answer one complete request from the buffer; False if none is complete yet."""
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if len(self._buf) < end + 4 + length:
            return False
        body = bytes(self._buf[end + 4 : end + 4 + length])
        del self._buf[: end + 4 + length]
        method, path = head[0].split(" ")[:2]
        if path.startswith("/_bench/"):
            self._control(method, path)
        else:
            self._answer(body)
        return True

    def _control(self, method: str, path: str) -> None:
        server = self._server
        result: Any
        if path == "/_bench/records":
            result = [asdict(r) for r in server.records]
        elif path == "/_bench/reset" and method == "POST":
            server.records = []
            result = {"cleared": True}
        elif path == "/_bench/stats":
            active = sum(r.outcome == "in_progress" for r in server.records)
            result = {"connections": server.connections, "active": active}
        else:
            result = {"error": "no such route"}
        data = orjson.dumps(result)
        assert self._transport is not None
        self._transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (len(data), data)
        )

    def _answer(self, raw: bytes) -> None:
        now = time.monotonic()
        body = orjson.loads(raw)
        messages = body.get("messages") or [{}]
        spec, tag = parse_prompt(str(messages[-1].get("content", "")))
        record = Record(tag=tag, received_at=now)
        self._server.records.append(record)
        total, reason = spec.reasoning + spec.tokens, "stop"
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        if isinstance(limit, int) and limit < total:  # (it counts reasoning tokens too)
            total, reason = limit, "length"
        reasoning = min(spec.reasoning, total)
        options = body.get("stream_options") or {}
        usage = None
        if options.get("include_usage"):
            usage = (len(str(messages).split()), total, reasoning)
        tail = _finish(reason, usage)
        start = now + spec.ttft
        stream = _Stream(record, total, spec.interval, start, tail, reasoning, spec.reasoning_field)
        self._stream = stream
        assert self._transport is not None
        self._transport.write(_HEAD)
        if spec.interval > 0 and spec.ttft <= 0:
            self._tick(stream)  # the first token now, not behind this turn's due tokens
        elif spec.interval > 0:
            stream.handle = self._loop.call_at(
                _loop_time(self._loop, stream.start), self._tick, stream
            )
        elif spec.ttft > 0:
            stream.handle = self._loop.call_at(
                _loop_time(self._loop, stream.start), self._pump, stream
            )
        else:
            self._pump(stream)

    # --- writing ----------------------------------------------------------------------------

    def _tick(self, stream: _Stream) -> None:
        """Write the next paced token and schedule the one after it."""
        stream.handle = None
        if self._stream is not stream or self._transport is None:
            return
        self._write_tokens(stream, stream.next + 1)
        if self._stream is stream:
            self._server.slots.add(stream.start + stream.next * stream.interval, self, stream)

    def _pump(self, stream: _Stream) -> None:
        """Write unpaced tokens in batches while the socket takes them."""
        stream.handle = None
        if self._stream is not stream or self._transport is None or self._paused:
            return
        self._write_tokens(stream, min(stream.next + _BATCH, stream.total))
        if self._stream is stream and not self._paused:
            stream.handle = self._loop.call_soon(self._pump, stream)

    def _write_tokens(self, stream: _Stream, end: int) -> None:
        transport = self._transport
        assert transport is not None
        record = stream.record
        end = min(end, stream.total)
        if end > stream.next:
            transport.write(_events(stream.next, end, stream.reasoning, stream.field))
            if record.first_token_at is None:
                record.first_token_at = time.monotonic()
            stream.next = record.tokens_sent = end
        if stream.next >= stream.total:
            transport.write(stream.tail)
            record.ended_at = time.monotonic()
            record.outcome = "completed"
            self._stream = None
            if self._buf:
                self.data_received(b"")

    def _client_closed(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return
        if stream.handle is not None:
            stream.handle.cancel()
        stream.record.closed_at = time.monotonic()
        stream.record.outcome = "client_closed"


async def _serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    state = _Server()
    server = await loop.create_server(lambda: _Connection(state), host, port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    print(f"bench-upstream listening on http://{host}:{bound}/v1", flush=True)
    await stop.wait()
    server.close()


def raise_fd_limit() -> None:
    """Raise this process's open-file limit to its hard limit (10k connections need it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    raise_fd_limit()
    asyncio.run(_serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
