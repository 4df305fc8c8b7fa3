"""The bridge's socket (``bridge/websocket.py``): a client's frame is acted on in the loop turn
that parses it — unless an earlier one still waits for ``recv``, whose order it keeps — and a
frame goes out at once only while the socket takes it (control before data)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

from aistream.bridge.connection import Connection
from aistream.bridge.websocket import BridgeSocket


class _Served:
    """Stands in for the bridge's Connection: records each frame it is given, and whether it
    was given it inside the socket's ``data_received`` (the turn that read it)."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, bool]] = []
        self.got = asyncio.Event()

    def on_frame(self, message: str | bytes) -> None:
        reading = any(f.function == "data_received" for f in inspect.stack(0))
        self.frames.append((str(message), reading))
        self.got.set()

    def cancel_in_flight(self) -> None:
        pass

    def control_frame(self, unsent: int) -> None:
        pass


@asynccontextmanager
async def _pair(
    handler: Any,
) -> AsyncIterator[tuple[ClientConnection, asyncio.Future[BridgeSocket]]]:
    """A real server of BridgeSockets (``handler`` serves each) and a client connected to it."""
    socket: asyncio.Future[BridgeSocket] = asyncio.get_running_loop().create_future()

    async def handle(ws: ServerConnection) -> None:
        assert isinstance(ws, BridgeSocket)
        socket.set_result(ws)
        await handler(ws)

    async with serve(handle, "127.0.0.1", 0, create_connection=BridgeSocket) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as client:
            yield client, socket


async def test_a_frame_is_acted_on_in_the_turn_that_reads_it() -> None:
    served = _Served()

    async def handler(ws: BridgeSocket) -> None:
        ws.served = cast(Connection, served)
        await ws.wait_closed()

    async with _pair(handler) as (client, socket):
        await socket
        await client.send('{"type":"ai:cancel","requestId":"r"}')
        await asyncio.wait_for(served.got.wait(), 5)
    assert served.frames == [('{"type":"ai:cancel","requestId":"r"}', True)]


async def test_a_frame_behind_one_waiting_for_recv_keeps_its_place() -> None:
    """Frames read before the connection is served wait for ``recv``; one read after that but
    while they still wait goes behind them, through ``recv`` too, in order."""
    served = _Served()
    first_two = asyncio.Event()
    order: list[str] = []

    async def handler(ws: BridgeSocket) -> None:
        await first_two.wait()  # (two frames queued for recv by now)
        ws.served = cast(Connection, served)
        await asyncio.sleep(0.2)  # a third arrives meanwhile: queued behind them
        for _ in range(3):
            order.append(str(await ws.recv()))
        await ws.wait_closed()

    async with _pair(handler) as (client, socket):
        ws = await socket
        await client.send("one")
        await client.send("two")
        while len(ws.recv_messages.frames) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        first_two.set()
        await asyncio.sleep(0.05)
        await client.send("three")
        while len(order) < 3:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await client.send("four")  # nothing waits now: acted on at once
        await asyncio.wait_for(served.got.wait(), 5)
    assert order == ["one", "two", "three"]
    assert served.frames == [("four", True)]


async def test_send_now_writes_only_while_the_socket_takes_it() -> None:
    async def handler(ws: BridgeSocket) -> None:
        await ws.wait_closed()

    async with _pair(handler) as (client, socket):
        ws = await socket
        assert ws.send_now(b'{"type":"ai:start","requestId":"a"}')
        assert await asyncio.wait_for(client.recv(), 5) == '{"type":"ai:start","requestId":"a"}'
        ws.pause_writing()  # (as the transport does past its high-water mark)
        assert not ws.send_now(b'{"type":"ai:start","requestId":"b"}')
        ws.resume_writing()
        assert ws.send_now(b'{"type":"ai:start","requestId":"c"}')
        assert await asyncio.wait_for(client.recv(), 5) == '{"type":"ai:start","requestId":"c"}'
        await ws.close()
        assert not ws.send_now(b'{"type":"ai:start","requestId":"d"}')  # closed: never
