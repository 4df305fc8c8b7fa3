"""How the fake answers one recorded request: the route checks, then what its script says.

A script's status other than 200 answers its error body; a 200 answers a stream: the headers
(after ``headers_delay``), the first event after ``ttft``, one event per ``interval`` (or
batches as fast as the socket takes them), then the finish chunk, the usage chunk if asked for,
and ``[DONE]`` — or the ending a knob chose (``script.ending``). A text-only stream's events are
rendered once per (model, tokens, finish reason) and kept in a small cache; a stream with parts
(``parts``) is rendered per response. ``write_bytes`` writes the body in small pieces.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aistream.testing.fake_upstream import body as bodies
from aistream.testing.fake_upstream import parts
from aistream.testing.fake_upstream.chunks import (
    DONE,
    MALFORMED,
    Rendered,
    error_event,
    new_chat_id,
    render_stream,
    sse_event,
    usage_chunk,
)
from aistream.testing.fake_upstream.connection import Connection, Request
from aistream.testing.fake_upstream.errors import refusal_body, scripted_error_body
from aistream.testing.fake_upstream.records import Journal, RequestRecord
from aistream.testing.fake_upstream.script import Script, ending

__all__ = ["ROUTES", "Responder"]

ROUTES = ("/v1/chat/completions", "/chat/completions")
"""The paths that answer chat completions; any other (outside ``/_fake/``) is a 404."""
_BATCH = 64  # events per write when interval is 0
_PIECE_PAUSE = 0.001  # seconds between the pieces of write_bytes: separate network reads
_CACHE_SIZE = 128

_CacheKey = tuple[str, str | None, int | None, str | None, int | None]


class Responder:
    """Answers requests as their scripts say, noting progress in the journal."""

    def __init__(self, journal: Journal) -> None:
        """Answer for the records of ``journal``."""
        self._journal = journal
        self._cache: dict[_CacheKey, Rendered] = {}

    async def respond(
        self,
        conn: Connection,
        request: Request,
        record: RequestRecord,
        pick: Callable[[dict[str, Any]], Script],
    ) -> bool:
        """Answer a recorded request; return whether the connection may be kept."""
        body = record.body
        if request.path not in ROUTES:
            return await self._refuse(conn, record, 404, f"no route {request.path}")
        if request.method != "POST":
            return await self._refuse(conn, record, 405, "use POST")
        if not isinstance(body, dict):
            return await self._refuse(conn, record, 400, "body is not a JSON object")
        try:
            script = pick(body)
        except ValueError as exc:
            return await self._refuse(conn, record, 400, str(exc))
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
            if script.location is not None:
                headers.append(("location", script.location))
            return await self._whole(
                conn, record, script.status, headers, scripted_error_body(script)
            )
        if body.get("stream") is not True:
            message = "the fake upstream only answers streaming requests"
            return await self._refuse(conn, record, 400, message)
        return await self._stream(conn, record, script, body)

    async def _refuse(
        self, conn: Connection, record: RequestRecord, status: int, message: str
    ) -> bool:
        """Send an OpenAI-style JSON error the script did not ask for (bad route, bad body)."""
        headers = [("content-type", "application/json")]
        return await self._whole(conn, record, status, headers, refusal_body(message))

    async def _whole(
        self,
        conn: Connection,
        record: RequestRecord,
        status: int,
        headers: list[tuple[str, str]],
        data: bytes,
    ) -> bool:
        """Send a whole non-streaming response and end the record as completed."""
        record.status = status
        record.headers_sent_at = time.monotonic()
        conn.send_whole(status, headers, data)
        await conn.drain()
        self._journal.end(record, "completed")
        return True

    def _rendered(self, script: Script, model: str, max_tokens: int | None) -> Rendered:
        """Return the rendered events of a stream, from the cache when possible."""
        if parts.uses_parts(script):  # fresh tool-call ids each time: not cached
            return parts.render(script, model, max_tokens)
        key = (model, script.text, script.tokens, script.finish_reason, max_tokens)
        rendered = self._cache.get(key)
        if rendered is None:
            texts, finish = script.token_texts(), script.finish_reason
            if max_tokens is not None and max_tokens < len(texts):
                texts, finish = texts[:max_tokens], "length"
            rendered = render_stream(texts, model, finish)
            if len(self._cache) >= _CACHE_SIZE:
                del self._cache[next(iter(self._cache))]
            self._cache[key] = rendered
        return rendered

    async def _stream(
        self, conn: Connection, record: RequestRecord, script: Script, body: dict[str, Any]
    ) -> bool:
        """Stream the script's events as chat-completion chunks and end as scripted."""
        journal = self._journal
        model = bodies.model(body)
        limit = bodies.max_tokens(body) if script.honour_max_tokens else None
        rendered = self._rendered(script, model, limit)
        chat_id, created = new_chat_id(), int(time.time())
        data, offsets, count = rendered.stamp(chat_id, created), rendered.offsets, rendered.count

        headers = [
            ("content-type", "text/event-stream; charset=utf-8"),
            ("transfer-encoding", "chunked"),
            ("cache-control", "no-cache"),
            ("x-request-id", f"req_{record.index}"),
        ]
        record.status = 200
        record.headers_sent_at = time.monotonic()
        conn.send_head(200, headers)
        await conn.drain()

        end = ending(script, count)
        stop = count if end is None else end[0]
        split = script.write_bytes
        if stop and script.interval > 0:
            for i in range(stop):
                await asyncio.sleep(script.interval if i else script.ttft)
                await _send(conn, data[offsets[i] : offsets[i + 1]], split)
                journal.sent(record, i + 1)
                await conn.drain()
        elif stop:
            await asyncio.sleep(script.ttft)
            for start in range(0, stop, _BATCH):
                if start:
                    await asyncio.sleep(0)  # let other connections and their readers run
                last = min(start + _BATCH, stop)
                if split is None:  # the hot path: no coroutine per batch
                    conn.send_data(data[offsets[start] : offsets[last]])
                else:
                    await _send(conn, data[offsets[start] : offsets[last]], split)
                journal.sent(record, last)
                await conn.drain()
        # the delay before an event that follows the others (or comes first)
        delay = script.interval if stop else script.ttft

        if end is None:  # the finish chunk follows the last event at once
            if not count:
                await asyncio.sleep(delay)
            tail = [data[offsets[count] :]]
            if script.usage and bodies.wants_usage(body):
                prompt = bodies.prompt_tokens(body)
                usage = usage_chunk(
                    chat_id,
                    created,
                    model,
                    prompt,
                    count,
                    reasoning=script.reasoning_tokens,
                    cached=script.cached_tokens,
                )
                tail.append(sse_event(usage))
            await _send(conn, b"".join([*tail, DONE]), split)
            conn.send_end()
            await conn.drain()
            journal.end(record, "completed")
            return True

        knob = end[1]
        if knob == "stall_after":
            await asyncio.get_running_loop().create_future()  # until the client or close() ends it
        elif knob == "reset_after":
            await conn.reset()
            journal.end(record, "reset")
            return False
        elif knob == "malformed_after":
            await asyncio.sleep(delay)
            await _send(conn, MALFORMED, split)
        elif knob == "error_event_after":
            await asyncio.sleep(delay)
            message = script.error_message or "fake upstream: scripted error event"
            await _send(conn, error_event(message), split)
        conn.send_end()
        await conn.drain()
        journal.end(record, "scripted_end")
        return True


async def _send(conn: Connection, data: bytes, split: int | None) -> None:
    """Write part of a body at once, or in pieces of ``split`` bytes (``write_bytes``)."""
    if split is None:
        conn.send_data(data)
    else:
        await conn.send_pieces(data, split, _PIECE_PAUSE)
