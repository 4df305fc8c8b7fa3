"""Log lines: plain text (the default) or JSON lines (``log_format``), set up by the entry point.

Our messages are short and lowercase, with their facts as ``key=value`` fields and any free text
after a colon::

    end request_id=r1 model=gpt-4o-mini outcome=error code=timeout ... : no token for 30 s

Text is that line after time, level and logger. JSON (``AISTREAM_LOG_FORMAT=json``, for log
pipelines) is one object per line: ``time`` (UTC, RFC 3339), ``level``, ``logger``, ``message``
(the whole text line's message), and every ``key=value`` field of the message as a field of its
own — the value's own type when the message formats it from an argument (``tokens=%d`` gives a
number), a string when the value is written out in the message; ``-`` (nothing to say) is
``null``. A traceback goes in ``exc_info``. Field names never replace the four above.

Only the entry point (``aistream.cli``) calls ``configure``; every module logs through
``logging.getLogger(__name__)`` with lazy ``%s`` arguments.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import orjson

__all__ = ["TEXT_FORMAT", "JsonFormatter", "LogFormat", "Tally", "configure", "fields"]

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The text line: time, level, logger, message."""

_RESERVED = frozenset(("time", "level", "logger", "message", "exc_info", "stack_info"))
# In a message's format string: "%%", a conversion (after "key=" or not), or a literal key=value.
_TOKEN = re.compile(
    r"%%"
    r"|(?:\b(\w+)=)?%(?:\(\w+\))?[-#0 +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[diouxXeEfFgGcrsa]"
    r"|\b(\w+)=([^\s%:,]+)"
)
_SCALARS = (str, int, float, bool)


@functools.lru_cache(maxsize=1024)
def _plan(msg: str) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    """A format string's fields: (key, argument index) pairs and (key, literal value) pairs."""
    from_args: list[tuple[str, int]] = []
    literal: list[tuple[str, str]] = []
    index = 0
    for match in _TOKEN.finditer(msg):
        text = match.group(0)
        if text == "%%":
            continue
        key, lit_key, lit_value = match.groups()
        if lit_key is not None:
            literal.append((lit_key, lit_value))
            continue
        stars = text.count("*")  # a "*" width or precision takes an argument first
        if key is not None:
            from_args.append((key, index + stars))
        index += 1 + stars
    return tuple(from_args), tuple(literal)


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``key=value`` fields of a record's message (module doc)."""
    msg = record.msg
    if not isinstance(msg, str):
        return {}
    from_args, literal = _plan(msg)
    out: dict[str, Any] = {key: (None if value == "-" else value) for key, value in literal}
    args = record.args
    if from_args and isinstance(args, tuple):
        for key, index in from_args:
            if index < len(args):
                value = args[index]
                if value is None or value == "-":
                    out[key] = None
                elif isinstance(value, _SCALARS):
                    out[key] = value
                else:
                    out[key] = str(value)
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per record (module doc)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        message = record.getMessage()
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for key, value in fields(record).items():
            if key not in _RESERVED:
                line[key] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


def configure(level: str, log_format: LogFormat = "text", stream: TextIO | None = None) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr), one line each, as
    text or JSON. Replaces the root logger's handlers: the entry point's call, once."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


class Tally:
    """Occurrences counted and logged as one line at most every ``every`` seconds (refusals
    under overload come by the thousand a second: a line each would spend the CPU the
    shedding saves, and fill the logs)::

        refused = Tally(log, "refused %d generates in %.0f s (the last: %s)")
        refused.add(reason)        # logs now and then, with the count and the last reason
    """

    __slots__ = ("_count", "_every", "_last", "_log", "_message", "_since")

    def __init__(self, log: logging.Logger, message: str, every: float = 10.0) -> None:
        self._log = log
        self._message = message
        self._every = every
        self._count = 0
        self._since = -math.inf
        self._last = ""

    def add(self, detail: str) -> None:
        """One more occurrence (``detail``: what the line says of the last one)."""
        self._count += 1
        self._last = detail
        now = time.monotonic()
        if now - self._since >= self._every:
            elapsed = now - self._since if self._since > -math.inf else 0.0
            self._log.warning(self._message, self._count, elapsed, detail)
            self._count = 0
            self._since = now
