"""Soak: a mixed, faulty workload for N minutes against real processes, then the books are checked.

    python -m bench.soak --minutes 10            the run whose figures are in docs/operations.md
    python -m bench.soak --seconds 8 --workers 6 the short version the test suite runs

It starts the fake upstream, a generator and a bridge as separate processes on loopback. Workers
open WebSockets and loop over a mix of actions: completions, cancels, sockets closed mid-stream,
slow readers that stop reading, and upstream faults (5xx, 429, resets, stalls, truncation,
malformed SSE). Every conversation is checked with the product's own lifecycle checker. At the
end it reports requests by outcome, lifecycle violations (must be 0), upstream responses still in
progress once the load stopped and upstream connections still open once the generator stopped
(both must be 0), and the RSS of each process at the start and the end. Exit code 1 if any of the
"must be 0" figures is not.

Throughout, it scrapes the bridge's ``/metrics`` (the generator's page appended, as with
``aistream up``) every ``--scrape-every`` seconds, reports the figures over time (``metrics``:
rates, what is open, TTFT and cancel → close quantiles, RSS) and with ``--plot FILE`` draws
them (docs/metrics-soak.png: what healthy looks like).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import math
import random
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from aistream.children import Child, ChildError
from aistream.lifecycle import Lifecycle, LifecycleViolation
from aistream.metrics import scrape

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = ("ai:done", "ai:error")

# Knobs of the processes under soak: short limits so faults resolve quickly.
ENV = {
    "AISTREAM_LOG_LEVEL": "WARNING",
    "AISTREAM_UPSTREAM_MAX_RETRIES": "0",
    "AISTREAM_FIRST_TOKEN_TIMEOUT": "2",
    "AISTREAM_STALL_TIMEOUT": "1",
    "AISTREAM_DEADLINE": "20",
    "AISTREAM_WS_SEND_BUFFER": "65536",
    # one batch from the generator must fit the bridge's buffer, as the defaults ensure
    "AISTREAM_STREAM_BUFFER_BYTES": "32768",
    "AISTREAM_WS_CLOSE_TIMEOUT": "1",
    "AISTREAM_FRAMES_PER_SECOND": "1000",
    "AISTREAM_FRAMES_BURST": "1000",
}

FAULTS = [
    {"status": 500},
    {"status": 429},
    {"status": 400},
    {"tokens": 20, "interval": 0.005, "reset_after": 5},
    {"tokens": 20, "interval": 0.005, "close_after": 5},
    {"tokens": 20, "interval": 0.005, "malformed_after": 5},
    {"tokens": 20, "interval": 0.005, "error_event_after": 5},
    {"tokens": 20, "interval": 0.005, "stall_after": 5},
    {"ttft": 5},
]


def _directive(script: dict[str, Any], text: str = "soak") -> str:
    return "#fake " + json.dumps(script) + "\n" + text


@dataclass
class Books:
    """What happened, added up over every worker."""

    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    violations: list[str] = field(default_factory=list)
    actions: int = 0


class Conversation:
    """One WebSocket connection, its frames checked by the lifecycle checker as they arrive."""

    def __init__(self, ws: ClientConnection, books: Books) -> None:
        self.ws = ws
        self.books = books
        self.lifecycle = Lifecycle(strict=True)
        self._n = 0

    def new_id(self) -> str:
        self._n += 1
        return f"r{self._n}"

    async def generate(self, request_id: str, prompt: str) -> None:
        self.lifecycle.expect(request_id)
        await self.ws.send(
            orjson.dumps(
                {"type": "ai:generate", "requestId": request_id, "prompt": prompt}
            ).decode()
        )

    async def recv(self) -> dict[str, Any]:
        frame: dict[str, Any] = orjson.loads(await self.ws.recv())
        try:
            self.lifecycle.observe(
                frame["type"][3:],
                frame.get("requestId", ""),
                frame.get("seq", 0),
                frame.get("count", 1),
            )
        except LifecycleViolation as exc:
            self.books.violations.append(str(exc))
        return frame

    async def until_end(self, request_id: str) -> dict[str, Any]:
        while True:
            frame = await self.recv()
            if frame["type"] in TERMINAL and frame.get("requestId") == request_id:
                return frame

    async def first_token(self, request_id: str) -> dict[str, Any] | None:
        """Wait for the generation's first token (None), or its terminal frame if it ended
        before one — refused under load (``too_many_requests``) or failed upstream."""
        while True:
            frame = await self.recv()
            if frame.get("requestId") != request_id:
                continue
            if frame["type"] == "ai:token":
                return None
            if frame["type"] in TERMINAL:
                return frame

    def settled(self) -> None:
        """The conversation is over cleanly: nothing may be left running."""
        if self.lifecycle.running:
            self.books.violations.append(f"no terminal event for {self.lifecycle.running}")


def _outcome(frame: dict[str, Any]) -> str:
    return "done" if frame["type"] == "ai:done" else f"error:{frame.get('code')}"


async def _read_slowly(c: Conversation, request_id: str, rng: random.Random) -> str:
    """Stop reading for a few seconds, as a stuck tab would, then read on: the outcome."""
    transport = c.ws.transport
    transport.pause_reading()
    await asyncio.sleep(rng.uniform(2.0, 4.0))
    transport.resume_reading()
    # Cut off: its error frame, then the close (1008) — or, when the pause outlasted the close
    # timeout, the socket is gone (1006). When the socket buffers absorbed it all, the answer
    # simply ends.
    try:
        outcome = "slow_reader:" + _outcome(await c.until_end(request_id))
        if outcome.endswith("slow_consumer"):
            await c.ws.wait_closed()
            outcome += f":close_{c.ws.close_code}"
    except ConnectionClosed:
        outcome = f"slow_reader:dropped:close_{c.ws.close_code}"
    return outcome


async def _act(url: str, books: Books, rng: random.Random, kind: str) -> None:
    """One action of ``kind`` on a fresh connection."""
    async with connect(url, compression=None, max_size=None) as ws:
        c = Conversation(ws, books)
        if kind == "complete":
            rid = c.new_id()
            await c.generate(rid, _directive({"tokens": rng.randint(5, 60), "interval": 0.01}))
            books.outcomes[_outcome(await c.until_end(rid))] += 1
            c.settled()
        elif kind == "burst":  # several interleaved generations on one socket
            ids = [c.new_id() for _ in range(rng.randint(2, 8))]
            for rid in ids:
                await c.generate(rid, _directive({"tokens": rng.randint(5, 40), "interval": 0.005}))
            pending = set(ids)
            while pending:
                frame = await c.recv()
                if frame["type"] in TERMINAL and frame.get("requestId") in pending:
                    pending.discard(frame["requestId"])
                    books.outcomes[_outcome(frame)] += 1
            c.settled()
        elif kind == "cancel":
            rid = c.new_id()
            await c.generate(rid, _directive({"tokens": 10_000, "interval": 0.01}))
            if ended := await c.first_token(rid):
                books.outcomes[_outcome(ended)] += 1
            else:
                await ws.send(orjson.dumps({"type": "ai:cancel", "requestId": rid}).decode())
                books.outcomes[_outcome(await c.until_end(rid))] += 1
            c.settled()
        elif kind == "close":
            rid = c.new_id()
            await c.generate(rid, _directive({"tokens": 10_000, "interval": 0.01}))
            ended = await c.first_token(rid)
            # the socket closes leaving the with block
            books.outcomes[_outcome(ended) if ended else "closed_mid_stream"] += 1
        elif kind == "slow":
            rid = c.new_id()
            # 20 MB as fast as the upstream can: more than the kernel's socket buffers hold
            await c.generate(rid, _directive({"tokens": 20_000, "text": "x" * 1000}))
            if ended := await c.first_token(rid):
                books.outcomes[_outcome(ended)] += 1
                c.settled()
            else:
                books.outcomes[await _read_slowly(c, rid, rng)] += 1
        else:
            rid = c.new_id()
            await c.generate(rid, _directive(rng.choice(FAULTS)))
            books.outcomes[_outcome(await c.until_end(rid))] += 1
            c.settled()
    books.actions += 1


async def _worker(url: str, books: Books, stop_at: float, seed: int) -> None:
    rng = random.Random(seed)
    while time.monotonic() < stop_at:
        kind = rng.choices(
            ["complete", "cancel", "close", "slow", "fault", "burst"], [40, 15, 10, 5, 20, 10]
        )[0]
        try:
            async with asyncio.timeout(30):
                await _act(url, books, rng, kind)
        except (ConnectionClosed, OSError, TimeoutError) as exc:
            books.outcomes[f"client_failure:{kind}:{type(exc).__name__}"] += 1


# --- metrics: the bridge's /metrics (the generator's appended), scraped during the soak -------

_GAUGES = {
    "aistream_bridge_connections_open": "connections_open",
    "aistream_bridge_generations_in_flight": "bridge_in_flight",
    "aistream_generator_generations_in_flight": "generator_in_flight",
    "aistream_upstream_streams_open": "upstream_streams_open",
    "aistream_bridge_process_resident_memory_bytes": "bridge_rss",
    "aistream_generator_process_resident_memory_bytes": "generator_rss",
    "aistream_bridge_slow_consumers_total": "slow_consumers",
    "aistream_bridge_frames_refused_total": "frames_refused",
}
_HISTOGRAMS = {
    "aistream_time_to_first_token_seconds_bucket": "ttft",
    "aistream_cancel_upstream_close_seconds_bucket": "cancel_close",
}


def _read_page(text: str) -> dict[str, Any]:
    """The figures of one scrape: the gauges and counters above (summed over labels),
    generations ended by code, and the two histograms' cumulative buckets (over models)."""
    figures: dict[str, Any] = {"ended": collections.Counter()}
    figures |= {key: collections.Counter() for key in _HISTOGRAMS.values()}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name in _GAUGES:
                figures[_GAUGES[name]] = figures.get(_GAUGES[name], 0.0) + value
            elif name == "aistream_generations_total":
                figures["ended"][labels.get("code") or "done"] += value
            elif name in _HISTOGRAMS:
                figures[_HISTOGRAMS[name]][float(labels["le"])] += value
    return figures


