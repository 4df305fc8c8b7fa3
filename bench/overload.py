"""Capacity and overload: how many streams a node carries, and what it does past that.

*Capacity* (``capacity``) is the largest number of concurrent 30 tokens/s streams (closed loop,
``capacity_tokens`` each) carried with time to first token p99 ≤ ``capacity_ttft_p99_ms`` and no
error — found by doubling from ``capacity_start`` until a probe fails, then bisecting until the
bounds are within ``capacity_precision`` (a probe that misses is run again once: a noisy
window on this machine is not the capacity), each probe on fresh servers — for aistream and for
the bare ``websockets`` server pushing the same frames. Their ratio is the figure: the machine's
speed of the day cancels out.

*Overload* (``overload``) offers ``overload_factors`` × aistream's capacity: that many
connections, each asking for one stream after another and, when refused with
``too_many_requests``, asking again after the hint (``bench.client``'s ``overload`` mode). It
reports the admitted and refused generations of the window, TTFT and inter-token p99 of the
admitted, how fast a refusal comes, ``ai:cancel`` and close → upstream closed p50/p99 for a
sample of live streams, whether every upstream was closed at the end, whether any server died,
and what the lifecycle checker found in every conversation. The capacity is the ``capacity``
scenario's of the same run, or ``Sizes.capacity`` (``--capacity N``), or searched first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from bench.scenarios import Load, Run, Sizes, _log, _run_loop, _split_ttft, repeated
from bench.spec import StreamSpec
from bench.stack import SHEDDING, Stack
from bench.stats import aggregate, percentile

__all__ = ["SCENARIOS", "search"]

_ENV: dict[str, str | None] = {**SHEDDING, "AISTREAM_MAX_GENERATIONS_PER_CLIENT": "0"}
"""The product's defaults, shedding included, but one: every load client connects from
127.0.0.1, and as one client it would be held to a client's share of the bridge
(``max_generations_per_client``), a limit, not the capacity measured."""

_found: dict[str, list[int]] = {}
"""Capacities found by this process's ``capacity`` scenario, by path (one per repeat)."""


def search(probe: Callable[[int], bool], start: int, limit: int, precision: float) -> int:
    """The largest ``n`` ≤ ``limit`` for which ``probe(n)`` holds, assuming it holds below some
    bound and fails above it: doubling from ``start``, then bisecting (geometric midpoints)
    until the bounds are within ``1 + precision`` of each other. 0 if even 1 fails."""
    good, bad = 0, None
    n = max(1, min(start, limit))
    while bad is None:
        if not probe(n):
            bad = n
        elif n >= limit:
            return n
        else:
            good, n = n, min(n * 2, limit)
    while bad - good > 1 and bad > good * (1 + precision):
        mid = int(math.sqrt(good * bad)) if good else bad // 2
        mid = min(max(mid, good + 1), bad - 1)
        if probe(mid):
            good = mid
        else:
            bad = mid
    return good


def _spec(sizes: Sizes) -> StreamSpec:
    return StreamSpec(ttft=0.0, interval=1 / sizes.rate, tokens=sizes.capacity_tokens)


def _probe_job(sizes: Sizes, streams: int) -> dict[str, Any]:
    return {
        "mode": "loop",
        "connections": streams,
        "spec": asdict(_spec(sizes)),
        "stagger": sizes.capacity_warmup,
        "warmup": sizes.capacity_warmup,
        "duration": sizes.capacity_window,
    }


def _carries(run: Run, sizes: Sizes) -> bool:
    p99 = run["ttft_p99_ms"]
    return run["errors"] == 0 and p99 is not None and p99 <= sizes.capacity_ttft_p99_ms


