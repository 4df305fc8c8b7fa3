"""Ending things leaves nothing for the cycle collector (aistream/collector.py).

A generation that completes, is cancelled, fails upstream, or is cut off with its socket, and the
connection that ran it, must be freed by reference counting alone — so must every attempt at an
upstream that cannot be reached, and the bridge's stream to a generator that went away: anything
left in a reference cycle waits for a collection, and at a thousand live streams each collection
stalls every stream for 50–200 ms. These tests run the scenarios with the collector off, then
look for what is still alive that should not be, and ask the collector what it would have had to
free.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import types
import weakref
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from conftest import UNIT, StackFactory

from aistream.collector import mend_socket_transports, release
from aistream.testing.fake_upstream import Script

# Garbage of these packages would be ours, or made by the way we use them; the test's own
# clients (websockets' client side) are not the servers' business.
_SERVER_PACKAGES = (
    "aistream",
    "generator",
    "bridge",
    "aiohttp",
    "aiohappyeyeballs",
    "httpx",
    "httpx2",
    "openai",
    "grpc",
)
_SERVER_TYPES = ("Task", "_SelectorSocketTransport", "ServerProtocol", "ServerConnection")
# One of each per running generation or open connection: none may outlive it.
_PER_STREAM_TYPES = (
    "aistream.generator.generation.Generation",
    "aistream.generator.openai_upstream._ChatStream",
    "aiohttp.client_reqrep.ClientResponse",
    "aistream.bridge.connection.Connection",
    "aistream.bridge.websocket.BridgeSocket",
    "websockets.server.ServerProtocol",
)


def _grpc_call_lookup(o: object) -> bool:
    """grpc's server holds the method lookup of the call it serves in a pair (its details and a
    Cython closure scope) that the collector finds at every collection, however many
    generations ran, and when idle too: not per generation. (Its resolver joins them when the
    server stops with the call open.)"""
    name = type(o).__qualname__
    return name in ("_HandlerCallDetails", "_MethodResolver") or name.endswith(
        "_find_method_handler"
    )


@pytest.fixture
def collector_off() -> Iterator[None]:
    """The collector off for the test (it must not free the cycles we look for)."""
    mend_socket_transports()
    # No log records either: pytest keeps every record, and a record keeps the exception in
    # its arguments, traceback and all (a server's handlers write a record and let it go).
    logging.disable(logging.CRITICAL)
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        logging.disable(logging.NOTSET)


def _alive(names: tuple[str, ...]) -> Counter[str]:
    """How many objects of each of these types are alive now (with the collector off, an object
    in a cycle is alive until a collection)."""
    return Counter(
        name
        for o in gc.get_objects()
        if (name := f"{type(o).__module__}.{type(o).__qualname__}") in names
    )


async def _until(done: Callable[[], object]) -> bool:
    """Whether ``done()`` became true within 5 s (checked every 20 ms)."""
    for _ in range(250):
        if done():
            return True
        await asyncio.sleep(0.02 * UNIT)
    return False


def _name(o: object) -> str:
    """An object's type, or for a frame the function it runs (a cycle through a library's frame
    holds only builtin objects: the frame, tracebacks, an OSError)."""
    if isinstance(o, types.FrameType):
        return f"{o.f_globals.get('__name__')}.{o.f_code.co_name} (frame)"
    return f"{type(o).__module__}.{type(o).__qualname__}"


def _cyclic_garbage() -> Counter[str]:
    """What a collection would free now, by type, restricted to the servers' objects."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = Counter(
            name
            for o in gc.garbage
            if (
                (name := _name(o)).split(".")[0] in _SERVER_PACKAGES
                or type(o).__qualname__ in _SERVER_TYPES
            )
            and not _grpc_call_lookup(o)
        )
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return found


async def test_a_released_cancelled_task_frees_its_owner_without_the_collector(
    collector_off: None,
) -> None:
    """``release`` takes the CancelledError a cancelled task keeps; its owner then goes with
    its last reference."""

    class Owner:
        task: asyncio.Task[None]

        async def run(self) -> None:
            await asyncio.sleep(60)

    owner = Owner()
    owner.task = asyncio.create_task(owner.run())
    await asyncio.sleep(0)
    owner.task.cancel()
    await asyncio.gather(owner.task, return_exceptions=True)
    release(owner.task)
    gone = weakref.ref(owner)
    del owner
    assert gone() is None


