"""The script language: how the fake answers one request, and the ``#fake {...}`` directive.

A ``Script`` is a frozen set of knobs (status, delays, tokens, how the stream ends). It reads and
writes JSON (``from_json``/``to_json``), which is how other processes set it: over the control
API, on the command line, or per request with a last user message starting with ``#fake `` and a
JSON object whose keys override the script the request would otherwise get (``directive``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aistream.testing.fake_upstream.body import last_user_text

__all__ = ["DIRECTIVE", "ENDINGS", "Script", "ScriptFor", "directive", "ending"]

DIRECTIVE = "#fake "
"""A last user message starting with this, then a JSON object, overrides the script's keys."""

ENDINGS = ("reset_after", "close_after", "malformed_after", "error_event_after", "stall_after")
"""The knobs that end a stream early; on a tie the first listed wins."""

ScriptFor = Callable[[Any], "Script | None"]
"""Picks the script for a request body (parsed JSON), or ``None`` for the default."""


@dataclass(frozen=True, slots=True)
class Script:
    """How the fake answers one request; the defaults stream five tokens and stop normally."""

    status: int = 200
    """HTTP status; anything but 200 answers ``error_body`` as JSON instead of a stream."""
    error_body: bytes | Mapping[str, Any] | None = None
    """Body of a non-200 answer; ``None`` is an OpenAI-style ``{"error": {...}}`` object."""
    error_message: str | None = None
    """Message of the default error body and of the mid-stream error event."""
    retry_after: float | None = None
    """Seconds for the ``retry-after`` and ``retry-after-ms`` headers (useful with 429)."""
    location: str | None = None
    """``Location`` header of a non-200 answer (a redirect, with a 3xx status)."""
    headers_delay: float = 0.0
    """Seconds to wait before sending the status line and headers."""
    ttft: float = 0.0
    """Seconds to wait after the headers before the first event."""
    interval: float = 0.0
    """Seconds to wait between events; 0 writes as fast as the connection takes it."""
    tokens: int | None = None
    """Number of tokens; ``None`` is the number of words in ``text``, or 5 without ``text``."""
    text: str | None = None
    """Text whose words (with trailing spaces) are the tokens, cycled if ``tokens`` is larger;
    without it the tokens are ``"tok0 "``, ``"tok1 "``, ..."""
    finish_reason: str | None = "stop"
    """Finish reason of a complete stream (``"length"`` when the request's max_tokens cut it);
    ``None`` sends no finish reason at all, only ``[DONE]``."""
    stall_after: int | None = None
    """After this many tokens send nothing more and keep the connection open until the client
    closes it."""
    close_after: int | None = None
    """After this many tokens end the body cleanly with no finish reason and no ``[DONE]``."""
    reset_after: int | None = None
    """After this many tokens reset the TCP connection (RST)."""
    malformed_after: int | None = None
    """After this many tokens send a ``data:`` line that is not JSON, then end the body."""
    error_event_after: int | None = None
    """After this many tokens send ``data: {"error": {...}}``, then end the body."""
    usage: bool = True
    """Send the usage chunk when the request asks for it (``stream_options.include_usage``)."""
    honour_max_tokens: bool = True
    """Cut the stream at the request's ``max_tokens``; False plays an upstream that ignores it."""

    def __post_init__(self) -> None:
        """Reject values the fake cannot act on."""
        if not 200 <= self.status <= 599 or self.status in (204, 304):
            raise ValueError(f"status: unsupported HTTP status {self.status}")
        for name in ("headers_delay", "ttft", "interval"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must not be negative")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError("retry_after: must not be negative")
        for name in ("tokens", *ENDINGS):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name}: must not be negative")
        if self.text is not None and not self.text.split():
            raise ValueError("text: must contain at least one word")

    @classmethod
    def from_json(cls, data: Mapping[str, Any], base: Script | None = None) -> Script:
        """Build a script from a JSON object, its keys overriding ``base`` (default: defaults)."""
        if not isinstance(data, Mapping):
            raise TypeError(f"a script is a JSON object, not {type(data).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        changes: dict[str, Any] = {}
        for name, value in data.items():
            spec = known.get(name)
            if spec is None:
                raise ValueError(f"unknown script key {name!r}; known: {', '.join(known)}")
            changes[name] = _check_json_value(name, value, spec.default is None)
        return dataclasses.replace(base if base is not None else cls(), **changes)

    def to_json(self) -> dict[str, Any]:
        """Return the script as a JSON-compatible dict (``from_json`` reads it back)."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if isinstance(self.error_body, bytes):
            out["error_body"] = self.error_body.decode("utf-8", "replace")
        elif self.error_body is not None:
            out["error_body"] = dict(self.error_body)
        return out

    def token_texts(self) -> list[str]:
        """Return the texts of the tokens this script streams, in order."""
        if self.text is None:
            return [f"tok{i} " for i in range(5 if self.tokens is None else self.tokens)]
        words = re.findall(r"\S+\s*", self.text)
        words[0] = self.text[: len(self.text) - len(self.text.lstrip())] + words[0]
        count = len(words) if self.tokens is None else self.tokens
        if count > len(words) and not words[-1][-1].isspace():
            words[-1] += " "  # the text repeats: keep its last and first words apart
        return [words[i % len(words)] for i in range(count)]


def ending(script: Script, tokens: int) -> tuple[int, str] | None:
    """Return ``(after, knob)`` for the knob that ends a stream of ``tokens`` first, if any."""
    best: tuple[int, str] | None = None
    for name in ENDINGS:
        value = getattr(script, name)
        if value is not None and value <= tokens and (best is None or value < best[0]):
            best = (value, name)
    return best


def directive(body: Any) -> dict[str, Any] | None:
    """Return the ``#fake {...}`` overrides in the request's last user message, if any."""
    text = last_user_text(body)
    if text is None or not (text := text.lstrip()).startswith(DIRECTIVE):
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text[len(DIRECTIVE) :].lstrip())
    except ValueError as exc:
        raise ValueError(f"{DIRECTIVE.strip()} directive is not followed by JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{DIRECTIVE.strip()} directive must be followed by a JSON object")
    return value


def _check_json_value(name: str, value: Any, optional: bool) -> Any:
    """Check one JSON value for a script key, converting what JSON cannot express."""
    if value is None and (optional or name == "finish_reason"):
        return None
    if name == "error_body":
        if isinstance(value, str):
            return value.encode()
        if isinstance(value, dict):
            return value
        raise ValueError("error_body: must be a string or an object")
    if name in ("usage", "honour_max_tokens"):
        ok = isinstance(value, bool)
    elif name in ("status", "tokens", *ENDINGS):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif name in ("retry_after", "headers_delay", "ttft", "interval"):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(f"{name}: unexpected value {value!r}")
    return value
