"""aistream.bridge.translate: the schema-driven JSON ⇄ protobuf mapping, without sockets."""

from __future__ import annotations

import contextlib

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aistream import codes
from aistream.bridge.translate import (
    CLIENT_TYPES,
    SERVER_TYPES,
    decode_client_frame,
    encode_server_event,
    error_frame,
)
from aistream.errors import InvalidFrame
from aistream.v1 import events_pb2 as pb


def test_frame_types_follow_the_schema_oneofs() -> None:
    """Frame types are "ai:" + each envelope's oneof field names."""
    assert CLIENT_TYPES == ("ai:generate", "ai:cancel", "ai:resume", "ai:detach")
    assert SERVER_TYPES == (
        "ai:start",
        "ai:token",
        "ai:done",
        "ai:error",
        "ai:reasoning",
        "ai:tool_call",
        "ai:tool_args",
        "ai:refusal",
    )


def test_core_protocol_generate_decodes() -> None:
    """The seed protocol's generate frame (type, requestId, prompt only) decodes unchanged."""
    event = decode_client_frame('{"type":"ai:generate","requestId":"r1","prompt":"hi"}')
    assert event.WhichOneof("event") == "generate"
    assert event.generate.request_id == "r1"
    assert event.generate.prompt == "hi"
    assert not event.generate.HasField("max_tokens")


def test_additive_generate_fields_decode() -> None:
    """messages, model, maxTokens, temperature and timeoutMs map to their fields."""
    frame = {
        "type": "ai:generate",
        "requestId": "r1",
        "prompt": "and then?",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
        ],
        "model": "m",
        "maxTokens": 7,
        "temperature": 0.5,
        "timeoutMs": 1500,
        "futureField": {"ignored": True},
    }
    g = decode_client_frame(orjson.dumps(frame).decode()).generate
    assert [(m.role, m.content) for m in g.messages] == [
        (pb.ROLE_SYSTEM, "be brief"),
        (pb.ROLE_USER, "hi"),
        (pb.ROLE_ASSISTANT, "hello"),
    ]
    assert (g.model, g.max_tokens, g.temperature, g.timeout_ms) == ("m", 7, 0.5, 1500)


def test_cancel_decodes() -> None:
    """ai:cancel carries only the request id."""
    event = decode_client_frame('{"type":"ai:cancel","requestId":"r9"}')
    assert event.WhichOneof("event") == "cancel"
    assert event.cancel.request_id == "r9"


@pytest.mark.parametrize(
    ("frame", "message", "request_id"),
    [
        (b'{"type":"ai:generate"}', "binary frames are not supported", ""),
        ("not json", "not valid JSON", ""),
        ("[1, 2]", "must be a JSON object", ""),
        ('"text"', "must be a JSON object", ""),
        ('{"type":"ai:launch","requestId":"r1"}', "type must be one of", "r1"),
        ('{"requestId":"r1"}', "type must be one of", "r1"),
        ('{"type":"ai:generate","prompt":"x"}', "requestId must be a string", ""),
        ('{"type":"ai:generate","requestId":5}', "requestId must be a string", ""),
        ('{"type":"ai:generate","requestId":"r1","prompt":5}', "prompt must be a string", "r1"),
        ('{"type":"ai:generate","requestId":"r1","maxTokens":"5"}', "maxTokens must be", "r1"),
        ('{"type":"ai:generate","requestId":"r1","maxTokens":-1}', "maxTokens must be", "r1"),
        ('{"type":"ai:generate","requestId":"r1","maxTokens":true}', "maxTokens must be", "r1"),
        ('{"type":"ai:generate","requestId":"r1","temperature":"hot"}', "temperature must", "r1"),
        (
            '{"type":"ai:generate","requestId":"r1","messages":{}}',
            "messages must be an array",
            "r1",
        ),
        (
            '{"type":"ai:generate","requestId":"r1","messages":[1]}',
            "messages[0] must be an object",
            "r1",
        ),
        (
            '{"type":"ai:generate","requestId":"r1","messages":[{"role":"god","content":"x"}]}',
            "messages[0].role must be one of assistant, system, tool, user",
            "r1",
        ),
    ],
)
def test_bad_frames_raise_invalid_frame_naming_the_problem(
    frame: str | bytes, message: str, request_id: str
) -> None:
    """Each malformed frame raises InvalidFrame with a safe message and the id when readable;
    it is answered with invalid_request under that id."""
    with pytest.raises(InvalidFrame) as info:
        decode_client_frame(frame)
    assert message in str(info.value)
    assert info.value.request_id == request_id
    answer = encode_server_event(info.value.event())
    assert answer == error_frame(pb.ERROR_CODE_INVALID_REQUEST, str(info.value), request_id)
    assert orjson.loads(answer)["retryable"] is False


