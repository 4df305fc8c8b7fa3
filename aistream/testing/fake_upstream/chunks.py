"""Pure rendering of a chat-completions stream: chunk JSON, SSE ``data:`` events, whole streams.

No I/O and no HTTP framing here (h11 frames the fake's bodies; ``bench.upstream``, which speaks
HTTP by hand, frames its own). ``completion_chunk`` and ``usage_chunk`` render the JSON objects
the real API sends, ``sse_event`` wraps a payload as one server-sent event, and
``render_stream`` renders every event of a text-only stream once, with placeholders for the id
and creation time that ``Rendered.stamp`` fills in per response; ``render_deltas`` does the
same, more slowly, for a stream of any delta objects (reasoning, refusal, tool calls, ...)::

    data: {"id":"chatcmpl-…","object":"chat.completion.chunk","created":…,"model":"m",
           "choices":[{"index":0,"delta":{"content":"tok1 "},"logprobs":null,"finish_reason":null}]}
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "DONE",
    "MALFORMED",
    "Rendered",
    "completion_chunk",
    "error_event",
    "new_chat_id",
    "render_deltas",
    "render_stream",
    "sse_event",
    "usage_chunk",
]

_ID_PLACEHOLDER = "chatcmpl-" + "@" * 24
_CREATED_PLACEHOLDER = 1_000_000_000
_ID_PATTERN = b'"id":"' + _ID_PLACEHOLDER.encode() + b'"'
_CREATED_PATTERN = b'"created":%d' % _CREATED_PLACEHOLDER


def sse_event(payload: bytes) -> bytes:
    """Frame a ``data:`` payload as one server-sent event."""
    return b"data: " + payload + b"\n\n"


DONE = sse_event(b"[DONE]")
"""The event that ends a complete stream."""
MALFORMED = sse_event(b'{"id": "chatcmpl-malformed", "choices": [{"delta": {"content": "no')
"""A ``data:`` event whose payload is not JSON (the ``malformed_after`` knob)."""


def new_chat_id() -> str:
    """Return a fresh completion id, ``chatcmpl-`` and 24 hex digits."""
    return "chatcmpl-" + secrets.token_hex(12)


def completion_chunk(
    chat_id: str, created: int, model: str, delta: Mapping[str, Any], finish_reason: str | None
) -> bytes:
    """Render one ``chat.completion.chunk`` object with a single choice as JSON."""
    return orjson.dumps(
        {
            "id": chat_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
    )


def usage_chunk(
    chat_id: str,
    created: int,
    model: str,
    prompt: int,
    completion: int,
    *,
    reasoning: int | None = None,
    cached: int | None = None,
) -> bytes:
    """Render the final usage chunk of a stream (no choices) as JSON.

    ``reasoning`` and ``cached`` add ``completion_tokens_details.reasoning_tokens`` and
    ``prompt_tokens_details.cached_tokens``, as the real API does.
    """
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    if reasoning is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return orjson.dumps(
        {
            "id": chat_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage,
        }
    )


def error_event(message: str) -> bytes:
    """Render a mid-stream error event, ``data: {"error": {...}}``."""
    return sse_event(
        orjson.dumps({"error": {"message": message, "type": "server_error", "code": None}})
    )


@dataclass(frozen=True, slots=True)
class Rendered:
    """The rendered events of a stream: every token's (or delta's) chunk, then the finish chunk."""

    body: bytes
    """The events, with placeholders for the id and creation time."""
    offsets: tuple[int, ...]
    """``offsets[i]`` is where token ``i`` starts; ``offsets[-1]`` where the finish chunk starts."""

    @property
    def count(self) -> int:
        """Number of tokens."""
        return len(self.offsets) - 1

    def stamp(self, chat_id: str, created: int) -> bytes:
        """Return the body with its id and creation time filled in (the offsets still hold)."""
        if len(chat_id) != len(_ID_PLACEHOLDER) or not 10**9 <= created < 10**10:
            raise ValueError("a stamp keeps the rendered length: 24-digit id, 10-digit time")
        data = self.body.replace(_ID_PATTERN, b'"id":"' + chat_id.encode() + b'"')
        return data.replace(_CREATED_PATTERN, b'"created":%d' % created)


def render_stream(texts: Sequence[str], model: str, finish_reason: str | None) -> Rendered:
    """Render the token and finish chunks of a stream once (``Rendered.stamp`` finishes them)."""
    ids = (_ID_PLACEHOLDER, _CREATED_PLACEHOLDER, model)
    mark = "\x00content\x00"
    head, tail = completion_chunk(*ids, {"content": mark}, None).split(orjson.dumps(mark))
    parts: list[bytes] = []
    offsets = [0]
    for i, text in enumerate(texts):
        if i == 0:
            parts.append(
                sse_event(completion_chunk(*ids, {"role": "assistant", "content": text}, None))
            )
        else:  # the same chunk with only the content spliced in: no dict, one small encode
            parts.append(b"data: %s%s%s\n\n" % (head, orjson.dumps(text), tail))
        offsets.append(offsets[-1] + len(parts[-1]))
    if finish_reason is not None:
        parts.append(sse_event(completion_chunk(*ids, {}, finish_reason)))
    return Rendered(b"".join(parts), tuple(offsets))


def render_deltas(
    deltas: Sequence[Mapping[str, Any]], model: str, finish_reason: str | None
) -> Rendered:
    """Render one chunk per delta object, then the finish chunk (``Rendered.stamp`` finishes them).

    The deltas are sent as given: a role, if any, is the caller's to put in the first.
    """
    ids = (_ID_PLACEHOLDER, _CREATED_PLACEHOLDER, model)
    parts = [sse_event(completion_chunk(*ids, delta, None)) for delta in deltas]
    offsets = [0]
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    if finish_reason is not None:
        parts.append(sse_event(completion_chunk(*ids, {}, finish_reason)))
    return Rendered(b"".join(parts), tuple(offsets))
