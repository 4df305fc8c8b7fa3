"""Request validation shared by the bridge and the generator. Pure, no I/O.

The generator is the authority (backend services call it directly); the bridge runs the same
checks first so a bad browser frame is answered without touching the gRPC stream. Every failure is
an ``InvalidRequest`` (``aistream.errors``) whose message is safe to send back and names the
offending field by its JSON name.

Tools, tool choice, response format and tool messages (an agent loop's turns) are checked here
too, their JSON (``Json`` text on the gRPC hop) parsed: a schema must be an object and a valid
JSON Schema (``jsonschema``), a tool name must match ``TOOL_NAME``, sizes stay within the
settings' limits. ``tool_choice_of`` and ``json_of`` give the generator the parsed values.
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for

from aistream.errors import InvalidRequest
from aistream.settings import Settings
from aistream.v1 import events_pb2 as pb

__all__ = [
    "MAX_JSON_DEPTH",
    "TOOL_NAME",
    "InvalidRequest",
    "check_cancel",
    "check_generate",
    "check_request_id",
    "check_schema",
    "json_of",
    "tool_choice_of",
]

TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
"""What a tool's (and a response schema's) name must match, whole."""
TOOL_CHOICE_MODES = ("auto", "none", "required")
_ROLE_NAMES = "system, user, assistant, tool"
_SCHEMA_ERROR_CHARS = 200  # of jsonschema's explanation, in an invalid_request message
MAX_JSON_DEPTH = 64
"""Deepest nesting of a schema or tool choice (arrays and objects; the upstream request's body
nests it a few levels deeper, and JSON writers stop at a few hundred)."""


def _depth_over(value: Any, limit: int) -> bool:
    """Whether ``value`` nests arrays/objects more than ``limit`` deep (iterative)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def check_request_id(request_id: str, settings: Settings) -> None:
    """Reject an empty or over-long request id."""
    if not request_id:
        raise InvalidRequest("requestId must be a non-empty string")
    if len(request_id) > settings.max_request_id_chars:
        raise InvalidRequest(f"requestId is longer than {settings.max_request_id_chars} characters")


MAX_RESUME_TOKEN_CHARS = 128
"""What a resume token may be at most (aistream's are 65 characters)."""


def check_generate(generate: pb.Generate, settings: Settings) -> None:
    """Reject a Generate that breaks a limit; raises InvalidRequest carrying its request id."""
    check_request_id(generate.request_id, settings)
    rid = generate.request_id
    if len(generate.client_request_id) > settings.max_request_id_chars:
        raise InvalidRequest(
            f"clientRequestId is longer than {settings.max_request_id_chars} characters", rid
        )
    if len(generate.prompt) > settings.max_prompt_chars:
        raise InvalidRequest(f"prompt is longer than {settings.max_prompt_chars} characters", rid)
    if len(generate.messages) > settings.max_messages:
        raise InvalidRequest(f"messages has more than {settings.max_messages} entries", rid)
    total = len(generate.prompt)
    for i, message in enumerate(generate.messages):
        total += _check_message(message, f"messages[{i}]", settings, rid)
    if total > settings.max_history_chars:
        raise InvalidRequest(
            f"prompt and messages are longer than {settings.max_history_chars} characters", rid
        )
    if not generate.prompt and not any(
        m.content or m.tool_calls or m.role == pb.ROLE_TOOL for m in generate.messages
    ):
        raise InvalidRequest("prompt or messages must be non-empty", rid)
    if generate.tools or generate.HasField("tool_choice"):
        _check_tools(generate, settings, rid)
    if generate.HasField("response_format"):
        _check_response_format(generate.response_format, settings, rid)
    if len(generate.model) > settings.max_model_chars:
        raise InvalidRequest(f"model is longer than {settings.max_model_chars} characters", rid)
    if generate.HasField("max_tokens") and generate.max_tokens == 0:
        raise InvalidRequest("maxTokens must be at least 1", rid)
    if generate.HasField("temperature") and not (
        math.isfinite(generate.temperature) and 0.0 <= generate.temperature <= 2.0
    ):
        raise InvalidRequest("temperature must be between 0 and 2", rid)
    if generate.HasField("timeout_ms") and generate.timeout_ms == 0:
        raise InvalidRequest("timeoutMs must be at least 1", rid)


