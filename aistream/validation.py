"""Request validation shared by the bridge and the generator. Pure, no I/O.

The generator is the authority (backend services call it directly); the bridge runs the same
checks first so a bad browser frame is answered without touching the gRPC stream. Every failure is
an ``InvalidRequest`` (``aistream.errors``) whose message is safe to send back and names the
offending field by its JSON name.
"""

from __future__ import annotations

import math

from aistream.errors import InvalidRequest
from aistream.settings import Settings
from aistream.v1 import events_pb2 as pb

__all__ = ["InvalidRequest", "check_cancel", "check_generate", "check_request_id"]


def check_request_id(request_id: str, settings: Settings) -> None:
    """Reject an empty or over-long request id."""
    if not request_id:
        raise InvalidRequest("requestId must be a non-empty string")
    if len(request_id) > settings.max_request_id_chars:
        raise InvalidRequest(f"requestId is longer than {settings.max_request_id_chars} characters")


def check_generate(generate: pb.Generate, settings: Settings) -> None:
    """Reject a Generate that breaks a limit; raises InvalidRequest carrying its request id."""
    check_request_id(generate.request_id, settings)
    rid = generate.request_id
    if len(generate.prompt) > settings.max_prompt_chars:
        raise InvalidRequest(f"prompt is longer than {settings.max_prompt_chars} characters", rid)
    if len(generate.messages) > settings.max_messages:
        raise InvalidRequest(f"messages has more than {settings.max_messages} entries", rid)
    total = len(generate.prompt)
    for i, message in enumerate(generate.messages):
        if message.role == pb.ROLE_UNSPECIFIED or message.role not in pb.Role.values():
            raise InvalidRequest(f"messages[{i}].role must be one of system, user, assistant", rid)
        total += len(message.content)
    if total > settings.max_history_chars:
        raise InvalidRequest(
            f"prompt and messages are longer than {settings.max_history_chars} characters", rid
        )
    if not generate.prompt and not any(m.content for m in generate.messages):
        raise InvalidRequest("prompt or messages must be non-empty", rid)
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


def check_cancel(cancel: pb.Cancel, settings: Settings) -> None:
    """Reject a Cancel without a usable request id."""
    check_request_id(cancel.request_id, settings)
