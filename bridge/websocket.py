"""The bridge's WebSocket: websockets' server connection, and what the bridge needs of it
beyond ``recv`` and ``send``: to hear of a frame in the very turn of the event loop that reads
it, and to write one at once.

Control before data, on the socket: the event loop runs one turn of callbacks after another,
and under load a turn is all the token traffic that came in since the last. A frame handed to
``recv`` is acted on a turn later (the handler task is woken), and a frame put in the outbox is
written a turn later (the sender task is woken): behind a whole turn of tokens each time. So a
whole text frame is given to ``Connection.on_frame`` as it is parsed (when no earlier frame
waits for ``recv``: order is kept), a close frame cancels at once, and an event for a socket
with nothing waiting goes out in the same turn (``send_now``) — a cancel reaches the generator,
and a refusal the client, without waiting for another turn of anyone's tokens.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import Event, State

if TYPE_CHECKING:
    from aistream.bridge.connection import Connection

__all__ = ["BridgeSocket"]

log = logging.getLogger(__name__)


class BridgeSocket(ServerConnection):
    """websockets' server connection, telling the bridge of what the client sends in the turn
    that reads it, and writing the bridge's frames at once when it can."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Set here, not later: an attribute added after __init__ would give every connection
        # its own attribute dictionary instead of the class's shared keys (~0.4 KB each).
        self.served: Connection | None = None
        """The bridge connection this socket serves: told of each frame as it is read."""

    def send_now(self, frame: bytes) -> bool:
        """Write the text frame ``frame`` (UTF-8) to the socket now, if it takes it: open, not
        paused by flow control (its buffer under websockets' high-water mark), no fragmented
        message on its way. False: it does not, and the frame must wait (``send``)."""
        if self.paused or self.send_in_progress is not None:
            return False
        protocol = self.protocol
        if protocol.state is not State.OPEN:
            return False
        protocol.send_text(frame)
        self.send_data()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        # Two reference cycles of websockets' would keep every closed connection, buffers and
        # all, for the cycle collector (aistream/collector.py). Both are done with by now: the
        # select_subprotocol bound to the protocol through a closure over this connection (the
        # handshake is long over), and the protocol's parser, a generator parked at its last
        # ``yield`` whose frame holds the protocol (the stream has ended; websockets never
        # steps it again once it has seen the end).
        protocol = self.protocol
        vars(protocol).pop("select_subprotocol", None)
        protocol.parser.close()

    def process_event(self, event: Event) -> None:
        served = self.served
        if served is None or not isinstance(event, Frame):
            super().process_event(event)
            return
        opcode = event.opcode
        if opcode is Opcode.TEXT and event.fin and not self.recv_messages.frames:
            # a whole message, and nothing read before it waits for recv: act on it now
            try:
                text = bytes(event.data).decode()
            except UnicodeDecodeError:
                pass  # websockets' reader closes the connection with 1007, as for any frame
            else:
                try:
                    served.on_frame(text)
                except Exception:  # a bug: as websockets does when a handler fails
                    log.exception("acting on a frame failed conn=%s", served.id)
                    self.protocol.fail(CloseCode.INTERNAL_ERROR)
                return
        super().process_event(event)
        if opcode is Opcode.CLOSE:
            served.cancel_in_flight()
        elif opcode is Opcode.PING or opcode is Opcode.PONG:
            # websockets has written its pong already: it waits in the transport's buffer,
            # outside the connection's outbox, and counts against the same bound.
            served.control_frame(self.transport.get_write_buffer_size())
