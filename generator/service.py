"""The ``aistream.v1.Generator`` handlers: many generations on one bidi gRPC stream.

``Stream`` carries one event per message each way (for backend services), ``StreamBatches`` groups
the events both ways (the bridge's); the deprecated ``StreamBatched`` (server side grouped only) is
still served until aistream.v2. All three run the same session. One ``StreamSession`` per
call reads ClientEvents, starts and cancels generations keyed by request
id, and the handler writes the session's outbox to the call. When the call ends for any reason —
the client cancels, disconnects or dies — grpc.aio cancels the handler (``CancelledError``; note
that ``context.cancelled()`` does not report it): the ``finally`` block then ends every generation
still running as ``cancelled`` (logged and counted like any end; no one is left to read it),
cancels every task the session spawned and awaits them, so every upstream request is closed
before the handler returns.

Memory per call is bounded whatever the client does. Tokens wait for room in the outbox; a start
or a rejection answers an event the client sent, so the reader applies no further event (not even
the next one of the same batch) while the outbox is ``over`` its bounds: it reads the call only as
fast as the client reads its replies, and gRPC flow control then stops the client's writes. The
call is never ended for it (a status could not reach a client that does not read). Terminal
events of running generations are bounded by ``max_generations_per_stream``. Control goes before
data: a cancel of a running generation never waits for that room — one already read is applied
at once, and so are those further on in a batch that waits (unless a Generate of the same id
comes before them): it frees what the wait is for, and its upstream is closed now.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence

import grpc

from aistream import codes, tracing
from aistream.collector import release
from aistream.errors import InvalidRequest, Refused
from aistream.generator.followers import Follower, Relay, Resumables, replay
from aistream.generator.generation import Generation
from aistream.generator.upstream import Upstream
from aistream.headroom import UNWATCHED, Headroom
from aistream.logs import Tally
from aistream.metrics import GENERATOR_OFF, GeneratorMetrics
from aistream.outbox import Outbox
from aistream.resume import InsideAnEvent
from aistream.settings import GRPC_BATCH_BYTES, Settings
from aistream.v1 import events_pb2 as pb
from aistream.v1 import generator_pb2_grpc
from aistream.validation import check_cancel, check_detach, check_generate, check_resume

__all__ = ["GeneratorService", "StreamSession"]

log = logging.getLogger(__name__)

_BATCH = 512  # most events in one ServerEventBatch
# ...and at most this much (outbox units: characters + overhead; a character is at most 4 bytes).
_BATCH_SIZE = GRPC_BATCH_BYTES // 4


class Capacity:
    """How many generations the whole process runs, against ``max_generations``, and its
    ``headroom`` (a saturated loop sheds new generations)."""

    __slots__ = ("headroom", "limit", "refusals", "running", "short")

    def __init__(self, limit: int, headroom: Headroom = UNWATCHED) -> None:
        self.limit = limit
        self.running = 0
        self.headroom = headroom
        self.refusals = Tally(log, "refused %d generates in %.0f s (the last: %s)")
        """Generates refused (limits, no room): a log line now and then, not one each."""
        self.short: set[Outbox] = set()
        """The outboxes of calls last told there was no room: woken when a generation ends."""

    @property
    def room(self) -> int:
        """Generations that would start now: the headroom's limit (or ``max_generations``)
        minus what runs."""
        return max(0, int(min(self.headroom.limit, self.limit)) - self.running)

    def ended(self) -> None:
        """A generation has ended: its room is told to the calls that were told of none."""
        self.running -= 1
        if self.short:
            for outbox in self.short:
                outbox.wake()
            self.short.clear()


class StreamSession:
    """The generations of one gRPC call, keyed by request id."""

    def __init__(
        self,
        upstream: Upstream,
        settings: Settings,
        peer: str,
        capacity: Capacity,
        *,
        traceparent: str = "",
        metrics: GeneratorMetrics = GENERATOR_OFF,
        resumables: Resumables | None = None,
    ) -> None:
        """``traceparent``: the call's trace context (metadata), for Generates that carry
        none of their own; ``metrics``: the process's; ``resumables``: the process's resumable
        generations (None: a session of its own, for tests)."""
        self._traceparent = traceparent
        self._metrics = metrics
        self.outbox = Outbox(settings.stream_buffer, max_bytes=settings.stream_buffer_bytes)
        self._capacity = capacity
        self._upstream = upstream
        self._settings = settings
        self._peer = peer
        self._running: dict[str, tuple[Generation, asyncio.Task[None]]] = {}
        self._resumables = resumables if resumables is not None else Resumables(settings)
        self._keys: dict[str, str] = {}
        """Request id on this call → the log key of a resumable generation it follows (one it
        asked for, or one it resumed)."""
        self._accepting = True
        self._reading_done = False
        self._idle = asyncio.Event()  # no generation running
        self._idle.set()

    def finished(self) -> bool:
        """The client is done sending, every generation it follows has ended and the outbox is
        drained."""
        return (
            self._reading_done
            and not self._running
            and not self._following()
            and not len(self.outbox)
        )

    def _following(self) -> bool:
        """Whether a resumable generation this call follows still runs (its entry in
        ``_keys`` goes when it ends)."""
        return bool(self._keys)

    async def read(self, requests: AsyncIterator[pb.ClientEvent]) -> None:
        """Apply every ClientEvent of the call until the client half-closes, none while the
        outbox is over its bounds — but a cancel of a running generation, control before
        data: it is applied as soon as it is read (it frees what the wait is for)."""
        outbox = self.outbox
        async for event in requests:
            if outbox.over and not self._stops_a_running(event):
                await outbox.room()
            self.apply(event)

    async def read_batches(self, requests: AsyncIterator[pb.ClientEventBatch]) -> None:
        """Apply every event of every ClientEventBatch of the call, in order, until the client
        half-closes; none while the outbox is over its bounds (also between the events of one
        batch) — but before waiting, the batch's cancels of running generations are applied
        at once (control before data), each unless a Generate of its id comes earlier in what
        waits (the batch's order per id is kept)."""
        outbox = self.outbox
        async for batch in requests:
            events = batch.events
            ahead: set[int] | None = None  # indexes of the cancels applied ahead
            for i, event in enumerate(events):
                if ahead is not None and i in ahead:
                    continue
                if outbox.over and not self._stops_a_running(event):
                    ahead = self._cancel_ahead(events, i, ahead)
                    await outbox.room()
                self.apply(event)

    def _stops_a_running(self, event: pb.ClientEvent) -> bool:
        """Whether ``event`` cancels a generation running on this call (or followed on it)."""
        if event.WhichOneof("event") != "cancel":
            return False
        request_id = event.cancel.request_id
        return request_id in self._running or request_id in self._keys

    def _cancel_ahead(
        self, events: Sequence[pb.ClientEvent], start: int, ahead: set[int] | None
    ) -> set[int]:
        """Apply the cancels of running generations among ``events[start:]`` now, each unless
        a Generate of its id comes before it there; their indexes, with ``ahead``'s."""
        ahead = set() if ahead is None else ahead
        generated: set[str] = set()
        for j in range(start, len(events)):
            event = events[j]
            kind = event.WhichOneof("event")
            if kind == "generate":
                generated.add(event.generate.request_id)
            elif (
                j not in ahead
                and self._stops_a_running(event)
                and event.cancel.request_id not in generated
            ):
                self.apply(event)
                ahead.add(j)
        return ahead

    async def reading(self, read: Callable[[StreamSession], Coroutine[None, None, None]]) -> None:
        """Run ``read(self)`` (a ``read`` or ``read_batches`` of the call); however it ends, the
        client is done sending. (Called inside, so a task cancelled before it starts leaves no
        coroutine unawaited.)"""
        try:
            await read(self)
        finally:
            self._reading_done = True
            self.outbox.wake()

    def apply(self, event: pb.ClientEvent) -> None:
        """Apply one ClientEvent: start, ignore (running id), cancel, or reject it."""
        kind = event.WhichOneof("event")
        try:
            if kind == "generate":
                check_generate(event.generate, self._settings)
                self._generate(event.generate)
            elif kind == "cancel":
                check_cancel(event.cancel, self._settings)
                self.cancel(event.cancel.request_id)
            elif kind == "resume":
                check_resume(event.resume, self._settings)
                self._resume(event.resume)
            elif kind == "detach":
                check_detach(event.detach, self._settings)
                self.detach(event.detach.request_id)
            else:
                raise InvalidRequest("the event must be generate, cancel, resume or detach")
        except (InvalidRequest, Refused) as exc:  # (a resume of nothing: not_found)
            log.info("rejected request_id=%s peer=%s: %s", exc.request_id, self._peer, exc)
            self._metrics.refusal(exc.code)
            self.outbox.put(exc.event())

    def _generate(self, generate: pb.Generate) -> None:
        request_id = generate.request_id
        if request_id in self._running:
            log.info("duplicate generate ignored request_id=%s", request_id)
            return
        refused = self._refusal(request_id)
        if refused is not None:
            log.debug("refused request_id=%s peer=%s: %s", request_id, self._peer, refused)
            self._capacity.refusals.add(refused.message)
            self._metrics.refusal(refused.code)
            self.outbox.put(refused.event())
            return
        sink: Outbox | Relay = self.outbox
        token = key = ""
        if generate.resumable:  # its events go to a relay: its log, then each follower
            client_id = generate.client_request_id or request_id
            follower = Follower(self.outbox, request_id, self._keys)
            minted, sink = self._resumables.open(client_id, follower)
            token, key = minted.token, minted.key
        generation = Generation(
            generate,
            self._upstream,
            self._settings,
            sink,
            self._traceparent,
            metrics=self._metrics,
            resume_token=token,
            on_end=self._capacity.ended,  # (the batch with its terminal tells the room it left)
        )
        generation.start()
        task = asyncio.create_task(generation.run(), name=f"generation {request_id}")
        self._running[request_id] = (generation, task)
        self._capacity.running += 1
        self._idle.clear()
        task.add_done_callback(lambda _: self._forget(request_id, generation, task))
        if isinstance(sink, Relay):
            self._resumables.add(key, generation, sink, task)
            self._keys[request_id] = key
        log.info(
            "start request_id=%s model=%s peer=%s",
            request_id,
            generation.request.model or "-",
            self._peer,
        )

    def _refusal(self, request_id: str) -> Refused | None:
        """Why a new generation cannot start now (shutting down, a generation limit, no
        headroom: the streams already running keep their pace), or None if it can."""
        if not self._accepting:
            return Refused(pb.ERROR_CODE_UNAVAILABLE, "the server is shutting down", request_id)
        limit = self._settings.max_generations_per_stream
        if len(self._running) >= limit:
            message = f"at most {limit} generations per stream"
            return Refused(pb.ERROR_CODE_TOO_MANY_REQUESTS, message, request_id)
        headroom = self._capacity.headroom
        if self._capacity.running >= self._capacity.limit:  # full: shed, as without headroom
            message = "the server is at its generation limit; try again shortly"
            return Refused(
                pb.ERROR_CODE_TOO_MANY_REQUESTS,
                message,
                request_id,
                retry_after_ms=self._settings.shed_retry_after_ms,
            )
        if headroom.saturated:
            return Refused(
                pb.ERROR_CODE_TOO_MANY_REQUESTS,
                "the server is at capacity; try again shortly",
                request_id,
                retry_after_ms=headroom.retry_after_ms,
            )
        return None

    def _forget(self, request_id: str, generation: Generation, task: asyncio.Task[None]) -> None:
        release(task)
        generation.settle()  # (counted out of the capacity when its terminal was queued, or now)
        entry = self._running.get(request_id)
        if entry is not None and entry[1] is task:
            del self._running[request_id]
        if not self._running:
            self._idle.set()
            self.outbox.wake()

    def cancel(self, request_id: str) -> None:
        """Stop one generation: Error(cancelled) now, its upstream closed as its task unwinds
        (one this call resumed too: it ends for every follower)."""
        if request_id not in self._running and request_id in self._keys:
            key = self._keys[request_id]
            self._resumables.cancel(key, pb.ERROR_CODE_CANCELLED, "cancelled by the client")
            return
        self._end(request_id, pb.ERROR_CODE_CANCELLED, "cancelled by the client")

    def _resume(self, resume: pb.Resume) -> None:
        """Replay a resumable generation after a position and follow it, or not_found."""
        request_id = resume.request_id
        if request_id in self._running or request_id in self._keys:
            log.info("duplicate resume ignored request_id=%s", request_id)
            return
        client_id = resume.client_request_id or request_id
        found = self._resumables.find(resume.resume_token, client_id)
        if found is None:
            raise Refused(pb.ERROR_CODE_NOT_FOUND, "no such generation to resume", request_id)
        after_seq = resume.after_seq if resume.HasField("after_seq") else -1
        if after_seq >= found.next_seq:
            raise InvalidRequest(
                f"afterSeq {after_seq} is past the generation's last position", request_id
            )
        try:
            if self._resumables.follow(found.key, self.outbox, request_id, after_seq, self._keys):
                self._keys[request_id] = found.key
            else:
                replay(found, self.outbox, request_id, after_seq)
        except InsideAnEvent:
            raise InvalidRequest(
                f"afterSeq {after_seq} is inside an event: give the last position of the last "
                "event applied",
                request_id,
            ) from None
        log.info("resume request_id=%s key=%s after_seq=%d", request_id, found.key, after_seq)

    def detach(self, request_id: str) -> None:
        """Stop following a resumable generation on this call, leaving it running (for the
        grace; a plain one is cancelled: nobody could follow it again)."""
        key = self._keys.pop(request_id, None)
        if key is None:
            self.cancel(request_id)
            return
        self._running.pop(request_id, None)  # (the process's resumables hold it now)
        if not self._running:
            self._idle.set()
        self._resumables.unfollow(key, self.outbox, request_id)
        self.outbox.wake()

    def _end(self, request_id: str, code: codes.Code, message: str) -> None:
        entry = self._running.pop(request_id, None)
        if entry is None:
            return  # unknown or finished: a harmless no-op
        generation, task = entry
        generation.end(code, message)
        task.cancel()
        if not self._running:
            self._idle.set()

    async def drain(self, timeout: float) -> None:
        """Refuse new generations, let running ones finish for ``timeout`` s, then end them."""
        self._accepting = False
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            for request_id in list(self._running):
                self._end(request_id, pb.ERROR_CODE_UNAVAILABLE, "the server is shutting down")

    async def close(self) -> None:
        """Cancel every task of the session and wait until each has closed its upstream. A
        generation still running then has lost its client (the call ended): it ends as
        ``cancelled`` (logged and counted; the event itself can reach no one)."""
        for request_id in list(self._keys):
            self.detach(request_id)  # resumable: they run on, for the grace
        running = list(self._running.values())
        tasks = [task for _, task in running]
        self._running.clear()
        for generation, task in running:
            generation.end(pb.ERROR_CODE_CANCELLED, "the call ended")
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


class GeneratorService(generator_pb2_grpc.GeneratorServicer):
    """The gRPC servicer: one StreamSession per call."""

    def __init__(self, upstream: Upstream, settings: Settings) -> None:
        self._upstream = upstream
        self._settings = settings
        self._sessions: set[StreamSession] = set()
        self._capacity = Capacity(settings.max_generations, Headroom.of(settings))
        self._resumables = Resumables(settings)
        """Every resumable generation and log of the process (they outlive their calls)."""
        self.metrics = GeneratorMetrics(
            settings, lambda: len(self._sessions), upstream.model_name(None)
        )
        """The process's metrics (served by the server on ``metrics_port``)."""
        self.metrics.watch(self._capacity.headroom)

    @property
    def running(self) -> int:
        """Generation tasks not yet finished, across all calls."""
        return self._capacity.running

    @property
    def headroom(self) -> Headroom:
        """The process's loop lag, which admission watches (started and stopped by the
        server)."""
        return self._capacity.headroom

    @property
    def resumables(self) -> Resumables:
        """Every resumable generation and log of the process."""
        return self._resumables

    async def start_durable(self) -> None:
        """Start copying resumable logs to Redis (with ``redis_url``; a no-op without)."""
        await self._resumables.start()

    def start_headroom(self) -> None:
        """Start watching the loop, weighing it against the generations running."""
        capacity = self._capacity
        capacity.headroom.start(lambda: capacity.running)

    async def Stream(
        self,
        request_iterator: AsyncIterator[pb.ClientEvent],
        context: grpc.aio.ServicerContext[pb.ClientEvent, pb.ServerEvent],
    ) -> AsyncIterator[pb.ServerEvent]:
        """Serve one bidirectional stream, one ServerEvent per message."""
        async for batch, _ in self._serve(
            lambda session: session.read(request_iterator),
            context.peer(),
            batch_limit=1,
            traceparent=tracing.from_metadata(context.invocation_metadata()),
        ):
            for event in batch:
                yield event

    async def StreamBatched(
        self,
        request_iterator: AsyncIterator[pb.ClientEvent],
        context: grpc.aio.ServicerContext[pb.ClientEvent, pb.ServerEventBatch],
    ) -> AsyncIterator[pb.ServerEventBatch]:
        """Deprecated (Stream or StreamBatches serve): one bidirectional stream, every waiting
        ServerEvent in one message."""
        async for batch, room in self._serve(
            lambda session: session.read(request_iterator),
            context.peer(),
            batch_limit=_BATCH,
            traceparent=tracing.from_metadata(context.invocation_metadata()),
        ):
            yield pb.ServerEventBatch(events=batch, room=room)

    async def StreamBatches(
        self,
        request_iterator: AsyncIterator[pb.ClientEventBatch],
        context: grpc.aio.ServicerContext[pb.ClientEventBatch, pb.ServerEventBatch],
    ) -> AsyncIterator[pb.ServerEventBatch]:
        """Serve one bidirectional stream, batched both ways; each batch says how many more
        generations would start now (``room``), so that a bridge refuses the others itself."""
        async for batch, room in self._serve(
            lambda session: session.read_batches(request_iterator),
            context.peer(),
            batch_limit=_BATCH,
            traceparent=tracing.from_metadata(context.invocation_metadata()),
        ):
            yield pb.ServerEventBatch(events=batch, room=room)

    async def _serve(
        self,
        read: Callable[[StreamSession], Coroutine[None, None, None]],
        peer: str,
        batch_limit: int,
        traceparent: str = "",
    ) -> AsyncIterator[tuple[list[pb.ServerEvent], int]]:
        """Run one call's session (``read`` applies what the client sends to it) until the
        client half-closes or the call ends; ``traceparent``: the call's trace context. Each
        batch comes with the room there is for more generations as it is written; after one
        that said none, a generation's end is told by an empty batch with the new room."""
        session = StreamSession(
            self._upstream,
            self._settings,
            peer,
            self._capacity,
            traceparent=traceparent,
            metrics=self.metrics,
            resumables=self._resumables,
        )
        self._sessions.add(session)
        reader = asyncio.create_task(session.reading(read), name="stream reader")
        loop = asyncio.get_running_loop()
        spacing = self._settings.stream_flush_interval if batch_limit > 1 else 0.0
        wrote_at = -math.inf
        capacity = self._capacity
        told = -1  # the room last told
        try:
            while not session.finished():
                if spacing:
                    # Under load, write at most once per `spacing`: the events that arrive
                    # meanwhile join the batch (and tokens of one id merge) instead of each
                    # costing a gRPC message. At light load nothing waits.
                    pause = wrote_at + spacing - loop.time()
                    if pause > 0:
                        await asyncio.sleep(pause)
                batch = await session.outbox.get_batch(batch_limit, _BATCH_SIZE)
                room = capacity.room
                if batch or (told == 0 and room > 0):
                    wrote_at = loop.time()
                    told = room
                    if not room:  # woken by the next generation to end, to tell the room
                        capacity.short.add(session.outbox)
                    yield batch, room
            await reader  # surfaces a reader failure, if any
        finally:
            # Also reached on CancelledError when the client cancels or vanishes.
            reader.cancel()
            await session.close()
            self._sessions.discard(session)

    async def drain(self, timeout: float) -> None:
        """Refuse new generations on every call; end what is still running after ``timeout``
        (resumable generations no call follows too: nobody could resume them here after)."""
        await asyncio.gather(*(session.drain(timeout) for session in list(self._sessions)))
        await self._resumables.close()
