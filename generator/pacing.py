"""Read pacing: how long an upstream body waits between two reads, from how many are streaming.

A paced answer's tokens arrive one per network packet. Read as they come, every token costs a
wake-up of the whole read path (socket, HTTP parser, SSE decoder, outbox, gRPC writer), and at
a thousand answers those wake-ups, not the tokens, are what saturates a process. So the
generator holds a budget of reads per second and spreads it over the answers that are streaming:
with ``n`` of them, each is read at most every ``n / reads_per_s`` seconds, capped at
``max_interval`` (and not held at all when that is under ``MIN_INTERVAL``). Tokens that arrive
in between are read together and travel on as one message (``Token.count`` says how many). A
first token is never held back: pacing starts after it.
"""

from __future__ import annotations

__all__ = ["ReadPacing"]

MIN_INTERVAL = 0.005
"""Seconds; a shorter spacing is not applied (pausing and resuming a socket costs more than it
saves when few answers stream)."""


class ReadPacing:
    """The live-answer count of one upstream and the read interval it implies. No I/O."""

    __slots__ = ("live", "max_interval", "reads_per_s")

    def __init__(self, reads_per_s: int, max_interval: float) -> None:
        self.reads_per_s = reads_per_s
        self.max_interval = max_interval
        self.live = 0

    def opened(self) -> None:
        """An answer started streaming."""
        self.live += 1

    def closed(self) -> None:
        """An answer stopped streaming."""
        self.live -= 1

    def interval(self) -> float:
        """Seconds to leave between two reads of one answer now (0: read at once)."""
        if self.reads_per_s <= 0:
            return 0.0
        interval = min(self.max_interval, self.live / self.reads_per_s)
        return interval if interval >= MIN_INTERVAL else 0.0
