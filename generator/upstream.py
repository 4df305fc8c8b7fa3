"""The upstream interface: what the generator needs from a model, and how an upstream fails.

An upstream opens one streamed completion per request::

    async with upstream.stream(request) as deltas:   # may raise UpstreamFailure
        async for delta in deltas:                  # may raise UpstreamFailure
            ...

Each ``Delta`` carries the parts one upstream chunk (or several, merged) brought, in this order:
reasoning, answer text, refusal, tool-call pieces; then, on the last ones, the finish reason and
usage. The iteration ends normally only when the model really finished (it sent its end-of-stream
marker); a stream cut short raises ``UpstreamFailure``. Leaving the ``async with`` block, for any
reason including cancellation, closes the upstream request (for HTTP: the connection). A stream
may also be ``Abortable``: ``abort()`` closes it at once, from outside its task, so the upstream
learns of a cancel before the task unwinds.

``UpstreamFailure`` lives in ``aistream.errors`` with every other exception; it is exported here
too, where the upstreams have always imported it from.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from aistream.errors import UpstreamFailure
from aistream.v1 import events_pb2 as pb

__all__ = [
    "Abortable",
    "Call",
    "CallPiece",
    "Delta",
    "Message",
    "Upstream",
    "UpstreamFailure",
    "UpstreamRequest",
]

Role = Literal["system", "user", "assistant", "tool"]
JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Call:
    """A whole tool call: in an assistant message of the history."""

    id: str
    name: str
    arguments: str
    """JSON text."""


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of the conversation, in OpenAI chat terms."""

    role: Role
    content: str
    tool_calls: tuple[Call, ...] = ()
    """The calls an assistant turn made."""
    tool_call_id: str = ""
    """The call a ``tool`` turn answers."""

    def openai(self) -> JsonObject:
        """The message as the Chat Completions API takes it."""
        if not self.tool_calls and not self.tool_call_id:
            return {"role": self.role, "content": self.content}
        out: JsonObject = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["content"] = self.content or None
            out["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in self.tool_calls
            ]
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        return out


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One completion to ask of the model, in OpenAI chat terms."""

    request_id: str
    messages: tuple[Message, ...]
    model: str | None
    max_tokens: int
    temperature: float | None
    traceparent: str = ""
    """W3C trace context for the upstream request (its ``traceparent`` header; ``""``: none)."""
    tools: tuple[JsonObject, ...] = ()
    """The tools, in the API's shape: ``{"type": "function", "function": {name, description?,
    parameters?}}``."""
    tool_choice: str | JsonObject | None = None
    """``"auto"``/``"none"``/``"required"`` or ``{"type": "function", "function": {"name": …}}``;
    None: not sent."""
    response_format: JsonObject | None = None
    """``{"type": "json_object"}`` or ``{"type": "json_schema", "json_schema": {name, schema,
    strict?}}``; None: not sent."""

    def options(self) -> JsonObject:
        """The request body's tool and format fields (only those set)."""
        out: JsonObject = {}
        if self.tools:
            out["tools"] = list(self.tools)
        if self.tool_choice is not None:
            out["tool_choice"] = self.tool_choice
        if self.response_format is not None:
            out["response_format"] = self.response_format
        return out


@dataclass(slots=True)
class CallPiece:
    """A piece of a streamed tool call: the first for an ``index`` opens it (with its ``id``
    and ``name``), the later ones add to its ``arguments`` text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class Delta:
    """A piece of the stream: ``count`` upstream tokens of text, ``reasoning_count`` of
    reasoning, a refusal piece, tool-call pieces; and/or the end's details."""

    text: str = ""
    count: int = 0
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning: str = ""
    reasoning_count: int = 0
    refusal: str = ""
    calls: list[CallPiece] | None = None
    reasoning_tokens: int | None = None
    """Of the reported completion tokens, those spent reasoning (with the usage)."""
    cached_tokens: int | None = None
    """Of the reported prompt tokens, those served from a cache (with the usage)."""


def truncated() -> UpstreamFailure:
    """The failure for a stream that ended before the model finished."""
    return UpstreamFailure(
        pb.ERROR_CODE_UPSTREAM_ERROR,
        "the upstream ended the stream before finishing",
        retryable=True,
    )


@runtime_checkable
class Abortable(Protocol):
    """A stream that can be closed synchronously, from outside the task reading it."""

    def abort(self) -> None:
        """Close the upstream connection now (the reading task still leaves its block)."""
        ...


class Upstream(Protocol):
    """A source of streamed completions."""

    @property
    def kind(self) -> Literal["openai", "simulated"]:
        """What serves the completions; ``simulated`` is the embedded model."""
        ...

    def model_name(self, requested: str | None) -> str:
        """The model that serves a request asking for ``requested`` (None: the default)."""
        ...

    def stream(self, request: UpstreamRequest) -> AbstractAsyncContextManager[AsyncIterator[Delta]]:
        """Open one streamed completion; leaving the context closes it."""
        ...

    async def aclose(self) -> None:
        """Release connection pools and the like."""
        ...
