"""Per-request lifecycle: what may follow what for each request id. Pure, no I/O.

The order every accepted generation follows (PRODUCT.md, guarantee 1)::

    start ──▶ token* ──▶ done | error        exactly one terminal; nothing after it

A Generate that is rejected gets a lone ``error`` and no ``start``. Token ``seq`` numbers count
from 0 without gaps, a chunk of ``count`` coalesced tokens advancing the next ``seq`` by ``count``.
Once an id has ended, a new Generate with that id starts a new, independent lifecycle.

``Lifecycle`` is used by the bridge to know which ids are in flight and to refuse to relay anything
out of order, and by the test suite's checker over every recorded conversation. In *strict* mode it
also requires each ``start`` and each rejection to answer a Generate that was seen (``expect``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal

__all__ = ["TERMINAL_KINDS", "Kind", "Lifecycle", "LifecycleViolation"]

Kind = Literal["start", "token", "done", "error"]
TERMINAL_KINDS: frozenset[str] = frozenset({"done", "error"})


_NOT_COUNTED: Counter[str] = Counter()  # shared, never written: non-strict mode counts nothing


class LifecycleViolation(Exception):
    """An event broke the order start → token* → one terminal for its request id."""


@dataclass(slots=True)
class _Running:
    next_seq: int = 0
    tokens: int = 0


class Lifecycle:
    """The lifecycle state of every request id on one stream or connection."""

    __slots__ = ("_expected", "_running", "_strict")

    def __init__(self, *, strict: bool = False) -> None:
        self._running: dict[str, _Running] = {}
        self._expected: Counter[str] = Counter() if strict else _NOT_COUNTED
        self._strict = strict

    def expect(self, request_id: str) -> None:
        """Record that a Generate for ``request_id`` was sent (strict mode uses it)."""
        if self._strict and request_id not in self._running:
            self._expected[request_id] += 1

    def is_running(self, request_id: str) -> bool:
        """Whether ``request_id`` has started and not yet ended."""
        return request_id in self._running

    @property
    def running(self) -> list[str]:
        """Ids that have started and not ended, oldest first."""
        return list(self._running)

    def observe(self, kind: Kind, request_id: str, seq: int = 0, count: int = 1) -> None:
        """Apply one server event, or raise LifecycleViolation saying what was wrong."""
        state = self._running.get(request_id)
        if kind == "start":
            if state is not None:
                raise LifecycleViolation(f"second start for running request {request_id!r}")
            self._consume_expected(request_id, "start")
            self._running[request_id] = _Running()
        elif kind == "token":
            if state is None:
                raise LifecycleViolation(f"token for request {request_id!r}, which is not running")
            if seq != state.next_seq:
                raise LifecycleViolation(
                    f"token seq {seq} for request {request_id!r}, expected {state.next_seq}"
                )
            state.next_seq += max(count, 1)
            state.tokens += 1
        elif kind == "done":
            if state is None:
                raise LifecycleViolation(f"done for request {request_id!r}, which is not running")
            del self._running[request_id]
        elif kind == "error":
            if state is not None:
                del self._running[request_id]
            elif request_id:  # a rejection; an error with no id answers an unreadable frame
                self._consume_expected(request_id, "rejection")
        else:  # pragma: no cover - Kind is closed
            raise LifecycleViolation(f"unknown event kind {kind!r}")

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
