"""The one table of error codes: schema enum → JSON code → gRPC status → retryable → close code.

Every place that needs to name a failure (the generator's upstream mapping, the bridge's frame
errors, the web client through the JSON ``code``) goes through this table, so a code means the
same thing on every hop::

    ErrorCode (proto)          JSON code            gRPC status          retryable  WS close
    ERROR_CODE_CANCELLED       cancelled            CANCELLED            no         -
    ERROR_CODE_TIMEOUT         timeout              DEADLINE_EXCEEDED    yes        -
    ERROR_CODE_UPSTREAM_ERROR  upstream_error       UNKNOWN              no         -
    ERROR_CODE_RATE_LIMITED    rate_limited         RESOURCE_EXHAUSTED   yes        -
    ERROR_CODE_INVALID_REQUEST invalid_request      INVALID_ARGUMENT     no         1008 (policy)
    ERROR_CODE_TOO_MANY_...    too_many_requests    RESOURCE_EXHAUSTED   yes        1013 (try again)
    ERROR_CODE_UNAVAILABLE     unavailable          UNAVAILABLE          yes        1012 (restart)
    ERROR_CODE_INTERNAL        internal             INTERNAL             no         1011 (internal)
    ERROR_CODE_SLOW_CONSUMER   slow_consumer        RESOURCE_EXHAUSTED   yes        1008 (policy)
    ERROR_CODE_UNAUTHENTICATED unauthenticated      UNAUTHENTICATED      no         1008 (policy)
    ERROR_CODE_INVALID_OUTPUT  invalid_output       UNKNOWN              yes        -
    ERROR_CODE_NOT_FOUND       not_found            NOT_FOUND            no         -

``retryable`` is the default; a specific failure may say otherwise (an upstream 5xx is retryable,
an upstream 400 is not, though both are ``upstream_error``): ``is_retryable`` is that rule, and
everything that reports a failure goes through it. The WebSocket close code is used when the
failure ends the whole connection rather than one request. The exceptions that carry these codes
are in ``aistream.errors``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

import grpc

from aistream.v1 import events_pb2 as pb

__all__ = [
    "CODES",
    "CloseCode",
    "Code",
    "CodeInfo",
    "error_event",
    "info",
    "is_retryable",
    "json_code",
]


class CloseCode(enum.IntEnum):
    """WebSocket close codes the bridge uses (RFC 6455 §7.4)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013


Code: TypeAlias = pb.ErrorCode
"""An ``aistream.v1.ErrorCode`` value (an int at run time; use it in annotations only)."""


@dataclass(frozen=True, slots=True)
class CodeInfo:
    """Everything one error code stands for on each hop."""

    code: Code
    json: str
    grpc_status: grpc.StatusCode
    retryable: bool
    close_code: CloseCode | None


def _row(
    code: Code, status: grpc.StatusCode, retryable: bool, close: CloseCode | None = None
) -> CodeInfo:
    name = pb.ErrorCode.Name(code).removeprefix("ERROR_CODE_").lower()
    return CodeInfo(code, name, status, retryable, close)


CODES: dict[Code, CodeInfo] = {
    row.code: row
    for row in (
        _row(pb.ERROR_CODE_CANCELLED, grpc.StatusCode.CANCELLED, False),
        _row(pb.ERROR_CODE_TIMEOUT, grpc.StatusCode.DEADLINE_EXCEEDED, True),
        _row(pb.ERROR_CODE_UPSTREAM_ERROR, grpc.StatusCode.UNKNOWN, False),
        _row(pb.ERROR_CODE_RATE_LIMITED, grpc.StatusCode.RESOURCE_EXHAUSTED, True),
        _row(
            pb.ERROR_CODE_INVALID_REQUEST,
            grpc.StatusCode.INVALID_ARGUMENT,
            False,
            CloseCode.POLICY_VIOLATION,
        ),
        _row(
            pb.ERROR_CODE_TOO_MANY_REQUESTS,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            True,
            CloseCode.TRY_AGAIN_LATER,
        ),
        _row(
            pb.ERROR_CODE_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, True, CloseCode.SERVICE_RESTART
        ),
        _row(pb.ERROR_CODE_INTERNAL, grpc.StatusCode.INTERNAL, False, CloseCode.INTERNAL_ERROR),
        _row(
            pb.ERROR_CODE_SLOW_CONSUMER,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            True,
            CloseCode.POLICY_VIOLATION,
        ),
        _row(
            pb.ERROR_CODE_UNAUTHENTICATED,
            grpc.StatusCode.UNAUTHENTICATED,
            False,
            CloseCode.POLICY_VIOLATION,
        ),
        _row(pb.ERROR_CODE_INVALID_OUTPUT, grpc.StatusCode.UNKNOWN, True),
        _row(pb.ERROR_CODE_NOT_FOUND, grpc.StatusCode.NOT_FOUND, False),
    )
}


def info(code: Code) -> CodeInfo:
    """The table row of ``code``."""
    return CODES[code]


def json_code(code: Code) -> str:
    """The JSON ``code`` string of ``code`` (``ERROR_CODE_RATE_LIMITED`` → ``"rate_limited"``)."""
    return CODES[code].json


def is_retryable(code: Code, explicit: bool | None = None) -> bool:
    """Whether a failure with ``code`` may be retried: ``explicit`` if the failure says, else the
    code's row in the table."""
    return CODES[code].retryable if explicit is None else explicit


def error_event(
    code: Code,
    message: str,
    request_id: str = "",
    *,
    retryable: bool | None = None,
    retry_after_ms: int | None = None,
) -> pb.ServerEvent:
    """An Error ServerEvent (``retryable`` as ``is_retryable`` decides; ``retry_after_ms``: the
    hint of a refusal that sheds load)."""
    error = pb.Error(
        request_id=request_id,
        code=code,
        message=message,
        retryable=is_retryable(code, retryable),
    )
    if retry_after_ms is not None:
        error.retry_after_ms = retry_after_ms
    return pb.ServerEvent(error=error)
