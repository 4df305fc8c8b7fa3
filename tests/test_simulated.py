"""The embedded simulated model: every part a model streams, deterministically, with no upstream."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jsonschema
import orjson
import pytest

from aistream.errors import UpstreamFailure
from aistream.generator.simulated import REFUSAL, SimulatedUpstream, answer_tokens, sample
from aistream.generator.upstream import Call, Delta, Message, UpstreamRequest
from aistream.settings import Settings

PROMPT = "What's the weather in Lisbon today?"
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "The city's name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 3},
    },
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string"}, "at": {"type": "string", "format": "time"}},
            "required": ["zone"],
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "web_search",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1},
                "limit": {"type": "number", "exclusiveMinimum": 0, "maximum": 0.5},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "safe": {"type": "boolean"},
            },
            "required": ["query", "limit"],
        },
    },
}
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "summary": {"type": "string", "maxLength": 40},
        "temperature": {"type": "number", "minimum": -50, "maximum": 60},
        "sky": {"anyOf": [{"$ref": "#/$defs/sky"}, {"type": "null"}]},
        "hours": {"type": "array", "items": {"type": "integer", "multipleOf": 7}},
        "source": {"const": "simulated"},
        "tree": {"$ref": "#/$defs/node"},
    },
    "required": ["city", "temperature", "sky"],
    "additionalProperties": False,
    "$defs": {
        "sky": {"type": "string", "enum": ["clear", "cloudy"]},
        "node": {
            "type": "object",
            "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
        },
    },
}


def request(
    prompt: str = PROMPT, *, messages: tuple[Message, ...] = (), max_tokens: int = 4096, **kw: Any
) -> UpstreamRequest:
    """A request whose conversation is ``messages`` then the user's ``prompt`` (if any)."""
    turns = (*messages, Message("user", prompt)) if prompt else messages
    return UpstreamRequest("r1", turns, None, max_tokens, None, **kw)


@dataclass
class Streamed:
    """Everything one stream brought, folded."""

    deltas: list[Delta] = field(default_factory=list)
    calls: dict[int, list[str]] = field(default_factory=dict)  # index → [id, name, arguments]

    @property
    def reasoning(self) -> str:
        return "".join(d.reasoning for d in self.deltas)

    @property
    def text(self) -> str:
        return "".join(d.text for d in self.deltas)

    @property
    def refusal(self) -> str:
        return "".join(d.refusal for d in self.deltas)

    @property
    def end(self) -> Delta:
        return self.deltas[-1]

    def kinds(self) -> list[str]:
        """Each delta's part, in order ("call" for a call's start, "args" for its arguments)."""
        out = []
        for d in self.deltas[:-1]:
            if d.reasoning:
                out.append("reasoning")
            elif d.text:
                out.append("text")
            elif d.refusal:
                out.append("refusal")
            elif d.calls:
                out.append("call" if d.calls[0].name else "args")
        return out


def simulated(**overrides: Any) -> SimulatedUpstream:
    """The simulated model, as fast as it goes."""
    return SimulatedUpstream(Settings(simulated_ttft=0, simulated_tokens_per_s=0, **overrides))


async def stream(req: UpstreamRequest, **overrides: Any) -> Streamed:
    """Stream ``req`` to its end."""
    out = Streamed()
    async with simulated(**overrides).stream(req) as deltas:
        async for delta in deltas:
            out.deltas.append(delta)
            for piece in delta.calls or []:
                call = out.calls.setdefault(piece.index, ["", "", ""])
                if piece.id is not None:
                    call[0], call[1] = piece.id, piece.name or ""
                call[2] += piece.arguments
    return out


# --- reasoning then answer -------------------------------------------------------------------


async def test_reasons_then_answers() -> None:
    """24 reasoning tokens about the prompt, one per delta, then the usual answer; finish stop."""
    got = await stream(request())
    assert got.kinds() == ["reasoning"] * 24 + ["text"] * 60
    assert all(d.reasoning_count == 1 and d.count == 0 for d in got.deltas[:24])
    assert all(d.count == 1 and d.reasoning_count == 0 for d in got.deltas[24:-1])
    assert got.reasoning.startswith(f"The user asks: {PROMPT} I should")
    assert got.text == "".join(answer_tokens(PROMPT, 60))
    assert got.end.finish_reason == "stop"


async def test_reasoning_length_comes_from_settings_and_script() -> None:
    """simulated_reasoning_tokens sets the reasoning length; the script's reasoning overrides it."""
    assert (await stream(request(), simulated_reasoning_tokens=5)).kinds()[:6] == [
        "reasoning"
    ] * 5 + ["text"]
    scripted = await stream(request('#simulate {"reasoning": 40, "tokens": 3}\nhi'))
    assert scripted.kinds() == ["reasoning"] * 40 + ["text"] * 3
    none = await stream(request('#simulate {"reasoning": 0}\nhi'))
    assert none.reasoning == ""
    assert none.text == "".join(answer_tokens("hi", 60))


