"""The outbox: a bounded, coalescing queue of ServerEvents between producers and one writer.

The generator has one per gRPC stream (generations produce, the gRPC writer consumes); the bridge
has one per WebSocket (the gRPC relay produces, the socket sender consumes).

Memory stays bounded whatever the reader does. When the writer falls behind, a part (answer text,
reasoning, refusal, tool-call arguments) for a request id whose previous event still waits and is
a part of the same kind (and tool call), with no gap in ``seq``, is appended to that event (its
``count`` grows, its ``seq`` stays the first token's), so a slow hop receives fewer, larger
frames instead of an ever longer queue. Two ways to respect the bounds:

* ``put_token`` (generator) waits for room: at most ``capacity`` events wait, each token event
  holding at most ``max_chunk_chars`` characters.
* ``offer`` (bridge) never waits: it refuses an event that would take the queued bytes past
  ``max_bytes``, and the caller applies its policy (slow consumer).

``put`` queues a start or terminal event without waiting. Control before data: such an event
goes ahead of every part waiting in line — in a lane of its own that the writer empties first —
unless something of its own request still waits (a terminal comes after its request's parts),
so a new generation's start, a refusal or the end of a cancelled one never waits behind other
requests' tokens. What a generation puts (one start, one
terminal) is bounded by the number of generations; what answers a client (a start, a rejection)
is bounded by its caller: while the queue is ``over`` (twice its bounds), the caller takes no
further client event (``await room()``), so a client that sends faster than it reads is slowed
to its reading speed. After a terminal event no later token of that id merges into an earlier one.
"""

from __future__ import annotations

import asyncio
from collections import deque

from aistream.v1 import events_pb2 as pb

__all__ = ["EVENT_OVERHEAD", "PART_KINDS", "REASONING", "REFUSAL", "TOKEN", "TOOL_ARGS", "Outbox"]

EVENT_OVERHEAD = 128
"""Bytes counted per queued event on top of its text (object and framing overhead)."""


TOKEN, REASONING, REFUSAL, TOOL_ARGS = "token", "reasoning", "refusal", "tool_args"
"""The kinds of mergeable part (their ServerEvent field names)."""
PART_KINDS = (TOKEN, REASONING, REFUSAL, TOOL_ARGS)


class _Tokens:
    """A part event still waiting (answer text, reasoning, refusal or tool-call arguments): its
    text kept as pieces, the message built once on the way out (appending to a protobuf string
    copies it every time, and upb keeps every copy). A later part of the same request, kind
    and tool-call ``index`` whose ``seq`` follows on is appended to it."""

    __slots__ = ("count", "index", "kind", "length", "parts", "request_id", "seq")

    def __init__(
        self, request_id: str, text: str, seq: int, count: int, kind: str = TOKEN, index: int = 0
    ) -> None:
        self.request_id = request_id
        self.parts = [text]
        self.length = len(text)
        self.seq = seq
        self.count = max(count, 1)
        self.kind = kind
        self.index = index

    def event(self) -> pb.ServerEvent:
        chunk = "".join(self.parts)
        kind = self.kind
        if kind is TOKEN:
            return pb.ServerEvent(
                token=pb.Token(
                    request_id=self.request_id, chunk=chunk, seq=self.seq, count=self.count
                )
            )
        if kind is REASONING:
            return pb.ServerEvent(
                reasoning=pb.Reasoning(
                    request_id=self.request_id, chunk=chunk, seq=self.seq, count=self.count
                )
            )
        if kind is REFUSAL:
            return pb.ServerEvent(
                refusal=pb.Refusal(
                    request_id=self.request_id, chunk=chunk, seq=self.seq, count=self.count
                )
            )
        return pb.ServerEvent(
            tool_args=pb.ToolArgs(
                request_id=self.request_id,
                chunk=chunk,
                seq=self.seq,
                count=self.count,
                index=self.index,
            )
        )


_Item = pb.ServerEvent | _Tokens


def _request_id(event: pb.ServerEvent) -> str:
    kind = event.WhichOneof("event")
    request_id: str = getattr(event, kind).request_id if kind else ""
    return request_id


def _size(item: _Item) -> int:
    if isinstance(item, _Tokens):
        return EVENT_OVERHEAD + item.length
    kind = item.WhichOneof("event")
    if kind == "error":
        error = item.error
        return EVENT_OVERHEAD + len(error.message) + len(error.request_id)
    if kind in _CHUNKED:  # (queued parts are _Tokens; this is a batch's first event, taken out)
        return EVENT_OVERHEAD + len(getattr(item, kind).chunk)
    if kind == "done":
        done = item.done
        if done.tool_calls or done.HasField("output"):  # what an answer hands over
            return EVENT_OVERHEAD + done.ByteSize()
    elif kind == "tool_call":
        call = item.tool_call
        return EVENT_OVERHEAD + len(call.id) + len(call.name)
    return EVENT_OVERHEAD


