"""The six scenarios of the harness; each returns its figures, aggregated over repeats.

Every scenario starts its own servers (``bench.stack``), runs its load clients as separate
processes (``bench.client``), meters every process's CPU and RSS over the measuring window
(``bench.procs.Meter``) and reports each figure as the median with min/max over ``repeat`` runs,
aistream next to the baselines measured in the same run. ``repeated`` is the one loop that runs
every variant of a scenario ``repeat`` times and ``Runs`` aggregates what it measured.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from bench.procs import Child, Meter, wait_quiet
from bench.spec import StreamSpec
from bench.stack import Stack
from bench.stats import Agg, aggregate, percentile

__all__ = ["FULL", "QUICK", "SCENARIOS", "Sizes"]


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is (``--quick`` uses small ones)."""

    levels: tuple[int, ...] = (1, 100, 1000)
    """Concurrent streams of the TTFT scenario."""
    rate: float = 30.0
    """Tokens per second of each stream (TTFT and cancel scenarios)."""
    stream_tokens: int = 90
    """Tokens per stream in the TTFT scenario (90 at 30/s: 3 s answers)."""
    warmup: float = 3.0
    """Seconds before the measuring window (streams start staggered over this time)."""
    window: float = 4.0
    """Seconds of the measuring window."""
    firehose_clients: int = 50
    firehose_tokens: int = 2000
    firehose_warmup: float = 1.0
    firehose_window: float = 4.0
    cancel_levels: tuple[int, ...] = (100, 1000)
    """Live streams of the cancel scenario (the target is about 1,000; 100 shows the latency
    of an unsaturated generator)."""
    cancel_samples: int = 200
    cancel_spacing: float = 0.02
    """Seconds between two sampled cancels."""
    cancel_ramp: float = 5.0
    """Seconds over which the live streams are started."""
    idle_connections: int = 10_000
    slow_clients: int = 20
    slow_hold: float = 25.0
    """Seconds the slow readers hold their connections after they stopped reading."""
    settle: float = 1.0
    """Seconds between runs, for the servers to finish tearing the last one down."""
    quiet_patience: float = 15.0
    """Before a run, how long to wait for other processes on the machine to quieten (0: no
    wait; what they used is reported either way)."""
    reasoning_streams: int = 1000
    """Concurrent streams of the reasoning scenario (paced at ``rate``, as in the TTFT one)."""
    reasoning_tokens: int = 200
    """Reasoning tokens before each answer of the reasoning scenario."""
    reasoning_answer_tokens: int = 100
    """Answer tokens after the reasoning (the plain baseline streams both counts as answer)."""
    reasoning_field: str = "reasoning_content"
    """The delta key of the upstream's reasoning: ``reasoning_content`` or ``reasoning``
    (vLLM's)."""
    reasoning_warmup: float = 10.0
    """Seconds before the window: one whole answer (300 tokens at 30/s), over which the streams
    start staggered, so every one is live and they are spread over every phase of an answer."""
    reasoning_window: float = 15.0
    """Seconds of the window. Only requests sent in it are timed, and an answer's first token
    comes ``reasoning_tokens / rate`` s (6.7 s) after it was sent: 15 s leaves half the window's
    requests an answer token to time."""
    capacity: int = 0
    """Streams aistream carries (``--capacity``): the overload scenario's 1×; 0 = the capacity
    scenario's of the same run, or searched."""
    capacity_start: int = 100
    """Streams of the capacity search's first probe (then doubled until one fails)."""
    capacity_max: int = 20_000
    capacity_precision: float = 0.1
    """The search stops when the carried and the failed probe are within this fraction."""
    capacity_ttft_p99_ms: float = 50.0
    """A probe carries its streams with TTFT p99 at most this, and no error."""
    capacity_tokens: int = 90
    """Tokens per stream of the capacity and overload scenarios (3 s at 30/s)."""
    capacity_warmup: float = 3.0
    capacity_window: float = 4.0
    overload_factors: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0)
    """Offered load, in multiples of the capacity."""
    overload_warmup: float = 4.0
    overload_window: float = 8.0
    overload_samples: int = 300
    """Live streams cancelled or closed (alternately) during the window, one every
    ``overload_spacing`` s."""
    overload_spacing: float = 0.025
    resume_streams: int = 1000
    """Streams of the resume scenario (its cost, its memory, its burst of resumes)."""
    overload_clients: int = 1
    """Load client processes of the overload scenario (the sampled cancels and closes split
    between them). One reading every socket and checking every frame's lifecycle is itself late
    by ~5 ms p99 at 2× (its own loop lag is reported beside the figures it times); two were
    late by ~3.5 ms, but the machine's two cores then had one process more to run, and the
    refusal and cancel figures came out no better (docs/performance.md)."""
    overload_probe_connections: int = 8
    """Connections of the refusal probe, run beside the load past 1×."""
    overload_probe_spacing: float = 0.025
    """The probe asks for a generation every this many seconds, on each of its connections in
    turn (each then sends a frame or two every ``connections × spacing`` s: inside the bridge's
    frame rate)."""
    overload_max_generations: int = 0
    """The generator's ``max_generations`` in the overload scenario (0: its default). The quick
    run sets it to its capacity, so that its small offered loads are refused too."""


