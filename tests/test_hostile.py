"""What a hostile or unlucky client or upstream cannot do: each defect found by trying, closed at
its cause, proved over real sockets. Resource bounds are asserted on the process's memory, never
on speed."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from conftest import TERMINAL, PeakRss, Stack, StackFactory, WsClient, settings_for
from websockets.asyncio.client import connect

from aistream.generator.server import GeneratorServer
from aistream.testing.fake_upstream import Script
from aistream.v1 import events_pb2 as pb
from aistream.v1.generator_pb2_grpc import GeneratorStub

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


async def test_one_oversized_upstream_event_ends_only_its_generation(
    make_stack: StackFactory,
) -> None:
    """A 10 MB event ends its own generation (upstream_error); a neighbour on another socket on
    the same shared gRPC stream finishes untouched, and the stream carries on."""
    stack = await make_stack()
    huge = Script(text="x" * 10_000_000, tokens=1)
    stack.fake.script_for = lambda body: huge if "huge" in str(body) else None
    neighbour, victim = await stack.client("neighbour"), await stack.client("victim")
    await neighbour.send(
        {"type": "ai:generate", "requestId": "n", "prompt": '#fake {"tokens":30,"interval":0.02}'}
    )
    await neighbour.until(lambda f: f["type"] == "ai:token")
    await victim.send({"type": "ai:generate", "requestId": "v", "prompt": "huge"})
    ended = await victim.until(lambda f: f["type"] in TERMINAL)
    assert (ended[-1]["type"], ended[-1]["code"]) == ("ai:error", "upstream_error")
    done = await neighbour.until(lambda f: f["type"] in TERMINAL)
    assert done[-1]["type"] == "ai:done"
    await victim.send({"type": "ai:generate", "requestId": "v2", "prompt": "hi"})
    again = await victim.until(lambda f: f["type"] in TERMINAL)
    assert again[-1]["type"] == "ai:done"


async def _endless_data_lines(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sent: list[int]
) -> None:
    """An upstream that answers 200 and then ``data:`` lines with no blank line, ever (until
    60 MB are sent or the client goes)."""
    with contextlib.suppress(ConnectionError):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
        )
        block = b"data: xxxxxxxx\n" * 4096
        while sent[0] < 60_000_000 and not reader.at_eof():
            writer.write(block)
            sent[0] += len(block)
            await writer.drain()
    writer.close()


async def test_an_event_that_never_ends_is_cut_at_the_cap() -> None:
    """Data lines without a blank line: the generation ends upstream_error at
    upstream_max_event_bytes, memory stays bounded (< 40 MB growth for up to 60 MB sent)."""
    sent = [0]
    server = await asyncio.start_server(
        lambda r, w: _endless_data_lines(r, w, sent), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    generator = GeneratorServer(
        settings_for(None, base_url=f"http://127.0.0.1:{port}/v1", api_key="k")
    )
    gport = await generator.start()
    try:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{gport}")
        async with PeakRss() as rss, channel:
            call = GeneratorStub(channel).Stream()
            await call.write(pb.ClientEvent(generate=pb.Generate(request_id="r", prompt="hi")))
            events = [e async for e in _until_terminal(call)]
        assert events[-1].error.code == pb.ERROR_CODE_UPSTREAM_ERROR
        assert sent[0] < 60_000_000  # it was cut off, not read to the end
        assert rss.growth < 40_000_000, rss.growth
    finally:
        await generator.stop(drain_timeout=0)
        server.close()


async def _until_terminal(call: Any) -> AsyncIterator[pb.ServerEvent]:
    async for event in call:
        yield event
        if event.WhichOneof("event") in ("done", "error"):
            call.cancel()
            return


async def test_done_needs_a_finish_reason(make_stack: StackFactory) -> None:
    """Tokens then [DONE] without any finish reason: upstream_error, never ai:done."""
    stack = await make_stack(script=Script(tokens=3, finish_reason=None))
    client = await stack.client()
    await client.send({"type": "ai:generate", "requestId": "r", "prompt": "hi"})
    frames = await client.until(lambda f: f["type"] in TERMINAL)
    assert [f["type"] for f in frames[1:-1]] and frames[-1]["type"] == "ai:error"
    assert frames[-1]["code"] == "upstream_error"
    assert frames[-1]["retryable"] is True


async def test_an_upstream_redirect_is_an_error_not_followed(make_stack: StackFactory) -> None:
    """A 307 (to itself: a loop) is upstream_error after exactly one upstream request."""
    stack = await make_stack()
    stack.fake.script = Script(status=307, location=f"{stack.fake.base_url}/chat/completions")
    client = await stack.client()
    await client.send({"type": "ai:generate", "requestId": "r", "prompt": "hi"})
    frames = await client.until(lambda f: f["type"] in TERMINAL)
    assert (frames[-1]["type"], frames[-1]["code"]) == ("ai:error", "upstream_error")
    assert len(stack.fake.records) == 1


def _frame(opcode: int, payload: bytes = b"") -> bytes:
    """One masked client frame (FIN set), payload under 126 bytes."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


