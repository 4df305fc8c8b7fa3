"""The script language: how the fake answers one request, and the ``#fake {...}`` directive.

A ``Script`` is a frozen set of knobs (status, delays, what the stream says, how it ends). It
reads and writes JSON (``from_json``/``to_json``), which is how other processes set it: over the
control API, on the command line, or per request with a last user message starting with
``#fake `` and a JSON object whose keys override the script the request would otherwise get
(``directive``).

A stream is a sequence of *events*, one chunk each: answer tokens by default, and with the part
knobs (``reasoning``, ``text_chunks``, ``refusal``, ``tool_calls``, ``raw_deltas``; see
``parts``) reasoning tokens, text chunks, refusal pieces, tool-call pieces and raw deltas. The
ending knobs, ``ttft``/``interval``, the request's max_tokens and the usage chunk's
completion_tokens all count events, in stream order.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import orjson

from aistream.testing.fake_upstream.body import last_user_text

__all__ = [
    "DIRECTIVE",
    "ENDINGS",
    "PART_KNOBS",
    "REASONING_FIELDS",
    "Script",
    "ScriptFor",
    "directive",
    "ending",
]

DIRECTIVE = "#fake "
"""A last user message starting with this, then a JSON object, overrides the script's keys."""

ENDINGS = ("reset_after", "close_after", "malformed_after", "error_event_after", "stall_after")
"""The knobs that end a stream early; on a tie the first listed wins."""

PART_KNOBS = ("reasoning", "reasoning_text", "text_chunks", "refusal", "tool_calls", "raw_deltas")
"""The knobs that stream more than answer tokens; any of them set takes the ``parts`` path."""

REASONING_FIELDS = ("reasoning_content", "reasoning")
"""Delta keys of reasoning: DeepSeek's and llama.cpp's, and vLLM's."""

ScriptFor = Callable[[Any], "Script | None"]
"""Picks the script for a request body (parsed JSON), or ``None`` for the default."""

