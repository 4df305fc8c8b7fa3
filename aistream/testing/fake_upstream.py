"""A fake OpenAI-compatible upstream that really speaks HTTP/1.1 and server-sent events.

``FakeUpstream`` is a small server on plain ``asyncio.start_server``. ``POST /v1/chat/completions``
with ``"stream": true`` answers chunks in the chat-completions format, as the real API does, and a
``Script`` says how: status, delays, token count, and how the stream ends (normally, truncated,
stalled, reset, malformed, or with an error event). Every request gets a ``RequestRecord`` saying
what arrived, what was sent and how the response ended, including whether the client closed the
connection while the response was in progress (``active()`` is the list of "ghost generations").
A reader task per connection sees the client's EOF or reset at once, even while the fake is
sleeping or stalled; so a client that half-closes its side counts as gone. Non-streaming requests
get a 400, unknown paths a 404 (both recorded)::

    async with FakeUpstream(Script(tokens=3, interval=0.01)) as fake:
        ...  # point a client at fake.base_url
        await fake.wait_idle()  # no ghost generations
        assert [r.outcome for r in fake.records] == ["completed"]

A request picks its script in this order:

1. a last user message starting with ``#fake {...}``: the JSON object's keys override the script
   the request would otherwise get (this is how other processes drive it);
2. the in-process callback ``FakeUpstream.script_for(body)``, if set and it returns a script;
3. ``FakeUpstream.script``, the default.

Out of process it is controlled over HTTP: ``GET /_fake/records``, ``GET|POST /_fake/script``,
``POST /_fake/reset`` and ``GET /_fake/stats`` (open connections not counting the one asking,
responses in progress, requests); ``python -m aistream.testing.fake_upstream``
runs it until SIGTERM or SIGINT. Timestamps are ``time.monotonic()`` values, which another process
on the same Linux machine can compare with its own (CLOCK_MONOTONIC is system-wide).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import http
import json
import logging
import re
import secrets
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

import orjson

__all__ = ["DIRECTIVE", "FakeUpstream", "Outcome", "RequestRecord", "Script", "ScriptFor", "main"]

logger = logging.getLogger(__name__)

Outcome = Literal[
    "in_progress", "completed", "scripted_end", "reset", "client_closed", "server_closed", "failed"
]
"""How a response ended.

``completed``: sent in full as scripted (a whole stream ending in ``[DONE]``, or an error status);
``scripted_end``: the script ended the stream early (``close_after``, ``malformed_after``,
``error_event_after``); ``reset``: the script reset the connection; ``client_closed``: the client
closed or reset the connection first; ``server_closed``: the fake was closed first; ``failed``: a
bug in the fake (logged).
"""

ScriptFor = Callable[[Any], "Script | None"]
"""Picks the script for a request body (parsed JSON), or ``None`` for the default."""

DIRECTIVE = "#fake "
"""A last user message starting with this, then a JSON object, overrides the script's keys."""

_ENDINGS = ("reset_after", "close_after", "malformed_after", "error_event_after", "stall_after")
"""The knobs that end a stream early; on a tie the first listed wins."""
_READ_SIZE = 65536
_MAX_HEAD = 65536
_BATCH = 64  # tokens per write when interval is 0
_CACHE_SIZE = 128


