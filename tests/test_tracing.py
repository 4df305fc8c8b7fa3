"""Traces: W3C trace context across every hop, and the spans aistream records when tracing is on.

Spans go to OpenTelemetry's in-memory exporter (``tracing.install``); what the upstream received
is proved with the fake upstream's own records of each request's headers.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import grpc
import pytest
from conftest import ROOT, UNIT, GrpcClient, StackFactory, settings_for
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from aistream import tracing
from aistream.errors import SettingsError
from aistream.generator.openai_upstream import OpenAIUpstream
from aistream.generator.server import GeneratorServer
from aistream.generator.upstream import Message, UpstreamRequest
from aistream.settings import Settings
from aistream.testing.fake_upstream import FakeUpstream, Script
from aistream.v1 import events_pb2 as pb
from aistream.v1 import generator_pb2_grpc

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
CLIENT_TP = f"00-{TRACE}-{PARENT}-01"
NAMES = (
    "ai:generate",
    "aistream.v1.Generator/StreamBatches",
    "chat gpt-4o-mini",
    "POST /v1/chat/completions",
)


class Spans(InMemorySpanExporter):
    """An in-memory exporter that wakes whoever waits for spans to be finished."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = asyncio.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Keep ``spans`` (ended on the event loop's thread) and wake the waiter."""
        result = super().export(spans)
        self._changed.set()
        return result

    async def wait(self, count: int) -> list[ReadableSpan]:
        """The finished spans once there are ``count`` (some end just after the client's
        answer: the upstream response is closed after the terminal event is sent)."""
        async with asyncio.timeout(2 * UNIT):
            while len(self.get_finished_spans()) < count:
                self._changed.clear()
                await self._changed.wait()
        return list(self.get_finished_spans())


@pytest.fixture
def spans() -> Iterator[Spans]:
    """Tracing on, every span finished going to an in-memory exporter; off again after."""
    exporter = Spans()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.install(None)
    provider.shutdown()


@pytest.fixture
def no_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tracing off, and any attempt to make a span fails the test."""
    assert not tracing.enabled()

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a span was made with tracing off")

    monkeypatch.setattr(tracing, "start_span", refuse)


def by_name(spans: Sequence[ReadableSpan]) -> dict[str, ReadableSpan]:
    """The spans keyed by name (one each)."""
    named = {span.name: span for span in spans}
    assert len(named) == len(spans), [span.name for span in spans]
    return named


def hex_ids(span: ReadableSpan) -> tuple[str, str, str | None]:
    """A span's trace id, span id and parent span id, as hex."""
    context = span.context
    assert context is not None
    parent = None if span.parent is None else f"{span.parent.span_id:016x}"
    return f"{context.trace_id:032x}", f"{context.span_id:016x}", parent


def upstream_request(traceparent: str = "", request_id: str = "r1") -> UpstreamRequest:
    """A short upstream request carrying ``traceparent``."""
    return UpstreamRequest(request_id, (Message("user", "hi"),), None, 100, None, traceparent)


async def answer(upstream: OpenAIUpstream, request: UpstreamRequest) -> str | None:
    """Stream one answer to its end; its finish reason."""
    async with upstream.stream(request) as deltas:
        reasons = [delta.finish_reason async for delta in deltas if delta.finish_reason]
    return reasons[-1] if reasons else None


# --- the format ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        CLIENT_TP,
        f"00-{TRACE}-{PARENT}-00",
        f"01-{TRACE}-{PARENT}-01-what-a-later-version-adds",
        f"cc-{TRACE}-{PARENT}-09",
    ],
)
def test_valid_traceparents(value: str) -> None:
    """W3C traceparents of version 00 and of later versions are continued."""
    assert tracing.valid(value)
    assert tracing.incoming(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        CLIENT_TP.upper(),
        f"00-{'0' * 32}-{PARENT}-01",
        f"00-{TRACE}-{'0' * 16}-01",
        f"ff-{TRACE}-{PARENT}-01",
        f"00-{TRACE}-{PARENT}-01-more",
        f"00-{TRACE[:-1]}-{PARENT}-01",
        f" {CLIENT_TP}",
        f"{CLIENT_TP}\n",
        f"01-{TRACE}-{PARENT}-01-{'x' * 300}",
    ],
    ids=[
        "empty",
        "garbage",
        "uppercase",
        "zero-trace",
        "zero-parent",
        "version-ff",
        "00-with-more",
        "short-trace",
        "leading-space",
        "trailing-newline",
        "overlong",
    ],
)
def test_invalid_traceparents_are_ignored(value: str) -> None:
    """A traceparent that breaks the W3C format is ignored (``incoming`` gives "")."""
    assert not tracing.valid(value)
    assert tracing.incoming(value) == ""


