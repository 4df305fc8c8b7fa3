"""The fake upstream's pure parts: chunk and SSE rendering, script endings, body reading."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from aistream.testing.fake_upstream import Script, parts
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

STAMP = ("chatcmpl-" + "0" * 24, 1_700_000_000)
"""A fixed id and creation time, for renders compared byte for byte."""


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


def _deltas(script: Script, max_tokens: int | None = None) -> list[Any]:
    """Render a script's stream with parts and return the delta of every chunk (finish too)."""
    data = parts.render(script, "m", max_tokens).stamp(*STAMP)
    return [e["choices"][0]["delta"] for e in _events(data)]  # type: ignore[index]


def _finish(script: Script, max_tokens: int | None = None) -> object:
    """Render a script's stream with parts and return the finish reason of its last chunk."""
    data = parts.render(script, "m", max_tokens).stamp(*STAMP)
    return _events(data)[-1]["choices"][0]["finish_reason"]  # type: ignore[index]


def test_text_only_render_is_byte_for_byte_unchanged() -> None:
    """A text-only stream renders exactly the bytes it did before parts existed."""
    event = (
        b'data: {"id":"chatcmpl-000000000000000000000000","object":"chat.completion.chunk",'
        b'"created":1700000000,"model":"m","choices":[{"index":0,"delta":%s,"logprobs":null,'
        b'"finish_reason":%s}]}\n\n'
    )
    deltas = [b'{"role":"assistant","content":"a "}', b'{"content":"q\\" "}']
    deltas.append('{"content":"\u00e9\U0001f600\\n"}'.encode())
    expected = b"".join(event % (d, b"null") for d in deltas) + event % (b"{}", b'"stop"')
    assert render_stream(["a ", 'q" ', "\u00e9\U0001f600\n"], "m", "stop").stamp(*STAMP) == expected
    # recorded from the renderer before parts existed
    script = Script(text='  H\u00e9 said "hi"\n\tthen\\left. \U0001f600 ok', tokens=11)
    body = render_stream(script.token_texts(), "m", "length").stamp(*STAMP)
    digest = "fc67d9377b4fdd2e783a7b65129a4c793bf59117c1c1223d1dc07d6d53be6b87"
    assert (hashlib.sha256(body).hexdigest(), len(body)) == (digest, 2490)
    usage = usage_chunk("chatcmpl-x", 1_700_000_000, "m", 2, 5)
    digest = "b61267fd09ebb34602ad8e8d6b238367927d08dc5ee7002ef82ee4bc87f67459"
    assert hashlib.sha256(usage).hexdigest() == digest


def test_only_part_knobs_leave_the_text_path() -> None:
    """Knobs that do not change the events keep the cached text path; a part knob leaves it."""
    same = Script(reasoning_tokens=1, cached_tokens=2, write_bytes=3, tool_call_split=1)
    assert not parts.uses_parts(same)
    assert not parts.uses_parts(Script(reasoning_field="reasoning", tool_calls_interleave=False))
    for knob, value in [
        ("reasoning", 0),
        ("reasoning_text", "hm"),
        ("text_chunks", []),
        ("refusal", "no"),
        ("tool_calls", []),
        ("raw_deltas", []),
    ]:
        assert parts.uses_parts(Script.from_json({knob: value})), knob


def test_text_chunks_render_like_the_text_path() -> None:
    """Text chunks equal to the default tokens render the very bytes of the text path."""
    texts = Script().token_texts()
    for cut, finish in [(None, "stop"), (3, "length")]:
        fast = render_stream(texts[:cut], "m", finish)
        slow = parts.render(Script(text_chunks=texts), "m", cut)
        assert slow.stamp(*STAMP) == fast.stamp(*STAMP)
        assert slow.offsets == fast.offsets
    assert _deltas(Script(text_chunks=['{"a": [1, ', "", "2]}"])) == [
        {"role": "assistant", "content": '{"a": [1, '},
        {"content": ""},
        {"content": "2]}"},
        {},
    ]


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_comes_first_under_its_field(field: str) -> None:
    """Reasoning tokens come before the answer, under the chosen delta key, one chunk each."""
    assert _deltas(Script(reasoning=2, tokens=1, reasoning_field=field)) == [
        {"role": "assistant", field: "think0 "},
        {field: "think1 "},
        {"content": "tok0 "},
        {},
    ]
    script = Script(
        reasoning_text="Hmm, caf\u00e9?", reasoning=3, text="Yes.", reasoning_field=field
    )
    assert script.reasoning_texts() == ["Hmm, ", "caf\u00e9? ", "Hmm, "]
    assert [d.get(field) for d in _deltas(script)] == ["Hmm, ", "caf\u00e9? ", "Hmm, ", None, None]
    assert Script(reasoning_text="a b").reasoning_texts() == ["a ", "b"]


