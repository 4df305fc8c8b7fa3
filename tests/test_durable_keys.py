"""The Redis layout of durable streams without Redis (aistream/durable.py) and the generator's
log entries (generator/redis_log.encode): ids follow positions, a reader drops by position what
it holds, control messages parse strictly, the meta hash opens only with the right token."""

from __future__ import annotations

from aistream import durable
from aistream.generator.followers import Part
from aistream.generator.redis_log import encode
from aistream.resume import mint, split
from aistream.v1 import events_pb2 as pb


def test_entry_ids_follow_positions_and_a_cursor_skips_what_is_held() -> None:
    assert durable.entry_id(0) == "0-1"
    assert durable.last_position(b"0-1") == 0
    assert durable.last_position("0-42") == 41
    # entries after cursor(k) are exactly those whose last position is past k
    assert durable.cursor(-1) == "0-0"
    assert durable.cursor(7) == durable.entry_id(7)


def test_an_entry_keeps_every_event_whole_and_in_order() -> None:
    start = pb.ServerEvent(start=pb.Start(seq=0))
    items = [
        start,
        Part("token", "Hello", 1, 2, 0),
        Part("reasoning", " think", 3, 1, 0),
        Part("tool_args", "{}", 4, 3, 2),
    ]
    events = pb.ServerEventBatch.FromString(encode(items)).events
    assert [e.WhichOneof("event") for e in events] == ["start", "token", "reasoning", "tool_args"]
    assert [durable.span(e) for e in events] == [(0, 0), (1, 2), (3, 3), (4, 6)]
    assert events[3].tool_args.index == 2 and events[1].token.chunk == "Hello"
    # a reader holding up to 2 keeps what follows, whole
    assert [durable.span(e) for e in durable.fresh(events, 2)] == [(3, 3), (4, 6)]
    assert durable.fresh(events, 6) == []


def test_control_messages_parse_strictly() -> None:
    message = durable.control(durable.ATTACH, "ab" * 16, "bridge.redis-1")
    assert durable.parse_control(message.encode()) == (durable.ATTACH, "ab" * 16, "bridge.redis-1")
    assert durable.parse_control(durable.control(durable.CANCEL, "k")) == ("cancel", "k", "")
    for junk in (b"", b"cancel", b"shutdown k", b"\xff\xfe", "attach "):
        assert durable.parse_control(junk) is None


def test_the_meta_hash_opens_only_with_its_token_and_request() -> None:
    minted = mint()
    raw = {b"d": minted.digest, b"o": b"node1", b"r": b"r"}  # (as the writer's script sets it)
    meta = durable.parse_meta(raw)
    assert meta is not None and meta.end is None and meta.owner == "node1"
    parts = split(minted.token)
    assert parts is not None
    assert meta.opens(parts[1], "r")
    assert not meta.opens(parts[1], "other")
    other = parts[1][:-1] + ("A" if parts[1][-1] != "A" else "B")  # (another secret)
    assert not meta.opens(other, "r")
    ended = durable.parse_meta({**raw, b"e": b"17"})
    assert ended is not None and ended.end == 17
    assert durable.parse_meta({}) is None
    assert durable.parse_meta({b"d": b"x", b"o": b"n", b"r": b"r", b"e": b"nan"}) is None
    assert durable.log_key("k") == "ais:{k}:log" and durable.meta_key("k") == "ais:{k}:meta"


def test_an_entry_written_by_hand_is_what_protobuf_reads() -> None:
    """The writer encodes parts itself (cheaper than a message per token): every kind, any
    text, positions and counts past one byte, a tool call's index — equal to protobuf's own."""
    items: list[object] = [
        Part("token", "", 0, 1, 0),
        Part("token", "héllo — 世界 🌍", 127, 128, 0),
        Part("reasoning", "x" * 300, 16_384, 2**31, 0),
        Part("refusal", "no", 5, 1, 0),
        Part("tool_args", '{"a": 1}', 300, 3, 129),
        pb.ServerEvent(done=pb.Done(seq=400)),
    ]
    expected = pb.ServerEventBatch()
    for item in items:
        if isinstance(item, pb.ServerEvent):
            expected.events.append(item)
            continue
        assert isinstance(item, Part)
        body = getattr(expected.events.add(), item.kind)
        body.chunk, body.seq, body.count = item.text, item.seq, item.tokens
        if item.call:
            body.index = item.call
    assert pb.ServerEventBatch.FromString(encode(items)) == expected  # type: ignore[arg-type]
