"""Shared fixtures: real servers on 127.0.0.1 port 0, recording clients, the lifecycle checker.

Every conversation a test has with the bridge or the generator is recorded by the client that had
it, and ``_check_every_conversation`` (autouse) runs the one lifecycle checker over all of them
when the test ends: start → part* → exactly one terminal per generation, nothing after, no gaps in
``seq`` across parts of every kind, every start or rejection answering a generate that was sent.

Times in tests are multiples of ``UNIT`` seconds; set ``AISTREAM_TEST_TIME_SCALE`` (default 1) to
stretch them on a slow machine.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from aistream.bridge.server import WS_PATH, BridgeServer
from aistream.children import Child
from aistream.generator.server import GeneratorServer
from aistream.lifecycle import PART_KINDS, Lifecycle
from aistream.settings import Settings
from aistream.testing.fake_upstream import FakeUpstream, Script
from aistream.v1 import events_pb2 as pb
from aistream.v1 import generator_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
UNIT = float(os.environ.get("AISTREAM_TEST_TIME_SCALE", "1"))
TERMINAL = ("ai:done", "ai:error")

# --- memory ---------------------------------------------------------------------------------------


def _rss() -> int:
    """This process's resident set size, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Samples this process's RSS every 20 ms while in use (``async with``); ``growth`` is the
    peak − the RSS at the start: what a resource test bounds."""

    def __init__(self) -> None:
        self.start = self.peak = _rss()
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, _rss())
            await asyncio.sleep(0.02)

    async def __aenter__(self) -> PeakRss:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.peak = max(self.peak, _rss())

    @property
    def growth(self) -> int:
        """Bytes the process grew by at its peak."""
        return self.peak - self.start


# --- the lifecycle checker ------------------------------------------------------------------------


@dataclass
class Conversation:
    """Everything sent and received on one connection, in order."""

    name: str
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    abandoned: bool = False
    """The test ended the connection mid-stream on purpose: running ids need no terminal."""


_conversations: list[Conversation] = []


def check_conversation(conversation: Conversation) -> None:
    """Fail if the conversation breaks a lifecycle guarantee."""
    lifecycle = Lifecycle(strict=True)
    for direction, frame in conversation.events:
        request_id = frame.get("requestId", "")
        kind = frame.get("type", "")
        if direction == "sent":
            # Any frame but a cancel may be answered under its id (a start, or a rejection).
            if not isinstance(request_id, str):
                continue
            if kind == "ai:cancel":
                lifecycle.cancel(request_id)
            elif kind == "ai:resume":
                lifecycle.resume(request_id, frame.get("afterSeq", -1))
            elif kind == "ai:detach":
                lifecycle.forget(request_id)
            else:
                lifecycle.expect(request_id)
            continue
        assert kind.startswith("ai:"), f"{conversation.name}: frame without ai: type {frame}"
        lifecycle.observe(
            kind[3:],
            request_id,
            frame.get("seq", 0),
            frame.get("count", 1),
            positioned=kind == "ai:start" and "seq" in frame,
        )
    if not conversation.abandoned:
        assert not lifecycle.running, (
            f"{conversation.name}: no terminal event for {lifecycle.running}"
        )


@pytest.fixture(autouse=True)
def _check_every_conversation() -> Iterator[None]:
    """Run the lifecycle checker over every conversation the test recorded."""
    _conversations.clear()
    yield
    for conversation in _conversations:
        check_conversation(conversation)
    _conversations.clear()


# --- recording clients ------------------------------------------------------------------------


class WsClient:
    """A browser-protocol client that records its conversation for the checker."""

    def __init__(self, ws: ClientConnection, name: str) -> None:
        self.ws = ws
        self.conversation = Conversation(name)
        _conversations.append(self.conversation)

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        """Send a frame (a dict is JSON-encoded) and record it."""
        if isinstance(frame, dict):
            self.conversation.events.append(("sent", frame))
            await self.ws.send(orjson.dumps(frame).decode())
            return
        try:
            decoded = orjson.loads(frame) if isinstance(frame, str) else None
        except orjson.JSONDecodeError:
            decoded = None
        if isinstance(decoded, dict):
            self.conversation.events.append(("sent", decoded))
        await self.ws.send(frame)

    async def generate(self, request_id: str, prompt: str = "hello", **extra: Any) -> None:
        """Send an ai:generate."""
        await self.send({"type": "ai:generate", "requestId": request_id, "prompt": prompt, **extra})

    async def cancel(self, request_id: str) -> None:
        """Send an ai:cancel."""
        await self.send({"type": "ai:cancel", "requestId": request_id})

    async def recv(self, timeout: float = 5 * UNIT) -> dict[str, Any]:
        """The next frame, decoded and recorded."""
        async with asyncio.timeout(timeout):
            message = await self.ws.recv()
        frame: dict[str, Any] = orjson.loads(message)
        self.conversation.events.append(("recv", frame))
        return frame

    async def until(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5 * UNIT
    ) -> list[dict[str, Any]]:
        """Frames received until (and including) the first one matching ``predicate``."""
        frames = []
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout)
                frames.append(frame)
                if predicate(frame):
                    return frames

    async def finish(self, request_id: str, timeout: float = 5 * UNIT) -> dict[str, Any]:
        """Read until ``request_id``'s terminal frame and return it."""
        frames = await self.until(
            lambda f: f["type"] in TERMINAL and f["requestId"] == request_id, timeout
        )
        return frames[-1]

    async def finish_all(
        self, request_ids: set[str], timeout: float = 10 * UNIT
    ) -> dict[str, list[dict[str, Any]]]:
        """Read until every id has ended; frames grouped by request id."""
        pending = set(request_ids)
        by_id: dict[str, list[dict[str, Any]]] = {rid: [] for rid in request_ids}
        async with asyncio.timeout(timeout):
            while pending:
                frame = await self.recv(timeout)
                by_id.setdefault(frame.get("requestId", ""), []).append(frame)
                if frame["type"] in TERMINAL:
                    pending.discard(frame["requestId"])
        return by_id

    def abandon(self) -> None:
        """Mark the conversation as ended mid-stream on purpose."""
        self.conversation.abandoned = True


