"""A token bucket: at most ``rate`` events per second on average, bursts up to ``burst``. Pure.

The clock is passed in, so the bucket is tested without sleeping.
"""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """Allows ``rate`` events per second, with bursts of up to ``burst`` events."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._last = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one at time ``now``; False means: over the limit."""
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False
