"""Per-request lifecycle: what may follow what for each request id. Pure, no I/O.

The order every accepted generation follows (PRODUCT.md, guarantee 1)::

    start ──▶ part* ──▶ done | error         exactly one terminal; nothing after it

A part is a ``token``, ``reasoning``, ``refusal``, ``tool_call`` or ``tool_args`` event
(``PART_KINDS``). A Generate that is rejected gets a lone ``error`` and no ``start``. The parts'
``seq`` numbers count from 0 without gaps across every kind, a chunk of ``count`` coalesced
tokens advancing the next ``seq`` by ``count`` (a ``tool_call`` by one).
Once an id has ended, a new Generate with that id starts a new, independent lifecycle. A Generate
for an id still running is not answered (the running generation answers it: idempotent
retries) — unless the client cancelled that id: then it is answered once the cancelled one ends
(a new lifecycle, or a lone ``error`` if it is refused or cancelled in turn).

``RequestLifecycle`` is one id's place in that order; the bridge keeps one per generation in
flight (its per-request record extends it) and relays nothing out of order. ``Lifecycle`` keeps one
per running id of a whole conversation: the test suite's checker runs it over every recorded
conversation. In *strict* mode it also requires each ``start`` and each rejection to answer a
Generate that was seen (``expect``).
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

from aistream.errors import LifecycleViolation

__all__ = [
    "PART_KINDS",
    "TERMINAL_KINDS",
    "Kind",
    "Lifecycle",
    "LifecycleViolation",
    "RequestLifecycle",
]

Kind = Literal["start", "token", "reasoning", "refusal", "tool_call", "tool_args", "done", "error"]
TERMINAL_KINDS: frozenset[str] = frozenset({"done", "error"})
PART_KINDS: frozenset[str] = frozenset({"token", "reasoning", "refusal", "tool_call", "tool_args"})


_NOT_COUNTED: Counter[str] = Counter()  # shared, never written: non-strict mode counts nothing


class RequestLifecycle:
    """Where one request id is in its lifecycle: sent, started (and the next token ``seq``),
    cancelled by the client (its end is on its way)."""

    __slots__ = ("cancelled", "next_seq", "request_id", "started")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.started = False
        self.next_seq = 0
        self.cancelled = False

    def observe(
        self, kind: Kind, seq: int = 0, count: int = 1, *, positioned: bool = False
    ) -> bool:
        """Apply one server event for this id: whether it ended the request, or raise
        LifecycleViolation saying what was wrong. (A lone ``error`` ends a request that never
        started: it was rejected.) ``positioned``: a start that carries its position (a
        resumable generation's: 0; its parts follow from 1)."""
        if kind == "token" or kind in PART_KINDS:  # the hot path: first, and no allocation
            if not self.started:
                raise LifecycleViolation(
                    f"{kind} for request {self.request_id!r}, which is not running"
                )
            if seq != self.next_seq:
                raise LifecycleViolation(
                    f"{kind} seq {seq} for request {self.request_id!r}, expected {self.next_seq}"
                )
            self.next_seq += count if count > 0 else 1
            return False
        if kind == "start":
            if self.started:
                raise LifecycleViolation(f"second start for running request {self.request_id!r}")
            self.started = True
            if positioned:
                if seq != 0:
                    raise LifecycleViolation(
                        f"start seq {seq} for request {self.request_id!r}: a start is position 0"
                    )
                self.next_seq = 1
            return False
        if kind == "done":
            if not self.started:
                raise LifecycleViolation(
                    f"done for request {self.request_id!r}, which is not running"
                )
            return True
        if kind == "error":
            return True
        raise LifecycleViolation(f"unknown event kind {kind!r}")


class Lifecycle:
    """The lifecycle state of every request id of one conversation (a stream or a connection)."""

    __slots__ = ("_expected", "_running", "_strict")

    def __init__(self, *, strict: bool = False) -> None:
        self._running: dict[str, RequestLifecycle] = {}
        self._expected: Counter[str] = Counter() if strict else _NOT_COUNTED
        self._strict = strict

    def expect(self, request_id: str) -> None:
        """Record that a Generate for ``request_id`` was sent (strict mode uses it): it will be
        answered unless the id is running and was not cancelled."""
        running = self._running.get(request_id)
        if self._strict and (running is None or running.cancelled):
            self._expected[request_id] += 1

    def resume(self, request_id: str, after_seq: int) -> None:
        """Record that a Resume for ``request_id`` from position ``after_seq`` was sent: from
        −1 it is answered like a Generate (a start, or a lone error); from a position, by the
        events after it (the request counts as started there) or a lone error."""
        if request_id in self._running:
            return  # (a duplicate: ignored by the server)
        if after_seq < 0:
            if self._strict:
                self._expected[request_id] += 1
            return
        state = self._running[request_id] = RequestLifecycle(request_id)
        state.started = True
        state.next_seq = after_seq + 1

    def forget(self, request_id: str) -> None:
        """Record that the client stopped following ``request_id`` without ending it (a
        Detach): nothing more of it comes here."""
        self._running.pop(request_id, None)

    def cancel(self, request_id: str) -> None:
        """Record that the client cancelled ``request_id`` (a no-op unless it is running)."""
        running = self._running.get(request_id)
        if running is not None:
            running.cancelled = True

    def is_running(self, request_id: str) -> bool:
        """Whether ``request_id`` has started and not yet ended."""
        return request_id in self._running

    @property
    def running(self) -> list[str]:
        """Ids that have started and not ended, oldest first."""
        return list(self._running)

    def observe(
        self,
        kind: Kind,
        request_id: str,
        seq: int = 0,
        count: int = 1,
        *,
        positioned: bool = False,
    ) -> None:
        """Apply one server event, or raise LifecycleViolation saying what was wrong
        (``positioned``: see ``RequestLifecycle.observe``)."""
        state = self._running.get(request_id)
        if state is None:
            if kind == "error":
                if request_id:  # a rejection; an error with no id answers an unreadable frame
                    self._consume_expected(request_id, "rejection")
                return
            if kind != "start":
                raise LifecycleViolation(f"{kind} for request {request_id!r}, which is not running")
            self._consume_expected(request_id, "start")
            state = self._running[request_id] = RequestLifecycle(request_id)
        if state.observe(kind, seq, count, positioned=positioned):
            del self._running[request_id]

    def _consume_expected(self, request_id: str, what: str) -> None:
        if not self._strict:
            return
        if self._expected[request_id] <= 0:
            raise LifecycleViolation(
                f"{what} for request {request_id!r} that no Generate asked for"
            )
        self._expected[request_id] -= 1
        if self._expected[request_id] == 0:
            del self._expected[request_id]
