"""Parts end to end: browser-protocol client → bridge → generator → fake upstream, over sockets.

Reasoning, tool calls (parallel, arguments cut at awkward places), structured output, refusals and
usage details, each checked on the wire and against the fake's own records; the lifecycle checker
(conftest) runs over every conversation: one start, parts with gap-free ``seq`` across every kind,
one terminal.
"""

from __future__ import annotations

from typing import Any

import grpc
import orjson
import pytest
from conftest import TERMINAL, UNIT, GrpcClient, StackFactory

from aistream.testing.fake_upstream import Script
from aistream.v1 import events_pb2 as pb

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
    "required": ["city"],
}
TOOLS = [
    {"name": "get_weather", "description": "Weather now", "parameters": WEATHER},
    {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
    },
]
# Arguments that a cut every 5 characters splits inside an escape (\") and a \u escape, next to
# multi-byte characters, and one with a 4-byte character.
ARGS_0 = '{"city": "S\\"ão Paulo\\u00e9", "unit": "c"}'
ARGS_1 = '{"tz": "Europe/Zürich 🌍"}'


def by_type(frames: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == kind]


def text_of(frames: list[dict[str, Any]], kind: str) -> str:
    return "".join(f["chunk"] for f in by_type(frames, kind))


async def run(
    make_stack: StackFactory, script: Script, **generate: Any
) -> tuple[list[dict[str, Any]], Any]:
    stack = await make_stack(script)
    client = await stack.client()
    await client.generate("r1", "hi", **generate)
    frames = await client.until(lambda f: f["type"] in TERMINAL, 10 * UNIT)
    return frames, stack


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning_streams_apart_from_the_answer(
    make_stack: StackFactory, field: str
) -> None:
    """Reasoning (either field name) arrives as ai:reasoning before the answer, never in
    ai:token; done reports when it began, the answer's TTFT and the upstream's reasoning count."""
    script = Script(
        tokens=3, reasoning=4, reasoning_field=field, reasoning_tokens=4, cached_tokens=2
    )
    frames, _ = await run(make_stack, script)
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "ai:start" and kinds[-1] == "ai:done"
    last_reasoning = max(i for i, k in enumerate(kinds) if k == "ai:reasoning")
    first_token = kinds.index("ai:token")
    assert last_reasoning < first_token
    assert text_of(frames, "ai:reasoning") == "think0 think1 think2 think3 "
    assert text_of(frames, "ai:token") == "tok0 tok1 tok2 "
    done = frames[-1]
    assert done["reasoningMs"] <= done["ttftMs"] <= done["durationMs"]
    assert done["usage"]["reasoningTokens"] == 4
    assert done["usage"]["cachedTokens"] == 2
    assert done["usage"]["source"] == "upstream"
    assert "output" not in done and done["toolCalls"] == []


async def test_a_stall_while_thinking_is_still_a_stall(make_stack: StackFactory) -> None:
    """Reasoning keeps the stream alive only while it flows: a gap past stall_timeout during
    reasoning ends the generation (timeout), its upstream closed."""
    stack = await make_stack(Script(tokens=2, reasoning=3, stall_after=2), stall_timeout=0.3 * UNIT)
    client = await stack.client()
    await client.generate("r2")
    frames = await client.until(lambda f: f["type"] in TERMINAL)
    end = frames[-1]
    assert (end["type"], end["code"]) == ("ai:error", "timeout")
    assert "stalled" in end["message"]
    assert len(by_type(frames, "ai:reasoning")) >= 1 and by_type(frames, "ai:token") == []
    await stack.fake.wait_closed(stack.fake.records[0], 2 * UNIT)


async def test_first_token_timeout_counts_reasoning_as_the_first_part(
    make_stack: StackFactory,
) -> None:
    """12 reasoning tokens 50 ms apart take 0.6 s: past a 0.3 s first-token limit, and still
    done, because the first part came at once."""
    stack = await make_stack(
        Script(tokens=2, reasoning=12, interval=0.05 * UNIT), first_token_timeout=0.3 * UNIT
    )
    client = await stack.client()
    await client.generate("r1")
    end = await client.finish("r1")
    assert end["type"] == "ai:done", end
    assert end["ttftMs"] >= 300 * UNIT * 0.9


