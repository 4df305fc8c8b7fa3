"""Resume: what the log costs the hot path, memory per retained generation, and 1,000 clients
dropping and resuming at once (issue 19).

* **Cost** — ``resume_streams`` closed-loop 30 tokens/s streams (as the TTFT scenario), plain
  and resumable, each run on fresh servers, alternated: CPU of the generator and the bridge per
  token delivered, TTFT p99, errors (a gap in ``seq`` counts). The log is written as the events
  are made, so its cost is per token.
* **Memory** — the generator's RSS after each of those runs (every resumable generation ended in
  the window is retained, ``resume_retention`` being 15 minutes): (resumable − plain) over the
  generations retained.
* **Cancel** — ``ai:cancel`` → upstream closed for a sample of ``resume_streams`` live streams
  (as the cancel scenario), plain, resumable and resumable with Redis.
* **Burst** — ``resume_streams`` long resumable streams live; then every client drops its socket
  at once (no close frame) and resumes on a new connection from the last position it holds:
  time from each ``ai:resume`` sent to its first event, p50/p99; the first event must be the next
  position (else ``seq_gap``).

The burst is also run against a bare ``websockets`` server that resumes from its own memory
(``bench/baselines.py``): the ceiling of the hop for the same drop-and-resume, in the same run.
Each is run with the log in the generator's memory and with Redis (``redis``: a redis-server of
the stack's own; the log copied there and resumes served from it — Redis's CPU per token and its
memory per retained generation are reported too).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from bench.scenarios import Load, Run, Sizes, _cancel_run, _run_loop, repeated
from bench.spec import StreamSpec
from bench.stack import Stack
from bench.stats import percentile

__all__ = ["SCENARIOS"]

_ENV = {"AISTREAM_RESUME_GRACE": "60", "AISTREAM_MAX_GENERATIONS_PER_CLIENT": "0"}
"""A minute of grace; and no per-client share: every load client connects from 127.0.0.1, and a
dropped connection's generations count against it until the bridge has seen it go."""


def _loop(sizes: Sizes, upstream: str, resumable: bool, redis: bool = False) -> Run:
    spec = StreamSpec(ttft=0.0, interval=1 / sizes.rate, tokens=sizes.stream_tokens)
    job = {
        "mode": "loop",
        "connections": sizes.resume_streams,
        "spec": asdict(spec),
        "stagger": sizes.warmup,
        "warmup": sizes.warmup,
        "duration": sizes.window,
        "resumable": resumable,
    }
    with Stack(("aistream",), upstream, _ENV, sizes.quiet_patience, redis=redis) as stack:
        run = _run_loop(stack, "aistream", job, sizes.window)
        time.sleep(sizes.settle)
        run["generator_rss_mb"] = round(stack.processes()["generator"].memory_info().rss / 2**20, 1)
        run["generations"] = len(stack.records())
        run["redis_bytes"] = stack.redis_memory()
    for name in ("generator", "bridge", "redis"):
        cpu = run["processes"].get(name, {}).get("cpu_pct")
        tokens = run["tokens_per_s"]
        run[f"{name}_cpu_us_per_token"] = (
            None if cpu is None or not tokens else round(cpu / 100 * 1e6 / tokens, 2)
        )
    return run


def _cancel(sizes: Sizes, upstream: str, variant: str) -> Run:
    """``ai:cancel`` → upstream closed among ``resume_streams`` live streams (the cancel
    scenario's sample), plain, resumable, or resumable with Redis."""
    with Stack(("aistream",), upstream, _ENV, sizes.quiet_patience, redis=variant == "redis") as s:
        return _cancel_run(s, "aistream", "cancel", sizes.resume_streams, sizes, variant != "plain")


