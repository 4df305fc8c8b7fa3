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

Everything above that reaches below the SDK's public surface is in ``sdk_private.py``, which
lists what it relies on and checks it against the installed SDK once at start-up. If anything
has moved, one warning says what, and every answer goes through the SDK's public, typed
streaming path instead (``_PublicChatStream``: ``chat.completions.create(stream=True)``,
closed on leaving its block): slower, with the same errors, aborts and endings. It is also
``OpenAIUpstream(settings, sdk_path="public")``.

The response is always entered with ``async with``, so leaving the block for any reason — end,
error, cancellation — closes the HTTP connection.

SDK and transport exceptions are translated here, once, into ``UpstreamFailure``. Upstream error
text is logged with the request id and never put into a failure's message.

Every attempt of a request carries its ``traceparent`` header (``UpstreamRequest.traceparent``; a
first attempt gets it from ``send_first``, the SDK's attempts as the request's own header), and
with tracing on the request has a span, ``POST {path}``, from opening to the response's close
(``_Target.trace``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, cast

import aiohttp
import httpx2
import openai
import orjson
from openai import AsyncStream
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from aistream import codes, tracing
from aistream.generator.first_attempts import FirstAttempts
from aistream.generator.pacing import ReadPacing
from aistream.generator.sdk_private import (
    PATH,
    AiohttpBody,
    aiohttp_response,
    aiohttp_transport,
    is_first_attempt,
    refused_connection,
    startup_problems,
)
from aistream.generator.sse import EventTooLarge, SSEDecoder
from aistream.generator.upstream import (
    CallPiece,
    Delta,
    UpstreamFailure,
    UpstreamRequest,
    truncated,
)
from aistream.settings import Settings
from aistream.v1 import events_pb2 as pb

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = ["OpenAIUpstream", "map_sdk_error", "parse_chunk"]

log = logging.getLogger(__name__)

_DONE = b"[DONE]"
_MERGE_CHARS = 64 * 1024  # most text merged from the events of one read into one Delta
_REUSE_WAIT = 0.05  # seconds to wait for the end of a finished body, for connection reuse
_READ_ERRORS = (openai.OpenAIError, httpx2.HTTPError, aiohttp.ClientError)
_TRACEPARENT = b"traceparent"


def parse_chunk(data: bytes) -> Delta:
    """Decode one chat-completion chunk's JSON into a Delta; raise UpstreamFailure if malformed."""
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise _malformed("not JSON") from None
    return parse_chunk_object(chunk)


def parse_chunk_object(chunk: Any) -> Delta:
    """``parse_chunk`` for a chunk already parsed (the public path's typed chunks, dumped)."""
    if not isinstance(chunk, dict):
        raise _malformed("not an object")
    if "error" in chunk:
        raise _MidStreamError(chunk["error"])
    delta = Delta()
    choices = chunk.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        fields = choice.get("delta")
        if fields:
            if not isinstance(fields, dict):
                raise _malformed("delta is not an object")
            content = fields.get("content")
            if isinstance(content, str) and content:
                delta.text = content
                delta.count = 1
            if len(fields) > 1 or content is None:  # more than answer text: look for parts
                _parts(fields, delta)
        reason = choice.get("finish_reason")
        if isinstance(reason, str):
            delta.finish_reason = reason
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int) and isinstance(completion, int):
            delta.prompt_tokens, delta.completion_tokens = prompt, completion
            _usage_details(usage, delta)
    return delta


_REASONING_KEYS = ("reasoning_content", "reasoning")  # DeepSeek and llama.cpp; vLLM


