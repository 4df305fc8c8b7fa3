"""Everything aistream relies on below the ``openai`` SDK's public surface, and nothing else.

The fast path (``openai_upstream._ChatStream``, ``first_attempts.FirstAttempts``) is what
``docs/performance.md`` measures: the body read straight from aiohttp's ``StreamReader`` and
decoded with orjson (the SDK's iterators and typed chunks cost ~15× as much per chunk), a first
attempt sent straight to the transport (half the CPU of the SDK's request). It takes the
following on trust; each is used here and only here, and ``probe()`` checks each against the
installed packages. Verified against **openai 3.57.0** (its vendored httpx-aiohttp 0.2.0),
**httpx2 2.16.2** and **aiohttp 3.14.5**.

1. *The vendored transport*: ``openai._vendor.httpx_aiohttp.AiohttpTransport``, the transport
   ``openai.DefaultAioHttpClient`` builds. We build it ourselves, to wrap it in
   ``FirstAttempts`` (the public client takes a transport whole or builds its own unseen).
2. *The aiohttp response under the SDK's*: httpx2's client wraps the transport's stream
   (``BoundAsyncStream._stream``), and the vendored ``AiohttpResponseStream`` holds aiohttp's
   response in ``_aiohttp_response``. The body is read from its ``StreamReader``, bypassing two
   iterator wrappers (``aiohttp_response``).
3. *Pausing the socket*: the connection's protocol, aiohttp's ``ResponseHandler``, has
   ``pause_reading()`` / ``resume_reading()`` (undocumented; read pacing) and ``transport``
   (abort shuts its socket down: the upstream hears a cancel in the same loop turn)
   (``AiohttpBody``).
4. *How a first attempt is marked*: the SDK sends ``x-stainless-retry-count: 0`` with an
   attempt that is not a retry (undocumented; ``is_first_attempt``). ``FirstAttempts`` learns
   its template from the first such request.
5. *Headers that do not change*: the SDK's headers for one endpoint are the same for every
   request (no per-request header such as an idempotency key), so the template's may be
   reused for any body.
6. *One transport call per attempt, in the calling task*: each attempt of the SDK's
   ``client.post(…, cast_to=httpx2.Response, stream=True)`` is one ``handle_async_request``
   of its transport, awaited in the task that called it; a response returned there (not read)
   or an error raised there is that attempt's outcome, and its retry rules, Retry-After and
   typed errors apply. ``FirstAttempts.replaying`` hands it a failed first attempt that way.
7. *A refused connection's chain*: the vendored transport raises ``httpx2.ConnectTimeout`` from
   aiohttp's ``ClientConnectorError`` for a refused connection, the SDK raises
   ``APITimeoutError`` from that; ``refused_connection`` looks down the chain so that it is
   reported as unavailable, not as a timeout. (The public path uses the same transport, so this
   one is not checked at start-up: were it to move, a refused connection would be reported as a
   timeout, which ``tests/test_openai_upstream.py`` catches.)

``check()`` looks for the names and attributes (1–3); ``probe()`` adds the SDK's behaviour (2, 4,
5, 6) through a real SDK client on an in-process transport, and, given an upstream's base URL, a
real request through the whole fast path. ``startup_problems()`` runs ``probe()`` once per process;
when it finds anything, ``OpenAIUpstream`` logs one warning naming it and streams through the
SDK's public, typed path instead (slower; every lifecycle guarantee kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import threading
from typing import Any, cast

import aiohttp
import httpx2
import openai
import orjson

from aistream.generator.first_attempts import FirstAttempts
from aistream.generator.pacing import ReadPacing

__all__ = [
    "PATH",
    "AiohttpBody",
    "aiohttp_response",
    "aiohttp_transport",
    "check",
    "is_first_attempt",
    "probe",
    "refused_connection",
    "startup_problems",
]

log = logging.getLogger(__name__)

PATH = "/chat/completions"
"""The endpoint, after the base URL (first attempts learn their template from it)."""
_RETRY_COUNT = "x-stainless-retry-count"  # (4)
_READ_SIZE = 64 * 1024  # bytes taken from the response body at most per read
_PER_REQUEST = frozenset(("host", "content-length", "transfer-encoding"))

_vendored_missing: str | None = None
try:  # (1, 2)
    from openai._vendor.httpx_aiohttp.client import Httpx2AiohttpClient
    from openai._vendor.httpx_aiohttp.transport import AiohttpResponseStream, AiohttpTransport
except ImportError as exc:  # check() says so; nothing below that uses them runs
    _vendored_missing = f"openai._vendor.httpx_aiohttp cannot be imported ({exc})"
_protocol_missing: str | None = None
try:  # (3)
    from aiohttp.client_proto import ResponseHandler
except ImportError as exc:
    _protocol_missing = f"aiohttp.client_proto.ResponseHandler cannot be imported ({exc})"


# --- the parts -------------------------------------------------------------------------------


def aiohttp_transport(limits: httpx2.Limits) -> httpx2.AsyncBaseTransport:
    """The SDK's own aiohttp transport, with ``limits`` (1)."""
    return AiohttpTransport(limits=limits)


