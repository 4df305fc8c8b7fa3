"""Real processes dying: the bridge killed mid-stream, the generator killed and restarted,
and the ``aistream`` command's start-up line and graceful exit."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import pytest
from conftest import UNIT, Process, WsClient, settings_for
from websockets.asyncio.client import connect

from aistream.bridge.server import BridgeServer
from aistream.generator.server import GeneratorServer
from aistream.testing.fake_upstream import FakeUpstream, Script

Spawn = Callable[..., Process]
BRIDGE_READY = r"aistream bridge listening on http://127.0.0.1:(\d+)/"
GENERATOR_READY = r"aistream generator listening on 127.0.0.1:(\d+) \(upstream: (\w+)\)"


async def test_killing_the_bridge_closes_the_upstreams(
    fake: FakeUpstream, processes: Spawn
) -> None:
    """SIGKILL of the bridge process mid-stream: the generator closes every upstream it served."""
    fake.script = Script(tokens=10_000, interval=0.01)
    generator = GeneratorServer(settings_for(fake))
    port = await generator.start()
    try:
        bridge = processes(
            ["bridge", "--port", "0", "--generator", f"127.0.0.1:{port}"], BRIDGE_READY
        )
        async with connect(f"ws://127.0.0.1:{bridge.ready[1]}/ws") as ws:
            client = WsClient(ws, "ws")
            client.abandon()
            await client.generate("r1")
            await client.generate("r2")
            await client.until(lambda f: f["type"] == "ai:token")
            await fake.wait_for(lambda: len(fake.records) == 2)
            killed_at = time.monotonic()
            bridge.kill()
            await fake.wait_idle(2 * UNIT)
        assert [r.outcome for r in fake.records] == ["client_closed", "client_closed"]
        lag = max(r.client_closed_at or 0 for r in fake.records) - killed_at
        assert lag < 1.0 * UNIT, f"upstreams closed {lag * 1000:.0f} ms after the kill"
        await fake.wait_for(lambda: fake.connections == 0)
    finally:
        await generator.stop(drain_timeout=0)


async def test_generator_killed_then_back(fake: FakeUpstream, processes: Spawn) -> None:
    """SIGKILL of the generator: in-flight requests get unavailable within a second, the bridge
    keeps serving, and generations work again once a generator is back on the same address."""
    fake.script = Script(tokens=10_000, interval=0.01)
    env = {"OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "k"}
    generator = processes(["generator", "--port", "0"], GENERATOR_READY, env)
    port = generator.ready[1]
    bridge = BridgeServer(settings_for(fake, generator_target=f"127.0.0.1:{port}"))
    await bridge.start()
    try:
        async with connect(f"ws://127.0.0.1:{bridge.port}/ws") as ws:
            client = WsClient(ws, "ws")
            await client.generate("r1")
            await client.generate("r2")
            await client.until(lambda f: f["type"] == "ai:token")
            killed_at = time.monotonic()
            generator.kill()
            by_id = await client.finish_all({"r1", "r2"}, timeout=2 * UNIT)
            assert time.monotonic() - killed_at < 1.0 * UNIT
            for rid in ("r1", "r2"):
                assert (by_id[rid][-1]["code"], by_id[rid][-1]["retryable"]) == (
                    "unavailable",
                    True,
                )
            # the generator dying closed its upstream connections too
            await fake.wait_idle(2 * UNIT)
            await fake.wait_for(lambda: fake.connections == 0)
            # while it is down, requests fail fast and the socket stays usable
            await client.generate("down")
            assert (await client.finish("down"))["code"] == "unavailable"
            # back on the same port: the bridge reconnects by itself
            fake.script = Script(tokens=3)
            processes(["generator", "--port", port], GENERATOR_READY, env)
            deadline = time.monotonic() + 5 * UNIT
            attempt = 0
            while True:
                attempt += 1
                await client.generate(f"again{attempt}")
                end = await client.finish(f"again{attempt}")
                if end["type"] == "ai:done" or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert end["type"] == "ai:done"
    finally:
        await bridge.stop()


def test_cli_generator_prints_ready_line_and_exits_zero_on_sigterm(processes: Spawn) -> None:
    """`aistream generator --port 0` prints its real port, labels the simulated model, exits 0."""
    generator = processes(["generator", "--port", "0"], GENERATOR_READY)
    assert int(generator.ready[1]) > 0
    assert generator.ready[2] == "simulated"
    assert generator.terminate() == 0


async def test_cli_up_serves_a_streaming_chat_and_exits_zero(processes: Spawn) -> None:
    """`aistream up --port 0` prints one URL; its /ws streams the simulated model; SIGTERM → 0."""
    up = processes(
        ["up", "--port", "0"],
        r"aistream is up: open (http://127.0.0.1:(\d+)/) — SIMULATED",
        {"AISTREAM_SIMULATED_TTFT": "0.01", "AISTREAM_SIMULATED_TOKENS_PER_S": "0"},
    )
    async with connect(f"ws://127.0.0.1:{up.ready[2]}/ws") as ws:
        client = WsClient(ws, "ws")
        await client.generate("r1", "hello", maxTokens=5)
        frames = await client.until(lambda f: f["type"] in ("ai:done", "ai:error"))
    assert frames[0]["model"] == "aistream-simulated"
    assert frames[-1]["type"] == "ai:done"
    assert up.terminate() == 0


async def test_cli_up_hands_its_upstream_flags_to_its_generator(
    fake: FakeUpstream, processes: Spawn
) -> None:
    """`aistream up --base-url … --api-key … --model …` streams from that upstream, asking for
    that model with that key (the flags reach the generator child, not only the environment)."""
    up = processes(
        ["up", "--port", "0", "--base-url", fake.base_url, "--api-key", "k3y", "--model", "m1"],
        r"aistream is up: open (http://127.0.0.1:(\d+)/)",
        {"OPENAI_BASE_URL": "", "OPENAI_API_KEY": "", "AISTREAM_MODEL": ""},
    )
    assert "SIMULATED" not in up.ready.string
    async with connect(f"ws://127.0.0.1:{up.ready[2]}/ws") as ws:
        client = WsClient(ws, "ws")
        await client.generate("r1", "hello")
        frames = await client.until(lambda f: f["type"] in ("ai:done", "ai:error"))
    assert (frames[0]["model"], frames[-1]["type"]) == ("m1", "ai:done")
    (record,) = fake.records
    assert (record.body["model"], record.headers["authorization"]) == ("m1", "Bearer k3y")
    assert up.terminate() == 0


@pytest.mark.parametrize("command", ["generator", "bridge"])
def test_cli_rejects_bad_settings(command: str, processes: Spawn) -> None:
    """A bad setting is a clear one-line error and exit code 2."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "aistream", command, "--port", "70000"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "port" in result.stderr