def _parts(fields: dict[str, Any], delta: Delta) -> None:
    """The parts of a delta besides its answer text: reasoning (either field name), refusal,
    tool-call pieces (OpenAI's shape; arguments as text, or an object some servers send)."""
    for key in _REASONING_KEYS:
        reasoning = fields.get(key)
        if isinstance(reasoning, str) and reasoning:
            delta.reasoning = reasoning
            delta.reasoning_count = 1
            break
    refusal = fields.get("refusal")
    if isinstance(refusal, str) and refusal:
        delta.refusal = refusal
    calls = fields.get("tool_calls")
    if calls is None:
        return
    if not isinstance(calls, list):
        raise _malformed("tool_calls is not a list")
    pieces = []
    for position, call in enumerate(calls):
        if not isinstance(call, dict):
            raise _malformed("a tool call is not an object")
        index = call.get("index", position)
        function = call.get("function") or {}
        call_id = call.get("id")
        if isinstance(index, bool) or not isinstance(index, int) or not isinstance(function, dict):
            raise _malformed("a tool call has no usable index or function")
        name, arguments = function.get("name"), function.get("arguments")
        if isinstance(arguments, dict):  # (some servers send the object itself)
            arguments = orjson.dumps(arguments).decode()
        if (
            not isinstance(name, str | None)
            or not isinstance(arguments, str | None)
            or not isinstance(call_id, str | None)
        ):
            raise _malformed("a tool call has fields of the wrong type")
        pieces.append(CallPiece(index, call_id or None, name or None, arguments or ""))
    if pieces:
        delta.calls = pieces


def _usage_details(usage: dict[str, Any], delta: Delta) -> None:
    """Reasoning and cached token counts, when the upstream gives them."""
    completion = usage.get("completion_tokens_details")
    if isinstance(completion, dict):
        reasoning = completion.get("reasoning_tokens")
        if isinstance(reasoning, int) and not isinstance(reasoning, bool):
            delta.reasoning_tokens = reasoning
    prompt = usage.get("prompt_tokens_details")
    cached = prompt.get("cached_tokens") if isinstance(prompt, dict) else None
    if cached is None:
        cached = usage.get("prompt_cache_hit_tokens")  # DeepSeek's name
    if isinstance(cached, int) and not isinstance(cached, bool):
        delta.cached_tokens = cached


def event_too_large() -> UpstreamFailure:
    """The failure for an upstream event past ``upstream_max_event_bytes``."""
    return UpstreamFailure(
        pb.ERROR_CODE_UPSTREAM_ERROR, "the upstream sent an event larger than aistream accepts"
    )


def no_finish_reason() -> UpstreamFailure:
    """The failure for a stream that ended (``[DONE]``) without saying why it finished."""
    return UpstreamFailure(
        pb.ERROR_CODE_UPSTREAM_ERROR,
        "the upstream ended the answer without a finish reason",
        retryable=True,
    )