def test_refusal_streams_its_words_after_any_text() -> None:
    """A refusal replaces the default answer; with text set it follows the text."""
    assert _deltas(Script(refusal="I can't help.")) == [
        {"role": "assistant", "refusal": "I "},
        {"refusal": "can't "},
        {"refusal": "help."},
        {},
    ]
    assert _deltas(Script(refusal="No.", text="Well...")) == [
        {"role": "assistant", "content": "Well..."},
        {"refusal": "No."},
        {},
    ]
    assert _deltas(Script(refusal="No.", text_chunks=["x"], reasoning=1))[:3] == [
        {"role": "assistant", "reasoning_content": "think0 "},
        {"content": "x"},
        {"refusal": "No."},
    ]


def test_parallel_tool_calls_interleave_and_rebuild_their_arguments() -> None:
    """Tool-call pieces open each call, then cut its arguments anywhere, round-robin by index."""
    first = '{"q": "ab\\"c", "c": "\\u00e9x", "d": "caf\u00e9\U0001f600"}'
    second = '{"n": 1}'
    # the cuts, every 5 characters, land between \ and " (at 10), inside \u00e9 (at 25), and
    # next to multi-byte characters (at 40, before é😀)
    assert (first[9:11], first.index("\\u00e9"), first.index("\u00e9")) == ('\\"', 21, 40)
    calls = [
        {"name": "search", "arguments": first, "id": "call_a"},
        {"name": "f", "arguments": second},
    ]
    deltas = _deltas(Script(tool_calls=calls, tool_call_split=5))
    assert deltas[0] == {
        "role": "assistant",
        "tool_calls": [
            {
                "index": 0,
                "id": "call_a",
                "type": "function",
                "function": {"name": "search", "arguments": ""},
            }
        ],
    }
    opening = deltas[1]["tool_calls"][0]
    assert opening["id"].startswith("call_1_")
    assert opening == {
        "index": 1,
        "id": opening["id"],
        "type": "function",
        "function": {"name": "f", "arguments": ""},
    }
    pieces = [d["tool_calls"] for d in deltas[:-1]]
    assert all(len(p) == 1 for p in pieces)
    order = [p[0]["index"] for p in pieces]
    assert order[:6] == [0, 1, 0, 1, 0, 1]  # second has 8 characters: opening and 2 fragments
    assert order[6:] == [0] * (len(order) - 6)
    fragments = {0: "", 1: ""}
    for [piece] in pieces[2:]:
        assert set(piece) == {"index", "function"}
        assert len(piece["function"]["arguments"]) <= 5
        fragments[piece["index"]] += piece["function"]["arguments"]
    assert fragments == {0: first, 1: second}
    assert deltas[-1] == {}
    assert _finish(Script(tool_calls=calls)) == "tool_calls"
    assert _finish(Script(tool_calls=calls, finish_reason="content_filter")) == "content_filter"
    assert _finish(Script(tool_calls=calls), max_tokens=2) == "length"

    singles = _deltas(Script(tool_calls=calls[:1], tool_call_split=1))[1:-1]
    assert [d["tool_calls"][0]["function"]["arguments"] for d in singles] == list(first)
    one_by_one = _deltas(Script(tool_calls=calls, tool_calls_interleave=False))
    order = [d["tool_calls"][0]["index"] for d in one_by_one[:-1]]
    assert order == sorted(order)
    with_text = _deltas(Script(tool_calls=calls, text="Let me look."))
    assert [d.get("content") for d in with_text[:4]] == ["Let ", "me ", "look.", None]
    assert "tool_calls" in with_text[3]