SLOW_CLIENT_RCVBUF = 256 * 1024
"""SO_RCVBUF of the slow readers' sockets (the kernel's autotuning would grow it to 32 MB here,
which only delays when the bridge can tell that a reader stopped)."""

FULL = Sizes()
QUICK = Sizes(
    levels=(1, 10, 50),
    stream_tokens=15,
    warmup=0.5,
    window=1.5,
    firehose_clients=5,
    firehose_tokens=500,
    firehose_warmup=0.3,
    firehose_window=1.0,
    cancel_levels=(50,),
    cancel_samples=10,
    cancel_spacing=0.02,
    cancel_ramp=0.2,
    idle_connections=200,
    slow_clients=2,
    slow_hold=1.5,
    settle=0.3,
    quiet_patience=0.0,
    reasoning_streams=50,
    reasoning_tokens=20,
    reasoning_answer_tokens=10,
    reasoning_warmup=0.5,
    reasoning_window=1.5,
    capacity_start=4,
    capacity_max=16,
    capacity_precision=0.5,
    capacity_ttft_p99_ms=1000.0,
    capacity_tokens=15,
    capacity_warmup=0.3,
    capacity_window=0.8,
    overload_factors=(1.0, 2.0),
    overload_warmup=0.3,
    overload_window=1.2,
    overload_samples=6,
    overload_spacing=0.1,
    overload_probe_connections=4,
    overload_max_generations=16,
    resume_streams=20,
)


# --- running load clients ---------------------------------------------------------------------


def _client_processes(path: str, connections: int) -> int:
    """Client processes for a path: the SDK and grpc.aio clients saturate one core sooner."""
    if path in ("direct", "bare_grpc") and connections >= 100:
        return 2
    if connections >= 5000:
        return 2
    return 1