async def test_parallel_tool_calls_stream_and_complete_in_done(make_stack: StackFactory) -> None:
    """Two calls, their argument pieces interleaved and cut mid-escape and next to multi-byte
    characters, arrive as ai:tool_call + ai:tool_args; done hands over both, whole, in index
    order; the upstream got the tools and the choice in the Chat Completions shape."""
    script = Script(
        tokens=0,
        tool_calls=[
            {"id": "call_a", "name": "get_weather", "arguments": ARGS_0},
            {"id": "call_b", "name": "get_time", "arguments": ARGS_1},
        ],
        tool_call_split=5,
        write_bytes=7,
    )
    frames, stack = await run(make_stack, script, tools=TOOLS, toolChoice="required")
    starts = by_type(frames, "ai:tool_call")
    assert [(s["index"], s["id"], s["name"]) for s in starts] == [
        (0, "call_a", "get_weather"),
        (1, "call_b", "get_time"),
    ]
    for index, expected in ((0, ARGS_0), (1, ARGS_1)):
        pieces = [f for f in by_type(frames, "ai:tool_args") if f["index"] == index]
        assert "".join(p["chunk"] for p in pieces) == expected
        start = next(s for s in starts if s["index"] == index)
        assert all(p["seq"] > start["seq"] for p in pieces)
    done = frames[-1]
    assert done["type"] == "ai:done" and done["finishReason"] == "tool_calls"
    assert done["toolCalls"] == [
        {"id": "call_a", "name": "get_weather", "arguments": ARGS_0},
        {"id": "call_b", "name": "get_time", "arguments": ARGS_1},
    ]
    for call in done["toolCalls"]:
        orjson.loads(call["arguments"])
    record = stack.fake.records[0]
    assert record.param("tool_choice") == "required"
    assert record.param("tools") == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather now",
                "parameters": WEATHER,
            },
        },
        {"type": "function", "function": TOOLS[1]},
    ]


async def test_the_agent_loop_carries_tool_results_back(make_stack: StackFactory) -> None:
    """The next turn sends the assistant's tool calls and the tool's result; the upstream gets
    them as assistant tool_calls and a role tool message with its tool_call_id."""
    stack = await make_stack(Script(tokens=3))
    client = await stack.client()
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "toolCalls": [{"id": "call_a", "name": "get_weather", "arguments": '{"city":"Paris"}'}],
        },
        {"role": "tool", "toolCallId": "call_a", "content": '{"temp": 21}'},
    ]
    await client.send(
        {"type": "ai:generate", "requestId": "r2", "messages": messages, "tools": TOOLS}
    )
    end = await client.finish("r2")
    assert end["type"] == "ai:done"
    assert stack.fake.records[0].param("messages") == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call_a"},
    ]


async def test_tool_arguments_that_do_not_parse_end_invalid_output(
    make_stack: StackFactory,
) -> None:
    """A call whose arguments are not JSON ends with invalid_output (retryable, the upstream's
    usage), never a done; the pieces already streamed stay the client's."""
    script = Script(tokens=0, tool_calls=[{"name": "get_weather", "arguments": '{"city": "Par'}])
    frames, _ = await run(make_stack, script, tools=TOOLS)
    end = frames[-1]
    assert (end["type"], end["code"], end["retryable"]) == ("ai:error", "invalid_output", True)
    assert "get_weather" in end["message"] and "Par" not in end["message"]
    assert end["usage"]["source"] == "upstream"
    assert text_of(frames, "ai:tool_args") == '{"city": "Par'


@pytest.mark.parametrize(
    "deltas",
    [
        [{"tool_calls": [{"index": 3, "function": {"arguments": '{"a": 1}'}}]}],
        [{"content": "SECRET "}, {"tool_calls": "garbage SECRET"}],
        [
            {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f"}}]},
            {"tool_calls": [42]},
        ],
    ],
)
async def test_an_upstream_breaking_the_tool_call_rules_is_an_upstream_error(
    make_stack: StackFactory, deltas: list[Any]
) -> None:
    """A piece for a call never opened, or garbage among the deltas: upstream_error, nothing of
    it in the message; the connection goes on."""
    stack = await make_stack(Script(tokens=0, raw_deltas=deltas))
    client = await stack.client()
    await client.generate("r1")
    end = await client.finish("r1")
    assert (end["type"], end["code"]) == ("ai:error", "upstream_error")
    assert "SECRET" not in end["message"] and "garbage" not in end["message"]
    stack.fake.script = Script(tokens=2)
    await client.generate("r2")
    assert (await client.finish("r2"))["type"] == "ai:done"


SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "temp": {"type": "integer"}},
    "required": ["city", "temp"],
}


