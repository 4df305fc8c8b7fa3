"""The bridge's server: WebSocket at ``/ws``, the built web client at ``/``, health at ``/healthz``.

One port serves both the page and its socket, so ``aistream up`` prints one URL that works. One
gRPC channel to the generator is shared by all connections (HTTP/2 multiplexes their streams);
each connection opens its own stream on it when it first generates.
"""

from __future__ import annotations

import http
import logging
import mimetypes
from pathlib import Path

import grpc
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from aistream.settings import Settings
from aistream.v1 import generator_pb2_grpc
from bridge.connection import Connection

__all__ = ["WS_PATH", "BridgeServer", "default_static_dir"]

log = logging.getLogger(__name__)

WS_PATH = "/ws"

_CHANNEL_OPTIONS = [
    # Come back quickly when the generator restarts (gRPC's default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]


def default_static_dir() -> Path:
    """``webclient/dist`` of this checkout."""
    return Path(__file__).resolve().parent.parent / "webclient" / "dist"


def _response(status: http.HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers()
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body))
    headers["Cache-Control"] = "no-cache"
    headers["X-Content-Type-Options"] = "nosniff"
    return Response(status.value, status.phrase, headers, body)


def static_response(root: Path | None, path: str) -> Response:
    """The file at URL ``path`` under ``root`` (``/`` → ``index.html``), or 404; stays in root."""
    if root is None or not root.is_dir():
        body = b"aistream bridge: the web client is not built (run: npm run build in webclient/)\n"
        return _response(http.HTTPStatus.NOT_FOUND, body, "text/plain; charset=utf-8")
    relative = path.split("?", 1)[0].lstrip("/") or "index.html"
    target = (root / relative).resolve()
    base = root.resolve()
    if (base not in target.parents and target != base) or not target.is_file():
        return _response(http.HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
    content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if content_type.startswith("text/") or content_type.endswith("javascript"):
        content_type += "; charset=utf-8"
    return _response(http.HTTPStatus.OK, target.read_bytes(), content_type)


class BridgeServer:
    """A running bridge: WebSocket server plus the gRPC channel to the generator."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.static_dir = settings.static_dir or default_static_dir()
        self._channel = grpc.aio.insecure_channel(
            settings.generator_target, options=_CHANNEL_OPTIONS
        )
        self._stub = generator_pb2_grpc.GeneratorStub(self._channel)
        self._server: Server | None = None
        self.connections: set[Connection] = set()
        self.port = 0

    async def start(self) -> int:
        """Bind and start serving; returns the bound port."""
        s = self.settings
        self._server = await serve(
            self._handle,
            s.bridge_host,
            s.bridge_port,
            process_request=self._process_request,
            compression="deflate" if s.ws_compression else None,
            max_size=s.ws_max_size,
            ping_interval=s.ws_ping_interval,
            ping_timeout=s.ws_ping_timeout,
            close_timeout=s.ws_close_timeout,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            "bridge listening on %s:%d generator=%s", s.bridge_host, self.port, s.generator_target
        )
        return self.port

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == WS_PATH:
            return None  # go on with the WebSocket handshake
        if path == "/healthz":
            return _response(http.HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
        return static_response(self.static_dir, request.path)

    async def _handle(self, websocket: ServerConnection) -> None:
        connection = Connection(websocket, self._stub, self.settings)
        self.connections.add(connection)
        log.info("connection %s opened from %s", connection.id, websocket.remote_address)
        try:
            await connection.serve()
        finally:
            self.connections.discard(connection)
            log.info("connection %s closed", connection.id)

    async def stop(self) -> None:
        """Close every socket (1001 going away), cancel their streams, close the channel."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self._channel.close(None)
        log.info("bridge stopped")
