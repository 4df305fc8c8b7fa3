"""The outbox: the bounded queue of ServerEvents between a stream's generations and its writer.

Memory stays bounded whatever the reader does: at most ``capacity`` events wait, each token
event holding at most ``max_chunk_chars`` characters. When the writer falls behind, tokens for a
request id that still has a token event waiting are appended to that event (its ``count`` grows,
its ``seq`` stays the first token's), so a slow hop receives fewer, larger frames instead of an
ever longer queue; only when that event is full does a generation wait for room.

Start and terminal events are never refused and never wait: each generation puts at most one of
each, so they are bounded by the number of generations. After a terminal event no token of that
id merges into an earlier one; the generation itself stops putting tokens once it has ended.
"""

from __future__ import annotations

import asyncio
from collections import deque

from aistream.v1 import events_pb2 as pb

__all__ = ["Outbox"]


class Outbox:
    """Bounded, coalescing FIFO of ServerEvents for one gRPC stream."""

    __slots__ = ("_capacity", "_events", "_has_events", "_has_room", "_max_chunk", "_waiting")

    def __init__(self, capacity: int, max_chunk_chars: int = 4096) -> None:
        self._capacity = capacity
        self._max_chunk = max_chunk_chars
        self._events: deque[pb.ServerEvent] = deque()
        # request id → its token event still in the queue (appended to while it waits)
        self._waiting: dict[str, pb.ServerEvent] = {}
        self._has_events = asyncio.Event()
        self._has_room = asyncio.Event()
        self._has_room.set()

    def __len__(self) -> int:
        return len(self._events)

    def put(self, event: pb.ServerEvent) -> None:
        """Queue a start or terminal event (never waits)."""
        self._events.append(event)
        self._has_events.set()
        if event.WhichOneof("event") != "token":
            # Anything after this event for its id must not merge into an earlier token.
            request_id = getattr(event, event.WhichOneof("event") or "start").request_id
            self._waiting.pop(request_id, None)

    async def put_token(self, request_id: str, text: str, seq: int, count: int) -> None:
        """Queue ``count`` tokens of ``text`` starting at ``seq``, merging or waiting for room."""
        while True:
            waiting = self._waiting.get(request_id)
            if waiting is not None and len(waiting.token.chunk) + len(text) <= self._max_chunk:
                token = waiting.token
                token.chunk += text
                token.count += count
                return
            if len(self._events) < self._capacity:
                event = pb.ServerEvent(
                    token=pb.Token(request_id=request_id, chunk=text, seq=seq, count=count)
                )
                self._events.append(event)
                self._waiting[request_id] = event
                self._has_events.set()
                if len(self._events) >= self._capacity:
                    self._has_room.clear()
                return
            await self._has_room.wait()

    def wake(self) -> None:
        """Make a waiting ``get`` return None, so its caller can look at its own state again."""
        self._has_events.set()

    async def get(self) -> pb.ServerEvent | None:
        """The oldest event, waiting for one if the queue is empty; None if woken by ``wake``."""
        if not self._events:
            self._has_events.clear()
            await self._has_events.wait()
            if not self._events:
                return None
        event = self._events.popleft()
        if event.WhichOneof("event") == "token":
            request_id = event.token.request_id
            if self._waiting.get(request_id) is event:
                del self._waiting[request_id]
        if len(self._events) < self._capacity:
            self._has_room.set()
        return event
