"""Logs: the JSON line format, and the one line each generation logs at its end."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from conftest import ROOT, UNIT, Process, StackFactory

from aistream import logs
from aistream.testing.fake_upstream import FakeUpstream, Script
from aistream.v1 import events_pb2 as pb
from aistream.v1 import generator_pb2_grpc

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_TP = f"00-{TRACE}-00f067aa0ba902b7-01"
GENERATOR_READY = r"aistream generator listening on 127.0.0.1:(\d+)"


def json_line(record: logging.LogRecord) -> dict[str, Any]:
    """A record as the JSON format writes it, parsed back."""
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    parsed: dict[str, Any] = orjson.loads(line)
    return parsed


def record(msg: str, *args: Any, level: int = logging.INFO) -> logging.LogRecord:
    """A log record as ``logging.getLogger("aistream.test").log(level, msg, *args)`` makes."""
    return logging.LogRecord("aistream.test", level, __file__, 1, msg, args, None)


@pytest.fixture
def root_logging() -> Iterator[None]:
    """The root logger's handlers and level, put back after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_json_line_has_time_level_logger_message_and_the_messages_fields() -> None:
    """A JSON line: time (UTC), level, logger, message, and each key=value of the message as a
    field — typed from its argument, a string when written out, null for "-"."""
    line = json_line(
        record(
            "end request_id=%s conn=%d code=%s ttft_ms=%s kind=literal: %s",
            "r 1",
            7,
            "-",
            12,
            "free text",
        )
    )
    assert line["time"].endswith("Z") and line["time"][:2] == "20"
    assert (line["level"], line["logger"]) == ("INFO", "aistream.test")
    assert line["message"] == "end request_id=r 1 conn=7 code=- ttft_ms=12 kind=literal: free text"
    assert (line["request_id"], line["conn"], line["code"], line["ttft_ms"]) == ("r 1", 7, None, 12)
    assert line["kind"] == "literal"


def test_json_fields_never_replace_the_line_and_odd_messages_pass() -> None:
    """A field named like a line key does not replace it; %% escapes, * widths, mapping
    arguments and non-string messages are formatted as logging does; tracebacks go in
    exc_info."""
    line = json_line(record("level=%s message=%s 100%% rate=%*d", "x", "y", 3, 5))
    assert (line["level"], line["message"]) == ("INFO", "level=x message=y 100% rate=  5")
    assert line["rate"] == 5
    assert json_line(record("conn=%(conn)s", {"conn": 3}))["message"] == "conn=3"
    assert json_line(record(ValueError("boom")))["message"] == "boom"  # type: ignore[arg-type]
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        failed = record("generation failed request_id=%s", "r1", level=logging.ERROR)
        failed.exc_info = sys.exc_info()
    line = json_line(failed)
    assert line["request_id"] == "r1"
    assert "RuntimeError: kaput" in line["exc_info"]


@pytest.mark.usefixtures("root_logging")
def test_configure_writes_json_or_text_lines() -> None:
    """configure(): JSON lines with log_format json, time level logger: message as text."""
    out = io.StringIO()
    logs.configure("INFO", "json", out)
    logging.getLogger("aistream.test").info("start request_id=%s", "r1")
    logging.getLogger("aistream.test").debug("not at INFO")
    assert [orjson.loads(line)["request_id"] for line in out.getvalue().splitlines()] == ["r1"]
    out = io.StringIO()
    logs.configure("DEBUG", "text", out)
    logging.getLogger("aistream.test").debug("start request_id=%s", "r1")
    assert out.getvalue().rstrip().endswith(" DEBUG aistream.test: start request_id=r1")


def end_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The generations' end lines, as JSON."""
    return [
        json_line(r)
        for r in caplog.records
        if r.name == "aistream.generator.generation" and r.getMessage().startswith("end ")
    ]