class _Malformed(UpstreamFailure):
    """An event that is not a chat-completion chunk; ``detail`` (for the log) says how."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            pb.ERROR_CODE_UPSTREAM_ERROR, "the upstream sent a malformed stream", retryable=True
        )
        self.detail = detail


def _malformed(detail: str) -> UpstreamFailure:
    return _Malformed(detail)


class _MidStreamError(UpstreamFailure):
    """An ``{"error": …}`` event inside an otherwise healthy stream."""

    def __init__(self, detail: Any) -> None:
        super().__init__(
            pb.ERROR_CODE_UPSTREAM_ERROR, "the upstream failed during the answer", retryable=True
        )
        self.detail = detail


def map_sdk_error(exc: Exception, *, reading: bool = False) -> UpstreamFailure:
    """Translate an SDK or transport exception to the most specific UpstreamFailure.
    ``reading``: raised by the SDK's iterator while reading the body (the public path), where
    no read timeout is set, so a lost connection is what any connection error means there."""
    if reading and isinstance(exc, openai.APIConnectionError):
        return UpstreamFailure(
            pb.ERROR_CODE_UPSTREAM_ERROR, "the upstream connection failed", retryable=True
        )
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
    if isinstance(exc, openai.APITimeoutError) and not refused_connection(exc):
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

    def __init__(self, settings: Settings, *, sdk_path: Literal["auto", "public"] = "auto") -> None:
        """``sdk_path``: ``auto`` streams below the SDK when its start-up checks pass
        (``sdk_private.py``), ``public`` always through its public streaming path."""
        self._default_model = settings.model
        self._max_event_bytes = settings.upstream_max_event_bytes
        self._pacing = ReadPacing(settings.upstream_reads_per_s, settings.max_read_interval)
        # aiohttp underneath (see above); one connection per running generation at most
        # (the SDK's default pool stops at 1000), kept for reuse — in the transport we give the
        # SDK's client and in any it makes itself (a proxy from the environment). First attempts
        # are sent straight to ours once the SDK has sent one (first_attempts.py).
        limits = httpx2.Limits(
            max_connections=settings.max_generations,
            max_keepalive_connections=settings.max_generations,
        )
        moved = startup_problems() if sdk_path == "auto" else ()
        if moved:
            log.warning(
                "openai %s moved what aistream reads below it (sdk_private.py): %s; "
                "streaming through its public path instead (slower)",
                openai.__version__,
                "; ".join(moved),
            )
        fast = sdk_path == "auto" and not moved
        self.path: Literal["fast", "public"] = "fast" if fast else "public"
        """How answers are streamed: below the SDK, or through its public path."""
        self._first: FirstAttempts | None = None
        if self.path == "fast":
            self._first = FirstAttempts(aiohttp_transport(limits), PATH, is_first_attempt)
            # The upstream is configured, not discovered: a redirect is an upstream error.
            http_client = openai.DefaultAioHttpClient(
                transport=self._first, limits=limits, follow_redirects=False
            )
        else:
            http_client = _public_http_client(limits)
        self._client = openai.AsyncOpenAI(
            base_url=settings.base_url,
            # A local server (Ollama, llama.cpp) needs no key, but the SDK insists on one.
            api_key=settings.api_key or "unused",
            max_retries=settings.upstream_max_retries,
            http_client=http_client,
            # Our own first-token / stall / total limits govern; the SDK's must not fire first.
            # No read timeout at all: aiohttp would re-arm its timer on every network read.
            timeout=httpx2.Timeout(
                settings.max_deadline, connect=settings.first_token_timeout, read=None
            ),
        )
        base = self._client.base_url
        self._target = _Target(
            str(base.copy_with(userinfo=b"")).rstrip("/") + PATH, base.host, base.port
        )

    def model_name(self, requested: str | None) -> str:
        """The requested model, or the configured default."""
        return requested or self._default_model

    def stream(self, request: UpstreamRequest) -> _ChatStream | _PublicChatStream:
        """Open one streamed chat completion."""
        model = self.model_name(request.model)
        if self._first is None:
            return _PublicChatStream(
                self._client, request, model, self._max_event_bytes, self._target
            )
        return _ChatStream(
            self._client,
            self._first,
            request,
            model,
            self._pacing,
            self._max_event_bytes,
            self._target,
        )

    async def aclose(self) -> None:
        """Close the SDK's connection pool."""
        await self._client.close()


@dataclass(frozen=True, slots=True)
class _Target:
    """Where the answers are asked for, as the upstream request's span names it."""

    url: str
    """The endpoint's URL, without credentials."""
    host: str
    port: int | None

    def trace(self, request: UpstreamRequest) -> tuple[Span | None, str]:
        """The upstream request's span (tracing on; the child of the generation's) and the
        ``traceparent`` the request carries: the span's, or with tracing off the one the
        generation was given, passed on untouched (``""``: none)."""
        if not tracing.enabled():
            return None, request.traceparent
        span = tracing.upstream_span(request.traceparent, "POST", self.url, self.host, self.port)
        return span, tracing.traceparent(span)