def is_first_attempt(request: httpx2.Request) -> bool:
    """Whether the SDK sends ``request`` as an attempt that is not a retry (4)."""
    return request.headers.get(_RETRY_COUNT) == "0"


def _transport_stream(response: httpx2.Response) -> object:
    """The transport's stream under an SDK response (httpx2's client wraps it) (2)."""
    stream = response.stream
    inner = getattr(stream, "_stream", None)
    return inner if isinstance(inner, httpx2.AsyncByteStream) else stream


_body_lost_warned = False


def aiohttp_response(response: httpx2.Response) -> aiohttp.ClientResponse | None:
    """The aiohttp response under an SDK response, when the body is not content-encoded (SSE
    normally is not); None otherwise, the body then being the SDK's to read (2). Warns once if
    an identity body has none: something moved after start-up's checks passed."""
    global _body_lost_warned
    if response.headers.get("content-encoding", "identity").lower() != "identity":
        return None
    aio = getattr(_transport_stream(response), "_aiohttp_response", None)
    if isinstance(aio, aiohttp.ClientResponse):
        return aio
    if not _body_lost_warned:
        _body_lost_warned = True
        log.warning(
            "no aiohttp response under the sdk's (%s): bodies are read through its iterator",
            type(_transport_stream(response)).__name__,
        )
    return None


class AiohttpBody:
    """An aiohttp response body read straight from its ``StreamReader``, its socket paused
    between reads under load (3; ``pacing.py``) and shut down on abort."""

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
        sock = self._socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _socket(self) -> Any:
        transport = self._protocol.transport if self._protocol is not None else None
        return transport.get_extra_info("socket") if transport is not None else None

    def _reading(self) -> bool | None:
        """Whether the socket is being read (None: no transport); for ``probe()``."""
        transport = self._protocol.transport if self._protocol is not None else None
        return transport.is_reading() if transport is not None else None


def refused_connection(exc: BaseException) -> bool:
    """Whether a refused connection lies under ``exc``, which the aiohttp transport reports as
    a connect *timeout* (7)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, aiohttp.ClientConnectorError) and not isinstance(
            cause, aiohttp.ServerTimeoutError
        ):
            return True
        cause = cause.__cause__
    return False


# --- the checks ------------------------------------------------------------------------------


class _Marker:
    """Stands for an aiohttp response in ``probe()``'s in-process run."""

    async def __aexit__(self, *exc_info: object) -> None:
        return None


