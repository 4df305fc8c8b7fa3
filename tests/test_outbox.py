"""aistream.generator.outbox: bounded memory and token coalescing when the writer falls behind."""

from __future__ import annotations

import asyncio

from aistream.outbox import Outbox
from aistream.v1 import events_pb2 as pb


def _start(rid: str) -> pb.ServerEvent:
    return pb.ServerEvent(start=pb.Start(request_id=rid))


async def test_fifo_when_writer_keeps_up() -> None:
    """Events come out in order, one token event per put while the writer keeps up."""
    box = Outbox(capacity=8)
    box.put(_start("a"))
    assert (await box.get()) is not None
    await box.put_token("a", "x", 0, 1)
    event = await box.get()
    assert event is not None and event.token.chunk == "x"
    await box.put_token("a", "y", 1, 1)
    event = await box.get()
    assert event is not None and (event.token.chunk, event.token.seq) == ("y", 1)


async def test_tokens_coalesce_while_waiting() -> None:
    """Tokens of one id merge into the waiting token event: seq of the first, count grows."""
    box = Outbox(capacity=8)
    for i, text in enumerate(["a", "b", "c"]):
        await box.put_token("r", text, i, 1)
    await box.put_token("s", "z", 0, 1)
    assert len(box) == 2
    first = await box.get()
    assert first is not None
    assert (first.token.chunk, first.token.seq, first.token.count) == ("abc", 0, 3)
    await box.put_token("r", "d", 3, 1)  # the merged event left: a new one starts at seq 3
    await box.get()
    last = await box.get()
    assert last is not None and (last.token.chunk, last.token.seq) == ("d", 3)


async def test_terminal_stops_merging() -> None:
    """After a terminal event nothing merges into that id's earlier token event."""
    box = Outbox(capacity=8)
    await box.put_token("r", "a", 0, 1)
    box.put(pb.ServerEvent(done=pb.Done(request_id="r")))
    box.put(_start("r"))
    await box.put_token("r", "new", 0, 1)
    kinds = []
    while len(box):
        event = await box.get()
        assert event is not None
        kinds.append(event.WhichOneof("event"))
    assert kinds == ["token", "done", "start", "token"]


async def test_full_outbox_makes_new_ids_wait() -> None:
    """At capacity a token for an id with nothing waiting blocks until the writer takes one."""
    box = Outbox(capacity=2, max_chunk_chars=4)
    await box.put_token("a", "1", 0, 1)
    await box.put_token("b", "1", 0, 1)
    blocked = asyncio.create_task(box.put_token("c", "1", 0, 1))
    await asyncio.sleep(0)
    assert not blocked.done()
    await box.put_token("a", "234", 1, 3)  # still merges: room in a's event
    assert not blocked.done()
    await box.get()
    await asyncio.wait_for(blocked, 1)
    assert len(box) == 2


async def test_chunk_limit_bounds_each_event() -> None:
    """A waiting token event never grows past max_chunk_chars; the next put waits instead."""
    box = Outbox(capacity=1, max_chunk_chars=3)
    await box.put_token("a", "12", 0, 2)
    blocked = asyncio.create_task(box.put_token("a", "34", 2, 2))
    await asyncio.sleep(0)
    assert not blocked.done()
    event = await box.get()
    assert event is not None and event.token.chunk == "12"
    await asyncio.wait_for(blocked, 1)


async def test_wake_returns_none() -> None:
    """wake() releases a waiting get with None."""
    box = Outbox(capacity=1)
    waiter = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    box.wake()
    assert await asyncio.wait_for(waiter, 1) is None


async def test_get_batch_takes_everything_waiting_in_order() -> None:
    """get_batch returns up to the limit of the oldest events, in order; merged tokens stay one."""
    box = Outbox(capacity=8)
    box.put(_start("a"))
    for i in range(3):
        await box.put_token("a", str(i), i, 1)
    box.put(pb.ServerEvent(done=pb.Done(request_id="a")))
    first = await box.get_batch(2)
    assert [e.WhichOneof("event") for e in first] == ["start", "token"]
    assert first[1].token.chunk == "012"
    rest = await box.get_batch(10)
    assert [e.WhichOneof("event") for e in rest] == ["done"]
    assert len(box) == 0
    assert box.bytes == 0