async def test_failure_scripts_count_answer_tokens() -> None:
    """fail_after / truncate_after count answer tokens, after all the reasoning."""
    got = Streamed()
    with pytest.raises(UpstreamFailure):
        async with simulated().stream(request('#simulate {"fail_after": 2}\nhi')) as deltas:
            async for delta in deltas:
                got.deltas.append(delta)
    assert [d.count for d in got.deltas if d.count] == [1, 1]
    assert sum(d.reasoning_count for d in got.deltas) == 24
    got = Streamed()
    with pytest.raises(UpstreamFailure, match="before finishing"):
        async with simulated().stream(request('#simulate {"truncate_after": 1}\nhi')) as deltas:
            async for delta in deltas:
                got.deltas.append(delta)
    assert len(got.deltas) == 25


async def test_max_tokens_bounds_reasoning_and_answer() -> None:
    """max_tokens counts every piece: the stream stops there with finish length."""
    got = await stream(request(max_tokens=30))
    assert got.kinds() == ["reasoning"] * 24 + ["text"] * 6
    assert got.end.finish_reason == "length"
    assert got.end.completion_tokens == 30


# --- tool calls ------------------------------------------------------------------------------


def arguments_of(got: Streamed) -> list[Any]:
    """Each call's arguments, parsed (in index order)."""
    return [orjson.loads(got.calls[i][2]) for i in sorted(got.calls)]


async def test_calls_the_first_tool_with_valid_arguments() -> None:
    """With tools (auto), it reasons, then calls the first tool with arguments that validate."""
    got = await stream(request(tools=(WEATHER, TIME)))
    assert got.kinds()[:25] == ["reasoning"] * 24 + ["call"]
    assert set(got.kinds()[25:]) == {"args"}
    assert got.text == got.refusal == ""
    (call,) = got.calls.values()
    assert call[0].startswith("call_")
    assert len(call[0]) == 5 + 24
    assert int(call[0][5:], 16) >= 0
    assert call[1] == "get_weather"
    (arguments,) = arguments_of(got)
    jsonschema.validate(arguments, WEATHER_SCHEMA)
    assert arguments == {"city": "Lisbon", "unit": "celsius", "days": arguments["days"]}
    assert all(len(d.calls[0].arguments) <= 6 for d in got.deltas[25:-1] if d.calls)
    assert got.end.finish_reason == "tool_calls"
    assert "get_weather" in got.reasoning


async def test_a_forced_tool_is_the_one_called() -> None:
    """tool_choice naming a function: that tool is called, even when it is not the first."""
    choice = {"type": "function", "function": {"name": "web_search"}}
    got = await stream(request(tools=(WEATHER, TIME, SEARCH), tool_choice=choice))
    assert [c[1] for c in got.calls.values()] == ["web_search"]
    (arguments,) = arguments_of(got)
    jsonschema.validate(arguments, SEARCH["function"]["parameters"])
    assert arguments["query"] == PROMPT


async def test_tool_choice_none_answers() -> None:
    """tool_choice "none": no call, the usual answer."""
    got = await stream(request(tools=(WEATHER,), tool_choice="none"))
    assert got.calls == {}
    assert got.text == "".join(answer_tokens(PROMPT, 60))
    assert got.end.finish_reason == "stop"


async def test_required_with_several_tools_calls_them_all_in_parallel() -> None:
    """tool_choice "required" with three tools: three calls, indexes 0..2, pieces round robin."""
    tools = (WEATHER, TIME, SEARCH)
    got = await stream(request(tools=tools, tool_choice="required"))
    assert [(i, c[1]) for i, c in got.calls.items()] == [
        (0, "get_weather"),
        (1, "get_time"),
        (2, "web_search"),
    ]
    assert len({c[0] for c in got.calls.values()}) == 3
    for tool, arguments in zip(tools, arguments_of(got), strict=True):
        jsonschema.validate(arguments, tool["function"]["parameters"])
    pieces = [d.calls[0].index for d in got.deltas if d.calls and not d.calls[0].name]
    assert pieces[:6] == [0, 1, 2, 0, 1, 2]
    assert got.end.finish_reason == "tool_calls"


async def test_answers_with_the_tool_result() -> None:
    """After a tool result the model answers (no second call), using the result."""
    call = Call("call_1", "get_weather", '{"city": "Lisbon"}')
    history = (
        Message("user", PROMPT),
        Message("assistant", "", (call,)),
        Message("tool", '{"temperature_c": 21,\n "sky": "clear"}', tool_call_id="call_1"),
    )
    got = await stream(request("", messages=history, tools=(WEATHER,), tool_choice="required"))
    assert got.calls == {}
    assert got.text.startswith(
        '**Simulated answer** using get_weather: {"temperature_c": 21, "sky": "clear"}\n\n'
    )
    assert got.kinds() == ["reasoning"] * 24 + ["text"] * 60
    assert "get_weather tool returned" in got.reasoning
    assert got.end.finish_reason == "stop"


async def test_invalid_json_breaks_the_arguments() -> None:
    """invalid_json cuts the arguments' last character: they no longer parse."""
    got = await stream(
        request('#simulate {"invalid_json": true}\nWeather in Oslo?', tools=(WEATHER,))
    )
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(got.calls[0][2])