_TOOL_CALL_KEYS = frozenset({"name", "arguments", "id"})
_BOOLS = frozenset({"usage", "honour_max_tokens", "tool_calls_interleave"})
_COUNTS = ("tokens", "reasoning", "reasoning_tokens", "cached_tokens", *ENDINGS)
_INTS = frozenset({"status", "tool_call_split", "write_bytes", *_COUNTS})
_FLOATS = frozenset({"retry_after", "headers_delay", "ttft", "interval"})
_LISTS = frozenset({"text_chunks", "tool_calls", "raw_deltas"})


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
    location: str | None = None
    """``Location`` header of a non-200 answer (a redirect, with a 3xx status)."""
    headers_delay: float = 0.0
    """Seconds to wait before sending the status line and headers."""
    ttft: float = 0.0
    """Seconds to wait after the headers before the first event."""
    interval: float = 0.0
    """Seconds to wait between events; 0 writes as fast as the connection takes it."""
    tokens: int | None = None
    """Number of answer tokens; ``None`` is the number of words in ``text``, or 5 without
    ``text`` (with ``refusal`` or ``tool_calls`` set, no answer tokens unless this or ``text``
    is set)."""
    text: str | None = None
    """Text whose words (with trailing spaces) are the tokens, cycled if ``tokens`` is larger;
    without it the tokens are ``"tok0 "``, ``"tok1 "``, ..."""
    finish_reason: str | None = "stop"
    """Finish reason of a complete stream (``"length"`` when the request's max_tokens cut it,
    ``"tool_calls"`` instead of ``"stop"`` when ``tool_calls`` has calls); ``None`` sends no
    finish reason at all, only ``[DONE]``."""
    stall_after: int | None = None
    """After this many events send nothing more and keep the connection open until the client
    closes it."""
    close_after: int | None = None
    """After this many events end the body cleanly with no finish reason and no ``[DONE]``."""
    reset_after: int | None = None
    """After this many events reset the TCP connection (RST)."""
    malformed_after: int | None = None
    """After this many events send a ``data:`` line that is not JSON, then end the body."""
    error_event_after: int | None = None
    """After this many events send ``data: {"error": {...}}``, then end the body."""
    usage: bool = True
    """Send the usage chunk when the request asks for it (``stream_options.include_usage``);
    its completion_tokens is the number of events sent."""
    honour_max_tokens: bool = True
    """Cut the stream at the request's ``max_tokens`` (counting events); False plays an
    upstream that ignores it."""
    reasoning: int | None = None
    """Number of reasoning tokens streamed before everything else, one event each;
    ``None`` is the number of words in ``reasoning_text``, or none without it."""
    reasoning_text: str | None = None
    """Text whose words are the reasoning tokens, cycled like ``text``; without it they are
    ``"think0 "``, ``"think1 "``, ..."""
    reasoning_field: str = "reasoning_content"
    """The delta key of reasoning: ``"reasoning_content"`` (DeepSeek, llama.cpp) or
    ``"reasoning"`` (vLLM)."""
    text_chunks: Sequence[str] | None = None
    """The answer's exact text pieces, one event each, instead of ``tokens``/``text`` (a JSON
    answer split anywhere, say); stored as a tuple."""
    refusal: str | None = None
    """A refusal whose words are streamed as ``delta.refusal`` pieces, one event each, after
    the answer text (there is none unless ``text_chunks``, ``text`` or ``tokens`` is set)."""
    tool_calls: Sequence[Mapping[str, str]] | None = None
    """Tool calls streamed after the answer text and the refusal, each
    ``{"name": str, "arguments": str, "id"?: str}`` (id default ``call_<index>_<random>``), in
    the OpenAI shape: a first piece with index, id, type, name and empty arguments, then the
    arguments in fragments of ``tool_call_split`` characters, one event each; stored as a tuple
    of read-only mappings."""
    tool_call_split: int = 5
    """Characters per fragment of a tool call's arguments (cuts land anywhere: inside an escape
    such as ``\\"`` or ``\\u00e9``, next to a multi-byte character)."""
    tool_calls_interleave: bool = True
    """Send the pieces of parallel calls round-robin by index; False sends call after call."""
    raw_deltas: Sequence[Mapping[str, Any]] | None = None
    """Delta objects sent verbatim, one event each, after the reasoning and instead of the
    answer text (``tokens``/``text`` are ignored; ``text_chunks``, ``refusal`` and
    ``tool_calls`` are refused with it): odd and garbage shapes. Stored as a tuple of read-only
    copies."""
    reasoning_tokens: int | None = None
    """When set, the usage chunk has ``completion_tokens_details.reasoning_tokens``."""
    cached_tokens: int | None = None
    """When set, the usage chunk has ``prompt_tokens_details.cached_tokens``."""
    write_bytes: int | None = None
    """Write the body in pieces of at most this many bytes, each its own write and HTTP chunk
    about a millisecond apart (separate network reads): events cut anywhere, even inside a
    UTF-8 character."""

    def __post_init__(self) -> None:
        """Reject values the fake cannot act on; store the sequences as tuples."""
        if not 200 <= self.status <= 599 or self.status in (204, 304):
            raise ValueError(f"status: unsupported HTTP status {self.status}")
        for name in ("headers_delay", "ttft", "interval"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must not be negative")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError("retry_after: must not be negative")
        for name in _COUNTS:
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name}: must not be negative")
        for name in ("text", "reasoning_text", "refusal"):
            value = getattr(self, name)
            if value is not None and not value.split():
                raise ValueError(f"{name}: must contain at least one word")
        if self.reasoning_field not in REASONING_FIELDS:
            raise ValueError(f"reasoning_field: one of {', '.join(REASONING_FIELDS)}")
        if self.tool_call_split < 1:
            raise ValueError("tool_call_split: must be at least 1")
        if self.write_bytes is not None and self.write_bytes < 1:
            raise ValueError("write_bytes: must be at least 1")
        if self.text_chunks is not None:
            object.__setattr__(self, "text_chunks", _text_chunks(self.text_chunks))
        if self.tool_calls is not None:
            object.__setattr__(self, "tool_calls", _tool_calls(self.tool_calls))
        if self.raw_deltas is not None:
            object.__setattr__(self, "raw_deltas", _raw_deltas(self.raw_deltas))
            for name in ("text_chunks", "refusal", "tool_calls"):
                if getattr(self, name) is not None:
                    raise ValueError(f"raw_deltas: replaces the answer, do not set {name} too")

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
        if self.text_chunks is not None:
            out["text_chunks"] = list(self.text_chunks)
        for name in ("tool_calls", "raw_deltas"):
            if (value := getattr(self, name)) is not None:
                out[name] = [copy.deepcopy(dict(item)) for item in value]
        return out

    def token_texts(self) -> list[str]:
        """Return the texts of the answer tokens this script streams, in order."""
        return _cycled(self.text, self.tokens, "tok")

    def reasoning_texts(self) -> list[str]:
        """Return the texts of the reasoning tokens this script streams, in order."""
        if self.reasoning is None and self.reasoning_text is None:
            return []
        return _cycled(self.reasoning_text, self.reasoning, "think")

    def refusal_texts(self) -> list[str]:
        """Return the refusal's pieces (its words, with trailing spaces), in order."""
        return [] if self.refusal is None else _words(self.refusal)


