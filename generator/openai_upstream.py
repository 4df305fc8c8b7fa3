"""The ``openai`` upstream: any OpenAI-compatible chat-completions API (OpenAI, vLLM, Ollama, …).

The SDK does what it is good at (base URL, auth headers, retries of 429/5xx before the first byte,
typed errors); the stream itself is read as raw bytes and decoded by ``sse.SSEDecoder`` + orjson,
which is ~15× cheaper per chunk than the SDK's typed chunk models. The SDK's aiohttp transport
(``openai[aiohttp]``) carries the HTTP: its C parser hands over everything a network read
brought in one piece, where the default transport yields (and costs Python work for) every HTTP
chunk — one per token. Measured here: 3× the tokens per second per generator process.

Opening a request through the SDK costs twice what sending it does, so once the SDK has sent one
request a request's first attempt goes straight to that transport with the URL, headers and
timeouts the SDK used (``first_attempts.FirstAttempts``); a first attempt that fails is handed
to the SDK's own request as its first attempt, so retries, backoff and typed errors stay the
SDK's.

The body is read from aiohttp's ``StreamReader`` directly (one await per network read, every
buffered byte at once) rather than through the SDK's and httpx's iterator wrappers, and under load
its reads are spaced by ``pacing.ReadPacing``: the socket is paused after a read that brought
tokens and resumed when the answer's next read is due, so tokens that arrive meanwhile cost one
read, one decode pass and one outbox entry together.

The response is always entered with ``async with``, so leaving the block for any reason — end,
error, cancellation — closes the HTTP connection.

SDK and transport exceptions are translated here, once, into ``UpstreamFailure``. Upstream error
text is logged with the request id and never put into a failure's message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Literal

import aiohttp
import httpx2
import openai
import orjson
from aistream.generator.first_attempts import FirstAttempts
from aistream.generator.pacing import ReadPacing
from aistream.generator.sse import SSEDecoder
from aistream.generator.upstream import Delta, UpstreamFailure, UpstreamRequest, truncated
from openai._vendor.httpx_aiohttp import AiohttpTransport

from aistream.settings import Settings
from aistream.v1 import events_pb2 as pb

__all__ = ["OpenAIUpstream", "map_sdk_error", "parse_chunk"]

log = logging.getLogger(__name__)

_PATH = "/chat/completions"  # after the base URL; first attempts learn their template from it
_DONE = b"[DONE]"
_REUSE_WAIT = 0.05  # seconds to wait for the end of a finished body, for connection reuse
_READ_SIZE = 64 * 1024  # bytes taken from the response body at most per read
_READ_ERRORS = (openai.OpenAIError, httpx2.HTTPError, aiohttp.ClientError)


def parse_chunk(data: bytes) -> Delta:
    """Decode one chat-completion chunk's JSON into a Delta; raise UpstreamFailure if malformed."""
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamFailure(
            pb.ERROR_CODE_UPSTREAM_ERROR, "the upstream sent a malformed stream", retryable=True
        ) from None
    if not isinstance(chunk, dict):
        raise UpstreamFailure(
            pb.ERROR_CODE_UPSTREAM_ERROR, "the upstream sent a malformed stream", retryable=True
        )
    if "error" in chunk:
        raise _MidStreamError(chunk["error"])
    delta = Delta()
    choices = chunk.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        content = (choice.get("delta") or {}).get("content")
        if isinstance(content, str) and content:
            delta.text = content
            delta.count = 1
        reason = choice.get("finish_reason")
        if isinstance(reason, str):
            delta.finish_reason = reason
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int) and isinstance(completion, int):
            delta.prompt_tokens, delta.completion_tokens = prompt, completion
    return delta


class _MidStreamError(UpstreamFailure):
    """An ``{"error": …}`` event inside an otherwise healthy stream."""

    def __init__(self, detail: Any) -> None:
        super().__init__(
            pb.ERROR_CODE_UPSTREAM_ERROR, "the upstream failed during the answer", retryable=True
        )
        self.detail = detail


