"""The bridge's server: WebSocket at ``/ws`` (and ``/``), the web client at ``/``, ``/healthz``,
``/metrics`` (``aistream.metrics``; open like ``/healthz``).

One port serves both the page and its socket, so ``aistream up`` prints one URL that works. One
gRPC channel to the generator, and on it ``generator_streams`` shared streams
(``aistream.bridge.link``), carry the generations of every connection.
"""

from __future__ import annotations

import asyncio
import http
import importlib.resources
import json
import logging
import mimetypes
import socket
from collections.abc import Awaitable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from aistream.bridge.access import TOKEN_SUBPROTOCOL_PREFIX, HostNames, check_handshake
from aistream.bridge.connection import Connection
from aistream.bridge.link import GeneratorLink
from aistream.bridge.shares import ClientShares, client_key_of
from aistream.bridge.websocket import BridgeSocket
from aistream.headroom import Headroom
from aistream.metrics import CONTENT_TYPE, BridgeMetrics
from aistream.settings import GRPC_MAX_MESSAGE_BYTES, Settings
from aistream.v1 import generator_pb2_grpc

__all__ = ["WS_PATH", "BridgeServer", "default_static_dir"]

if TYPE_CHECKING:
    from aistream.bridge.redis_follow import RedisFollows

log = logging.getLogger(__name__)

WS_PATH = "/ws"
SUBPROTOCOL = "aistream.v1"
"""Chosen when a client offers it (optional: clients that offer none get none)."""

_CHANNEL_OPTIONS = [
    # Come back quickly when the generator restarts (gRPC's default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # Deliberate message limits, the same as the generator's (aistream/settings.py).
    ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
    # Several generators (a list or a DNS name): each new call goes to the next ready one
    # (the default, pick_first, would send every call to the first). A call stays where it
    # opened, so generator_streams ≥ the generators spreads the bridge over all of them.
    ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
]


def generator_channel(settings: Settings) -> grpc.aio.Channel:
    """The channel to the generator: TLS when ``generator_tls_ca`` is set, plain otherwise."""
    if settings.generator_tls_ca is None:
        return grpc.aio.insecure_channel(settings.generator_target, options=_CHANNEL_OPTIONS)
    key = cert = None
    if settings.generator_tls_cert is not None and settings.generator_tls_key is not None:
        cert = settings.generator_tls_cert.read_bytes()
        key = settings.generator_tls_key.read_bytes()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=settings.generator_tls_ca.read_bytes(),
        private_key=key,
        certificate_chain=cert,
    )
    return grpc.aio.secure_channel(settings.generator_target, credentials, options=_CHANNEL_OPTIONS)