@dataclass(frozen=True, slots=True)
class Script:
    """How the fake answers one request; the defaults stream five tokens and stop normally."""

    status: int = 200
    """HTTP status; anything but 200 answers ``error_body`` as JSON instead of a stream."""
    error_body: bytes | Mapping[str, Any] | None = None
    """Body of a non-200 answer; ``None`` is an OpenAI-style ``{"error": {...}}`` object."""
    error_message: str | None = None
    """Message of the default error body and of the mid-stream error event."""
    retry_after: float | None = None
    """Seconds for the ``retry-after`` and ``retry-after-ms`` headers (useful with 429)."""
    headers_delay: float = 0.0
    """Seconds to wait before sending the status line and headers."""
    ttft: float = 0.0
    """Seconds to wait after the headers before the first event."""
    interval: float = 0.0
    """Seconds to wait between events; 0 writes as fast as the connection takes it."""
    tokens: int | None = None
    """Number of tokens; ``None`` is the number of words in ``text``, or 5 without ``text``."""
    text: str | None = None
    """Text whose words (with trailing spaces) are the tokens, cycled if ``tokens`` is larger;
    without it the tokens are ``"tok0 "``, ``"tok1 "``, ..."""
    finish_reason: str = "stop"
    """Finish reason of a complete stream (``"length"`` when the request's max_tokens cut it)."""
    stall_after: int | None = None
    """After this many tokens send nothing more and keep the connection open until the client
    closes it."""
    close_after: int | None = None
    """After this many tokens end the body cleanly with no finish reason and no ``[DONE]``."""
    reset_after: int | None = None
    """After this many tokens reset the TCP connection (RST)."""
    malformed_after: int | None = None
    """After this many tokens send a ``data:`` line that is not JSON, then end the body."""
    error_event_after: int | None = None
    """After this many tokens send ``data: {"error": {...}}``, then end the body."""
    usage: bool = True
    """Send the usage chunk when the request asks for it (``stream_options.include_usage``)."""
    honour_max_tokens: bool = True
    """Cut the stream at the request's ``max_tokens``; False plays an upstream that ignores it."""

    def __post_init__(self) -> None:
        """Reject values the fake cannot act on."""
        if not 200 <= self.status <= 599 or self.status in (204, 304):
            raise ValueError(f"status: unsupported HTTP status {self.status}")
        for name in ("headers_delay", "ttft", "interval"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must not be negative")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError("retry_after: must not be negative")
        for name in ("tokens", *_ENDINGS):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name}: must not be negative")
        if self.text is not None and not self.text.split():
            raise ValueError("text: must contain at least one word")

    @classmethod
    def from_json(cls, data: Mapping[str, Any], base: Script | None = None) -> Script:
        """Build a script from a JSON object, its keys overriding ``base`` (default: defaults)."""
        if not isinstance(data, Mapping):
            raise TypeError(f"a script is a JSON object, not {type(data).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        changes: dict[str, Any] = {}
        for name, value in data.items():
            spec = known.get(name)
            if spec is None:
                raise ValueError(f"unknown script key {name!r}; known: {', '.join(known)}")
            changes[name] = _check_json_value(name, value, spec.default is None)
        return dataclasses.replace(base if base is not None else cls(), **changes)

    def to_json(self) -> dict[str, Any]:
        """Return the script as a JSON-compatible dict (``from_json`` reads it back)."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if isinstance(self.error_body, bytes):
            out["error_body"] = self.error_body.decode("utf-8", "replace")
        elif self.error_body is not None:
            out["error_body"] = dict(self.error_body)
        return out

    def token_texts(self) -> list[str]:
        """Return the texts of the tokens this script streams, in order."""
        if self.text is None:
            return [f"tok{i} " for i in range(5 if self.tokens is None else self.tokens)]
        words = re.findall(r"\S+\s*", self.text)
        words[0] = self.text[: len(self.text) - len(self.text.lstrip())] + words[0]
        count = len(words) if self.tokens is None else self.tokens
        if count > len(words) and not words[-1][-1].isspace():
            words[-1] += " "  # the text repeats: keep its last and first words apart
        return [words[i % len(words)] for i in range(count)]


def _ending(script: Script, tokens: int) -> tuple[int, str] | None:
    """Return ``(after, knob)`` for the knob that ends a stream of ``tokens`` first, if any."""
    best: tuple[int, str] | None = None
    for name in _ENDINGS:
        value = getattr(script, name)
        if value is not None and value <= tokens and (best is None or value < best[0]):
            best = (value, name)
    return best


def _check_json_value(name: str, value: Any, optional: bool) -> Any:
    """Check one JSON value for a script key, converting what JSON cannot express."""
    if value is None and optional:
        return None
    if name == "error_body":
        if isinstance(value, str):
            return value.encode()
        if isinstance(value, dict):
            return value
        raise ValueError("error_body: must be a string or an object")
    if name in ("usage", "honour_max_tokens"):
        ok = isinstance(value, bool)
    elif name in ("status", "tokens", *_ENDINGS):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif name in ("retry_after", "headers_delay", "ttft", "interval"):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(f"{name}: unexpected value {value!r}")
    return value


@dataclass(slots=True, eq=False)
class RequestRecord:
    """What happened to one request: what arrived, what was sent, and how the response ended."""

    index: int
    """Position in ``FakeUpstream.records`` (counting from the last reset)."""
    connection: int
    """Number of the TCP connection it arrived on (equal numbers: the connection was reused)."""
    method: str
    path: str
    headers: dict[str, str]
    """Request headers, names lowercased."""
    body: Any
    """The parsed JSON body, or ``None``."""
    received_at: float
    """``time.monotonic()`` when the whole request had arrived."""
    script: Script | None = None
    status: int | None = None
    """Status sent, once the status line has been written."""
    headers_sent_at: float | None = None
    first_token_at: float | None = None
    tokens_sent: int = 0
    """Content tokens written to the connection so far."""
    outcome: Outcome = "in_progress"
    finished_at: float | None = None
    """When the server ended the response itself (completed, scripted end, reset, shut down)."""
    client_closed_at: float | None = None
    """When the server saw the client close or reset the connection during the response."""
    client_close: Literal["eof", "reset", "write_error"] | None = None
    """How the client's close showed: end of file, a reset on read, or a failed write."""

    @property
    def active(self) -> bool:
        """Whether the response is still in progress."""
        return self.outcome == "in_progress"

    def to_json(self) -> dict[str, Any]:
        """Return the record as a JSON-compatible dict."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["script"] = None if self.script is None else self.script.to_json()
        return out


@dataclass(slots=True, eq=False)
class _Request:
    """One parsed HTTP request."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class _BadRequestError(Exception):
    """The bytes on a connection are not an HTTP/1.1 request the fake understands."""


@dataclass(slots=True, eq=False)
class _Connection:
    """One accepted TCP connection and what is happening on it."""

    number: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    task: asyncio.Task[None] | None
    buf: bytearray = field(default_factory=bytearray)
    readable: asyncio.Event = field(default_factory=asyncio.Event)
    eof: bool = False
    current: RequestRecord | None = None
    response: asyncio.Task[bool] | None = None


@dataclass(frozen=True, slots=True)
class _Rendered:
    """Pre-rendered HTTP chunks of a stream: every token chunk, then the finish chunk."""

    body: bytes
    offsets: tuple[int, ...]
    """``offsets[i]`` is where token ``i`` starts; ``offsets[-1]`` where the finish chunk starts."""

    @property
    def count(self) -> int:
        """Number of tokens."""
        return len(self.offsets) - 1


_ID_PLACEHOLDER = b"chatcmpl-" + b"@" * 24
_CREATED_PLACEHOLDER = 1_000_000_000
_ID_PATTERN = b'"id":"' + _ID_PLACEHOLDER + b'"'
_CREATED_PATTERN = b'"created":%d' % _CREATED_PLACEHOLDER
_TERMINATOR = b"0\r\n\r\n"


def _http_chunk(event: bytes) -> bytes:
    """Frame one SSE event as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(event), event)


def _sse(payload: bytes) -> bytes:
    """Frame a ``data:`` payload as an SSE event inside an HTTP chunk."""
    return _http_chunk(b"data: " + payload + b"\n\n")


_DONE = _sse(b"[DONE]")
_MALFORMED = _sse(b'{"id": "chatcmpl-malformed", "choices": [{"delta": {"content": "no')


def _chunk(model: str, delta: dict[str, str], finish_reason: str | None) -> bytes:
    """Render one ``chat.completion.chunk`` with placeholders for its id and creation time."""
    return orjson.dumps(
        {
            "id": _ID_PLACEHOLDER.decode(),
            "object": "chat.completion.chunk",
            "created": _CREATED_PLACEHOLDER,
            "model": model,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
    )


def _render(texts: Sequence[str], model: str, finish_reason: str) -> _Rendered:
    """Pre-render the token and finish chunks of a stream (ids and times are filled in later)."""
    mark = "\x00content\x00"
    head, tail = _chunk(model, {"content": mark}, None).split(orjson.dumps(mark))
    size = len(b"data: \n\n") + len(head) + len(tail)
    parts: list[bytes] = []
    offsets = [0]
    for i, text in enumerate(texts):
        if i == 0:
            parts.append(_sse(_chunk(model, {"role": "assistant", "content": text}, None)))
        else:  # the same chunk with only the content spliced in: no dict, one small encode
            content = orjson.dumps(text)
            parts.append(b"%x\r\ndata: %s%s%s\n\n\r\n" % (size + len(content), head, content, tail))
        offsets.append(offsets[-1] + len(parts[-1]))
    parts.append(_sse(_chunk(model, {}, finish_reason)))
    return _Rendered(b"".join(parts), tuple(offsets))


def _message_text(content: Any) -> str:
    """Return the text of a message's content (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = (p.get("text") for p in content if isinstance(p, dict))
        return "\n".join(t for t in texts if isinstance(t, str))
    return ""


def _messages(body: Any) -> list[dict[str, Any]]:
    """Return the request's messages that are JSON objects."""
    messages = body.get("messages") if isinstance(body, dict) else None
    return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []


def _directive(body: Any) -> dict[str, Any] | None:
    """Return the ``#fake {...}`` overrides in the request's last user message, if any."""
    messages = _messages(body)
    users = [m for m in messages if m.get("role") == "user"] or messages
    if not users:
        return None
    text = _message_text(users[-1].get("content")).lstrip()
    if not text.startswith(DIRECTIVE):
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text[len(DIRECTIVE) :].lstrip())
    except ValueError as exc:
        raise ValueError(f"{DIRECTIVE.strip()} directive is not followed by JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{DIRECTIVE.strip()} directive must be followed by a JSON object")
    return value