def _refused(exc: BaseException) -> bool:
    """Whether a connection failure lies under ``exc`` (the aiohttp transport reports a refused
    connection as a connect *timeout*)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, aiohttp.ClientConnectorError) and not isinstance(
            cause, aiohttp.ServerTimeoutError
        ):
            return True
        cause = cause.__cause__
    return False


def map_sdk_error(exc: Exception) -> UpstreamFailure:
    """Translate an SDK or transport exception to the most specific UpstreamFailure."""
    if isinstance(exc, openai.RateLimitError):
        return UpstreamFailure(pb.ERROR_CODE_RATE_LIMITED, "the upstream is rate limiting requests")
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return UpstreamFailure(
            pb.ERROR_CODE_UPSTREAM_ERROR,
            "the upstream refused aistream's credentials",
            retryable=False,
        )
    if isinstance(exc, openai.InternalServerError):
        return UpstreamFailure(pb.ERROR_CODE_UPSTREAM_ERROR, "the upstream failed", retryable=True)
    if isinstance(exc, openai.APIStatusError):
        return UpstreamFailure(
            pb.ERROR_CODE_UPSTREAM_ERROR, "the upstream rejected the request", retryable=False
        )
    if isinstance(exc, openai.APITimeoutError) and not _refused(exc):
        return UpstreamFailure(pb.ERROR_CODE_TIMEOUT, "the upstream did not answer in time")
    if isinstance(exc, openai.APIConnectionError):
        return UpstreamFailure(pb.ERROR_CODE_UNAVAILABLE, "the upstream cannot be reached")
    if isinstance(exc, aiohttp.ServerTimeoutError | httpx2.TimeoutException):
        return UpstreamFailure(pb.ERROR_CODE_TIMEOUT, "the upstream did not answer in time")
    if isinstance(exc, httpx2.HTTPError | aiohttp.ClientError):
        return UpstreamFailure(
            pb.ERROR_CODE_UPSTREAM_ERROR, "the upstream connection failed", retryable=True
        )
    return UpstreamFailure(pb.ERROR_CODE_INTERNAL, "internal error")


class OpenAIUpstream:
    """Streams completions from an OpenAI-compatible API through the ``openai`` SDK."""

    kind: Literal["openai"] = "openai"

    def __init__(self, settings: Settings) -> None:
        self._default_model = settings.model
        self._pacing = ReadPacing(settings.upstream_reads_per_s, settings.max_read_interval)
        # aiohttp underneath (see above); one connection per running generation at most
        # (the SDK's default pool stops at 1000), kept for reuse — in the transport we give the
        # SDK's client and in any it makes itself (a proxy from the environment). First attempts
        # are sent straight to ours once the SDK has sent one (first_attempts.py).
        limits = httpx2.Limits(
            max_connections=settings.max_generations,
            max_keepalive_connections=settings.max_generations,
        )
        self._first = FirstAttempts(AiohttpTransport(limits=limits), _PATH)
        self._client = openai.AsyncOpenAI(
            base_url=settings.base_url,
            # A local server (Ollama, llama.cpp) needs no key, but the SDK insists on one.
            api_key=settings.api_key or "unused",
            max_retries=settings.upstream_max_retries,
            http_client=openai.DefaultAioHttpClient(transport=self._first, limits=limits),
            # Our own first-token / stall / total limits govern; the SDK's must not fire first.
            # No read timeout at all: aiohttp would re-arm its timer on every network read.
            timeout=httpx2.Timeout(
                settings.max_deadline, connect=settings.first_token_timeout, read=None
            ),
        )

    def model_name(self, requested: str | None) -> str:
        """The requested model, or the configured default."""
        return requested or self._default_model

    def stream(self, request: UpstreamRequest) -> _ChatStream:
        """Open one streamed chat completion."""
        return _ChatStream(
            self._client, self._first, request, self.model_name(request.model), self._pacing
        )

    async def aclose(self) -> None:
        """Close the SDK's connection pool."""
        await self._client.close()