def _merge(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {"ttft_ms": [], "reasoning_ms": [], "gaps_ms": [], "errors": {}}
    merged["sent"], merged["timeline"] = {}, {}
    for r in results:
        merged["timeline"].update(r.get("timeline", {}))
    for key in ("tokens", "reasoning", "messages", "completed", "live"):
        merged[key] = sum(r.get(key, 0) for r in results)
    merged["cancels"], merged["closes"], merged["refused_ms"] = {}, {}, []
    merged["outcomes"], merged["violations"], merged["admitted"] = {}, [], 0
    merged["client_lags_ms"], merged["resumed_ms"], merged["resumes"] = [], [], 0
    for r in results:
        merged["ttft_ms"] += r["ttft_ms"]
        merged["reasoning_ms"] += r.get("reasoning_ms", [])
        merged["gaps_ms"] += r["gaps_ms"]
        merged["sent"].update(r.get("sent", {}))
        merged["cancels"].update(r.get("cancels", {}))
        merged["closes"].update(r.get("closes", {}))
        merged["refused_ms"] += r.get("refused_ms", [])
        merged["violations"] += r.get("violations", [])
        merged["admitted"] += r.get("admitted", 0)
        merged["client_lags_ms"] += r.get("client_lags_ms", [])
        merged["resumed_ms"] += r.get("resumed_ms", [])
        merged["resumes"] += r.get("resumes", 0)
        for code, n in r["errors"].items():
            merged["errors"][code] = merged["errors"].get(code, 0) + n
        for outcome, n in r.get("outcomes", {}).items():
            merged["outcomes"][outcome] = merged["outcomes"].get(outcome, 0) + n
    return merged


class Load:
    """Load client processes sharing one job, its connections split between them; with
    ``probe``, one more client process running that job (``bench.client``'s ``probe`` mode),
    its result kept apart."""

    def __init__(
        self,
        stack: Stack,
        path: str,
        job: dict[str, Any],
        procs: int = 0,
        probe: dict[str, Any] | None = None,
    ) -> None:
        total = job["connections"]
        procs = procs or _client_processes(path, total)
        self.others_before = wait_quiet(stack.processes(), patience=stack.quiet_patience)
        """What other processes on the machine used just before (% of one core)."""
        self.clients: list[Child] = []
        self.probe: Child | None = None
        try:
            for i in range(procs):
                part = total // procs + (1 if i < total % procs else 0)
                spec = {**stack.target(path), **job, "connections": part, "prefix": f"p{i}c"}
                self.clients.append(_client(f"client{i}", spec))
            if probe is not None:
                self.probe = _client("probe", {**stack.target(path), **probe, "prefix": "probe"})
        except BaseException:
            self.stop()
            raise
        self.meter = Meter({**stack.processes(), **{c.name: c.process for c in self._every()}})

    def _every(self) -> list[Child]:
        """Every client process, the probe too."""
        return [*self.clients, *([self.probe] if self.probe else [])]

    def wait(self, event: str, timeout: float = 120) -> None:
        """Wait until every client printed ``event``."""
        for client in self.clients:
            client.event(event, timeout)

    def send(self, line: str) -> None:
        """Tell every client ``line`` (the probe too)."""
        for client in self._every():
            client.send(line)

    def results(self, timeout: float = 120) -> dict[str, Any]:
        """Every load client's result, merged (not the probe's)."""
        return _merge([c.event("result", timeout) for c in self.clients])

    def probe_result(self, timeout: float = 120) -> dict[str, Any] | None:
        """The probe's result, if there is a probe."""
        return None if self.probe is None else _merge([self.probe.event("result", timeout)])

    def stop(self) -> None:
        """End the client processes."""
        for client in self._every():
            if client.popen.poll() is None:
                with contextlib.suppress(OSError):
                    client.send("exit")
            client.stop(5)

    def __enter__(self) -> Load:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _client(name: str, job: dict[str, Any]) -> Child:
    return Child(name, "bench.client", [orjson.dumps(job).decode()], r'"ready"', timeout=180)


def _split_ttft(stack: Stack, timeline: dict[str, list[float]]) -> dict[str, float | None]:
    """Split each time to the first part at the upstream's own record: request path (client
    sent → upstream received) and response path (upstream wrote the first chunk → client
    received the first part; with no reasoning, the first token)."""
    request, response = [], []
    for record in stack.records():
        times = timeline.get(record["tag"])
        if times is None or record["first_token_at"] is None:
            continue
        request.append((record["received_at"] - times[0]) * 1000)
        response.append((times[1] - record["first_token_at"]) * 1000)
    return {
        "request_path_p50_ms": percentile(request, 50),
        "request_path_p99_ms": percentile(request, 99),
        "response_path_p50_ms": percentile(response, 50),
        "response_path_p99_ms": percentile(response, 99),
    }


def _run_loop(stack: Stack, path: str, job: dict[str, Any], window: float) -> dict[str, Any]:
    stack.reset()
    with Load(stack, path, job) as load:
        load.send("go")
        time.sleep(job["warmup"])  # meter the measuring window only
        load.meter.start()
        result = load.results(120 + window)
        usage = load.meter.stop()
    return {
        "ttft_p50_ms": percentile(result["ttft_ms"], 50),
        "ttft_p99_ms": percentile(result["ttft_ms"], 99),
        "reasoning_p50_ms": percentile(result["reasoning_ms"], 50),
        "reasoning_p99_ms": percentile(result["reasoning_ms"], 99),
        "gap_p50_ms": percentile(result["gaps_ms"], 50),
        "gap_p99_ms": percentile(result["gaps_ms"], 99),
        "tokens_per_s": round(result["tokens"] / window, 1),
        "reasoning_per_s": round(result["reasoning"] / window, 1),
        "parts_per_s": round((result["tokens"] + result["reasoning"]) / window, 1),
        "messages_per_s": round(result["messages"] / window, 1),
        "errors": sum(result["errors"].values()),
        "error_codes": result["errors"],
        "samples": len(result["ttft_ms"]),
        "reasoning_samples": len(result["reasoning_ms"]),
        "processes": usage,
        **(_split_ttft(stack, result["timeline"]) if path in ("aistream", "direct") else {}),
    }


# --- repeats and aggregation ---------------------------------------------------------------------

Run = dict[str, Any]
"""One run's figures (and, under ``processes``, what ``Meter`` measured)."""


def _aggregate_processes(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Agg]]:
    names = sorted({name for r in runs for name in r.get("processes", {})})
    out: dict[str, dict[str, Agg]] = {}
    for name in names:
        if name == "machine":  # what the rest of the machine used meanwhile
            others = [r["processes"]["machine"]["others_pct"] for r in runs]
            none = aggregate([])
            out["other processes"] = {"cpu_pct": aggregate(others), "rss_mb": none}
            continue
        usages = [r["processes"][name] for r in runs if name in r.get("processes", {})]
        out[name] = {
            "cpu_pct": aggregate([u["cpu_pct"] for u in usages]),
            "rss_mb": aggregate([u["rss_mb"] for u in usages]),
        }
    return out