def _quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float | None:
    """``histogram_quantile`` over what was observed between two scrapes (None: nothing)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return None


def _series(scrapes: list[tuple[float, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per interval between two scrapes: rates, gauges, latency quantiles, RSS."""
    rows = []
    start = scrapes[0][0] if scrapes else 0.0
    for (t0, a), (t1, b) in itertools.pairwise(scrapes):
        dt = max(t1 - t0, 1e-9)
        ended = {code: (n - a["ended"].get(code, 0.0)) / dt for code, n in b["ended"].items()}

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 2)

        rows.append(
            {
                "t_s": round(t1 - start, 1),
                "done_per_s": round(ended.get("done", 0.0), 2),
                "cancelled_per_s": round(ended.get("cancelled", 0.0), 2),
                "errors_per_s": round(
                    sum(v for k, v in ended.items() if k not in ("done", "cancelled")), 2
                ),
                "slow_consumers_per_s": round(
                    (b.get("slow_consumers", 0.0) - a.get("slow_consumers", 0.0)) / dt, 2
                ),
                "frames_refused_per_s": round(
                    (b.get("frames_refused", 0.0) - a.get("frames_refused", 0.0)) / dt, 2
                ),
                **{
                    key: b.get(key, 0.0)
                    for key in (
                        "connections_open",
                        "bridge_in_flight",
                        "generator_in_flight",
                        "upstream_streams_open",
                    )
                },
                "ttft_p50_ms": ms(_quantile(0.5, a["ttft"], b["ttft"])),
                "ttft_p99_ms": ms(_quantile(0.99, a["ttft"], b["ttft"])),
                "cancel_close_p99_ms": ms(_quantile(0.99, a["cancel_close"], b["cancel_close"])),
                "bridge_rss_mb": round(b.get("bridge_rss", 0.0) / 1e6, 1),
                "generator_rss_mb": round(b.get("generator_rss", 0.0) / 1e6, 1),
            }
        )
    return rows