def recorded_frame(event: pb.ServerEvent) -> dict[str, Any]:
    """What the lifecycle checker needs of a ServerEvent, as its frame would say it."""
    kind = event.WhichOneof("event")
    assert kind is not None
    body = getattr(event, kind)
    frame: dict[str, Any] = {"type": f"ai:{kind}", "requestId": body.request_id}
    if kind in PART_KINDS:  # (a tool_call covers one seq number)
        frame |= {"seq": body.seq, "count": getattr(body, "count", 1)}
    elif body.HasField("seq"):  # (a resumable generation's start and terminal)
        frame["seq"] = body.seq
    return frame


class GrpcClient:
    """A Generator.Stream call that records its conversation (as JSON-like frames)."""

    def __init__(self, channel: grpc.aio.Channel, name: str) -> None:
        self.call = generator_pb2_grpc.GeneratorStub(channel).Stream()
        self.conversation = Conversation(name)
        _conversations.append(self.conversation)

    async def send(self, event: pb.ClientEvent) -> None:
        """Write one ClientEvent and record it."""
        kind = event.WhichOneof("event")
        if kind is not None:
            body = getattr(event, kind)
            frame: dict[str, Any] = {"type": f"ai:{kind}", "requestId": body.request_id}
            if kind == "resume":
                frame["afterSeq"] = body.after_seq if body.HasField("after_seq") else -1
            self.conversation.events.append(("sent", frame))
        await self.call.write(event)

    async def generate(self, request_id: str, prompt: str = "hello", **extra: Any) -> None:
        """Write a Generate."""
        await self.send(
            pb.ClientEvent(generate=pb.Generate(request_id=request_id, prompt=prompt, **extra))
        )

    async def cancel(self, request_id: str) -> None:
        """Write a Cancel."""
        await self.send(pb.ClientEvent(cancel=pb.Cancel(request_id=request_id)))

    async def recv(self, timeout: float = 5 * UNIT) -> pb.ServerEvent:
        """The next ServerEvent, recorded."""
        async with asyncio.timeout(timeout):
            event = await self.call.read()
        assert event is not grpc.aio.EOF, "the generator ended the stream"
        assert isinstance(event, pb.ServerEvent)
        self.conversation.events.append(("recv", recorded_frame(event)))
        return event

    async def finish(self, request_id: str, timeout: float = 5 * UNIT) -> pb.ServerEvent:
        """Read until ``request_id``'s terminal event and return it."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.recv(timeout)
                kind = event.WhichOneof("event")
                if kind in ("done", "error") and getattr(event, kind).request_id == request_id:
                    return event

    def abandon(self) -> None:
        """Mark the conversation as ended mid-stream on purpose."""
        self.conversation.abandoned = True


# --- servers ----------------------------------------------------------------------------------


def settings_for(fake: FakeUpstream | None = None, **overrides: Any) -> Settings:
    """Settings for an in-process stack on free ports (upstream: ``fake``, else simulated)."""
    values: dict[str, Any] = {
        "generator_port": 0,
        "bridge_port": 0,
        "simulated_ttft": 0.01,
        "simulated_tokens_per_s": 500.0,
        "upstream_max_retries": 0,
        "first_token_timeout": 5 * UNIT,
        "stall_timeout": 5 * UNIT,
        "drain_timeout": 0.5 * UNIT,
        "ws_ping_interval": 5 * UNIT,
        "ws_ping_timeout": 5 * UNIT,
        # One loop runs the clients, the fake, the bridge and the generator here: its lag says
        # nothing of a server's headroom (tests/test_headroom.py sets its own).
        "shed_loop_lag_ms": 0.0,
    }
    if fake is not None:
        values |= {"base_url": fake.base_url, "api_key": "test-key"}
    values |= overrides
    return Settings(**values)


@dataclass
class Stack:
    """A fake upstream, a generator and a bridge, all in this process, on free ports."""

    fake: FakeUpstream
    generator: GeneratorServer
    bridge: BridgeServer
    _clients: list[ClientConnection] = field(default_factory=list)

    @property
    def ws_url(self) -> str:
        """The bridge's WebSocket URL."""
        return f"ws://127.0.0.1:{self.bridge.port}{WS_PATH}"

    async def client(self, name: str = "ws") -> WsClient:
        """A new recording WebSocket client connected to the bridge."""
        ws = await connect(self.ws_url, compression=None)
        self._clients.append(ws)
        return WsClient(ws, name)

    async def close(self) -> None:
        """Close clients, bridge, generator; then check no upstream connection was left open."""
        for ws in self._clients:
            await ws.close()
        await self.bridge.stop(drain_timeout=0)
        await self.generator.stop(drain_timeout=0)
        try:
            # No ghost generations: every response ended and the generator's pool is closed.
            await self.fake.wait_for(lambda: not self.fake.active() and not self.fake.connections)
        except TimeoutError:
            pytest.fail(
                f"upstream left open: {len(self.fake.active())} responses, "
                f"{self.fake.connections} connections"
            )
        finally:
            await self.fake.close()


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    """A fake OpenAI-compatible upstream on a free port."""
    async with FakeUpstream(Script(tokens=5)) as upstream:
        yield upstream