def check() -> list[str]:
    """What has moved of the names and attributes relied on (1–3); empty when all are there."""
    if _vendored_missing is not None:
        return [_vendored_missing]
    problems = []
    if not issubclass(AiohttpTransport, httpx2.AsyncBaseTransport):
        problems.append("the vendored AiohttpTransport is no longer an httpx2 transport")
    if not issubclass(openai.DefaultAioHttpClient, Httpx2AiohttpClient):
        problems.append("openai.DefaultAioHttpClient no longer builds on the vendored client")
    marker = _Marker()
    held = getattr(AiohttpResponseStream(cast(Any, marker)), "_aiohttp_response", None)
    if held is not marker:
        problems.append("the vendored AiohttpResponseStream no longer keeps _aiohttp_response")
    if _protocol_missing is not None:
        problems.append(_protocol_missing)
    else:
        for name in ("pause_reading", "resume_reading", "transport"):
            if not hasattr(ResponseHandler, name):
                problems.append(f"aiohttp's ResponseHandler has no {name}")
    return problems


async def probe(base_url: str | None = None) -> list[str]:
    """What has moved of everything relied on, as sentences; empty when all holds. ``check()``,
    then the SDK's behaviour through a real SDK client on an in-process transport (no network);
    with ``base_url`` (an upstream whose answers take a while to stream), real requests through
    the whole fast path too."""
    try:
        problems = check()
        if problems:
            return problems  # the rest builds on these
        problems = await _probe_sdk()
        if not problems and base_url is not None:
            problems = await _probe_live(base_url)
    except Exception as exc:  # an SDK that changed shape enough to break the probe itself
        problems = [f"the probe failed: {type(exc).__name__}: {exc}"]
    return problems


@functools.cache
def startup_problems() -> tuple[str, ...]:
    """``probe()`` without network, once per process (the installed SDK does not change under
    it), run on a thread of its own so that it can be called with or without a running loop."""
    result: list[tuple[str, ...]] = []

    def run() -> None:
        try:
            result.append(tuple(asyncio.run(probe())))
        except Exception as exc:
            result.append((f"the probe failed: {type(exc).__name__}: {exc}",))

    thread = threading.Thread(target=run, name="aistream-sdk-probe")
    # The SDK and httpx2 log the probe's requests and retry at INFO: not an upstream's, so not
    # in the log.
    quiet = _NotFrom(thread)
    loggers = [logging.getLogger(name) for name in ("openai._base_client", "httpx2")]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        thread.start()
        thread.join()
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)
    return result[0]


class _NotFrom(logging.Filter):
    """Drops the records one thread logs."""

    def __init__(self, thread: threading.Thread) -> None:
        super().__init__()
        self._thread = thread

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self._thread.ident


_BODY = {"model": "probe", "messages": [{"role": "user", "content": "probe"}], "stream": True}


def _client(base_url: str, transport: httpx2.AsyncBaseTransport) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=base_url,
        api_key="probe",
        max_retries=0,
        http_client=openai.DefaultAioHttpClient(transport=transport),
        timeout=httpx2.Timeout(30.0, read=None),  # as OpenAIUpstream's: no read timeout
    )


def _endpoint_headers(request: httpx2.Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items() if k.lower() not in _PER_REQUEST}