async def test_structured_output_is_parsed_and_validated_in_done(make_stack: StackFactory) -> None:
    """With responseFormat the text streams for display and done carries it parsed, valid, in
    the model's key order; the upstream got response_format in the Chat Completions shape."""
    pieces = ['{"te', 'mp": 2', '1, "city"', ': "S\\u00e3o Pa', 'ulo"}']
    fmt = {"type": "json_schema", "name": "weather", "schema": SCHEMA, "strict": True}
    frames, stack = await run(make_stack, Script(text_chunks=pieces), responseFormat=fmt)
    assert text_of(frames, "ai:token") == "".join(pieces)
    done = frames[-1]
    assert done["type"] == "ai:done"
    assert done["output"] == {"temp": 21, "city": "São Paulo"}
    assert list(done["output"]) == ["temp", "city"]
    assert stack.fake.records[0].param("response_format") == {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": SCHEMA, "strict": True},
    }


@pytest.mark.parametrize(
    ("pieces", "fmt", "reason"),
    [
        (['{"city": "Paris", ', '"temp": 2'], {"type": "json_object"}, "not valid JSON"),
        (["[1, 2]"], {"type": "json_object"}, "not a JSON object"),
        (
            ['{"city": "Paris", "temp": "warm"}'],
            {"type": "json_schema", "schema": SCHEMA},
            "$.temp",
        ),
    ],
)
async def test_structured_output_that_fails_ends_invalid_output(
    make_stack: StackFactory, pieces: list[str], fmt: dict[str, Any], reason: str
) -> None:
    """Not JSON, not an object, or against the schema: ai:error invalid_output, retryable, with
    usage; the streamed text stays the client's."""
    frames, _ = await run(make_stack, Script(text_chunks=pieces), responseFormat=fmt)
    end = frames[-1]
    assert (end["type"], end["code"], end["retryable"]) == ("ai:error", "invalid_output", True)
    assert reason in end["message"]
    assert "warm" not in end["message"]
    assert end["usage"]["completionTokens"] == len(pieces)
    assert text_of(frames, "ai:token") == "".join(pieces)


async def test_a_refusal_is_its_own_part_and_needs_no_output(make_stack: StackFactory) -> None:
    """A refusal streams as ai:refusal; with a responseFormat the done has no output (the model
    refused) rather than an invalid_output."""
    frames, _ = await run(
        make_stack,
        Script(refusal="I can't help with that."),
        responseFormat={"type": "json_object"},
    )
    assert text_of(frames, "ai:refusal").strip() == "I can't help with that."
    assert by_type(frames, "ai:token") == []
    assert frames[-1]["type"] == "ai:done" and "output" not in frames[-1]


async def test_arguments_past_their_limit_end_invalid_output(make_stack: StackFactory) -> None:
    """Accumulated arguments are bounded: past max_tool_arguments_chars the generation ends,
    its upstream closed."""
    stack = await make_stack(
        Script(tokens=0, tool_calls=[{"name": "f", "arguments": '"' + "x" * 4000 + '"'}]),
        max_tool_arguments_chars=1000,
    )
    client = await stack.client()
    await client.generate("r1", tools=[{"name": "f"}])
    end = await client.finish("r1")
    assert (end["type"], end["code"]) == ("ai:error", "invalid_output")
    assert "longer than 1000" in end["message"]
    await stack.fake.wait_closed(stack.fake.records[0], 2 * UNIT)


