"""The generator over real gRPC, against the fake upstream over real HTTP.

Each test proves its claim with the fake upstream's own records: what arrived, and when the
client (the generator's SDK) closed the connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from conftest import UNIT, GrpcClient, settings_for
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aistream.generator.server import SERVICE_NAME, GeneratorServer
from aistream.testing.fake_upstream import FakeUpstream, Script
from aistream.v1 import events_pb2 as pb
from aistream.v1 import generator_pb2_grpc

Gen = Callable[..., Awaitable[tuple[GeneratorServer, grpc.aio.Channel]]]


@pytest.fixture
async def gen(fake: FakeUpstream) -> AsyncIterator[Gen]:
    """Start a generator on the fake with setting overrides; returns (server, channel)."""
    started: list[tuple[GeneratorServer, grpc.aio.Channel]] = []

    async def start(**overrides: Any) -> tuple[GeneratorServer, grpc.aio.Channel]:
        server = GeneratorServer(settings_for(fake, **overrides))
        port = await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        started.append((server, channel))
        return server, channel

    yield start
    for server, channel in started:
        await channel.close(None)
        await server.stop(drain_timeout=0)
    # No ghost generations: every upstream response ended, every connection closed.
    await fake.wait_for(lambda: not fake.active() and not fake.connections)


def kind(event: pb.ServerEvent) -> str:
    """The oneof name of an event."""
    name = event.WhichOneof("event")
    assert name is not None
    return name


async def test_generate_streams_start_tokens_done(fake: FakeUpstream, gen: Gen) -> None:
    """A Generate yields Start, the upstream's tokens in order, and Done with upstream usage."""
    fake.script = Script(tokens=4, interval=0.005)
    _, channel = await gen()
    client = GrpcClient(channel, "grpc")
    await client.generate("r1", "tell me")
    events = [await client.recv() for _ in range(6)]
    assert [kind(e) for e in events] == ["start", "token", "token", "token", "token", "done"]
    assert "".join(e.token.chunk for e in events[1:5]) == "tok0 tok1 tok2 tok3 "
    done = events[-1].done
    assert done.finish_reason == pb.FINISH_REASON_STOP
    assert done.usage.source == pb.USAGE_SOURCE_UPSTREAM
    assert done.usage.completion_tokens == 4
    assert done.duration_ms >= done.ttft_ms
    body = fake.records[0].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"][-1] == {"role": "user", "content": "tell me"}
    assert fake.records[0].headers["authorization"] == "Bearer test-key"
    client.call.cancel()
    client.abandon()


async def test_history_model_and_limits_reach_the_upstream(fake: FakeUpstream, gen: Gen) -> None:
    """messages, model, maxTokens (capped) and temperature are sent upstream."""
    _, channel = await gen(max_tokens_cap=50)
    client = GrpcClient(channel, "grpc")
    await client.generate(
        "r1",
        "and now?",
        messages=[
            pb.ChatMessage(role=pb.ROLE_SYSTEM, content="be brief"),
            pb.ChatMessage(role=pb.ROLE_USER, content="hi"),
            pb.ChatMessage(role=pb.ROLE_ASSISTANT, content="hello"),
        ],
        model="small-model",
        max_tokens=500,
        temperature=0.25,
    )
    await client.finish("r1")
    body = fake.records[0].body
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("small-model", 50, 0.25)
    client.call.cancel()


async def test_cancel_closes_the_upstream_connection(fake: FakeUpstream, gen: Gen) -> None:
    """Cancel ends the id with Error(cancelled) and the upstream sees its connection closed."""
    fake.script = Script(tokens=1000, interval=0.01)
    _, channel = await gen()
    client = GrpcClient(channel, "grpc")
    await client.generate("r1")
    while kind(await client.recv()) != "token":
        pass
    await client.cancel("r1")
    end = await client.finish("r1")
    assert end.error.code == pb.ERROR_CODE_CANCELLED
    assert end.error.usage.completion_tokens >= 1
    assert end.error.usage.source == pb.USAGE_SOURCE_ESTIMATED
    record = await fake.wait_closed(fake.records[0], 2 * UNIT)
    assert record.outcome == "client_closed"
    assert record.tokens_sent < 1000
    client.call.cancel()


