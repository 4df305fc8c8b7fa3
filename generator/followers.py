"""The readers of a resumable generation, and its log.

A plain generation writes its events to the outbox of the one call that asked for it. A
resumable one writes them to a ``Relay`` instead — the same calls (``put``, ``put_part``,
``put_waiting``, ``full``), so ``generation.py`` does not know how many read it:

* every event goes into the generation's ``EventLog`` (``aistream/resume.py``) at its position,
  as it is made — before any outbox merges it, so a client's ``afterSeq`` always ends a logged
  event and a replay never has to cut one;
* then to each *follower*: an outbox and the id that follower knows the request by (the call
  that asked for it, and every call that resumed it since; a second tab is a second follower).

``follow`` replays the log after a position into a new follower's outbox and adds it, in one
step of the loop, with no ``await`` between: every event made before it is in the replay, every
one after goes to it live — no gap, no duplicate. With no follower left the generation runs on
into its log alone (the service's grace timer decides how long).

A part is logged as a tuple (kind, text, seq, tokens, call), not a message: building a
``ServerEvent`` per token would cost the hot path; a replay builds them, merged by the outbox.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from aistream import codes, durable
from aistream.generator.generation import Generation
from aistream.outbox import Outbox
from aistream.resume import EventLog, LogStore, Minted, mint
from aistream.settings import Settings
from aistream.v1 import events_pb2 as pb

if TYPE_CHECKING:
    from aistream.generator.redis_log import RedisLog

__all__ = ["Follower", "Logged", "Part", "Relay", "Resumables", "replay"]

log = logging.getLogger(__name__)

EVENT_OVERHEAD = 64
"""Bytes counted per logged event on top of its text."""


class Part(NamedTuple):
    """A logged part: what ``Outbox.put_part`` takes."""

    kind: str
    text: str
    seq: int
    tokens: int
    """(The part's ``count``: a tuple's own ``count`` is a method.)"""
    call: int
    """(The tool call's ``index``, for tool-call arguments.)"""


Logged = Part | pb.ServerEvent
"""What a log holds: parts, and the other events (start, tool-call starts, the terminal) with
no request id (each follower's is set as it is sent)."""


class Follower(NamedTuple):
    """A reader of the generation: an outbox, the request id it knows it by, and the map its
    call keeps of what it follows (the entry goes when the generation ends)."""

    outbox: Outbox
    request_id: str
    following: dict[str, str] | None = None


def _named(event: pb.ServerEvent, request_id: str) -> pb.ServerEvent:
    """A copy of ``event`` under ``request_id``."""
    copy = pb.ServerEvent()
    copy.CopyFrom(event)
    kind = copy.WhichOneof("event")
    assert kind is not None
    getattr(copy, kind).request_id = request_id
    return copy


def _anonymous(event: pb.ServerEvent) -> pb.ServerEvent:
    return _named(event, "")


def _size(event: pb.ServerEvent) -> int:
    return EVENT_OVERHEAD + event.ByteSize()


class Relay:
    """What a resumable generation writes to: its log, then each follower."""

    __slots__ = ("_clock", "_followers", "_log", "_replica", "_store", "logging")

    def __init__(
        self,
        log: EventLog[Logged],
        store: LogStore[Logged],
        clock: Callable[[], float],
        first: Follower | None = None,
        replica: RedisLog | None = None,
    ) -> None:
        """``clock``: the loop's time (when the log ended); ``replica``: the copy in Redis,
        told of every change."""
        self._log = log
        self._store = store
        self._clock = clock
        self._replica = replica
        self._followers: list[Follower] = [first] if first is not None else []
        self.logging = True
        """False once the log was dropped (over the byte budget): the generation still goes
        to its followers, but can no longer be resumed."""

    @property
    def followers(self) -> int:
        """How many read the generation now."""
        return len(self._followers)

    def followers_list(self) -> list[Follower]:
        """Who reads the generation now."""
        return list(self._followers)

    @property
    def full(self) -> bool:
        """Whether a follower's outbox has no room (the generation then waits, as for one)."""
        followers = self._followers
        if len(followers) == 1:  # (the hot path: one reader)
            return followers[0].outbox.full
        return any(f.outbox.full for f in followers)

    def _record(self, item: Logged, first: int, count: int, size: int) -> None:
        if self.logging:
            if self._store.admit(self._log, size):
                self._log.append(item, first, count, size)
            else:
                self.logging = False  # (and the copy in Redis goes too)
            if self._replica is not None:
                self._replica.mark(self._log)

    def put(self, event: pb.ServerEvent) -> None:
        """A start or a terminal event: logged at its position, then sent to each follower."""
        kind = event.WhichOneof("event")
        body = getattr(event, kind or "start")
        seq = body.seq
        if kind in ("done", "error"):
            if self.logging:
                now = self._clock()
                self._log.end(_anonymous(event), seq, _size(event), now)
                self._store.ended(self._log, now)
                if self._replica is not None:
                    self._replica.mark(self._log)
        else:
            self._record(_anonymous(event), seq, 1, _size(event))
        for follower in self._followers:
            follower.outbox.put(_named(event, follower.request_id))

    async def put_waiting(self, event: pb.ServerEvent) -> None:
        """A part that merges with nothing (a tool call's start)."""
        self._record(_anonymous(event), event.tool_call.seq, 1, _size(event))
        for follower in list(self._followers):
            await follower.outbox.put_waiting(_named(event, follower.request_id))

    async def put_part(
        self, kind: str, request_id: str, text: str, seq: int, count: int, index: int = 0
    ) -> None:
        """A part (``request_id``, the generation's own, is not used: each follower has its
        own)."""
        if self.logging:
            part = Part(kind, text, seq, count, index)
            self._record(part, seq, count, EVENT_OVERHEAD + len(text))
        followers = self._followers
        if len(followers) == 1:  # (the hot path: one reader)
            outbox, follower_id, _ = followers[0]
            await outbox.put_part(kind, follower_id, text, seq, count, index)
            return
        for follower in list(followers):  # (a copy: one may go while another waits for room)
            await follower.outbox.put_part(kind, follower.request_id, text, seq, count, index)

    def follow(
        self,
        outbox: Outbox,
        request_id: str,
        after_seq: int,
        following: dict[str, str] | None = None,
    ) -> None:
        """Replay every event after ``after_seq`` into ``outbox`` under ``request_id``, then
        follow the live ones — in this one step (raises InsideAnEvent, ValueError for a
        position that is not an event's end)."""
        replay(self._log, outbox, request_id, after_seq)
        if not self._log.ended:
            self._followers.append(Follower(outbox, request_id, following))

    def unfollow(self, outbox: Outbox, request_id: str) -> bool:
        """Stop sending to that follower; whether it was one."""
        for i, follower in enumerate(self._followers):
            if follower.outbox is outbox and follower.request_id == request_id:
                del self._followers[i]
                return True
        return False


class _Running(NamedTuple):
    generation: Generation
    relay: Relay
    task: asyncio.Task[None]


class Resumables:
    """Every resumable generation of the process: their logs (``LogStore``; with ``redis_url``
    copied to Redis, ``RedisLog``), the running ones by log key (whatever call asked for them: a
    generation outlives its call), the grace timer of each that nobody follows here, and the
    leases of bridges that follow one from Redis."""

    __slots__ = ("_grace", "_leases", "_running", "_timers", "replica", "store")

    def __init__(self, settings: Settings) -> None:
        self.store: LogStore[Logged] = LogStore(
            settings.resume_retention, settings.resume_max_bytes
        )
        self._grace = settings.resume_grace
        self._running: dict[str, _Running] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._leases: dict[str, dict[str, float]] = {}
        """Log key → holder → until when a bridge following it from Redis holds it."""
        self.replica: RedisLog | None = None
        if settings.redis_url is not None:
            # (imported only then: redis-py, and what it imports, stay out of a process without)
            from aistream.generator.redis_log import RedisLog

            self.replica = RedisLog(settings, self.store, self.control)

    def __len__(self) -> int:
        return len(self._running)

    async def start(self) -> None:
        """Start copying logs to Redis (with ``redis_url``)."""
        if self.replica is not None:
            await self.replica.start()

    def open(self, request_id: str, first: Follower) -> tuple[Minted, Relay]:
        """A new resumable generation's token and relay, ``first`` following it."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.store.sweep(now)
        minted = mint()
        log = self.store.open(request_id, minted, now)
        return minted, Relay(log, self.store, loop.time, first, self.replica)

    def add(self, key: str, generation: Generation, relay: Relay, task: asyncio.Task[None]) -> None:
        """Hold the running generation until it ends (then wake its followers' writers)."""
        self._running[key] = _Running(generation, relay, task)
        task.add_done_callback(lambda _: self._ended(key))

    def _ended(self, key: str) -> None:
        entry = self._running.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._leases.pop(key, None)
        if entry is not None:
            for follower in entry.relay.followers_list():
                if follower.following is not None:
                    follower.following.pop(follower.request_id, None)
                follower.outbox.wake()  # (its call may be waiting only for this one to end)

    def find(self, token: str, request_id: str) -> EventLog[Logged] | None:
        """The log ``token`` opens for ``request_id``, or None (``not_found``)."""
        now = asyncio.get_running_loop().time()
        self.store.sweep(now)
        return self.store.find(token, request_id, now)

    def follow(
        self,
        key: str,
        outbox: Outbox,
        request_id: str,
        after_seq: int,
        following: dict[str, str] | None = None,
    ) -> bool:
        """Replay and follow the running generation ``key`` (``following``: the call's map of
        what it follows, from which the entry goes when the generation ends); False if it is
        not running."""
        entry = self._running.get(key)
        if entry is None:
            return False
        entry.relay.follow(outbox, request_id, after_seq, following)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        return True

    def unfollow(self, key: str, outbox: Outbox, request_id: str) -> None:
        """That follower goes (its call ended, or its client); with none left, the generation
        runs on for the grace, then is cancelled."""
        entry = self._running.get(key)
        if entry is None or not entry.relay.unfollow(outbox, request_id):
            return
        if not entry.relay.followers:
            self._arm(key, self._grace)

    def control(self, message: durable.Control) -> None:
        """A control message from a bridge (over Redis) about a generation this process runs."""
        key = message.key
        if key not in self._running:
            return  # (ended, or another owner's)
        if message.verb == durable.CANCEL:
            log.info("resumable generation cancelled from another bridge key=%s", key)
            self.cancel(key, pb.ERROR_CODE_CANCELLED, "cancelled by the client")
        elif message.verb == durable.ATTACH:
            now = asyncio.get_running_loop().time()
            self._leases.setdefault(key, {})[message.holder] = now + durable.LEASE_SECONDS
        else:  # detach: that bridge's client went; the grace starts now if nobody else reads
            leases = self._leases.get(key)
            if leases is not None:
                leases.pop(message.holder, None)
            if not self._held(key):
                self._arm(key, self._grace)

    def _held(self, key: str) -> bool:
        """Whether someone reads the running generation ``key``: a follower here, or a bridge's
        lease not yet lapsed."""
        entry = self._running.get(key)
        if entry is not None and entry.relay.followers:
            return True
        now = asyncio.get_running_loop().time()
        return any(until > now for until in self._leases.get(key, {}).values())

    def _arm(self, key: str, delay: float) -> None:
        """(Re)start the grace timer of ``key``: it fires in ``delay`` s."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(delay, self._expire, key)

    def _expire(self, key: str) -> None:
        self._timers.pop(key, None)
        entry = self._running.get(key)
        if entry is None or entry.relay.followers:
            return
        leases = self._leases.get(key)
        if leases:
            latest = max(leases.values())
            now = asyncio.get_running_loop().time()
            if latest > now:  # a bridge still follows: the grace counts from its lease's end
                self._arm(key, latest - now + self._grace)
                return
        message = f"nobody resumed it within resume_grace ({self._grace:g} s)"
        log.info("resumable generation cancelled key=%s: %s", key, message)
        self.cancel(key, pb.ERROR_CODE_CANCELLED, message)

    async def close(self) -> None:
        """End every resumable generation still running (the server is shutting down: those
        its calls were following ended with the calls), wait until their upstreams are
        closed, and ship their ends to Redis."""
        entries = list(self._running.items())
        for key, _ in entries:
            self.cancel(key, pb.ERROR_CODE_UNAVAILABLE, "the server is shutting down")
        await _gather([entry.task for _, entry in entries])
        if self.replica is not None:
            await self.replica.close()

    def cancel(self, key: str, code: codes.Code, message: str) -> None:
        """End the running generation ``key`` (for every follower) and close its upstream."""
        entry = self._running.get(key)
        if entry is None:
            return
        entry.generation.end(code, message)
        entry.task.cancel()


async def _gather(tasks: list[asyncio.Task[None]]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)


def replay(log: EventLog[Logged], outbox: Outbox, request_id: str, after_seq: int) -> None:
    """Every logged event after ``after_seq`` into ``outbox`` under ``request_id`` (a log whose
    generation has ended: the replay ends with its terminal — sent again to a client that
    already holds it, so that a resume always ends)."""
    items = log.after(after_seq)
    if not items and log.ended:
        items = log.after(log.next_seq - 2)  # (the terminal alone)
    for item in items:
        if isinstance(item, Part):
            outbox.put_part_nowait(
                item.kind, request_id, item.text, item.seq, item.tokens, item.call
            )
        else:
            outbox.put(_named(item, request_id))
