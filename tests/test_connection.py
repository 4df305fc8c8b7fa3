"""aistream.bridge.connection without sockets: one record per request, ended in one place.

A scripted socket stands in for the browser and a recording stream for the link to the
generator; the test plays the generator by delivering events.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any, cast

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from aistream.bridge.connection import Connection
from aistream.bridge.link import SharedStream
from aistream.bridge.websocket import BridgeSocket
from aistream.settings import Settings
from aistream.v1 import events_pb2 as pb


class _Socket:
    """The browser: frames to read from a queue, frames written recorded as JSON."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[str | None] = asyncio.Queue()
        self.frames: list[dict[str, Any]] = []

    async def recv(self) -> str:
        frame = await self.incoming.get()
        if frame is None:
            raise ConnectionClosed(None, None)
        return frame

    async def send(self, data: str | bytes, text: bool | None = None) -> None:
        self.frames.append(orjson.loads(data))

    def send_now(self, frame: bytes) -> bool:
        """(Never at once: every frame waits in the outbox, whose order the tests check.)"""
        return False

    async def close(self, code: int, reason: str) -> None:
        pass


class _Stream:
    """The link: records each Generate's wire id and each cancel."""

    def __init__(self) -> None:
        self.wire_ids: dict[str, str] = {}  # browser id → the last wire id it was sent under
        self.cancelled: list[tuple[str, bool]] = []
        self._ids = itertools.count(1)

    def generate(self, receiver: object, event: pb.ClientEvent) -> str:
        wire_id = f"w{next(self._ids)}"
        self.wire_ids[event.generate.request_id] = wire_id
        return wire_id

    def cancel(self, wire_id: str, *, forget: bool = True) -> None:
        self.cancelled.append((wire_id, forget))

    full = False
    """(The generator has room.)"""


class _Bridge:
    """One Connection being served, and ways to talk to it from both sides."""

    def __init__(self) -> None:
        self.socket = _Socket()
        self.stream = _Stream()
        self.connection = Connection(
            cast(BridgeSocket, self.socket), cast(SharedStream, self.stream), Settings()
        )

    async def send(self, **frame: Any) -> None:
        """A frame from the browser, read by the connection."""
        self.socket.incoming.put_nowait(orjson.dumps(frame).decode())
        for _ in range(3):
            await asyncio.sleep(0)

    async def received(self) -> list[dict[str, Any]]:
        """Every frame written to the browser so far (after what is queued has been written)."""
        outbox = self.connection.outbox
        await outbox.drained()
        await asyncio.sleep(0)
        return self.socket.frames


@pytest.fixture
async def bridge() -> AsyncIterator[_Bridge]:
    """A connection served until the test ends (then its socket closes)."""
    bridge = _Bridge()
    served = asyncio.create_task(bridge.connection.serve())
    yield bridge
    bridge.socket.incoming.put_nowait(None)
    await served


def _start(request_id: str) -> pb.ServerEvent:
    return pb.ServerEvent(start=pb.Start(request_id=request_id))


def _token(request_id: str, seq: int, count: int = 1) -> pb.ServerEvent:
    return pb.ServerEvent(token=pb.Token(request_id=request_id, chunk="x", seq=seq, count=count))


def _done(request_id: str) -> pb.ServerEvent:
    return pb.ServerEvent(done=pb.Done(request_id=request_id))


async def test_a_request_is_relayed_in_order_and_ends_with_its_terminal(bridge: _Bridge) -> None:
    """start, tokens and done are relayed; the done ends the request (its id may be reused)."""
    await bridge.send(type="ai:generate", requestId="r1", prompt="hi")
    assert bridge.connection.in_flight == 1
    for event in (_start("r1"), _token("r1", 0, 2), _token("r1", 2), _done("r1")):
        bridge.connection.deliver("r1", event)
    assert [f["type"] for f in await bridge.received()] == [
        "ai:start",
        "ai:token",
        "ai:done",
    ]  # (the two tokens coalesced while they waited)
    assert bridge.connection.in_flight == 0
    await bridge.send(type="ai:generate", requestId="r1", prompt="again")
    assert bridge.connection.in_flight == 1
    assert bridge.stream.wire_ids["r1"] == "w2"