def _aiohttp_response(response: httpx2.Response) -> aiohttp.ClientResponse | None:
    """The aiohttp response under an SDK response, when the SDK's aiohttp transport carried it
    and the body is not content-encoded (SSE normally is not); None otherwise. (Reaches through
    private attributes; ``tests/test_openai_upstream.py`` fails if an upgrade moves them.)"""
    if response.headers.get("content-encoding", "identity").lower() != "identity":
        return None
    stream = response.stream
    # httpx2's BoundAsyncStream wraps the transport's stream when the SDK's client sent it
    stream = getattr(stream, "_stream", stream)
    aio = getattr(stream, "_aiohttp_response", None)  # the SDK's AiohttpResponseStream
    return aio if isinstance(aio, aiohttp.ClientResponse) else None


class _PacedBody:
    """An aiohttp response body read straight from its ``StreamReader``, paced (module doc)."""

    __slots__ = ("_content", "_loop", "_pacing", "_protocol", "_resume_at")

    def __init__(self, response: aiohttp.ClientResponse, pacing: ReadPacing) -> None:
        self._content = response.content
        connection = response.connection
        self._protocol = connection.protocol if connection is not None else None
        self._pacing = pacing
        self._loop = asyncio.get_running_loop()
        self._resume_at: asyncio.TimerHandle | None = None

    async def read(self) -> bytes:
        """What arrived since the last read, up to ``_READ_SIZE`` (waits for some); b"" at the
        end. The cap keeps one read's worth of tokens — what enters an outbox at once — small."""
        return await self._content.read(_READ_SIZE)

    def hold(self) -> None:
        """Tokens were just read: leave the socket unread until this answer's next turn."""
        interval = self._pacing.interval()
        if not interval or self._protocol is None or self._resume_at is not None:
            return
        if self._content.is_eof():
            return  # the whole body is here: nothing on the socket to hold (and aiohttp's
            # parser, between messages, refuses to be paused)
        self._protocol.pause_reading()
        self._resume_at = self._loop.call_later(interval, self._resume)

    def _resume(self) -> None:
        self._resume_at = None
        if self._protocol is not None:
            self._protocol.resume_reading()

    def release(self, *, resume: bool) -> None:
        """Stop pacing (the answer is over); ``resume``: let the socket be read again if it is
        held (to read the body's end; not when the connection is about to be closed)."""
        if self._resume_at is not None:
            self._resume_at.cancel()
            self._resume_at = None
            if resume:
                self._resume()

    def abort(self) -> None:
        """Shut the socket down now: the upstream sees the close in this very event-loop turn
        (closing the transport would send it a turn later)."""
        transport = self._protocol.transport if self._protocol is not None else None
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


async def _no_more() -> bytes:
    return b""