def _differences(
    runs_a: Sequence[dict[str, Any]], runs_b: Sequence[dict[str, Any]], metrics: Sequence[str]
) -> dict[str, Agg]:
    """Per-repeat ``a − b`` of each metric, aggregated (a and b measured in the same repeat)."""
    out = {}
    for m in metrics:
        diffs = [
            None if a.get(m) is None or b.get(m) is None else a[m] - b[m]
            for a, b in zip(runs_a, runs_b, strict=True)
        ]
        out[m] = aggregate(diffs)
    return out


def _log(message: str) -> None:
    print(f"[bench] {message}", flush=True)


@dataclass(frozen=True)
class Runs:
    """The runs of each variant of a scenario, in the order they were measured."""

    by_variant: dict[str, list[Run]]

    def __getitem__(self, variant: str) -> list[Run]:
        return self.by_variant[variant]

    def figures(self, metrics: Sequence[str]) -> dict[str, dict[str, Agg]]:
        """Each metric of each variant: median, min and max over its runs."""
        return {
            v: {m: aggregate([r.get(m) for r in runs]) for m in metrics}
            for v, runs in self.by_variant.items()
        }

    def processes(self) -> dict[str, dict[str, dict[str, Agg]]]:
        """CPU and RSS of each process, per variant, over its runs."""
        return {v: _aggregate_processes(runs) for v, runs in self.by_variant.items()}


def repeated(
    title: str,
    repeat: int,
    variants: Sequence[str],
    measure: Callable[[str], Run],
    say: Callable[[Run], str],
    settle: float = 0.0,
) -> Runs:
    """Measure each variant ``repeat`` times, interleaved (every variant's first run, then every
    one's second, …: a drift of the machine hits them all alike). Each run is logged as
    ``{title} run i/n {variant}: {say(run)}``, then the servers get ``settle`` s to tear it down.
    ``measure`` starts and stops what the run needs; servers shared by every run are the caller's
    (``with Stack(...)`` around this)."""
    runs: dict[str, list[Run]] = {v: [] for v in variants}
    for i in range(repeat):
        for variant in variants:
            run = measure(variant)
            runs[variant].append(run)
            _log(f"{title} run {i + 1}/{repeat} {variant}: {say(run)}")
            time.sleep(settle)
    return Runs(runs)


# --- 1. TTFT added --------------------------------------------------------------------------------