async def _probe_sdk() -> list[str]:
    """2, 4, 5, 6 through a real SDK client whose transport answers in process."""
    seen: list[httpx2.Request] = []
    answers: list[httpx2.Response | Exception] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        outcome = answers.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    marker = _Marker()
    marked = AiohttpResponseStream(cast(Any, marker))
    first = FirstAttempts(httpx2.MockTransport(answer), PATH, is_first_attempt)
    client = _client("http://probe.invalid/v1", first)
    try:
        answers.append(httpx2.Response(200, stream=marked))
        response = await client.post(PATH, cast_to=httpx2.Response, body=_BODY, stream=True)
        await response.aclose()
        if not first.ready:
            value = seen[0].headers.get(_RETRY_COUNT) if seen else None
            return [f"the sdk's first attempt does not carry {_RETRY_COUNT}: 0 (it has {value!r})"]
        if _transport_stream(response) is not marked:
            return ["httpx2's response no longer holds the transport's stream in .stream._stream"]

        answers.append(httpx2.Response(200, content=b"{}"))
        other = {**_BODY, "messages": [{"role": "user", "content": "another"}], "n": 1}
        response = await client.post(PATH, cast_to=httpx2.Response, body=other, stream=True)
        await response.aclose()
        answers.append(httpx2.Response(500, headers={"retry-after-ms": "1"}, content=b"{}"))
        failed = await first.send_first(orjson.dumps(other))
        by_sdk, by_us = seen[1], seen[2]
        if by_us.url != by_sdk.url or _endpoint_headers(by_us) != _endpoint_headers(by_sdk):
            moved = set(_endpoint_headers(by_us).items()) ^ set(_endpoint_headers(by_sdk).items())
            names = sorted({name for name, _ in moved}) or ["the url"]
            return [f"the sdk's requests differ beyond their body: {', '.join(names)}"]

        answers.append(httpx2.Response(200, content=b"{}"))
        async with first.replaying(failed):
            retried = await client.post(
                PATH, cast_to=httpx2.Response, body=other, options={"max_retries": 1}, stream=True
            )
        await retried.aclose()
        counts = [request.headers.get(_RETRY_COUNT) for request in seen[3:]]
        if retried.status_code != 200 or counts != ["1"]:
            return [
                "a replayed 500 was not the sdk's first attempt "
                f"(then: status {retried.status_code}, attempts sent {counts})"
            ]

        answers.append(httpx2.ConnectError("probe"))
        try:
            lost = await first.send_first(orjson.dumps(other))
        except httpx2.ConnectError as exc:
            lost_error: httpx2.Response | Exception = exc.with_traceback(None)
        else:
            await lost.aclose()
            return ["an error raised by the transport did not reach its caller"]
        try:
            async with first.replaying(lost_error):
                response = await client.post(PATH, cast_to=httpx2.Response, body=other, stream=True)
            await response.aclose()
        except openai.APIConnectionError:
            pass
        else:
            return ["a replayed connection error was not the sdk's first attempt"]
        if len(seen) != 5:
            return [f"a replayed attempt was sent as well ({len(seen)} requests, not 5)"]
    finally:
        await client.close()
    return []


async def _probe_live(base_url: str) -> list[str]:
    """The SDK's request and then a first attempt, for real: the aiohttp response is found under
    each, its socket pauses and resumes, abort shuts it down (1–4)."""
    limits = httpx2.Limits(max_connections=2, max_keepalive_connections=2)
    first = FirstAttempts(aiohttp_transport(limits), PATH, is_first_attempt)
    client = _client(base_url, first)
    problems: list[str] = []
    try:
        for who in ("the sdk's request", "a first attempt"):
            if who == "the sdk's request":
                response = await client.post(PATH, cast_to=httpx2.Response, body=_BODY, stream=True)
            elif first.ready:
                response = await first.send_first(orjson.dumps(_BODY))
            else:
                problems.append("the sdk's first request taught first attempts nothing")
                break
            try:
                aio = aiohttp_response(response)
                if aio is None:
                    problems.append(f"{who}: no aiohttp response under the sdk's")
                    continue
                problems.extend(f"{who}: {p}" for p in await _probe_body(aio))
            finally:
                await response.aclose()
    finally:
        await client.close()
    return problems


async def _probe_body(response: aiohttp.ClientResponse) -> list[str]:
    pacing = ReadPacing(reads_per_s=1, max_interval=0.05)
    pacing.opened()
    body = AiohttpBody(response, pacing)
    if not await body.read():
        return ["the body was empty"]
    if response.content.is_eof():
        return ["the answer arrived whole: pausing could not be checked"]
    if body._reading() is not True or body._socket() is None:
        return ["the connection's transport or socket cannot be found"]
    body.hold()
    paused = body._reading()
    body.release(resume=True)
    if paused is not False or body._reading() is not True:
        return ["pausing the connection's protocol does not pause its socket"]
    body.abort()  # (tests/test_sdk_private.py sees the upstream told at once)
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with asyncio.timeout(1.0):
            while await body.read():
                pass
    return []