def _burst(sizes: Sizes, upstream: str, variant: str) -> Run:
    """``variant``: ``memory``, ``redis``, or ``bare_ws`` (a bare websockets server that resumes
    from its own memory: the hop's ceiling for the same burst)."""
    path = "bare_ws" if variant == "bare_ws" else "aistream"
    spec = StreamSpec(ttft=0.0, interval=1 / sizes.rate, tokens=1_000_000)
    job = {
        "mode": "resume",
        "connections": sizes.resume_streams,
        "spec": asdict(spec),
        "ramp": sizes.cancel_ramp,
        "live_timeout": 60.0,
        "resumable": True,
    }
    with (
        Stack((path,), upstream, _ENV, sizes.quiet_patience, redis=variant == "redis") as stack,
        Load(stack, path, job) as load,
    ):
        live = sum(c.event("live", 240)["live"] for c in load.clients)
        load.meter.start()
        load.send("go")
        result = load.results(300)
        usage = load.meter.stop()
    resumed = result["resumed_ms"]
    return {
        "live": live,
        "resumes": result["resumes"],
        "resumed": len(resumed),
        "first_event_p50_ms": percentile(resumed, 50),
        "first_event_p99_ms": percentile(resumed, 99),
        "first_event_max_ms": max(resumed) if resumed else None,
        "errors": sum(result["errors"].values()),
        "error_codes": result["errors"],
        "processes": usage,
    }


_COST = (
    "ttft_p50_ms",
    "ttft_p99_ms",
    "tokens_per_s",
    "generator_cpu_us_per_token",
    "bridge_cpu_us_per_token",
    "redis_cpu_us_per_token",
    "generator_rss_mb",
    "redis_bytes",
    "generations",
    "errors",
)


def resume(sizes: Sizes, repeat: int, upstream: str) -> dict[str, Any]:
    """The log's cost (plain vs resumable, alternated), memory per retained generation, and the
    drop-and-resume burst."""
    cost = repeated(
        f"resume cost c={sizes.resume_streams}",
        repeat,
        ("plain", "resumable", "redis"),
        lambda variant: _loop(sizes, upstream, variant != "plain", variant == "redis"),
        lambda run: (
            f"ttft p99 {run['ttft_p99_ms']} ms, {run['tokens_per_s']} tokens/s, generator "
            f"{run['generator_cpu_us_per_token']} µs/token, bridge "
            f"{run['bridge_cpu_us_per_token']} µs/token, redis "
            f"{run['redis_cpu_us_per_token']} µs/token, generator RSS "
            f"{run['generator_rss_mb']} MB, redis {run['redis_bytes']} B, errors {run['errors']}"
        ),
        sizes.settle,
    )
    per_generation = []
    for plain, resumable in zip(cost["plain"], cost["resumable"], strict=True):
        if resumable["generations"]:
            grown = (resumable["generator_rss_mb"] - plain["generator_rss_mb"]) * 2**20
            per_generation.append(round(grown / resumable["generations"]))
    redis_per_generation = [
        round(run["redis_bytes"] / run["generations"])
        for run in cost["redis"]
        if run["generations"] and run["redis_bytes"] is not None
    ]
    cancels = repeated(
        f"resume cancel c={sizes.resume_streams}",
        repeat,
        ("plain", "resumable", "redis"),
        lambda variant: _cancel(sizes, upstream, variant),
        lambda run: (
            f"p50 {run['p50_ms']} p99 {run['p99_ms']} ms, live {run['live_streams']}, "
            f"not closed {run['not_closed']}"
        ),
        sizes.settle,
    )
    burst = repeated(
        f"resume burst c={sizes.resume_streams}",
        repeat,
        ("memory", "redis", "bare_ws"),
        lambda variant: _burst(sizes, upstream, variant),
        lambda run: (
            f"{run['resumed']}/{run['resumes']} resumed, first event p50 "
            f"{run['first_event_p50_ms']} p99 {run['first_event_p99_ms']} ms, errors "
            f"{run['errors']}"
        ),
        sizes.settle,
    )
    return {
        "params": {"streams": sizes.resume_streams, "rate": sizes.rate},
        "cost": cost.figures(_COST),
        "cost_processes": cost.processes(),
        "bytes_per_retained_generation": per_generation,
        "redis_bytes_per_retained_generation": redis_per_generation,
        "cancel": cancels.figures(("p50_ms", "p99_ms", "max_ms", "not_closed", "samples")),
        "burst": burst.figures(
            (
                "live",
                "resumes",
                "resumed",
                "first_event_p50_ms",
                "first_event_p99_ms",
                "first_event_max_ms",
                "errors",
            )
        ),
        "burst_error_codes": {
            variant: [r["error_codes"] for r in runs] for variant, runs in burst.by_variant.items()
        },
    }


SCENARIOS = {"resume": resume}
