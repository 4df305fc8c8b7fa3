"""aistream.bridge.link: many connections' generations over a few shared gRPC streams, kept apart.

Every stack here runs with ``generator_streams=1``, so all connections share one stream.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import cast

from conftest import TERMINAL, UNIT, StackFactory

from aistream.bridge.link import GeneratorLink
from aistream.testing.fake_upstream import Script
from aistream.v1 import events_pb2 as pb
from aistream.v1 import generator_pb2_grpc


async def test_the_same_request_id_on_two_connections_stays_apart(
    make_stack: StackFactory,
) -> None:
    """Two connections both use request id r1 at once: each gets exactly its own answer."""
    stack = await make_stack(Script(tokens=20, interval=0.002), generator_streams=1)
    a, b = await stack.client("a"), await stack.client("b")
    await a.generate("r1", "first")
    await b.generate("r1", "second")
    frames_a = await a.until(lambda f: f["type"] in TERMINAL)
    frames_b = await b.until(lambda f: f["type"] in TERMINAL)
    for frames in (frames_a, frames_b):
        assert {f["requestId"] for f in frames} == {"r1"}
        assert [frames[0]["type"], frames[-1]["type"]] == ["ai:start", "ai:done"]
        assert sum(f.get("count", 0) for f in frames) == 20
    # the generator saw two distinct requests, neither under the browsers' id
    prompts = sorted(r.body["messages"][-1]["content"] for r in stack.fake.records)
    assert prompts == ["first", "second"]


async def test_closing_one_connection_cancels_only_its_generations(
    make_stack: StackFactory,
) -> None:
    """On a shared stream, a closed socket closes its own upstreams; a neighbour's goes on."""
    stack = await make_stack(Script(tokens=60, interval=0.01), generator_streams=1)
    leaving, staying = await stack.client("leaving"), await stack.client("staying")
    await leaving.generate("x", "leaving")
    await staying.generate("x", "staying")
    await stack.fake.wait_for(lambda: len(stack.fake.records) == 2)
    await leaving.until(lambda f: f["type"] == "ai:token")
    await leaving.ws.close()
    leaving.abandon()
    by_prompt = {r.body["messages"][-1]["content"]: r for r in stack.fake.records}
    closed = await stack.fake.wait_closed(by_prompt["leaving"], 2 * UNIT)
    assert closed.outcome == "client_closed"
    end = await staying.finish("x", 5 * UNIT)
    assert end["type"] == "ai:done"
    assert by_prompt["staying"].outcome == "completed"


async def test_cancel_on_a_shared_stream_reaches_only_its_generation(
    make_stack: StackFactory,
) -> None:
    """ai:cancel of r1 on one connection ends that generation only (with cancelled)."""
    stack = await make_stack(Script(tokens=60, interval=0.01), generator_streams=1)
    a, b = await stack.client("a"), await stack.client("b")
    await a.generate("r1", "a")
    await b.generate("r1", "b")
    await a.until(lambda f: f["type"] == "ai:token")
    await a.cancel("r1")
    end_a = await a.finish("r1")
    assert (end_a["type"], end_a["code"]) == ("ai:error", "cancelled")
    end_b = await b.finish("r1", 5 * UNIT)
    assert end_b["type"] == "ai:done"


async def test_a_slow_reader_does_not_hold_up_its_neighbours(make_stack: StackFactory) -> None:
    """A connection that stops reading is cut off (slow_consumer) while another connection on
    the same stream keeps receiving its answer at full speed."""
    stack = await make_stack(
        Script(tokens=100_000, text="x" * 1000, interval=0.0002),  # 5 MB/s
        generator_streams=1,
        ws_send_buffer=64 * 1024,
    )
    slow = await stack.client("slow")
    slow.abandon()
    await slow.generate("s")
    await slow.until(lambda f: f["type"] == "ai:token")
    slow.ws.transport.pause_reading()  # stops reading: the kernel buffers fill, then the bridge's
    stack.fake.script = Script(tokens=200, interval=0.001)
    fast = await stack.client("fast")
    await fast.generate("f")
    end = await fast.finish("f", 10 * UNIT)
    assert end["type"] == "ai:done"
    slow_record = stack.fake.records[0]
    closed = await stack.fake.wait_closed(slow_record, 30 * UNIT)
    assert closed.outcome == "client_closed"
    slow.ws.transport.abort()  # (a closing handshake would wait for the unread backlog)


class _RecordingCall:
    """Stands in for the StreamBatches call (below the link): records what the writer sends,
    each write taking a moment as a real one does; yields no events."""

    def __init__(self) -> None:
        self.writes: list[pb.ClientEventBatch] = []
        self.ended = asyncio.Event()

    async def write(self, batch: pb.ClientEventBatch) -> None:
        self.writes.append(batch)
        await asyncio.sleep(0.01)

    def __aiter__(self) -> _RecordingCall:
        return self

    async def __anext__(self) -> pb.ServerEventBatch:
        await self.ended.wait()
        raise StopAsyncIteration

    def cancel(self) -> bool:
        self.ended.set()
        return True


class _Nobody:
    def deliver(self, request_id: str, event: pb.ServerEvent) -> None:
        raise AssertionError("no events expected")

    def lost(self, request_ids: list[str], reason: str) -> None:
        pass


async def test_waiting_generates_and_cancels_travel_in_one_batch_in_order() -> None:
    """The link's writer sends every Generate and Cancel that gathered while a write was under
    way as one ClientEventBatch, in order, and starts a new batch once one holds 1 MiB."""
    call = _RecordingCall()
    stub = SimpleNamespace(StreamBatches=lambda metadata: call)
    link = GeneratorLink(cast(generator_pb2_grpc.GeneratorStub, stub), (), streams=1)
    stream = link.assign()
    nobody = _Nobody()

    def generate(request_id: str, prompt: str = "p") -> pb.ClientEvent:
        return pb.ClientEvent(generate=pb.Generate(request_id=request_id, prompt=prompt))

    first = stream.generate(nobody, generate("a"))
    await asyncio.sleep(0)  # the writer takes the first one alone and starts writing it
    wires = [stream.generate(nobody, generate(f"b{i}")) for i in range(5)]
    stream.cancel(wires[1])
    big = "x" * 600_000  # two of these fill a batch
    for i in range(3):
        stream.generate(nobody, generate(f"big{i}", big))
    for _ in range(50):
        if sum(len(b.events) for b in call.writes) == 10:
            break
        await asyncio.sleep(0.01)
    ids = [
        [e.generate.request_id or f"cancel:{e.cancel.request_id}" for e in batch.events]
        for batch in call.writes
    ]
    assert ids[0] == [first]
    assert ids[1][:6] == [*wires, f"cancel:{wires[1]}"]
    assert [len(b) for b in ids[1:]] == [8, 1]  # 6 small + 2 big (1.2 MB: full), the third
    await link.close()
