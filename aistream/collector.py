"""Keeping the cycle collector out of the servers' way.

The generator and the bridge hold thousands of connections, generations and tasks. CPython frees
an object the moment its last reference goes, unless it sits in a reference cycle: then only the
cycle collector frees it, and a collection pauses the event loop for as long as it takes to walk
every young object (at 1,000 live streams: 50–200 ms, every stream stalled). So:

* **Nothing the servers end leaves a cycle.** Ending a generation or a connection must free it by
  reference counting alone: ``release`` for the tasks we cancel; the bridge breaks the two cycles
  websockets makes per connection (``bridge/server.py``); the generator keeps its frames out of
  the error aiohttp's reader keeps (``generator/openai_upstream.py``); and on Python < 3.12
  every closed asyncio socket transport keeps itself alive through a cached bound method
  (CPython gh-100348, fixed in 3.12), which ``install`` mends by dropping it once the socket is
  done. A test holds this: however a generation or a connection ends, nothing of it outlives
  it and nothing is left for the collector (tests/test_collector.py).
* **The collector runs rarely**, so that with no cycles made it has almost nothing to do: its
  young generation is counted as objects allocated minus objects freed, and with nothing left to
  cycles that count only grows while the servers take on more work. What start-up made is frozen
  out of its sight. A collection still comes, and bounds the memory, whenever some path we do not
  know of makes cycles.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
from asyncio import selector_events
from typing import Any

__all__ = ["THRESHOLDS", "install", "mend_socket_transports", "release"]

THRESHOLDS = (1_000_000, 50, 1000)
"""The collector's thresholds in the servers: a collection once a million more objects are alive
than at the last one, the older generations practically never. Each collection walks every young
object, and with the defaults (700, 10, 10) a process holding thousands of streams collected
every few hundred allocations and walked everything every few seconds (harness at 1,000 streams:
TTFT p99 151 / 223 / 214 ms). With (100,000, 50, 1,000) a collection still came once per 1,000
streams opened, 50–80 ms each in generator and bridge, in the measuring window of every run (p99
33–81 ms over four runs; 23–32 ms with these, and no collection at all). The price: a server
that grows by a million objects (~10,000 more streams) pauses once for ~0.5 s, and garbage
from a cycle we do not know of may reach a million objects before it is freed."""


def release(task: asyncio.Task[Any]) -> None:
    """Drop what a finished ``task`` keeps for an awaiter that will never come: the error it was
    cancelled with. Call it from a done callback, or after gathering tasks you cancelled.

    A task cancelled while it awaited keeps the ``CancelledError`` its coroutine raised, to raise
    it again to whoever awaits the task. The error's traceback holds the coroutine's frames, whose
    locals (``self``, the task) lead back to the task: a cycle, holding everything the coroutine
    held — a generation with its HTTP response, a connection with its buffers.
    ``asyncio.gather(..., return_exceptions=True)`` does not take the stored error (it makes a
    new one)."""
    if task.cancelled():
        with contextlib.suppress(asyncio.CancelledError):
            task.result()  # hands the stored error over, and so lets go of it


def install() -> None:
    """Set the process up: collect and freeze what start-up made, set ``THRESHOLDS``, and on
    Python < 3.12 mend the socket transports' self-reference."""
    if sys.version_info < (3, 12):
        mend_socket_transports()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


def mend_socket_transports() -> None:
    """Backport of CPython gh-100348: a socket transport caches a bound method of itself
    (``_read_ready_cb``), so every closed connection waits for the collector. Once the
    connection is lost nothing reads the socket again, so the cached method is dropped then."""
    transport: Any = selector_events._SelectorSocketTransport  # type: ignore[attr-defined]
    if getattr(transport, "_aistream_mended", False):
        return
    lost = transport._call_connection_lost

    def _call_connection_lost(self: Any, exc: BaseException | None) -> None:
        try:
            lost(self, exc)
        finally:
            self._read_ready_cb = None

    transport._call_connection_lost = _call_connection_lost
    transport._aistream_mended = True
