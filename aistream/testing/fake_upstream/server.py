"""``FakeUpstream``: the server, its lifecycle, and the requests on each of its connections.

It listens with ``asyncio.start_server``. Each connection runs a reader task
(``Connection.read_until_closed``) beside the loop that takes its requests one after another:
a ``/_fake/`` request goes to the control API (``control``), any other is recorded, given a
script (directive, then ``script_for``, then the default) and answered by the ``Responder`` in a
task of its own, which the reader cancels the moment the client's side ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import orjson

from aistream.testing.fake_upstream.connection import (
    READ_SIZE,
    BadRequestError,
    Connection,
    Request,
)
from aistream.testing.fake_upstream.control import PREFIX, control
from aistream.testing.fake_upstream.errors import refusal_body
from aistream.testing.fake_upstream.records import Journal, RequestRecord
from aistream.testing.fake_upstream.respond import Responder
from aistream.testing.fake_upstream.script import Script, ScriptFor, directive

__all__ = ["FakeUpstream"]

logger = logging.getLogger(__name__)

_JSON = ("content-type", "application/json")


class FakeUpstream:
    """A scriptable OpenAI-compatible server on 127.0.0.1 that records every request."""

    def __init__(
        self,
        script: Script | None = None,
        *,
        script_for: ScriptFor | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """Configure the server; ``start()`` (or ``async with``) starts listening."""
        self.script: Script = script if script is not None else Script()
        """The default script."""
        self.script_for: ScriptFor | None = script_for
        """Optional callback choosing a script per request body."""
        self.connections_opened = 0
        """TCP connections accepted so far."""
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._closing = False
        self._conns: dict[int, Connection] = {}
        self._tasks: dict[int, asyncio.Task[Any]] = {}
        self._journal = Journal()
        self._responder = Responder(self._journal)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening; ``port`` and ``base_url`` are valid afterwards."""
        if self._server is not None:
            raise RuntimeError("fake upstream already started")
        self._closing = False
        self._server = await asyncio.start_server(
            self._serve, self._host, self._port, limit=READ_SIZE, backlog=1024
        )
        logger.debug("fake upstream listening on %s", self.base_url)

    async def close(self) -> None:
        """Stop listening, end every response in progress and close every connection."""
        server, self._server = self._server, None
        if server is None:
            return
        self._closing = True
        server.close()
        conns = list(self._conns.values())
        tasks = [self._tasks[c.number] for c in conns if c.number in self._tasks]
        for conn in conns:
            if conn.current is not None:
                self._journal.end(conn.current, "server_closed")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for conn in conns:  # until each transport has really closed its socket
            with contextlib.suppress(ConnectionError, OSError):
                await conn.writer.wait_closed()
        await server.wait_closed()

    async def __aenter__(self) -> Self:
        """Start the server."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the server."""
        await self.close()

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("fake upstream is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def base_url(self) -> str:
        """The OpenAI base URL of the server, ``http://127.0.0.1:PORT/v1``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}/v1"

    @property
    def connections(self) -> int:
        """Number of TCP connections open now."""
        return len(self._conns)

    # --- what happened -----------------------------------------------------------------------

    @property
    def records(self) -> list[RequestRecord]:
        """One record per request (control requests under ``/_fake/`` are not recorded)."""
        return self._journal.records

    def active(self) -> list[RequestRecord]:
        """Return the responses still in progress (neither ended nor closed by the client)."""
        return self._journal.active()

    def clear(self) -> None:
        """Forget every record (responses in progress keep updating their own record)."""
        self._journal.clear()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` is true, re-checking on every change; TimeoutError if not."""
        await self._journal.wait_for(predicate, timeout)

    async def wait_requests(self, n: int, timeout: float = 5.0) -> list[RequestRecord]:
        """Wait until at least ``n`` requests are recorded and return the first ``n``."""
        await self.wait_for(lambda: len(self.records) >= n, timeout)
        return self.records[:n]

    async def wait_closed(self, record: RequestRecord, timeout: float = 5.0) -> RequestRecord:
        """Wait until ``record``'s response has ended, however it ended, and return it."""
        await self.wait_for(lambda: not record.active, timeout)
        return record

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until no response is in progress."""
        await self.wait_for(lambda: not self.active(), timeout)

    # --- connections -------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection: requests one after another, while a reader watches for EOF."""
        self.connections_opened += 1
        conn = Connection(self.connections_opened, reader, writer)
        if self._closing:
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._conns[conn.number], self._tasks[conn.number] = conn, task
        self._journal.notify()
        try:
            await self._serve_requests(conn)
        except asyncio.CancelledError:
            if not self._closing:
                raise
            # close() cancelled us; ending quietly keeps asyncio from logging the cancellation

    async def _serve_requests(self, conn: Connection) -> None:
        """Answer the requests on a connection until it ends, then close it."""
        watch = asyncio.create_task(self._watch(conn))
        try:
            while True:
                try:
                    request = await conn.next_request()
                except BadRequestError as exc:
                    if conn.can_answer():
                        headers = [_JSON, ("connection", "close")]
                        conn.send_whole(400, headers, refusal_body(str(exc), "bad_request"))
                    break
                if request is None or not await self._dispatch(conn, request):
                    break
        except (ConnectionError, OSError) as exc:
            logger.debug("connection %d: %r", conn.number, exc)
        finally:
            # everything before the first await, which close() may interrupt
            watch.cancel()
            del self._conns[conn.number], self._tasks[conn.number]
            conn.writer.close()
            self._journal.notify()
            await asyncio.wait((watch,))
            with contextlib.suppress(ConnectionError, OSError):
                await conn.writer.wait_closed()

    async def _watch(self, conn: Connection) -> None:
        """Read until the client's side ends, then end the response in progress at once."""
        kind = await conn.read_until_closed()
        if conn.current is not None and conn.current.active:
            self._journal.end(conn.current, "client_closed", kind)
            if conn.response is not None:
                conn.response.cancel()

    async def _dispatch(self, conn: Connection, request: Request) -> bool:
        """Answer one request; return whether the connection can take another."""
        if request.path.startswith(PREFIX):
            status, result = control(self, request.method, request.path, request.body)
            conn.send_whole(status, [_JSON], orjson.dumps(result))
            await conn.drain()
            return conn.next_cycle()
        try:
            body = orjson.loads(request.body) if request.body else None
        except orjson.JSONDecodeError:
            body = None
        record = RequestRecord(
            index=len(self.records),
            connection=conn.number,
            method=request.method,
            path=request.path,
            headers=request.headers,
            body=body,
            received_at=time.monotonic(),
        )
        self._journal.add(record)
        if conn.eof:
            self._journal.end(record, "client_closed", "eof")
            return False
        task = asyncio.create_task(self._responder.respond(conn, request, record, self._pick))
        conn.current, conn.response = record, task
        try:
            await asyncio.wait((task,))
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait((task,))
            conn.current = conn.response = None
        if task.cancelled():
            return False
        if (exc := task.exception()) is not None:
            if isinstance(exc, ConnectionError | OSError):
                self._journal.end(record, "client_closed", "write_error")
            else:
                logger.error("request %d: fake upstream failed", record.index, exc_info=exc)
                self._journal.end(record, "failed")
            return False
        return task.result() and not conn.eof and conn.next_cycle()

    def _pick(self, body: dict[str, Any]) -> Script:
        """Choose the script for a request body (directive, then callback, then default)."""
        script = self.script_for(body) if self.script_for is not None else None
        if script is None:
            script = self.script
        overrides = directive(body)
        return script if overrides is None else Script.from_json(overrides, base=script)
