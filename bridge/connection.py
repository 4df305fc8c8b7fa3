"""One browser connection: WebSocket frames in and out, generations over a shared gRPC stream.

Reading side: each text frame is acted on as it is read (``on_frame``, in the loop turn that
parsed it: ``bridge/websocket.py``) — decoded by ``translate`` and validated; a bad frame is
answered in place with ``ai:error`` (``invalid_request``) and nothing else is touched. Frames
beyond the connection's rate (``frames_per_second``, ``frames_burst``; a bad frame spends it too,
and one over it gets no answer) and generations beyond its concurrency
(``max_generations_per_connection``) or its client's share (``max_generations_per_client``,
``shares.py``) get ``too_many_requests`` (retryable). A Generate for an id already in flight is
dropped (idempotent retries: the running generation answers it) — unless that id was cancelled
and its end has not arrived yet: then it starts once the cancelled one has ended, as a new
lifecycle, so every Generate is answered. A Cancel for an id not in flight is a no-op.

gRPC side: generations go over one of the bridge's shared streams (``aistream.bridge.link``), which
routes their events back here renamed to this connection's ids; an idle connection costs the
generator nothing. Each generation in flight has one record here (``_Request``: its ids and its
place in the lifecycle), and nothing out of order is relayed. A request ends in one place,
``Connection._end``, whatever ends it: its terminal event from the generator, a lost stream, a
closing connection. If the stream fails (the generator died or is unreachable), every id in
flight on it gets ``ai:error`` ``unavailable`` (retryable) and the next Generate opens a new
stream; the channel reconnects with backoff on its own. A Generate carries its trace context on
(``aistream.tracing``): the client's ``traceparent`` when valid, or with tracing on its gRPC hop
span's, whose request span is ended with the request.

Writing side: an event for a socket with nothing queued is written at once, in the same turn
(``BridgeSocket.send_now``); otherwise, or while the socket's buffer is full, events wait in an
``Outbox`` (tokens of one id coalesce while they wait) written to the socket by one sender task,
so the relay never blocks on a slow client. If the queued bytes would pass ``ws_send_buffer``,
the client is a slow consumer: its generations are cancelled (closing their upstreams) and end
with ``slow_consumer`` as far as the socket still takes frames, and the socket is closed with
1008. When the socket closes or its pings go unanswered, every
generation in flight is cancelled, which makes the generator close its upstream request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed

from aistream import codes, tracing
from aistream.bridge import translate
from aistream.bridge.link import Route, SharedStream
from aistream.bridge.ratelimit import TokenBucket
from aistream.bridge.shares import ClientShares
from aistream.collector import release
from aistream.errors import InvalidRequest, LifecycleViolation, Refused
from aistream.headroom import UNWATCHED, Headroom
from aistream.lifecycle import PART_KINDS, RequestLifecycle
from aistream.metrics import BRIDGE_OFF, BridgeMetrics
from aistream.outbox import Outbox
from aistream.settings import Settings
from aistream.v1 import events_pb2 as pb
from aistream.validation import check_cancel, check_generate, check_resume

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from aistream.bridge.redis_follow import RedisFollows
    from aistream.bridge.websocket import BridgeSocket

__all__ = ["Connection"]

log = logging.getLogger(__name__)

_ids = itertools.count(1)  # connection ids for the logs
_NO_REQUESTS: dict[str, _Request] = {}  # what an idle connection has in flight (shared)
_FINAL_FRAME_WAIT = 0.05  # seconds a final error frame waits for a slow client to read it
_CANCELLED_AGAIN = pb.ClientEvent()  # a Generate that waited for its id's end, then cancelled
_CLIENT_GONE = codes.error_event(pb.ERROR_CODE_CANCELLED, "the client went away")  # (its spans)


class _Request(RequestLifecycle):
    """One generation in flight: the browser's id, the wire id it was sent under, and where it is
    in its lifecycle (started, the next token ``seq``)."""

    __slots__ = ("again", "resumable", "route", "spans", "wire_id")

    def __init__(
        self,
        request_id: str,
        route: Route,
        wire_id: str,
        spans: tuple[Span, Span] | None = None,
        *,
        resumable: bool = False,
    ) -> None:
        super().__init__(request_id)
        self.route = route
        """What carries it: the connection's shared stream, or the bridge's Redis follows."""
        self.wire_id = wire_id
        self.resumable = resumable
        """A resumable generation: when the socket goes, the generator is told to keep it
        running (a Detach), not to stop it."""
        self.again: pb.ClientEvent | None = None
        """A Generate for the same id that came after the cancel: started when this one ends."""
        self.spans = spans
        """With tracing on: the request's span and its gRPC hop's (``tracing.request_spans``)."""


class Connection:
    """The bridge's state for one WebSocket connection."""

    __slots__ = (
        "_accepting",
        "_client",
        "_ending",
        "_follows",
        "_headroom",
        "_idle",
        "_metrics",
        "_outbox",
        "_rate",
        "_relays",
        "_requests",
        "_sender",
        "_settings",
        "_shares",
        "_stream",
        "id",
        "websocket",
    )

    def __init__(
        self,
        websocket: BridgeSocket,
        stream: SharedStream,
        settings: Settings,
        shares: ClientShares | None = None,
        client: str = "",
        metrics: BridgeMetrics = BRIDGE_OFF,
        headroom: Headroom = UNWATCHED,
        follows: RedisFollows | None = None,
    ) -> None:
        """``shares``: the bridge's per-client shares, ``client`` this connection's key in
        them (None: no per-client share); ``metrics``: the bridge's; ``headroom``: the bridge
        process's (a saturated loop sheds new generations); ``follows``: the bridge's resumes
        through Redis (``redis_url``; None: a resume goes to the generator)."""
        self.websocket = websocket
        self.id = next(_ids)
        self._stream = stream
        self._settings = settings
        self._shares = shares
        self._client = client
        self._metrics = metrics
        self._headroom = headroom
        self._follows = follows
        # request id → its record; the shared empty dict until the first generate (never
        # written to: see on_frame)
        self._requests: dict[str, _Request] = _NO_REQUESTS
        self._relays: set[asyncio.Task[None]] | None = None  # the goodbye
        # Created on first use: an idle connection costs as little as possible.
        self._outbox: Outbox | None = None
        self._sender: asyncio.Task[None] | None = None
        self._idle: asyncio.Event | None = None
        self._rate: TokenBucket | None = None  # made on the first frame
        self._accepting = True
        self._ending = False

    @property
    def outbox(self) -> Outbox:
        """The frames waiting for the socket (and the task that writes them)."""
        if self._outbox is None:
            self._outbox = Outbox(capacity=1 << 30, max_bytes=self._settings.ws_send_buffer)
            self._sender = asyncio.create_task(self._send_frames(), name=f"ws sender {self.id}")
        return self._outbox

    @property
    def rate(self) -> TokenBucket:
        """The connection's frame-rate bucket."""
        if self._rate is None:
            s = self._settings
            now = asyncio.get_running_loop().time()
            self._rate = TokenBucket(s.frames_per_second, s.frames_burst, now)
        return self._rate

    @property
    def in_flight(self) -> int:
        """Generations this connection has running."""
        return len(self._requests)

    async def serve(self, on_closed: Callable[[Connection], None] | None = None) -> None:
        """Run the connection until the socket closes, then cancel everything it started (and
        call ``on_closed``). This coroutine is the socket's whole handler: at 10,000 idle
        connections each extra suspended frame would cost ~0.5 KB apiece."""
        recv = self.websocket.recv
        try:
            while True:  # (not ``async for``: one async generator frame fewer per connection)
                self.on_frame(await recv())
        except ConnectionClosed:
            pass
        finally:
            try:
                self.cancel_in_flight()  # the generator closes this connection's upstreams
                in_flight = len(self._requests)
                for request in self._requests.values():  # (no terminal to send)
                    self._count_gone(request)
                self._requests = _NO_REQUESTS
                tasks = [*(self._relays or ())]
                if self._sender is not None:
                    tasks.append(self._sender)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                for task in tasks:
                    release(task)
                if in_flight:
                    log.info(
                        "connection %s closed with %d generations in flight: cancelled",
                        self.id,
                        in_flight,
                    )
            finally:
                if on_closed is not None:
                    on_closed(self)

    # --- client → generator ---------------------------------------------------------------------

    def on_frame(self, message: str | bytes) -> None:
        """Act on one frame from the client, at once: everything it asks for is queued or sent
        before this returns (the socket's reader calls it in the turn that read the frame, when
        no earlier frame waits for ``serve``)."""
        if self._ending:
            return  # (the connection is closing: what it still sends is dropped)
        try:
            event = translate.decode_client_frame(message, self._settings.max_request_id_chars)
            request_id = self._admit(event)
        except InvalidRequest as exc:  # (an InvalidFrame too)
            self._metrics.frame_refused("invalid")
            # A bad frame spends the frame budget like any other; past it, no answer.
            if self.rate.take(asyncio.get_running_loop().time()):
                log.info("bad frame conn=%s request_id=%s: %s", self.id, exc.request_id, exc)
                self._queue(exc.event())
            return
        except Refused as exc:
            self._queue(exc.event())
            return
        if request_id is None:
            return  # nothing to do: a duplicate generate, or a cancel for an id not in flight
        kind = event.WhichOneof("event")
        if kind == "generate":
            self._send_generate(request_id, event)
        elif kind == "resume":
            self._send_resume(request_id, event)
        else:
            # The generator answers with Error(cancelled), routed here like any event.
            request = self._requests[request_id]
            if request.again is not None:
                request.again = _CANCELLED_AGAIN  # the Generate waiting on the id, cancelled
            request.cancelled = True
            request.route.cancel(request.wire_id, forget=False)

    def _send_generate(self, request_id: str, event: pb.ClientEvent) -> None:
        """Send an admitted Generate over the shared stream and keep its record. Its trace
        context goes with it: the client's (an invalid one is dropped, as a proxy drops a
        malformed header) or, with tracing on, that of the request's gRPC hop span."""
        generate = event.generate
        spans = None
        if tracing.enabled():
            spans = tracing.request_spans(generate, self.id)
        elif generate.traceparent and not tracing.valid(generate.traceparent):
            generate.traceparent = ""
        if generate.resumable:
            generate.client_request_id = request_id  # (what a resume must name)
        wire_id = self._stream.generate(self, event)
        if self._requests is _NO_REQUESTS:
            self._requests = {}
        self._requests[request_id] = _Request(
            request_id, self._stream, wire_id, spans, resumable=generate.resumable
        )
        log.debug("generate conn=%s request_id=%s wire_id=%s", self.id, request_id, wire_id)

    def _send_resume(self, request_id: str, event: pb.ClientEvent) -> None:
        """Send an admitted Resume — through Redis (``redis_url``: whichever generator runs
        it), else over the shared stream — and keep its record: the request is where the client
        says it is (after ``afterSeq``), and goes on from there."""
        resume = event.resume
        resume.client_request_id = resume.client_request_id or request_id
        route = self._stream if self._follows is None else self._follows
        wire_id = route.resume(self, event)
        if self._requests is _NO_REQUESTS:
            self._requests = {}
        request = self._requests[request_id] = _Request(request_id, route, wire_id, resumable=True)
        after_seq = resume.after_seq if resume.HasField("after_seq") else -1
        if after_seq >= 0:
            request.started = True
            request.next_seq = after_seq + 1
        log.debug("resume conn=%s request_id=%s wire_id=%s", self.id, request_id, wire_id)

    def _admit(self, event: pb.ClientEvent) -> str | None:
        """Check one decoded frame against the limits; the id to forward, or None to drop it."""
        kind = event.WhichOneof("event")
        if kind == "cancel":
            check_cancel(event.cancel, self._settings)
            request_id = event.cancel.request_id
            if request_id not in self._requests:
                return None  # unknown or finished: a harmless no-op
            self.rate.take(asyncio.get_running_loop().time())  # cancels are never refused
            return request_id
        if kind == "resume":
            return self._admit_resume(event.resume)
        if kind != "generate":
            raise InvalidRequest(f"ai:{kind} is not a frame a client sends")
        generate = event.generate
        check_generate(generate, self._settings)
        request_id = generate.request_id
        if not self.rate.take(asyncio.get_running_loop().time()):
            self._metrics.frame_refused("rate")
            raise Refused(pb.ERROR_CODE_TOO_MANY_REQUESTS, "too many frames: slow down", request_id)
        running = self._requests.get(request_id)
        if running is not None:
            if running.cancelled:
                running.again = event  # answered when the cancelled one has ended
                log.info("generate after cancel waits request_id=%s conn=%s", request_id, self.id)
            else:
                log.info("duplicate generate ignored request_id=%s conn=%s", request_id, self.id)
            return None
        self._check_room(request_id)
        return request_id

    def _admit_resume(self, resume: pb.Resume) -> str | None:
        """A Resume: within the frame rate, the connection's concurrency and the client's
        share, like a Generate (it is one more request to follow here) — but no headroom is
        asked: it starts nothing upstream."""
        check_resume(resume, self._settings)
        request_id = resume.request_id
        if not self.rate.take(asyncio.get_running_loop().time()):
            self._metrics.frame_refused("rate")
            raise Refused(pb.ERROR_CODE_TOO_MANY_REQUESTS, "too many frames: slow down", request_id)
        if request_id in self._requests:
            log.info("resume of an id in flight ignored request_id=%s conn=%s", request_id, self.id)
            return None
        self._check_room(request_id, starts=False)
        return request_id

    def _check_room(self, request_id: str, *, starts: bool = True) -> None:
        """Refused unless a new generation may start now: accepting, within the connection's
        concurrency and the client's share (taken here; given back in ``_end``)."""
        if not self._accepting:
            self._metrics.frame_refused("shutting_down")
            raise Refused(pb.ERROR_CODE_UNAVAILABLE, "the server is shutting down", request_id)
        if starts and (self._headroom.saturated or self._stream.full):
            # shed (this process's limit, or the generator's): what runs keeps its pace
            self._metrics.frame_refused("shed")
            raise Refused(
                pb.ERROR_CODE_TOO_MANY_REQUESTS,
                "the server is at capacity; try again shortly",
                request_id,
                retry_after_ms=self._headroom.retry_after_ms,
            )
        limit = self._settings.max_generations_per_connection
        if len(self._requests) >= limit:
            self._metrics.frame_refused("per_connection")
            raise Refused(
                pb.ERROR_CODE_TOO_MANY_REQUESTS,
                f"at most {limit} generations at once per connection",
                request_id,
            )
        if self._shares is not None and not self._shares.acquire(self._client):
            self._metrics.frame_refused("per_client")
            raise Refused(
                pb.ERROR_CODE_TOO_MANY_REQUESTS,
                f"at most {self._shares.limit} generations at once per client",
                request_id,
            )

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``work`` as a task of this connection (cancelled when it closes)."""
        if self._relays is None:
            self._relays = set()
        task = asyncio.create_task(work, name=name)
        self._relays.add(task)
        task.add_done_callback(self._relays.discard)

    # --- generator → client ---------------------------------------------------------------------

    def deliver(self, request_id: str, event: pb.ServerEvent) -> None:
        """An event from the generator for ``request_id`` (called by the shared stream)."""
        if self._ending:
            return  # (events still in flight when the connection is being closed are dropped)
        kind = event.WhichOneof("event")
        request = self._requests.get(request_id)
        if request is None:
            log.error(
                "dropped %s for an id not in flight conn=%s request_id=%s",
                kind,
                self.id,
                request_id,
            )
            return
        try:
            if kind == "token":
                token = event.token
                ended = request.observe("token", token.seq, token.count)
            elif kind in PART_KINDS:
                part = getattr(event, kind)
                ended = request.observe(kind, part.seq, getattr(part, "count", 1))
            elif kind == "start":  # (a resumable generation's start has a position)
                start = event.start
                ended = request.observe(kind, start.seq, positioned=start.HasField("seq"))
            else:
                ended = request.observe(kind)
        except LifecycleViolation as exc:
            log.error("dropped out-of-order event conn=%s: %s", self.id, exc)
            return
        if ended:
            self._end(request_id, event)
        else:
            self._queue(event)

    def lost(self, request_ids: list[str], reason: str) -> None:
        """The shared stream these generations ran on failed (called by it)."""
        ended = 0
        for request_id in request_ids:
            # (checked one by one: a slow-consumer cut-off on the way ends the rest)
            if not self._ending and request_id in self._requests:
                error = codes.error_event(
                    pb.ERROR_CODE_UNAVAILABLE, "the generator is unavailable", request_id
                )
                self._end(request_id, error)
                ended += 1
        if ended:
            log.info(
                "%d generations ended conn=%s code=%s (%s)",
                ended,
                self.id,
                codes.json_code(pb.ERROR_CODE_UNAVAILABLE),
                reason,
            )

    def control_frame(self, unsent: int) -> None:
        """A ping or a pong arrived (websockets answered a ping by itself), and ``unsent`` bytes
        wait in the socket's buffer. Control frames spend the frame budget — a flood of them
        closes the connection — and what they leave unsent counts against ``ws_send_buffer``
        with the outbox: a client that pings and never reads is a slow consumer."""
        if self._ending:
            return
        queued = self._outbox.bytes if self._outbox is not None else 0
        if unsent + queued > self._settings.ws_send_buffer:
            self._slow_consumer(unsent)
        elif not self.rate.take(asyncio.get_running_loop().time()):
            log.warning("control frame flood conn=%s: closing", self.id)
            self._metrics.frame_refused("control_flood")
            self._close_with(
                pb.ERROR_CODE_TOO_MANY_REQUESTS,
                "too many frames",
                "too many frames",
                drop_queued=True,
            )
        else:
            return
        # A client that floods control frames, or does not read their answers, gets no closing
        # handshake (each frame it sends would make more to write): its generations have ended
        # (their upstreams closed), the socket goes now.
        self.websocket.transport.abort()

    def cancel_in_flight(self) -> None:
        """Cancel every generation in flight at the generator (the socket is going away; called
        again when it is gone, a no-op then). No terminal event will come for them: their
        spans end here."""
        for request in self._requests.values():
            self._let_go(request)

    def _let_go(self, request: _Request) -> None:
        """``request`` leaves this connection with no terminal: cancelled at the generator, or
        (resumable) detached — it runs on for a resume; its spans end here."""
        if request.resumable:
            request.route.detach(request.wire_id)
        else:
            request.route.cancel(request.wire_id)
        if request.spans is not None:
            tracing.end_request(request.spans, _CLIENT_GONE)
            request.spans = None

    def _count_gone(self, request: _Request) -> None:
        """Count ``request``, let go, in the metrics and give its client's share back."""
        if request.resumable:
            self._metrics.detached()
        else:
            self._metrics.ended(pb.ERROR_CODE_CANCELLED)
        if self._shares is not None:
            self._shares.release(self._client)

    def _end(
        self,
        request_id: str,
        terminal: pb.ServerEvent,
        finals: list[pb.ServerEvent] | None = None,
    ) -> None:
        """End a request: the one place that does, whatever the reason.

        Its record goes (and with it its lifecycle: nothing more is relayed for the id), the
        generator is told to stop if it still runs it (a no-op when the generator ended it, or
        its stream failed), a shutdown waiting for the last request hears of it, and
        ``terminal`` goes to the client: queued, or into ``finals`` when the connection is
        closing and writes its final frames itself.
        """
        request = self._requests.pop(request_id)
        request.route.cancel(request.wire_id)
        self._metrics.ended(terminal.error.code if terminal.HasField("error") else None)
        if request.spans is not None:
            tracing.end_request(request.spans, terminal)
        if self._shares is not None:
            self._shares.release(self._client)
        if finals is None:
            self._queue(terminal)
        else:
            finals.append(terminal)
        if request.again is not None:
            self._generate_again(request_id, request.again, finals)
        if not self._requests and self._idle is not None:
            self._idle.set()

    def _generate_again(
        self, request_id: str, event: pb.ClientEvent, finals: list[pb.ServerEvent] | None
    ) -> None:
        """Start the Generate that came after its id's cancel (the cancelled one has just
        ended), or answer it with why it cannot start."""
        try:
            if event is _CANCELLED_AGAIN:
                raise Refused(pb.ERROR_CODE_CANCELLED, "cancelled by the client", request_id)
            if finals is not None or self._ending:
                raise Refused(pb.ERROR_CODE_UNAVAILABLE, "the connection is closing", request_id)
            self._check_room(request_id)
        except Refused as exc:
            if finals is None:
                self._queue(exc.event())
            else:
                finals.append(exc.event())
            return
        self._send_generate(request_id, event)

    def _queue(self, event: pb.ServerEvent) -> None:
        """Send ``event`` to the client: written now when nothing waits before it and the
        socket takes it (no sender turn later, behind the loop's traffic), else queued."""
        if self._ending:
            return
        outbox = self._outbox
        if (outbox is None or not len(outbox)) and self.websocket.send_now(
            translate.encode_server_frame(event)
        ):
            return
        if not self.outbox.offer(event):
            self._slow_consumer()

    async def _send_frames(self) -> None:
        while True:
            event = await self.outbox.get()
            if event is None:
                continue
            try:
                await self.websocket.send(translate.encode_server_frame(event), text=True)
            except ConnectionClosed:
                return

    # --- ending the connection ------------------------------------------------------------------

    def _slow_consumer(self, unsent: int = 0) -> None:
        """The client let more than ws_send_buffer pile up: end its generations, close 1008."""
        if self._ending:
            return
        queued = (self._outbox.bytes if self._outbox is not None else 0) + unsent
        log.warning("slow consumer conn=%s: %d bytes queued, closing", self.id, queued)
        self._metrics.slow_consumer()
        self._close_with(
            pb.ERROR_CODE_SLOW_CONSUMER,
            "the client did not read fast enough",
            "slow_consumer",
            drop_queued=True,
        )

    def _close_with(
        self, code: codes.Code, message: str, reason: str, *, drop_queued: bool
    ) -> None:
        """End every generation in flight with ``code``, then close the socket.

        ``drop_queued``: the queue is dropped and the final errors are written straight to the
        socket (a slow consumer); otherwise they go after what is queued (a graceful shutdown).
        """
        self._ending = True
        finals: list[pb.ServerEvent] = []
        for request_id in list(self._requests):  # (ending each closes its upstream)
            self._end(request_id, codes.error_event(code, message, request_id), finals)
        if drop_queued:
            if self._outbox is not None:
                self._outbox.clear()
        else:
            for event in finals:
                self.outbox.put(event)
            finals = []
        close_code = codes.info(code).close_code or codes.CloseCode.INTERNAL_ERROR
        self._spawn(self._say_goodbye(finals, close_code, reason), f"goodbye {self.id}")

    async def _say_goodbye(
        self, finals: list[pb.ServerEvent], close_code: int, reason: str
    ) -> None:
        """Write ``finals`` straight to the socket, let the sender write what is queued (for at
        most ws_close_timeout), then close."""
        for event in finals:
            # The frame is written to the socket's buffer at once; only waiting for the
            # client to drain it is cut short.
            with contextlib.suppress(TimeoutError, ConnectionClosed):
                await asyncio.wait_for(
                    self.websocket.send(translate.encode_server_event(event)), _FINAL_FRAME_WAIT
                )
        if self._outbox is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.ws_close_timeout):
                    await self._outbox.drained()
        with contextlib.suppress(ConnectionClosed):
            await self.websocket.close(close_code, reason)

    def _detach_resumables(self) -> None:
        """The bridge is going away: its resumable generations are not ended but detached —
        they run on at their generator (for ``resume_grace``) and get no terminal here, so the
        client, its socket closed with 1012, reconnects (to another bridge) and resumes them."""
        for request_id, request in list(self._requests.items()):
            if request.resumable:
                del self._requests[request_id]
                self._let_go(request)
                self._count_gone(request)

    async def shutdown(self, drain_timeout: float) -> None:
        """Refuse new generations, let running ones finish for ``drain_timeout`` s, then detach
        the resumable ones (they run on for a resume elsewhere), end the rest with
        ``unavailable`` (retryable) and close the socket with 1012."""
        self._accepting = False
        self._idle = asyncio.Event()
        if not self._requests:
            self._idle.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_timeout):
                await self._idle.wait()
        self._detach_resumables()
        self._close_with(
            pb.ERROR_CODE_UNAVAILABLE,
            "the server is shutting down",
            "service restart",
            drop_queued=False,
        )
        await asyncio.gather(*(self._relays or ()), return_exceptions=True)
