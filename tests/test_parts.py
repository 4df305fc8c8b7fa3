"""Parts, layer by layer without sockets: decoding every field shape real upstreams stream
(vLLM, llama.cpp, DeepSeek, OpenAI), assembling tool calls and structured output, validating
tools, tool choice, response formats and agent-loop messages. (Over real sockets, both hops:
tests/test_parts_e2e.py.)"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from aistream.bridge.translate import decode_client_frame
from aistream.errors import (
    InvalidFrame,
    InvalidOutput,
    InvalidRequest,
    SettingsError,
    UpstreamFailure,
)
from aistream.generator.generation import upstream_request
from aistream.generator.openai_upstream import _body, parse_chunk
from aistream.generator.parts import Output, ToolCalls
from aistream.generator.upstream import CallPiece
from aistream.settings import Settings
from aistream.v1 import events_pb2 as pb
from aistream.validation import check_generate

SETTINGS = Settings()


def chunk(delta: dict[str, Any] | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "choices": []}
    if delta is not None:
        body["choices"] = [{"index": 0, "delta": delta, "finish_reason": None}]
    body.update(extra)
    return orjson.dumps(body)


# --- decoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_in_either_field_name_is_reasoning_never_text(field: str) -> None:
    delta = parse_chunk(chunk({field: "Let me think"}))
    assert (delta.reasoning, delta.reasoning_count, delta.text, delta.count) == (
        "Let me think",
        1,
        "",
        0,
    )


def test_a_null_reasoning_field_beside_content_is_plain_text() -> None:
    """DeepSeek sends ``reasoning_content: null`` on answer chunks."""
    delta = parse_chunk(chunk({"content": "Hi", "reasoning_content": None}))
    assert (delta.text, delta.count, delta.reasoning, delta.calls) == ("Hi", 1, "", None)


def test_refusal_is_its_own_part() -> None:
    delta = parse_chunk(chunk({"content": None, "refusal": "I can't"}))
    assert (delta.refusal, delta.text) == ("I can't", "")


def test_tool_call_pieces_in_the_openai_shape() -> None:
    first = parse_chunk(
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    },
                    {"index": 1, "id": "call_2", "function": {"name": "get_time"}},
                ]
            }
        )
    )
    assert first.calls == [
        CallPiece(0, "call_1", "get_weather", ""),
        CallPiece(1, "call_2", "get_time", ""),
    ]
    later = parse_chunk(chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"tz'}}]}))
    assert later.calls == [CallPiece(1, None, None, '{"tz')]


def test_tool_call_arguments_sent_as_an_object_become_json_text() -> None:
    delta = parse_chunk(
        chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": "c", "function": {"name": "f", "arguments": {"a": 1}}}
                ]
            }
        )
    )
    assert delta.calls == [CallPiece(0, "c", "f", '{"a":1}')]


@pytest.mark.parametrize(
    "delta",
    [
        {"tool_calls": "garbage"},
        {"tool_calls": ["garbage"]},
        {"tool_calls": [{"index": "0", "function": {"name": "f"}}]},
        {"tool_calls": [{"index": True, "function": {"name": "f"}}]},
        {"tool_calls": [{"index": 0, "function": "f"}]},
        {"tool_calls": [{"index": 0, "function": {"name": 3}}]},
        {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": 3}}]},
        {"tool_calls": [{"index": 0, "id": 7, "function": {"name": "f"}}]},
    ],
)
def test_garbage_tool_calls_are_a_malformed_stream(delta: dict[str, Any]) -> None:
    with pytest.raises(UpstreamFailure) as info:
        parse_chunk(chunk(delta))
    assert info.value.code == pb.ERROR_CODE_UPSTREAM_ERROR
    assert "garbage" not in info.value.message and info.value.retryable


def test_a_delta_that_is_not_an_object_is_malformed() -> None:
    with pytest.raises(UpstreamFailure):
        parse_chunk(orjson.dumps({"choices": [{"delta": "text"}]}))


def test_usage_details_reasoning_and_cached_tokens() -> None:
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 30,
        "completion_tokens_details": {"reasoning_tokens": 20},
        "prompt_tokens_details": {"cached_tokens": 8},
    }
    delta = parse_chunk(chunk(usage=usage))
    assert (delta.prompt_tokens, delta.completion_tokens) == (10, 30)
    assert (delta.reasoning_tokens, delta.cached_tokens) == (20, 8)


def test_deepseek_cache_hit_tokens_are_cached_tokens() -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 3, "prompt_cache_hit_tokens": 6}
    delta = parse_chunk(chunk(usage=usage))
    assert (delta.reasoning_tokens, delta.cached_tokens) == (None, 6)


def test_usage_without_details_has_none() -> None:
    delta = parse_chunk(chunk(usage={"prompt_tokens": 1, "completion_tokens": 2}))
    assert (delta.reasoning_tokens, delta.cached_tokens) == (None, None)


# --- assembling tool calls -----------------------------------------------------------------------


def test_tool_calls_assemble_interleaved_pieces_in_index_order() -> None:
    calls = ToolCalls(max_calls=4, max_chars=100)
    opened = calls.add(CallPiece(1, "b", "second"))
    assert opened == pb.ToolCallStart(index=1, id="b", name="second")
    assert calls.add(CallPiece(0, "a", "first", '{"x": "\\')) is not None
    assert calls.add(CallPiece(1, arguments="[1, ")) is None
    assert calls.add(CallPiece(0, arguments='"é"}')) is None
    assert calls.add(CallPiece(1, arguments="2]")) is None
    assert calls.finish() == [
        pb.ToolCall(id="a", name="first", arguments='{"x": "\\"é"}'),
        pb.ToolCall(id="b", name="second", arguments="[1, 2]"),
    ]


def test_a_call_without_an_id_gets_one() -> None:
    calls = ToolCalls(max_calls=4, max_chars=100)
    start = calls.add(CallPiece(0, None, "f", "{}"))
    assert start is not None and start.id.startswith("call_") and len(start.id) > 10
    assert calls.finish()[0].id == start.id


def test_arguments_for_a_call_never_opened_are_an_upstream_error() -> None:
    calls = ToolCalls(max_calls=4, max_chars=100)
    with pytest.raises(UpstreamFailure) as info:
        calls.add(CallPiece(2, arguments="{}"))
    assert info.value.code == pb.ERROR_CODE_UPSTREAM_ERROR


def test_an_index_past_the_limit_is_an_upstream_error() -> None:
    calls = ToolCalls(max_calls=2, max_chars=100)
    with pytest.raises(UpstreamFailure) as info:
        calls.add(CallPiece(2, "c", "f"))
    assert info.value.code == pb.ERROR_CODE_UPSTREAM_ERROR


def test_arguments_past_the_limit_are_invalid_output() -> None:
    calls = ToolCalls(max_calls=2, max_chars=10)
    calls.add(CallPiece(0, "c", "f", '{"a": "'))
    with pytest.raises(InvalidOutput) as info:
        calls.add(CallPiece(0, arguments="0123456789"))
    assert (info.value.code, info.value.retryable) == (pb.ERROR_CODE_INVALID_OUTPUT, True)


def test_the_limit_is_on_all_calls_together() -> None:
    """Many calls each under the limit cannot add up past it: Done's size stays bounded."""
    calls = ToolCalls(max_calls=8, max_chars=20)
    for index in range(3):
        calls.add(CallPiece(index, f"c{index}", "f", "[1, 2]"))
    with pytest.raises(InvalidOutput, match="longer than 20"):
        calls.add(CallPiece(3, "c3", "f", "[1, 2]"))


