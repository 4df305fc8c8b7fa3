"""Resume through the bridge (issue 19): a browser's connection drops mid-answer (no close
frame), it comes back on another bridge of the same generator and resumes from the last position
it applied — the text equals the upstream's, word for word — and a resumable generation whose
socket went is detached, not cancelled, until the grace ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import UNIT, WS_PATH, Stack, StackFactory, WsClient, settings_for
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from aistream.bridge.server import BridgeServer
from aistream.testing.fake_upstream import Script

SLOW = Script(tokens=40, interval=0.02)


def _text(frames: list[dict[str, Any]]) -> str:
    return "".join(f["chunk"] for f in frames if f["type"] == "ai:token")


def _end_of(frame: dict[str, Any]) -> int:
    return int(frame["seq"]) + max(int(frame.get("count", 1)), 1) - 1


@pytest.fixture
async def second_bridge(make_stack: StackFactory) -> AsyncIterator[Any]:
    """A factory: another bridge in front of a stack's generator."""
    bridges: list[BridgeServer] = []

    async def build(stack: Stack, **overrides: Any) -> str:
        settings = settings_for(
            stack.fake, generator_target=f"127.0.0.1:{stack.generator.port}", **overrides
        )
        bridge = BridgeServer(settings)
        await bridge.start()
        bridges.append(bridge)
        return f"ws://127.0.0.1:{bridge.port}{WS_PATH}"

    yield build
    for bridge in bridges:
        await bridge.stop(drain_timeout=0)


async def _client(url: str, name: str) -> WsClient:
    return WsClient(await connect(url, compression=None), name)


async def test_a_dropped_connection_resumes_on_another_bridge_word_for_word(
    make_stack: StackFactory, second_bridge: Any
) -> None:
    stack = await make_stack(SLOW, resume_grace=10.0)
    reference = await stack.client("reference")
    await reference.generate("ref")
    expected = _text(await reference.until(lambda f: f["type"] == "ai:done", 10 * UNIT))

    first = await stack.client("first")
    first.abandon()
    await first.generate("r", resumable=True)
    held = await first.until(lambda f: f["type"] == "ai:token" and f["seq"] >= 5, 10 * UNIT)
    start = held[0]
    assert start["type"] == "ai:start" and start["seq"] == 0 and start["resumeToken"]
    first.ws.transport.abort()  # the phone changes networks: no close frame
    await asyncio.sleep(0.1)
    assert stack.fake.records[-1].client_closed_at is None  # it runs on, detached

    url = await second_bridge(stack)
    second = await _client(url, "second")
    await second.send(
        {
            "type": "ai:resume",
            "requestId": "r",
            "resumeToken": start["resumeToken"],
            "afterSeq": _end_of(held[-1]),
        }
    )
    rest = await second.until(lambda f: f["type"] in ("ai:done", "ai:error"), 10 * UNIT)
    assert rest[-1]["type"] == "ai:done" and rest[-1]["seq"] >= _end_of(held[-1]) + 1
    assert _text(held) + _text(rest) == expected
    await second.ws.close()