def test_raw_deltas_are_sent_verbatim_after_reasoning() -> None:
    """Raw deltas replace the answer and go out as given, without a role of their own."""
    raw: list[dict[str, Any]] = [
        {"tool_calls": [{"index": 3, "function": {"arguments": "{}"}}]},
        {"tool_calls": "garbage"},
        {"content": None, "weird": [1, {"x": "\u00e9"}]},
    ]
    assert _deltas(Script(raw_deltas=raw, text="ignored")) == [*raw, {}]
    assert _deltas(Script(raw_deltas=raw, reasoning=1)) == [
        {"role": "assistant", "reasoning_content": "think0 "},
        *raw,
        {},
    ]
    data = parts.render(Script(raw_deltas=raw), "m", None).stamp(*STAMP)
    assert b'"delta":{"tool_calls":"garbage"}' in data


def test_max_tokens_counts_every_event() -> None:
    """The request's max_tokens cuts reasoning, text and tool-call pieces alike."""
    script = Script(
        reasoning=2, text_chunks=["a", "b"], tool_calls=[{"name": "f", "arguments": "{}"}]
    )
    rendered = parts.render(script, "m", None)
    assert rendered.count == 2 + 2 + 2
    assert _deltas(script, max_tokens=3) == [
        {"role": "assistant", "reasoning_content": "think0 "},
        {"reasoning_content": "think1 "},
        {"content": "a"},
        {},
    ]
    assert _finish(script, max_tokens=3) == "length"


def test_usage_details() -> None:
    """Reasoning and cached token counts go in the usage chunk's details, as the API has them."""
    usage = json.loads(usage_chunk("chatcmpl-x", 1, "m", 2, 5, reasoning=3, cached=1))["usage"]
    assert usage == {
        "prompt_tokens": 2,
        "completion_tokens": 5,
        "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 1},
        "completion_tokens_details": {"reasoning_tokens": 3},
    }
    assert "prompt_tokens_details" not in json.loads(usage_chunk("c", 1, "m", 2, 5, reasoning=0))


def test_part_knobs_validate_and_round_trip_through_json() -> None:
    """The new knobs reject what the fake cannot send and survive to_json/from_json."""
    script = Script(
        reasoning=2,
        reasoning_text="hm ok",
        reasoning_field="reasoning",
        text_chunks=["{", "}"],
        refusal="no",
        tool_calls=[{"name": "f", "arguments": "{}", "id": "c"}],
        tool_call_split=2,
        tool_calls_interleave=False,
        reasoning_tokens=4,
        cached_tokens=0,
        write_bytes=7,
    )
    assert script.text_chunks == ("{", "}")
    assert Script.from_json(json.loads(json.dumps(script.to_json()))) == script
    raw = Script(raw_deltas=[{"content": [1, {"a": None}]}])
    assert Script.from_json(json.loads(json.dumps(raw.to_json()))) == raw
    with pytest.raises(TypeError):
        script.tool_calls[0]["name"] = "g"  # type: ignore[index]
    assert Script.from_json({"tool_calls": None}, base=script).tool_calls is None

    bad: list[tuple[dict[str, Any], str]] = [
        ({"reasoning_field": "thinking"}, "reasoning_field"),
        ({"reasoning": -1}, "reasoning"),
        ({"reasoning_text": " "}, "reasoning_text"),
        ({"refusal": ""}, "refusal"),
        ({"text_chunks": "abc"}, "text_chunks"),
        ({"text_chunks": ["a", 1]}, "text_chunks"),
        ({"tool_calls": [{"name": "f"}]}, "arguments"),
        ({"tool_calls": [{"name": "f", "arguments": "{}", "args": 1}]}, "unknown keys"),
        ({"tool_calls": [{"name": "f", "arguments": "{}", "id": 3}]}, "id"),
        ({"tool_calls": ["f"]}, "tool_calls"),
        ({"tool_call_split": 0}, "tool_call_split"),
        ({"raw_deltas": [[1]]}, "raw_deltas"),
        ({"raw_deltas": [{}], "refusal": "no"}, "raw_deltas"),
        ({"write_bytes": 0}, "write_bytes"),
        ({"cached_tokens": -2}, "cached_tokens"),
        ({"tool_calls_interleave": 1}, "tool_calls_interleave"),
    ]
    for data, match in bad:
        with pytest.raises(ValueError, match=match):
            Script.from_json(data)
    with pytest.raises(ValueError, match="raw_deltas"):
        Script(raw_deltas=[{"x": object()}])