@pytest.fixture
async def make_stack() -> AsyncIterator[StackFactory]:
    """Build in-process stacks: ``await make_stack(script=Script(...), **settings)``."""
    stacks: list[Stack] = []

    async def build(script: Script | None = None, **overrides: Any) -> Stack:
        upstream = FakeUpstream(script or Script(tokens=5))
        await upstream.start()
        generator = GeneratorServer(settings_for(upstream, **overrides))
        gport = await generator.start()
        bridge = BridgeServer(
            settings_for(upstream, generator_target=f"127.0.0.1:{gport}", **overrides)
        )
        await bridge.start()
        stack = Stack(upstream, generator, bridge)
        stacks.append(stack)
        return stack

    yield build
    for stack in stacks:
        await stack.close()


@pytest.fixture
async def stack(make_stack: StackFactory) -> Stack:
    """One in-process stack with the default fake script (five tokens)."""
    return await make_stack()


# --- processes --------------------------------------------------------------------------------


class Process(Child):
    """An aistream command running as a child process, with what its ready line said."""

    def terminate(self) -> int:
        """SIGTERM and wait; the exit code."""
        self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(30)


@pytest.fixture
def processes() -> Iterator[Callable[..., Process]]:
    """Start aistream commands as child processes; every one is stopped after the test."""
    started: list[Process] = []

    def start(args: list[str], ready: str, env: dict[str, str] | None = None) -> Process:
        process = Process(
            [sys.executable, "-m", "aistream", *args],
            ready,
            name=f"aistream {args[0]}",
            env={"AISTREAM_LOG_LEVEL": "WARNING", **(env or {})},
            cwd=ROOT,
            timeout=30 * UNIT,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
