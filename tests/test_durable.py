"""Durable streams on Redis (issue 19): two generators and two bridges share a real
``redis-server`` (started here on a free port). A browser's connection drops mid-answer with no
close frame and it resumes on the other bridge — whichever generator runs the answer — and the
text equals the upstream's, word for word; a resume after the end; a wrong token; a cancel on
the other bridge closes the upstream; the grace ends with nobody reading; Redis stopped and
started again mid-answer. The lifecycle checker runs over every conversation (conftest)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import UNIT, WS_PATH, WsClient, settings_for
from websockets.asyncio.client import connect

from aistream.bridge.server import BridgeServer
from aistream.generator.server import GeneratorServer
from aistream.testing.fake_upstream import FakeUpstream, Script
from aistream.testing.redis_server import RedisServer, redis_server_path

pytestmark = pytest.mark.skipif(
    redis_server_path() is None, reason="redis-server is not installed (scripts/bootstrap.sh)"
)

SLOW = Script(tokens=60, interval=0.02)


def _text(frames: list[dict[str, Any]]) -> str:
    return "".join(f["chunk"] for f in frames if f["type"] == "ai:token")


def _end_of(frame: dict[str, Any]) -> int:
    return int(frame["seq"]) + max(int(frame.get("count", 1)), 1) - 1


def _final(frame: dict[str, Any]) -> bool:
    return bool(frame["type"] in ("ai:done", "ai:error"))


@dataclass
class Cluster:
    """A fake upstream, two generators and two bridges (each bridge reaching both generators,
    round robin), on one Redis."""

    redis: RedisServer
    fake: FakeUpstream
    generators: list[GeneratorServer]
    bridges: list[BridgeServer]
    _sockets: list[Any] = field(default_factory=list)

    async def client(self, bridge: int, name: str) -> WsClient:
        ws = await connect(f"ws://127.0.0.1:{self.bridges[bridge].port}{WS_PATH}", compression=None)
        self._sockets.append(ws)
        return WsClient(ws, name)

    async def upstream_closed(self, index: int = -1) -> None:
        async with asyncio.timeout(5 * UNIT):
            while self.fake.records[index].client_closed_at is None:  # noqa: ASYNC110
                await asyncio.sleep(0.01)


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
async def cluster_of(redis: RedisServer) -> AsyncIterator[Any]:
    built: list[Cluster] = []

    async def build(script: Script = SLOW, **overrides: Any) -> Cluster:
        fake = FakeUpstream(script)
        await fake.start()
        values = {"redis_url": redis.url, "resume_grace": 10.0, **overrides}
        generators = [GeneratorServer(settings_for(fake, **values)) for _ in range(2)]
        ports = [await g.start() for g in generators]
        target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)
        bridges = [
            BridgeServer(settings_for(fake, generator_target=target, generator_streams=2, **values))
            for _ in range(2)
        ]
        for bridge in bridges:
            await bridge.start()
        cluster = Cluster(redis, fake, generators, bridges)
        built.append(cluster)
        return cluster

    yield build
    for cluster in built:
        for ws in cluster._sockets:
            await ws.close()
        for bridge in cluster.bridges:
            await bridge.stop(drain_timeout=0)
        for generator in cluster.generators:
            await generator.stop(drain_timeout=0)
        fake = cluster.fake
        try:  # no ghost generations: every response ended, every pool closed
            await fake.wait_for(lambda f=fake: not f.active() and not f.connections)
        except TimeoutError:
            pytest.fail(f"upstream left open: {len(fake.active())} responses")
        finally:
            await fake.close()


async def _reference(cluster: Cluster) -> str:
    client = await cluster.client(0, "reference")
    await client.generate("ref")
    return _text(await client.until(_final, 10 * UNIT))


async def test_a_dropped_connection_resumes_on_the_other_bridge_word_for_word(
    cluster_of: Any,
) -> None:
    cluster = await cluster_of()
    expected = await _reference(cluster)
    for attempt in range(2):  # (the two connections go to both generators, round robin)
        first = await cluster.client(0, f"first{attempt}")
        first.abandon()
        await first.generate("r", resumable=True)
        held = await first.until(lambda f: f["type"] == "ai:token" and f["seq"] >= 5, 10 * UNIT)
        token = held[0]["resumeToken"]
        first.ws.transport.abort()  # no close frame
        await asyncio.sleep(0.1)
        assert cluster.fake.records[-1].client_closed_at is None  # detached, running on

        second = await cluster.client(1, f"second{attempt}")
        await second.send(
            {
                "type": "ai:resume",
                "requestId": "r",
                "resumeToken": token,
                "afterSeq": _end_of(held[-1]),
            }
        )
        rest = await second.until(_final, 10 * UNIT)
        assert rest[-1]["type"] == "ai:done"
        assert _text(held) + _text(rest) == expected
    # round robin: each generator ran one of the two; the second bridge replayed from Redis
    assert [len(g.service.resumables.store) for g in cluster.generators] == [1, 1]
    follows = cluster.bridges[1].follows
    assert follows is not None and follows.replayed > 0


async def test_resume_after_the_end_replays_it_and_a_wrong_token_is_not_found(
    cluster_of: Any,
) -> None:
    cluster = await cluster_of(Script(tokens=8))
    first = await cluster.client(0, "first")
    await first.generate("r", resumable=True)
    frames = await first.until(_final)
    token = frames[0]["resumeToken"]
    second = await cluster.client(1, "second")
    await second.send({"type": "ai:resume", "requestId": "r", "resumeToken": token})
    replay = await second.until(_final)
    assert replay[0]["type"] == "ai:start" and _text(replay) == _text(frames)
    # The client holds everything: the terminal again, so a resume always ends.
    end = _end_of(frames[-1])
    await second.send(
        {"type": "ai:resume", "requestId": "r", "resumeToken": token, "afterSeq": end}
    )
    again = await second.until(_final)
    assert [f["type"] for f in again] == ["ai:done"]
    for bad in (
        {"resumeToken": token[:-1] + ("x" if token[-1] != "x" else "y")},
        {"resumeToken": "0" * 32 + "." + "a" * 32},
        {"resumeToken": token, "requestId": "other"},
    ):
        await second.send({"type": "ai:resume", "requestId": "r", **bad})
        refusal = await second.recv()
        assert (refusal["type"], refusal["code"], refusal["retryable"]) == (
            "ai:error",
            "not_found",
            False,
        )


async def test_cancel_on_the_other_bridge_closes_the_upstream(cluster_of: Any) -> None:
    cluster = await cluster_of(Script(tokens=400, interval=0.02))
    first = await cluster.client(0, "first")
    first.abandon()
    await first.generate("r", resumable=True)
    start = await first.recv()
    await first.ws.close()
    second = await cluster.client(1, "second")
    await second.send({"type": "ai:resume", "requestId": "r", "resumeToken": start["resumeToken"]})
    await second.until(lambda f: f["type"] == "ai:token")
    await second.cancel("r")
    end = (await second.until(_final))[-1]
    assert (end["type"], end["code"]) == ("ai:error", "cancelled")
    await cluster.upstream_closed()


async def test_grace_expiry_closes_the_upstream_and_a_follower_holds_it_open(
    cluster_of: Any,
) -> None:
    cluster = await cluster_of(Script(tokens=600, interval=0.02), resume_grace=0.5)
    # Nobody resumes: cancelled at the end of the grace.
    first = await cluster.client(0, "first")
    first.abandon()
    await first.generate("r", resumable=True)
    await first.recv()
    await first.ws.close()
    await cluster.upstream_closed()
    # A follower on the other bridge holds its lease past the grace.
    other = await cluster.client(0, "other")
    other.abandon()
    await other.generate("s", resumable=True)
    start = await other.recv()
    await other.ws.close()
    second = await cluster.client(1, "second")
    second.abandon()
    await second.send({"type": "ai:resume", "requestId": "s", "resumeToken": start["resumeToken"]})
    await second.until(lambda f: f["type"] == "ai:token")
    await asyncio.sleep(1.5)
    assert cluster.fake.records[-1].client_closed_at is None
    await second.ws.close()  # the follower goes: the grace starts again, then it ends
    await cluster.upstream_closed()


async def test_redis_stopped_and_started_again_mid_answer(cluster_of: Any) -> None:
    """Live streams carry on to their own connection while Redis is away; a resume answers
    unavailable (retryable) meanwhile; once Redis is back (empty), the owner copies the log
    again and a resume on the other bridge gets the whole answer."""
    cluster = await cluster_of(Script(tokens=150, interval=0.02))
    expected = await _reference(cluster)
    live = await cluster.client(0, "live")
    await live.generate("r", resumable=True)
    start = await live.recv()
    before = await live.until(lambda f: f["type"] == "ai:token")
    cluster.redis.stop()
    second = await cluster.client(1, "second")
    await second.send({"type": "ai:resume", "requestId": "r", "resumeToken": start["resumeToken"]})
    refusal = await second.recv()
    assert (refusal["code"], refusal["retryable"]) == ("unavailable", True)
    assert refusal["retryAfterMs"] > 0
    await asyncio.sleep(0.5)
    cluster.redis.start(cluster.redis.port)
    frames = await live.until(_final, 20 * UNIT)  # the live stream never stopped
    assert frames[-1]["type"] == "ai:done"
    assert _text(before + frames) == expected
    async with asyncio.timeout(10 * UNIT):
        while True:
            await second.send(
                {"type": "ai:resume", "requestId": "r", "resumeToken": start["resumeToken"]}
            )
            replay = await second.until(_final, 10 * UNIT)
            if replay[-1]["type"] == "ai:done":
                break
            assert replay[-1]["code"] in ("unavailable", "not_found")
            await asyncio.sleep(0.2)
    assert _text(replay) == expected
    # the owner copied its log again once Redis was back (it came back empty)
    replicas = [g.service.resumables.replica for g in cluster.generators]
    assert any(r is not None and r.resyncs > 0 and r.shipped > 0 for r in replicas)


BRIDGE_READY = r"aistream bridge listening on http://127.0.0.1:(\d+)/"


async def test_a_bridge_killed_under_load_every_client_resumes_on_the_survivor(
    cluster_of: Any, processes: Any
) -> None:
    """SIGKILL of a bridge process carrying 40 resumable answers: each client resumes on the
    other bridge from the last position it holds, and ends with the upstream's text."""
    cluster = await cluster_of(Script(tokens=150, interval=0.02))
    expected = await _reference(cluster)
    target = "ipv4:" + ",".join(f"127.0.0.1:{g.port}" for g in cluster.generators)
    doomed = processes(
        ["bridge", "--port", "0", "--generator", target],
        BRIDGE_READY,
        {"AISTREAM_REDIS_URL": cluster.redis.url, "AISTREAM_GENERATOR_STREAMS": "2"},
    )
    url = f"ws://127.0.0.1:{doomed.ready[1]}{WS_PATH}"
    clients = []
    for i in range(40):
        client = WsClient(await connect(url, compression=None), f"client{i}")
        client.abandon()
        await client.generate("r", resumable=True)
        clients.append(client)
    held = [
        await client.until(lambda f: f["type"] == "ai:token" and f["seq"] >= 3, 10 * UNIT)
        for client in clients
    ]
    doomed.kill()
    for client, frames in zip(clients, held, strict=True):
        # (each reads on until its socket is gone: what it holds counts)
        with contextlib.suppress(Exception):
            while True:
                frames.append(await client.recv(0.5))

    async def resume(i: int) -> str:
        frames = held[i]
        again = await cluster.client(1, f"again{i}")
        await again.send(
            {
                "type": "ai:resume",
                "requestId": "r",
                "resumeToken": frames[0]["resumeToken"],
                "afterSeq": _end_of(frames[-1]),
            }
        )
        rest = await again.until(_final, 20 * UNIT)
        assert rest[-1]["type"] == "ai:done", rest[-1]
        return _text(frames) + _text(rest)

    texts = await asyncio.gather(*(resume(i) for i in range(len(clients))))
    assert texts == [expected] * len(clients)