class _ChatStream:
    """One streamed chat completion: the HTTP response and its decoder."""

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        first: FirstAttempts,
        request: UpstreamRequest,
        model: str,
        pacing: ReadPacing,
    ) -> None:
        self._client = client
        self._first = first
        self._request = request
        self._model = model
        self._pacing = pacing
        self._response: httpx2.Response | None = None
        self._read: Callable[[], Awaitable[bytes]] = _no_more
        self._paced: _PacedBody | None = None
        self._decoder = SSEDecoder()
        self._finished = False
        self._done = False

    async def __aenter__(self) -> AsyncIterator[Delta]:
        request = self._request
        body: dict[str, Any] = {
            "model": self._model,
            "messages": [{"role": role, "content": text} for role, text in request.messages],
            "max_tokens": request.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        try:
            http_response = await self._open(body)
        except (openai.OpenAIError, httpx2.HTTPError) as exc:
            raise self._failure(exc) from exc
        self._response = http_response
        aio = _aiohttp_response(http_response)
        if aio is not None:
            self._paced = _PacedBody(aio, self._pacing)
            self._pacing.opened()
            self._read = self._paced.read
        else:  # another transport, or an encoded body: the SDK's byte iterator
            chunks = http_response.aiter_bytes()
            self._read = lambda: anext(chunks, b"")
        return self._deltas()

    async def _open(self, body: dict[str, Any]) -> httpx2.Response:
        """The streamed response to ``body``: a first attempt sent straight to the transport
        when it can be; the SDK's request otherwise, and for everything after a failed first
        attempt (which its request then takes as its own: first_attempts.py)."""
        first = self._first
        if first.ready:
            outcome: httpx2.Response | Exception
            try:
                outcome = await first.send_first(orjson.dumps(body))
            except Exception as exc:  # the SDK decides what every error means
                # (without this frame's traceback: kept here, it would hold the frame that
                # holds it — a reference cycle, aistream/collector.py)
                outcome = exc.with_traceback(None)
            else:
                if outcome.is_success:
                    return outcome
            async with first.replaying(outcome):
                return await self._sdk_post(body)
        return await self._sdk_post(body)

    async def _sdk_post(self, body: dict[str, Any]) -> httpx2.Response:
        # The SDK's generic POST: its base URL, auth, headers, retries and typed status errors,
        # without re-validating a body we build the same way every time (its typed ``create``
        # spent a third of opening a request on that); ``cast_to`` the raw response, streamed,
        # leaves the body to us.
        return await self._client.post(_PATH, cast_to=httpx2.Response, body=body, stream=True)

    def abort(self) -> None:
        """Close the upstream connection now, before the reading task has been woken and
        unwound (``__aexit__`` then closes it for good). Only the aiohttp path can; an answer
        already read to its end is left for the pool."""
        if self._paced is not None and not self._done:
            self._paced.abort()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Closes the HTTP response (and with it the connection, when the body was not read to
        # the end). Runs on every exit, cancellation included.
        if self._response is None:
            return
        if self._paced is not None:
            self._paced.release(resume=exc_type is None and self._done)
            self._pacing.closed()
        try:
            if exc_type is None and self._done:
                # After [DONE] only the body's end is left: read it (briefly) so the
                # connection goes back to the pool instead of being closed.
                with contextlib.suppress(TimeoutError, *_READ_ERRORS):
                    async with asyncio.timeout(_REUSE_WAIT):
                        while await self._read():
                            pass
        finally:
            await self._response.aclose()

    async def _deltas(self) -> AsyncIterator[Delta]:
        read, paced = self._read, self._paced
        while not self._done:
            try:
                chunk = await read()
            except _READ_ERRORS as exc:
                # aiohttp's reader keeps the error that ended it, and the error's traceback
                # would keep this frame — this stream, its response — in a cycle with the
                # reader (aistream/collector.py). Its message says what happened; its frames
                # are aiohttp's.
                raise self._failure(exc) from exc.with_traceback(None)
            if not chunk:
                if self._finished:  # some servers end after the finish reason without [DONE]
                    return
                raise truncated()
            merged = self._decode(chunk)
            if merged is not None:
                if paced is not None and merged.count and not self._done:
                    paced.hold()
                yield merged

    def _decode(self, chunk: bytes) -> Delta | None:
        """All deltas completed by one network read, merged into one (or None)."""
        merged: Delta | None = None
        for data in self._decoder.feed(chunk):
            if data == _DONE:
                self._done = True
                break
            try:
                delta = parse_chunk(data)
            except _MidStreamError as exc:
                log.warning(
                    "upstream error event request_id=%s: %r", self._request.request_id, exc.detail
                )
                raise
            if delta.finish_reason is not None:
                self._finished = True
            if merged is None:
                merged = delta
            else:
                merged.text += delta.text
                merged.count += delta.count
                merged.finish_reason = delta.finish_reason or merged.finish_reason
                if delta.prompt_tokens is not None:
                    merged.prompt_tokens = delta.prompt_tokens
                    merged.completion_tokens = delta.completion_tokens
        return merged

    def _failure(self, exc: Exception) -> UpstreamFailure:
        failure = map_sdk_error(exc)
        status = getattr(exc, "status_code", None)
        log.warning(
            "upstream failed request_id=%s status=%s error=%s: %s",
            self._request.request_id,
            status,
            type(exc).__name__,
            exc,
        )
        return failure
