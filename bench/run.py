"""The command: ``python -m bench [--quick] [--scenarios a,b] [--repeat N] [--out FILE]``.

Runs the chosen scenarios one after another, prints each table as it is done and the target
verdicts at the end, and writes everything (with the machine, the Python version and the git
state of the checkout measured) to the JSON file; ``--plot`` draws latency against concurrency.
``--metrics off`` runs the generator and bridge with metrics off: a run with each, one after the
other (``--out`` apart), measures what metrics cost.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import psutil

from bench import overload, resume, scenarios
from bench.procs import ROOT, raise_fd_limit
from bench.report import plot, plot_overload, tables, targets
from bench.scenarios import FULL, QUICK
from bench.stack import metrics_off

__all__ = ["SCENARIOS", "main"]

SCENARIOS = {**scenarios.SCENARIOS, **overload.SCENARIOS, **resume.SCENARIOS}
"""Every scenario by name, in the order ``--scenarios`` runs them by default."""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return ""
    return out.stdout.strip()


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty_files": len(_git("status", "--porcelain").splitlines()),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="aistream's benchmark harness (docs/performance.md)."
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (the test suite's run)")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, from {','.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument("--repeat", type=int, default=None, help="runs per figure (3; quick: 1)")
    parser.add_argument(
        "--capacity",
        type=int,
        default=0,
        help="streams aistream carries: the overload scenario's 1× (default: the capacity "
        "scenario's of this run, or searched)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--plot", type=Path, default=None, help="write the latency plot (PNG) here")
    parser.add_argument(
        "--overload-plot",
        type=Path,
        default=None,
        help="write the overload plot (PNG) here: latency against offered load",
    )
    parser.add_argument(
        "--before",
        type=Path,
        action="append",
        default=[],
        help="results (JSON) of an earlier commit, drawn beside this run in --overload-plot "
        "(repeatable)",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other scenarios already in --out (re-run only the ones named)",
    )
    parser.add_argument(
        "--upstream",
        choices=("bench", "fake"),
        default="bench",
        help="bench.upstream (default) or aistream.testing.fake_upstream",
    )
    parser.add_argument(
        "--metrics",
        choices=("on", "off"),
        default="on",
        help="generator and bridge with metrics on (default) or off (AISTREAM_METRICS=false): "
        "run both, same sitting, to measure what metrics cost",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the harness; 0 when every scenario ran (missed targets are reported, not fatal),
    1 when one failed (the others still ran and were written)."""
    args = _parser().parse_args(argv)
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"bench: unknown scenario(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    raise_fd_limit()
    if args.metrics == "off":
        metrics_off()
    sizes = QUICK if args.quick else FULL
    if args.capacity:
        sizes = dataclasses.replace(sizes, capacity=args.capacity)
    repeat = args.repeat or (1 if args.quick else 3)
    results: dict[str, Any] = {
        "machine": machine(),
        "quick": args.quick,
        "repeat": repeat,
        "upstream": args.upstream,
        "metrics": args.metrics,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "scenarios": {},
    }
    if args.merge and args.out.is_file():
        previous = orjson.loads(args.out.read_bytes())
        kept = {k: v for k, v in previous.get("scenarios", {}).items() if k not in names}
        results["scenarios"] = kept
    began = time.monotonic()
    failed = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        start = time.monotonic()
        print(f"[bench] scenario {name}", flush=True)
        try:
            results["scenarios"][name] = SCENARIOS[name](sizes, repeat, args.upstream)
        except Exception as exc:  # report it, go on with the next scenario
            traceback.print_exc()
            failed.append(name)
            results.setdefault("failed", {})[name] = f"{type(exc).__name__}: {exc}"
            continue
        results["scenarios"][name]["seconds"] = round(time.monotonic() - start, 1)
        results["scenarios"][name]["measured"] = {
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "git_commit": results["machine"]["git_commit"],
            "git_dirty_files": results["machine"]["git_dirty_files"],
            "repeat": repeat,
            "metrics": args.metrics,
        }
        args.out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))  # so far
    results["seconds"] = round(time.monotonic() - began, 1)
    results["targets"] = targets(results)
    args.out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print()
    print(tables(results))
    print()
    for target, verdict in results["targets"].items():
        print(f"{verdict['verdict']:>6}  {target}: {verdict['value']}")
    if args.plot is not None and plot(results, args.plot):
        print(f"plot written to {args.plot}")
    if args.overload_plot is not None:
        runs = {}
        for before in args.before:
            earlier = orjson.loads(before.read_bytes())
            runs[f"before ({earlier['machine']['git_commit']})"] = earlier
        runs[f"this run ({results['machine']['git_commit']})"] = results
        if plot_overload(runs, args.overload_plot):
            print(f"overload plot written to {args.overload_plot}")
    print(f"results written to {args.out} ({results['seconds']:.0f} s)")
    if failed:
        print(f"bench: scenario(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