def test_settings_keep_what_a_done_carries_inside_one_grpc_message() -> None:
    with pytest.raises(SettingsError, match="what one Done may carry"):
        Settings(max_tool_arguments_chars=1 << 20, max_output_chars=1 << 20)
    Settings(max_tool_arguments_chars=512 * 1024, max_output_chars=512 * 1024)


@pytest.mark.parametrize("arguments", ["", '{"city": "Par', "{'a': 1}"])
def test_arguments_that_do_not_parse_are_invalid_output(arguments: str) -> None:
    calls = ToolCalls(max_calls=2, max_chars=100)
    calls.add(CallPiece(0, "c", "get_weather", arguments))
    with pytest.raises(InvalidOutput) as info:
        calls.finish()
    assert "get_weather" in info.value.message and "Par" not in info.value.message


# --- structured output ---------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "temp": {"type": "integer"}},
    "required": ["city", "temp"],
}


def test_output_parses_validates_and_keeps_key_order() -> None:
    output = Output(SCHEMA, max_chars=1000)
    for piece in ['{"temp": ', '21, "ci', 'ty": "Pa', 'ris"}\n']:
        output.add(piece)
    assert output.finish().text == '{"temp":21,"city":"Paris"}'


def test_json_object_output_must_be_an_object() -> None:
    output = Output(None, max_chars=1000)
    output.add("[1, 2]")
    with pytest.raises(InvalidOutput, match="not a JSON object"):
        output.finish()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"city": "Paris", "temp": 2', "not valid JSON"),
        ("", "not valid JSON"),
        ('{"city": "SECRET", "temp": "warm"}', "breaks the schema: $.temp: 'type' \"integer\""),
        ('{"city": "SECRET"}', "breaks the schema: $: 'required'"),
    ],
)
def test_output_that_is_not_json_or_breaks_the_schema_is_invalid_output(
    text: str, reason: str
) -> None:
    output = Output(SCHEMA, max_chars=1000)
    output.add(text)
    with pytest.raises(InvalidOutput) as info:
        output.finish()
    assert reason in info.value.message
    assert "SECRET" not in info.value.message and "warm" not in info.value.message
    assert (info.value.code, info.value.retryable) == (pb.ERROR_CODE_INVALID_OUTPUT, True)