def _find(path: str, upstream: str, sizes: Sizes) -> Run:
    """Search one path's capacity, each probe on servers of its own (a limit the last probe's
    load taught aistream is not carried into the next)."""
    probes: list[dict[str, Any]] = []

    def measure(streams: int) -> Run:
        with Stack((path,), upstream, _ENV, sizes.quiet_patience) as stack:
            return _run_loop(stack, path, _probe_job(sizes, streams), sizes.capacity_window)

    def probe(streams: int) -> bool:
        run = measure(streams)
        ok = _carries(run, sizes)
        if not ok:  # a probe that misses runs again: one noisy window does not set the figure
            _log(f"capacity {path} {streams} streams: missed (ttft p99 {run['ttft_p99_ms']} ms)")
            run = measure(streams)
            ok = _carries(run, sizes)
        probes.append(
            {
                "streams": streams,
                "ttft_p99_ms": run["ttft_p99_ms"],
                "gap_p99_ms": run["gap_p99_ms"],
                "errors": run["errors"],
                "carried": ok,
                "cpu_pct": {n: u["cpu_pct"] for n, u in run["processes"].items() if "cpu_pct" in u},
            }
        )
        _log(
            f"capacity {path} {streams} streams: ttft p99 {run['ttft_p99_ms']} ms, "
            f"errors {run['errors']} → {'carried' if ok else 'not carried'}"
        )
        return ok

    found = search(probe, sizes.capacity_start, sizes.capacity_max, sizes.capacity_precision)
    _found.setdefault(path, []).append(found)
    at = [p for p in probes if p["streams"] == found]
    return {
        "streams": found,
        "ttft_p99_ms": at[-1]["ttft_p99_ms"] if at else None,
        "probes": probes,
    }


def capacity(sizes: Sizes, repeat: int, upstream: str) -> dict[str, Any]:
    """The capacity of aistream and of the bare websockets server, and their ratio."""
    paths = ("aistream", "bare_ws")
    _found.clear()
    runs = repeated(
        "capacity",
        repeat,
        paths,
        lambda path: _find(path, upstream, sizes),
        lambda run: f"{run['streams']} streams (ttft p99 {run['ttft_p99_ms']} ms)",
        sizes.settle,
    )
    ratios = [
        None if not b["streams"] else a["streams"] / b["streams"]
        for a, b in zip(runs["aistream"], runs["bare_ws"], strict=True)
    ]
    return {
        "params": {
            "rate": sizes.rate,
            "stream_tokens": sizes.capacity_tokens,
            "ttft_p99_ms": sizes.capacity_ttft_p99_ms,
            "start": sizes.capacity_start,
            "max": sizes.capacity_max,
            "precision": sizes.capacity_precision,
            "warmup_s": sizes.capacity_warmup,
            "window_s": sizes.capacity_window,
        },
        "paths": runs.figures(("streams", "ttft_p99_ms")),
        "ratio": aggregate(ratios),
        "probes": {p: [r["probes"] for r in rs] for p, rs in runs.by_variant.items()},
    }


# --- overload ---------------------------------------------------------------------------------