def test_deeply_nested_json_is_an_invalid_frame() -> None:
    """JSON nested beyond the parser's limit is refused, not a crash."""
    with pytest.raises(InvalidFrame):
        decode_client_frame("[" * 100_000 + "]" * 100_000)


def test_token_frame_has_core_and_additive_fields() -> None:
    """ai:token carries requestId and chunk (core) plus seq and count."""
    frame = orjson.loads(
        encode_server_event(
            pb.ServerEvent(token=pb.Token(request_id="r", chunk="Hi", seq=0, count=1))
        )
    )
    assert frame == {"type": "ai:token", "requestId": "r", "chunk": "Hi", "seq": 0, "count": 1}


def test_done_frame_maps_enums_and_nested_usage() -> None:
    """Enums become lowercase names without prefix; usage is a nested camelCase object."""
    event = pb.ServerEvent(
        done=pb.Done(
            request_id="r",
            finish_reason=pb.FINISH_REASON_LENGTH,
            usage=pb.Usage(prompt_tokens=3, completion_tokens=9, source=pb.USAGE_SOURCE_UPSTREAM),
            ttft_ms=12,
            duration_ms=40,
        )
    )
    assert orjson.loads(encode_server_event(event)) == {
        "type": "ai:done",
        "requestId": "r",
        "finishReason": "length",
        "usage": {"promptTokens": 3, "completionTokens": 9, "source": "upstream"},
        "ttftMs": 12,
        "durationMs": 40,
        "toolCalls": [],
    }


def test_done_frame_carries_parts_json_as_values_in_order() -> None:
    """A Done's tool calls, structured output (a Json: its text, key order kept), reasoning time
    and usage details reach the frame; the Json is the value, not a string."""
    event = pb.ServerEvent(
        done=pb.Done(
            request_id="r",
            finish_reason=pb.FINISH_REASON_TOOL_CALLS,
            usage=pb.Usage(
                prompt_tokens=3,
                completion_tokens=9,
                source=pb.USAGE_SOURCE_UPSTREAM,
                reasoning_tokens=4,
                cached_tokens=0,
            ),
            tool_calls=[pb.ToolCall(id="c1", name="f", arguments='{"a": "é"}')],
            output=pb.Json(text='{"z":1,"a":[1.5,null,12345678901234567]}'),
            reasoning_ms=7,
        )
    )
    text = encode_server_event(event)
    assert '"output":{"z":1,"a":[1.5,null,12345678901234567]}' in text
    frame = orjson.loads(text)
    assert frame["toolCalls"] == [{"id": "c1", "name": "f", "arguments": '{"a": "é"}'}]
    assert frame["usage"]["reasoningTokens"] == 4
    assert frame["usage"]["cachedTokens"] == 0  # optional, set: present even when 0
    assert (frame["finishReason"], frame["reasoningMs"]) == ("tool_calls", 7)


def test_part_frames_follow_the_schema() -> None:
    """Every part event becomes its frame type with camelCase keys."""
    events = [
        pb.ServerEvent(reasoning=pb.Reasoning(request_id="r", chunk="hm", seq=0, count=1)),
        pb.ServerEvent(
            tool_call=pb.ToolCallStart(request_id="r", seq=1, index=0, id="c", name="f")
        ),
        pb.ServerEvent(tool_args=pb.ToolArgs(request_id="r", chunk="{", seq=2, count=1, index=0)),
        pb.ServerEvent(refusal=pb.Refusal(request_id="r", chunk="no", seq=3, count=1)),
    ]
    frames = [orjson.loads(encode_server_event(e)) for e in events]
    assert frames == [
        {"type": "ai:reasoning", "requestId": "r", "chunk": "hm", "seq": 0, "count": 1},
        {"type": "ai:tool_call", "requestId": "r", "seq": 1, "index": 0, "id": "c", "name": "f"},
        {"type": "ai:tool_args", "requestId": "r", "chunk": "{", "seq": 2, "count": 1, "index": 0},
        {"type": "ai:refusal", "requestId": "r", "chunk": "no", "seq": 3, "count": 1},
    ]


def test_generate_json_fields_become_json_text_in_order() -> None:
    """tools[].parameters, toolChoice and responseFormat.schema arrive as Json text, compact,
    with their keys in the client's order; tool messages keep their call ids."""
    frame = orjson.dumps(
        {
            "type": "ai:generate",
            "requestId": "r",
            "prompt": "p",
            "tools": [
                {"name": "f", "parameters": {"type": "object", "properties": {"z": {}, "a": {}}}}
            ],
            "toolChoice": {"name": "f"},
            "responseFormat": {"type": "json_schema", "schema": {"type": "object"}, "strict": True},
            "messages": [
                {"role": "assistant", "toolCalls": [{"id": "c", "name": "f", "arguments": "{}"}]},
                {"role": "tool", "toolCallId": "c", "content": "42"},
            ],
        }
    )
    g = decode_client_frame(frame.decode()).generate
    assert g.tools[0].parameters.text == '{"type":"object","properties":{"z":{},"a":{}}}'
    assert g.tool_choice.text == '{"name":"f"}'
    assert g.response_format.type == pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA
    assert (g.response_format.schema.text, g.response_format.strict) == ('{"type":"object"}', True)
    assert g.messages[0].tool_calls[0] == pb.ToolCall(id="c", name="f", arguments="{}")
    assert (g.messages[1].role, g.messages[1].tool_call_id) == (pb.ROLE_TOOL, "c")