def _check_message(message: pb.ChatMessage, key: str, settings: Settings, rid: str) -> int:
    """Check one history message; its characters (content and tool call arguments)."""
    role = message.role
    if role == pb.ROLE_UNSPECIFIED or role not in pb.Role.values():
        raise InvalidRequest(f"{key}.role must be one of {_ROLE_NAMES}", rid)
    size = len(message.content)
    if role == pb.ROLE_TOOL:
        if not message.tool_call_id:
            raise InvalidRequest(f"{key}.toolCallId is required for a tool message", rid)
        _check_id(message.tool_call_id, f"{key}.toolCallId", settings, rid)
    elif message.tool_call_id:
        raise InvalidRequest(f"{key}.toolCallId is only for a tool message", rid)
    if not message.tool_calls:
        return size
    if role != pb.ROLE_ASSISTANT:
        raise InvalidRequest(f"{key}.toolCalls is only for an assistant message", rid)
    if len(message.tool_calls) > settings.max_tool_calls:
        raise InvalidRequest(
            f"{key}.toolCalls has more than {settings.max_tool_calls} entries", rid
        )
    for j, call in enumerate(message.tool_calls):
        at = f"{key}.toolCalls[{j}]"
        _check_id(call.id, f"{at}.id", settings, rid)
        _check_tool_name(call.name, f"{at}.name", rid)
        if len(call.arguments) > settings.max_tool_arguments_chars:
            raise InvalidRequest(
                f"{at}.arguments is longer than {settings.max_tool_arguments_chars} characters",
                rid,
            )
        try:
            orjson.loads(call.arguments)
        except orjson.JSONDecodeError:
            raise InvalidRequest(f"{at}.arguments must be JSON text", rid) from None
        size += len(call.arguments)
    return size


def _check_id(value: str, key: str, settings: Settings, rid: str) -> None:
    if not value:
        raise InvalidRequest(f"{key} must be a non-empty string", rid)
    if len(value) > settings.max_request_id_chars:
        raise InvalidRequest(
            f"{key} is longer than {settings.max_request_id_chars} characters", rid
        )


def _check_tool_name(name: str, key: str, rid: str) -> None:
    if not TOOL_NAME.fullmatch(name):
        raise InvalidRequest(f"{key} must be 1 to 64 of a-z, A-Z, 0-9, _ and -", rid)


def json_of(value: pb.Json, key: str, rid: str = "", max_chars: int | None = None) -> Any:
    """The value a ``Json`` carries; InvalidRequest naming ``key`` if its text is not JSON or is
    longer than ``max_chars``."""
    if max_chars is not None and len(value.text) > max_chars:
        raise InvalidRequest(f"{key} is longer than {max_chars} characters as JSON", rid)
    try:
        parsed = orjson.loads(value.text)
    except orjson.JSONDecodeError:
        raise InvalidRequest(f"{key} must be JSON", rid) from None
    if _depth_over(parsed, MAX_JSON_DEPTH):
        raise InvalidRequest(f"{key} is nested more than {MAX_JSON_DEPTH} deep", rid)
    return parsed


def check_schema(value: pb.Json, key: str, settings: Settings, rid: str = "") -> dict[str, Any]:
    """The JSON Schema a ``Json`` carries: an object, within ``max_schema_chars``, valid under
    its meta-schema (``$schema``, else draft 2020-12); InvalidRequest naming ``key`` if not."""
    schema = json_of(value, key, rid, settings.max_schema_chars)
    if not isinstance(schema, dict):
        raise InvalidRequest(f"{key} must be a JSON Schema object", rid)
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        reason = exc.message[:_SCHEMA_ERROR_CHARS]
        raise InvalidRequest(f"{key} is not a valid JSON Schema: {reason}", rid) from None
    except RecursionError:
        raise InvalidRequest(f"{key} is nested too deeply", rid) from None
    return schema