def _capacity_for_overload(sizes: Sizes, upstream: str) -> tuple[int, str]:
    if sizes.capacity:
        return sizes.capacity, "given"
    if _found.get("aistream"):
        found = sorted(_found["aistream"])
        return found[len(found) // 2], "capacity scenario"
    return _find("aistream", upstream, sizes)["streams"], "searched"


def _latencies(sent: dict[str, float], records: dict[str, dict[str, Any]]) -> list[float]:
    """Sent → the upstream closed, for each sample the upstream saw closed by the client (a
    sample that finished on its own first is left out)."""
    out = []
    for tag, at in sent.items():
        record = records.get(tag)
        if record and record["outcome"] == "client_closed" and record["closed_at"] is not None:
            out.append(round((record["closed_at"] - at) * 1000, 3))
    return out


def _overload_run(stack: Stack, sizes: Sizes, streams: int, probe: bool) -> Run:
    """One offered load for the window; with ``probe``, the refusal probe beside it."""
    job = {
        "mode": "overload",
        "connections": streams,
        "spec": asdict(_spec(sizes)),
        "stagger": sizes.overload_warmup,
        "warmup": sizes.overload_warmup,
        "duration": sizes.overload_window,
        # (each client process samples its share, as often together as one would alone)
        "samples": max(1, sizes.overload_samples // sizes.overload_clients),
        "spacing": sizes.overload_spacing * sizes.overload_clients,
        "check": True,
    }
    # (past 1× only: below it the probe's generations would be admitted, each a start and a
    # cancel more for the servers than the load of the 1× that the 2× is judged against)
    probe_job = None
    if probe:
        probe_job = {
            "mode": "probe",
            "connections": sizes.overload_probe_connections,
            "spec": job["spec"],
            "warmup": job["warmup"],
            "duration": job["duration"],
            "spacing": sizes.overload_probe_spacing,
            "check": True,
        }
    stack.reset()
    shed = "aistream_bridge_frames_refused_total"
    with Load(stack, "aistream", job, sizes.overload_clients, probe_job) as load:
        load.send("go")
        time.sleep(job["warmup"])
        load.meter.start()
        shed_before = stack.bridge_metric(shed, reason="shed")
        result = load.results(120 + sizes.overload_window)
        probed = load.probe_result(30)
        usage = load.meter.stop()
        shed_after = stack.bridge_metric(shed, reason="shed")
    # every upstream must be closed once the clients have gone: give them up to 30 s
    deadline = time.monotonic() + 30
    while True:
        records = stack.records()
        open_ = [r for r in records if r["outcome"] == "in_progress"]
        if not open_ or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    by_tag = {r["tag"]: r for r in records}
    cancels = _latencies(result["cancels"], by_tag)
    closes = _latencies(result["closes"], by_tag)
    refused = result["outcomes"].get("too_many_requests", 0)
    admitted = result["admitted"]
    if probed is not None:  # (the bridge's counter counts the probe's refusals too)
        refused_by_probe = probed["outcomes"].get("too_many_requests", 0)
        shed_after = None if shed_after is None else shed_after - refused_by_probe
    # which hop refused: the bridge itself (it heard the generator had no room, or its own
    # loop had none) or the generator, a round trip later (over the window, about: the counter
    # is read as the window opens and once the clients are done)
    by_bridge = None
    if shed_before is not None and shed_after is not None:
        by_bridge = min(refused, round(shed_after - shed_before))
    return {
        "offered": streams,
        "admitted": admitted,
        "refused": refused,
        "refused_share": round(refused / max(1, admitted + refused), 3),
        "refused_by_generator": None if by_bridge is None else refused - by_bridge,
        "refusal_p50_ms": percentile(result["refused_ms"], 50),
        "refusal_p99_ms": percentile(result["refused_ms"], 99),
        "ttft_p50_ms": percentile(result["ttft_ms"], 50),
        "ttft_p99_ms": percentile(result["ttft_ms"], 99),
        "gap_p50_ms": percentile(result["gaps_ms"], 50),
        "gap_p99_ms": percentile(result["gaps_ms"], 99),
        "cancel_p50_ms": percentile(cancels, 50),
        "cancel_p99_ms": percentile(cancels, 99),
        "close_p50_ms": percentile(closes, 50),
        "close_p99_ms": percentile(closes, 99),
        "cancel_samples": len(cancels),
        "close_samples": len(closes),
        "tokens_per_s": round(result["tokens"] / sizes.overload_window, 1),
        "client_lag_p50_ms": percentile(result["client_lags_ms"], 50),
        "client_lag_p99_ms": percentile(result["client_lags_ms"], 99),
        **_probed(probed),
        "left_open": len(open_),
        "crashed": [n for n, child in stack.children.items() if child.popen.poll() is not None],
        "errors": sum(result["errors"].values()),
        "error_codes": result["errors"],
        "lifecycle_violations": result["violations"] + (probed or {}).get("violations", []),
        "processes": usage,
        **_split_ttft(stack, result["timeline"]),
    }


def _probed(probed: dict[str, Any] | None) -> dict[str, Any]:
    """The refusal probe's figures (None where there was no probe)."""
    if probed is None:
        return dict.fromkeys(_PROBE_METRICS)
    return {
        "probe_refused": probed["outcomes"].get("too_many_requests", 0),
        "probe_admitted": probed["admitted"],
        "probe_refusal_p50_ms": percentile(probed["refused_ms"], 50),
        "probe_refusal_p99_ms": percentile(probed["refused_ms"], 99),
        "probe_lag_p99_ms": percentile(probed["client_lags_ms"], 99),
        "probe_errors": sum(probed["errors"].values()),
    }


_PROBE_METRICS = (
    "probe_refused",
    "probe_admitted",
    "probe_refusal_p50_ms",
    "probe_refusal_p99_ms",
    "probe_lag_p99_ms",
    "probe_errors",
)

_OVERLOAD_METRICS = (
    "offered",
    "admitted",
    "refused",
    "refused_share",
    "refused_by_generator",
    "refusal_p50_ms",
    "refusal_p99_ms",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "gap_p50_ms",
    "gap_p99_ms",
    "request_path_p50_ms",
    "request_path_p99_ms",
    "response_path_p50_ms",
    "response_path_p99_ms",
    "cancel_p50_ms",
    "cancel_p99_ms",
    "close_p50_ms",
    "close_p99_ms",
    "cancel_samples",
    "close_samples",
    "tokens_per_s",
    "client_lag_p50_ms",
    "client_lag_p99_ms",
    *_PROBE_METRICS,
    "left_open",
    "errors",
)


def overload(sizes: Sizes, repeat: int, upstream: str) -> dict[str, Any]:
    """``overload_factors`` × aistream's capacity offered, each factor ``repeat`` times."""
    cap, source = _capacity_for_overload(sizes, upstream)
    if cap <= 0:
        raise RuntimeError("capacity 0: nothing to overload")
    _log(f"overload: capacity {cap} streams ({source})")
    factors = [str(f) for f in sizes.overload_factors]

    def say(run: Run) -> str:
        return (
            f"{run['offered']} offered: admitted {run['admitted']}, refused {run['refused']} "
            f"({run['refused_by_generator']} by the generator; p99 {run['refusal_p99_ms']} ms, "
            f"probe's p99 {run['probe_refusal_p99_ms']} ms); "
            f"ttft p99 {run['ttft_p99_ms']} ms, gap p99 {run['gap_p99_ms']} ms; "
            f"cancel p99 {run['cancel_p99_ms']} ms, close p99 "
            f"{run['close_p99_ms']} ms; client lag p99 {run['client_lag_p99_ms']} ms; "
            f"left open {run['left_open']}, errors {run['errors']}"
        )

    env = dict(_ENV)
    if sizes.overload_max_generations:
        env["AISTREAM_MAX_GENERATIONS"] = str(sizes.overload_max_generations)

    def measure(factor: str) -> Run:
        # A stack of its own for every run: what a load taught the last one (its limit) is not
        # carried into the next
        with Stack(("aistream",), upstream, env, sizes.quiet_patience) as stack:
            return _overload_run(
                stack, sizes, max(1, round(float(factor) * cap)), probe=float(factor) > 1
            )

    runs = repeated("overload", repeat, factors, measure, say, sizes.settle)
    return {
        "params": {
            "capacity": cap,
            "capacity_source": source,
            "factors": list(sizes.overload_factors),
            "rate": sizes.rate,
            "stream_tokens": sizes.capacity_tokens,
            "warmup_s": sizes.overload_warmup,
            "window_s": sizes.overload_window,
            "samples": sizes.overload_samples,
            "spacing_s": sizes.overload_spacing,
            "clients": sizes.overload_clients,
            "probe_connections": sizes.overload_probe_connections,
            "probe_spacing_s": sizes.overload_probe_spacing,
        },
        "factors": runs.figures(_OVERLOAD_METRICS),
        "processes": runs.processes(),
        "crashed": {f: [r["crashed"] for r in rs] for f, rs in runs.by_variant.items()},
        "lifecycle_violations": {
            f: [v for r in rs for v in r["lifecycle_violations"]]
            for f, rs in runs.by_variant.items()
        },
        "error_codes": {f: [r["error_codes"] for r in rs] for f, rs in runs.by_variant.items()},
    }


SCENARIOS: dict[str, Callable[[Sizes, int, str], dict[str, Any]]] = {
    "capacity": capacity,
    "overload": overload,
}