async def test_every_way_a_generation_and_a_connection_end_leaves_no_cycle(
    make_stack: StackFactory, collector_off: None
) -> None:
    """Completed, cancelled, upstream error, upstream reset, and running when the client's
    socket closed: nothing of generator or bridge outlives it, nothing is left for the
    collector."""
    stack = await make_stack(Script(tokens=200, interval=0.01))
    for round_ in range(3):
        if round_ == 1:
            # The first round opened what lives as long as the servers (the bridge's gRPC
            # stream, the upstream pool); from here on nothing may be left.
            await asyncio.sleep(0.05)
            _cyclic_garbage()
        client = await stack.client(f"client {round_}")
        await client.generate("done", '#fake {"tokens": 3, "interval": 0}')
        await client.generate("cancelled")
        await client.generate("failed", '#fake {"status": 500}')
        await client.generate("reset", '#fake {"reset_after": 2}')
        await client.generate("cut off")
        ends: dict[str, str] = {}
        streaming: set[str] = set()
        while len(ends) < 4 or "cut off" not in streaming:
            frame = await client.recv()
            request_id = frame["requestId"]
            if frame["type"] == "ai:token" and request_id not in streaming:
                streaming.add(request_id)
                if request_id == "cancelled":
                    await client.cancel("cancelled")
            elif frame["type"] in ("ai:done", "ai:error"):
                ends[request_id] = frame["type"]
        assert ends == {
            "done": "ai:done",
            "cancelled": "ai:error",
            "failed": "ai:error",
            "reset": "ai:error",
        }
        if round_ == 2:
            running = _alive(_PER_STREAM_TYPES)
            assert set(running) == set(_PER_STREAM_TYPES), running  # the check can see them
        client.conversation.abandoned = True
        await client.ws.close()
        await stack.fake.wait_for(lambda: not stack.fake.active(), timeout=5 * UNIT)
        assert await _until(lambda: not stack.bridge.connections)
    # The last connection's handler may still be closing its socket; a cycle never goes.
    await _until(lambda: not _alive(_PER_STREAM_TYPES))
    assert _alive(_PER_STREAM_TYPES) == Counter()
    assert _cyclic_garbage() == Counter()


async def test_a_generator_that_goes_away_leaves_no_cycle_in_the_bridge(
    make_stack: StackFactory, collector_off: None
) -> None:
    """The generator stops with a generation running: the connection hears of it, and the
    bridge's shared stream — its call, its writer and reader tasks — goes by reference counting
    (the writer, cancelled when its call ended, kept its error and so itself and the call)."""
    stack = await make_stack(Script(tokens=200, interval=0.01))
    client = await stack.client()
    await client.generate("first", '#fake {"tokens": 3, "interval": 0}')
    while (await client.recv())["type"] != "ai:done":
        pass
    await asyncio.sleep(0.05)
    _cyclic_garbage()  # what lives as long as the servers
    await client.generate("running")
    while (await client.recv())["type"] != "ai:token":
        pass
    await stack.generator.stop(drain_timeout=0)
    while (frame := await client.recv())["type"] != "ai:error":
        pass
    assert frame["requestId"] == "running"
    assert await _until(lambda: stack.bridge.link.streams[0]._current is None)
    await asyncio.sleep(0.05)  # the writer's cancellation lands
    assert _cyclic_garbage() == Counter()


@pytest.mark.parametrize("retries", [0, 2])
async def test_an_unreachable_upstream_leaves_no_cycle(
    make_stack: StackFactory, collector_off: None, retries: int
) -> None:
    """Requests to an upstream nobody listens on end ``unavailable`` (each attempt, retries
    included, refused) and leave nothing for the collector: aiohttp's connector keeps the error
    it raises in its own frame, and generator/first_attempts.py has the error chain let go of
    its tracebacks (with an upstream down under load every request would leave that cycle)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again before anyone connects
    stack = await make_stack(upstream_max_retries=retries, base_url=f"http://127.0.0.1:{port}/v1")
    client = await stack.client()
    for round_ in range(2):
        if round_ == 1:  # the first round opened what lives as long as the servers
            await asyncio.sleep(0.05)
            _cyclic_garbage()
        request_ids = [f"{round_}-{i}" for i in range(5)]
        for request_id in request_ids:
            await client.generate(request_id)
        ends: dict[str, str] = {}
        while len(ends) < len(request_ids):
            frame = await client.recv()
            if frame["type"] in ("ai:done", "ai:error"):
                ends[frame["requestId"]] = frame.get("code", frame["type"])
        assert set(ends.values()) == {"unavailable"}, ends
    assert _cyclic_garbage() == Counter()