def ending(script: Script, tokens: int) -> tuple[int, str] | None:
    """Return ``(after, knob)`` for the knob that ends a stream of ``tokens`` events first."""
    best: tuple[int, str] | None = None
    for name in ENDINGS:
        value = getattr(script, name)
        if value is not None and value <= tokens and (best is None or value < best[0]):
            best = (value, name)
    return best


def directive(body: Any) -> dict[str, Any] | None:
    """Return the ``#fake {...}`` overrides in the request's last user message, if any."""
    text = last_user_text(body)
    if text is None or not (text := text.lstrip()).startswith(DIRECTIVE):
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text[len(DIRECTIVE) :].lstrip())
    except ValueError as exc:
        raise ValueError(f"{DIRECTIVE.strip()} directive is not followed by JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{DIRECTIVE.strip()} directive must be followed by a JSON object")
    return value


def _words(text: str) -> list[str]:
    """Split text into words with their trailing whitespace (the first keeps its leading)."""
    words = re.findall(r"\S+\s*", text)
    words[0] = text[: len(text) - len(text.lstrip())] + words[0]
    return words


def _cycled(text: str | None, count: int | None, prefix: str) -> list[str]:
    """Return ``count`` tokens: the words of ``text`` cycled, or ``prefix0 ``, ``prefix1 ``..."""
    if text is None:
        return [f"{prefix}{i} " for i in range(5 if count is None else count)]
    words = _words(text)
    count = len(words) if count is None else count
    if count > len(words) and not words[-1][-1].isspace():
        words[-1] += " "  # the text repeats: keep its last and first words apart
    return [words[i % len(words)] for i in range(count)]


def _text_chunks(value: Any) -> tuple[str, ...]:
    """Check ``text_chunks``: a sequence of strings, kept as a tuple."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ValueError("text_chunks: must be a list of strings")
    if not all(isinstance(chunk, str) for chunk in value):
        raise ValueError("text_chunks: every chunk must be a string")
    return tuple(value)


def _tool_calls(value: Any) -> tuple[Mapping[str, str], ...]:
    """Check ``tool_calls``: objects with a name, arguments and maybe an id, all strings."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ValueError("tool_calls: must be a list of objects")
    calls: list[Mapping[str, str]] = []
    for i, call in enumerate(value):
        if not isinstance(call, Mapping):
            raise ValueError(f"tool_calls[{i}]: must be an object")
        if unknown := set(call) - _TOOL_CALL_KEYS:
            raise ValueError(f"tool_calls[{i}]: unknown keys {sorted(unknown)}")
        for key in ("name", "arguments"):
            if not isinstance(call.get(key), str):
                raise ValueError(f"tool_calls[{i}].{key}: must be a string")
        if "id" in call and not isinstance(call["id"], str):
            raise ValueError(f"tool_calls[{i}].id: must be a string")
        calls.append(MappingProxyType(dict(call)))
    return tuple(calls)


def _raw_deltas(value: Any) -> tuple[Mapping[str, Any], ...]:
    """Check ``raw_deltas``: JSON objects, kept as read-only deep copies."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ValueError("raw_deltas: must be a list of objects")
    deltas: list[Mapping[str, Any]] = []
    for i, delta in enumerate(value):
        if not isinstance(delta, Mapping):
            raise ValueError(f"raw_deltas[{i}]: must be an object")
        delta = copy.deepcopy(dict(delta))
        try:
            orjson.dumps(delta)
        except TypeError as exc:
            raise ValueError(f"raw_deltas[{i}]: not JSON: {exc}") from exc
        deltas.append(MappingProxyType(delta))
    return tuple(deltas)


def _check_json_value(name: str, value: Any, optional: bool) -> Any:
    """Check one JSON value for a script key, converting what JSON cannot express."""
    if value is None and (optional or name == "finish_reason"):
        return None
    if name == "error_body":
        if isinstance(value, str):
            return value.encode()
        if isinstance(value, dict):
            return value
        raise ValueError("error_body: must be a string or an object")
    if name in _BOOLS:
        ok = isinstance(value, bool)
    elif name in _INTS:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif name in _FLOATS:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif name in _LISTS:
        ok = isinstance(value, list)  # the items are checked when the script is built
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(f"{name}: unexpected value {value!r}")
    return value
