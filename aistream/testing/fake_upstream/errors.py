"""The JSON error bodies the fake answers: a script's error status, or its own refusals.

Both are OpenAI-style ``{"error": {"message", "type", ...}}`` objects, so an SDK raises its
typed error for them with the message in it.
"""

from __future__ import annotations

import orjson

from aistream.testing.fake_upstream.script import Script

__all__ = ["refusal_body", "scripted_error_body"]

_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
"""Error type and code of the default body for a scripted status."""


def scripted_error_body(script: Script) -> bytes:
    """Return the body of a scripted non-200 answer: ``error_body``, or one for its status."""
    if isinstance(script.error_body, bytes):
        return script.error_body
    if script.error_body is not None:
        return orjson.dumps(dict(script.error_body))
    fallback = "server_error" if script.status >= 500 else "invalid_request_error"
    kind, code = _KINDS.get(script.status, (fallback, None))
    message = script.error_message or f"fake upstream: scripted status {script.status}"
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


def refusal_body(message: str, kind: str = "invalid_request_error") -> bytes:
    """Return the body of an answer no script asked for (unknown route, bad body, bad request)."""
    return orjson.dumps({"error": {"message": message, "type": kind}})
