"""JSON frames ⇄ protobuf events, driven by the schema. Pure: no I/O, no sockets.

The mapping is read from the message descriptors once, at import; no field is named in this
module, so a field added to an event in ``proto/`` appears on the wire with no code change::

    ServerEvent(token=Token(request_id="r1", chunk="Hi", seq=0, count=1))
      ⇄ {"type": "ai:token", "requestId": "r1", "chunk": "Hi", "seq": 0, "count": 1}

* ``type`` is ``"ai:"`` + the name of the envelope's oneof field.
* Every other key is a field's JSON name (lowerCamelCase).
* Enum values are lowercase strings without the enum's prefix
  (``ERROR_CODE_RATE_LIMITED`` → ``"rate_limited"``); the zero ``*_UNSPECIFIED`` value is never
  sent (the key is absent).
* A ``Json`` field (a JSON value carried as its text on the gRPC hop) is the value itself:
  ``Tool(parameters=Json(text='{"type":"object"}'))`` ⇄ ``{"parameters": {"type": "object"}}``;
  the text goes into the frame as it is (key order and numbers unchanged).
* Server → client: plain scalars are always present, ``optional`` scalars and message fields
  only when set. Client → server: every field is optional, unknown keys are ignored (additive
  evolution), wrong types are refused with an ``InvalidFrame`` (``aistream.errors``) naming the
  key.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from aistream import codes
from aistream.errors import InvalidFrame
from aistream.v1 import events_pb2 as pb

__all__ = [
    "CLIENT_TYPES",
    "SERVER_TYPES",
    "FrameError",
    "InvalidFrame",
    "decode_client_frame",
    "encode_server_event",
    "encode_server_frame",
    "error_frame",
]

TYPE_PREFIX = "ai:"
_INT32_LIMIT = 2**31
_UINT32_MAX = (1 << 32) - 1

FrameError = InvalidFrame
"""The name ``InvalidFrame`` had here before ``aistream.errors`` held every exception."""

# --- the plans, built from descriptors ----------------------------------------------------------


def _enum_names(enum: EnumDescriptor | None) -> dict[int, str]:
    assert enum is not None
    prefix = _enum_prefix(enum)
    return {v.number: v.name.removeprefix(prefix).lower() for v in enum.values}


def _enum_prefix(enum: EnumDescriptor) -> str:
    """``ErrorCode`` → ``ERROR_CODE_`` (the buf STANDARD enum value prefix)."""
    name = enum.name
    snake = "".join("_" + c if c.isupper() and i else c for i, c in enumerate(name))
    return snake.upper() + "_"


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    key: str
    presence: bool  # emit only when set (optional scalars, messages)
    repeated: bool
    enum: bool
    to_json: Callable[[Any], Any]
    from_json: Callable[[Any, str], Any]


def _scalar_decoder(field: FieldDescriptor) -> Callable[[Any, str], Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:

        def decode_string(value: Any, key: str) -> Any:
            if not isinstance(value, str):
                raise InvalidFrame(f"{key} must be a string")
            return value

        return decode_string
    if kind == FieldDescriptor.TYPE_BOOL:

        def decode_bool(value: Any, key: str) -> Any:
            if not isinstance(value, bool):
                raise InvalidFrame(f"{key} must be true or false")
            return value

        return decode_bool
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):

        def decode_uint32(value: Any, key: str) -> Any:
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 0 <= value <= _UINT32_MAX
            ):
                raise InvalidFrame(f"{key} must be a whole number from 0 to {_UINT32_MAX}")
            return value

        return decode_uint32
    if kind in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32):

        def decode_int32(value: Any, key: str) -> Any:
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not -_INT32_LIMIT <= value < _INT32_LIMIT
            ):
                raise InvalidFrame(
                    f"{key} must be a whole number from {-_INT32_LIMIT} to {_INT32_LIMIT - 1}"
                )
            return value

        return decode_int32
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):

        def decode_number(value: Any, key: str) -> Any:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidFrame(f"{key} must be a number")
            if not math.isfinite(value):
                raise InvalidFrame(f"{key} must be a finite number")
            return float(value)

        return decode_number
    if kind == FieldDescriptor.TYPE_ENUM:
        names = _enum_names(field.enum_type)
        numbers = {name: number for number, name in names.items() if number != 0}
        allowed = ", ".join(sorted(numbers))

        def decode_enum(value: Any, key: str) -> Any:
            if not isinstance(value, str) or value not in numbers:
                raise InvalidFrame(f"{key} must be one of {allowed}")
            return numbers[value]

        return decode_enum
    raise TypeError(f"no JSON mapping for field {field.full_name} of type {kind}")


def _scalar_encoder(field: FieldDescriptor) -> Callable[[Any], Any]:
    if field.type == FieldDescriptor.TYPE_ENUM:
        names = _enum_names(field.enum_type)
        return lambda value: names.get(value)
    return lambda value: value


def _message_plan(descriptor: Descriptor) -> tuple[_Field, ...]:
    plan = []
    to_json: Callable[[Any], Any]
    from_json: Callable[[Any, str], Any]
    for field in descriptor.fields:
        repeated = field.is_repeated
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            assert field.message_type is not None
            to_json, from_json = _message_codec(field.message_type)
        else:
            to_json, from_json = _scalar_encoder(field), _scalar_decoder(field)
        plan.append(
            _Field(
                name=field.name,
                key=field.json_name,
                presence=field.has_presence and not repeated,
                repeated=repeated,
                enum=field.type == FieldDescriptor.TYPE_ENUM,
                to_json=to_json,
                from_json=from_json,
            )
        )
    return tuple(plan)


def _json_to_frame(value: pb.Json) -> Any:
    return orjson.Fragment(value.text)  # written into the frame as it is (the generator's JSON)


def _json_from_frame(value: Any, key: str) -> pb.Json:
    # (the frame parsed, so the value is plain JSON; its text re-made compact, order kept)
    try:
        return pb.Json(text=orjson.dumps(value).decode())
    except TypeError:  # orjson writes at most 255 levels (it read up to 1,024)
        raise InvalidFrame(f"{key} is nested too deeply") from None


def _message_codec(
    descriptor: Descriptor,
) -> tuple[Callable[[Any], Any], Callable[[Any, str], Any]]:
    if descriptor.full_name == pb.Json.DESCRIPTOR.full_name:
        return _json_to_frame, _json_from_frame
    nested = _message_plan(descriptor)
    cls = _message_class(descriptor)

    def to_json(value: Any) -> Any:
        return _encode_message(value, nested)

    def from_json(value: Any, key: str) -> Any:
        return _decode_message(value, key, nested, cls)

    return to_json, from_json


def _message_class(descriptor: Descriptor) -> type[Message]:
    cls: type[Message] = getattr(pb, descriptor.name)
    return cls


def _encode_message(message: Message, plan: tuple[_Field, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in plan:
        value = getattr(message, field.name)
        if field.repeated:
            out[field.key] = [field.to_json(item) for item in value]
        elif field.enum and not value:
            continue  # *_UNSPECIFIED is never sent: the key is absent
        elif not field.presence or message.HasField(field.name):
            out[field.key] = field.to_json(value)
    return out


def _decode_message(value: Any, key: str, plan: tuple[_Field, ...], cls: type[Message]) -> Message:
    if not isinstance(value, dict):
        raise InvalidFrame(f"{key} must be an object")
    return cls(**_decode_fields(value, plan, key + "."))


def _decode_fields(obj: dict[str, Any], plan: tuple[_Field, ...], prefix: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for field in plan:
        if field.key not in obj:
            continue
        value = obj[field.key]
        key = prefix + field.key
        if field.repeated:
            if not isinstance(value, list):
                raise InvalidFrame(f"{key} must be an array")
            kwargs[field.name] = [
                field.from_json(item, f"{key}[{i}]") for i, item in enumerate(value)
            ]
        elif value is None and field.presence:
            continue  # null = not set, for optional fields
        else:
            kwargs[field.name] = field.from_json(value, key)
    return kwargs


def _envelope(descriptor: Any) -> dict[str, tuple[str, tuple[_Field, ...], type[Message]]]:
    """Frame type → (oneof field name, plan, message class) for an envelope's ``event`` oneof."""
    envelope: dict[str, tuple[str, tuple[_Field, ...], type[Message]]] = {}
    for field in descriptor.oneofs_by_name["event"].fields:
        message = field.message_type
        envelope[TYPE_PREFIX + field.name] = (
            field.name,
            _message_plan(message),
            _message_class(message),
        )
    return envelope