async def test_offer_refuses_past_max_bytes() -> None:
    """offer() queues nothing and says False once max_bytes would be passed."""
    box = Outbox(capacity=100, max_bytes=300)
    token = pb.ServerEvent(token=pb.Token(request_id="a", chunk="x" * 100, seq=0, count=1))
    assert box.offer(token)
    other = pb.ServerEvent(token=pb.Token(request_id="b", chunk="y" * 100, seq=0, count=1))
    assert not box.offer(other)
    assert len(box) == 1
    assert box.bytes <= 300


def _error(message: str) -> pb.ServerEvent:
    return pb.ServerEvent(error=pb.Error(message=message))


async def test_over_at_twice_the_bounds_and_room_waits_until_under() -> None:
    """``over`` holds at twice capacity (or max_bytes): room() returns at once below it, and
    otherwise waits until the writer has taken enough."""
    box = Outbox(capacity=2, max_bytes=10_000)
    for _ in range(3):
        box.put(_error("no"))
    assert box.full and not box.over
    await asyncio.wait_for(box.room(), 1)  # full is not over: no wait
    box.put(_error("no"))
    assert box.over
    waiter = asyncio.create_task(box.room())
    await asyncio.sleep(0)
    assert not waiter.done()
    await box.get()
    await asyncio.wait_for(waiter, 1)
    assert not box.over
    box.clear()
    box.put(_error("x" * 20_000))  # one event past twice max_bytes
    assert box.over


async def test_room_and_tokens_wait_together() -> None:
    """A token waiting for room and a room() waiter are both released by the writer."""
    box = Outbox(capacity=1)
    box.put(_start("a"))
    box.put(_start("b"))
    token = asyncio.create_task(box.put_token("a", "x", 0, 1))
    room = asyncio.create_task(box.room())
    await asyncio.sleep(0)
    assert not token.done() and not room.done()
    await box.get()
    await box.get()
    await asyncio.wait_for(asyncio.gather(token, room), 1)
    assert len(box) == 1


# --- control before data ---------------------------------------------------------------------


def _error(rid: str) -> pb.ServerEvent:
    return pb.ServerEvent(error=pb.Error(request_id=rid, code=pb.ERROR_CODE_TOO_MANY_REQUESTS))


async def _drain(box: Outbox) -> list[tuple[str, str]]:
    out = []
    while len(box):
        event = await box.get()
        assert event is not None
        kind = event.WhichOneof("event")
        assert kind is not None
        out.append((kind, getattr(event, kind).request_id))
    return out


async def test_a_start_or_a_refusal_goes_ahead_of_other_requests_tokens() -> None:
    """Control before data: a new generation's start and a refusal do not wait behind the
    tokens other requests have waiting."""
    box = Outbox(capacity=64)
    for rid in ("a", "b", "c"):
        await box.put_token(rid, "x", 0, 1)
    box.put(_start("d"))
    box.put(_error("e"))
    await box.put_token("d", "y", 0, 1)
    assert await _drain(box) == [
        ("start", "d"),
        ("error", "e"),
        ("token", "a"),
        ("token", "b"),
        ("token", "c"),
        ("token", "d"),
    ]


async def test_a_terminal_stays_behind_its_own_requests_parts() -> None:
    """The end of a request with parts still waiting follows them; the end of one with nothing
    waiting goes ahead of the others' parts — and a new lifecycle of an id follows its old end."""
    box = Outbox(capacity=64)
    await box.put_token("a", "x", 0, 1)
    await box.put_token("b", "y", 0, 1)
    box.put(pb.ServerEvent(done=pb.Done(request_id="a")))
    box.put(_start("a"))  # (a new generation under the same id)
    box.put(pb.ServerEvent(done=pb.Done(request_id="c")))
    assert await _drain(box) == [
        ("done", "c"),
        ("token", "a"),
        ("token", "b"),
        ("done", "a"),
        ("start", "a"),
    ]
    assert box.bytes == 0


async def test_a_batch_takes_control_first_and_counts_it_in_the_bounds() -> None:
    box = Outbox(capacity=3)
    await box.put_token("a", "x", 0, 1)
    await box.put_token("b", "y", 0, 1)
    box.put(_start("c"))
    assert box.full and len(box) == 3
    batch = await box.get_batch(2)
    assert [e.WhichOneof("event") for e in batch] == ["start", "token"]
    assert not box.full and len(box) == 1