def _prompt_tokens(body: Any) -> int:
    """Count the prompt's tokens as the whitespace-separated words of every message."""
    return sum(len(_message_text(m.get("content")).split()) for m in _messages(body))


def _error_body(script: Script) -> bytes:
    """Return the body of a non-200 answer."""
    if isinstance(script.error_body, bytes):
        return script.error_body
    if script.error_body is not None:
        return orjson.dumps(dict(script.error_body))
    kind, code = {
        400: ("invalid_request_error", None),
        401: ("invalid_request_error", "invalid_api_key"),
        403: ("permission_error", None),
        404: ("invalid_request_error", "model_not_found"),
        429: ("requests", "rate_limit_exceeded"),
    }.get(
        script.status, ("server_error" if script.status >= 500 else "invalid_request_error", None)
    )
    message = script.error_message or f"fake upstream: scripted status {script.status}"
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


def _head(status: int, headers: Sequence[tuple[str, str]], keep_alive: bool) -> bytes:
    """Render a response's status line and headers."""
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    lines = [f"HTTP/1.1 {status} {phrase}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    if not keep_alive:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class FakeUpstream:
    """A scriptable OpenAI-compatible server on 127.0.0.1 that records every request."""

    def __init__(
        self,
        script: Script | None = None,
        *,
        script_for: ScriptFor | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """Configure the server; ``start()`` (or ``async with``) starts listening."""
        self.script: Script = script if script is not None else Script()
        """The default script."""
        self.script_for: ScriptFor | None = script_for
        """Optional callback choosing a script per request body."""
        self.records: list[RequestRecord] = []
        """One record per request (control requests under ``/_fake/`` are not recorded)."""
        self.connections_opened = 0
        """TCP connections accepted so far."""
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._closing = False
        self._conns: dict[int, _Connection] = {}
        self._cache: dict[tuple[str, str | None, int | None, str, int | None], _Rendered] = {}
        self._changed = asyncio.Event()
        self._waiters = 0

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening; ``port`` and ``base_url`` are valid afterwards."""
        if self._server is not None:
            raise RuntimeError("fake upstream already started")
        self._closing = False
        self._server = await asyncio.start_server(
            self._serve, self._host, self._port, limit=_READ_SIZE, backlog=1024
        )
        logger.debug("fake upstream listening on %s", self.base_url)

    async def close(self) -> None:
        """Stop listening, end every response in progress and close every connection."""
        server, self._server = self._server, None
        if server is None:
            return
        self._closing = True
        server.close()
        conns = list(self._conns.values())
        for conn in conns:
            if conn.current is not None:
                self._end(conn.current, "server_closed")
            if conn.task is not None:
                conn.task.cancel()
        await asyncio.gather(*(c.task for c in conns if c.task), return_exceptions=True)
        for conn in conns:  # until each transport has really closed its socket
            with contextlib.suppress(ConnectionError, OSError):
                await conn.writer.wait_closed()
        await server.wait_closed()

    async def __aenter__(self) -> Self:
        """Start the server."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the server."""
        await self.close()

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("fake upstream is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def base_url(self) -> str:
        """The OpenAI base URL of the server, ``http://127.0.0.1:PORT/v1``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}/v1"

    @property
    def connections(self) -> int:
        """Number of TCP connections open now."""
        return len(self._conns)

    # --- what happened -----------------------------------------------------------------------

    def active(self) -> list[RequestRecord]:
        """Return the responses still in progress (neither ended nor closed by the client)."""
        return [r for r in self.records if r.outcome == "in_progress"]

    def clear(self) -> None:
        """Forget every record (responses in progress keep updating their own record)."""
        self.records = []
        self._notify()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` is true, re-checking on every change; TimeoutError if not."""
        async with asyncio.timeout(timeout):
            self._waiters += 1
            try:
                while not predicate():
                    await self._changed.wait()
            finally:
                self._waiters -= 1

    async def wait_requests(self, n: int, timeout: float = 5.0) -> list[RequestRecord]:
        """Wait until at least ``n`` requests are recorded and return the first ``n``."""
        await self.wait_for(lambda: len(self.records) >= n, timeout)
        return self.records[:n]

    async def wait_closed(self, record: RequestRecord, timeout: float = 5.0) -> RequestRecord:
        """Wait until ``record``'s response has ended, however it ended, and return it."""
        await self.wait_for(lambda: not record.active, timeout)
        return record

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until no response is in progress."""
        await self.wait_for(lambda: not self.active(), timeout)

    def _notify(self) -> None:
        """Wake every waiter (only if there are any: this runs once per token)."""
        if self._waiters:
            self._changed.set()
            self._changed = asyncio.Event()

    def _end(
        self,
        record: RequestRecord,
        outcome: Outcome,
        client_close: Literal["eof", "reset", "write_error"] | None = None,
    ) -> None:
        """End a response in progress with ``outcome`` (a no-op if it has already ended)."""
        if record.outcome != "in_progress":
            return
        record.outcome = outcome
        if outcome == "client_closed":
            record.client_closed_at = time.monotonic()
            record.client_close = client_close
        else:
            record.finished_at = time.monotonic()
        logger.debug("request %d: %s after %d tokens", record.index, outcome, record.tokens_sent)
        self._notify()

    # --- connections -------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection: requests one after another, while a pump watches for EOF."""
        self.connections_opened += 1
        conn = _Connection(self.connections_opened, reader, writer, asyncio.current_task())
        if self._closing:
            writer.close()
            return
        self._conns[conn.number] = conn
        self._notify()
        try:
            await self._serve_requests(conn)
        except asyncio.CancelledError:
            if not self._closing:
                raise
            # close() cancelled us; ending quietly keeps asyncio from logging the cancellation

    async def _serve_requests(self, conn: _Connection) -> None:
        """Answer the requests on a connection until it ends, then close it."""
        writer = conn.writer
        pump = asyncio.create_task(self._pump(conn))
        try:
            while True:
                try:
                    request = await self._read_request(conn)
                except _BadRequestError as exc:
                    body = orjson.dumps({"error": {"message": str(exc), "type": "bad_request"}})
                    head = [
                        ("content-type", "application/json"),
                        ("content-length", str(len(body))),
                    ]
                    writer.write(_head(400, head, keep_alive=False) + body)
                    break
                if request is None or not await self._dispatch(conn, request):
                    break
        except (ConnectionError, OSError) as exc:
            logger.debug("connection %d: %r", conn.number, exc)
        finally:
            # everything before the first await, which close() may interrupt
            pump.cancel()
            del self._conns[conn.number]
            writer.close()
            self._notify()
            await asyncio.wait((pump,))
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _pump(self, conn: _Connection) -> None:
        """Read everything the client sends; on EOF or reset end the response in progress."""
        kind: Literal["eof", "reset"] = "eof"
        try:
            while data := await conn.reader.read(_READ_SIZE):
                conn.buf += data
                conn.readable.set()
        except (ConnectionError, OSError):
            kind = "reset"
        conn.eof = True
        conn.readable.set()
        if conn.current is not None and conn.current.active:
            self._end(conn.current, "client_closed", kind)
            if conn.response is not None:
                conn.response.cancel()

    async def _read_request(self, conn: _Connection) -> _Request | None:
        """Read one request from the connection, or ``None`` at a clean end of the connection."""
        buf = conn.buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            if conn.eof:
                if buf.strip():
                    raise _BadRequestError("incomplete request head")
                return None
            if len(buf) > _MAX_HEAD:
                raise _BadRequestError("request head too large")
            conn.readable.clear()
            await conn.readable.wait()
        lines = bytes(buf[:end]).lstrip(b"\r\n").decode("latin-1").split("\r\n")
        del buf[: end + 4]
        try:
            method, target, version = lines[0].split(" ")
            pairs = [line.split(":", 1) for line in lines[1:]]
            headers = {name.strip().lower(): value.strip() for name, value in pairs}
            length = int(headers.get("content-length", "0"))
            if length < 0:
                raise ValueError(length)
        except ValueError as exc:
            raise _BadRequestError("malformed request head") from exc
        if "transfer-encoding" in headers:
            raise _BadRequestError("chunked request bodies are not supported")
        while len(buf) < length:
            if conn.eof:
                return None
            conn.readable.clear()
            await conn.readable.wait()
        body = bytes(buf[:length])
        del buf[:length]
        connection = headers.get("connection", "").lower()
        http11 = version == "HTTP/1.1"
        keep_alive = connection != "close" if http11 else connection == "keep-alive"
        return _Request(method, target.split("?", 1)[0], headers, body, keep_alive)

    async def _dispatch(self, conn: _Connection, request: _Request) -> bool:
        """Answer one request; return whether the connection can take another."""
        if request.path.startswith("/_fake/"):
            return await self._control(conn, request)
        try:
            body = orjson.loads(request.body) if request.body else None
        except orjson.JSONDecodeError:
            body = None
        record = RequestRecord(
            index=len(self.records),
            connection=conn.number,
            method=request.method,
            path=request.path,
            headers=request.headers,
            body=body,
            received_at=time.monotonic(),
        )
        self.records.append(record)
        logger.debug("request %d: %s %s", record.index, request.method, request.path)
        self._notify()
        if conn.eof:
            self._end(record, "client_closed", "eof")
            return False
        task = asyncio.create_task(self._respond(conn, request, record))
        conn.current, conn.response = record, task
        try:
            await asyncio.wait((task,))
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait((task,))
            conn.current = conn.response = None
        if task.cancelled():
            return False
        if (exc := task.exception()) is not None:
            if isinstance(exc, ConnectionError | OSError):
                self._end(record, "client_closed", "write_error")
            else:
                logger.error("request %d: fake upstream failed", record.index, exc_info=exc)
                self._end(record, "failed")
            return False
        return task.result() and request.keep_alive and not conn.eof

    # --- answers -----------------------------------------------------------------------------

    async def _respond(self, conn: _Connection, request: _Request, record: RequestRecord) -> bool:
        """Answer a recorded request as its script says; return whether to keep the connection."""
        writer, body = conn.writer, record.body
        if request.path not in ("/v1/chat/completions", "/chat/completions"):
            return await self._answer(record, writer, request, 404, f"no route {request.path}")
        if request.method != "POST":
            return await self._answer(record, writer, request, 405, "use POST")
        if not isinstance(body, dict):
            return await self._answer(record, writer, request, 400, "body is not a JSON object")
        try:
            script = self._pick(body)
        except ValueError as exc:
            return await self._answer(record, writer, request, 400, str(exc))
        record.script = script
        if script.headers_delay:
            await asyncio.sleep(script.headers_delay)
        if script.status != 200:
            headers = [
                ("content-type", "application/json"),
                ("x-request-id", f"req_{record.index}"),
            ]
            if script.retry_after is not None:
                headers.append(("retry-after", f"{script.retry_after:g}"))
                headers.append(("retry-after-ms", f"{script.retry_after * 1000:g}"))
            data = _error_body(script)
            headers.append(("content-length", str(len(data))))
            return await self._send(record, writer, script.status, headers, data, request)
        if body.get("stream") is not True:
            message = "the fake upstream only answers streaming requests"
            return await self._answer(record, writer, request, 400, message)
        return await self._stream(record, writer, script, body, request.keep_alive)

    def _pick(self, body: dict[str, Any]) -> Script:
        """Choose the script for a request body (directive, then callback, then default)."""
        script = self.script_for(body) if self.script_for is not None else None
        if script is None:
            script = self.script
        overrides = _directive(body)
        return script if overrides is None else Script.from_json(overrides, base=script)

    async def _answer(
        self,
        record: RequestRecord,
        writer: asyncio.StreamWriter,
        request: _Request,
        status: int,
        message: str,
    ) -> bool:
        """Send an OpenAI-style JSON error the script did not ask for (bad route, bad body)."""
        data = orjson.dumps({"error": {"message": message, "type": "invalid_request_error"}})
        headers = [("content-type", "application/json"), ("content-length", str(len(data)))]
        return await self._send(record, writer, status, headers, data, request)

    async def _send(
        self,
        record: RequestRecord,
        writer: asyncio.StreamWriter,
        status: int,
        headers: list[tuple[str, str]],
        data: bytes,
        request: _Request,
    ) -> bool:
        """Send a whole non-streaming response and end the record as completed."""
        record.status = status
        record.headers_sent_at = time.monotonic()
        writer.write(_head(status, headers, request.keep_alive) + data)
        await writer.drain()
        self._end(record, "completed")
        return True

    def _rendered(self, script: Script, model: str, max_tokens: Any) -> _Rendered:
        """Return the pre-rendered chunks of a stream, from the cache when possible."""
        if not isinstance(max_tokens, int) or max_tokens < 0:
            max_tokens = None
        key = (model, script.text, script.tokens, script.finish_reason, max_tokens)
        rendered = self._cache.get(key)
        if rendered is None:
            texts, finish = script.token_texts(), script.finish_reason
            if max_tokens is not None and max_tokens < len(texts):
                texts, finish = texts[:max_tokens], "length"
            rendered = _render(texts, model, finish)
            if len(self._cache) >= _CACHE_SIZE:
                del self._cache[next(iter(self._cache))]
            self._cache[key] = rendered
        return rendered

    async def _stream(
        self,
        record: RequestRecord,
        writer: asyncio.StreamWriter,
        script: Script,
        body: dict[str, Any],
        keep_alive: bool,
    ) -> bool:
        """Stream the script's tokens as chat-completion chunks and end as scripted."""
        model = body.get("model")
        if not isinstance(model, str):
            model = "fake-model"
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if not script.honour_max_tokens:
            max_tokens = None
        rendered = self._rendered(script, model, max_tokens)
        chat_id = b"chatcmpl-" + secrets.token_hex(12).encode()
        created = int(time.time())
        data = rendered.body.replace(_ID_PATTERN, b'"id":"' + chat_id + b'"')
        data = data.replace(_CREATED_PATTERN, b'"created":%d' % created)
        view, offsets, count = memoryview(data), rendered.offsets, rendered.count

        headers = [
            ("content-type", "text/event-stream; charset=utf-8"),
            ("transfer-encoding", "chunked"),
            ("cache-control", "no-cache"),
            ("x-request-id", f"req_{record.index}"),
        ]
        record.status = 200
        record.headers_sent_at = time.monotonic()
        writer.write(_head(200, headers, keep_alive))
        await writer.drain()

        ending = _ending(script, count)
        stop = count if ending is None else ending[0]
        if stop and script.interval > 0:
            for i in range(stop):
                await asyncio.sleep(script.interval if i else script.ttft)
                writer.write(view[offsets[i] : offsets[i + 1]])
                self._sent(record, i + 1)
                await writer.drain()
        elif stop:
            await asyncio.sleep(script.ttft)
            for start in range(0, stop, _BATCH):
                if start:
                    await asyncio.sleep(0)  # let other connections and the pump run
                end = min(start + _BATCH, stop)
                writer.write(view[offsets[start] : offsets[end]])
                self._sent(record, end)
                await writer.drain()
        # the delay before an event that follows the tokens (or comes first)
        delay = script.interval if stop else script.ttft

        if ending is None:  # the finish chunk follows the last token at once
            if not count:
                await asyncio.sleep(delay)
            tail: list[bytes | memoryview] = [view[offsets[count] :]]
            options = body.get("stream_options")
            if script.usage and isinstance(options, dict) and options.get("include_usage") is True:
                tail.append(_sse(self._usage_chunk(chat_id, created, model, body, count)))
            writer.write(b"".join([*tail, _DONE, _TERMINATOR]))
            await writer.drain()
            self._end(record, "completed")
            return True

        knob = ending[1]
        if knob == "stall_after":
            await asyncio.get_running_loop().create_future()  # until the client or close() ends it
        elif knob == "reset_after":
            writer.transport.set_write_buffer_limits(high=0)  # drain now waits for an empty buffer
            await writer.drain()
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._end(record, "reset")
            writer.transport.abort()  # with SO_LINGER 0 the kernel sends RST
            return False
        elif knob == "malformed_after":
            await asyncio.sleep(delay)
            writer.write(_MALFORMED)
        elif knob == "error_event_after":
            await asyncio.sleep(delay)
            message = script.error_message or "fake upstream: scripted error event"
            error = {"error": {"message": message, "type": "server_error", "code": None}}
            writer.write(_sse(orjson.dumps(error)))
        writer.write(_TERMINATOR)
        await writer.drain()
        self._end(record, "scripted_end")
        return True

    def _sent(self, record: RequestRecord, tokens: int) -> None:
        """Note that ``tokens`` tokens have been written for ``record``."""
        if record.first_token_at is None:
            record.first_token_at = time.monotonic()
        record.tokens_sent = tokens
        self._notify()

    @staticmethod
    def _usage_chunk(chat_id: bytes, created: int, model: str, body: Any, tokens: int) -> bytes:
        """Render the final usage chunk of a stream."""
        prompt = _prompt_tokens(body)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": tokens,
            "total_tokens": prompt + tokens,
        }
        return orjson.dumps(
            {
                "id": chat_id.decode(),
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage,
            }
        )

    # --- control over HTTP -------------------------------------------------------------------

    async def _control(self, conn: _Connection, request: _Request) -> bool:
        """Answer a ``/_fake/`` control request (not recorded)."""
        status, result = self._control_result(request)
        data = orjson.dumps(result)
        headers = [("content-type", "application/json"), ("content-length", str(len(data)))]
        conn.writer.write(_head(status, headers, request.keep_alive) + data)
        await conn.writer.drain()
        return request.keep_alive

    def _control_result(self, request: _Request) -> tuple[int, Any]:
        """Act on a control request; return the status and JSON answer."""
        route = (request.method, request.path)
        if route == ("GET", "/_fake/records"):
            return 200, [r.to_json() for r in self.records]
        if route == ("GET", "/_fake/stats"):
            # the connection asking is open too; it is not one of the connections asked about
            stats = {"connections": self.connections - 1, "active": len(self.active())}
            return 200, stats | {"requests": len(self.records)}
        if route == ("POST", "/_fake/reset"):
            self.clear()
            return 200, {"cleared": True}
        if route == ("GET", "/_fake/script"):
            return 200, self.script.to_json()
        if route == ("POST", "/_fake/script"):
            try:
                data = orjson.loads(request.body)
                if not isinstance(data, dict):
                    raise TypeError("not a JSON object")
                self.script = Script.from_json(data)
            except (ValueError, TypeError) as exc:
                return 400, {"error": f"bad script: {exc}"}
            return 200, self.script.to_json()
        return 404, {"error": f"no control route {request.method} {request.path}"}


# --- command line ------------------------------------------------------------------------------


async def _run(host: str, port: int, script: Script) -> int:
    """Serve until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with FakeUpstream(script, host=host, port=port) as fake:
        print(f"fake-upstream listening on {fake.base_url}", flush=True)
        await stop.wait()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fake upstream from the command line until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m aistream.testing.fake_upstream",
        description="Run a fake OpenAI-compatible upstream that speaks HTTP/1.1 and SSE.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind (default 0: any free)")
    parser.add_argument("--script", default=None, help="default script as a JSON object")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    try:
        script = Script.from_json(json.loads(args.script)) if args.script else Script()
    except (ValueError, TypeError) as exc:
        parser.error(f"--script: {exc}")
    return asyncio.run(_run(args.host, args.port, script))


if __name__ == "__main__":
    sys.exit(main())