_LATENCY = ("ttft_p50_ms", "ttft_p99_ms", "gap_p50_ms", "gap_p99_ms")
_SPLIT = (
    "request_path_p50_ms",
    "request_path_p99_ms",
    "response_path_p50_ms",
    "response_path_p99_ms",
)
_LOOP_METRICS = (*_LATENCY, *_SPLIT, "tokens_per_s", "messages_per_s", "errors", "samples")


def ttft(sizes: Sizes, repeat: int, upstream: str) -> dict[str, Any]:
    """Closed-loop streams at ``rate`` tokens/s on every path, at each concurrency level."""
    interval = 1 / sizes.rate
    spec = StreamSpec(ttft=0.0, interval=interval, tokens=sizes.stream_tokens)
    paths = ("aistream", "direct", "bare_ws", "bare_grpc")
    levels: dict[str, Any] = {}

    def say(run: Run) -> str:
        return (
            f"ttft p50 {run['ttft_p50_ms']} p99 {run['ttft_p99_ms']} ms, "
            f"{run['tokens_per_s']} tokens/s, errors {run['errors']}"
        )

    with Stack(paths, upstream, quiet_patience=sizes.quiet_patience) as stack:
        for level in sizes.levels:
            job = {
                "mode": "loop",
                "connections": level,
                "spec": asdict(spec),
                "stagger": sizes.warmup,
                "warmup": sizes.warmup,
                "duration": sizes.window,
            }
            runs = repeated(
                f"ttft c={level}",
                repeat,
                paths,
                lambda path, job=job: _run_loop(stack, path, job, sizes.window),
                say,
                sizes.settle,
            )
            levels[str(level)] = {
                "paths": runs.figures(_LOOP_METRICS),
                "added_vs_direct": _differences(runs["aistream"], runs["direct"], _LATENCY),
                "added_vs_bare_ws": _differences(runs["aistream"], runs["bare_ws"], _LATENCY),
                "offered_tokens_per_s": round(level * sizes.rate, 1),
                "processes": runs.processes(),
                "error_codes": [r["error_codes"] for r in runs["aistream"]],
            }
    return {
        "params": {
            "levels": list(sizes.levels),
            "rate": sizes.rate,
            "stream_tokens": sizes.stream_tokens,
            "warmup_s": sizes.warmup,
            "window_s": sizes.window,
            "upstream_ttft_s": 0.0,
        },
        "levels": levels,
    }


# --- 2. Firehose --------------------------------------------------------------------------------


def firehose(sizes: Sizes, repeat: int, upstream: str) -> dict[str, Any]:
    """``firehose_clients`` connections streaming back to back from an unpaced upstream."""
    spec = StreamSpec(ttft=0.0, interval=0.0, tokens=sizes.firehose_tokens)
    paths = ("aistream", "direct", "bare_ws", "bare_grpc")
    job = {
        "mode": "loop",
        "connections": sizes.firehose_clients,
        "spec": asdict(spec),
        "stagger": 0.0,
        "warmup": sizes.firehose_warmup,
        "duration": sizes.firehose_window,
    }
    with Stack(paths, upstream, quiet_patience=sizes.quiet_patience) as stack:
        runs = repeated(
            "firehose",
            repeat,
            paths,
            lambda path: _run_loop(stack, path, job, sizes.firehose_window),
            lambda run: (
                f"{run['tokens_per_s']} tokens/s in {run['messages_per_s']} messages/s, "
                f"errors {run['errors']}"
            ),
            sizes.settle,
        )
    return {
        "params": {
            "clients": sizes.firehose_clients,
            "stream_tokens": sizes.firehose_tokens,
            "window_s": sizes.firehose_window,
        },
        "paths": runs.figures(("tokens_per_s", "messages_per_s", "errors")),
        "processes": runs.processes(),
    }


# --- 3. Cancel ----------------------------------------------------------------------------------