def _end_span(span: Span | None, status: int | None, exc: BaseException | None) -> None:
    """End the upstream request's span (no-op without one) with its response status and, when
    not the end of the answer ended it, what did: ``cancelled`` (the generation's task, for a
    cancel, a time limit or a closed call), the code of an upstream failure, or its status."""
    if span is None:
        return
    if status is None and exc is not None:
        status = getattr(exc.__cause__, "status_code", None)
    error: str | None = None
    if isinstance(exc, asyncio.CancelledError):
        error = "cancelled"
    elif isinstance(exc, UpstreamFailure):
        error = codes.json_code(exc.code)
    elif exc is not None:
        error = type(exc).__name__
    elif status is not None and status >= 400:
        error = str(status)
    tracing.end_upstream(span, status, error)


def _public_http_client(limits: httpx2.Limits) -> httpx2.AsyncClient:
    """The SDK's aiohttp client (public, ``openai[aiohttp]``), or its default if that cannot
    be had."""
    try:
        return openai.DefaultAioHttpClient(limits=limits, follow_redirects=False)
    except RuntimeError:  # the aiohttp extra is not usable
        return openai.DefaultAsyncHttpxClient(limits=limits, follow_redirects=False)


def _streams_parts(delta: Delta) -> bool:
    """Whether a delta brought parts (any kind: reasoning is paced like answer text), not only
    the end's details."""
    return bool(delta.count or delta.reasoning or delta.calls or delta.refusal)


def _reasoning_only(delta: Delta) -> bool:
    return (
        bool(delta.reasoning)
        and not delta.text
        and not delta.refusal
        and delta.calls is None
        and delta.finish_reason is None
        and delta.prompt_tokens is None
    )


