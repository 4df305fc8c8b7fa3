"""The bridge's link to the generator: a few shared gRPC streams that every connection uses.

Every browser connection could have its own call, but then each call carries one or two
generations and every token is its own gRPC message — at a thousand streams that per-message
cost, on both sides, is what saturates the processes. So the bridge keeps ``generator_streams``
``StreamBatches`` calls open and spreads connections over them (a connection stays on one, so
its Generate and a later Cancel travel in order). On a shared call the generator batches the
events of hundreds of generations into one message, and the bridge the Generates and Cancels
that gathered while its previous write was under way.

Request ids are the browser's and only unique within its connection, so each Generate is sent
under a *wire id* unique in this bridge (a hex counter) and every event coming back is routed by
it to its connection and renamed to the browser's id. A connection that goes away, or cuts off
a slow reader, cancels its wire ids one by one — the generator closes just those upstreams.
The bridge never stops reading a shared call: a connection that cannot keep up is that
connection's problem (its own bounded queue; ``slow_consumer``), never its neighbours'.

If a call fails (the generator died or restarted), every generation routed over it is reported
lost to its connection, and the next Generate opens a new call; the channel reconnects on its own.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Protocol

import grpc

from aistream.collector import release
from aistream.settings import GRPC_BATCH_BYTES
from aistream.v1 import events_pb2 as pb
from aistream.v1 import generator_pb2_grpc

__all__ = ["GeneratorLink", "Receiver", "Route", "SharedStream"]

log = logging.getLogger(__name__)

_Call = grpc.aio.StreamStreamCall[pb.ClientEventBatch, pb.ServerEventBatch]
_BATCH = 256  # most events in one ClientEventBatch
# A batch takes no more events once it holds GRPC_BATCH_BYTES: with frames of at most
# ws_max_size it stays far inside what the generator accepts (aistream/settings.py).


class Receiver(Protocol):
    """What a shared stream delivers to: one browser connection."""

    def deliver(self, request_id: str, event: pb.ServerEvent) -> None:
        """An event for the connection's ``request_id`` (already renamed to it)."""
        ...

    def lost(self, request_ids: list[str], reason: str) -> None:
        """The stream these generations ran on failed; they will get nothing more."""
        ...


class Route(Protocol):
    """Where a connection's request travels, and what it can tell it: a shared stream to the
    generator, or (a resume with ``redis_url``) the bridge's follows through Redis."""

    def cancel(self, wire_id: str, *, forget: bool = True) -> None:
        """Stop the generation (``forget``: deliver nothing more for it)."""
        ...

    def detach(self, wire_id: str) -> None:
        """Stop following a resumable generation, leaving it running."""
        ...


class _OpenCall:
    """One open ``StreamBatches`` call: its writer, its reader, the generations routed over it."""

    __slots__ = ("call", "ended", "routes", "tasks", "unanswered", "writes")

    def __init__(self, call: _Call) -> None:
        self.call = call
        self.routes: dict[str, tuple[Receiver, str]] = {}  # wire id → (connection, its id)
        self.unanswered: set[str] = set()
        """Wire ids of the Generates sent that the generator has not answered yet (no start,
        no refusal): not yet counted in the ``room`` it reports."""
        self.writes: asyncio.Queue[pb.ClientEvent] = asyncio.Queue()
        self.tasks: list[asyncio.Task[None]] = []
        self.ended = False


ROOM_AGE = 0.25
"""Seconds the generator's last ``room`` figure is trusted: under load, batches come far more
often; an idle stream's figure (no batch since) may be out of date, so past this the next
Generate goes to the generator, which decides."""