async def test_ending_the_call_closes_every_upstream(fake: FakeUpstream, gen: Gen) -> None:
    """Cancelling the gRPC call (client gone) closes the upstream request of every generation."""
    fake.script = Script(tokens=1000, interval=0.01)
    server, channel = await gen()
    client = GrpcClient(channel, "grpc")
    for i in range(3):
        await client.generate(f"r{i}")
    await fake.wait_for(lambda: len(fake.records) == 3 and all(r.tokens_sent for r in fake.records))
    client.call.cancel()
    client.abandon()
    await fake.wait_idle(2 * UNIT)
    assert {r.outcome for r in fake.records} == {"client_closed"}
    await asyncio.sleep(0)
    assert server.service.running == 0


async def test_repeated_id_does_not_start_a_second_generation(fake: FakeUpstream, gen: Gen) -> None:
    """A Generate for a running id is ignored: one upstream request, one Start, one terminal."""
    fake.script = Script(tokens=5, interval=0.02)
    _, channel = await gen()
    client = GrpcClient(channel, "grpc")
    await client.generate("same")
    await client.generate("same")
    await client.generate("same")
    await client.finish("same")
    assert len(fake.records) == 1
    # once ended, the id may be used again: a new generation
    await client.generate("same")
    await client.finish("same")
    assert len(fake.records) == 2
    client.call.cancel()


async def test_cancel_for_unknown_or_finished_id_is_a_noop(fake: FakeUpstream, gen: Gen) -> None:
    """Cancel of an unknown or finished id sends nothing back; the stream goes on."""
    _, channel = await gen()
    client = GrpcClient(channel, "grpc")
    await client.cancel("never-started")
    await client.generate("a")
    await client.finish("a")
    await client.cancel("a")
    await client.generate("b")
    first = await client.recv()
    assert (kind(first), first.start.request_id) == ("start", "b")
    await client.finish("b")
    client.call.cancel()


async def test_invalid_generate_is_rejected_in_band(fake: FakeUpstream, gen: Gen) -> None:
    """An invalid Generate gets Error(invalid_request) with no Start; the stream goes on."""
    _, channel = await gen(max_prompt_chars=10)
    client = GrpcClient(channel, "grpc")
    await client.send(pb.ClientEvent())
    err = await client.recv()
    assert (err.error.code, err.error.request_id) == (pb.ERROR_CODE_INVALID_REQUEST, "")
    await client.generate("long", "x" * 11)
    err = await client.recv()
    assert (err.error.code, err.error.request_id) == (pb.ERROR_CODE_INVALID_REQUEST, "long")
    assert "prompt" in err.error.message
    await client.generate("ok", "fine")
    assert (await client.finish("ok")).WhichOneof("event") == "done"
    assert len(fake.records) == 1
    client.call.cancel()


async def test_first_token_timeout(fake: FakeUpstream, gen: Gen) -> None:
    """No first token in time → Error(timeout) and the upstream connection is closed."""
    fake.script = Script(ttft=10)
    _, channel = await gen(first_token_timeout=0.3 * UNIT)
    client = GrpcClient(channel, "grpc")
    await client.generate("r1")
    end = await client.finish("r1")
    assert end.error.code == pb.ERROR_CODE_TIMEOUT
    assert "first token" in end.error.message
    assert end.error.retryable
    assert (await fake.wait_closed(fake.records[0])).outcome == "client_closed"
    client.call.cancel()


async def test_headers_never_arrive_is_a_first_token_timeout(fake: FakeUpstream, gen: Gen) -> None:
    """An upstream hanging before its response headers is ended by the first-token limit."""
    fake.script = Script(headers_delay=10)
    _, channel = await gen(first_token_timeout=0.3 * UNIT)
    client = GrpcClient(channel, "grpc")
    await client.generate("r1")
    end = await client.finish("r1")
    assert end.error.code == pb.ERROR_CODE_TIMEOUT
    assert (await fake.wait_closed(fake.records[0])).outcome == "client_closed"
    client.call.cancel()