_CLIENT = _envelope(pb.ClientEvent.DESCRIPTOR)
_SERVER = {
    name: (plan, frame_type)
    for frame_type, (name, plan, _) in _envelope(pb.ServerEvent.DESCRIPTOR).items()
}

CLIENT_TYPES: tuple[str, ...] = tuple(_CLIENT)
"""Frame types of the client's envelope (``ai:generate``, ``ai:cancel``, ``ai:resume``, and
``ai:detach``, which the bridge refuses from a browser: it is what the bridge tells the
generator)."""
SERVER_TYPES: tuple[str, ...] = tuple(frame_type for _, frame_type in _SERVER.values())
"""Frame types the bridge sends (``ai:start``, ``ai:token``, ``ai:done``, ``ai:error``)."""


# --- the public functions -----------------------------------------------------------------------


def decode_client_frame(data: str | bytes, max_request_id: int = 128) -> pb.ClientEvent:
    """Parse one WebSocket message into a ClientEvent, or raise InvalidFrame saying why not.
    An InvalidFrame names the frame's ``requestId`` when it is a string of at most
    ``max_request_id`` characters, else ``""`` (an answer never echoes more than that)."""
    if isinstance(data, bytes):
        raise InvalidFrame("binary frames are not supported: send JSON text frames")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise InvalidFrame("the frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise InvalidFrame("the frame must be a JSON object")
    raw_id = obj.get("requestId")
    request_id = raw_id if isinstance(raw_id, str) and len(raw_id) <= max_request_id else ""
    frame_type = obj.get("type")
    entry = _CLIENT.get(frame_type) if isinstance(frame_type, str) else None
    if entry is None:
        raise InvalidFrame(f"type must be one of {', '.join(CLIENT_TYPES)}", request_id)
    if not isinstance(raw_id, str):
        raise InvalidFrame("requestId must be a string", "")
    name, plan, cls = entry
    try:
        event = cls(**_decode_fields(obj, plan, ""))
    except InvalidFrame as exc:
        raise InvalidFrame(str(exc), request_id) from None
    return pb.ClientEvent(**{name: event})  # type: ignore[arg-type]


def encode_server_frame(event: pb.ServerEvent) -> bytes:
    """The JSON text frame of one ServerEvent, UTF-8 (what the socket writes)."""
    name = event.WhichOneof("event")
    if name is None:
        raise ValueError("ServerEvent has no event set")
    plan, frame_type = _SERVER[name]
    body = _encode_message(getattr(event, name), plan)
    return orjson.dumps({"type": frame_type, **body})


def encode_server_event(event: pb.ServerEvent) -> str:
    """The JSON text frame of one ServerEvent."""
    return encode_server_frame(event).decode()


def error_frame(
    code: codes.Code, message: str, request_id: str = "", *, retryable: bool | None = None
) -> str:
    """The ``ai:error`` frame for a failure found by the bridge itself."""
    return encode_server_event(codes.error_event(code, message, request_id, retryable=retryable))
