"""What an answer hands over besides its text, assembled as it streams and checked at its end.
Pure: no I/O, no clock.

``ToolCalls`` keeps the model's tool calls by index as their pieces arrive: the first piece of an
index opens the call (it must name the tool; an id is made up when the upstream sends none), the
later ones add to its arguments text. ``finish`` hands over every call in index order, each one's
arguments proven to parse as JSON::

    calls = ToolCalls(max_calls=64, max_chars=256 * 1024)  # (arguments of all calls together)
    calls.add(CallPiece(0, "call_1", "get_weather"))   # → the opened call (ToolCallStart)
    calls.add(CallPiece(0, arguments='{"city": "Pa'))  # → None (its text goes on as ToolArgs)
    calls.add(CallPiece(0, arguments='ris"}'))
    calls.finish()                                     # → [ToolCall(id, name, '{"city": "Paris"}')]

``Output`` keeps the answer text of a generation asked for structured output and, at the end,
parses it and validates it against the request's schema: ``finish`` gives the value as ``Json``
for ``Done.output``.

An upstream that breaks the stream's rules (a piece for a call it never opened, an index past
``max_calls``) is an ``UpstreamFailure`` (``upstream_error``); a model whose output is unusable
(arguments or an answer that do not parse, break the schema, or pass a size limit) is
``InvalidOutput`` (``invalid_output``, retryable). Their messages never quote the model's text.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import orjson
from jsonschema.exceptions import ValidationError, best_match
from jsonschema.validators import validator_for

from aistream.errors import InvalidOutput, UpstreamFailure
from aistream.generator.upstream import CallPiece
from aistream.v1 import events_pb2 as pb

__all__ = ["Output", "ToolCalls"]

_DETAIL_CHARS = 120  # of a schema keyword's value or a path, in an invalid_output message


@dataclass(slots=True)
class _Call:
    index: int
    id: str
    name: str
    pieces: list[str] = field(default_factory=list)


class ToolCalls:
    """The tool calls of one answer, by index, as they stream (module doc)."""

    __slots__ = ("_calls", "_chars", "_max_calls", "_max_chars")

    def __init__(self, max_calls: int, max_chars: int) -> None:
        """``max_calls``: the most calls (an index must be below it); ``max_chars``: the
        longest arguments text of all the calls together (what Done may carry is bounded)."""
        self._calls: dict[int, _Call] = {}
        self._max_calls = max_calls
        self._max_chars = max_chars
        self._chars = 0

    def __bool__(self) -> bool:
        return bool(self._calls)

    def add(self, piece: CallPiece) -> pb.ToolCallStart | None:
        """Take one piece; the call it opened (its request id and seq left for the caller to
        fill in), or None when it added to an open call."""
        index = piece.index
        if not 0 <= index < self._max_calls:
            raise UpstreamFailure(
                pb.ERROR_CODE_UPSTREAM_ERROR,
                f"the upstream sent a tool call past the limit of {self._max_calls}",
                retryable=True,
            )
        call = self._calls.get(index)
        opened = None
        if call is None:
            if not piece.name:
                raise UpstreamFailure(
                    pb.ERROR_CODE_UPSTREAM_ERROR,
                    "the upstream sent tool call arguments for a call it never opened",
                    retryable=True,
                )
            call = _Call(index, piece.id or "call_" + secrets.token_hex(12), piece.name)
            self._calls[index] = call
            opened = pb.ToolCallStart(index=index, id=call.id, name=call.name)
        if piece.arguments:
            self._chars += len(piece.arguments)
            if self._chars > self._max_chars:
                raise InvalidOutput(
                    f"the tool calls' arguments are longer than {self._max_chars} characters"
                )
            call.pieces.append(piece.arguments)
        return opened

    def finish(self) -> list[pb.ToolCall]:
        """Every call in index order, each one's arguments whole; InvalidOutput if any does not
        parse as JSON."""
        calls = []
        for index in sorted(self._calls):
            call = self._calls[index]
            arguments = "".join(call.pieces)
            try:
                orjson.loads(arguments)
            except orjson.JSONDecodeError:
                raise InvalidOutput(
                    f"the arguments of tool call {index} ({call.name}) are not valid JSON"
                ) from None
            calls.append(pb.ToolCall(id=call.id, name=call.name, arguments=arguments))
        return calls


class Output:
    """The answer text of a generation that asked for structured output, and its check."""

    __slots__ = ("_length", "_max_chars", "_object", "_pieces", "_validator")

    def __init__(self, schema: dict[str, Any] | None, max_chars: int) -> None:
        """``schema``: the JSON Schema the answer must be valid against (checked already:
        ``validation.check_schema``), or None for any JSON object (``json_object``)."""
        self._validator = None if schema is None else validator_for(schema)(schema)
        self._object = schema is None
        self._max_chars = max_chars
        self._pieces: list[str] = []
        self._length = 0

    def add(self, text: str) -> None:
        """Keep a piece of the answer; InvalidOutput once it is longer than allowed."""
        self._length += len(text)
        if self._length > self._max_chars:
            raise InvalidOutput(
                f"the structured answer is longer than {self._max_chars} characters"
            )
        self._pieces.append(text)

    def finish(self) -> pb.Json:
        """The answer parsed and validated, as compact JSON text; InvalidOutput if it is not
        JSON, not an object (``json_object``), or breaks the schema."""
        text = "".join(self._pieces)
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise InvalidOutput("the structured answer is not valid JSON") from None
        if self._object and not isinstance(value, dict):
            raise InvalidOutput("the structured answer is not a JSON object")
        if self._validator is not None:
            try:
                error = best_match(self._validator.iter_errors(value))
            except RecursionError:
                raise InvalidOutput("the structured answer is nested too deeply") from None
            if error is not None:
                raise InvalidOutput(f"the structured answer breaks the schema: {_where(error)}")
        try:
            return pb.Json(text=orjson.dumps(value).decode())  # compact
        except TypeError:  # deeper than orjson writes (255 levels): the model's own text
            return pb.Json(text=text.strip())


def _where(error: ValidationError) -> str:
    """Which rule of the schema the answer broke, and where: ``$.city: "type" "string"`` (the
    path, the keyword and its value in the schema; nothing of the answer's values)."""
    keyword = str(error.validator)
    rule = orjson.dumps(error.validator_value).decode()
    if len(rule) > _DETAIL_CHARS:
        rule = rule[:_DETAIL_CHARS] + "…"
    path = error.json_path
    if len(path) > _DETAIL_CHARS:
        path = path[:_DETAIL_CHARS] + "…"
    return f"{path}: {keyword!r} {rule}"
