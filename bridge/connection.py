"""One browser connection: WebSocket frames in and out, one gRPC stream to the generator.

Reading side: each text frame is decoded by ``translate`` and validated; a bad frame is answered in
place with ``ai:error`` (``invalid_request``) and nothing else is touched. A Generate for an id
already in flight is dropped (idempotent retries); a Cancel for an id not in flight is a no-op.

gRPC side: the stream is opened lazily, on the first Generate, so an idle connection costs no
generator resources. Events from the generator are relayed in order; the bridge's own
``Lifecycle`` refuses to relay anything out of order. If the stream fails (the generator died or
is unreachable), every id in flight on it gets ``ai:error`` ``unavailable`` (retryable) and the
next Generate opens a new stream; the channel reconnects with backoff on its own.

Writing side: frames go through a bounded queue written to the socket by one sender task, so a
client that stops reading stops the relay (and, through gRPC flow control, the generator) instead
of growing a buffer. When the socket closes or its pings go unanswered, the gRPC call is cancelled,
which makes the generator close every upstream request of this connection.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import grpc
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from aistream.lifecycle import Lifecycle, LifecycleViolation
from aistream.settings import Settings
from aistream.v1 import events_pb2 as pb
from aistream.v1 import generator_pb2_grpc
from aistream.validation import InvalidRequest, check_cancel, check_generate
from bridge import translate

__all__ = ["Connection"]

log = logging.getLogger(__name__)

_Call = grpc.aio.StreamStreamCall[pb.ClientEvent, pb.ServerEvent]


class Connection:
    """The bridge's state for one WebSocket connection."""

    def __init__(
        self,
        websocket: ServerConnection,
        stub: generator_pb2_grpc.GeneratorStub,
        settings: Settings,
    ) -> None:
        self.websocket = websocket
        self.id = uuid.uuid4().hex[:8]
        self._stub = stub
        self._settings = settings
        self._lifecycle = Lifecycle()
        self._in_flight: dict[str, _Call] = {}  # request id → the call it was sent on
        self._call: _Call | None = None
        self._relays: set[asyncio.Task[None]] = set()
        self._outgoing: asyncio.Queue[str] = asyncio.Queue(settings.ws_send_queue)

    async def serve(self) -> None:
        """Run the connection until the socket closes, then cancel everything it started."""
        sender = asyncio.create_task(self._send_frames(), name=f"ws sender {self.id}")
        try:
            async for message in self.websocket:
                await self._on_frame(message)
        except ConnectionClosed:
            pass
        finally:
            if self._call is not None:
                self._call.cancel()  # the generator closes this connection's upstreams
            for task in (sender, *self._relays):
                task.cancel()
            await asyncio.gather(sender, *self._relays, return_exceptions=True)
            if self._in_flight:
                log.info(
                    "connection %s closed with %d generations in flight: cancelled",
                    self.id,
                    len(self._in_flight),
                )

    # --- client → generator ---------------------------------------------------------------------

    async def _on_frame(self, message: str | bytes) -> None:
        try:
            event = translate.decode_client_frame(message)
            kind = event.WhichOneof("event")
            if kind == "generate":
                check_generate(event.generate, self._settings)
                request_id = event.generate.request_id
                if request_id in self._in_flight:
                    log.info(
                        "duplicate generate ignored request_id=%s conn=%s", request_id, self.id
                    )
                    return
            else:
                check_cancel(event.cancel, self._settings)
                request_id = event.cancel.request_id
                if request_id not in self._in_flight:
                    return  # unknown or finished: a harmless no-op
        except (translate.FrameError, InvalidRequest) as exc:
            log.info("bad frame conn=%s request_id=%s: %s", self.id, exc.request_id, exc)
            await self._outgoing.put(
                translate.error_frame(pb.ERROR_CODE_INVALID_REQUEST, str(exc), exc.request_id)
            )
            return
        call = self._ensure_call()
        if kind == "generate":
            self._in_flight[request_id] = call
        try:
            await call.write(event)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            # The relay task sees the call end too and answers every id in flight on it.
            log.debug("write to generator failed conn=%s: %r", self.id, exc)

    def _ensure_call(self) -> _Call:
        if self._call is None or self._call.done():
            call: _Call = self._stub.Stream()
            self._call = call
            relay = asyncio.create_task(self._relay(call), name=f"relay {self.id}")
            self._relays.add(relay)
            relay.add_done_callback(self._relays.discard)
        return self._call

    # --- generator → client ---------------------------------------------------------------------

    async def _relay(self, call: _Call) -> None:
        """Relay one gRPC call's events until it ends; then fail whatever was left in flight."""
        reason = "the generator closed the stream"
        try:
            async for event in call:
                await self._forward(event)
        except grpc.aio.AioRpcError as exc:
            reason = f"{exc.code().name}"
            log.warning("generator stream failed conn=%s: %s", self.id, exc.code().name)
        finally:
            if self._call is call:
                self._call = None
        lost = [rid for rid, c in self._in_flight.items() if c is call]
        for request_id in lost:
            del self._in_flight[request_id]
            if self._lifecycle.is_running(request_id):
                self._lifecycle.observe("error", request_id)
            await self._outgoing.put(
                translate.error_frame(
                    pb.ERROR_CODE_UNAVAILABLE, "the generator is unavailable", request_id
                )
            )
        if lost:
            log.info("%d generations lost with the stream conn=%s (%s)", len(lost), self.id, reason)

    async def _forward(self, event: pb.ServerEvent) -> None:
        kind = event.WhichOneof("event")
        if kind is None:
            return
        body = getattr(event, kind)
        request_id: str = body.request_id
        try:
            if kind == "token":
                self._lifecycle.observe("token", request_id, body.seq, body.count)
            else:
                self._lifecycle.observe(kind, request_id)
        except LifecycleViolation as exc:
            log.error("dropped out-of-order event conn=%s: %s", self.id, exc)
            return
        if kind in ("done", "error"):
            self._in_flight.pop(request_id, None)
        await self._outgoing.put(translate.encode_server_event(event))

    async def _send_frames(self) -> None:
        while True:
            frame = await self._outgoing.get()
            try:
                await self.websocket.send(frame)
            except ConnectionClosed:
                return
