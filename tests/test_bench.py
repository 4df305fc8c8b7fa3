"""The benchmark harness (bench/) runs end to end in its quick form and reports every figure.

Only that it ran and produced each figure is checked, never a speed: speeds belong to
docs/performance.md, measured by the full run on a quiet machine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent
PATHS = ("aistream", "direct", "bare_ws", "bare_grpc")
LATENCY = ("ttft_p50_ms", "ttft_p99_ms", "gap_p50_ms", "gap_p99_ms")

# the first test to ask for the ``quick`` fixture pays for the whole run (~70 s)
pytestmark = pytest.mark.timeout(360)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``python -m bench --quick`` run: its exit code, output, JSON and plot path."""
    out = tmp_path_factory.mktemp("bench")
    command = [
        sys.executable,
        "-m",
        "bench",
        "--quick",
        "--out",
        str(out / "results.json"),
        "--plot",
        str(out / "latency.png"),
    ]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    results = orjson.loads((out / "results.json").read_bytes()) if done.returncode == 0 else {}
    return {"done": done, "results": results, "plot": out / "latency.png"}


def _has(agg: dict[str, Any]) -> bool:
    return isinstance(agg.get("median"), int | float)


def test_quick_run_exits_cleanly(quick: dict[str, Any]) -> None:
    """``python -m bench --quick`` exits 0 and prints the tables and target verdicts."""
    done = quick["done"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "### TTFT" in done.stdout
    assert "results written to" in done.stdout


def test_ttft_figures_for_every_path_and_level(quick: dict[str, Any]) -> None:
    """Every concurrency level has TTFT and inter-token p50/p99 and tokens/s on all four paths."""
    ttft = quick["results"]["scenarios"]["ttft"]
    assert [int(k) for k in ttft["levels"]] == ttft["params"]["levels"]
    for level in ttft["levels"].values():
        for path in PATHS:
            for metric in (*LATENCY, "tokens_per_s", "errors"):
                assert _has(level["paths"][path][metric]), (path, metric)
        for metric in LATENCY:
            assert _has(level["added_vs_direct"][metric]), metric


def test_firehose_figures(quick: dict[str, Any]) -> None:
    """Firehose reports tokens/s and messages/s for aistream and every baseline."""
    paths = quick["results"]["scenarios"]["firehose"]["paths"]
    for path in PATHS:
        assert _has(paths[path]["tokens_per_s"]) and _has(paths[path]["messages_per_s"]), path


def test_cancel_figures(quick: dict[str, Any]) -> None:
    """Cancel reports p50/p99 for ai:cancel, a closed socket and the direct SDK."""
    levels = quick["results"]["scenarios"]["cancel"]["levels"]
    assert levels
    for level in levels.values():
        for name in ("aistream_cancel", "aistream_close", "direct_cancel"):
            variant = level["variants"][name]
            assert _has(variant["p50_ms"]) and _has(variant["p99_ms"]), name


def test_idle_and_slow_reader_figures(quick: dict[str, Any]) -> None:
    """Idle memory per connection (aistream and bare ws) and the slow-reader figures exist."""
    scenarios = quick["results"]["scenarios"]
    for path in ("aistream", "bare_ws"):
        assert _has(scenarios["idle"]["paths"][path]["bytes_per_connection"]), path
    figures = scenarios["slow"]["figures"]
    assert _has(figures["peak_bytes_per_connection"]) and _has(figures["upstreams"])
    assert _has(figures["control_peak_bytes_per_connection"])


def test_process_usage_and_plot(quick: dict[str, Any]) -> None:
    """CPU and RSS of each process are reported, targets are judged and the plot is drawn."""
    results = quick["results"]
    level = next(iter(results["scenarios"]["ttft"]["levels"].values()))
    usage = level["processes"]["aistream"]
    for name in ("upstream", "generator", "bridge", "client0"):
        assert _has(usage[name]["cpu_pct"]) and _has(usage[name]["rss_mb"]), name
    assert isinstance(results["targets"], dict)
    assert results["machine"]["nproc"]
    assert quick["plot"].stat().st_size > 0
