"""The examples run against a real generator: the grpcio stubs and the betterproto2 SDK."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest
from conftest import ROOT, Process

GENERATOR_READY = r"aistream generator listening on 127.0.0.1:(\d+)"


@pytest.mark.parametrize("example", ["grpc_client.py", "sdk_client.py"])
def test_example_streams_then_cancels(example: str, processes: Callable[..., Process]) -> None:
    """The example streams one answer to Done and cancels the other; it exits 0."""
    generator = processes(
        ["generator", "--port", "0"],
        GENERATOR_READY,
        {"AISTREAM_SIMULATED_TTFT": "0.01", "AISTREAM_SIMULATED_TOKENS_PER_S": "200"},
    )
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / example),
            "--target",
            f"127.0.0.1:{generator.ready[1]}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Simulated answer" in result.stdout
    assert "[stopped] error" in result.stdout


def test_agent_loop_calls_the_tool_and_answers_with_its_result(
    processes: Callable[..., Process],
) -> None:
    """The agent loop: the simulated model reasons, calls get_weather, the example runs it and
    sends the result back as a tool message, and the model's final answer uses it; exit 0."""
    generator = processes(
        ["generator", "--port", "0"],
        GENERATOR_READY,
        {"AISTREAM_SIMULATED_TTFT": "0.01", "AISTREAM_SIMULATED_TOKENS_PER_S": "500"},
    )
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "agent_loop.py"),
            "--target",
            f"127.0.0.1:{generator.ready[1]}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    first, _, second = out.partition("--- turn 2\n")
    assert "[reasoning] The user asks" in first
    assert "[calling] get_weather (call_" in first
    assert "[done] tool_calls" in first
    (tool,) = [line for line in first.splitlines() if line.startswith("[tool] ")]
    assert tool.startswith('[tool] get_weather({"city":"Lisbon"}) -> {"city": "Lisbon"')
    weather = tool.partition(" -> ")[2]
    assert f"[answer] **Simulated answer** using get_weather: {weather}" in second
    assert "[done] stop" in second
    assert "--- turn 3" not in second
    assert out.count("[usage] prompt=") == 2
