"""aistream.metrics: both /metrics pages, scraped over HTTP after real traffic, value by value."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from conftest import UNIT, Process, StackFactory, WsClient
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from aistream.metrics import (
    OPERATION_DURATION_BUCKETS,
    OTHER_MODEL,
    TOKEN_USAGE_BUCKETS,
    BridgeMetrics,
    GeneratorMetrics,
    ModelLabels,
)
from aistream.settings import Settings
from aistream.testing.fake_upstream import Script


class Page:
    """One scraped page: its text and its samples."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called ``name`` whose labels include ``labels`` (0: none)."""
        return sum(
            value
            for sample, have, value in self.samples
            if sample == name and all(have.get(k) == v for k, v in labels.items())
        )

    def label_values(self, label: str) -> set[str]:
        """Every value ``label`` has on this page."""
        return {have[label] for _, have, _ in self.samples if label in have}


async def scrape(url: str) -> Page:
    """GET a metrics page (on a thread: the servers run on this loop)."""

    def get() -> str:
        with urllib.request.urlopen(url, timeout=5 * UNIT) as response:
            assert response.status == 200
            return str(response.read().decode())

    return Page(await asyncio.to_thread(get))


async def scrape_until(url: str, check: Callable[[Page], bool], timeout: float = 10 * UNIT) -> Page:
    """Scrape until ``check`` holds (or the time is up: the page as it is then)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        page = await scrape(url)
        if check(page) or loop.time() > deadline:
            return page
        await asyncio.sleep(0.02)


def fake(script: dict[str, Any]) -> str:
    """A prompt that makes the fake upstream answer it with ``script``."""
    return "#fake " + json.dumps(script) + "\nhi"


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- definitions --------------------------------------------------------------------------


def test_buckets_follow_the_genai_conventions() -> None:
    """Operation duration doubles from 0.01 to 81.92 s; token usage ×4 from 1 to 67,108,864."""
    assert OPERATION_DURATION_BUCKETS == (
        0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92
    )  # fmt: skip
    quadrupling = tuple(4.0**i for i in range(14))
    assert quadrupling == TOKEN_USAGE_BUCKETS
    assert TOKEN_USAGE_BUCKETS[-1] == 67_108_864


def test_model_label_keeps_the_first_names_then_other() -> None:
    """The default model and the first names seen keep their label; the rest are ``other``."""
    labels = ModelLabels(3, ("default",))
    assert [labels(n) for n in ("a", "b", "a", "c", "default")] == [
        "a",
        "b",
        "a",
        OTHER_MODEL,
        "default",
    ]


def test_no_metric_name_is_in_both_processes() -> None:
    """The generator's and the bridge's families are disjoint (``aistream up`` serves both)."""
    settings = Settings(generator_metrics_url="http://127.0.0.1:1/metrics")
    names = []
    for metrics in (GeneratorMetrics(settings), BridgeMetrics(settings)):
        names.append({family.name for family in metrics.registry.collect()})
    assert names[0] and names[1] and not names[0] & names[1]


# --- in-process stacks ----------------------------------------------------------------------


async def test_a_scripted_mix_is_counted_on_both_pages(make_stack: StackFactory) -> None:
    """Done, cancelled, upstream errors, a refused frame and a slow consumer: both pages count
    each by model, outcome and code; the open gauges come back to 0."""
    stack = await make_stack(
        Script(tokens=5),
        metrics_port=0,
        ws_send_buffer=64 * 1024,
        stream_buffer_bytes=32 * 1024,
        ws_close_timeout=0.5 * UNIT,
    )
    assert stack.generator.metrics_port is not None
    generator_url = f"http://127.0.0.1:{stack.generator.metrics_port}/metrics"
    bridge_url = f"http://127.0.0.1:{stack.bridge.port}/metrics"
    client = await stack.client()
    await client.generate("c1", fake({"tokens": 100_000, "interval": 0.01}), model="m-a")
    await client.until(lambda f: f["type"] == "ai:token")  # (c1 streams)
    for rid in ("d1", "d2"):
        await client.generate(rid, model="m-a")
    await client.generate("e1", fake({"status": 500}), model="m-b")
    await client.generate("e2", fake({"tokens": 10, "error_event_after": 3}), model="m-b")
    await client.send({"type": "ai:bogus", "requestId": "x1"})
    await client.cancel("c1")
    ends = await client.finish_all({"d1", "d2", "c1", "e1", "e2", "x1"})
    codes = {rid: frames[-1].get("code", "done") for rid, frames in ends.items()}
    assert codes == {
        "d1": "done",
        "d2": "done",
        "c1": "cancelled",
        "e1": "upstream_error",
        "e2": "upstream_error",
        "x1": "invalid_request",
    }

    # A client that stops reading is cut off by the bridge (and its generation cancelled).
    slow = await stack.client("slow")
    slow.abandon()
    big = {"tokens": 100_000, "text": "x" * 1000, "interval": 0.0002}
    await slow.generate("s1", fake(big), model="m-slow")
    slow.ws.transport.pause_reading()
    await stack.fake.wait_for(lambda: len(stack.fake.records) == 6)
    await stack.fake.wait_for(lambda: not stack.fake.active(), timeout=10 * UNIT)
    slow.ws.transport.resume_reading()  # read the backlog, up to the close (1008)
    with contextlib.suppress(ConnectionClosed):
        async for _ in slow.ws:
            pass
    # A page on another site may not open a socket: its handshake is refused (403).
    with pytest.raises(InvalidStatus):
        await connect(stack.ws_url, origin=Origin("http://evil.example"), compression=None)

    generator = await scrape_until(
        generator_url,
        lambda p: (
            p.value("aistream_generations_total") == 6
            and p.value("aistream_upstream_streams_open") == 0
        ),
    )
    total = "aistream_generations_total"
    model = "gen_ai_request_model"
    assert generator.value(total, **{model: "m-a"}, outcome="done", code="") == 2
    assert generator.value(total, **{model: "m-a"}, outcome="error", code="cancelled") == 1
    assert generator.value(total, **{model: "m-b"}, outcome="error", code="upstream_error") == 2
    assert generator.value(total, **{model: "m-slow"}, outcome="error", code="cancelled") == 1
    assert generator.value(total) == 6
    duration = "gen_ai_client_operation_duration_seconds_count"
    assert generator.value(duration, **{model: "m-a"}, error_type="") == 2
    assert generator.value(duration, **{model: "m-b"}, error_type="upstream_error") == 2
    assert generator.value(duration, gen_ai_operation_name="chat") == 6
    usage = "gen_ai_client_token_usage"
    assert generator.value(f"{usage}_count", **{model: "m-a"}, gen_ai_token_type="output") == 3
    assert generator.value(f"{usage}_count", gen_ai_token_type="input") == 6
    assert generator.value(f"{usage}_sum", **{model: "m-a"}, gen_ai_token_type="output") >= 10
    ttft = "aistream_time_to_first_token_seconds_count"
    # e1 never had a token; e2 had three before its error event
    assert [generator.value(ttft, **{model: m}) for m in ("m-a", "m-b", "m-slow")] == [3, 1, 1]
    assert generator.value(ttft) == generator.value(
        "aistream_time_to_first_token_seconds_bucket", le="+Inf"
    )
    # c1's Cancel, and the Cancel the bridge sent for the slow consumer's generation
    assert generator.value("aistream_cancel_upstream_close_seconds_count") == 2
    assert generator.value("aistream_upstream_streams_open") == 0
    assert generator.value("aistream_generator_generations_in_flight") == 0
    assert generator.value("aistream_generator_calls_open") == 1
    # (test stacks do not shed: no lag measured, no limit learned)
    assert generator.value("aistream_generator_loop_lag_seconds") == 0
    assert generator.value("aistream_generator_generation_limit") == float("inf")
    assert generator.value("aistream_requests_refused_total") == 0
    assert generator.value("aistream_generator_process_resident_memory_bytes") > 0
    # bounded labels: never a request id
    ids = {"d1", "d2", "c1", "e1", "e2", "x1", "s1"}
    assert not ids & {v for _, labels, _ in generator.samples for v in labels.values()}

    bridge = await scrape_until(
        bridge_url, lambda p: p.value("aistream_bridge_connections_open") == 1
    )
    ended = "aistream_bridge_generations_total"
    assert bridge.value(ended, outcome="done", code="") == 2
    assert bridge.value(ended, outcome="error", code="cancelled") == 1
    assert bridge.value(ended, outcome="error", code="upstream_error") == 2
    assert bridge.value(ended, outcome="error", code="slow_consumer") == 1
    assert bridge.value("aistream_bridge_slow_consumers_total") == 1
    assert bridge.value("aistream_bridge_frames_refused_total", reason="invalid") == 1
    assert bridge.value("aistream_bridge_frames_refused_total") == 1
    assert bridge.value("aistream_bridge_connections_total") == 2
    assert bridge.value("aistream_bridge_handshakes_refused_total", status="403") == 1
    assert bridge.value("aistream_bridge_connections_open") == 1
    assert bridge.value("aistream_bridge_generations_in_flight") == 0
    assert bridge.value("aistream_bridge_generation_limit") == float("inf")
    assert "aistream_bridge_generator_scrape_up" not in bridge.text  # (no generator page here)
    assert not ids & {v for _, labels, _ in bridge.samples for v in labels.values()}

    await client.ws.close()
    bridge = await scrape_until(
        bridge_url, lambda p: p.value("aistream_bridge_connections_open") == 0
    )
    assert bridge.value("aistream_bridge_connections_open") == 0


async def test_the_model_label_is_bounded(make_stack: StackFactory) -> None:
    """Past ``metrics_max_models`` distinct models (the default counts), the label is
    ``other``: a client naming a new model per request adds no series."""
    stack = await make_stack(Script(tokens=2), metrics_port=0, metrics_max_models=2)
    client = await stack.client()
    for i, model in enumerate(("a", "b", "c", "a", "z" * 256)):
        await client.generate(f"r{i}", model=model)
        await client.finish(f"r{i}")
    page = await scrape(f"http://127.0.0.1:{stack.generator.metrics_port}/metrics")
    total = "aistream_generations_total"
    assert page.label_values("gen_ai_request_model") == {"a", OTHER_MODEL}
    assert page.value(total, gen_ai_request_model="a") == 2
    assert page.value(total, gen_ai_request_model=OTHER_MODEL) == 3


async def test_metrics_off_records_nothing(make_stack: StackFactory) -> None:
    """With ``metrics`` off the generator serves no page, records nothing, and the bridge's
    page says it is off and carries no sample."""
    stack = await make_stack(Script(tokens=3), metrics=False, metrics_port=0)
    client = await stack.client()
    await client.generate("r1")
    assert (await client.finish("r1"))["type"] == "ai:done"
    await client.send({"type": "ai:bogus", "requestId": "x1"})
    await client.finish("x1")
    assert stack.generator.metrics_port is None
    metrics = stack.generator.service.metrics
    assert list(metrics.registry.collect()) == []
    assert (metrics.in_flight, metrics.upstream_open) == (0, 0)
    page = await scrape(f"http://127.0.0.1:{stack.bridge.port}/metrics")
    assert page.samples == []
    assert "metrics are off" in page.text
    assert list(stack.bridge.metrics.registry.collect()) == []


async def test_a_silent_generator_leaves_the_bridges_page_whole(make_stack: StackFactory) -> None:
    """When the generator's page cannot be fetched, the bridge's own metrics still come, with
    ``aistream_bridge_generator_scrape_up`` 0."""
    url = f"http://127.0.0.1:{closed_port()}/metrics"
    stack = await make_stack(Script(tokens=2), generator_metrics_url=url)
    client = await stack.client()
    await client.generate("r1")
    await client.finish("r1")
    page = await scrape(f"http://127.0.0.1:{stack.bridge.port}/metrics")
    assert page.value("aistream_bridge_generator_scrape_up") == 0
    assert "aistream_bridge_generator_scrape_up 0.0" in page.text
    assert page.value("aistream_bridge_generations_total", outcome="done") == 1
    assert page.value("aistream_generations_total") == 0  # (the generator's: not there)


# --- processes --------------------------------------------------------------------------------


async def test_up_shows_both_processes_in_one_scrape(processes: Callable[..., Process]) -> None:
    """``aistream up``: one scrape of the bridge's /metrics carries the generator's metrics
    too, each family once."""
    env = {"AISTREAM_SIMULATED_TTFT": "0.01", "AISTREAM_SIMULATED_TOKENS_PER_S": "500"}
    up = processes(["up", "--port", "0"], r"open http://127\.0\.0\.1:(\d+)/", env)
    port = int(up.ready[1])
    async with connect(f"ws://127.0.0.1:{port}/ws", compression=None) as ws:
        client = WsClient(ws, "up")
        await client.generate("r1")
        assert (await client.finish("r1"))["type"] == "ai:done"
    page = await scrape_until(
        f"http://127.0.0.1:{port}/metrics",
        lambda p: p.value("aistream_bridge_connections_open") == 0,
    )
    assert page.value("aistream_bridge_generator_scrape_up") == 1
    assert page.value("aistream_bridge_generations_total", outcome="done") == 1
    assert page.value("aistream_generations_total", outcome="done") == 1
    assert page.value("aistream_time_to_first_token_seconds_count") == 1
    assert page.value("aistream_upstream_streams_open") == 0
    assert page.value("aistream_generator_calls_open") == 1
    assert page.value("aistream_bridge_process_resident_memory_bytes") > 0
    assert page.value("aistream_generator_process_resident_memory_bytes") > 0
    declared = re.findall(r"^# TYPE (\S+) ", page.text, re.MULTILINE)
    assert len(declared) == len(set(declared))


async def test_the_generator_serves_metrics_on_its_own_port(
    processes: Callable[..., Process],
) -> None:
    """``aistream generator --metrics-port 0`` prints where its page is, and serves it."""
    generator = processes(
        ["generator", "--port", "0", "--metrics-port", "0"],
        r"\(upstream: \w+\) metrics on (http://127\.0\.0\.1:\d+/metrics)",
    )
    page = await scrape(generator.ready[1])
    assert page.value("aistream_generator_calls_open") == 0
    assert page.value("aistream_upstream_streams_open") == 0
    assert "aistream_bridge" not in page.text


async def test_a_socket_closed_mid_stream_counts_its_generations_cancelled(
    make_stack: StackFactory,
) -> None:
    """Generations ended by their socket closing are counted (cancelled) and leave the
    in-flight gauge."""
    stack = await make_stack(Script(tokens=1, ttft=5))
    client = await stack.client()
    for request_id in ("a", "b"):
        await client.generate(request_id)
        await client.until(lambda f: f["type"] == "ai:start")
    client.conversation.abandoned = True
    await client.ws.close()
    await stack.fake.wait_for(lambda: not stack.fake.active() and not stack.bridge.connections)
    page = await scrape(f"http://127.0.0.1:{stack.bridge.port}/metrics")
    counted = page.value("aistream_bridge_generations_total", outcome="error", code="cancelled")
    assert counted == 2
    assert page.value("aistream_bridge_generations_in_flight") == 0
