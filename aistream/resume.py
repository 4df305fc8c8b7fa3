"""Resume tokens and the in-process log of resumable generations (issue 19), without I/O.

Positions. Every event of a generation carries ``seq``; an event that carries ``count`` units
covers positions ``seq … seq + count − 1`` and the next event starts right after, from 0 with no
gap. An ``EventLog`` keeps one generation's events in that order and answers ``after(after_seq)``:
a client's ``afterSeq`` is the last position it holds, which always ends an event it applied, so
the replay is exactly the events whose last position is greater — no gap, no duplicate — found by
bisecting the events' last positions (O(log n + k) on a long log). A position strictly inside an
event cannot come from an honest client and raises ``InsideAnEvent`` rather than replaying a
partial event twice or skipping its start.

Tokens. ``mint`` draws a key (names the log; 128 random bits, lowercase hex) and a secret; the
client holds ``key.secret``. The store keeps only the sha256 digest of the secret, so a memory
dump, a log line or (later) a shared Redis holds nothing that opens a stream; comparing digests
with ``hmac.compare_digest`` keeps the comparison constant-time. Every way a resume can fail — an
unknown key, a malformed token, a wrong secret, another request id, an expired or evicted log —
gives the same ``None``, so a caller cannot tell (nor tell a prober) which it was.

Budget. ``LogStore`` holds every log of the process, each ended one for ``retention`` seconds
after its generation ended, all within ``max_bytes`` (event sizes are the caller's). It evicts
*whole* ended logs, oldest first: trimming a log's head would turn a later resume into a partial
replay, which the protocol forbids — what falls out is ``not_found``. A running log is never
evicted to make room for others; if the log being appended to could not fit even with every ended
log gone, it is dropped (no ended log is given up for it) and its generation stops logging
(``admit`` returns False). The store keeps a running byte total, which the logs it holds update
as they grow, so the per-token check is O(1) amortized (each log is evicted at most once).

Times are ``now: float`` arguments (one monotonic clock, chosen by the caller), so all of this is
tested without sleeping.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = [
    "MAX_TOKEN_CHARS",
    "EventLog",
    "InsideAnEvent",
    "LogStore",
    "Minted",
    "hash_secret",
    "mint",
    "split",
]

E = TypeVar("E")

MAX_TOKEN_CHARS = 128
"""The longest token ``split`` looks at: anything longer is rejected before any other work."""

_KEY_BYTES = 16
_SECRET_BYTES = 24
_SECRET_CHARS = 32  # token_urlsafe(24): 24 bytes in unpadded base64url
_TOKEN = re.compile(rf"([0-9a-f]{{{2 * _KEY_BYTES}}})\.([A-Za-z0-9_-]{{{_SECRET_CHARS}}})")


@dataclass(frozen=True, slots=True)
class Minted:
    """A new resume key and token; only ``key`` and ``digest`` are kept, ``token`` goes to the
    client once (in ``ai:start``)."""

    key: str
    token: str
    digest: bytes


def hash_secret(secret: str) -> bytes:
    """The sha256 of a token's secret part: what the store keeps and compares."""
    return hashlib.sha256(secret.encode()).digest()


def mint() -> Minted:
    """A fresh key (names the log) and token ``key.secret`` (unguessable: 192 random bits)."""
    key = secrets.token_hex(_KEY_BYTES)
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    return Minted(key=key, token=f"{key}.{secret}", digest=hash_secret(secret))