@pytest.mark.parametrize(
    "events",
    [
        [_token("r1", 0)],  # before its start
        [_start("r1"), _start("r1")],  # a second start
        [_start("r1"), _token("r1", 1)],  # a seq gap
        [_done("r1")],  # done before start
    ],
)
async def test_out_of_order_events_are_dropped(
    bridge: _Bridge, events: list[pb.ServerEvent]
) -> None:
    """An event that breaks the lifecycle of its request is not relayed; the request goes on."""
    await bridge.send(type="ai:generate", requestId="r1", prompt="hi")
    for event in events:
        bridge.connection.deliver("r1", event)
    relayed = [f["type"] for f in await bridge.received()]
    assert relayed == (["ai:start"] if events[0].HasField("start") else [])
    assert bridge.connection.in_flight == 1


async def test_events_for_an_id_not_in_flight_are_dropped(bridge: _Bridge) -> None:
    """Nothing is relayed for an id this connection has no generation running under."""
    await bridge.send(type="ai:generate", requestId="r1", prompt="hi")
    bridge.connection.deliver("r1", _start("r1"))
    bridge.connection.deliver("r1", _done("r1"))
    bridge.connection.deliver("r1", _token("r1", 0))  # after its terminal
    bridge.connection.deliver("other", _start("other"))
    assert [f["type"] for f in await bridge.received()] == ["ai:start", "ai:done"]


async def test_a_rejection_by_the_generator_ends_the_request(bridge: _Bridge) -> None:
    """A lone error (no start) from the generator is relayed and ends the request."""
    await bridge.send(type="ai:generate", requestId="r1", prompt="hi")
    rejection = pb.ServerEvent(
        error=pb.Error(request_id="r1", code=pb.ERROR_CODE_TOO_MANY_REQUESTS, retryable=True)
    )
    bridge.connection.deliver("r1", rejection)
    assert [(f["type"], f["code"]) for f in await bridge.received()] == [
        ("ai:error", "too_many_requests")
    ]
    assert bridge.connection.in_flight == 0


async def test_a_lost_stream_ends_only_the_requests_on_it(bridge: _Bridge) -> None:
    """lost() ends each named request in flight with unavailable (retryable) and cancels it at
    the link; ids not in flight are ignored, other requests go on."""
    await bridge.send(type="ai:generate", requestId="r1", prompt="hi")
    await bridge.send(type="ai:generate", requestId="r2", prompt="hi")
    bridge.connection.deliver("r1", _start("r1"))
    bridge.connection.lost(["r1", "gone"], "UNAVAILABLE")
    frames = await bridge.received()
    assert [(f["type"], f["requestId"]) for f in frames] == [("ai:start", "r1"), ("ai:error", "r1")]
    assert (frames[1]["code"], frames[1]["retryable"]) == ("unavailable", True)
    assert bridge.connection.in_flight == 1
    assert (bridge.stream.wire_ids["r1"], True) in bridge.stream.cancelled
    bridge.connection.deliver("r2", _start("r2"))
    last = (await bridge.received())[-1]
    assert (last["type"], last["requestId"]) == ("ai:start", "r2")


async def test_cancel_goes_to_the_link_and_the_generator_ends_the_request(
    bridge: _Bridge,
) -> None:
    """ai:cancel is forwarded (the route kept for the answer); Error(cancelled) ends it."""
    await bridge.send(type="ai:generate", requestId="r1", prompt="hi")
    await bridge.send(type="ai:cancel", requestId="r1")
    assert bridge.stream.cancelled == [(bridge.stream.wire_ids["r1"], False)]
    assert bridge.connection.in_flight == 1
    cancelled = pb.ServerEvent(error=pb.Error(request_id="r1", code=pb.ERROR_CODE_CANCELLED))
    bridge.connection.deliver("r1", cancelled)
    assert bridge.connection.in_flight == 0


async def test_shutdown_ends_what_is_still_running_with_unavailable(bridge: _Bridge) -> None:
    """After the drain time every request still in flight is ended (unavailable, retryable)
    and cancelled at the link, and new generates are refused."""
    await bridge.send(type="ai:generate", requestId="r1", prompt="hi")
    bridge.connection.deliver("r1", _start("r1"))
    await bridge.connection.shutdown(drain_timeout=0.01)
    frames = await bridge.received()
    assert [(f["type"], f.get("code")) for f in frames] == [
        ("ai:start", None),
        ("ai:error", "unavailable"),
    ]
    assert bridge.connection.in_flight == 0
    assert (bridge.stream.wire_ids["r1"], True) in bridge.stream.cancelled
