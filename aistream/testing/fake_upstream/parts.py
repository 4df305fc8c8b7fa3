"""The events of a stream with parts: reasoning, text chunks, refusal, tool calls, raw deltas.

A script that sets any of ``script.PART_KNOBS`` streams one delta object per event, in this
order: the reasoning tokens (under ``reasoning_field``), then either the ``raw_deltas`` as they
are or the answer text (``text_chunks``, else the tokens of ``tokens``/``text``), the refusal's
pieces and the tool calls' pieces. The first event that is not a raw delta carries
``"role": "assistant"``, as the text-only stream's first token does::

    {"role": "assistant", "reasoning_content": "think0 "}
    {"content": "Hello "}
    {"tool_calls": [{"index": 0, "id": "call_0_…", "type": "function",
                     "function": {"name": "get_weather", "arguments": ""}}]}
    {"tool_calls": [{"index": 0, "function": {"arguments": "{\\"cit"}}]}

The deltas hold fresh tool-call ids, so they are rendered per response (``render``); a
text-only script never comes here and keeps ``chunks.render_stream``'s cached fast path.
"""

from __future__ import annotations

import secrets
from typing import Any

from aistream.testing.fake_upstream.chunks import Rendered, render_deltas
from aistream.testing.fake_upstream.script import Script

__all__ = ["deltas", "finish_reason", "render", "uses_parts"]


def uses_parts(script: Script) -> bool:
    """Whether the script streams more than answer tokens (any of ``PART_KNOBS`` set)."""
    return not (
        script.reasoning is None
        and script.reasoning_text is None
        and script.text_chunks is None
        and script.refusal is None
        and script.tool_calls is None
        and script.raw_deltas is None
    )


def deltas(script: Script) -> list[dict[str, Any]]:
    """Return the delta object of every event the script streams, in order."""
    field = script.reasoning_field
    events: list[dict[str, Any]] = [{field: text} for text in script.reasoning_texts()]
    if script.raw_deltas is not None:
        if events:
            events[0] = {"role": "assistant", **events[0]}
        return events + [dict(delta) for delta in script.raw_deltas]
    events += [{"content": text} for text in _answer(script)]
    events += [{"refusal": text} for text in script.refusal_texts()]
    events += [{"tool_calls": [piece]} for piece in _tool_call_pieces(script)]
    if events:
        events[0] = {"role": "assistant", **events[0]}
    return events


def finish_reason(script: Script) -> str | None:
    """Return the finish reason of the whole stream: ``"tool_calls"`` for a default ``"stop"``
    when there are tool calls."""
    if script.tool_calls and script.finish_reason == "stop":
        return "tool_calls"
    return script.finish_reason


def render(script: Script, model: str, max_tokens: int | None) -> Rendered:
    """Render the script's events, cut at ``max_tokens`` events (finish reason ``"length"``)."""
    events, finish = deltas(script), finish_reason(script)
    if max_tokens is not None and max_tokens < len(events):
        events, finish = events[:max_tokens], "length"
    return render_deltas(events, model, finish)


def _answer(script: Script) -> list[str]:
    """Return the answer's text pieces: none beside a refusal or tool calls unless asked for."""
    if script.text_chunks is not None:
        return list(script.text_chunks)
    asked = script.text is not None or script.tokens is not None
    if asked or (script.refusal is None and script.tool_calls is None):
        return script.token_texts()
    return []


def _tool_call_pieces(script: Script) -> list[dict[str, Any]]:
    """Return every tool-call piece: each call's opening, then its arguments in fragments."""
    calls: list[list[dict[str, Any]]] = []
    split = script.tool_call_split
    for index, call in enumerate(script.tool_calls or ()):
        call_id = call["id"] if "id" in call else f"call_{index}_{secrets.token_hex(8)}"
        function = {"name": call["name"], "arguments": ""}
        pieces = [{"index": index, "id": call_id, "type": "function", "function": function}]
        arguments = call["arguments"]
        pieces += [
            {"index": index, "function": {"arguments": arguments[start : start + split]}}
            for start in range(0, len(arguments), split)
        ]
        calls.append(pieces)
    if not script.tool_calls_interleave:
        return [piece for pieces in calls for piece in pieces]
    rounds = max((len(pieces) for pieces in calls), default=0)
    return [pieces[r] for r in range(rounds) for pieces in calls if r < len(pieces)]