_CHUNKED = frozenset(PART_KINDS)
_KIND_NAMES = {kind: kind for kind in PART_KINDS}  # interned: a kind is compared by identity


class Outbox:
    """Bounded, coalescing queue of ServerEvents: FIFO per request, control first."""

    __slots__ = (
        "_capacity",
        "_control",
        "_empty",
        "_events",
        "_has_events",
        "_has_room",
        "_length",
        "_max_bytes",
        "_max_chunk",
        "_queued",
        "_waiting",
        "bytes",
        "peak_bytes",
    )

    def __init__(
        self, capacity: int, max_chunk_chars: int = 4096, max_bytes: int | None = None
    ) -> None:
        self._capacity = capacity
        self._max_chunk = max_chunk_chars
        self._max_bytes = max_bytes
        self._events: deque[_Item] = deque()
        self._control: deque[pb.ServerEvent] = deque()
        """Start and terminal events of requests with nothing in ``_events``: taken first."""
        self._length = 0
        """Events in both lanes."""
        self._queued: dict[str, int] = {}
        """Request id → how many of its events wait in ``_events``."""
        # request id → its token event still in the queue (appended to while it waits)
        self._waiting: dict[str, _Tokens] = {}
        self._has_events = asyncio.Event()
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._empty = asyncio.Event()
        self._empty.set()
        self.bytes = 0
        """Bytes queued now (text plus EVENT_OVERHEAD per event)."""
        self.peak_bytes = 0
        """The most bytes ever queued at once."""

    def __len__(self) -> int:
        return self._length

    @property
    def full(self) -> bool:
        """Whether a token for an id with nothing waiting may have to wait for room."""
        return self._length >= self._capacity or (
            self._max_bytes is not None and self.bytes >= self._max_bytes
        )

    @property
    def over(self) -> bool:
        """Whether the queue holds twice its bounds (events, or bytes): the headroom above
        ``full`` is for the events that answer a client, so they never wait behind tokens;
        past it, whoever takes client events stops until ``room``."""
        return self._length >= 2 * self._capacity or (
            self._max_bytes is not None and self.bytes >= 2 * self._max_bytes
        )

    async def room(self) -> None:
        """Until the queue is no longer ``over`` (at once if it is not)."""
        while self.over:
            self._has_room.clear()
            await self._has_room.wait()

    def _append(self, item: _Item, size: int, request_id: str) -> None:
        self._events.append(item)
        queued = self._queued
        queued[request_id] = queued.get(request_id, 0) + 1
        self._added(size)

    def _added(self, size: int) -> None:
        self._length += 1
        self._empty.clear()
        self._grow(size)
        self._has_events.set()
        if self._length >= self._capacity:
            self._has_room.clear()

    def _grow(self, size: int) -> None:
        self.bytes += size
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    def put(self, event: pb.ServerEvent) -> None:
        """Queue a start or terminal event (never waits, never refused): ahead of the parts
        waiting, unless its own request's wait."""
        request_id = _request_id(event)
        self._waiting.pop(request_id, None)
        if request_id in self._queued:
            self._append(event, _size(event), request_id)
        else:
            self._control.append(event)
            self._added(_size(event))

    def _merge(
        self, request_id: str, text: str, seq: int, count: int, kind: str = TOKEN, index: int = 0
    ) -> bool:
        """Append to the id's waiting part event if it is of the same kind (and tool call),
        contiguous, and has room."""
        waiting = self._waiting.get(request_id)
        if (
            waiting is None
            or waiting.seq + waiting.count != seq
            or waiting.length + len(text) > self._max_chunk
            or waiting.kind is not kind
            or waiting.index != index
        ):
            return False
        waiting.parts.append(text)
        waiting.length += len(text)
        waiting.count += max(count, 1)
        self._grow(len(text))
        return True

    def _add_tokens(
        self, request_id: str, text: str, seq: int, count: int, kind: str = TOKEN, index: int = 0
    ) -> None:
        item = _Tokens(request_id, text, seq, count, kind, index)
        self._waiting[request_id] = item
        self._append(item, EVENT_OVERHEAD + item.length, request_id)

    def _has_room_for(self, size: int) -> bool:
        if self._length >= self._capacity:
            return False
        # An empty queue always takes one event, however large, so nothing waits forever.
        return self._max_bytes is None or not self._length or self.bytes + size <= self._max_bytes

    async def put_token(self, request_id: str, text: str, seq: int, count: int) -> None:
        """``put_part`` for answer text."""
        await self.put_part(TOKEN, request_id, text, seq, count)

    async def put_part(
        self, kind: str, request_id: str, text: str, seq: int, count: int, index: int = 0
    ) -> None:
        """Queue ``count`` tokens of ``text`` of part ``kind`` (one of ``PART_KINDS``; ``index``:
        the tool call of ``TOOL_ARGS``) starting at ``seq``, merging or waiting for room
        (``capacity`` events and ``max_bytes``)."""
        while not self._merge(request_id, text, seq, count, kind, index):
            if self._has_room_for(EVENT_OVERHEAD + len(text)):
                self._add_tokens(request_id, text, seq, count, kind, index)
                return
            self._has_room.clear()
            await self._has_room.wait()

    def put_part_nowait(
        self, kind: str, request_id: str, text: str, seq: int, count: int, index: int = 0
    ) -> None:
        """``put_part`` without waiting for room: for a replay, which must go in at once (it is
        bounded by the log it comes from)."""
        kind = _KIND_NAMES[kind]
        if not self._merge(request_id, text, seq, count, kind, index):
            self._add_tokens(request_id, text, seq, count, kind, index)

    async def put_waiting(self, event: pb.ServerEvent) -> None:
        """Queue a part that merges with nothing (a ToolCallStart), waiting for room like
        ``put_part``; later parts of its request do not merge into earlier ones."""
        size = _size(event)
        while not self._has_room_for(size):
            self._has_room.clear()
            await self._has_room.wait()
        self.put(event)

    def offer(self, event: pb.ServerEvent) -> bool:
        """Queue any event without waiting; False (nothing queued) if it would pass max_bytes
        (an empty queue takes any one event: one too large for the bound is the sender's to
        refuse, and a terminal event's size is bounded by the settings)."""
        kind = event.WhichOneof("event")
        if kind not in _CHUNKED:
            if (
                self._max_bytes is not None
                and self._length
                and self.bytes + _size(event) > self._max_bytes
            ):
                return False
            self.put(event)
            return True
        part = getattr(event, kind)
        text = part.chunk
        if (
            self._max_bytes is not None
            and self.bytes + EVENT_OVERHEAD + len(text) > self._max_bytes
        ):
            return False
        assert kind is not None
        index = part.index if kind == TOOL_ARGS else 0
        kind = _KIND_NAMES[kind]
        if not self._merge(part.request_id, text, part.seq, part.count, kind, index):
            self._add_tokens(part.request_id, text, part.seq, part.count, kind, index)
        return True

    def clear(self) -> None:
        """Drop everything queued."""
        self._events.clear()
        self._control.clear()
        self._queued.clear()
        self._length = 0
        self._waiting.clear()
        self.bytes = 0
        self._has_room.set()
        self._empty.set()

    async def drained(self) -> None:
        """Until the queue is empty (every event taken by ``get``)."""
        await self._empty.wait()

    def wake(self) -> None:
        """Make a waiting ``get`` return None, so its caller can look at its own state again."""
        self._has_events.set()

    async def get_batch(self, limit: int, max_size: int | None = None) -> list[pb.ServerEvent]:
        """Up to ``limit`` of the next events (control first), waiting for one if the queue is
        empty; an empty list if woken by ``wake``. With ``max_size`` the batch takes no further
        event once what it holds counts that much (text plus EVENT_OVERHEAD per event; its first
        event always)."""
        first = await self.get()
        if first is None:
            return []
        batch = [first]
        if max_size is None:
            while self._length and len(batch) < limit:
                batch.append(self.get_nowait())
            return batch
        size = _size(first)
        while self._length and len(batch) < limit:
            size += _size(self._control[0] if self._control else self._events[0])
            if size > max_size:
                break
            batch.append(self.get_nowait())
        return batch

    def get_nowait(self) -> pb.ServerEvent:
        """The next event (control first, then the oldest); the queue must not be empty."""
        if self._control:
            event = self._control.popleft()
            self.bytes -= _size(event)
        else:
            item = self._events.popleft()
            self.bytes -= _size(item)
            if isinstance(item, _Tokens):
                request_id = item.request_id
                if self._waiting.get(request_id) is item:
                    del self._waiting[request_id]
                event = item.event()
            else:
                event = item
                request_id = _request_id(item)
            queued = self._queued
            left = queued[request_id] - 1
            if left:
                queued[request_id] = left
            else:
                del queued[request_id]
        self._length -= 1
        self._has_room.set()  # waiters look again: an event or some bytes left
        if not self._length:
            self._empty.set()
        return event

    async def get(self) -> pb.ServerEvent | None:
        """The next event, waiting for one if the queue is empty; None if woken by ``wake``."""
        if not self._length:
            self._has_events.clear()
            await self._has_events.wait()
            if not self._length:
                return None
        return self.get_nowait()
