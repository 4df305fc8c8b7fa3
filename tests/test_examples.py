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
