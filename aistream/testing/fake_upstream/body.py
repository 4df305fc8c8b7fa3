"""What the fake reads from a chat-completions request body: messages, model, limits, options.

A body is parsed JSON of any shape; every reader here tolerates what it does not expect and
falls back to what a missing field means.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DEFAULT_MODEL",
    "last_user_text",
    "max_tokens",
    "message_text",
    "messages",
    "model",
    "prompt_tokens",
    "wants_usage",
]

DEFAULT_MODEL = "fake-model"
"""The model a stream names when the request names none."""


def message_text(content: Any) -> str:
    """Return the text of a message's content (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = (p.get("text") for p in content if isinstance(p, dict))
        return "\n".join(t for t in texts if isinstance(t, str))
    return ""


def messages(body: Any) -> list[dict[str, Any]]:
    """Return the request's messages that are JSON objects."""
    found = body.get("messages") if isinstance(body, dict) else None
    return [m for m in found if isinstance(m, dict)] if isinstance(found, list) else []


def last_user_text(body: Any) -> str | None:
    """Return the text of the last user message (of the last message if none is a user's)."""
    every = messages(body)
    users = [m for m in every if m.get("role") == "user"] or every
    return message_text(users[-1].get("content")) if users else None


def prompt_tokens(body: Any) -> int:
    """Count the prompt's tokens as the whitespace-separated words of every message."""
    return sum(len(message_text(m.get("content")).split()) for m in messages(body))


def model(body: dict[str, Any]) -> str:
    """Return the model the request names, or ``DEFAULT_MODEL``."""
    name = body.get("model")
    return name if isinstance(name, str) else DEFAULT_MODEL


def max_tokens(body: dict[str, Any]) -> int | None:
    """Return the request's token limit (``max_completion_tokens``, else ``max_tokens``)."""
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    return limit if isinstance(limit, int) and limit >= 0 else None


def wants_usage(body: dict[str, Any]) -> bool:
    """Whether the request asks for the usage chunk (``stream_options.include_usage``)."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True