def test_otel_environment_variables_switch_tracing_on() -> None:
    """OTEL_TRACES_EXPORTER or an OTLP endpoint configures an exporter; none, nothing or
    OTEL_SDK_DISABLED leaves tracing off; the OTLP protocol is read from the standard names."""
    assert Settings.from_env({}).traces_exporter is None
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert Settings.from_env(endpoint).traces_exporter == "otlp"
    traces = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}
    assert Settings.from_env(traces).traces_exporter == "otlp"
    assert Settings.from_env({"OTEL_TRACES_EXPORTER": "console"}).traces_exporter == "console"
    disabled = {**endpoint, "OTEL_SDK_DISABLED": "true"}
    assert Settings.from_env(disabled).traces_exporter is None
    grpc_protocol = {**endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    assert Settings.from_env(grpc_protocol).otlp_protocol == "grpc"
    ours = {"OTEL_TRACES_EXPORTER": "console", "AISTREAM_TRACES_EXPORTER": "otlp"}
    assert Settings.from_env(ours).traces_exporter == "otlp"
    with pytest.raises(SettingsError, match="otlp_protocol"):
        Settings.from_env({**endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    assert not tracing.configure(Settings(traces_exporter="none"), "aistream-test")
    assert not tracing.enabled()


def test_configure_installs_an_exporter_and_refuses_an_unknown_one() -> None:
    """configure() turns tracing on with a named exporter (shutdown() off again); an exporter
    that is not installed is a settings error."""
    try:
        assert tracing.configure(Settings(traces_exporter="otlp"), "aistream-test")
        assert tracing.enabled()
    finally:
        tracing.shutdown()
    assert not tracing.enabled()
    with pytest.raises(SettingsError, match="not otlp"):
        tracing.configure(Settings(traces_exporter="no_such_exporter"), "aistream-test")
    assert not tracing.enabled()


# --- one trace across every hop ----------------------------------------------------------------


async def test_one_trace_from_the_client_through_bridge_generator_and_upstream(
    make_stack: StackFactory, spans: Spans
) -> None:
    """With the client's traceparent: one trace, spans chained bridge request → gRPC hop →
    generator chat → upstream HTTP request, the upstream's header naming the last of them."""
    stack = await make_stack(Script(tokens=3, ttft=0.02))
    client = await stack.client()
    await client.generate("r1", traceparent=CLIENT_TP)
    done = await client.finish("r1")
    assert done["type"] == "ai:done"
    named = by_name(await spans.wait(4))
    assert sorted(named) == sorted(NAMES)
    request, hop, chat, http = (named[name] for name in NAMES)
    assert {hex_ids(span)[0] for span in named.values()} == {TRACE}
    assert hex_ids(request)[2] == PARENT
    assert hex_ids(hop)[2] == hex_ids(request)[1]
    assert hex_ids(chat)[2] == hex_ids(hop)[1]
    assert hex_ids(http)[2] == hex_ids(chat)[1]
    assert [span.kind for span in (request, hop, chat, http)] == [
        SpanKind.SERVER,
        SpanKind.CLIENT,
        SpanKind.SERVER,
        SpanKind.CLIENT,
    ]
    # The upstream's traceparent is the HTTP span's.
    header = stack.fake.records[0].headers["traceparent"]
    assert header == f"00-{TRACE}-{hex_ids(http)[1]}-01"
    # The GenAI attributes, and what the answer said.
    attributes = dict(chat.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert attributes["gen_ai.usage.input_tokens"] == done["usage"]["promptTokens"]
    assert attributes["gen_ai.usage.output_tokens"] == done["usage"]["completionTokens"] == 3
    assert attributes["aistream.time_to_first_token_ms"] == done["ttftMs"]
    assert dict(http.attributes or {})["http.response.status_code"] == 200
    assert dict(request.attributes or {})["aistream.request_id"] == "r1"
    assert all(span.status.status_code is StatusCode.UNSET for span in named.values())


async def test_without_client_context_each_request_is_one_new_trace(
    make_stack: StackFactory, spans: Spans
) -> None:
    """No (or an invalid) traceparent: each request is a trace of its own, rooted at the
    bridge's request span, and the upstream still gets its context."""
    stack = await make_stack(Script(tokens=2))
    client = await stack.client()
    await client.generate("r1")
    await client.finish("r1")
    first = await spans.wait(4)
    spans.clear()
    await client.generate("r2", traceparent="00-not-a-traceparent-01")
    await client.finish("r2")
    second = await spans.wait(4)
    for trace in (first, second):
        named = by_name(trace)
        assert len({hex_ids(span)[0] for span in trace}) == 1
        assert hex_ids(named["ai:generate"])[2] is None
    trace_ids = [{hex_ids(span)[0] for span in trace} for trace in (first, second)]
    assert trace_ids[0] != trace_ids[1]
    headers = [record.headers["traceparent"] for record in stack.fake.records]
    assert [header[3:35] for header in headers] == [ids.pop() for ids in trace_ids]


async def test_cancel_and_upstream_failure_end_their_spans(
    make_stack: StackFactory, spans: Spans
) -> None:
    """A cancelled request's spans say error.type cancelled (not an error status); a failed
    one's say upstream_error with status ERROR, the HTTP span the status code."""
    stack = await make_stack(Script(tokens=10_000, interval=0.01))
    client = await stack.client()
    await client.generate("r1", traceparent=CLIENT_TP)
    await client.until(lambda f: f["type"] == "ai:token")
    await client.cancel("r1")
    assert (await client.finish("r1"))["code"] == "cancelled"
    for span in await spans.wait(4):
        assert dict(span.attributes or {})["error.type"] == "cancelled", span.name
        assert span.status.status_code is StatusCode.UNSET
    spans.clear()
    stack.fake.script = Script(status=500)
    await client.generate("r2", traceparent=CLIENT_TP)
    assert (await client.finish("r2"))["code"] == "upstream_error"
    named = by_name(await spans.wait(4))
    for name in NAMES[:3]:
        assert dict(named[name].attributes or {})["error.type"] == "upstream_error", name
        assert named[name].status.status_code is StatusCode.ERROR
    http = dict(named[NAMES[3]].attributes or {})
    assert (http["http.response.status_code"], http["error.type"]) == (500, "upstream_error")


async def test_a_closed_socket_ends_its_requests_spans(
    make_stack: StackFactory, spans: Spans
) -> None:
    """A browser that closes mid-stream: its request's spans end too (no terminal event
    reaches the bridge for them)."""
    stack = await make_stack(Script(tokens=10_000, interval=0.01))
    client = await stack.client()
    await client.generate("r1")
    await client.until(lambda f: f["type"] == "ai:token")
    await client.ws.close()
    client.abandon()
    await stack.fake.wait_idle(2 * UNIT)
    named = by_name(await spans.wait(4))
    assert dict(named["ai:generate"].attributes or {})["error.type"] == "cancelled"


# --- with tracing off: the client's context passed on, nothing else ----------------------------


async def test_tracing_off_passes_the_clients_traceparent_to_the_upstream(
    make_stack: StackFactory, no_spans: None
) -> None:
    """No exporter: the upstream receives exactly the traceparent the client sent, and no span
    is made; an invalid one reaches no one."""
    stack = await make_stack(Script(tokens=2))
    client = await stack.client()
    await client.generate("r1", traceparent=CLIENT_TP)
    assert (await client.finish("r1"))["type"] == "ai:done"
    await client.generate("r2", traceparent=CLIENT_TP.upper())
    assert (await client.finish("r2"))["type"] == "ai:done"
    await client.generate("r3")
    assert (await client.finish("r3"))["type"] == "ai:done"
    first, invalid, none = stack.fake.records
    assert first.headers["traceparent"] == CLIENT_TP
    assert "traceparent" not in invalid.headers
    assert "traceparent" not in none.headers


# --- each hop over real sockets ----------------------------------------------------------------


@pytest.fixture
async def generator(fake: FakeUpstream) -> AsyncIterator[Callable[..., Any]]:
    """A generator on the fake (tracing as the test has it); returns a channel to it."""
    servers: list[tuple[GeneratorServer, grpc.aio.Channel]] = []

    async def start(**overrides: Any) -> grpc.aio.Channel:
        server = GeneratorServer(settings_for(fake, **overrides))
        port = await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        servers.append((server, channel))
        return channel

    yield start
    for server, channel in servers:
        await channel.close(None)
        await server.stop(drain_timeout=0)
    await fake.wait_for(lambda: not fake.active() and not fake.connections)


async def test_generator_hop_continues_the_generate_traceparent(
    fake: FakeUpstream, generator: Callable[..., Any], spans: Spans
) -> None:
    """Generate.traceparent over gRPC: the chat span is its child, the upstream request the
    chat span's child, and the upstream's header names the latter."""
    client = GrpcClient(await generator(), "grpc")
    await client.generate("r1", traceparent=CLIENT_TP)
    assert (await client.finish("r1")).WhichOneof("event") == "done"
    named = by_name(await spans.wait(2))
    chat, http = named["chat gpt-4o-mini"], named["POST /v1/chat/completions"]
    assert hex_ids(chat)[:1] + hex_ids(chat)[2:] == (TRACE, PARENT)
    assert hex_ids(http)[2] == hex_ids(chat)[1]
    assert fake.records[0].headers["traceparent"] == f"00-{TRACE}-{hex_ids(http)[1]}-01"
    client.call.cancel()


async def test_generator_hop_takes_call_metadata_for_generates_without_one(
    fake: FakeUpstream, generator: Callable[..., Any], no_spans: None
) -> None:
    """A backend service's call metadata traceparent stands for every Generate on that call
    that carries none; a Generate's own field wins."""
    channel = await generator()
    call = generator_pb2_grpc.GeneratorStub(channel).Stream(metadata=(("traceparent", CLIENT_TP),))
    own = f"00-{TRACE}-{'1' * 16}-01"
    for request_id, traceparent in (("r1", ""), ("r2", own)):
        generate = pb.Generate(request_id=request_id, prompt="hi", traceparent=traceparent)
        await call.write(pb.ClientEvent(generate=generate))
        async with asyncio.timeout(5 * UNIT):
            while (await call.read()).WhichOneof("event") not in ("done", "error"):
                pass
    await call.done_writing()
    assert [r.headers["traceparent"] for r in fake.records] == [CLIENT_TP, own]


async def test_upstream_hop_every_path_carries_its_own_traceparent(no_spans: None) -> None:
    """The SDK's request, the first attempts sent below it (which learn the SDK's headers but
    never its traceparent), both attempts of a retried request, and the SDK's public path
    each carry their request's traceparent; a request with none carries none."""
    answers = iter([Script(tokens=1)] * 3 + [Script(status=500, retry_after=0.01)])
    async with FakeUpstream(Script(tokens=1), script_for=lambda body: next(answers, None)) as fake:
        fast = OpenAIUpstream(settings_for(fake, upstream_max_retries=1))
        public = OpenAIUpstream(settings_for(fake), sdk_path="public")
        contexts = [f"00-{TRACE}-{n:016x}-01" for n in range(1, 5)]
        try:
            assert await answer(fast, upstream_request(contexts[0])) == "stop"  # the SDK's
            assert await answer(fast, upstream_request(contexts[1])) == "stop"  # first attempt
            assert await answer(fast, upstream_request()) == "stop"  # none
            assert await answer(fast, upstream_request(contexts[2])) == "stop"  # 500, retried
            assert await answer(public, upstream_request(contexts[3])) == "stop"
            assert fast._first is not None and fast._first.sent_first == 3
        finally:
            await fast.aclose()
            await public.aclose()
    sent = [(r.status, r.headers.get("traceparent")) for r in fake.records]
    assert sent == [
        (200, contexts[0]),
        (200, contexts[1]),
        (200, None),
        (500, contexts[2]),
        (200, contexts[2]),
        (200, contexts[3]),
    ]


def test_tracing_off_imports_no_opentelemetry() -> None:
    """With no exporter configured, the services and the command line never import
    OpenTelemetry (no SDK work at all: only the traceparent string is carried)."""
    code = (
        "import sys\n"
        "import aistream.cli, aistream.generator.server, aistream.bridge.server\n"
        "from aistream import tracing\n"
        "from aistream.settings import Settings\n"
        "assert not tracing.configure(Settings(), 'aistream-test')\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"