def test_output_past_its_limit_is_invalid_output() -> None:
    output = Output(None, max_chars=5)
    output.add("{}   ")
    with pytest.raises(InvalidOutput, match="longer than 5"):
        output.add(" ")


# --- validation ----------------------------------------------------------------------------------


def generate(**fields: Any) -> pb.Generate:
    fields.setdefault("request_id", "r")
    fields.setdefault("prompt", "weather?")
    return pb.Generate(**fields)


def json(value: Any) -> pb.Json:
    return pb.Json(text=orjson.dumps(value).decode())


def tool(name: str = "get_weather", parameters: Any = SCHEMA) -> pb.Tool:
    return pb.Tool(name=name, description="d", parameters=json(parameters))


VALID = [
    generate(tools=[tool()]),
    generate(tools=[tool()], tool_choice=json("required")),
    generate(tools=[tool()], tool_choice=json({"name": "get_weather"})),
    generate(
        tools=[tool()], tool_choice=json({"type": "function", "function": {"name": "get_weather"}})
    ),
    generate(tool_choice=json("none")),
    generate(tools=[pb.Tool(name="no-args_1")]),
    generate(response_format=pb.ResponseFormat(type=pb.RESPONSE_FORMAT_TYPE_JSON_OBJECT)),
    generate(
        response_format=pb.ResponseFormat(
            type=pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, name="weather", schema=json(SCHEMA)
        )
    ),
    generate(
        prompt="",
        messages=[
            pb.ChatMessage(role=pb.ROLE_USER, content="weather?"),
            pb.ChatMessage(
                role=pb.ROLE_ASSISTANT,
                tool_calls=[pb.ToolCall(id="c1", name="get_weather", arguments='{"city":"x"}')],
            ),
            pb.ChatMessage(role=pb.ROLE_TOOL, tool_call_id="c1", content=""),
        ],
    ),
]


@pytest.mark.parametrize("request_", VALID)
def test_valid_parts_requests_pass(request_: pb.Generate) -> None:
    check_generate(request_, SETTINGS)


INVALID: list[tuple[pb.Generate, str]] = [
    (generate(tools=[tool(name="get weather")]), "tools[0].name must be 1 to 64 of"),
    (generate(tools=[tool(name="x" * 65)]), "tools[0].name must be 1 to 64 of"),
    (generate(tools=[tool(name="")]), "tools[0].name must be 1 to 64 of"),
    (generate(tools=[tool(), tool()]), "tools[1].name 'get_weather' is used by another tool"),
    (generate(tools=[tool(parameters=[1])]), "tools[0].parameters must be a JSON Schema object"),
    (generate(tools=[tool(parameters="s")]), "tools[0].parameters must be a JSON Schema object"),
    (
        generate(tools=[pb.Tool(name="f", parameters=pb.Json(text="{nope"))]),
        "tools[0].parameters must be JSON",
    ),
    (
        generate(tools=[tool(parameters={"type": "nonsense"})]),
        "tools[0].parameters is not a valid JSON Schema",
    ),
    (
        generate(tools=[tool(parameters={"description": "x" * SETTINGS.max_schema_chars})]),
        "tools[0].parameters is longer than",
    ),
    (generate(tools=[tool()] * 0 + [tool(f"t{i}") for i in range(129)]), "more than 128"),
    (generate(tools=[tool()], tool_choice=json("sometimes")), "toolChoice must be"),
    (generate(tools=[tool()], tool_choice=json({"name": "other"})), "names no tool"),
    (generate(tool_choice=json("required")), "needs tools"),
    (generate(response_format=pb.ResponseFormat()), "responseFormat.type must be"),
    (
        generate(response_format=pb.ResponseFormat(type=pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA)),
        "responseFormat.schema is required",
    ),
    (
        generate(
            response_format=pb.ResponseFormat(
                type=pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, schema=json(["not", "an", "object"])
            )
        ),
        "responseFormat.schema must be a JSON Schema object",
    ),
    (
        generate(
            response_format=pb.ResponseFormat(
                type=pb.RESPONSE_FORMAT_TYPE_JSON_OBJECT, schema=json(SCHEMA)
            )
        ),
        "takes no schema",
    ),
    (
        generate(messages=[pb.ChatMessage(role=pb.ROLE_TOOL, content="42")]),
        "messages[0].toolCallId is required for a tool message",
    ),
    (
        generate(messages=[pb.ChatMessage(role=pb.ROLE_USER, content="x", tool_call_id="c")]),
        "messages[0].toolCallId is only for a tool message",
    ),
    (
        generate(
            messages=[
                pb.ChatMessage(
                    role=pb.ROLE_USER, tool_calls=[pb.ToolCall(id="c", name="f", arguments="{}")]
                )
            ]
        ),
        "messages[0].toolCalls is only for an assistant message",
    ),
    (
        generate(
            messages=[
                pb.ChatMessage(
                    role=pb.ROLE_ASSISTANT,
                    tool_calls=[pb.ToolCall(id="c", name="f", arguments="{oops")],
                )
            ]
        ),
        "messages[0].toolCalls[0].arguments must be JSON text",
    ),
    (
        generate(
            messages=[
                pb.ChatMessage(
                    role=pb.ROLE_ASSISTANT, tool_calls=[pb.ToolCall(name="f", arguments="{}")]
                )
            ]
        ),
        "messages[0].toolCalls[0].id must be a non-empty string",
    ),
    (
        generate(
            messages=[
                pb.ChatMessage(
                    role=pb.ROLE_ASSISTANT,
                    tool_calls=[
                        pb.ToolCall(
                            id="c",
                            name="f",
                            arguments='"' + "x" * SETTINGS.max_tool_arguments_chars + '"',
                        )
                    ],
                )
            ]
        ),
        "messages[0].toolCalls[0].arguments is longer than",
    ),
    (generate(messages=[pb.ChatMessage(role=9, content="x")]), "messages[0].role must be one of"),
]


