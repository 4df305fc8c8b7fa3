"""Every exception aistream raises on purpose, in one tree::

    AistreamError                 the root
    ├── RequestError              one request is answered with an error: code, request_id, retryable
    │   ├── InvalidRequest        it cannot be served as sent (invalid_request)
    │   │   └── InvalidFrame      the WebSocket frame is not a ClientEvent at all
    │   └── Refused               it is well formed but not served now (too_many_requests, …)
    ├── UpstreamFailure           the model upstream could not produce the answer: code, retryable
    │   └── InvalidOutput         it finished, but what it handed over is unusable (invalid_output)
    ├── SettingsError             a setting has a value that cannot be used
    └── LifecycleViolation        an event broke start → token* → one terminal for its request id

A request error or an upstream failure carries one of the codes of ``aistream.codes``, which says
what it means on every hop; ``retryable`` is the code's default from that table unless the error
says otherwise (``codes.is_retryable``). Their messages are safe to send to the client: upstream
text never goes into them (it is logged, with the request id). ``InvalidRequest`` and
``SettingsError`` also derive from ``ValueError``.
"""

from __future__ import annotations

from aistream import codes
from aistream.v1 import events_pb2 as pb

__all__ = [
    "AistreamError",
    "InvalidFrame",
    "InvalidOutput",
    "InvalidRequest",
    "LifecycleViolation",
    "Refused",
    "RequestError",
    "SettingsError",
    "UpstreamFailure",
]


class AistreamError(Exception):
    """The root of every exception aistream raises on purpose."""


class RequestError(AistreamError):
    """One request is answered with an error event instead of being served."""

    def __init__(
        self,
        code: codes.Code,
        message: str,
        request_id: str = "",
        *,
        retryable: bool | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retryable = codes.is_retryable(code, retryable)
        self.retry_after_ms = retry_after_ms
        """When trying again may succeed (a refusal that sheds load), or None."""

    def event(self) -> pb.ServerEvent:
        """The Error event that answers the request (with its retry hint, if any)."""
        return codes.error_event(
            self.code,
            self.message,
            self.request_id,
            retryable=self.retryable,
            retry_after_ms=self.retry_after_ms,
        )


class InvalidRequest(RequestError, ValueError):
    """A request that cannot be served as sent; the message names the offending JSON field."""

    def __init__(self, message: str, request_id: str = "") -> None:
        super().__init__(pb.ERROR_CODE_INVALID_REQUEST, message, request_id)


class InvalidFrame(InvalidRequest):
    """A WebSocket frame that cannot be turned into a ClientEvent (not JSON, wrong types, …)."""


class Refused(RequestError):
    """A well-formed request that is not served now (over a limit, shutting down, shedding load:
    then ``retry_after_ms`` says when to try again)."""


class UpstreamFailure(AistreamError):
    """The upstream could not produce the completion; ``message`` is safe to send to clients."""

    def __init__(self, code: codes.Code, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = codes.is_retryable(code, retryable)


class InvalidOutput(UpstreamFailure):
    """The model finished, but its structured output or a tool call's arguments are not valid
    JSON, or break the schema (``invalid_output``, retryable: another try may do better)."""

    def __init__(self, message: str) -> None:
        super().__init__(pb.ERROR_CODE_INVALID_OUTPUT, message)


class SettingsError(AistreamError, ValueError):
    """A setting has a value that cannot be used; the message names the setting."""


class LifecycleViolation(AistreamError):
    """An event broke the order start → token* → one terminal for its request id."""
