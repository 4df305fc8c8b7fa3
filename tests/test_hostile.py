"""What a hostile or unlucky client or upstream cannot do: each defect found by trying, closed at
its cause, proved over real sockets. Resource bounds are asserted on the process's memory, never
on speed."""

from __future__ import annotations

import asyncio
import base64
import logging
import os

import pytest
from conftest import StackFactory

KEY = base64.b64encode(os.urandom(16)).decode()


async def raw_request(port: int, head: bytes) -> bytes:
    """Send ``head`` (a request head, CRLFs and all) to 127.0.0.1:``port``; the status line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
        await writer.wait_closed()


def handshake(path: str = "/ws", *headers: str) -> bytes:
    """A WebSocket opening handshake with ``headers`` (``"Name: value"``) added."""
    lines = [
        f"GET {path} HTTP/1.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 13",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def test_a_dns_rebinding_page_cannot_pass_as_the_bridges_origin(
    make_stack: StackFactory,
) -> None:
    """Host and Origin both naming a rebinding domain: 403; the bridge's own names still pass."""
    stack = await make_stack(public_hosts=("chat.example",))
    port = stack.bridge.port
    evil = handshake("/ws", f"Host: evil.example:{port}", f"Origin: http://evil.example:{port}")
    assert (await raw_request(port, evil)).startswith(b"HTTP/1.1 403")
    for name in ("127.0.0.1", "localhost", "chat.example"):
        own = handshake("/ws", f"Host: {name}:{port}", f"Origin: http://{name}:{port}")
        assert (await raw_request(port, own)).startswith(b"HTTP/1.1 101"), name


async def test_a_token_cookie_after_another_sites_cookie_is_accepted(
    make_stack: StackFactory,
) -> None:
    """``prefs={"a":1}; aistream_token=…`` opens the socket (101); a wrong token still 401."""
    stack = await make_stack(auth_token="t0k")
    port = stack.bridge.port
    good = handshake("/ws", f"Host: 127.0.0.1:{port}", 'Cookie: prefs={"a":1}; aistream_token=t0k')
    assert (await raw_request(port, good)).startswith(b"HTTP/1.1 101")
    split = handshake("/ws", f"Host: 127.0.0.1:{port}", "Cookie: a=1", "Cookie: aistream_token=t0k")
    assert (await raw_request(port, split)).startswith(b"HTTP/1.1 101")
    bad = handshake("/ws", f"Host: 127.0.0.1:{port}", 'Cookie: prefs={"a":1}; aistream_token=no')
    assert (await raw_request(port, bad)).startswith(b"HTTP/1.1 401")


@pytest.mark.parametrize(
    "head",
    [
        "GET /\x00x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        "GET /assets/\x00.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://127.0.0.1\r\n"
        "Origin: http://evil.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
    ],
    ids=["nul-in-path", "nul-in-asset", "two-hosts", "no-host", "two-hosts-ws", "two-origins"],
)
async def test_malformed_requests_are_the_clients_error(
    make_stack: StackFactory, head: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A NUL in the path, two Hosts, two Origins: 400, logged at most at info, no traceback."""
    stack = await make_stack()
    with caplog.at_level(logging.DEBUG):
        status = await raw_request(stack.bridge.port, head.encode("latin-1"))
        assert status.startswith(b"HTTP/1.1 400"), status
        # and the bridge carries on
        client = await stack.client()
        await client.send('{"type":"ai:generate","requestId":"r1","prompt":"hi"}')
        frames = await client.until(lambda f: f["type"] in ("ai:done", "ai:error"))
        assert frames[-1]["type"] == "ai:done"
    loud = [r for r in caplog.records if r.levelno > logging.INFO or r.exc_info]
    assert not loud, [(r.name, r.levelname, r.getMessage()) for r in loud]