async def test_stall_timeout(fake: FakeUpstream, gen: Gen) -> None:
    """A gap between tokens longer than the stall limit → Error(timeout), upstream closed."""
    fake.script = Script(tokens=10, stall_after=2)
    _, channel = await gen(stall_timeout=0.3 * UNIT)
    client = GrpcClient(channel, "grpc")
    await client.generate("r1")
    end = await client.finish("r1")
    assert end.error.code == pb.ERROR_CODE_TIMEOUT
    assert "stalled" in end.error.message
    assert end.error.usage.completion_tokens == 2
    assert (await fake.wait_closed(fake.records[0])).outcome == "client_closed"
    client.call.cancel()


async def test_total_deadline_lowered_by_the_request(fake: FakeUpstream, gen: Gen) -> None:
    """timeout_ms lowers the total limit: a steady stream longer than it ends in timeout."""
    fake.script = Script(tokens=1000, interval=0.01)
    _, channel = await gen()
    client = GrpcClient(channel, "grpc")
    await client.generate("r1", timeout_ms=int(300 * UNIT))
    end = await client.finish("r1")
    assert end.error.code == pb.ERROR_CODE_TIMEOUT
    assert "time limit" in end.error.message
    assert end.error.duration_ms >= 300 * UNIT - 5
    assert (await fake.wait_closed(fake.records[0])).outcome == "client_closed"
    client.call.cancel()


async def test_request_limit_cannot_exceed_the_server_maximum(fake: FakeUpstream, gen: Gen) -> None:
    """A timeout_ms above max_deadline is clamped to it."""
    fake.script = Script(tokens=1000, interval=0.01)
    _, channel = await gen(deadline=0.2 * UNIT, max_deadline=0.3 * UNIT)
    client = GrpcClient(channel, "grpc")
    await client.generate("r1", timeout_ms=3_600_000)
    end = await client.finish("r1")
    assert end.error.code == pb.ERROR_CODE_TIMEOUT
    assert end.error.duration_ms < 1000 * UNIT
    client.call.cancel()


SECRET = "SECRET-upstream-detail-10.1.2.3"


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (400, pb.ERROR_CODE_UPSTREAM_ERROR, False),
        (401, pb.ERROR_CODE_UPSTREAM_ERROR, False),
        (404, pb.ERROR_CODE_UPSTREAM_ERROR, False),
        (429, pb.ERROR_CODE_RATE_LIMITED, True),
        (500, pb.ERROR_CODE_UPSTREAM_ERROR, True),
        (503, pb.ERROR_CODE_UPSTREAM_ERROR, True),
    ],
)
async def test_upstream_status_errors_map_to_codes_without_leaking(
    fake: FakeUpstream, gen: Gen, status: int, code: int, retryable: bool
) -> None:
    """HTTP errors before the first token end in their code; the upstream's text is not sent."""
    fake.script = Script(status=status, error_message=SECRET)
    _, channel = await gen()
    client = GrpcClient(channel, "grpc")
    await client.generate("r1")
    end = await client.finish("r1")
    assert (end.error.code, end.error.retryable) == (code, retryable)
    assert SECRET not in str(end)
    client.call.cancel()


async def test_retries_happen_before_the_first_token(fake: FakeUpstream, gen: Gen) -> None:
    """With retries on, a 500 then a good answer ends in Done after two upstream requests."""
    answers = iter([Script(status=500, retry_after=0.01), Script(tokens=3)])
    fake.script_for = lambda body: next(answers)
    _, channel = await gen(upstream_max_retries=2)
    client = GrpcClient(channel, "grpc")
    await client.generate("r1")
    assert (await client.finish("r1")).WhichOneof("event") == "done"
    assert [r.status for r in fake.records] == [500, 200]
    client.call.cancel()


async def test_unreachable_upstream_is_unavailable(gen: Gen) -> None:
    """Connection refused → Error(unavailable, retryable)."""
    closed = FakeUpstream()
    await closed.start()
    url = closed.base_url
    await closed.close()
    _, channel = await gen(base_url=url)
    client = GrpcClient(channel, "grpc")
    await client.generate("r1")
    end = await client.finish("r1")
    assert (end.error.code, end.error.retryable) == (pb.ERROR_CODE_UNAVAILABLE, True)
    client.call.cancel()


