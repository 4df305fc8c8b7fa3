"""First attempts: a request's first try sent below the SDK; a failed one handed back to it.

The ``openai`` SDK spends most of opening a streamed request on *building* it: copying and
validating options (pydantic), merging headers and the URL (httpx2), then the httpx2 client's
auth, redirect and hook layers. Measured here: ~700 µs of CPU per request through
``client.post``, against ~330 µs for the same request handed straight to the transport
underneath it (the SDK's own aiohttp transport). A generator serving a thousand streams of
short answers opens hundreds of requests a second, and that difference is a tenth of a core.

``FirstAttempts`` is the transport the SDK's HTTP client is given. Every request the SDK sends
passes through it to the aiohttp transport unchanged, and from the first one it sees for the
endpoint (a first attempt, as the ``is_first`` it is given recognises one) it keeps what does
not depend on the body: the URL, the headers (auth, user agent, platform, retry count) and the
timeouts. From then on ``send_first`` sends a request's first attempt with them, straight to the
transport. A request's own headers — its trace context, ``traceparent`` — are never learnt: the
caller hands them to ``send_first`` (and to the SDK's request, as its per-request headers).

This module is written against httpx2's public transport interface only. What it takes on trust
from the SDK — how a first attempt is marked, that its headers do not change from request to
request, that each attempt is one call of its transport in the calling task — is listed, and
checked against the installed SDK, in ``sdk_private.py``.

The SDK still owns everything but a success. When a first attempt fails — a status that is not
2xx, or an error before the response — the caller runs the SDK's own request under
``replaying(outcome)``, and the SDK's first attempt *is* that outcome: this transport returns
(or raises) it instead of sending anything. So the SDK's retry rules, its backoff and
Retry-After handling and its typed errors apply exactly as if it had sent the attempt itself,
and the upstream sees no extra request. Requests the SDK routes elsewhere (a proxy from the
environment) never pass through here, so no template is learnt for them and they always go
through the SDK.

Every attempt's error passes through here too, and here it loses the reference cycles it comes
with. A connection that cannot be made fails deep in aiohttp, whose connector (and
aiohappyeyeballs under it) raises an error that a local variable of the raising frame still
holds, while the error's traceback holds that frame: every refused or timed-out connection
leaves a cycle of frames, tracebacks and errors for the cycle collector, and an upstream that is
down while a thousand streams retry would make them by the thousand (aistream/collector.py).
So the error, and every error it was raised from or while handling, lets go of its traceback
(the frames then go by reference counting; what the error says stays, and nothing logs an
upstream failure's traceback). Frames are never cleared: on Python 3.11 clearing a suspended
coroutine's frame would close the coroutine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import httpx2

__all__ = ["FirstAttempts"]

# Headers that belong to one request's body, connection or trace, not to the endpoint.
_PER_REQUEST = frozenset(
    (b"host", b"content-length", b"transfer-encoding", b"traceparent", b"tracestate")
)


class _Replay:
    """The outcome of a failed first attempt, waiting for the SDK's first attempt to take it.
    A box rather than the context variable's value, so taking it is seen by every copy of the
    context (were any layer under the SDK to run the send in a task of its own)."""

    __slots__ = ("outcome",)

    def __init__(self, outcome: httpx2.Response | Exception) -> None:
        self.outcome: httpx2.Response | Exception | None = outcome


_REPLAY: ContextVar[_Replay | None] = ContextVar("aistream_first_attempt_replay", default=None)


@dataclass(frozen=True, slots=True)
class _Template:
    url: httpx2.URL
    headers: list[tuple[bytes, bytes]]
    extensions: dict[str, Any]


class FirstAttempts(httpx2.AsyncBaseTransport):
    """The SDK's transport, plus first attempts sent without the SDK (module doc)."""

    def __init__(
        self,
        transport: httpx2.AsyncBaseTransport,
        path: str,
        is_first: Callable[[httpx2.Request], bool],
    ) -> None:
        """``transport``: the one that really sends; ``path``: the endpoint's path after the
        base URL (``/chat/completions``); ``is_first``: whether a request the SDK sends is a
        first attempt (``sdk_private.is_first_attempt``)."""
        self._transport = transport
        self._path = path
        self._is_first = is_first
        self._template: _Template | None = None
        self.sent_first = 0
        """First attempts sent by ``send_first`` so far."""

    @property
    def ready(self) -> bool:
        """Whether ``send_first`` can be used: the SDK has sent a first attempt to the
        endpoint through this transport."""
        return self._template is not None

    async def send_first(
        self, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> httpx2.Response:
        """Send a first attempt with ``body`` (JSON) as the SDK would, plus this request's own
        ``headers`` (its ``traceparent``); the response is streamed (not read). Raises what the
        transport raises."""
        template = self._template
        if template is None:
            raise RuntimeError("no first attempt has been seen yet")
        request = httpx2.Request(
            "POST",
            template.url,
            headers=[*template.headers, *headers] if headers else template.headers,
            content=body,
            extensions=template.extensions,
        )
        self.sent_first += 1
        return await self._send(request)

    @asynccontextmanager
    async def replaying(self, outcome: httpx2.Response | Exception) -> AsyncIterator[None]:
        """Within the block, the SDK's next attempt in this task is ``outcome`` (a failed first
        attempt) instead of a request sent. A response the SDK never took is closed."""
        replay = _Replay(outcome)
        token = _REPLAY.set(replay)
        try:
            yield
        finally:
            _REPLAY.reset(token)
            if isinstance(replay.outcome, httpx2.Response):
                await replay.outcome.aclose()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """Serve a waiting replay, or send ``request`` (learning the endpoint's template from
        the first first attempt to it)."""
        replay = _REPLAY.get()
        if replay is not None and replay.outcome is not None:
            outcome, replay.outcome = replay.outcome, None
            if isinstance(outcome, Exception):
                try:
                    raise outcome
                finally:
                    del outcome  # (the error's traceback holds this frame)
            outcome.request = request
            return outcome
        if self._template is None:
            self._learn(request)
        return await self._send(request)

    async def _send(self, request: httpx2.Request) -> httpx2.Response:
        try:
            return await self._transport.handle_async_request(request)
        except Exception as exc:
            _drop_tracebacks(exc)
            raise

    def _learn(self, request: httpx2.Request) -> None:
        if request.method != "POST" or not request.url.path.endswith(self._path):
            return
        if not self._is_first(request):
            return
        headers = [(k, v) for k, v in request.headers.raw if k.lower() not in _PER_REQUEST]
        self._template = _Template(request.url, headers, dict(request.extensions))

    async def aclose(self) -> None:
        """Close the transport underneath."""
        await self._transport.aclose()


def _drop_tracebacks(exc: BaseException) -> None:
    """``exc`` and every error it was raised from or while handling let go of their tracebacks
    (module doc); re-raised, ``exc`` gets a new one from the frame that raises it."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        error = pending.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        error.__traceback__ = None
        pending.extend(e for e in (error.__cause__, error.__context__) if e is not None)