async def test_one_line_per_generation_at_its_end(
    make_stack: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Each generation logs one line at its end: request id, model, outcome, code, finish,
    TTFT, duration, tokens (and whose count), trace id — for a done and a cancelled one."""
    caplog.set_level(logging.INFO, logger="aistream.generator.generation")
    stack = await make_stack(Script(tokens=3, ttft=0.02))
    client = await stack.client()
    await client.generate("r1", traceparent=CLIENT_TP)
    done = await client.finish("r1")
    stack.fake.script = Script(tokens=10_000, interval=0.01)
    await client.generate("r2")
    await client.until(lambda f: f["type"] == "ai:token")
    await client.cancel("r2")
    error = await client.finish("r2")
    lines = end_lines(caplog)
    assert len(lines) == 2
    ended, cancelled = lines
    assert {k: ended[k] for k in ("model", "outcome", "code", "finish", "usage")} == {
        "model": "gpt-4o-mini",
        "outcome": "done",
        "code": None,
        "finish": "stop",
        "usage": "upstream",
    }
    assert (ended["ttft_ms"], ended["duration_ms"]) == (done["ttftMs"], done["durationMs"])
    assert (ended["input_tokens"], ended["output_tokens"]) == (
        done["usage"]["promptTokens"],
        3,
    )
    assert ended["trace_id"] == TRACE
    assert isinstance(ended["request_id"], str)  # (the bridge's wire id for it)
    assert (cancelled["outcome"], cancelled["code"], cancelled["finish"]) == (
        "error",
        "cancelled",
        None,
    )
    assert cancelled["duration_ms"] == error["durationMs"]
    assert cancelled["output_tokens"] == error["usage"]["completionTokens"] >= 1
    assert cancelled["usage"] == "estimated"
    assert cancelled["trace_id"] is None
    assert cancelled["message"].endswith(": cancelled by the client")


async def test_the_command_logs_json_lines(fake: FakeUpstream, tmp_path: Path) -> None:
    """`aistream generator` with AISTREAM_LOG_FORMAT=json writes only JSON lines, among them
    the generation's end line with its fields — and passes the client's traceparent on."""
    log = tmp_path / "generator.log"
    env = {
        "AISTREAM_LOG_FORMAT": "json",
        "AISTREAM_LOG_LEVEL": "INFO",
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_API_KEY": "k",
    }
    process = Process(
        [sys.executable, "-m", "aistream", "generator", "--port", "0"],
        GENERATOR_READY,
        name="aistream generator",
        env=env,
        cwd=ROOT,
        log=log,
        timeout=30 * UNIT,
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{process.ready[1]}") as channel:
            call = generator_pb2_grpc.GeneratorStub(channel).Stream()
            generate = pb.Generate(request_id="r1", prompt="hi", traceparent=CLIENT_TP)
            await call.write(pb.ClientEvent(generate=generate))
            async with asyncio.timeout(5 * UNIT):
                while (kind := (await call.read()).WhichOneof("event")) not in ("done", "error"):
                    pass
            assert kind == "done"
            await call.done_writing()
        assert process.terminate() == 0
    finally:
        process.kill()
    text = log.read_text().splitlines()
    # (gRPC's C core may write a line of its own: every line of ours is JSON)
    assert not [line for line in text if not line.startswith("{") and "aistream" in line]
    lines = [orjson.loads(line) for line in text if line.startswith("{")]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    (end,) = [line for line in lines if line["message"].startswith("end ")]
    assert (end["request_id"], end["outcome"], end["output_tokens"]) == ("r1", "done", 5)
    assert end["trace_id"] == TRACE
    assert fake.records[0].headers["traceparent"] == CLIENT_TP


def test_a_tally_logs_one_line_now_and_then_with_the_count(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [100.0]
    monkeypatch.setattr("aistream.logs.time.monotonic", lambda: clock[0])
    tally = logs.Tally(logging.getLogger("t"), "refused %d in %.0f s (last: %s)", every=10.0)
    with caplog.at_level(logging.WARNING, logger="t"):
        tally.add("a")  # the first: at once
        for i in range(500):
            clock[0] += 0.01
            tally.add(f"b{i}")
        clock[0] = 111.0
        tally.add("c")
    assert [r.getMessage() for r in caplog.records] == [
        "refused 1 in 0 s (last: a)",  # (since the line before)
        "refused 501 in 11 s (last: c)",
    ]
