"""How much headroom this process has: the lag of its event loop, watched by one timer.

Every stream a process carries is served by one event loop. When the loop is late on every tick
for a whole window, the process is saturated: each token, each cancel, each close waits in line
behind everything else, and accepting one more stream makes all of them later. Admission (the
generator's service, the bridge's connections) asks ``Headroom.saturated`` before it starts a
generation and refuses it then, at once, with ``too_many_requests`` and a ``retryAfterMs`` hint —
so the streams already running keep their pace and a Stop keeps working::

    headroom = Headroom(threshold=0.05, window=1.0)   # settings: shed_loop_lag_ms, shed_window_ms
    headroom.start()                                  # one timer, every window / 10
    if headroom.saturated:
        refuse(retry_after_ms=headroom.retry_after_ms)

A spike is not saturation: a collector pause or one large batch delays one tick, not all of
them. So the measure is the *smallest* lag of the ticks in the window (``LagWindow``, pure): it
is over the threshold only when the loop was late all along.
"""

from __future__ import annotations

import asyncio
from collections import deque

from aistream.settings import Settings

__all__ = ["UNWATCHED", "Headroom", "LagWindow"]

TICKS_PER_WINDOW = 10
"""Samples per window: the timer fires every window / this."""


class LagWindow:
    """The lags of the loop's ticks over the last ``window`` seconds. Pure: times are given."""

    __slots__ = ("_samples", "_window")

    def __init__(self, window: float) -> None:
        self._window = window
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, now: float, lag: float) -> None:
        """A tick due ``lag`` seconds before ``now`` ran at ``now``."""
        samples = self._samples
        samples.append((now, lag))
        while samples and samples[0][0] < now - self._window:
            samples.popleft()

    def sustained(self, now: float, overdue: float = 0.0) -> float:
        """The smallest lag over the window (0 unless ticks cover it: a loop that has only just
        started ticking counts once they do). ``overdue``: how late the tick still pending is —
        a loop blocked for the whole window ran no tick in it, and is as late as that."""
        if overdue >= self._window:
            return overdue
        samples = self._samples
        if not samples or now - self._window > samples[-1][0]:
            return 0.0  # no tick within the window: not measured
        # Ticks cover the window when the first kept one is near its start (its lag included:
        # a late tick was due that much earlier).
        first_at, first_lag = samples[0]
        if first_at - first_lag > now - self._window + self._window / TICKS_PER_WINDOW:
            return 0.0
        return min(lag for _, lag in samples)


class Headroom:
    """The process's loop lag, watched by a timer; ``saturated`` past ``threshold`` seconds of
    lag sustained over ``window`` seconds (``threshold`` 0: never)."""

    __slots__ = ("_due", "_handle", "_interval", "_lags", "retry_after_ms", "threshold")

    def __init__(self, threshold: float, window: float, retry_after_ms: int = 1000) -> None:
        self.threshold = threshold
        self.retry_after_ms = retry_after_ms
        """The hint a refusal carries: when trying again may succeed."""
        self._interval = window / TICKS_PER_WINDOW
        self._lags = LagWindow(window)
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    @classmethod
    def of(cls, settings: Settings) -> Headroom:
        """The headroom ``settings`` ask for (``shed_loop_lag_ms`` 0: never saturated)."""
        return cls(
            settings.shed_loop_lag_ms / 1000,
            settings.shed_window_ms / 1000,
            settings.shed_retry_after_ms,
        )

    def start(self) -> None:
        """Start ticking on the running loop (a no-op with no threshold)."""
        if self.threshold <= 0 or self._handle is not None:
            return
        loop = asyncio.get_running_loop()
        self._due = loop.time() + self._interval
        self._handle = loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        """Stop ticking."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._lags.add(now, max(0.0, now - self._due))
        self._due = now + self._interval
        self._handle = loop.call_at(self._due, self._tick)

    @property
    def lag(self) -> float:
        """The loop lag sustained over the window, in seconds (0 when not watched)."""
        if self._handle is None:
            return 0.0
        now = asyncio.get_running_loop().time()
        return self._lags.sustained(now, max(0.0, now - self._due))

    @property
    def saturated(self) -> bool:
        """Whether the loop has been late by more than ``threshold`` on every tick of the
        window: no room for another stream."""
        return self._handle is not None and self.lag > self.threshold


UNWATCHED = Headroom(0.0, 1.0)
"""A headroom never saturated (no timer): for components built without one."""