def test_error_frame_has_code_message_and_retryable() -> None:
    """ai:error carries the JSON code from the table and its default retryable."""
    frame = orjson.loads(error_frame(pb.ERROR_CODE_RATE_LIMITED, "slow down", "r"))
    assert frame["type"] == "ai:error"
    assert (frame["requestId"], frame["code"], frame["message"]) == (
        "r",
        "rate_limited",
        "slow down",
    )
    assert frame["retryable"] is True
    assert "usage" not in frame  # message fields appear only when set


def test_start_frame() -> None:
    """ai:start carries the model name."""
    frame = orjson.loads(
        encode_server_event(
            pb.ServerEvent(start=pb.Start(request_id="r", model="aistream-simulated"))
        )
    )
    assert frame == {"type": "ai:start", "requestId": "r", "model": "aistream-simulated"}


@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_decoder_never_raises_anything_but_invalid_frame(data: str | bytes) -> None:
    """Arbitrary input decodes to a ClientEvent or raises InvalidFrame, never anything else."""
    try:
        event = decode_client_frame(data)
    except InvalidFrame as exc:
        assert str(exc)
        orjson.loads(error_frame(pb.ERROR_CODE_INVALID_REQUEST, str(exc), exc.request_id))
    else:
        assert event.WhichOneof("event") in ("generate", "cancel")


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    st.sampled_from(["ai:generate", "ai:cancel", "ai:other", 3]),
    st.dictionaries(
        st.sampled_from(
            ["requestId", "prompt", "messages", "model", "maxTokens", "temperature", "timeoutMs"]
        ),
        _json_values,
    ),
)
def test_structured_frames_never_crash_the_decoder(
    frame_type: object, fields: dict[str, object]
) -> None:
    """Objects with the right keys but any values decode or raise InvalidFrame."""
    with contextlib.suppress(InvalidFrame):
        decode_client_frame(orjson.dumps({"type": frame_type, **fields}).decode())


def test_unspecified_enums_are_absent() -> None:
    """A zero (*_UNSPECIFIED) enum is left out of the frame, never sent as "unspecified"."""
    frame = orjson.loads(encode_server_event(pb.ServerEvent(done=pb.Done(request_id="r"))))
    assert "finishReason" not in frame
    assert frame["requestId"] == "r"


_text = st.text(max_size=50)
_u32 = st.integers(0, 2**32 - 1)
_usage = st.builds(
    pb.Usage, prompt_tokens=_u32, completion_tokens=_u32, source=st.sampled_from([0, 1, 2])
)
_server_events = st.one_of(
    st.builds(lambda r, m: pb.ServerEvent(start=pb.Start(request_id=r, model=m)), _text, _text),
    st.builds(
        lambda r, c, s, n: pb.ServerEvent(token=pb.Token(request_id=r, chunk=c, seq=s, count=n)),
        _text,
        _text,
        _u32,
        _u32,
    ),
    st.builds(
        lambda r, f, u, t, d: pb.ServerEvent(
            done=pb.Done(request_id=r, finish_reason=f, usage=u, ttft_ms=t, duration_ms=d)
        ),
        _text,
        st.sampled_from([0, 1, 2, 3, 4]),
        _usage,
        _u32,
        _u32,
    ),
    st.builds(
        lambda r, c, m, rt: pb.ServerEvent(
            error=pb.Error(request_id=r, code=c, message=m, retryable=rt)
        ),
        _text,
        st.integers(1, 10),
        _text,
        st.booleans(),
    ),
)


@given(_server_events)
def test_every_server_event_encodes_to_a_valid_frame(event: pb.ServerEvent) -> None:
    """Any ServerEvent encodes to a JSON object with a known type and its request id."""
    frame = orjson.loads(encode_server_event(event))
    assert frame["type"] in SERVER_TYPES
    kind = event.WhichOneof("event")
    assert frame["requestId"] == getattr(event, kind).request_id
    if "finishReason" in frame:
        assert frame["finishReason"] in {"stop", "length", "content_filter", "tool_calls"}
    if "code" in frame:
        assert frame["code"] in {row.json for row in codes.CODES.values()}
    if "usage" in frame and "source" in frame["usage"]:
        assert frame["usage"]["source"] in {"upstream", "estimated"}