def _select_subprotocol(
    connection: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    """Pick ``aistream.v1`` if offered, else echo a token subprotocol (browsers require an
    answer when they offered any)."""
    if SUBPROTOCOL in offered:
        return Subprotocol(SUBPROTOCOL)
    for protocol in offered:
        if protocol.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            return protocol
    return None


def default_static_dir() -> Path:
    """The built web client: packed in the installed wheel (``aistream/webclient/``, see
    setup.py), else ``webclient/dist`` of the checkout this module runs from."""
    packaged = Path(str(importlib.resources.files("aistream"))) / "webclient"
    if (packaged / "index.html").is_file():
        return packaged
    return Path(__file__).resolve().parent.parent / "webclient" / "dist"


def malformed(request: Request) -> str | None:
    """Why a request is the client's error before anything looks at it, or None: a control
    character in its target, not exactly one ``Host``, more than one ``Origin``."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in request.path):
        return "control character in the request target"
    if len(request.headers.get_all("Host")) != 1:
        return "a request needs exactly one Host header"
    if len(request.headers.get_all("Origin")) > 1:
        return "more than one Origin header"
    return None


def _client_key(websocket: ServerConnection, settings: Settings) -> str:
    """Who the client on ``websocket`` is, for its share (``client_key``)."""
    peer = websocket.remote_address
    address = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
    request = websocket.request
    if request is None:
        return address
    headers = request.headers
    return client_key_of(
        settings.client_key, address, lambda name: ", ".join(headers.get_all(name)) or None
    )


def _is_upgrade(request: Request) -> bool:
    """The request asks for a WebSocket (rather than a page)."""
    return any(
        token.strip().lower() == "websocket"
        for value in request.headers.get_all("Upgrade")
        for token in value.split(",")
    )


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
    try:
        target = (root / relative).resolve()
    except (OSError, ValueError):  # a name the file system cannot hold
        return _response(http.HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
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
        self._channel = generator_channel(settings)
        metadata: tuple[tuple[str, str], ...] = ()
        if settings.grpc_token is not None:
            metadata = (("authorization", f"Bearer {settings.grpc_token}"),)
        self.link = GeneratorLink(
            generator_pb2_grpc.GeneratorStub(self._channel), metadata, settings.generator_streams
        )
        self._server: Server | None = None
        self.own_hosts = HostNames.of(
            settings.bridge_host, settings.public_hosts, machine_names=(socket.gethostname(),)
        )
        """The hosts a browser's handshake may name (DNS rebinding: bridge/access.py)."""
        self.shares = ClientShares(settings.max_generations_per_client)
        """Generations each client holds over all its connections (limit 0: no share), and
        all of them together: the load the headroom weighs."""
        self.headroom = Headroom.of(settings)
        """The bridge process's loop lag: a saturated loop sheds new generations."""
        self._on_closed = self._closed  # one bound method for every connection
        self.connections: set[Connection] = set()
        self.metrics = BridgeMetrics(
            settings,
            lambda: len(self.connections),
            lambda: sum(connection.in_flight for connection in self.connections),
        )
        """The process's metrics, served at ``/metrics``."""
        self.metrics.watch(self.headroom)
        self.follows: RedisFollows | None = None
        """Resumes through Redis (``redis_url``): any generator's resumable generations."""
        if settings.redis_url is not None:
            # (imported only then: redis-py, and what it imports, stay out of a bridge without)
            from aistream.bridge.redis_follow import RedisFollows

            self.follows = RedisFollows(settings)
        self.port = 0

    async def start(self) -> int:
        """Bind and start serving; returns the bound port."""
        s = self.settings
        self.headroom.start(lambda: self.shares.total)
        if self.follows is not None:
            await self.follows.start()
        self._server = await serve(
            self._handle,
            s.bridge_host,
            s.bridge_port,
            process_request=self._process_request,
            create_connection=BridgeSocket,
            select_subprotocol=_select_subprotocol,
            compression="deflate" if s.ws_compression else None,
            max_size=s.ws_max_size,
            ping_interval=s.ws_ping_interval,
            ping_timeout=s.ws_ping_timeout,
            close_timeout=s.ws_close_timeout,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        # Connect to the generator now, not on the first browser's first generate.
        self._channel.get_state(try_to_connect=True)
        log.info(
            "bridge listening on %s:%d generator=%s", s.bridge_host, self.port, s.generator_target
        )
        return self.port

    def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | Awaitable[Response] | None:
        problem = malformed(request)
        if problem is not None:
            # The client's error: a 400 saying what, logged without a traceback.
            log.info("bad request from %s: %s", connection.remote_address, problem)
            return _response(
                http.HTTPStatus.BAD_REQUEST, f"{problem}\n".encode(), "text/plain; charset=utf-8"
            )
        path = request.path.split("?", 1)[0]
        if path == WS_PATH or (path == "/" and _is_upgrade(request)):
            # A client written to the design this product grew out of opens the root path.
            return self._admit(request)
        if path == "/healthz":
            return _response(http.HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
        if path == "/metrics":  # (open as /healthz is: docs/operations.md, "Metrics")
            return self._metrics_page()
        return static_response(self.static_dir, request.path)

    async def _metrics_page(self) -> Response:
        """``/metrics``: the bridge's metrics (and its generator's, when configured)."""
        return _response(http.HTTPStatus.OK, await self.metrics.render(), CONTENT_TYPE)

    def _admit(self, request: Request) -> Response | None:
        """None lets the WebSocket handshake go on; a Response refuses it."""
        s = self.settings
        headers = request.headers
        verdict = check_handshake(
            path=request.path,
            origin=headers.get("Origin"),
            host=headers.get("Host"),
            cookie="; ".join(headers.get_all("Cookie")) or None,
            subprotocols=[
                p.strip()
                for value in headers.get_all("Sec-WebSocket-Protocol")
                for p in value.split(",")
            ],
            allowed_origins=s.allowed_origins,
            auth_token=s.auth_token,
            own_hosts=self.own_hosts,
        )
        if not verdict.allowed:
            log.warning(
                "handshake refused (%d %s) origin=%s",
                verdict.status,
                verdict.reason,
                headers.get("Origin"),
            )
            self.metrics.handshake_refused(verdict.status)
            status = http.HTTPStatus(verdict.status)
            return _response(status, f"{verdict.reason}\n".encode(), "text/plain; charset=utf-8")
        if len(self.connections) >= s.max_connections:
            log.warning("handshake refused: %d connections open", len(self.connections))
            self.metrics.handshake_refused(http.HTTPStatus.SERVICE_UNAVAILABLE)
            return _response(
                http.HTTPStatus.SERVICE_UNAVAILABLE,
                b"too many connections\n",
                "text/plain; charset=utf-8",
            )
        return None

    def _handle(self, websocket: ServerConnection) -> Coroutine[Any, Any, None]:
        """websockets' handler for one socket: set it up and hand over ``Connection.serve``
        itself (not a coroutine awaiting it: one suspended frame fewer per connection)."""
        s = self.settings
        send_buffer = s.ws_socket_send_buffer
        sock = websocket.transport.get_extra_info("socket")
        if sock is not None and send_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        assert isinstance(websocket, BridgeSocket)  # (serve's create_connection)
        connection = Connection(
            websocket,
            self.link.assign(),
            self.settings,
            self.shares,
            _client_key(websocket, s),
            self.metrics,
            self.headroom,
            self.follows,
        )
        websocket.served = connection  # (told of each frame as it is read)
        self.connections.add(connection)
        self.metrics.connection_opened()
        log.info("connection %s opened from %s", connection.id, websocket.remote_address)
        return connection.serve(self._on_closed)

    def _closed(self, connection: Connection) -> None:
        connection.websocket.served = None  # (no reference cycle left for the collector)
        self.connections.discard(connection)
        log.info("connection %s closed", connection.id)

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Graceful shutdown: stop accepting, let in-flight generations finish for
        ``drain_timeout`` s (default: settings), end the rest with a retryable ``unavailable``,
        close every socket with 1012 (service restart), then close the gRPC channel."""
        timeout = self.settings.drain_timeout if drain_timeout is None else drain_timeout
        if self._server is not None:
            self._server.close(close_connections=False)
            await asyncio.gather(*(c.shutdown(timeout) for c in list(self.connections)))
            await self._server.wait_closed()
        self.headroom.stop()
        if self.follows is not None:
            await self.follows.close()
        await self.link.close()
        await self._channel.close(None)
        log.info("bridge stopped")