def _body(request: UpstreamRequest, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [message.openai() for message in request.messages],
        "max_tokens": request.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.tools or request.tool_choice is not None or request.response_format is not None:
        body.update(request.options())
    return body


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
        max_event_bytes: int,
        target: _Target,
    ) -> None:
        self._client = client
        self._first = first
        self._target = target
        self._span: Span | None = None
        self._request = request
        self._model = model
        self._pacing = pacing
        self._response: httpx2.Response | None = None
        self._read: Callable[[], Awaitable[bytes]] = _no_more
        self._paced: AiohttpBody | None = None
        self._decoder = SSEDecoder(max_event_bytes)
        self._finished = False
        self._done = False

    @property
    def direct(self) -> bool:
        """Whether the body is read straight from aiohttp (once entered)."""
        return self._paced is not None

    async def __aenter__(self) -> AsyncIterator[Delta]:
        self._span, traceparent = self._target.trace(self._request)
        try:
            try:
                http_response = await self._open(_body(self._request, self._model), traceparent)
            except (openai.OpenAIError, httpx2.HTTPError) as exc:
                raise self._failure(exc) from exc
        except BaseException as exc:
            _end_span(self._span, None, exc)
            raise
        self._response = http_response
        aio = aiohttp_response(http_response)
        if aio is not None:
            self._paced = AiohttpBody(aio, self._pacing)
            self._pacing.opened()
            self._read = self._paced.read
        else:  # another transport, or an encoded body: the SDK's byte iterator
            chunks = http_response.aiter_bytes()
            self._read = lambda: anext(chunks, b"")
        return self._deltas()

    async def _open(self, body: dict[str, Any], traceparent: str) -> httpx2.Response:
        """The streamed response to ``body``: a first attempt sent straight to the transport
        when it can be; the SDK's request otherwise, and for everything after a failed first
        attempt (which its request then takes as its own: first_attempts.py). Every attempt
        carries ``traceparent`` (when there is one)."""
        first = self._first
        if first.ready:
            outcome: httpx2.Response | Exception
            headers = ((_TRACEPARENT, traceparent.encode()),) if traceparent else ()
            try:
                outcome = await first.send_first(orjson.dumps(body), headers)
            except Exception as exc:  # the SDK decides what every error means
                # (without this frame's traceback: kept here, it would hold the frame that
                # holds it — a reference cycle, aistream/collector.py)
                outcome = exc.with_traceback(None)
            else:
                if outcome.is_success:
                    return outcome
            async with first.replaying(outcome):
                return await self._sdk_post(body, traceparent)
        return await self._sdk_post(body, traceparent)

    async def _sdk_post(self, body: dict[str, Any], traceparent: str) -> httpx2.Response:
        # The SDK's generic POST: its base URL, auth, headers, retries and typed status errors,
        # without re-validating a body we build the same way every time (its typed ``create``
        # spent a third of opening a request on that); ``cast_to`` the raw response, streamed,
        # leaves the body to us. A traceparent is the request's own header (``options``).
        if traceparent:
            return await self._client.post(
                PATH,
                cast_to=httpx2.Response,
                body=body,
                options={"headers": {"traceparent": traceparent}},
                stream=True,
            )
        return await self._client.post(PATH, cast_to=httpx2.Response, body=body, stream=True)

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
            _end_span(self._span, self._response.status_code, exc)

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
            deltas = self._decode(chunk)
            if deltas:
                if paced is not None and not self._done and any(map(_streams_parts, deltas)):
                    paced.hold()
                for delta in deltas:
                    yield delta
        if not self._finished:  # [DONE] alone is not the model saying it finished
            raise no_finish_reason()

    def _decode(self, chunk: bytes) -> list[Delta]:
        """The deltas completed by one network read, merged while their text stays under
        ``_MERGE_CHARS`` (so usually one; none when the read completed no event)."""
        out: list[Delta] = []
        merged: Delta | None = None
        merged_text = False  # whether merged holds answer text only (else reasoning or more)
        try:
            events = self._decoder.feed(chunk)
        except EventTooLarge as exc:
            log.warning("upstream event refused request_id=%s: %s", self._request.request_id, exc)
            raise event_too_large() from None
        for data in events:
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
            except _Malformed as exc:
                log.warning(
                    "upstream malformed event request_id=%s: %s",
                    self._request.request_id,
                    exc.detail,
                )
                raise
            if delta.finish_reason is not None:
                self._finished = True
            if delta.calls is None and not delta.reasoning and not delta.refusal:
                # answer text (or none): merged into the previous answer text
                if (
                    merged is None
                    or not merged_text
                    or len(merged.text) + len(delta.text) > _MERGE_CHARS
                ):
                    merged, merged_text = delta, True
                    out.append(delta)
                    continue
                merged.text += delta.text
                merged.count += delta.count
                merged.finish_reason = delta.finish_reason or merged.finish_reason
                if delta.prompt_tokens is not None:
                    merged.prompt_tokens = delta.prompt_tokens
                    merged.completion_tokens = delta.completion_tokens
                    merged.reasoning_tokens = delta.reasoning_tokens
                    merged.cached_tokens = delta.cached_tokens
            elif (
                merged is not None
                and not merged_text
                and _reasoning_only(delta)
                and _reasoning_only(merged)
                and len(merged.reasoning) + len(delta.reasoning) <= _MERGE_CHARS
            ):
                merged.reasoning += delta.reasoning
                merged.reasoning_count += delta.reasoning_count
            else:  # other parts: a delta of their own
                merged, merged_text = delta, False
                out.append(delta)
        return out

    def _failure(self, exc: Exception) -> UpstreamFailure:
        return _failure(self._request.request_id, exc)