def _cancel_run(
    stack: Stack, path: str, how: str, streams: int, sizes: Sizes, resumable: bool = False
) -> dict[str, Any]:
    spec = StreamSpec(ttft=0.0, interval=1 / sizes.rate, tokens=1_000_000)
    job = {
        "mode": "cancel",
        "how": how,
        "connections": streams,
        "spec": asdict(spec),
        "samples": sizes.cancel_samples,
        "spacing": sizes.cancel_spacing,
        "ramp": sizes.cancel_ramp,
        "live_timeout": 30.0,
        "resumable": resumable,
    }
    stack.reset()
    with Load(stack, path, job) as load:
        live = sum(c.event("live", 240)["live"] for c in load.clients)
        load.meter.start()
        load.send("go")
        result = load.results(300)
        usage = load.meter.stop()
    # a saturated generator may take seconds to close them: wait up to 30 s for every one
    deadline = time.monotonic() + 30
    while True:
        records = {r["tag"]: r for r in stack.records()}
        open_ = [t for t in result["sent"] if (records.get(t) or {}).get("closed_at") is None]
        if not open_ or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    latencies, missing = [], 0
    for tag, sent_at in result["sent"].items():
        record = records.get(tag)
        closed = None if record is None else record["closed_at"]
        if closed is None:
            missing += 1
        else:
            latencies.append(round((closed - sent_at) * 1000, 3))
    return {
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies) if latencies else None,
        "not_closed": missing,
        "samples": len(latencies),
        "live_streams": live,
        "processes": usage,
    }


def cancel(sizes: Sizes, repeat: int, upstream: str) -> dict[str, Any]:
    """With N live streams, cancel (or close) a sample one at a time, for each N."""
    variants = {  # name: (path, how)
        "aistream_cancel": ("aistream", "cancel"),
        "aistream_close": ("aistream", "close"),
        "direct_cancel": ("direct", "cancel"),
    }
    metrics = ("p50_ms", "p99_ms", "max_ms", "not_closed", "samples", "live_streams")
    levels: dict[str, Any] = {}

    def say(run: Run) -> str:
        return (
            f"p50 {run['p50_ms']} p99 {run['p99_ms']} ms, "
            f"live {run['live_streams']}, not closed {run['not_closed']}"
        )

    with Stack(("aistream", "direct"), upstream, quiet_patience=sizes.quiet_patience) as stack:
        for streams in sizes.cancel_levels:
            # the SDK client cannot hold 1,000 streams at 30 tokens/s here (see the TTFT
            # scenario: two client processes at ~100 %), so its baseline stops at 100
            chosen = [n for n, (path, _) in variants.items() if path != "direct" or streams <= 100]
            runs = repeated(
                f"cancel {streams} streams",
                repeat,
                chosen,
                lambda name, streams=streams: _cancel_run(stack, *variants[name], streams, sizes),
                say,
                sizes.settle,
            )
            levels[str(streams)] = {
                "variants": runs.figures(metrics),
                "processes": runs.processes(),
            }
    return {
        "params": {
            "levels": list(sizes.cancel_levels),
            "samples": sizes.cancel_samples,
            "spacing_s": sizes.cancel_spacing,
            "ramp_s": sizes.cancel_ramp,
            "rate": sizes.rate,
        },
        "levels": levels,
    }


# --- 4. Idle ------------------------------------------------------------------------------------

_IDLE_SERVERS = {"aistream": ("bridge", "generator"), "bare_ws": ("bare_ws",)}
"""The servers whose memory an idle connection costs, by path."""


def _idle_run(path: str, upstream: str, sizes: Sizes) -> dict[str, Any]:
    servers = _IDLE_SERVERS[path]
    with Stack((path,), upstream, quiet_patience=sizes.quiet_patience) as stack:
        processes = stack.processes()
        time.sleep(sizes.settle)
        before = sum(processes[s].memory_info().rss for s in servers)
        job = {"mode": "idle", "connections": sizes.idle_connections}
        with Load(stack, path, job) as load:
            load.wait("holding", 300)
            time.sleep(sizes.settle)
            per_server = {s: processes[s].memory_info().rss for s in servers}
            after = sum(per_server.values())
            load.send("stop")
            load.results(120)
    n = sizes.idle_connections
    return {
        "bytes_per_connection": round((after - before) / n),
        "rss_after_mb": {s: round(v / 2**20, 1) for s, v in per_server.items()},
    }


