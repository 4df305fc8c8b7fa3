"""One browser connection: WebSocket frames in and out, generations over a shared gRPC stream.

Reading side: each text frame is decoded by ``translate`` and validated; a bad frame is answered in
place with ``ai:error`` (``invalid_request``) and nothing else is touched. Frames beyond the
connection's rate (``frames_per_second``, ``frames_burst``) and generations beyond its concurrency
(``max_generations_per_connection``) get ``too_many_requests`` (retryable). A Generate for an id
already in flight is dropped (idempotent retries); a Cancel for an id not in flight is a no-op.

gRPC side: generations go over one of the bridge's shared streams (``aistream.bridge.link``), which
routes their events back here renamed to this connection's ids; an idle connection costs the
generator nothing. Events are relayed in order; the bridge's own ``Lifecycle`` refuses to relay
anything out of order. If the stream fails (the generator died or is unreachable), every id in
flight on it gets ``ai:error`` ``unavailable`` (retryable) and the next Generate opens a new
stream; the channel reconnects with backoff on its own.

Writing side: events wait in an ``Outbox`` (tokens of one id coalesce while they wait) written to
the socket by one sender task, so the relay never blocks on a slow client. If the queued bytes
would pass ``ws_send_buffer``, the client is a slow consumer: its generations are cancelled
(closing their upstreams) and end with ``slow_consumer`` as far as the socket still takes frames,
and the socket is closed with 1008. When the socket closes or its pings go unanswered, every
generation in flight is cancelled, which makes the generator close its upstream request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from aistream.bridge import translate
from aistream.bridge.link import SharedStream
from aistream.bridge.ratelimit import TokenBucket
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from aistream import codes
from aistream.collector import release
from aistream.lifecycle import Lifecycle, LifecycleViolation
from aistream.outbox import Outbox
from aistream.settings import Settings
from aistream.v1 import events_pb2 as pb
from aistream.validation import InvalidRequest, check_cancel, check_generate

__all__ = ["Connection"]

log = logging.getLogger(__name__)

_ids = itertools.count(1)  # connection ids for the logs
_NO_GENERATIONS: dict[str, str] = {}  # what an idle connection has in flight (shared)
_FINAL_FRAME_WAIT = 0.05  # seconds a final error frame waits for a slow client to read it


class _Refused(Exception):
    """A well-formed frame this connection will not serve now (answered with ``event``)."""

    def __init__(self, event: pb.ServerEvent) -> None:
        self.event = event


class Connection:
    """The bridge's state for one WebSocket connection."""

    __slots__ = (
        "_accepting",
        "_ending",
        "_idle",
        "_in_flight",
        "_lifecycle",
        "_outbox",
        "_rate",
        "_relays",
        "_sender",
        "_settings",
        "_stream",
        "id",
        "websocket",
    )

    def __init__(
        self, websocket: ServerConnection, stream: SharedStream, settings: Settings
    ) -> None:
        self.websocket = websocket
        self.id = next(_ids)
        self._stream = stream
        self._settings = settings
        self._lifecycle: Lifecycle | None = None  # made on first generate, like the outbox
        # request id → the wire id it was sent under; the shared empty dict until the first
        # generate (never written to: see _on_frame)
        self._in_flight: dict[str, str] = _NO_GENERATIONS
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
    def lifecycle(self) -> Lifecycle:
        """The lifecycle of every request id on this connection (what may be relayed)."""
        if self._lifecycle is None:
            self._lifecycle = Lifecycle()
        return self._lifecycle

    @property
    def in_flight(self) -> int:
        """Generations this connection has running."""
        return len(self._in_flight)

    async def serve(self, on_closed: Callable[[Connection], None] | None = None) -> None:
        """Run the connection until the socket closes, then cancel everything it started (and
        call ``on_closed``). This coroutine is the socket's whole handler: at 10,000 idle
        connections each extra suspended frame would cost ~0.5 KB apiece."""
        recv = self.websocket.recv
        try:
            while True:  # (not ``async for``: one async generator frame fewer per connection)
                await self._on_frame(await recv())
        except ConnectionClosed:
            pass
        finally:
            try:
                self.cancel_in_flight()  # the generator closes this connection's upstreams
                tasks = [*(self._relays or ())]
                if self._sender is not None:
                    tasks.append(self._sender)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                for task in tasks:
                    release(task)
                if self._in_flight:
                    log.info(
                        "connection %s closed with %d generations in flight: cancelled",
                        self.id,
                        len(self._in_flight),
                    )
            finally:
                if on_closed is not None:
                    on_closed(self)

    # --- client → generator ---------------------------------------------------------------------

    async def _on_frame(self, message: str | bytes) -> None:
        try:
            event = translate.decode_client_frame(message)
            request_id = self._admit(event)
        except (translate.FrameError, InvalidRequest) as exc:
            log.info("bad frame conn=%s request_id=%s: %s", self.id, exc.request_id, exc)
            self._queue(codes.error_event(pb.ERROR_CODE_INVALID_REQUEST, str(exc), exc.request_id))
            return
        except _Refused as refused:
            self._queue(refused.event)
            return
        if request_id is None:
            return  # nothing to do: a duplicate generate, or a cancel for an id not in flight
        if event.WhichOneof("event") == "generate":
            wire_id = self._stream.generate(self, event)
            if self._in_flight is _NO_GENERATIONS:
                self._in_flight = {}
            self._in_flight[request_id] = wire_id
            log.debug("generate conn=%s request_id=%s wire_id=%s", self.id, request_id, wire_id)
        else:
            # The generator answers with Error(cancelled), routed here like any event.
            self._stream.cancel(self._in_flight[request_id], forget=False)

    def _admit(self, event: pb.ClientEvent) -> str | None:
        """Check one decoded frame against the limits; the id to forward, or None to drop it."""
        if event.WhichOneof("event") == "cancel":
            check_cancel(event.cancel, self._settings)
            request_id = event.cancel.request_id
            if request_id not in self._in_flight:
                return None  # unknown or finished: a harmless no-op
            self.rate.take(asyncio.get_running_loop().time())  # cancels are never refused
            return request_id
        generate = event.generate
        check_generate(generate, self._settings)
        request_id = generate.request_id
        if not self.rate.take(asyncio.get_running_loop().time()):
            raise _Refused(
                codes.error_event(
                    pb.ERROR_CODE_TOO_MANY_REQUESTS, "too many frames: slow down", request_id
                )
            )
        if request_id in self._in_flight:
            log.info("duplicate generate ignored request_id=%s conn=%s", request_id, self.id)
            return None
        if not self._accepting:
            raise _Refused(
                codes.error_event(
                    pb.ERROR_CODE_UNAVAILABLE, "the server is shutting down", request_id
                )
            )
        if len(self._in_flight) >= self._settings.max_generations_per_connection:
            limit = self._settings.max_generations_per_connection
            raise _Refused(
                codes.error_event(
                    pb.ERROR_CODE_TOO_MANY_REQUESTS,
                    f"at most {limit} generations at once per connection",
                    request_id,
                )
            )
        return request_id

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
        body = getattr(event, kind)
        try:
            if kind == "token":
                self.lifecycle.observe("token", request_id, body.seq, body.count)
            else:
                self.lifecycle.observe(kind, request_id)
        except LifecycleViolation as exc:
            log.error("dropped out-of-order event conn=%s: %s", self.id, exc)
            return
        if kind in ("done", "error"):
            self._forget(request_id)
        self._queue(event)

    def lost(self, request_ids: list[str], reason: str) -> None:
        """The shared stream these generations ran on failed (called by it)."""
        if self._ending:
            return
        self._end_in_flight(
            [rid for rid in request_ids if rid in self._in_flight],
            pb.ERROR_CODE_UNAVAILABLE,
            "the generator is unavailable",
            reason,
        )

    def cancel_in_flight(self) -> None:
        """Cancel every generation in flight at the generator (the socket is going away; called
        again when it is gone, a no-op then)."""
        for wire_id in self._in_flight.values():
            self._stream.cancel(wire_id)

    def _forget(self, request_id: str) -> None:
        self._in_flight.pop(request_id, None)
        if not self._in_flight and self._idle is not None:
            self._idle.set()

    def _queue(self, event: pb.ServerEvent) -> None:
        if self._ending:
            return
        if not self.outbox.offer(event):
            self._slow_consumer()

    def _end_in_flight(
        self, request_ids: list[str], code: codes.Code, message: str, reason: str
    ) -> None:
        for request_id in request_ids:
            self._forget(request_id)
            if self.lifecycle.is_running(request_id):
                self.lifecycle.observe("error", request_id)
            self._queue(codes.error_event(code, message, request_id))
        if request_ids:
            log.info(
                "%d generations ended conn=%s code=%s (%s)",
                len(request_ids),
                self.id,
                codes.json_code(code),
                reason,
            )

    async def _send_frames(self) -> None:
        while True:
            event = await self.outbox.get()
            if event is None:
                continue
            try:
                await self.websocket.send(translate.encode_server_event(event))
            except ConnectionClosed:
                return

    # --- ending the connection ------------------------------------------------------------------

    def _slow_consumer(self) -> None:
        """The client let more than ws_send_buffer pile up: end its generations, close 1008."""
        if self._ending:
            return
        queued = self._outbox.bytes if self._outbox is not None else 0
        log.warning("slow consumer conn=%s: %d bytes queued, closing", self.id, queued)
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
        self.cancel_in_flight()  # closes every upstream of this connection
        finals = []
        for request_id in list(self._in_flight):
            self._forget(request_id)
            if self.lifecycle.is_running(request_id):
                self.lifecycle.observe("error", request_id)
            finals.append(codes.error_event(code, message, request_id))
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

    async def shutdown(self, drain_timeout: float) -> None:
        """Refuse new generations, let running ones finish for ``drain_timeout`` s, then end the
        rest with ``unavailable`` (retryable) and close the socket with 1012."""
        self._accepting = False
        self._idle = asyncio.Event()
        if not self._in_flight:
            self._idle.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_timeout):
                await self._idle.wait()
        self._close_with(
            pb.ERROR_CODE_UNAVAILABLE,
            "the server is shutting down",
            "service restart",
            drop_queued=False,
        )
        await asyncio.gather(*(self._relays or ()), return_exceptions=True)