class _PublicChatStream:
    """One streamed chat completion through the SDK's public, typed path: the fallback when
    ``sdk_private``'s checks fail (module doc). The same deltas, errors, aborts and endings as
    ``_ChatStream`` but one: the SDK's iterator does not show ``[DONE]``, so here an answer is
    finished when a finish reason came (an upstream that sends ``[DONE]`` without one is a
    truncated answer here, a finished one on the fast path)."""

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        request: UpstreamRequest,
        model: str,
        max_event: int,
        target: _Target,
    ) -> None:
        self._target = target
        self._span: Span | None = None
        self._max_event = max_event
        self._client = client
        self._request = request
        self._model = model
        self._stream: AsyncStream[ChatCompletionChunk] | None = None
        self._closing: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsyncIterator[Delta]:
        request = self._request
        messages = [message.openai() for message in request.messages]
        self._span, traceparent = self._target.trace(request)
        try:
            try:
                self._stream = await self._client.chat.completions.create(
                    model=self._model,
                    messages=cast("list[ChatCompletionMessageParam]", messages),
                    max_tokens=request.max_tokens,
                    stream=True,
                    stream_options={"include_usage": True},
                    temperature=openai.omit if request.temperature is None else request.temperature,
                    extra_headers={"traceparent": traceparent} if traceparent else None,
                    extra_body=request.options() or None,
                )
            except openai.OpenAIError as exc:
                raise _failure(request.request_id, exc) from exc
        except BaseException as exc:
            _end_span(self._span, None, exc)
            raise
        return self._deltas(self._stream)

    def abort(self) -> None:
        """Close the upstream connection now: the SDK's close of the response starts in a task
        of its own, which runs before the reading task is woken (``__aexit__`` waits for it)."""
        if self._stream is not None and self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._stream.close())

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The SDK's ``async with stream`` does just this: closes the response, and with it the
        # connection unless the body was read to its end. Runs on every exit.
        if self._stream is None:
            return
        try:
            await self._stream.close()
        finally:
            if self._closing is not None:
                with contextlib.suppress(Exception):
                    await self._closing
            _end_span(self._span, self._stream.response.status_code, exc)

    async def _deltas(self, stream: AsyncStream[ChatCompletionChunk]) -> AsyncIterator[Delta]:
        finished = False
        try:
            async for chunk in stream:
                delta = _delta_of(chunk)
                if _delta_chars(delta) > self._max_event:  # (the SDK's decoder has no cap)
                    log.warning(
                        "upstream event refused request_id=%s: text of %d characters",
                        self._request.request_id,
                        _delta_chars(delta),
                    )
                    raise event_too_large()
                if delta.finish_reason is not None:
                    finished = True
                yield delta
        except (openai.APIConnectionError, openai.APIStatusError) as exc:
            raise _failure(self._request.request_id, exc, reading=True) from exc
        except openai.APIError as exc:  # an {"error": …} event (the SDK's plain APIError)
            log.warning(
                "upstream error event request_id=%s: %r", self._request.request_id, exc.body
            )
            raise _MidStreamError(exc.body) from None
        except ValueError:  # a data line that is not JSON
            raise _malformed("not JSON") from None
        if not finished:  # the SDK's iterator ends quietly however the body ended
            raise truncated()


def _delta_of(chunk: object) -> Delta:
    """A typed chunk read as ``parse_chunk`` reads the same JSON: its fields (the unknown ones
    too, such as ``reasoning_content``; the SDK builds chunks without validating them, so
    their values are what the upstream sent) go through the same decoding."""
    if not isinstance(chunk, ChatCompletionChunk):
        raise _malformed("not a chat completion chunk")
    return parse_chunk_object(chunk.model_dump(warnings=False))


def _delta_chars(delta: Delta) -> int:
    """The characters a delta carries (the public path's stand-in for an event's size)."""
    size = len(delta.text) + len(delta.reasoning) + len(delta.refusal)
    if delta.calls:
        size += sum(len(piece.arguments) for piece in delta.calls)
    return size


def _failure(request_id: str, exc: Exception, *, reading: bool = False) -> UpstreamFailure:
    failure = map_sdk_error(exc, reading=reading)
    status = getattr(exc, "status_code", None)
    log.warning(
        "upstream failed request_id=%s status=%s error=%s: %s",
        request_id,
        status,
        type(exc).__name__,
        exc,
    )
    return failure