async def _flood_pings(port: int, frames: int) -> asyncio.StreamWriter:
    """Open a socket that never reads (a 4 KiB receive buffer) and send ``frames`` pings of 125
    bytes as fast as the bridge takes them (or until it cuts the socket off); the writer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(handshake("/ws", f"Host: 127.0.0.1:{port}"))
    await reader.readuntil(b"\r\n\r\n")
    writer.transport.pause_reading()  # never read again: every pong stays with the bridge
    ping = _frame(0x9, b"p" * 125)
    with contextlib.suppress(ConnectionError, TimeoutError):
        for _ in range(frames // 500):
            writer.write(ping * 500)
            await asyncio.wait_for(writer.drain(), 5)
    return writer


async def test_a_ping_flood_that_never_reads_is_a_slow_consumer(make_stack: StackFactory) -> None:
    """Pongs count against ws_send_buffer: a client that pings (200k) and never reads is cut
    off, the bridge's memory grows < 10 MB (the pongs alone would be 26 MB), and a neighbour's
    answer completes."""
    stack = await make_stack(
        frames_per_second=1e9, frames_burst=1_000_000_000, ws_close_timeout=0.2
    )
    neighbour = await stack.client("neighbour")
    await neighbour.send(
        {"type": "ai:generate", "requestId": "n", "prompt": '#fake {"tokens":20,"interval":0.02}'}
    )
    async with PeakRss() as rss:
        flooder = await _flood_pings(stack.bridge.port, 200_000)
        done = await neighbour.until(lambda f: f["type"] in TERMINAL)
        await stack.fake.wait_for(lambda: len(stack.bridge.connections) == 1)
    flooder.close()
    assert done[-1]["type"] == "ai:done"
    assert rss.growth < 10_000_000, rss.growth


async def test_a_ping_flood_spends_the_frame_budget(make_stack: StackFactory) -> None:
    """Pings count against the frame rate: far past it the connection is closed."""
    stack = await make_stack(ws_close_timeout=0.2)
    flooder = await _flood_pings(stack.bridge.port, 2_000)
    await stack.fake.wait_for(lambda: not stack.bridge.connections)
    flooder.close()


async def test_a_generate_right_after_its_cancel_is_answered(stack: Stack) -> None:
    """Cancel, then the same id again: the cancelled one ends, then the new one runs to done;
    cancelled again before it started, it gets a lone cancelled error."""
    client = await stack.client()
    slow = '#fake {"tokens":50,"interval":0.02}'
    await client.send({"type": "ai:generate", "requestId": "r", "prompt": slow})
    await client.until(lambda f: f["type"] == "ai:token")
    await client.send({"type": "ai:cancel", "requestId": "r"})
    await client.send({"type": "ai:generate", "requestId": "r", "prompt": "hi"})
    frames = await client.until(lambda f: f["type"] == "ai:done")
    terminals = [(f["type"], f.get("code")) for f in frames if f["type"] in TERMINAL]
    assert terminals == [("ai:error", "cancelled"), ("ai:done", None)]
    assert [f["type"] for f in frames].count("ai:start") == 1  # the second one's

    await client.send({"type": "ai:generate", "requestId": "q", "prompt": slow})
    await client.until(lambda f: f["type"] == "ai:token")
    for frame in ("ai:cancel", "ai:generate", "ai:cancel"):
        await client.send({"type": frame, "requestId": "q", "prompt": "hi"})
    first = await client.until(lambda f: f["type"] in TERMINAL)
    second = await client.until(lambda f: f["type"] in TERMINAL)
    assert (first[-1]["code"], second[-1]["code"]) == ("cancelled", "cancelled")
    assert [f["type"] for f in second] == ["ai:error"]  # never started


async def test_model_is_bounded(stack: Stack) -> None:
    """A model name past max_model_chars is invalid_request; at the limit it is served."""
    client = await stack.client()
    await client.send({"type": "ai:generate", "requestId": "a", "prompt": "hi", "model": "m" * 257})
    assert (await client.finish("a"))["code"] == "invalid_request"
    await client.send({"type": "ai:generate", "requestId": "b", "prompt": "hi", "model": "m" * 256})
    assert (await client.finish("b"))["type"] == "ai:done"


async def test_invalid_frames_spend_the_frame_rate(stack: Stack) -> None:
    """3,000 bad frames get at most the burst (+ what refills) answers; the socket carries on."""
    client = await stack.client()
    for _ in range(3000):
        await client.ws.send('{"type":"ai:generate"}')
    await client.ws.send('{"type":"ai:cancel","requestId":"last"}')  # (a no-op, never answered)
    answers = 0
    with contextlib.suppress(TimeoutError):
        while True:
            frame = await client.recv(0.5)
            assert (frame["type"], frame["code"]) == ("ai:error", "invalid_request")
            answers += 1
    assert 0 < answers <= 200, answers
    await asyncio.sleep(0.1)  # the budget refills
    await client.send({"type": "ai:generate", "requestId": "ok", "prompt": "hi"})
    assert (await client.finish("ok"))["type"] == "ai:done"


async def test_one_client_cannot_take_every_generation(make_stack: StackFactory) -> None:
    """Past max_generations_per_client over all its sockets: too_many_requests; another client
    (by client_key) still has its share."""
    stack = await make_stack(
        max_generations_per_client=4, client_key="header:X-User", script=Script(tokens=1, ttft=5)
    )
    url = stack.ws_url

    async def user(name: str) -> WsClient:
        ws = await connect(url, additional_headers={"X-User": name})
        stack._clients.append(ws)
        return WsClient(ws, name)

    a1, a2, b = await user("a"), await user("a"), await user("b")
    for i in range(3):
        await a1.send({"type": "ai:generate", "requestId": f"a1-{i}", "prompt": "hi"})
        await a1.until(lambda f: f["type"] == "ai:start")
    await a2.send({"type": "ai:generate", "requestId": "a2-0", "prompt": "hi"})
    await a2.until(lambda f: f["type"] == "ai:start")
    await a2.send({"type": "ai:generate", "requestId": "a2-1", "prompt": "hi"})
    refused = await a2.finish("a2-1")
    assert (refused["code"], refused["retryable"]) == ("too_many_requests", True)
    assert "per client" in refused["message"]
    await b.send({"type": "ai:generate", "requestId": "b-0", "prompt": "hi"})
    await b.until(lambda f: f["type"] == "ai:start")
    for client, ids in ((a1, ["a1-0", "a1-1", "a1-2"]), (a2, ["a2-0"]), (b, ["b-0"])):
        for request_id in ids:
            await client.send({"type": "ai:cancel", "requestId": request_id})
        await client.finish_all(set(ids))
    # the share is given back as generations end
    await a2.send({"type": "ai:generate", "requestId": "a2-2", "prompt": "hi"})
    await a2.until(lambda f: f["type"] == "ai:start")
    await a2.send({"type": "ai:cancel", "requestId": "a2-2"})
    await a2.finish("a2-2")


async def test_a_closed_socket_gives_its_clients_share_back(make_stack: StackFactory) -> None:
    """Generations ended by their socket closing return to the client's share (no leak)."""
    stack = await make_stack(max_generations_per_client=2, script=Script(tokens=1, ttft=5))
    for round_ in range(3):
        client = await stack.client(f"round {round_}")
        for i in range(2):
            await client.send({"type": "ai:generate", "requestId": f"r{i}", "prompt": "hi"})
            await client.until(lambda f: f["type"] == "ai:start")
        client.conversation.abandoned = True
        await client.ws.close()
        await stack.fake.wait_for(lambda: not stack.fake.active())
    assert stack.bridge.shares is not None and len(stack.bridge.shares) == 0