def idle(sizes: Sizes, repeat: int, upstream: str) -> dict[str, Any]:
    """``idle_connections`` open WebSockets that never generate: memory per connection."""
    runs = repeated(
        "idle",
        repeat,
        tuple(_IDLE_SERVERS),
        lambda path: _idle_run(path, upstream, sizes),
        lambda run: f"{run['bytes_per_connection']} B/conn",
    )
    return {
        "params": {"connections": sizes.idle_connections},
        "paths": runs.figures(("bytes_per_connection",)),
        "rss_after_mb": {p: [r["rss_after_mb"] for r in rs] for p, rs in runs.by_variant.items()},
    }


# --- 5. Slow reader -----------------------------------------------------------------------------


def _slow_run(sizes: Sizes, upstream: str, pause: bool = True) -> dict[str, Any]:
    servers = ("bridge", "generator")
    with Stack(("aistream",), upstream, quiet_patience=sizes.quiet_patience) as stack:
        processes = stack.processes()
        time.sleep(sizes.settle)
        before = sum(processes[s].memory_info().rss for s in servers)
        spec = StreamSpec(ttft=0.0, interval=0.0, tokens=5_000_000)
        job = {
            "mode": "slow",
            "connections": sizes.slow_clients,
            "spec": asdict(spec),
            "read_first": 20,
            # A client's kernel takes what it is sent until its receive buffer is full (here
            # autotuned up to 32 MB); only then does the bridge see a reader that stopped.
            "rcvbuf": SLOW_CLIENT_RCVBUF,
            "pause": pause,
        }
        with Load(stack, "aistream", job) as load:
            load.meter.start()
            load.wait("holding", 60)
            paused_at = time.monotonic()
            time.sleep(sizes.slow_hold)
            usage = load.meter.stop()
            records = stack.records()
            load.send("stop")
            load.results(60)
    peak = sum(usage[s]["rss_peak_mb"] for s in servers) * 2**20
    closed = [r for r in records if r["closed_at"] is not None]
    closed_after = [round((r["closed_at"] - paused_at) * 1000, 1) for r in closed]
    n = sizes.slow_clients
    return {
        "peak_bytes_per_connection": round((peak - before) / n),
        "upstreams_closed": len(closed),
        "upstreams": len(records),
        "closed_after_pause_ms_max": max(closed_after) if closed_after else None,
        "tokens_sent_per_upstream": round(sum(r["tokens_sent"] for r in records) / max(1, n)),
        "processes": usage,
    }


def slow(sizes: Sizes, repeat: int, upstream: str) -> dict[str, Any]:
    """Clients that stop reading mid-stream from an unpaced upstream: memory and upstream fate.

    Each repeat also runs a *control*: the same streams for the same time, read throughout. The
    generator and bridge grow by a working set just for serving unpaced streams (HTTP and gRPC
    buffers, allocator arenas); what a stopped reader makes them buffer is the difference."""
    runs = repeated(
        "slow",
        repeat,
        ("paused", "control"),
        lambda variant: _slow_run(sizes, upstream, pause=variant == "paused"),
        lambda run: (
            f"peak {run['peak_bytes_per_connection']} B/conn, "
            f"upstreams closed {run['upstreams_closed']}/{run['upstreams']} "
            f"(last {run['closed_after_pause_ms_max']} ms after the pause)"
        ),
    )
    for run, control in zip(runs["paused"], runs["control"], strict=True):
        run["control_peak_bytes_per_connection"] = control["peak_bytes_per_connection"]
        run["buffered_bytes_per_connection"] = (
            run["peak_bytes_per_connection"] - control["peak_bytes_per_connection"]
        )
    metrics = (
        "peak_bytes_per_connection",
        "control_peak_bytes_per_connection",
        "buffered_bytes_per_connection",
        "upstreams_closed",
        "upstreams",
        "closed_after_pause_ms_max",
        "tokens_sent_per_upstream",
    )
    return {
        "params": {"clients": sizes.slow_clients, "hold_s": sizes.slow_hold, "read_first": 20},
        "figures": runs.figures(metrics)["paused"],
        "processes": runs.processes()["paused"],
        "control_processes": runs.processes()["control"],
    }


