"""The benchmark harness (bench/) runs end to end in its quick form and reports every figure.

Only that it ran and produced each figure is checked, never a speed: speeds belong to
docs/performance.md, measured by the full run on a quiet machine.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # bench/ is not installed: ``python -m bench`` runs from ROOT
    sys.path.append(str(ROOT))
from bench.client import Tracker  # noqa: E402
from bench.spec import StreamSpec, parse_prompt  # noqa: E402
from bench.upstream import _events, _finish  # noqa: E402

PATHS = ("aistream", "direct", "bare_ws", "bare_grpc")
LATENCY = ("ttft_p50_ms", "ttft_p99_ms", "gap_p50_ms", "gap_p99_ms")
FIRST_FIVE = "ttft,firehose,cancel,idle,slow"
"""The scenarios of the ``quick`` run; ``reasoning`` has a run of its own (a few seconds)."""

# the first test to ask for the ``quick`` fixture pays for the whole run (~70 s)
pytestmark = pytest.mark.timeout(360)


def _bench(out: Path, *args: str) -> dict[str, Any]:
    """Run ``python -m bench --quick … --out out/results.json``: exit code, output and JSON."""
    command = [sys.executable, "-m", "bench", "--quick", *args, "--out", str(out / "results.json")]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    results = orjson.loads((out / "results.json").read_bytes()) if done.returncode == 0 else {}
    return {"done": done, "results": results}


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``python -m bench --quick`` run of the first five scenarios: exit code, output, JSON
    and plot path."""
    out = tmp_path_factory.mktemp("bench")
    plot = out / "latency.png"
    return {**_bench(out, "--scenarios", FIRST_FIVE, "--plot", str(plot)), "plot": plot}


