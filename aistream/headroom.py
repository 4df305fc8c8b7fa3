"""How much headroom this process has: the lag of its event loop, watched by one timer, and the
number of generations it can carry that this lag allows.

Every stream a process carries is served by one event loop. When the loop is late turn after
turn, the process is full: each token, each cancel, each close waits in line behind everything
else, and accepting one more stream makes all of them later. Admission (the generator's service,
the bridge's connections) asks ``Headroom.saturated`` before it starts a generation and refuses
it then, at once, with ``too_many_requests`` and a ``retryAfterMs`` hint — so the streams already
running keep their pace and a Stop keeps working::

    headroom = Headroom(threshold=0.005, window=0.5)  # settings: shed_loop_lag_ms, shed_window_ms
    headroom.start(lambda: generations_running)      # one timer, every window / 10
    if headroom.saturated:
        refuse(retry_after_ms=headroom.retry_after_ms)

A spike is not saturation: a collector pause or one large batch delays one tick, not several.
So the measure is the 9th of the window's 10 tick lags (``LagWindow``, pure): late turns that
keep coming. The threshold is small (a few ms): a request or a cancel crosses the loop a dozen
times (read, validate, forward, connect, …), each time behind a whole turn of token traffic, so
ten ms of lag is a stream that starts, or a Stop that lands, a hundred ms late.

Refusing only *while* the loop is late would let every refused client back in at once as soon
as it is not (they retry after the same hint), and streams last seconds to minutes: the load
would swing far past what the loop carries before the lag showed it. So the lag sets a *limit*
on the generations running (``Limit``, pure; a slow increase and a multiplicative decrease, as
TCP finds its window): over the threshold, the limit drops to a fraction of what runs now, at
most once per window (a cut takes that long to show); well under it, while it is what holds
generations back, the limit grows by a little every tick. A new generation is admitted while
fewer than the limit run.

A process further along can be full while this one is not: the generator tells its bridges how
many more generations it would start (``ServerEventBatch.room``), and a bridge refuses the rest
itself, at once, one hop sooner (``bridge/link.py``).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable

from aistream.settings import Settings

__all__ = ["UNWATCHED", "Headroom", "LagWindow", "Limit"]

TICKS_PER_WINDOW = 10
"""Samples per window: the timer fires every window / this."""
QUANTILE = 0.9
"""Which of the window's lags is the loop's: the 9th of 10 — late turns that keep coming, not
one pause."""


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
        """The median lag over the window (0 unless ticks cover it: a loop that has only just
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
        lags = sorted(lag for _, lag in samples)
        return lags[int((len(lags) - 1) * QUANTILE)]


class Limit:
    """How many generations may run at once, learned from the loop's lag. Pure: times are given.

    Infinite until the lag first passes ``threshold``: then it is set to what runs. While the
    lag stays past the threshold it is cut to ``BACKOFF`` of what runs — at most once per
    ``window`` (the streams a cut refuses take that long to show in the lag), never below
    ``FLOOR``, and not for a lag that so few generations cannot have caused (accepting
    connections, a collector pause). While the lag is under ``CALM`` of the threshold and the
    limit is what holds generations back (``BINDING``: they are that close to it), it grows
    each tick: by ``RECOVERY`` of itself while under the level of its last cut (a passing
    burst cut it), by ``GROWTH`` past it (looking for more room, carefully), at least one.
    Otherwise it holds: a limit nobody reaches says nothing of what the loop would carry."""

    BACKOFF = 0.8
    GROWTH = 0.01
    RECOVERY = 0.05
    CALM = 0.5
    BINDING = 0.9
    FLOOR = 8

    __slots__ = ("_cut_from", "_next_cut", "_threshold", "_window", "value")

    def __init__(self, threshold: float, window: float) -> None:
        self._threshold = threshold
        self._window = window
        self._next_cut = -math.inf
        self._cut_from = 0.0
        self.value = math.inf
        """Generations that may run at once (``inf``: no limit learned yet)."""

    def update(self, now: float, lag: float, running: int) -> None:
        """One tick: the loop's sustained ``lag`` with ``running`` generations at ``now``."""
        if lag > self._threshold:
            if now >= self._next_cut and running >= self.FLOOR:
                if self.value == math.inf:
                    # the first overload: no more than this — and back up quickly, for it may
                    # be a passing burst (a ramp of new connections), not the loop's measure
                    self.value = float(running)
                    self._cut_from = math.inf
                else:
                    self._cut_from = self.value
                    self.value = max(self.FLOOR, min(self.value, running) * self.BACKOFF)
                self._next_cut = now + self._window
        elif lag < self._threshold * self.CALM and running >= self.value * self.BINDING:
            rate = self.RECOVERY if self.value < self._cut_from else self.GROWTH
            self.value += max(1.0, self.value * rate)

    def admits(self, running: int) -> bool:
        """Whether one more generation may start with ``running`` already."""
        return running < self.value


class Headroom:
    """The process's loop lag, watched by a timer, and the ``Limit`` it sets on the generations
    running (``threshold`` 0: no limit, never saturated)."""

    __slots__ = (
        "_due",
        "_handle",
        "_interval",
        "_lags",
        "_limit",
        "_load",
        "measured",
        "retry_after_ms",
        "threshold",
    )

    def __init__(self, threshold: float, window: float, retry_after_ms: int = 1000) -> None:
        self.threshold = threshold
        self.retry_after_ms = retry_after_ms
        """The hint a refusal carries: when trying again may succeed."""
        self._interval = window / TICKS_PER_WINDOW
        self._lags = LagWindow(window)
        self._limit = Limit(threshold, window)
        self._load: Callable[[], int] = lambda: 0
        self.measured = 0.0
        """The loop's lag over the window as of the last tick, in seconds (what a scrape of
        the metrics reads: it needs no loop)."""
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

    def start(self, load: Callable[[], int]) -> None:
        """Start ticking on the running loop, weighing its lag against ``load()``: the
        generations running (a no-op with no threshold)."""
        if self.threshold <= 0 or self._handle is not None:
            return
        self._load = load
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
        self.measured = self._lags.sustained(now)
        self._limit.update(now, self.measured, self._load())
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
    def limit(self) -> float:
        """Generations that may run at once (``inf``: no limit learned yet, or not watched)."""
        return self._limit.value if self._handle is not None else math.inf

    @property
    def saturated(self) -> bool:
        """Whether another generation would pass the limit: no room for it."""
        return self._handle is not None and not self._limit.admits(self._load())


UNWATCHED = Headroom(0.0, 1.0)
"""A headroom never saturated (no timer): for components built without one."""
