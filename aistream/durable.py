"""Durable streams on Redis (issue 19): the key layout, entry ids, positions and control
messages shared by the generator that writes a log and the bridges that read it — without I/O.

Keys. Every resumable generation has a log key ``k`` (``aistream/resume.py``: 128 random bits,
also the first half of its resume token). In Redis it owns two keys (hash-tagged ``{k}``: one
slot, should they ever be spread over a cluster):

* ``ais:{k}:log`` — a Stream; each entry's one field ``e`` is a ``ServerEventBatch`` of the
  generation's events in order (no request ids: each reader sets its own). An entry's id is
  ``0-(last + 1)``, ``last`` being the last position its events cover: ids follow positions, not
  clocks (two entries made in one millisecond never share an id), and an append that was already
  made (a retry after a timeout, the owner re-appending after an outage) cannot make the log go
  backwards — a reader drops what it holds by position, so a repeat is never shown twice.
* ``ais:{k}:meta`` — a Hash: ``d`` the sha256 of the token's secret (never the token), ``o`` the
  owner (the generator process holding the upstream), ``r`` the request id a resume must name,
  ``e`` the terminal's position once the generation has ended.

A reader that holds every position up to ``after_seq`` asks for the entries after
``cursor(after_seq)``: their last positions are greater, and within the first one it drops the
events it holds (``fresh``). An event's positions are ``seq … seq + count − 1`` (``count``
absent: 1), as on the wire.

Owners. Each generator process has a node id; ``ais:node:{id}`` exists while it lives (it renews
it), and it listens on ``ais:ctl:{id}`` for control messages about the generations it owns:
``cancel k`` (a client cancelled it on another bridge), ``attach k holder`` (a bridge follows it:
a lease, renewed while it does, that keeps the generation from its grace timeout) and ``detach k
holder`` (that bridge stopped following).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from aistream.resume import hash_secret
from aistream.v1 import events_pb2 as pb

__all__ = [
    "ATTACH",
    "CANCEL",
    "DETACH",
    "FIELD",
    "LEASE_SECONDS",
    "Control",
    "Meta",
    "control",
    "control_channel",
    "cursor",
    "entry_id",
    "fresh",
    "last_position",
    "log_key",
    "meta_key",
    "node_key",
    "parse_control",
    "parse_meta",
    "span",
]

FIELD = b"e"
"""The one field of a log entry (one field name: Redis stores it once per node of entries)."""

CANCEL, ATTACH, DETACH = "cancel", "attach", "detach"

LEASE_SECONDS = 10.0
"""How long a bridge's ``attach`` keeps a generation from its grace timeout; bridges renew it
every third of that while they follow."""


def log_key(key: str) -> str:
    """The Stream holding the generation's events."""
    return f"ais:{{{key}}}:log"


def meta_key(key: str) -> str:
    """The Hash holding who may resume the generation, and who runs it."""
    return f"ais:{{{key}}}:meta"


def node_key(node: str) -> str:
    """Exists while the generator process ``node`` lives."""
    return f"ais:node:{node}"


def control_channel(node: str) -> str:
    """Where the generator process ``node`` hears of cancels and leases."""
    return f"ais:ctl:{node}"


def entry_id(last: int) -> str:
    """The id of the entry whose events end at position ``last``."""
    return f"0-{last + 1}"


def cursor(after_seq: int) -> str:
    """The id after which every entry holds a position greater than ``after_seq`` (−1: all)."""
    return f"0-{after_seq + 1}"


def last_position(entry: bytes | str) -> int:
    """The last position the events of the entry ``entry`` (an id) cover."""
    text = entry.decode() if isinstance(entry, bytes) else entry
    return int(text.partition("-")[2]) - 1


def span(event: pb.ServerEvent) -> tuple[int, int]:
    """The first and last positions ``event`` covers."""
    kind = event.WhichOneof("event")
    if kind is None:
        raise ValueError("an empty event has no position")
    body = getattr(event, kind)
    first: int = body.seq
    count: int = getattr(body, "count", 0) or 1
    return first, first + count - 1


def fresh(events: Iterable[pb.ServerEvent], position: int) -> list[pb.ServerEvent]:
    """The events past ``position`` (every one whose last position is greater), in order."""
    return [event for event in events if span(event)[1] > position]


class Meta(NamedTuple):
    """What the meta hash says of a generation."""

    digest: bytes
    owner: str
    request_id: str
    end: int | None
    """The terminal's position, once the generation has ended."""

    def opens(self, secret: str, request_id: str) -> bool:
        """Whether a token with ``secret`` opens it for ``request_id`` (constant-time)."""
        matches = hmac.compare_digest(hash_secret(secret), self.digest)
        return matches and request_id == self.request_id


def parse_meta(raw: Mapping[bytes, bytes]) -> Meta | None:
    """The meta hash as Redis returns it, or None if it is missing or not one of ours."""
    try:
        digest, owner, request_id = raw[b"d"], raw[b"o"], raw[b"r"]
        end = raw.get(b"e")
        return Meta(digest, owner.decode(), request_id.decode(), int(end) if end else None)
    except (KeyError, ValueError, UnicodeDecodeError):
        return None


class Control(NamedTuple):
    """A control message to a generation's owner."""

    verb: str
    key: str
    holder: str


def control(verb: str, key: str, holder: str = "") -> str:
    """The message ``verb`` about the generation ``key`` (from ``holder``, for leases)."""
    return f"{verb} {key} {holder}".rstrip()


def parse_control(data: bytes | str) -> Control | None:
    """A control message, or None for anything else on the channel."""
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    verb, _, rest = text.partition(" ")
    key, _, holder = rest.partition(" ")
    if verb not in (CANCEL, ATTACH, DETACH) or not key:
        return None
    return Control(verb, key, holder)