class SharedStream:
    """One of the link's streams: the current call (opened on demand) and what runs over it,
    and the generator's ``room`` as last heard on it (less the Generates sent since)."""

    def __init__(self, link: GeneratorLink, index: int) -> None:
        self._link = link
        self._index = index
        self._current: _OpenCall | None = None
        self._room = 0
        self._room_at = -ROOM_AGE

    @property
    def full(self) -> bool:
        """Whether the generator said, a moment ago, that it would start no more generations
        than the ones on their way to it (it sheds): a new one is refused here, without a round
        trip."""
        current = self._current
        on_the_way = len(current.unanswered) if current is not None else 0
        return (
            self._room <= on_the_way
            and asyncio.get_running_loop().time() - self._room_at < ROOM_AGE
        )

    def generate(self, receiver: Receiver, event: pb.ClientEvent) -> str:
        """Send a (validated) Generate for ``receiver``; the wire id it travels under."""
        current, wire_id = self._send_renamed(receiver, event, event.generate.request_id)
        current.unanswered.add(wire_id)
        return wire_id

    def resume(self, receiver: Receiver, event: pb.ClientEvent) -> str:
        """Send a (validated) Resume for ``receiver``; the wire id its events come back under.
        (It starts nothing: it takes none of the generator's room.)"""
        return self._send_renamed(receiver, event, event.resume.request_id)[1]

    def _send_renamed(
        self, receiver: Receiver, event: pb.ClientEvent, request_id: str
    ) -> tuple[_OpenCall, str]:
        """Send ``event`` under a fresh wire id, its events routed back to ``receiver`` as
        ``request_id``; the call and the wire id."""
        current = self._open()
        wire_id = self._link.next_wire_id()
        current.routes[wire_id] = (receiver, request_id)
        renamed = pb.ClientEvent()
        renamed.CopyFrom(event)
        kind = event.WhichOneof("event")
        assert kind is not None
        getattr(renamed, kind).request_id = wire_id
        current.writes.put_nowait(renamed)
        return current, wire_id

    def detach(self, wire_id: str) -> None:
        """Stop following the resumable generation sent as ``wire_id`` without stopping it
        (its connection went: it runs on at the generator for a resume); no-op when it has
        ended."""
        current = self._current
        if current is None or wire_id not in current.routes:
            return
        del current.routes[wire_id]
        current.writes.put_nowait(pb.ClientEvent(detach=pb.Detach(request_id=wire_id)))

    def cancel(self, wire_id: str, *, forget: bool = True) -> None:
        """Cancel the generation sent as ``wire_id`` (no-op when it has ended or its call has
        failed). ``forget``: stop routing its events too (its connection is going away);
        otherwise its final ``Error(cancelled)`` still comes back to the connection."""
        current = self._current
        if current is None or wire_id not in current.routes:
            return
        if forget:
            del current.routes[wire_id]
        current.writes.put_nowait(pb.ClientEvent(cancel=pb.Cancel(request_id=wire_id)))

    def _open(self) -> _OpenCall:
        if self._current is None or self._current.ended:
            call: _Call = self._link.stub.StreamBatches(metadata=self._link.metadata)
            current = _OpenCall(call)
            name = f"generator stream {self._index}"
            current.tasks = [
                asyncio.create_task(self._write(current), name=f"{name} writer"),
                asyncio.create_task(self._read(current), name=f"{name} reader"),
            ]
            for task in current.tasks:
                # one cancelled (its call failed, or the link closed) keeps nothing in a cycle
                task.add_done_callback(release)
            self._current = current
        return self._current

    async def _write(self, current: _OpenCall) -> None:
        writes = current.writes
        try:
            while True:
                # Everything that waits goes in one message: while a write is under way the
                # next Generates and Cancels gather, so under load the generator reads a
                # batch per turn of its loop instead of one request per two.
                events = [await writes.get()]
                size = events[0].ByteSize()
                while not writes.empty() and len(events) < _BATCH and size < GRPC_BATCH_BYTES:
                    events.append(writes.get_nowait())
                    size += events[-1].ByteSize()
                await current.call.write(pb.ClientEventBatch(events=events))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            # The reader sees the call end too and reports every generation on it.
            log.debug("write to generator failed: %r", exc)

    async def _read(self, current: _OpenCall) -> None:
        reason = "the generator closed the stream"
        routes = current.routes
        try:
            loop = asyncio.get_running_loop()
            async for batch in current.call:
                if batch.HasField("room"):
                    # (it counts the room left by the generations the batch ends: the
                    # generator counts one out as its terminal is queued)
                    self._room, self._room_at = batch.room, loop.time()
                _route(batch, routes, current.unanswered)
                # Let the connections' senders write before the next batch.
                await asyncio.sleep(0)
        except grpc.aio.AioRpcError as exc:
            reason = exc.code().name
            log.warning("generator stream %d failed: %s", self._index, reason)
        finally:
            current.ended = True
            current.tasks[0].cancel()
            if self._current is current:
                self._current = None
        lost: dict[Receiver, list[str]] = {}
        for receiver, request_id in routes.values():
            lost.setdefault(receiver, []).append(request_id)
        routes.clear()
        for receiver, request_ids in lost.items():
            receiver.lost(request_ids, reason)

    async def close(self) -> None:
        """Cancel the call (ending whatever still runs on it) and wait for its tasks."""
        current, self._current = self._current, None
        if current is None:
            return
        current.call.cancel()
        for task in current.tasks:
            task.cancel()
        await asyncio.gather(*current.tasks, return_exceptions=True)


_CONTROL = frozenset({"start", "done", "error"})


def _route(
    batch: pb.ServerEventBatch, routes: dict[str, tuple[Receiver, str]], unanswered: set[str]
) -> None:
    """Deliver each event of ``batch`` to its connection, renamed to the connection's id, and
    strike the Generates it answers off ``unanswered``. (Its own function so that no connection
    stays referenced from the reader's loop once the batch is delivered.)"""
    for event in batch.events:
        kind = event.WhichOneof("event")
        if kind is None:
            continue
        body = getattr(event, kind)
        if kind not in _CONTROL:  # a part: the hot path
            route = routes.get(body.request_id)
        elif kind == "start":
            unanswered.discard(body.request_id)
            route = routes.get(body.request_id)
        else:
            unanswered.discard(body.request_id)  # (a refusal answers it)
            route = routes.pop(body.request_id, None)
        if route is None:
            continue  # cancelled by its connection: nobody waits for it
        receiver, request_id = route
        body.request_id = request_id
        receiver.deliver(request_id, event)


class GeneratorLink:
    """The shared streams to the generator, handed out to connections round robin."""

    def __init__(
        self,
        stub: generator_pb2_grpc.GeneratorStub,
        metadata: tuple[tuple[str, str], ...],
        streams: int,
    ) -> None:
        self.stub = stub
        self.metadata = metadata
        self.streams = [SharedStream(self, i) for i in range(streams)]
        self._turn = itertools.cycle(self.streams)
        self._wire_ids = itertools.count(1)

    def next_wire_id(self) -> str:
        """A request id unique among everything this bridge has sent."""
        return f"{next(self._wire_ids):x}"

    def assign(self) -> SharedStream:
        """The stream a new connection sends its generations over."""
        return next(self._turn)

    async def close(self) -> None:
        """Close every stream."""
        await asyncio.gather(*(stream.close() for stream in self.streams))