GENERATOR_READY = r"aistream generator listening on 127.0.0.1:(\d+)"


async def test_a_follower_of_a_dead_generator_ends_unavailable(
    cluster_of: Any, processes: Any
) -> None:
    """SIGKILL of the generator running an answer followed through Redis from another bridge:
    nothing can end its log, so the follower ends with unavailable (retryable) once the owner's
    liveness key has lapsed — never a stream that hangs."""
    cluster = await cluster_of(Script(tokens=10_000, interval=0.02))
    env = {
        "OPENAI_BASE_URL": cluster.fake.base_url,
        "OPENAI_API_KEY": "k",
        "AISTREAM_REDIS_URL": cluster.redis.url,
        "AISTREAM_RESUME_GRACE": "60",
    }
    doomed = processes(["generator", "--port", "0"], GENERATOR_READY, env)
    bridge = BridgeServer(
        settings_for(
            cluster.fake,
            generator_target=f"127.0.0.1:{doomed.ready[1]}",
            redis_url=cluster.redis.url,
        )
    )
    await bridge.start()
    try:
        ws = await connect(f"ws://127.0.0.1:{bridge.port}{WS_PATH}", compression=None)
        first = WsClient(ws, "first")
        first.abandon()
        await first.generate("r", resumable=True)
        start = await first.recv()
        await ws.close()
        follower = await cluster.client(1, "follower")
        await follower.send(
            {"type": "ai:resume", "requestId": "r", "resumeToken": start["resumeToken"]}
        )
        await follower.until(lambda f: f["type"] == "ai:token")
        doomed.kill()
        end = (await follower.until(_final, 40 * UNIT))[-1]
        assert (end["type"], end["code"], end["retryable"]) == ("ai:error", "unavailable", True)
    finally:
        await bridge.stop(drain_timeout=0)


