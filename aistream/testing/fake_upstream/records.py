"""What happened to each request: ``RequestRecord``, its ``Outcome``, and the ``Journal`` of them.

A record is created when a whole request has arrived and updated as its response goes out; the
journal holds the records of one fake upstream and wakes whoever waits for one of them to change.
Timestamps are ``time.monotonic()`` values, which another process on the same Linux machine can
compare with its own (CLOCK_MONOTONIC is system-wide).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from aistream.testing.fake_upstream import body as bodies
from aistream.testing.fake_upstream.script import Script

__all__ = ["ClientClose", "Journal", "Outcome", "RequestRecord"]

logger = logging.getLogger(__name__)

Outcome = Literal[
    "in_progress", "completed", "scripted_end", "reset", "client_closed", "server_closed", "failed"
]
"""How a response ended.

``completed``: sent in full as scripted (a whole stream ending in ``[DONE]``, or an error status);
``scripted_end``: the script ended the stream early (``close_after``, ``malformed_after``,
``error_event_after``); ``reset``: the script reset the connection; ``client_closed``: the client
closed or reset the connection first; ``server_closed``: the fake was closed first; ``failed``: a
bug in the fake (logged).
"""

ClientClose = Literal["eof", "reset", "write_error"]
"""How the client's close showed: end of file, a reset on read, or a failed write."""


@dataclass(slots=True, eq=False)
class RequestRecord:
    """What happened to one request: what arrived, what was sent, and how the response ended."""

    index: int
    """Position in ``FakeUpstream.records`` (counting from the last reset)."""
    connection: int
    """Number of the TCP connection it arrived on (equal numbers: the connection was reused)."""
    method: str
    path: str
    headers: dict[str, str]
    """Request headers, names lowercased."""
    body: Any
    """The parsed JSON body, or ``None`` (``messages`` and ``param`` read it)."""
    received_at: float
    """``time.monotonic()`` when the whole request had arrived."""
    script: Script | None = None
    status: int | None = None
    """Status sent, once the status line has been written."""
    headers_sent_at: float | None = None
    first_token_at: float | None = None
    tokens_sent: int = 0
    """Events (answer tokens, and reasoning tokens, text chunks, refusal pieces, tool-call
    pieces or raw deltas) written to the connection so far."""
    outcome: Outcome = "in_progress"
    finished_at: float | None = None
    """When the server ended the response itself (completed, scripted end, reset, shut down)."""
    client_closed_at: float | None = None
    """When the server saw the client close or reset the connection during the response."""
    client_close: ClientClose | None = None
    """How the client's close showed: end of file, a reset on read, or a failed write."""

    @property
    def active(self) -> bool:
        """Whether the response is still in progress."""
        return self.outcome == "in_progress"

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The request's messages that are JSON objects (tool calls and tool results too)."""
        return bodies.messages(self.body)

    def param(self, name: str, default: Any = None) -> Any:
        """Return a top-level field of the request body (``tools``, ``tool_choice``,
        ``response_format``, ...), or ``default`` if it has none."""
        return self.body.get(name, default) if isinstance(self.body, dict) else default

    def to_json(self) -> dict[str, Any]:
        """Return the record as a JSON-compatible dict."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["script"] = None if self.script is None else self.script.to_json()
        return out


class Journal:
    """The records of one fake upstream, and waiting until they say something."""

    def __init__(self) -> None:
        """Start with no records."""
        self.records: list[RequestRecord] = []
        """One record per request, in arrival order (since the last ``clear``)."""
        self._changed = asyncio.Event()
        self._waiters = 0

    def add(self, record: RequestRecord) -> None:
        """Append a new record."""
        self.records.append(record)
        logger.debug("request %d: %s %s", record.index, record.method, record.path)
        self.notify()

    def active(self) -> list[RequestRecord]:
        """Return the responses still in progress (neither ended nor closed by the client)."""
        return [r for r in self.records if r.outcome == "in_progress"]

    def clear(self) -> None:
        """Forget every record (responses in progress keep updating their own record)."""
        self.records = []
        self.notify()

    def sent(self, record: RequestRecord, tokens: int) -> None:
        """Note that ``tokens`` tokens have been written for ``record``."""
        if record.first_token_at is None:
            record.first_token_at = time.monotonic()
        record.tokens_sent = tokens
        self.notify()

    def end(
        self, record: RequestRecord, outcome: Outcome, client_close: ClientClose | None = None
    ) -> None:
        """End a response in progress with ``outcome`` (a no-op if it has already ended)."""
        if record.outcome != "in_progress":
            return
        record.outcome = outcome
        if outcome == "client_closed":
            record.client_closed_at = time.monotonic()
            record.client_close = client_close
        else:
            record.finished_at = time.monotonic()
        logger.debug("request %d: %s after %d tokens", record.index, outcome, record.tokens_sent)
        self.notify()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until ``predicate()`` is true, re-checking on every change; TimeoutError if not."""
        async with asyncio.timeout(timeout):
            self._waiters += 1
            try:
                while not predicate():
                    await self._changed.wait()
            finally:
                self._waiters -= 1

    def notify(self) -> None:
        """Wake every waiter (only if there are any: this runs once per token)."""
        if self._waiters:
            self._changed.set()
            self._changed = asyncio.Event()