async def test_cancel_while_thinking_closes_the_upstream(make_stack: StackFactory) -> None:
    """A cancel during reasoning reaches the upstream like one during the answer."""
    stack = await make_stack(Script(tokens=2, reasoning=10_000, interval=0.01))
    client = await stack.client()
    await client.generate("r1")
    await client.until(lambda f: f["type"] == "ai:reasoning")
    await client.cancel("r1")
    end = await client.finish("r1")
    assert (end["type"], end["code"]) == ("ai:error", "cancelled")
    assert end["usage"]["reasoningTokens"] >= 1 and end["usage"]["source"] == "estimated"
    record = await stack.fake.wait_closed(stack.fake.records[0], 2 * UNIT)
    assert record.outcome == "client_closed"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"tools": [{"name": "get weather"}]}, "tools[0].name must be"),
        ({"tools": [{"name": "f", "parameters": "not a schema"}]}, "must be a JSON Schema object"),
        ({"tools": [{"name": "f", "parameters": {"type": 12}}]}, "not a valid JSON Schema"),
        ({"toolChoice": {"name": "nope"}, "tools": TOOLS}, "names no tool"),
        ({"responseFormat": {"type": "json_schema"}}, "responseFormat.schema is required"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "toolCallId is required"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "role must be one of"),
    ],
)
async def test_bad_parts_requests_are_invalid_request_and_harm_nothing(
    make_stack: StackFactory, extra: dict[str, Any], message: str
) -> None:
    """A bad tool, choice, format or message: invalid_request naming it, under the request's
    id; the socket and a generation already running go on."""
    stack = await make_stack(Script(tokens=30, interval=0.005))
    client = await stack.client()
    await client.generate("ok")
    await client.until(lambda f: f["type"] == "ai:token")
    await client.send({"type": "ai:generate", "requestId": "bad", "prompt": "p", **extra})
    bad = await client.finish("bad")
    assert (bad["type"], bad["code"], bad["requestId"]) == ("ai:error", "invalid_request", "bad")
    assert message in bad["message"]
    assert (await client.finish("ok"))["type"] == "ai:done"


async def test_parts_on_the_grpc_hop(make_stack: StackFactory) -> None:
    """A backend service gets the same parts as messages: Reasoning, ToolCallStart, ToolArgs,
    and Done with its tool calls (gap-free seq checked by the lifecycle checker)."""
    stack = await make_stack(
        Script(reasoning=2, tokens=0, tool_calls=[{"id": "c1", "name": "f", "arguments": "[1, 2]"}])
    )

    target = f"127.0.0.1:{stack.generator.port}"
    async with grpc.aio.insecure_channel(target) as channel:
        client = GrpcClient(channel, "grpc")
        await client.generate(
            "g1",
            tools=[pb.Tool(name="f")],
            tool_choice=pb.Json(text='"required"'),
        )
        kinds = []
        while True:
            event = await client.recv()
            kinds.append(event.WhichOneof("event"))
            if kinds[-1] in ("done", "error"):
                break
    assert kinds[:2] == ["start", "reasoning"]
    assert "tool_call" in kinds and "tool_args" in kinds
    assert event.done.tool_calls == [pb.ToolCall(id="c1", name="f", arguments="[1, 2]")]
    assert event.done.finish_reason == pb.FINISH_REASON_TOOL_CALLS


async def test_the_end_log_line_tells_reasoning_and_tool_calls(
    make_stack: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator reads what an answer was made of in its one end line."""
    caplog.set_level("INFO", logger="aistream.generator.generation")
    calls = [{"name": "f", "arguments": "[1]"}, {"name": "f", "arguments": "[2]"}]
    frames, _ = await run(
        make_stack, Script(tokens=0, reasoning=3, reasoning_tokens=3, tool_calls=calls)
    )
    assert frames[-1]["type"] == "ai:done"
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("end ")]
    assert "reasoning_tokens=3 tool_calls=2 usage=upstream" in line


async def test_a_tool_calls_finish_without_any_call_is_an_upstream_error(
    make_stack: StackFactory,
) -> None:
    """ "tool_calls" with no call streamed is not a done: there would be nothing to run."""
    frames, _ = await run(make_stack, Script(tokens=2, finish_reason="tool_calls"))
    end = frames[-1]
    assert (end["type"], end["code"], end["retryable"]) == ("ai:error", "upstream_error", True)
    assert "no tool call" in end["message"]