# --- 6. Reasoning ---------------------------------------------------------------------------------

_REASONING_METRICS = (
    "reasoning_p50_ms",
    "reasoning_p99_ms",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "answer_lag_p50_ms",
    "answer_lag_p99_ms",
    "gap_p50_ms",
    "gap_p99_ms",
    *_SPLIT,
    "parts_per_s",
    "tokens_per_s",
    "reasoning_per_s",
    "messages_per_s",
    "errors",
    "samples",
    "reasoning_samples",
)


def _reasoning_run(stack: Stack, spec: StreamSpec, sizes: Sizes) -> Run:
    job = {
        "mode": "loop",
        "connections": sizes.reasoning_streams,
        "spec": asdict(spec),
        "stagger": sizes.reasoning_warmup,
        "warmup": sizes.reasoning_warmup,
        "duration": sizes.reasoning_window,
    }
    run = _run_loop(stack, "aistream", job, sizes.reasoning_window)
    schedule_ms = spec.reasoning * spec.interval * 1000
    for q in ("p50", "p99"):
        ttft_ms = run[f"ttft_{q}_ms"]
        run[f"answer_lag_{q}_ms"] = None if ttft_ms is None else round(ttft_ms - schedule_ms, 3)
    return run


def reasoning(sizes: Sizes, repeat: int, upstream: str) -> dict[str, Any]:
    """``reasoning_streams`` closed-loop streams through aistream, each ``reasoning_tokens``
    reasoning tokens then ``reasoning_answer_tokens`` answer tokens, paced as in the TTFT
    scenario; the baseline (``plain``), run alongside, streams as many tokens, all answer.

    The reasoning/plain ratio of each figure (the bridge's and generator's CPU above all) is
    what decoding and relaying reasoning costs. An answer's first token comes after the
    reasoning by design: ``answer_lag`` is its time to the first token minus that schedule
    (``reasoning_tokens / rate``), comparable with the plain streams' TTFT."""
    interval = 1 / sizes.rate
    total = sizes.reasoning_tokens + sizes.reasoning_answer_tokens
    specs = {
        "reasoning": StreamSpec(
            ttft=0.0,
            interval=interval,
            tokens=sizes.reasoning_answer_tokens,
            reasoning=sizes.reasoning_tokens,
            reasoning_field=sizes.reasoning_field,
        ),
        "plain": StreamSpec(ttft=0.0, interval=interval, tokens=total),
    }

    def say(run: Run) -> str:
        return (
            f"first reasoning p50 {run['reasoning_p50_ms']} p99 {run['reasoning_p99_ms']} ms, "
            f"first answer p50 {run['ttft_p50_ms']} p99 {run['ttft_p99_ms']} ms, "
            f"{run['parts_per_s']} parts/s, errors {run['errors']}"
        )

    with Stack(("aistream",), upstream, quiet_patience=sizes.quiet_patience) as stack:
        runs = repeated(
            f"reasoning c={sizes.reasoning_streams}",
            repeat,
            tuple(specs),
            lambda variant: _reasoning_run(stack, specs[variant], sizes),
            say,
            sizes.settle,
        )
    return {
        "params": {
            "streams": sizes.reasoning_streams,
            "rate": sizes.rate,
            "reasoning_tokens": sizes.reasoning_tokens,
            "answer_tokens": sizes.reasoning_answer_tokens,
            "reasoning_field": sizes.reasoning_field,
            "warmup_s": sizes.reasoning_warmup,
            "window_s": sizes.reasoning_window,
            "upstream_ttft_s": 0.0,
        },
        "variants": runs.figures(_REASONING_METRICS),
        "offered_parts_per_s": round(sizes.reasoning_streams * sizes.rate, 1),
        "processes": runs.processes(),
        "error_codes": {v: [r["error_codes"] for r in rs] for v, rs in runs.by_variant.items()},
    }


Scenario = Callable[[Sizes, int, str], dict[str, Any]]

SCENARIOS: dict[str, Scenario] = {
    "ttft": ttft,
    "firehose": firehose,
    "cancel": cancel,
    "idle": idle,
    "slow": slow,
    "reasoning": reasoning,
}