def plot_metrics(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Draw the figures scraped over a soak: what healthy looks like (docs/operations.md)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [row["t_s"] for row in rows]
    fig, axes = plt.subplots(4, 1, figsize=(9, 11), sharex=True)
    panels: list[tuple[str, list[tuple[str, str]], bool]] = [
        (
            "generations ended per second",
            [
                ("done_per_s", "done"),
                ("cancelled_per_s", "cancelled"),
                ("errors_per_s", "errors (faults on purpose)"),
                ("slow_consumers_per_s", "slow consumers cut off"),
            ],
            False,
        ),
        (
            "open now",
            [
                ("connections_open", "bridge: connections"),
                ("bridge_in_flight", "bridge: generations in flight"),
                ("generator_in_flight", "generator: generations in flight"),
                ("upstream_streams_open", "generator: upstream streams open"),
            ],
            False,
        ),
        (
            "milliseconds (log)",
            [
                ("ttft_p50_ms", "time to first token p50"),
                ("ttft_p99_ms", "time to first token p99"),
                ("cancel_close_p99_ms", "cancel → upstream closed p99"),
            ],
            True,
        ),
        (
            "resident memory, MB",
            [("bridge_rss_mb", "bridge"), ("generator_rss_mb", "generator")],
            False,
        ),
    ]
    for ax, (label, lines, log) in zip(axes, panels, strict=True):
        for key, name in lines:
            ax.plot(t, [row[key] for row in rows], label=name, linewidth=1.2)
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel("seconds into the soak (from scrapes of the bridge's /metrics)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- processes --------------------------------------------------------------------------------


def _spawn(name: str, args: list[str], ready: str, env: dict[str, str]) -> Child:
    return Child(
        [sys.executable, *args], ready, name=name, env={**ENV, **env}, cwd=ROOT, timeout=60
    )


def _fake_stats(base_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/_fake/stats", timeout=5) as r:
        stats: dict[str, Any] = json.loads(r.read())
    return stats


async def _settle(base_url: str, key: str, seconds: float = 5.0) -> int:
    """Wait (up to ``seconds``) for the fake upstream's ``key`` figure to reach 0; return it."""
    deadline = time.monotonic() + seconds
    while True:
        value = int(_fake_stats(base_url)[key])
        if value == 0 or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


def _rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 1e6


async def soak(
    duration: float, workers: int, seed: int, scrape_every: float = 5.0
) -> dict[str, Any]:
    """Run the soak for ``duration`` seconds and return the report (with the figures of the
    bridge's /metrics, scraped every ``scrape_every`` seconds)."""
    started: list[Child] = []
    try:
        fake = _spawn(
            "fake upstream",
            ["-m", "aistream.testing.fake_upstream", "--port", "0"],
            r"(http://\S+/v1)",
            {},
        )
        started.append(fake)
        base_url = fake.ready[1]
        upstream_env = {"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "soak"}
        generator = _spawn(
            "generator",
            ["-m", "aistream", "generator", "--port", "0", "--metrics-port", "0"],
            r"listening on (\S+:\d+) .*metrics on (http://\S+)",
            upstream_env,
        )
        started.append(generator)
        bridge = _spawn(
            "bridge",
            ["-m", "aistream", "bridge", "--port", "0", "--generator", generator.ready[1]],
            r"ws://(\S+/ws)",
            # the bridge's /metrics appends the generator's: one scrape sees both
            {"AISTREAM_GENERATOR_METRICS_URL": generator.ready[2]},
        )
    except BaseException:
        for child in reversed(started):
            child.kill()
        raise
    url = "ws://" + bridge.ready[1]
    metrics_url = "http://" + bridge.ready[1].removesuffix("/ws") + "/metrics"
    scrapes: list[tuple[float, dict[str, Any]]] = []
    failed_scrapes = 0

    async def scrape_metrics() -> None:
        nonlocal failed_scrapes
        try:
            page = (await scrape(metrics_url)).decode()
        except (OSError, TimeoutError, ValueError):
            failed_scrapes += 1
            return
        scrapes.append((time.monotonic(), _read_page(page)))

    pids = {"generator": generator.popen.pid, "bridge": bridge.popen.pid}
    books = Books()
    try:
        # a short warm-up so start-up allocations are not counted as growth
        await asyncio.gather(
            *(_worker(url, Books(), time.monotonic() + 2, seed + i) for i in range(2))
        )
        rss_start = {name: _rss_mb(pid) for name, pid in pids.items()}
        stop_at = time.monotonic() + duration
        samples: list[dict[str, float]] = []

        async def sample_rss() -> None:
            while time.monotonic() < stop_at:
                await asyncio.sleep(min(30.0, max(duration / 10, 1.0)))
                samples.append({name: round(_rss_mb(pid), 1) for name, pid in pids.items()})

        async def scrape_every_while() -> None:
            while time.monotonic() < stop_at:
                await scrape_metrics()
                await asyncio.sleep(scrape_every)

        sampler = asyncio.create_task(sample_rss())
        scraper = asyncio.create_task(scrape_every_while())
        await asyncio.gather(
            *(_worker(url, books, stop_at, seed + 100 + i) for i in range(workers))
        )
        sampler.cancel()
        await scraper
        still_active = await _settle(base_url, "active")
        rss_end = {name: _rss_mb(pid) for name, pid in pids.items()}
        await scrape_metrics()  # after the load: every open gauge back to 0
    finally:
        exit_codes = {"bridge": bridge.stop(30), "generator": generator.stop(30)}
    left_open = await _settle(base_url, "connections")
    fake.stop(30)
    return {
        "duration_s": duration,
        "workers": workers,
        "actions": books.actions,
        "requests_by_outcome": dict(sorted(books.outcomes.items())),
        "lifecycle_violations": len(books.violations),
        "violation_examples": books.violations[:10],
        "upstream_responses_in_progress_after_load": still_active,
        "upstream_connections_open_after_stop": left_open,
        "rss_mb": {
            name: {"start": round(rss_start[name], 1), "end": round(rss_end[name], 1)}
            for name in pids
        },
        "rss_mb_samples": samples,
        "exit_codes": exit_codes,
        "metrics_after_load": {
            key: scrapes[-1][1].get(key, 0.0) if scrapes else None
            for key in ("connections_open", "generator_in_flight", "upstream_streams_open")
        },
        "metrics_scrapes_failed": failed_scrapes,
        "metrics": _series(scrapes),
    }


def main() -> int:
    """Command line: run, print the report, write it as JSON; 1 if a must-be-zero figure is not."""
    parser = argparse.ArgumentParser(description="aistream soak test")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--minutes", type=float)
    group.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workers", type=int, default=24)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--scrape-every", type=float, default=5.0, help="seconds between scrapes of /metrics"
    )
    parser.add_argument(
        "--plot", type=Path, help="draw the scraped figures over time (PNG), e.g. docs/…png"
    )
    args = parser.parse_args()
    duration = args.minutes * 60 if args.minutes is not None else args.seconds
    try:
        report = asyncio.run(soak(duration, args.workers, args.seed, args.scrape_every))
    except ChildError as exc:
        raise SystemExit(f"soak: {exc}") from None
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.plot:
        title = (
            f"aistream soak: {duration:.0f} s, {args.workers} workers, "
            f"{report['actions']:,} actions (a mix of completions, cancels, closes, slow "
            "readers, upstream faults)"
        )
        plot_metrics(report["metrics"], args.plot, title)
        print(f"plot written to {args.plot}")
    bad = (
        report["lifecycle_violations"]
        or report["upstream_responses_in_progress_after_load"]
        or report["upstream_connections_open_after_stop"]
        or any(report["exit_codes"].values())
    )
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