def tool_choice_of(generate: pb.Generate, rid: str = "") -> str | None:
    """The tool choice of a Generate: a mode (``auto``/``none``/``required``), ``"name:" +`` a
    tool's name, or None when it has none; InvalidRequest if it is anything else."""
    if not generate.HasField("tool_choice"):
        return None
    choice = json_of(generate.tool_choice, "toolChoice", rid, 4096)
    if isinstance(choice, str) and choice in TOOL_CHOICE_MODES:
        return choice
    if isinstance(choice, dict):
        # {"name": …}, or the Chat Completions shape {"type": "function", "function": {"name": …}}
        inner = choice.get("function") if choice.get("type") == "function" else choice
        name = inner.get("name") if isinstance(inner, dict) else None
        if isinstance(name, str):
            return "name:" + name
    raise InvalidRequest('toolChoice must be "auto", "none", "required" or {"name": "<tool>"}', rid)


def _check_tools(generate: pb.Generate, settings: Settings, rid: str) -> None:
    if len(generate.tools) > settings.max_tools:
        raise InvalidRequest(f"tools has more than {settings.max_tools} entries", rid)
    names: set[str] = set()
    for i, tool in enumerate(generate.tools):
        key = f"tools[{i}]"
        _check_tool_name(tool.name, f"{key}.name", rid)
        if tool.name in names:
            raise InvalidRequest(f"{key}.name {tool.name!r} is used by another tool", rid)
        names.add(tool.name)
        if len(tool.description) > settings.max_schema_chars:
            raise InvalidRequest(
                f"{key}.description is longer than {settings.max_schema_chars} characters", rid
            )
        if tool.HasField("parameters"):
            check_schema(tool.parameters, f"{key}.parameters", settings, rid)
    choice = tool_choice_of(generate, rid)
    if choice is None or choice in ("auto", "none"):
        return
    if not generate.tools:
        raise InvalidRequest(f"toolChoice {choice!r} needs tools", rid)
    if choice.startswith("name:") and choice[5:] not in names:
        raise InvalidRequest("toolChoice names no tool of tools", rid)


def _check_response_format(fmt: pb.ResponseFormat, settings: Settings, rid: str) -> None:
    if fmt.type == pb.RESPONSE_FORMAT_TYPE_JSON_OBJECT:
        if fmt.HasField("schema") or fmt.name:
            raise InvalidRequest("responseFormat json_object takes no schema or name", rid)
        return
    if fmt.type != pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
        raise InvalidRequest("responseFormat.type must be json_object or json_schema", rid)
    if not fmt.HasField("schema"):
        raise InvalidRequest("responseFormat.schema is required with json_schema", rid)
    if fmt.name:
        _check_tool_name(fmt.name, "responseFormat.name", rid)
    check_schema(fmt.schema, "responseFormat.schema", settings, rid)


def check_cancel(cancel: pb.Cancel, settings: Settings) -> None:
    """Reject a Cancel without a usable request id."""
    check_request_id(cancel.request_id, settings)


def check_resume(resume: pb.Resume, settings: Settings) -> None:
    """Reject a Resume without a usable request id, token or position (a token that opens
    nothing is not_found, later: only its size is checked here)."""
    check_request_id(resume.request_id, settings)
    rid = resume.request_id
    if not resume.resume_token or len(resume.resume_token) > MAX_RESUME_TOKEN_CHARS:
        raise InvalidRequest(
            f"resumeToken must be a non-empty string of at most {MAX_RESUME_TOKEN_CHARS} "
            "characters",
            rid,
        )
    if len(resume.client_request_id) > settings.max_request_id_chars:
        raise InvalidRequest(
            f"clientRequestId is longer than {settings.max_request_id_chars} characters", rid
        )
    if resume.HasField("after_seq") and resume.after_seq < -1:
        raise InvalidRequest("afterSeq must be -1 or a position (0 or more)", rid)


def check_detach(detach: pb.Detach, settings: Settings) -> None:
    """Reject a Detach without a usable request id."""
    check_request_id(detach.request_id, settings)