@pytest.mark.parametrize(
    ("script", "words"),
    [
        (Script(tokens=10, close_after=3), "before finishing"),
        (Script(tokens=10, reset_after=3), "connection failed"),
        (Script(tokens=10, malformed_after=3), "malformed"),
        (Script(tokens=10, error_event_after=3, error_message=SECRET), "failed during"),
    ],
)
async def test_mid_stream_failures_are_errors_never_done(
    fake: FakeUpstream, gen: Gen, script: Script, words: str
) -> None:
    """Truncation, reset, malformed SSE and error events after tokens end in upstream_error."""
    fake.script = script
    _, channel = await gen()
    client = GrpcClient(channel, "grpc")
    await client.generate("r1")
    end = await client.finish("r1")
    assert end.WhichOneof("event") == "error"
    assert end.error.code == pb.ERROR_CODE_UPSTREAM_ERROR
    assert end.error.retryable
    assert words in end.error.message
    assert SECRET not in str(end)
    assert end.error.usage.completion_tokens == 3
    client.call.cancel()


async def test_interleaved_generations_each_end_once(fake: FakeUpstream, gen: Gen) -> None:
    """20 generations on one stream interleave; each gets its own tokens and one terminal."""
    fake.script = Script(tokens=20, interval=0.002)
    _, channel = await gen()
    client = GrpcClient(channel, "grpc")
    ids = [f"r{i}" for i in range(20)]
    for rid in ids:
        await client.generate(rid)
    ended: dict[str, str] = {}
    text: dict[str, str] = dict.fromkeys(ids, "")
    while len(ended) < len(ids):
        event = await client.recv()
        name = kind(event)
        body = getattr(event, name)
        if name == "token":
            text[body.request_id] += body.chunk
        elif name in ("done", "error"):
            ended[body.request_id] = name
    assert set(ended.values()) == {"done"}
    assert set(text.values()) == {"".join(f"tok{i} " for i in range(20))}
    client.call.cancel()


async def test_health_and_reflection(gen: Gen) -> None:
    """The standard health service reports SERVING for the server and the Generator service."""
    _, channel = await gen()
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for reply in stub.ServerReflectionInfo(requests()):
        names = {s.name for s in reply.list_services_response.service}
        assert SERVICE_NAME in names
        break


async def test_shutdown_ends_running_generations_retryable(fake: FakeUpstream, gen: Gen) -> None:
    """stop() ends what is still running after the drain with unavailable, upstream closed."""
    fake.script = Script(tokens=1000, interval=0.01)
    server, channel = await gen()
    client = GrpcClient(channel, "grpc")
    await client.generate("r1")
    while kind(await client.recv()) != "token":
        pass
    stopping = asyncio.create_task(server.stop(drain_timeout=0.1 * UNIT))
    end = await client.finish("r1")
    assert (end.error.code, end.error.retryable) == (pb.ERROR_CODE_UNAVAILABLE, True)
    await stopping
    assert (await fake.wait_closed(fake.records[0])).outcome == "client_closed"


async def test_429_retry_after_is_honoured_before_the_first_token(
    fake: FakeUpstream, gen: Gen
) -> None:
    """A 429 with Retry-After is retried after that delay; a 429 that persists ends rate_limited."""
    answers = iter([Script(status=429, retry_after=0.2), Script(tokens=2)])
    fake.script_for = lambda body: next(answers, None)
    _, channel = await gen(upstream_max_retries=1)
    client = GrpcClient(channel, "grpc")
    await client.generate("r1")
    assert (await client.finish("r1")).WhichOneof("event") == "done"
    first, second = fake.records
    assert (first.status, second.status) == (429, 200)
    assert second.received_at - first.received_at >= 0.2
    fake.script = Script(status=429, retry_after=0.01)
    await client.generate("r2")
    end = await client.finish("r2")
    assert (end.error.code, end.error.retryable) == (pb.ERROR_CODE_RATE_LIMITED, True)
    assert [r.status for r in fake.records[2:]] == [429, 429]  # one try + one retry
    client.call.cancel()