async def test_sigterm_on_the_bridge_drains_and_closes_1012(
    fake: FakeUpstream, processes: Spawn
) -> None:
    """SIGTERM on `aistream bridge`: the running generation ends retryable after the drain, the
    socket closes with 1012, the upstream is closed and the process exits 0."""
    fake.script = Script(tokens=10_000, interval=0.01)
    generator = GeneratorServer(settings_for(fake))
    port = await generator.start()
    try:
        bridge = processes(
            ["bridge", "--port", "0", "--generator", f"127.0.0.1:{port}"],
            BRIDGE_READY,
            {"AISTREAM_DRAIN_TIMEOUT": str(0.3 * UNIT)},
        )
        async with connect(f"ws://127.0.0.1:{bridge.ready[1]}/ws") as ws:
            client = WsClient(ws, "ws")
            await client.generate("r1")
            await client.until(lambda f: f["type"] == "ai:token")
            bridge.popen.send_signal(signal.SIGTERM)
            end = await client.finish("r1")
            assert (end["code"], end["retryable"]) == ("unavailable", True)
            await ws.wait_closed()
            assert ws.close_code == 1012
        assert await asyncio.to_thread(bridge.popen.wait, 30) == 0
        await fake.wait_idle(2 * UNIT)
    finally:
        await generator.stop(drain_timeout=0)