async def test_a_plain_generation_is_still_cancelled_when_its_socket_goes(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(SLOW)
    client = await stack.client()
    client.abandon()
    await client.generate("r")
    await client.until(lambda f: f["type"] == "ai:token")
    client.ws.transport.abort()
    async with asyncio.timeout(5 * UNIT):
        while stack.fake.records[-1].client_closed_at is None:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_resume_after_the_end_and_a_wrong_token(make_stack: StackFactory) -> None:
    stack = await make_stack(Script(tokens=6))
    client = await stack.client()
    await client.generate("r", resumable=True)
    frames = await client.until(lambda f: f["type"] == "ai:done")
    token = frames[0]["resumeToken"]
    await client.send({"type": "ai:resume", "requestId": "r", "resumeToken": token, "afterSeq": 0})
    replay = await client.until(lambda f: f["type"] == "ai:done")
    assert _text(replay) == _text(frames)
    wrong = token[:-1] + ("x" if token[-1] != "x" else "y")  # (never the token itself)
    await client.send({"type": "ai:resume", "requestId": "r", "resumeToken": wrong})
    refusal = await client.recv()
    assert (refusal["type"], refusal["code"], refusal["retryable"]) == (
        "ai:error",
        "not_found",
        False,
    )
    await client.send({"type": "ai:resume", "requestId": "other", "resumeToken": token})
    assert (await client.recv())["code"] == "not_found"


async def test_cancel_on_the_resuming_connection_closes_the_upstream(
    make_stack: StackFactory, second_bridge: Any
) -> None:
    stack = await make_stack(Script(tokens=400, interval=0.02), resume_grace=10.0)
    first = await stack.client("first")
    first.abandon()
    await first.generate("r", resumable=True)
    start = await first.recv()
    await first.ws.close()
    url = await second_bridge(stack)
    second = await _client(url, "second")
    await second.send({"type": "ai:resume", "requestId": "r", "resumeToken": start["resumeToken"]})
    await second.until(lambda f: f["type"] == "ai:token")
    await second.cancel("r")
    end = (await second.until(lambda f: f["type"] in ("ai:done", "ai:error")))[-1]
    assert end["code"] == "cancelled"
    async with asyncio.timeout(5 * UNIT):
        while stack.fake.records[-1].client_closed_at is None:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    await second.ws.close()


async def test_a_browser_cannot_detach(make_stack: StackFactory) -> None:
    """ai:detach is what a bridge tells its generator; from a browser it is an invalid request,
    and the generation it names goes on."""
    stack = await make_stack(Script(tokens=5, interval=0.01))
    client = await stack.client()
    await client.generate("r", resumable=True)
    await client.send({"type": "ai:detach", "requestId": "r"})
    frames = await client.until(lambda f: f["type"] == "ai:done")
    refusals = [f for f in frames if f["type"] == "ai:error"]
    assert [(f["code"], f["requestId"]) for f in refusals] == [("invalid_request", "")]


async def test_a_bridge_shutting_down_detaches_resumable_answers_for_a_resume_elsewhere(
    make_stack: StackFactory, second_bridge: Any
) -> None:
    """A redeploy: the bridge stops (SIGTERM, drain 0); the plain answer ends unavailable, the
    resumable one gets no terminal — it runs on — and resumes on another bridge, whole."""
    stack = await make_stack(SLOW, resume_grace=10.0)
    reference = await stack.client("reference")
    await reference.generate("ref")
    expected = _text(await reference.until(lambda f: f["type"] == "ai:done", 10 * UNIT))
    url = await second_bridge(stack)

    client = await stack.client("first")
    client.abandon()
    await client.generate("plain")
    await client.generate("r", resumable=True)
    held: list[dict[str, Any]] = []
    while not any(f["type"] == "ai:token" and f["requestId"] == "r" for f in held):
        held.append(await client.recv())
    await stack.bridge.stop(drain_timeout=0)
    with contextlib.suppress(ConnectionClosed):
        while True:
            held.append(await client.recv())
    assert client.ws.close_code == 1012
    ends = [(f["requestId"], f.get("code")) for f in held if f["type"] in ("ai:done", "ai:error")]
    assert ends == [("plain", "unavailable")]
    page = (await stack.bridge.metrics.render()).decode()
    assert 'aistream_bridge_generations_total{code="",outcome="detached"} 1.0' in page
    mine = [f for f in held if f["requestId"] == "r"]
    assert stack.fake.records[-1].client_closed_at is None  # it runs on

    again = await _client(url, "again")
    await again.send(
        {
            "type": "ai:resume",
            "requestId": "r",
            "resumeToken": mine[0]["resumeToken"],
            "afterSeq": _end_of(mine[-1]),
        }
    )
    rest = await again.until(lambda f: f["type"] in ("ai:done", "ai:error"), 10 * UNIT)
    assert rest[-1]["type"] == "ai:done"
    assert _text(mine) + _text(rest) == expected
    await again.ws.close()
