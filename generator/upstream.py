"""The upstream interface: what the generator needs from a model, and how an upstream fails.

An upstream opens one streamed completion per request::

    async with upstream.stream(request) as deltas:   # may raise UpstreamFailure
        async for delta in deltas:                  # may raise UpstreamFailure
            ...

The iteration ends normally only when the model really finished (it sent its end-of-stream
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
from typing import Literal, Protocol, runtime_checkable

from aistream.errors import UpstreamFailure
from aistream.v1 import events_pb2 as pb

__all__ = ["Abortable", "Delta", "Upstream", "UpstreamFailure", "UpstreamRequest"]

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One completion to ask of the model, in OpenAI chat terms."""

    request_id: str
    messages: tuple[tuple[Role, str], ...]
    model: str | None
    max_tokens: int
    temperature: float | None
    traceparent: str = ""
    """W3C trace context for the upstream request (its ``traceparent`` header; ``""``: none)."""


@dataclass(slots=True)
class Delta:
    """A piece of the stream: ``count`` upstream tokens of text, and/or the end's details."""

    text: str = ""
    count: int = 0
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


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