# --- structured output -----------------------------------------------------------------------


async def test_json_object_answer() -> None:
    """json_object: the answer text is an indented JSON object holding the usual words."""
    fmt = {"type": "json_object"}
    got = await stream(request('#simulate {"tokens": 12}\nhi', response_format=fmt))
    value = orjson.loads(got.text)
    assert value == {"answer": "".join(answer_tokens("hi", 12)).strip()}
    assert got.text == orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    assert all(0 < len(d.text) <= 4 for d in got.deltas[24:-1])
    assert got.end.finish_reason == "stop"


async def test_json_schema_answer_validates() -> None:
    """json_schema: the answer text is JSON valid against the schema, non-ASCII kept."""
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": ANSWER_SCHEMA}}
    got = await stream(request("Is it sunny in Zürich?", response_format=fmt))
    value = orjson.loads(got.text)
    jsonschema.validate(value, ANSWER_SCHEMA)
    assert value["city"] == "Zürich"
    assert "Zürich" in got.text
    assert got.text.startswith("{\n  ")


async def test_invalid_json_breaks_the_structured_answer() -> None:
    """invalid_json cuts the answer's last character: the client sees invalid output."""
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": ANSWER_SCHEMA}}
    got = await stream(request('#simulate {"invalid_json": true}\nhi', response_format=fmt))
    assert got.text.endswith("\n")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(got.text)


def test_sample_follows_common_schemas() -> None:
    """sample() makes values valid against the usual keywords, and null for what it cannot read."""
    schemas: list[Any] = [
        WEATHER_SCHEMA,
        ANSWER_SCHEMA,
        {"type": ["string", "null"], "minLength": 12},
        {"type": "integer", "exclusiveMinimum": 10, "exclusiveMaximum": 12},
        {"type": "number", "minimum": 0.25, "maximum": 0.75, "multipleOf": 0.25},
        {"type": "array", "prefixItems": [{"type": "boolean"}], "minItems": 2, "maxItems": 2},
        {"allOf": [{"properties": {"a": {"type": "integer"}}}, {"required": ["b"]}]},
        {"oneOf": [{"type": "string", "format": "date"}, {"type": "integer"}]},
        {"type": "object", "properties": {"location": {"type": "string"}}},
    ]
    for schema in schemas:
        jsonschema.validate(sample(schema, "plans for Porto"), schema)
    assert sample({"type": "object", "properties": {"location": {}}}, "x") == {"location": None}
    assert sample({"type": "string", "x-unknown": 1}, "") == "simulated"
    assert sample({"properties": {"city": {"type": "string"}}}, "no names here") == {
        "city": "Paris"
    }


# --- refusal, usage, determinism -------------------------------------------------------------


async def test_refuses_when_scripted() -> None:
    """refuse: reasoning, then the refusal in pieces instead of an answer or a call; finish stop."""
    got = await stream(request('#simulate {"refuse": true}\nhi', tools=(WEATHER,)))
    assert got.refusal == REFUSAL
    assert got.text == ""
    assert got.calls == {}
    assert got.kinds() == ["reasoning"] * 24 + ["refusal"] * len(REFUSAL.split())
    assert got.end.finish_reason == "stop"


@pytest.mark.parametrize(
    ("prompt", "options", "reasoning", "answer"),
    [
        ('#simulate {"tokens": 7}\nhi', {}, 24, 7),
        ('#simulate {"refuse": true, "reasoning": 2}\nhi', {}, 2, 5),
        ("Weather in Rome?", {"tools": (WEATHER, TIME), "tool_choice": "required"}, 24, None),
    ],
)
async def test_usage_counts_every_piece(
    prompt: str, options: dict[str, Any], reasoning: int, answer: int | None
) -> None:
    """completion_tokens: every piece streamed (reasoning, answer, refusal, argument pieces);
    reasoning_tokens: the reasoning ones; no cached tokens; prompt tokens as estimated."""
    req = request(prompt, **options)
    got = await stream(req)
    pieces = [d for d in got.deltas[:-1] if d.reasoning or d.text or d.refusal]
    pieces += [d for d in got.deltas[:-1] if d.calls and d.calls[0].arguments]
    if answer is not None:
        assert len(pieces) == reasoning + answer
    assert got.end.completion_tokens == len(pieces)
    assert got.end.reasoning_tokens == reasoning
    assert got.end.cached_tokens is None
    assert got.end.prompt_tokens == len(prompt) // 4 + 1


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"tools": (WEATHER, TIME, SEARCH), "tool_choice": "required"},
        {"response_format": {"type": "json_schema", "json_schema": {"schema": ANSWER_SCHEMA}}},
    ],
)
async def test_the_same_request_streams_the_same(options: dict[str, Any]) -> None:
    """Deterministic: the same request gives the same deltas, in the same pieces."""
    first, second = await stream(request(**options)), await stream(request(**options))
    assert first.deltas == second.deltas
    other = await stream(request("Something else entirely", **options))
    assert other.deltas != first.deltas
