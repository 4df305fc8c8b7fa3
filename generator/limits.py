"""The time limits of one generation: first token, stall between tokens, total deadline.

aistream decides these, not the model. One timer enforces all three and re-arms itself lazily:
a token only writes down the time (no timer is rescheduled per token, which at tens of thousands
of tokens per second would be a large share of the generator's CPU). When the timer fires it
looks at the limit that applies now; if it has passed, it cancels the generation's task, and the
task turns that cancellation into a ``timeout`` error (``claimed``).

Waiting for room in the outbox (a slow reader downstream) is not the upstream stalling: between
``pause`` and ``resume`` the same stall limit applies to that wait instead, and passing it means
the reader is a slow consumer (the generation ends with ``slow_consumer``, its upstream closed).
"""

from __future__ import annotations

import asyncio
import math

__all__ = ["TimeLimits"]


class TimeLimits:
    """First-token, stall and total limits, enforced by cancelling one task."""

    __slots__ = (
        "_armed_at",
        "_first_token_timeout",
        "_handle",
        "_last",
        "_loop",
        "_paused",
        "_paused_at",
        "_stall_timeout",
        "_started",
        "_task",
        "deadline",
        "fired",
        "first_token_at",
    )

    def __init__(
        self, started_at: float, first_token_timeout: float, stall_timeout: float, deadline: float
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._started = started_at
        self._first_token_timeout = first_token_timeout
        self._stall_timeout = stall_timeout
        self.deadline = deadline
        self._last = started_at
        self._paused = False
        self._paused_at = 0.0
        self._task: asyncio.Task[object] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = math.inf
        self.first_token_at: float | None = None
        self.fired = False

    def limit(self) -> float:
        """The loop time by which the next thing must happen."""
        if self.first_token_at is None:
            due = self._started + self._first_token_timeout
        elif self._paused:
            due = self._paused_at + self._stall_timeout
        else:
            due = self._last + self._stall_timeout
        return min(due, self.deadline)

    def start(self, task: asyncio.Task[object]) -> None:
        """Watch ``task``: it is cancelled when a limit passes."""
        self._task = task
        self._arm(self.limit())

    def stop(self) -> None:
        """Stop watching."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def token(self, now: float) -> None:
        """A token arrived at ``now``."""
        self._last = now
        if self.first_token_at is None:
            self.first_token_at = now
            self._arm_if_earlier()  # the stall limit may come before the first-token one

    def pause(self, now: float) -> None:
        """Waiting downstream from ``now``: until ``resume`` this wait, not the upstream, is
        held to the stall limit (a reader that long behind is a slow consumer)."""
        self._paused = True
        self._paused_at = now
        self._arm_if_earlier()

    @property
    def slow_consumer(self) -> bool:
        """Whether the limit passed while waiting downstream (not for the upstream)."""
        return self.fired and self._paused

    def resume(self, now: float) -> None:
        """Done waiting downstream at ``now``; the stall limit counts from here."""
        self._paused = False
        self._last = now
        self._arm_if_earlier()

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = when
        self._handle = self._loop.call_at(when, self._check)

    def _arm_if_earlier(self) -> None:
        due = self.limit()
        if self._task is not None and due < self._armed_at:
            self._arm(due)

    def _check(self) -> None:
        now = self._loop.time()
        due = self.limit()
        if now < due:
            self._arm(due)
            return
        self._handle = None
        self._armed_at = math.inf
        self.fired = True
        if self._task is not None:
            self._task.cancel()

    def claimed(self, task: asyncio.Task[object]) -> bool:
        """True if the cancellation ``task`` is handling came from a passed limit alone (it is
        then withdrawn); False if someone else cancelled the task too."""
        return self.fired and task.uncancel() == 0

    def reason(self, now: float) -> str:
        """Which limit passed, in words."""
        if now >= self.deadline:
            return f"the generation exceeded its time limit of {self.deadline - self._started:g}s"
        if self.first_token_at is None:
            return f"no first token within {self._first_token_timeout:g}s"
        return f"the upstream stalled for more than {self._stall_timeout:g}s"
