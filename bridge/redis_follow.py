"""Resumes from Redis (``redis_url``): a bridge follows a resumable generation whichever
generator runs it, from the log its owner copies there (layout: ``aistream/durable.py``).

A resume (``ai:resume``) checks the token against the generation's meta hash, replays the log
after the client's ``afterSeq`` with ``XRANGE``, and hands the follow to the bridge's one
*tailer*: a task with a connection of its own that waits, in one ``XREAD BLOCK``, on every log
this bridge follows, each from the last position its readers hold. Entries appended between the
replay and the tailer's next read have ids past that position, so they come exactly once; a
reader drops by position anything it already holds (an owner's re-append after an outage), so
nothing is shown twice. The terminal event is the log's last entry: a follow ends when it
arrives — no separate "done" message that could be lost.

What a follower does at the owner, it does over Redis pub/sub, on the owner's control channel:
``attach`` (a lease, renewed every third of ``LEASE_SECONDS`` while it follows, so the
generation is not cancelled at the end of its grace), ``detach`` (its client went), ``cancel``
(its client cancelled: sent again until it is heard — pub/sub loses what a reconnecting owner
misses — and the generation's own terminal then comes through the log, as for any cancel).

Faults. Redis unreachable: a resume answers ``unavailable`` (retryable, with ``retryAfterMs``)
at once; followers already tailing wait for it a moment (``OUTAGE_GRACE``) and then end with
``unavailable`` too, to resume again once it is back. An owner that died (its liveness key gone
on two checks apart) can never end its log: its followers end with ``unavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import Coroutine
from typing import Any

from aistream import codes, durable
from aistream.bridge.link import Receiver
from aistream.collector import release
from aistream.redis_client import REDIS_ERRORS, Entry, client, entries, retry_delays
from aistream.resume import split
from aistream.settings import Settings
from aistream.v1 import events_pb2 as pb

__all__ = ["OUTAGE_GRACE", "RedisFollows"]

log = logging.getLogger(__name__)

OUTAGE_GRACE = 2.0
"""Seconds followers wait for an unreachable Redis before they end with ``unavailable``."""
_REPLAY_COUNT = 512  # entries per XRANGE of a replay
_OPEN_SLICE = 256  # resumes opened per pipeline
_TAIL_COUNT = 256  # entries per log per XREAD
_TAIL_BLOCK_MS = 250  # longest XREAD wait (a new follow also wakes it: CLIENT UNBLOCK)
_TAIL_SPACING = 0.01  # least seconds between two reads that found entries
_OWNER_CHECK = 4.0  # a silent log's owner is looked for this often; gone twice: it died
_CANCEL_FOR = 5.0  # seconds a cancel is sent again until the owner hears it
_RETRY_AFTER_MS = 1000  # the hint of an unavailable resume
_TERMINAL = frozenset({"done", "error"})


class _Follow:
    """One request a connection follows from Redis."""

    __slots__ = ("cancel_asked", "key", "owner", "position", "receiver", "request_id", "wire_id")

    def __init__(self, receiver: Receiver, request_id: str, wire_id: str, position: int) -> None:
        self.receiver = receiver
        self.request_id = request_id
        self.wire_id = wire_id
        self.position = position
        """The last position its client holds."""
        self.key = ""  # (known once the token is checked)
        self.owner = ""
        self.cancel_asked = False


class RedisFollows:
    """The bridge's follows of resumable generations through Redis."""

    def __init__(self, settings: Settings) -> None:
        assert settings.redis_url is not None
        self._redis = client(settings.redis_url)
        self._tail_client = client(settings.redis_url, blocking=True)
        self._holder = secrets.token_hex(6)
        """This bridge among the lease holders (each follow adds its own wire id)."""
        self._ids = itertools.count(1)
        self._follows: dict[str, _Follow] = {}
        """Wire id → follow, from ``resume`` until it ends, is detached or cancelled."""
        self._tailed: dict[str, list[_Follow]] = {}
        """Log key → the follows the tailer reads it for."""
        self._silent_since: dict[str, float] = {}
        self._suspects: dict[str, float] = {}  # owner → when first found gone
        self._opening: list[tuple[_Follow, str, str]] = []
        """Resumes waiting to be opened: (follow, token, the request id it must name)."""
        self._has_opening = asyncio.Event()
        self._has_work = asyncio.Event()
        self._tail_id: int | None = None
        self._blocked = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self.replayed = 0
        """Log entries replayed to resuming clients."""

    def __len__(self) -> int:
        return len(self._follows)

    async def start(self) -> None:
        """Start the tailer and the lease renewal."""
        for work, name in (
            (self._open_loop(), "redis resumes"),
            (self._tail(), "redis tailer"),
            (self._renew(), "redis leases"),
        ):
            task = asyncio.create_task(work, name=name)
            task.add_done_callback(release)
            self._loops.append(task)

    async def close(self) -> None:
        """Stop following (each client's connection is closing: their generations run on)."""
        for follow in list(self._follows.values()):
            self.detach(follow.wire_id)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await asyncio.gather(*self._tasks, return_exceptions=True)
        for task in [*self._loops, *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._loops, *self._tasks, return_exceptions=True)
        await self._redis.aclose()
        await self._tail_client.aclose()

    # --- what a connection asks -----------------------------------------------------------------

    def resume(self, receiver: Receiver, event: pb.ClientEvent) -> str:
        """Follow the (validated) resume ``event`` for ``receiver``; the id the connection
        knows the follow by. Events, or the error that refuses it, come to ``receiver``."""
        resume = event.resume
        wire_id = f"redis-{next(self._ids):x}"
        after_seq = resume.after_seq if resume.HasField("after_seq") else -1
        follow = _Follow(receiver, resume.request_id, wire_id, after_seq)
        self._follows[wire_id] = follow
        client_id = resume.client_request_id or resume.request_id
        self._opening.append((follow, resume.resume_token, client_id))
        self._has_opening.set()
        return wire_id

    def cancel(self, wire_id: str, *, forget: bool = True) -> None:
        """The client cancelled (or its connection is going: ``forget``, nothing more is
        delivered): tell the owner, which ends the generation for every reader."""
        follow = self._follows.get(wire_id)
        if follow is None:
            return
        if forget:
            self._drop(follow)
        if follow.cancel_asked:
            return
        follow.cancel_asked = True
        if follow.owner:  # (else the resume is still opening: it sends the cancel once known)
            self._spawn(self._send_cancel(follow), f"cancel {wire_id}")

    def detach(self, wire_id: str) -> None:
        """The client's connection went: stop following, leaving the generation running (its
        grace starts at the owner unless another reader holds it)."""
        follow = self._follows.get(wire_id)
        if follow is None:
            return
        self._drop(follow)
        if follow.owner:
            message = durable.control(durable.DETACH, follow.key, self._lease_of(follow))
            self._spawn(self._publish(follow.owner, message), f"detach {wire_id}")

    # --- opening a follow -----------------------------------------------------------------------

    async def _open_loop(self) -> None:
        """Open the resumes that arrived, a slice at a time: one pipeline reads the meta of
        every one, one more their replay's first page — a burst of a thousand reconnects costs a
        few round trips, not two thousand (nor a connection each)."""
        while True:
            await self._has_opening.wait()
            self._has_opening.clear()
            while self._opening:
                batch = self._opening[:_OPEN_SLICE]
                del self._opening[:_OPEN_SLICE]
                try:
                    await self._open(batch)
                except REDIS_ERRORS as exc:
                    log.warning("resume from redis failed (%d resumes): %r", len(batch), exc)
                    for follow, _, _ in batch:
                        self._refuse(follow, pb.ERROR_CODE_UNAVAILABLE)

    async def _open(self, batch: list[tuple[_Follow, str, str]]) -> None:
        """Check each token against its meta hash, replay what each client lacks, and hand the
        follows that have not ended to the tailer."""
        opened: list[tuple[_Follow, str, str, str]] = []  # (follow, key, secret, request id)
        for follow, token, client_id in batch:
            parts = split(token)
            if parts is None:
                self._refuse(follow, pb.ERROR_CODE_NOT_FOUND)
            else:
                opened.append((follow, parts[0], parts[1], client_id))
        if not opened:
            return
        pipe = self._redis.pipeline(transaction=False)
        for _, key, _, _ in opened:
            pipe.hgetall(durable.meta_key(key))
        metas = await pipe.execute()
        replays: list[tuple[_Follow, durable.Meta]] = []
        for (follow, key, secret, client_id), raw in zip(opened, metas, strict=True):
            meta = durable.parse_meta(raw)
            if meta is None or not meta.opens(secret, client_id):
                self._refuse(follow, pb.ERROR_CODE_NOT_FOUND)
                continue
            follow.key, follow.owner = key, meta.owner
            if follow.cancel_asked:
                self._spawn(self._send_cancel(follow), f"cancel {follow.wire_id}")
            if self._follows.get(follow.wire_id) is follow:  # (not gone meanwhile)
                replays.append((follow, meta))
        if not replays:
            return
        pipe = self._redis.pipeline(transaction=False)
        for follow, meta in replays:
            log_key = durable.log_key(follow.key)
            if meta.end is not None and follow.position >= meta.end:
                terminal = durable.entry_id(meta.end)  # (it holds all: the terminal again)
                pipe.xrange(log_key, min=terminal, max=terminal)
            else:
                after = durable.cursor(follow.position)
                pipe.xrange(log_key, min=f"({after}", count=_REPLAY_COUNT)
        pages = await pipe.execute()
        attach = self._redis.pipeline(transaction=False)
        for (follow, meta), page in zip(replays, pages, strict=True):
            if await self._replay(follow, meta, page):
                lease = durable.control(durable.ATTACH, follow.key, self._lease_of(follow))
                attach.publish(durable.control_channel(follow.owner), lease)
        if attach:
            self._wake_tailer()
            with contextlib.suppress(*REDIS_ERRORS):
                await attach.execute()

    async def _replay(self, follow: _Follow, meta: durable.Meta, page: list[Entry]) -> bool:
        """Deliver the replay that starts with ``page`` (its first XRANGE); then, unless it
        ended, hand the follow to the tailer: whether it did."""
        log_key = durable.log_key(follow.key)
        if meta.end is not None and follow.position >= meta.end:
            if page and self._follows.get(follow.wire_id) is follow:
                self._deliver(follow, page[0][1][durable.FIELD], again=True)
            else:  # (its terminal is gone: never a partial replay)
                self._refuse(follow, pb.ERROR_CODE_NOT_FOUND)
            return False
        while True:
            for _, values in page:
                self.replayed += 1
                if self._deliver(follow, values[durable.FIELD]):
                    return False  # the terminal: it had ended
            if len(page) < _REPLAY_COUNT or self._follows.get(follow.wire_id) is not follow:
                break
            after = page[-1][0].decode()
            page = await entries(self._redis, log_key, f"({after}", count=_REPLAY_COUNT)
        if self._follows.get(follow.wire_id) is not follow:
            return False  # (its connection went, or it was cancelled, during the replay)
        if meta.end is not None:  # ended, yet the replay did not reach its terminal: lost
            self._refuse(follow, pb.ERROR_CODE_NOT_FOUND)
            return False
        self._tailed.setdefault(follow.key, []).append(follow)
        self._silent_since.setdefault(follow.key, asyncio.get_running_loop().time())
        return True

    def _refuse(self, follow: _Follow, code: codes.Code) -> None:
        """End ``follow`` with ``not_found`` (the same for every reason) or ``unavailable``."""
        if self._follows.get(follow.wire_id) is not follow:
            return  # (ended, detached or cancelled already)
        self._drop(follow)
        if code == pb.ERROR_CODE_NOT_FOUND:
            error = codes.error_event(code, "no such generation to resume", follow.request_id)
        else:
            error = codes.error_event(
                code,
                "resume is unavailable for now (the shared log cannot be reached); try again",
                follow.request_id,
                retry_after_ms=_RETRY_AFTER_MS,
            )
        follow.receiver.deliver(follow.request_id, error)

    def _deliver(self, follow: _Follow, data: bytes, *, again: bool = False) -> bool:
        """The events of one log entry the client does not hold yet (``again``: its last, the
        terminal, even so); whether the follow ended."""
        events = pb.ServerEventBatch.FromString(data).events
        for event in events[-1:] if again else events:
            last = durable.span(event)[1]
            if last <= follow.position and not again:
                continue
            follow.position = last
            kind = event.WhichOneof("event")
            assert kind is not None
            getattr(event, kind).request_id = follow.request_id
            if kind in _TERMINAL:
                self._drop(follow)  # (before: the connection's end cancels what it follows)
                follow.receiver.deliver(follow.request_id, event)
                return True
            follow.receiver.deliver(follow.request_id, event)
        return False

    def _drop(self, follow: _Follow) -> None:
        """Forget ``follow``: nothing more is read or delivered for it."""
        self._follows.pop(follow.wire_id, None)
        readers = self._tailed.get(follow.key, [])
        if follow in readers:
            readers.remove(follow)
            if not readers:
                del self._tailed[follow.key]
                self._silent_since.pop(follow.key, None)

    # --- the tailer -----------------------------------------------------------------------------

    def _wake_tailer(self) -> None:
        self._has_work.set()
        if self._blocked and self._tail_id is not None:
            self._spawn(self._unblock(self._tail_id), "unblock tailer")

    async def _unblock(self, client_id: int) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            await self._redis.client_unblock(client_id)

    async def _tail(self) -> None:
        """Read every followed log from where its readers are, and deliver."""
        loop = asyncio.get_running_loop()
        failing_since: float | None = None
        delays = retry_delays()
        next_check = loop.time() + _OWNER_CHECK
        while True:
            if not self._tailed:
                self._has_work.clear()
                await self._has_work.wait()
                continue
            streams: dict[Any, Any] = {}
            for key, readers in self._tailed.items():
                streams[durable.log_key(key)] = durable.cursor(min(f.position for f in readers))
            try:
                if self._tail_id is None:
                    self._tail_id = await self._tail_client.client_id()
                self._blocked = True
                try:
                    result = await self._tail_client.xread(
                        streams, count=_TAIL_COUNT, block=_TAIL_BLOCK_MS
                    )
                finally:
                    self._blocked = False
                failing_since, delays = None, retry_delays()
            except REDIS_ERRORS as exc:
                self._tail_id = None
                now = loop.time()
                if failing_since is None:
                    failing_since = now
                    log.warning("redis unavailable to the tailer: %r", exc)
                elif now - failing_since > OUTAGE_GRACE:
                    self._end_tailed(None, "the shared log cannot be reached; resume again")
                await asyncio.sleep(next(delays))
                continue
            now = loop.time()
            for name, got in _streams(result):
                key = _key_of(name)
                if key not in self._tailed:
                    continue
                self._silent_since[key] = now
                for _entry, values in got:
                    data = values[durable.FIELD]
                    for follow in list(self._tailed.get(key, ())):
                        self._deliver(follow, data)
            if now >= next_check:
                next_check = now + _OWNER_CHECK
                await self._check_owners(now)
            if result:
                # Let entries gather before the next read: each read names every followed log,
                # so reading as fast as entries come would cost O(logs) per entry.
                await asyncio.sleep(_TAIL_SPACING)

    async def _check_owners(self, now: float) -> None:
        """End the follows of logs silent for a while whose owner is gone (twice: a restarted
        Redis loses the liveness key until the owner renews it)."""
        owners: dict[str, list[str]] = {}
        for key, since in self._silent_since.items():
            if now - since >= _OWNER_CHECK and self._tailed.get(key):
                owners.setdefault(self._tailed[key][0].owner, []).append(key)
        if not owners:
            self._suspects.clear()
            return
        try:
            pipe = self._redis.pipeline(transaction=False)
            for owner in owners:
                pipe.exists(durable.node_key(owner))
            alive = await pipe.execute()
        except REDIS_ERRORS:
            return  # (the tailer sees an outage on its own)
        for (owner, keys), present in zip(owners.items(), alive, strict=True):
            if present:
                self._suspects.pop(owner, None)
            elif owner not in self._suspects:
                self._suspects[owner] = now
            else:
                del self._suspects[owner]
                for key in keys:
                    self._end_tailed(key, "the generator running it is gone")

    def _end_tailed(self, key: str | None, message: str) -> None:
        """End the follows of ``key`` (None: all) with ``unavailable`` (retryable)."""
        keys = list(self._tailed) if key is None else [key]
        for each in keys:
            for follow in list(self._tailed.get(each, ())):
                self._drop(follow)
                error = codes.error_event(
                    pb.ERROR_CODE_UNAVAILABLE,
                    message,
                    follow.request_id,
                    retry_after_ms=_RETRY_AFTER_MS,
                )
                follow.receiver.deliver(follow.request_id, error)

    # --- talking to owners ----------------------------------------------------------------------

    def _lease_of(self, follow: _Follow) -> str:
        return f"{self._holder}.{follow.wire_id}"

    async def _renew(self) -> None:
        """Renew the lease of every follow being tailed, a third of its life before it lapses."""
        while True:
            await asyncio.sleep(durable.LEASE_SECONDS / 3)
            follows = [f for readers in self._tailed.values() for f in readers]
            if not follows:
                continue
            pipe = self._redis.pipeline(transaction=False)
            for follow in follows:
                message = durable.control(durable.ATTACH, follow.key, self._lease_of(follow))
                pipe.publish(durable.control_channel(follow.owner), message)
            with contextlib.suppress(*REDIS_ERRORS):
                await pipe.execute()

    async def _publish(self, owner: str, message: str) -> int:
        """Send ``message`` to ``owner``; how many heard it (0 if Redis is away)."""
        try:
            heard: int = await self._redis.publish(durable.control_channel(owner), message)
            return heard
        except REDIS_ERRORS as exc:
            log.debug("publish to %s failed: %r", owner, exc)
            return 0

    async def _send_cancel(self, follow: _Follow) -> None:
        """Tell the owner to cancel, again until it hears it (or ``_CANCEL_FOR`` passes)."""
        message = durable.control(durable.CANCEL, follow.key)
        loop = asyncio.get_running_loop()
        until = loop.time() + _CANCEL_FOR
        delays = retry_delays()
        while not await self._publish(follow.owner, message) and loop.time() < until:  # noqa: ASYNC110 (polls Redis, not a flag)
            await asyncio.sleep(next(delays))
        log.info("cancel sent to owner=%s key=%s", follow.owner, follow.key)

    def _spawn(self, work: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _streams(result: Any) -> list[tuple[Any, list[Any]]]:
    """XREAD's answer as (stream, entries) pairs, RESP3 (a map) or RESP2 (a list) alike."""
    if not result:
        return []
    if isinstance(result, dict):
        return [
            (name, value[0] if value and isinstance(value[0], list) else value)
            for name, value in result.items()
        ]
    return [(name, entries) for name, entries in result]


def _key_of(stream: bytes | str) -> str:
    """The log key of a stream's name (``ais:{key}:log``)."""
    name = stream.decode() if isinstance(stream, bytes) else stream
    return name[name.index("{") + 1 : name.index("}")]