@pytest.fixture(scope="module")
def reasoning(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``python -m bench --quick --scenarios reasoning`` run: exit code, output, JSON."""
    return _bench(tmp_path_factory.mktemp("bench-reasoning"), "--scenarios", "reasoning")


@pytest.fixture(scope="module")
def overload(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``python -m bench --quick --scenarios capacity,overload`` run with its plot."""
    out = tmp_path_factory.mktemp("bench-overload")
    plot = out / "overload.png"
    args = ("--scenarios", "capacity,overload", "--overload-plot", str(plot))
    return {**_bench(out, *args), "plot": plot}


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


def test_reasoning_figures(reasoning: dict[str, Any]) -> None:
    """The reasoning scenario runs with no errors and reports both first-part times, the gaps
    and parts/s, and its plain baseline; reasoning is counted apart from answer tokens."""
    done = reasoning["done"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "### Reasoning" in done.stdout
    result = reasoning["results"]["scenarios"]["reasoning"]
    with_reasoning, plain = result["variants"]["reasoning"], result["variants"]["plain"]
    for variant in (with_reasoning, plain):
        assert variant["errors"]["median"] == 0, result["error_codes"]
        for metric in ("ttft_p50_ms", "ttft_p99_ms", "gap_p50_ms", "gap_p99_ms", "parts_per_s"):
            assert _has(variant[metric]), metric
    for metric in ("reasoning_p50_ms", "reasoning_p99_ms", "answer_lag_p50_ms"):
        assert _has(with_reasoning[metric]), metric
    assert with_reasoning["reasoning_per_s"]["median"] > 0
    assert with_reasoning["tokens_per_s"]["median"] > 0
    assert plain["reasoning_per_s"]["median"] == 0 and not _has(plain["reasoning_p50_ms"])
    # the answer's first token comes after the reasoning: its TTFT is at least that schedule
    schedule_ms = 1000 * result["params"]["reasoning_tokens"] / result["params"]["rate"]
    assert with_reasoning["ttft_p50_ms"]["median"] >= schedule_ms - 1
    for name in ("bridge", "generator"):
        assert _has(result["processes"]["reasoning"][name]["cpu_pct"]), name


def test_capacity_figures(overload: dict[str, Any]) -> None:
    """The capacity search reports, for aistream and the bare websockets server, the streams
    carried, every probe it made, and their ratio."""
    done = overload["done"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "### Capacity" in done.stdout
    result = overload["results"]["scenarios"]["capacity"]
    for path in ("aistream", "bare_ws"):
        assert result["paths"][path]["streams"]["median"] > 0, result["probes"]
        probes = result["probes"][path][0]
        assert probes and all("ttft_p99_ms" in p and "carried" in p for p in probes)
    assert _has(result["ratio"])


def test_overload_figures(overload: dict[str, Any]) -> None:
    """Past capacity some generations are refused (and resent after the hint), the admitted
    ones are timed, cancels and closes are matched to the upstream's records, nothing is left
    open, no server dies, and the lifecycle checker passed every conversation."""
    done = overload["done"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "### Overload" in done.stdout
    result = overload["results"]["scenarios"]["overload"]
    factors = result["factors"]
    assert set(factors) == {"1.0", "2.0"}
    for factor, figures in factors.items():
        for metric in ("admitted", "ttft_p50_ms", "ttft_p99_ms", "gap_p99_ms", "cancel_p99_ms"):
            assert _has(figures[metric]), (factor, metric)
        assert figures["left_open"]["median"] == 0, factor
        assert figures["errors"]["median"] == 0, result["error_codes"]
    over = factors["2.0"]
    assert over["refused"]["median"] > 0
    assert _has(over["refusal_p99_ms"]) and _has(over["close_p99_ms"])
    # (the idle probe beside the load past 1×, and only there)
    assert over["probe_refused"]["median"] > 0 and _has(over["probe_refusal_p99_ms"])
    assert _has(over["probe_lag_p99_ms"]) and over["probe_errors"]["median"] == 0
    assert factors["1.0"]["probe_refused"]["median"] is None
    # (which hop refused, from the bridge's metrics: some of them, at most all)
    assert 0 <= over["refused_by_generator"]["median"] <= over["refused"]["median"]
    assert result["crashed"] == {"1.0": [[]], "2.0": [[]]}
    assert result["lifecycle_violations"] == {"1.0": [], "2.0": []}
    assert overload["plot"].stat().st_size > 0


@pytest.fixture(scope="module")
def resume(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``python -m bench --quick --scenarios resume`` run."""
    return _bench(tmp_path_factory.mktemp("bench-resume"), "--scenarios", "resume")


def test_resume_figures(resume: dict[str, Any]) -> None:
    """The resume scenario reports the log's cost (plain and resumable, no error: a seq gap
    would count), memory per retained generation, and a burst of drops and resumes in which
    every stream resumed at the next position."""
    done = resume["done"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = resume["results"]["scenarios"]["resume"]
    for variant in ("plain", "resumable", "redis"):
        figures = result["cost"][variant]
        assert figures["errors"]["median"] == 0, variant
        for metric in ("ttft_p99_ms", "generator_cpu_us_per_token", "bridge_cpu_us_per_token"):
            assert _has(figures[metric]), (variant, metric)
    assert _has(result["cost"]["redis"]["redis_cpu_us_per_token"])
    for variant in ("plain", "resumable", "redis"):
        cancel = result["cancel"][variant]
        assert _has(cancel["p99_ms"]) and cancel["not_closed"]["median"] == 0, variant
    assert result["bytes_per_retained_generation"]
    assert all(b > 0 for b in result["redis_bytes_per_retained_generation"])
    for variant in ("memory", "redis", "bare_ws"):
        burst = result["burst"][variant]
        assert burst["resumed"]["median"] == burst["resumes"]["median"] > 0, variant
        assert burst["errors"]["median"] == 0, result["burst_error_codes"]
        assert _has(burst["first_event_p99_ms"]), variant


def test_capacity_search_finds_the_largest_carried_within_its_precision() -> None:
    from bench.overload import search

    probed: list[int] = []

    def probe(n: int) -> bool:
        probed.append(n)
        return n <= 730

    assert 730 / 1.1 <= search(probe, 100, 20_000, 0.1) <= 730
    assert probed[:4] == [100, 200, 400, 800]  # doubling, then bisecting
    assert search(lambda n: n <= 50_000, 100, 20_000, 0.1) == 20_000  # carried at the limit
    assert search(lambda n: False, 100, 20_000, 0.1) == 0


def test_overload_client_resends_a_shed_generation_after_its_hint() -> None:
    """The tracker counts a refusal apart (not an error) and keeps its hint for the sender."""

    async def scenario() -> Tracker:
        tracker = Tracker(window=(0.0, float("inf")))
        tracker.benign = frozenset({"too_many_requests"})
        done = tracker.begin("r", 0.0)
        tracker.end("r", "too_many_requests", 750)
        assert await done == "too_many_requests"
        return tracker

    tracker = asyncio.run(scenario())
    assert tracker.errors == {} and tracker.outcomes == {"too_many_requests": 1}
    assert tracker.hints == {"r": 750} and len(tracker.refused_ms) == 1


def test_upstream_streams_reasoning_before_the_answer() -> None:
    """bench.upstream sends the reasoning chunks first (the first with the role) under the
    spec's delta key, then the answer's, and counts both in the usage chunk."""
    spec, tag = parse_prompt(
        StreamSpec(tokens=2, reasoning=2, reasoning_field="reasoning").prompt("t")
    )
    assert (spec.reasoning, spec.reasoning_field, tag) == (2, "reasoning", "t")
    body = _events(0, 4, spec.reasoning, spec.reasoning_field)
    deltas = [
        orjson.loads(line[len(b"data: ") :])["choices"][0]["delta"]
        for line in body.split(b"\r\n")
        if line.startswith(b"data: ")
    ]
    assert deltas == [
        {"role": "assistant", "reasoning": "think0 "},
        {"reasoning": "think1 "},
        {"content": "tok0 "},
        {"content": "tok1 "},
    ]
    usage = orjson.loads(_finish("stop", (3, 4, 2)).split(b"data: ")[2].split(b"\n")[0])["usage"]
    assert usage["completion_tokens"] == 4
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 2}


async def test_tracker_times_reasoning_apart_and_checks_seq() -> None:
    """The load client times the first reasoning part and the first answer token apart, takes
    gaps across both kinds, and counts a request whose seq skips once as ``seq_gap``."""
    tracker = Tracker()
    tracker.begin("r", 0.0)
    tracker.reasoning_part("r", 1, 0.010, seq=0)
    tracker.reasoning_part("r", 2, 0.020, seq=1)
    tracker.token("r", 1, 0.050, seq=3)
    assert (tracker.reasoning_ms, tracker.ttft_ms) == ([10.0], [50.0])
    assert tracker.gaps_ms == [10.0, 30.0]
    assert (tracker.reasoning, tracker.tokens, tracker.messages) == (3, 1, 3)
    assert tracker.errors == {}
    tracker.token("r", 1, 0.060, seq=5)  # 4 skipped
    tracker.token("r", 1, 0.070, seq=7)  # 6 too: the same request counts once
    assert tracker.errors == {"seq_gap": 1}
