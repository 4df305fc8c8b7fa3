"""Token authentication for the gRPC API: ``authorization: Bearer <token>`` metadata.

When ``grpc_token`` is set, every call except the health service must carry the token; others
end at once with UNAUTHENTICATED and a generic message. Comparison is constant-time.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

__all__ = ["TokenAuthInterceptor"]

log = logging.getLogger(__name__)

_OPEN_SERVICES = ("/grpc.health.v1.Health/",)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses calls that do not present the configured bearer token."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """Pass the call on if it is authorised, else answer it with UNAUTHENTICATED."""
        method: str = handler_call_details.method
        if method.startswith(_OPEN_SERVICES) or self._authorised(handler_call_details):
            return await continuation(handler_call_details)
        log.warning("unauthenticated call refused method=%s", method)
        handler = await continuation(handler_call_details)
        return _refusal(handler)

    def _authorised(self, details: grpc.HandlerCallDetails) -> bool:
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                presented = value.encode() if isinstance(value, str) else value
                if hmac.compare_digest(presented, self._expected):
                    return True
        return False


def _refusal(handler: grpc.RpcMethodHandler[Any, Any] | None) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as ``handler`` that aborts with UNAUTHENTICATED."""

    async def abort(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong credentials")

    if handler is None:
        return grpc.unary_unary_rpc_method_handler(abort)
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort, **kwargs)
    return grpc.unary_unary_rpc_method_handler(abort, **kwargs)