async def test_two_tabs_follow_one_answer_through_redis_and_a_stop_ends_it_for_all(
    cluster_of: Any,
) -> None:
    """The asker keeps reading on its bridge; two more tabs resume the same answer on the other
    bridge (one from the start, one from the middle): each gets every word once; one Stop ends
    it for all three, with one terminal each."""
    cluster = await cluster_of(Script(tokens=400, interval=0.02))
    asker = await cluster.client(0, "asker")
    await asker.generate("r", resumable=True)
    held = await asker.until(lambda f: f["type"] == "ai:token" and f["seq"] >= 5, 10 * UNIT)
    token = held[0]["resumeToken"]
    tabs = [await cluster.client(1, f"tab{i}") for i in range(2)]
    await tabs[0].send({"type": "ai:resume", "requestId": "r", "resumeToken": token})
    await tabs[1].send({"type": "ai:resume", "requestId": "r", "resumeToken": token, "afterSeq": 3})
    firsts = [await tab.until(lambda f: f["type"] == "ai:token" and f["seq"] >= 20) for tab in tabs]
    await tabs[1].cancel("r")
    ends = [
        held + await asker.until(_final, 10 * UNIT),
        firsts[0] + await tabs[0].until(_final, 10 * UNIT),
        firsts[1] + await tabs[1].until(_final, 10 * UNIT),
    ]
    assert [e[-1].get("code") for e in ends] == ["cancelled"] * 3
    full = _text(ends[0])
    assert _text(ends[1]) == full  # (the same answer, every word once)
    assert full.startswith("tok0 tok1 tok2 ") and full.endswith(_text(ends[2]))
    assert _text(ends[2]).startswith("tok3 ")  # after position 3: token 3 onward
    await cluster.upstream_closed()