def split(token: str) -> tuple[str, str] | None:
    """``(key, secret)`` of a well-formed token, else None (the input comes from a peer: any
    object, any length, is answered without raising)."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        return None
    match = _TOKEN.fullmatch(token)
    if match is None:
        return None
    return match[1], match[2]


class InsideAnEvent(ValueError):
    """``after_seq`` is strictly inside an event: no client that applied whole events holds it."""


class _Tally:
    """The byte total shared by a store and the logs it holds, so an append updates it in O(1)."""

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0


class EventLog(Generic[E]):
    """The events of one resumable generation, by position, from 0 with no gap.

    Events are opaque to the log. Only what replay needs is kept per event: the event and its
    last position (its first is the previous one's last + 1), so a retained generation costs
    two list slots per event; sizes are summed, never stored one by one (whole logs are evicted).
    """

    __slots__ = (
        "_ends",
        "_events",
        "_tally",
        "bytes",
        "digest",
        "ended_at",
        "key",
        "next_seq",
        "request_id",
    )

    def __init__(self, key: str, digest: bytes, request_id: str) -> None:
        self.key = key
        self.digest = digest
        self.request_id = request_id
        self.next_seq = 0
        """The position the next event must start at."""
        self.bytes = 0
        self.ended_at: float | None = None
        self._events: list[E] = []
        self._ends: list[int] = []
        self._tally: _Tally | None = None

    @property
    def ended(self) -> bool:
        """Whether the terminal event is in: nothing may follow it."""
        return self.ended_at is not None

    def __len__(self) -> int:
        return len(self._events)

    def append(self, event: E, first: int, count: int, size: int) -> None:
        """Add the event covering ``first … first + count − 1``; ValueError if it does not start
        exactly at ``next_seq`` (a gap or an overlap), if ``count`` < 1 or ``size`` < 0, or after
        the end."""
        if self.ended_at is not None:
            raise ValueError(f"log {self.key} has ended; nothing follows its terminal event")
        if first != self.next_seq:
            raise ValueError(f"event starts at {first}, expected {self.next_seq} (gap or overlap)")
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        if size < 0:
            raise ValueError(f"size must not be negative, got {size}")
        self._events.append(event)
        self._ends.append(first + count - 1)
        self.next_seq = first + count
        self.bytes += size
        if self._tally is not None:
            self._tally.bytes += size

    def end(self, event: E, first: int, size: int, now: float) -> None:
        """Add the terminal event (one position) and mark the log ended at ``now``."""
        self.append(event, first, 1, size)
        self.ended_at = now

    def since(self, index: int) -> list[E]:
        """The events from the ``index``-th on (a copy elsewhere has the ones before)."""
        return self._events[index:]

    def index_after(self, position: int) -> int:
        """How many events end at or before ``position`` (the index of the first one past it)."""
        return bisect_right(self._ends, position)

    def after(self, after_seq: int) -> list[E]:
        """Every event whose last position is greater than ``after_seq``, in order (−1: all;
        at or past the last position: none). ``InsideAnEvent`` if ``after_seq`` is inside an
        event; ValueError if it is below −1."""
        if after_seq < -1:
            raise ValueError(f"after_seq must be -1 or more, got {after_seq}")
        ends = self._ends
        i = bisect_right(ends, after_seq)
        if i < len(ends):
            first = ends[i - 1] + 1 if i else 0
            if first <= after_seq:
                raise InsideAnEvent(
                    f"after_seq {after_seq} is inside the event {first}…{ends[i]} of log {self.key}"
                )
        return self._events[i:]


class LogStore(Generic[E]):
    """Every resumable log of the process, within a retention time and a byte budget.

    Logs are found by token (``find``), never listed. Ended logs wait in ``ended`` order (the
    order of the ``ended`` calls, whose ``now`` must not go backwards) for expiry and eviction.
    """

    def __init__(self, retention: float, max_bytes: int) -> None:
        if retention < 0:
            raise ValueError(f"retention must not be negative, got {retention}")
        if max_bytes < 0:
            raise ValueError(f"max_bytes must not be negative, got {max_bytes}")
        self.retention = retention
        self.max_bytes = max_bytes
        self.evicted = 0
        """Ended logs removed to make room (by ``sweep`` or ``admit``)."""
        self.expired = 0
        """Ended logs removed because their retention passed."""
        self.dropped = 0
        """Running logs removed because they could not fit (``admit`` returned False)."""
        self._logs: dict[str, EventLog[E]] = {}
        self._ended: OrderedDict[str, float] = OrderedDict()
        self._ended_bytes = 0  # ended logs no longer grow: their share of the total
        self._tally = _Tally()

    def __len__(self) -> int:
        return len(self._logs)

    @property
    def bytes(self) -> int:
        """The sizes of every event of every log held."""
        return self._tally.bytes

    def holds(self, log: EventLog[E]) -> bool:
        """Whether ``log`` is still held (not expired, evicted or dropped)."""
        return self._logs.get(log.key) is log

    def held(self) -> list[EventLog[E]]:
        """Every log held, running and ended."""
        return list(self._logs.values())

    def open(self, request_id: str, minted: Minted, now: float) -> EventLog[E]:
        """A new, empty, running log under ``minted.key`` for the generation ``request_id``."""
        if minted.key in self._logs:
            raise ValueError(f"a log {minted.key} is already held")
        log: EventLog[E] = EventLog(minted.key, minted.digest, request_id)
        log._tally = self._tally
        self._logs[minted.key] = log
        return log

    def find(self, token: str, request_id: str, now: float) -> EventLog[E] | None:
        """The log ``token`` opens for ``request_id``, or the same None for every reason it
        does not (unknown, malformed, wrong secret, other request, expired, evicted, dropped)."""
        parts = split(token)
        if parts is None or not isinstance(request_id, str):
            return None
        key, secret = parts
        # Hash before the lookup, so an unknown key and a wrong secret cost the same.
        presented = hash_secret(secret)
        log = self._logs.get(key)
        if log is None or not hmac.compare_digest(presented, log.digest):
            return None
        if log.request_id != request_id:
            return None
        since = self._ended.get(key)
        if since is not None and now - since >= self.retention:
            self._remove(log)
            self.expired += 1
            return None
        return log

    def ended(self, log: EventLog[E], now: float) -> None:
        """``log``'s generation ended: keep it ``retention`` seconds from ``now``, then expire it.
        A log no longer held, or already noted, is left as it is."""
        if not log.ended:
            raise ValueError(f"log {log.key} has not ended (call its end first)")
        if self._logs.get(log.key) is log and log.key not in self._ended:
            self._ended[log.key] = now
            self._ended_bytes += log.bytes

    def sweep(self, now: float) -> int:
        """Drop ended logs past retention, then evict ended logs oldest first while the total is
        over budget (running logs stay); the number of logs removed."""
        removed = 0
        ended = self._ended
        while ended:
            key, since = next(iter(ended.items()))
            if now - since < self.retention:
                break
            self._remove(self._logs[key])
            self.expired += 1
            removed += 1
        while self._tally.bytes > self.max_bytes and ended:
            self._evict_oldest()
            removed += 1
        return removed

    def admit(self, log: EventLog[E], size: int) -> bool:
        """Whether ``size`` more bytes may be appended to the running ``log``, evicting ended logs
        oldest first to make room. If even that is not enough, ``log`` is dropped (no longer
        found: never a partial replay) and the answer is False; the caller stops logging it."""
        if size < 0:
            raise ValueError(f"size must not be negative, got {size}")
        if log.ended or self._logs.get(log.key) is not log:
            return False
        tally = self._tally
        if tally.bytes + size <= self.max_bytes:
            return True
        # Evict only if that is enough: ended logs are not given up for a log dropped anyway.
        if tally.bytes - self._ended_bytes + size > self.max_bytes:
            self._remove(log)
            self.dropped += 1
            return False
        while tally.bytes + size > self.max_bytes:
            self._evict_oldest()
        return True

    def _evict_oldest(self) -> None:
        key = next(iter(self._ended))
        self._remove(self._logs[key])
        self.evicted += 1

    def _remove(self, log: EventLog[E]) -> None:
        """Forget ``log`` and its bytes; it no longer counts if its holder appends to it."""
        del self._logs[log.key]
        if self._ended.pop(log.key, None) is not None:
            self._ended_bytes -= log.bytes
        self._tally.bytes -= log.bytes
        log._tally = None
