"""The generator's copy of its resumable logs in Redis (``redis_url``), and its end of the
control channel (key layout and messages: ``aistream/durable.py``).

The generator that runs a resumable generation is its *owner*: it logs every event in memory as
it is made (``followers.py``), and with ``redis_url`` this module copies the logs to Redis, so a
bridge on any node can replay one and follow it live. Nothing here is on the hot path: a
generation only marks its log dirty (a dict entry, ``mark``); one writer task ships what every
dirty log gained since its last cycle — one entry per log, all of them in one call of a Lua
script (``_APPEND``), at most every ``SPACING`` s — so the writer's cost is a few µs per log per
cycle, and under load a cycle carries several events per entry.

Redis going away never touches a live stream: its events still go to the bridge that asked for
it (gRPC) and into the memory log. The writer notes the outage, waits for Redis to answer again,
and then *resyncs*: for every log it still holds (running, or ended within retention) it reads
the last entry Redis has and appends what is missing from memory — the whole log, meta included,
if Redis lost it (a restart without persistence). Entry ids are positions, so a resync that
repeats an entry cannot make a reader see an event twice. Redis losing data without an error
seen here (a restart between two writes) shows as the process's liveness key gone, or as an
append to a log that no longer exists (``NOMKSTREAM`` returns nothing): both mean a resync.

Control messages (cancel, lease, release) come on the process's channel and go to
``Resumables``; the liveness key ``ais:node:{id}`` tells readers the owner still runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import struct
from collections.abc import Callable
from typing import Any

from aistream import durable
from aistream.collector import release
from aistream.redis_client import REDIS_ERRORS, client, retry_delays
from aistream.resume import EventLog, LogStore
from aistream.settings import Settings
from aistream.v1 import events_pb2 as pb

__all__ = ["SPACING", "RedisLog", "encode"]

log = logging.getLogger(__name__)

SPACING = 0.01
"""Least seconds between two write cycles (a follower on another bridge sees events this much
later at most, plus a round trip)."""
_PER_PIPELINE = 256  # logs per pipeline: a resync of thousands goes in slices
_ALIVE_EVERY = 3.0  # seconds between renewals of the liveness key
_ALIVE_FOR_MS = 10_000  # its time to live: a dead owner is seen within this


_APPEND = """
local blob = ARGV[1]
local pos = 1
local out = {}
while pos <= #blob do
  local flags, log, meta, id, entry, digest, owner, request, ttl, last, end_ttl
  flags, log, meta, id, entry, digest, owner, request, ttl, last, end_ttl, pos = struct.unpack(
    '>BI2c0I2c0I2c0I4c0I2c0I2c0I2c0I4I4I4', blob, pos)
  local r
  if flags % 2 == 1 then
    redis.pcall('HSET', meta, 'd', digest, 'o', owner, 'r', request)
    r = redis.pcall('XADD', log, id, 'e', entry)
    redis.pcall('EXPIRE', meta, ttl)
    redis.pcall('EXPIRE', log, ttl)
  else
    r = redis.pcall('XADD', log, 'NOMKSTREAM', id, 'e', entry)
  end
  local status
  if type(r) == 'table' and r.err then
    if string.find(r.err, 'equal or smaller', 1, true) then status = '1' else status = 'E' end
  elseif r then
    status = '1'
  else
    status = '0'
  end
  if flags >= 2 and status == '1' then
    redis.pcall('HSET', meta, 'e', last)
    redis.pcall('EXPIRE', meta, end_ttl)
    redis.pcall('EXPIRE', log, end_ttl)
  end
  out[#out + 1] = status
end
return table.concat(out)
"""
"""Write one cycle of every log, in one command with one argument (``_write``'s, one after the
other): a log's new entry; for a new log (``NEW``) its meta hash first and the log made, both
expiring after ``ttl``; for one that ended (``ENDED``) the terminal's position ``last`` in its
meta and both keys expiring after ``end_ttl``. A command per log (or per key) cost the writer
several times the CPU, a reply to parse each. Per log one character: ``1`` appended (or already
there: a repeat), ``0`` the log is gone (``NOMKSTREAM``), ``E`` refused."""

NEW, ENDED = 1, 2

_HEAD = struct.Struct(">BH")
_SHORT = struct.Struct(">H")
_LONG = struct.Struct(">I")
_TAIL = struct.Struct(">III")
_STATUS: dict[str, Any] = {"1": 1, "0": 0, "E": "refused (see the Redis log: out of memory?)"}


def _write(
    flags: int,
    key: str,
    entry_id: str,
    entry: bytes,
    meta: tuple[bytes, str, str] = (b"", "", ""),
    ttl: int = 0,
    last: int = 0,
    end_ttl: int = 0,
) -> bytes:
    """One log's part of ``_APPEND``'s argument: its keys, the entry and what goes with it
    (``meta``: the digest, owner and request id of a new log)."""
    log_key = durable.log_key(key).encode()
    meta_key = durable.meta_key(key).encode()
    ident = entry_id.encode()
    digest, owner, request = meta[0], meta[1].encode(), meta[2].encode()
    return b"".join(
        (
            _HEAD.pack(flags, len(log_key)),
            log_key,
            _SHORT.pack(len(meta_key)),
            meta_key,
            _SHORT.pack(len(ident)),
            ident,
            _LONG.pack(len(entry)),
            entry,
            _SHORT.pack(len(digest)),
            digest,
            _SHORT.pack(len(owner)),
            owner,
            _SHORT.pack(len(request)),
            request,
            _TAIL.pack(ttl, last, end_ttl),
        )
    )


_EVENT_FIELD = {"token": 0x12, "reasoning": 0x2A, "tool_args": 0x3A, "refusal": 0x42}
"""The tag of each part kind's field in ``ServerEvent`` (field number << 3 | length-delimited:
token 2, reasoning 5, tool_args 7, refusal 8 — proto/aistream/v1/events.proto)."""


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _part(kind: str, text: str, seq: int, count: int, index: int) -> bytes:
    """A part as one ``ServerEventBatch.events`` element, written directly (building a message
    per token and serializing it cost ~3× as much): its body is a Token, Reasoning, Refusal or
    ToolArgs — chunk 2, seq 3, count 4, index 5 (tool arguments), no request id."""
    chunk = text.encode()
    body = b"".join(
        (
            b"\x12",
            _varint(len(chunk)),
            chunk,
            b"\x18",
            _varint(seq),
            b"\x20",
            _varint(count),
            b"\x28" + _varint(index) if index else b"",
        )
    )
    event = b"".join((bytes((_EVENT_FIELD[kind],)), _varint(len(body)), body))
    return b"".join((b"\x0a", _varint(len(event)), event))


def encode(items: list[Any]) -> bytes:
    """A log entry: the logged items (parts as tuples, other events as messages) as one
    ``ServerEventBatch``, each event whole (a reader may hold positions up to any of them)."""
    out = []
    for item in items:
        if isinstance(item, pb.ServerEvent):
            data = item.SerializeToString()
            out.append(b"\x0a" + _varint(len(data)) + data)
        else:  # (a followers.Part)
            out.append(_part(*item))
    return b"".join(out)


class RedisLog:
    """Copies a process's resumable logs to Redis and hears control messages for them."""

    def __init__(
        self,
        settings: Settings,
        store: LogStore[Any],
        on_control: Callable[[durable.Control], None],
        node: str | None = None,
    ) -> None:
        assert settings.redis_url is not None
        self.node = node or secrets.token_hex(8)
        """This process's id among owners (what readers and cancels address)."""
        self._url = settings.redis_url
        self._store = store
        self._on_control = on_control
        self._retention = settings.resume_retention
        # A running log's keys outlive any generation (deadline, then retention), so a log
        # whose owner died mid-way still goes in the end.
        self._running_ttl = int(settings.max_deadline + settings.resume_retention) + 60
        self._redis = client(self._url)
        self._listener = client(self._url, blocking=True)  # (pub/sub)
        self._dirty: dict[str, EventLog[Any]] = {}
        self._written: dict[str, int] = {}
        """Log key → how many of its events Redis holds (running logs; an ended log, once
        shipped whole, leaves)."""
        self._wake = asyncio.Event()
        self._lost = False
        """Redis lost (or may have lost) what was written: resync every log before the next
        cycle."""
        self._down = False
        self._refused: set[str] = set()
        """Logs whose last append Redis refused (logged once until one succeeds)."""
        self._tasks: list[asyncio.Task[None]] = []
        self.shipped = 0
        """Entries appended."""
        self.resyncs = 0
        """Times every held log was checked against Redis (after an outage or a loss)."""

    def mark(self, event_log: EventLog[Any]) -> None:
        """``event_log`` gained an event (or ended, or was dropped): ship it next cycle."""
        self._dirty[event_log.key] = event_log
        self._wake.set()

    async def start(self) -> None:
        """Start the writer, the control listener and the liveness renewal (Redis may be
        away: they wait for it)."""
        for work, name in (
            (self._write_loop(), "redis log writer"),
            (self._listen(), "redis control listener"),
            (self._stay_alive(), "redis liveness"),
        ):
            task = asyncio.create_task(work, name=name)
            task.add_done_callback(release)
            self._tasks.append(task)

    async def close(self, timeout: float = 1.0) -> None:
        """Ship what is still dirty (the last terminals: at most ``timeout`` s), say this owner
        is gone, and stop."""
        if self._dirty and not self._down:
            with contextlib.suppress(*REDIS_ERRORS, TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._ship(list(self._dirty.values()))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(*REDIS_ERRORS, TimeoutError):
            async with asyncio.timeout(timeout):
                await self._redis.delete(durable.node_key(self.node))
        await self._redis.aclose()
        await self._listener.aclose()

    # --- writing --------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                if self._lost:
                    await self._resync()
                dirty, self._dirty = self._dirty, {}
                try:
                    await self._ship(list(dirty.values()))
                except BaseException:
                    dirty.update(self._dirty)  # (nothing is lost: memory has every event)
                    self._dirty = dirty
                    raise
            except REDIS_ERRORS as exc:
                await self._outage(exc)
                continue
            await asyncio.sleep(SPACING)

    async def _outage(self, exc: BaseException) -> None:
        """Redis did not answer: wait until it does, then resync (what was written meanwhile
        failed; Redis may even have restarted empty)."""
        log.warning("redis unavailable (%r): resumes answer unavailable until it is back", exc)
        self._down = True
        for delay in retry_delays():
            await asyncio.sleep(delay)
            try:
                await self._redis.ping()
                break
            except REDIS_ERRORS:
                continue
        log.info("redis is back: copying the logs it missed")
        self._down = False
        self._lost = True
        self._wake.set()

    async def _ship(self, logs: list[EventLog[Any]]) -> None:
        for i in range(0, len(logs), _PER_PIPELINE):
            await self._ship_slice(logs[i : i + _PER_PIPELINE])

    async def _ship_slice(self, logs: list[EventLog[Any]]) -> None:
        """One command (``_APPEND``): what each log gained since Redis last got it — with a new
        log's meta, and an ended log's end."""
        writes: list[bytes] = []
        shipped: list[tuple[EventLog[Any], int]] = []
        gone: list[str] = []
        now = asyncio.get_running_loop().time()
        for event_log in logs:
            key = event_log.key
            if not self._store.holds(event_log):  # over the byte budget: no longer resumable
                gone += (durable.log_key(key), durable.meta_key(key))
                self._written.pop(key, None)
                continue
            start = self._written.get(key, 0)
            items = event_log.since(start)
            if not items:
                continue
            last = event_log.next_seq - 1
            flags, meta, end_ttl = 0, (b"", "", ""), 0
            if start == 0:  # a new log (or one Redis lost): its meta too
                flags = NEW
                meta = (event_log.digest, self.node, event_log.request_id)
            if event_log.ended_at is not None:
                flags |= ENDED
                end_ttl = max(1, round(self._retention - (now - event_log.ended_at)))
            entry = encode(items)
            ident = durable.entry_id(last)
            writes.append(_write(flags, key, ident, entry, meta, self._running_ttl, last, end_ttl))
            shipped.append((event_log, start + len(items)))
        if gone:
            await self._redis.delete(*gone)
        if not writes:
            return
        answer = await self._redis.eval(_APPEND, 0, b"".join(writes))
        for (event_log, written), char in zip(shipped, answer.decode(), strict=True):
            self._shipped(event_log, written, _STATUS[char])

    def _shipped(self, event_log: EventLog[Any], written: int, status: Any) -> None:
        """What Redis answered to one log's entry (1: appended; 0: the log is gone; else why it
        was refused): note it, or try again."""
        if status == 0:  # NOMKSTREAM: Redis no longer has this log
            self._lost = True
            self._wake.set()
            return
        if status != 1:
            # Refused (out of memory under noeviction, say): the same events go again next
            # cycle, in the next entry — never a gap in the log.
            if event_log.key not in self._refused:
                log.error("redis refused an entry of log %s: %s", event_log.key, status)
                self._refused.add(event_log.key)
            self._dirty[event_log.key] = event_log
            self._wake.set()
            return
        self._refused.discard(event_log.key)
        self.shipped += 1
        if event_log.ended:
            self._written.pop(event_log.key, None)
        else:
            self._written[event_log.key] = written

    async def _resync(self) -> None:
        """Bring Redis up to every held log: read the last entry of each, append the rest."""
        self._lost = False
        self.resyncs += 1
        held = self._store.held()
        for i in range(0, len(held), _PER_PIPELINE):
            part = held[i : i + _PER_PIPELINE]
            pipe = self._redis.pipeline(transaction=False)
            for event_log in part:
                pipe.xrevrange(durable.log_key(event_log.key), count=1)
            lasts = await pipe.execute()
            for event_log, last in zip(part, lasts, strict=True):
                # (none: Redis lost it, meta and all)
                written = event_log.index_after(durable.last_position(last[0][0])) if last else 0
                self._written[event_log.key] = written
                if written < len(event_log):
                    self._dirty[event_log.key] = event_log
                elif event_log.ended:
                    self._written.pop(event_log.key, None)
        log.info("redis resync: %d logs checked, %d to copy", len(held), len(self._dirty))

    # --- control and liveness -------------------------------------------------------------------

    async def _listen(self) -> None:
        """Hear control messages for this owner's generations, whatever Redis does (the client
        subscribes again after a reconnect; messages sent while it was away are lost, which is
        why a canceller repeats itself until the generation ends)."""
        channel = durable.control_channel(self.node)
        pubsub = self._listener.pubsub(ignore_subscribe_messages=True)
        delays = retry_delays()
        try:
            while True:
                try:
                    await pubsub.subscribe(channel)
                    delays = retry_delays()
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=None
                        )
                        if message is None or message.get("type") != "message":
                            continue
                        parsed = durable.parse_control(message["data"])
                        if parsed is not None:
                            self._on_control(parsed)
                except REDIS_ERRORS as exc:
                    log.debug("control channel: %r", exc)
                    await asyncio.sleep(next(delays))
        finally:
            with contextlib.suppress(*REDIS_ERRORS):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _stay_alive(self) -> None:
        """Renew this owner's liveness key; finding it gone means Redis lost data: resync."""
        key = durable.node_key(self.node)
        first = True
        while True:
            try:
                renewed = await self._redis.set(key, b"1", px=_ALIVE_FOR_MS, xx=not first)
                if not renewed:
                    if not first:
                        log.warning("redis lost this node's keys (restarted?): copying the logs")
                        self._lost = True
                        self._wake.set()
                    await self._redis.set(key, b"1", px=_ALIVE_FOR_MS)
                first = False
            except REDIS_ERRORS as exc:
                log.debug("liveness: %r", exc)
            await asyncio.sleep(_ALIVE_EVERY)