async def test_batched_stream_carries_the_same_lifecycle(fake: FakeUpstream, gen: Gen) -> None:
    """StreamBatched delivers the same events as Stream, grouped, in order."""
    fake.script = Script(tokens=50)
    _, channel = await gen()
    call = generator_pb2_grpc.GeneratorStub(channel).StreamBatched()
    await call.write(pb.ClientEvent(generate=pb.Generate(request_id="r1", prompt="x")))
    events: list[pb.ServerEvent] = []
    async for batch in call:
        events.extend(batch.events)
        if events[-1].WhichOneof("event") in ("done", "error"):
            break
    kinds = [kind(e) for e in events]
    assert (kinds[0], kinds[-1], set(kinds[1:-1])) == ("start", "done", {"token"})
    assert "".join(e.token.chunk for e in events[1:-1]) == "".join(f"tok{i} " for i in range(50))
    call.cancel()


async def test_client_batches_are_applied_in_order_each_event_on_its_own(
    fake: FakeUpstream, gen: Gen
) -> None:
    """StreamBatches: the events of one ClientEventBatch are applied in order, each as if it had
    come alone — an invalid one gets its Error and the others run, a Cancel in the same batch
    ends the Generate before it — and an empty batch does nothing."""
    fake.script = Script(tokens=30, interval=0.01)
    _, channel = await gen()
    call = generator_pb2_grpc.GeneratorStub(channel).StreamBatches()

    def generate(request_id: str) -> pb.ClientEvent:
        return pb.ClientEvent(generate=pb.Generate(request_id=request_id, prompt="x"))

    await call.write(pb.ClientEventBatch())
    await call.write(
        pb.ClientEventBatch(
            events=[
                generate("r1"),
                generate(""),  # invalid: no request id
                generate("r2"),
                pb.ClientEvent(cancel=pb.Cancel(request_id="r2")),
                pb.ClientEvent(),  # invalid: no event
            ]
        )
    )
    events: dict[str, list[str]] = {}
    ends: dict[str, pb.ServerEvent] = {}
    async for batch in call:
        for event in batch.events:
            body = getattr(event, kind(event))
            events.setdefault(body.request_id, []).append(kind(event))
            if kind(event) in ("done", "error"):
                ends.setdefault(body.request_id, event)
        if {"r1", "r2"} <= ends.keys() and len(events.get("", [])) == 2:
            break
    assert events[""] == ["error", "error"]
    assert {ends[""].error.code} == {pb.ERROR_CODE_INVALID_REQUEST}
    assert events["r1"][0] == "start" and events["r1"][-1] == "done"
    assert events["r1"].count("token") >= 1
    assert events["r2"][0] == "start" and events["r2"][-1] == "error"
    assert ends["r2"].error.code == pb.ERROR_CODE_CANCELLED
    call.cancel()


async def test_an_upstream_ignoring_max_tokens_is_cut_off(fake: FakeUpstream, gen: Gen) -> None:
    """If the upstream streams past max_tokens, the generator ends with done(length) at the
    limit and closes the upstream connection."""
    fake.script = Script(tokens=100_000, interval=0.001, honour_max_tokens=False)
    _, channel = await gen()
    client = GrpcClient(channel, "grpc")
    await client.generate("r1", max_tokens=20)
    end = await client.finish("r1")
    assert end.WhichOneof("event") == "done"
    assert end.done.finish_reason == pb.FINISH_REASON_LENGTH
    record = await fake.wait_closed(fake.records[0])
    assert record.outcome == "client_closed"
    assert record.tokens_sent < 100_000
    client.call.cancel()


async def test_a_grpc_reader_that_stops_is_a_slow_consumer(fake: FakeUpstream, gen: Gen) -> None:
    """A client that stops reading: the generator's memory for it stays bounded (the stream's
    outbox fills, the generation waits), and after the stall limit the generation ends as a slow
    consumer with its upstream closed."""
    fake.script = Script(tokens=20_000, text="x" * 2000, honour_max_tokens=False)  # 40 MB
    server, channel = await gen(
        stall_timeout=0.5 * UNIT, stream_buffer_bytes=64 * 1024, max_tokens_cap=20_000
    )
    client = GrpcClient(channel, "grpc")
    client.abandon()
    await client.generate("r1")
    record = await fake.wait_closed((await fake.wait_requests(1))[0], 10 * UNIT)
    assert record.outcome == "client_closed"
    assert record.tokens_sent < 20_000
    (session,) = server.service._sessions
    # the bound, plus at most one event let into an empty queue (a network read's worth)
    assert session.outbox.peak_bytes <= 64 * 1024 + 64 * 1024
    client.call.cancel()