@pytest.mark.parametrize(("request_", "message"), INVALID)
def test_invalid_parts_requests_are_invalid_request(request_: pb.Generate, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_generate(request_, SETTINGS)
    assert message in info.value.message
    assert info.value.request_id == "r"


def test_the_upstream_body_carries_tools_choice_format_and_the_agent_loop() -> None:
    """Everything reaches the upstream in the Chat Completions shape."""
    request_ = generate(
        prompt="",
        messages=[
            pb.ChatMessage(role=pb.ROLE_USER, content="weather?"),
            pb.ChatMessage(
                role=pb.ROLE_ASSISTANT,
                tool_calls=[pb.ToolCall(id="c1", name="get_weather", arguments='{"city":"x"}')],
            ),
            pb.ChatMessage(role=pb.ROLE_TOOL, tool_call_id="c1", content="21C"),
        ],
        tools=[tool()],
        tool_choice=json({"name": "get_weather"}),
        response_format=pb.ResponseFormat(
            type=pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, schema=json(SCHEMA), strict=True
        ),
    )
    check_generate(request_, SETTINGS)
    body = _body(upstream_request(request_, SETTINGS), "m")
    assert body["messages"] == [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"x"}'},
                }
            ],
        },
        {"role": "tool", "content": "21C", "tool_call_id": "c1"},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "d", "parameters": SCHEMA},
        }
    ]
    assert list(body["tools"][0]["function"]["parameters"]["properties"]) == ["city", "temp"]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": SCHEMA, "strict": True},
    }


def test_a_text_only_body_is_unchanged() -> None:
    """A request without parts sends exactly the keys it always did."""
    body = _body(upstream_request(generate(), SETTINGS), "m")
    assert set(body) == {"model", "messages", "max_tokens", "stream", "stream_options"}
    assert body["messages"] == [{"role": "user", "content": "weather?"}]


# --- deep JSON -----------------------------------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_a_schema_nested_too_deep_is_invalid_request() -> None:
    deep = generate(tools=[tool(parameters=nested(65))])
    with pytest.raises(InvalidRequest, match="nested more than 64 deep"):
        check_generate(deep, SETTINGS)
    check_generate(generate(tools=[tool(parameters=nested(64))]), SETTINGS)


def test_a_frame_value_deeper_than_json_writers_go_is_invalid_frame() -> None:
    """orjson reads 1,024 levels but writes 255: such a value is refused, not a crash."""
    value = '{"a":' * 299 + "{}" + "}" * 299  # (orjson cannot write it either: by hand)
    frame = '{"type":"ai:generate","requestId":"r","prompt":"p","toolChoice":' + value + "}"
    with pytest.raises(InvalidFrame, match="toolChoice is nested too deeply") as info:
        decode_client_frame(frame)
    assert info.value.request_id == "r"


@pytest.mark.parametrize("depth", [300, 1000])
def test_deep_structured_output_is_handed_over_or_invalid_never_a_crash(depth: int) -> None:
    text = '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)
    output = Output({"type": "object", "additionalProperties": {"$ref": "#"}}, 10**6)
    output.add(text)
    try:
        value = output.finish()
    except InvalidOutput as exc:
        assert "nested too deeply" in exc.message
    else:
        assert value.text == text
