"""The fake upstream's pure parts: chunk and SSE rendering, script endings, body reading."""

from __future__ import annotations

import json

import pytest

from aistream.testing.fake_upstream import Script
from aistream.testing.fake_upstream.body import max_tokens, prompt_tokens, wants_usage
from aistream.testing.fake_upstream.chunks import (
    DONE,
    completion_chunk,
    error_event,
    new_chat_id,
    render_stream,
    sse_event,
    usage_chunk,
)
from aistream.testing.fake_upstream.script import directive, ending


def _events(data: bytes) -> list[dict[str, object]]:
    """Parse every ``data:`` event of ``data`` as JSON."""
    assert data.endswith(b"\n\n")
    events = data[:-2].split(b"\n\n")
    assert all(e.startswith(b"data: ") for e in events)
    return [json.loads(e[6:]) for e in events]


def test_completion_chunk_is_the_api_shape() -> None:
    """A chunk renders the chat-completions object, keys in the API's order."""
    data = completion_chunk("chatcmpl-x", 1_700_000_000, "m", {"content": "hi"}, None)
    assert data == (
        b'{"id":"chatcmpl-x","object":"chat.completion.chunk","created":1700000000,"model":"m",'
        b'"choices":[{"index":0,"delta":{"content":"hi"},"logprobs":null,"finish_reason":null}]}'
    )
    assert sse_event(b"x") == b"data: x\n\n"
    assert DONE == b"data: [DONE]\n\n"


def test_usage_and_error_events() -> None:
    """The usage chunk has no choices and adds the counts; an error event is an error object."""
    usage = json.loads(usage_chunk("chatcmpl-x", 1_700_000_000, "m", 2, 5))
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
    [event] = _events(error_event("boom"))
    assert event == {"error": {"message": "boom", "type": "server_error", "code": None}}


def test_rendered_stream_has_one_event_per_token_and_stamps_ids() -> None:
    """Offsets cut one event per token; stamping fills the id and time and keeps the length."""
    texts = ["a ", 'quote" ', "\u00e9\n"]
    rendered = render_stream(texts, "m", "length")
    chat_id = new_chat_id()
    data = rendered.stamp(chat_id, 1_700_000_000)
    assert len(data) == len(rendered.body)
    assert rendered.count == 3
    pieces = [data[a:b] for a, b in zip(rendered.offsets, rendered.offsets[1:], strict=False)]
    deltas = [_events(p)[0]["choices"][0]["delta"] for p in pieces]  # type: ignore[index]
    assert deltas == [
        {"role": "assistant", "content": "a "},
        {"content": 'quote" '},
        {"content": "\u00e9\n"},
    ]
    [finish] = _events(data[rendered.offsets[-1] :])
    assert finish["choices"] == [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    ]
    every = _events(data)
    assert {e["id"] for e in every} == {chat_id}
    assert {e["created"] for e in every} == {1_700_000_000}
    with pytest.raises(ValueError, match="stamp"):
        rendered.stamp("chatcmpl-short", 1_700_000_000)


def test_the_earliest_ending_wins() -> None:
    """The knob with the smallest count ends the stream; one beyond the tokens does not."""
    assert ending(Script(), 5) is None
    assert ending(Script(close_after=3, reset_after=2), 5) == (2, "reset_after")
    assert ending(Script(close_after=2, reset_after=2), 5) == (2, "reset_after")
    assert ending(Script(stall_after=9), 5) is None


def test_directive_and_body_readers() -> None:
    """The directive comes from the last user message; the readers tolerate odd bodies."""
    body = {
        "messages": [
            {"role": "user", "content": '#fake {"tokens": 1}'},
            {"role": "assistant", "content": "x y"},
            {"role": "user", "content": [{"type": "text", "text": '  #fake {"ttft": 2} z'}]},
        ],
        "max_tokens": 4,
        "stream_options": {"include_usage": True},
    }
    assert directive(body) == {"ttft": 2}
    assert directive({"messages": "nope"}) is None
    with pytest.raises(ValueError, match="JSON object"):
        directive({"messages": [{"role": "user", "content": "#fake [1]"}]})
    assert prompt_tokens(body) == 3 + 2 + 4  # whitespace-separated words
    assert (max_tokens(body), wants_usage(body)) == (4, True)
    assert (max_tokens({"max_tokens": -1}), wants_usage({"stream_options": 1})) == (None, False)
