"""Turn scenario results into the printed tables, the target verdicts and the latency plot.

Every cell is ``median [min–max]`` over the repeats; aistream's figure stands next to the
baselines measured in the same run, with the ratio or difference. Targets are the ones of the
performance issue; a verdict is ``met``, ``MISSED`` or ``n/a`` (the scenario did not run at the
size the target is about).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.stats import Agg, ratio

__all__ = ["plot", "plot_overload", "tables", "targets"]

NODE_CANCEL_P50_MS, NODE_CANCEL_P99_MS, NODE_FIREHOSE = 100.0, 220.0, 42_000.0
"""The one-hop Node server this product grew out of, measured on this machine (the issue)."""


def _cell(agg: Agg | None, digits: int = 1) -> str:
    if not agg or agg.get("median") is None:
        return "—"
    med, lo, hi = agg["median"], agg["min"], agg["max"]
    if agg.get("runs", 1) <= 1 or lo == hi:
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} [{lo:,.{digits}f}–{hi:,.{digits}f}]"


def _ratio(a: Agg, b: Agg) -> str:
    r = ratio(a, b)
    return "—" if r is None else f"{r:.2f}×"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _cpu_table(processes: dict[str, dict[str, dict[str, Agg]]]) -> str:
    names = sorted({n for per in processes.values() for n in per})
    rows = []
    for group, per in processes.items():
        cells = [
            f"{_cell(per[n]['cpu_pct'], 0)} / {_cell(per[n]['rss_mb'], 0)}" if n in per else ""
            for n in names
        ]
        rows.append([group, *cells])
    return "CPU % of one core / RSS MB, per process:\n\n" + _table(["run", *names], rows)


def _ttft_tables(result: dict[str, Any]) -> list[str]:
    out = []
    params = result["params"]
    for level, data in result["levels"].items():
        paths, added = data["paths"], data["added_vs_direct"]
        rows = []
        for metric, label in (
            ("ttft_p50_ms", "TTFT p50 ms"),
            ("ttft_p99_ms", "TTFT p99 ms"),
            ("gap_p50_ms", "inter-token p50 ms"),
            ("gap_p99_ms", "inter-token p99 ms"),
        ):
            rows.append(
                [
                    label,
                    _cell(paths["aistream"][metric], 2),
                    _cell(paths["direct"][metric], 2),
                    _cell(added[metric], 2),
                    _cell(paths["bare_ws"][metric], 2),
                    _cell(paths["bare_grpc"][metric], 2),
                ]
            )
        for metric, label in (
            ("request_path_p50_ms", "… request path p50 ms (sent → upstream got it)"),
            ("request_path_p99_ms", "… request path p99 ms"),
            ("response_path_p50_ms", "… response path p50 ms (upstream wrote → client got)"),
            ("response_path_p99_ms", "… response path p99 ms"),
        ):
            rows.append(
                [
                    label,
                    _cell(paths["aistream"][metric], 2),
                    _cell(paths["direct"][metric], 2),
                    "",
                    "",
                    "",
                ]
            )
        rows.append(
            [
                f"tokens/s (offered {data['offered_tokens_per_s']:,.0f})",
                _cell(paths["aistream"]["tokens_per_s"], 0),
                _cell(paths["direct"]["tokens_per_s"], 0),
                _ratio(paths["aistream"]["tokens_per_s"], paths["direct"]["tokens_per_s"]),
                _cell(paths["bare_ws"]["tokens_per_s"], 0),
                _cell(paths["bare_grpc"]["tokens_per_s"], 0),
            ]
        )
        rows.append(
            [
                "errors / TTFT samples",
                f"{_cell(paths['aistream']['errors'], 0)} / "
                f"{_cell(paths['aistream']['samples'], 0)}",
                f"{_cell(paths['direct']['errors'], 0)} / {_cell(paths['direct']['samples'], 0)}",
                "",
                f"{_cell(paths['bare_ws']['errors'], 0)} / {_cell(paths['bare_ws']['samples'], 0)}",
                f"{_cell(paths['bare_grpc']['errors'], 0)} / "
                f"{_cell(paths['bare_grpc']['samples'], 0)}",
            ]
        )
        header = ["", "aistream", "direct SDK", "added (aistream − direct)", "bare ws", "bare grpc"]
        title = (
            f"### TTFT: {level} concurrent streams at {params['rate']:g} tokens/s "
            f"({params['stream_tokens']}-token answers, {params['window_s']:g} s window)"
        )
        out.append(f"{title}\n\n{_table(header, rows)}\n\n{_cpu_table(data['processes'])}")
    return out


def _firehose_table(result: dict[str, Any]) -> str:
    paths, p = result["paths"], result["params"]
    rows = [
        [
            "tokens/s",
            _cell(paths["aistream"]["tokens_per_s"], 0),
            _cell(paths["direct"]["tokens_per_s"], 0),
            _ratio(paths["aistream"]["tokens_per_s"], paths["direct"]["tokens_per_s"]),
            _cell(paths["bare_ws"]["tokens_per_s"], 0),
            _ratio(paths["aistream"]["tokens_per_s"], paths["bare_ws"]["tokens_per_s"]),
            _cell(paths["bare_grpc"]["tokens_per_s"], 0),
        ],
        [
            "messages/s",
            _cell(paths["aistream"]["messages_per_s"], 0),
            _cell(paths["direct"]["messages_per_s"], 0),
            "",
            _cell(paths["bare_ws"]["messages_per_s"], 0),
            "",
            _cell(paths["bare_grpc"]["messages_per_s"], 0),
        ],
        [
            "errors",
            *(_cell(paths[k]["errors"], 0) for k in ("aistream", "direct")),
            "",
            _cell(paths["bare_ws"]["errors"], 0),
            "",
            _cell(paths["bare_grpc"]["errors"], 0),
        ],
    ]
    header = ["", "aistream", "direct SDK", "÷ direct", "bare ws", "÷ bare ws", "bare grpc"]
    title = (
        f"### Firehose: {p['clients']} clients, unpaced upstream, "
        f"{p['stream_tokens']}-token answers back to back"
    )
    return f"{title}\n\n{_table(header, rows)}\n\n{_cpu_table(result['processes'])}"


def _cancel_table(result: dict[str, Any]) -> str:
    p = result["params"]
    labels = {
        "aistream_cancel": "aistream: `ai:cancel` → upstream closed",
        "aistream_close": "aistream: WebSocket closed → upstream closed",
        "direct_cancel": "direct SDK: task cancelled → upstream closed",
    }
    header = ["", "p50 ms", "p99 ms", "max ms", "samples / not closed", "live streams"]
    out = []
    for level, data in result["levels"].items():
        v = data["variants"]
        rows = [
            [
                labels[name],
                _cell(v[name]["p50_ms"], 2),
                _cell(v[name]["p99_ms"], 2),
                _cell(v[name]["max_ms"], 2),
                f"{_cell(v[name]['samples'], 0)} / {_cell(v[name]['not_closed'], 0)}",
                _cell(v[name]["live_streams"], 0),
            ]
            for name in labels
            if name in v
        ]
        rows.append(
            [
                "one-hop Node server (issue, same machine, 1,000 streams)",
                f"{NODE_CANCEL_P50_MS:g}",
                f"{NODE_CANCEL_P99_MS:g}",
                "",
                "",
                "",
            ]
        )
        title = (
            f"### Cancel: {level} streams asked for at {p['rate']:g} tokens/s, "
            f"{p['samples']} sampled one every {p['spacing_s'] * 1000:g} ms"
        )
        out.append(f"{title}\n\n{_table(header, rows)}\n\n{_cpu_table(data['processes'])}")
    return "\n\n".join(out)


def _idle_table(result: dict[str, Any]) -> str:
    paths = result["paths"]
    a, b = paths["aistream"]["bytes_per_connection"], paths["bare_ws"]["bytes_per_connection"]
    rows = [["bytes per connection", _cell(a, 0), _cell(b, 0), _ratio(a, b)]]
    header = ["", "aistream (bridge + generator)", "bare ws", "ratio"]
    title = f"### Idle: {result['params']['connections']:,} open WebSocket connections"
    return f"{title}\n\n{_table(header, rows)}"


def _slow_table(result: dict[str, Any]) -> str:
    f, p = result["figures"], result["params"]
    rows = [
        [
            "peak RSS growth per connection, readers stopped",
            _cell(f["peak_bytes_per_connection"], 0),
        ],
        [
            "… the same streams, readers reading (control)",
            _cell(f["control_peak_bytes_per_connection"], 0),
        ],
        [
            "**buffered per connection because its reader stopped** (difference)",
            _cell(f["buffered_bytes_per_connection"], 0),
        ],
        [
            "upstreams closed / opened",
            f"{_cell(f['upstreams_closed'], 0)} / {_cell(f['upstreams'], 0)}",
        ],
        [
            "last upstream closed, ms after the readers stopped",
            _cell(f["closed_after_pause_ms_max"], 0),
        ],
        ["tokens the upstream sent per stream", _cell(f["tokens_sent_per_upstream"], 0)],
    ]
    title = (
        f"### Slow reader: {p['clients']} clients stop reading after {p['read_first']} frames "
        f"of an unpaced stream, held {p['hold_s']:g} s"
    )
    return f"{title}\n\n{_table(['', 'aistream'], rows)}\n\n" + _cpu_table(
        {"slow readers": result["processes"], "control": result["control_processes"]}
    )


def _reasoning_table(result: dict[str, Any]) -> str:
    p, v = result["params"], result["variants"]
    r, plain = v["reasoning"], v["plain"]
    schedule_ms = p["reasoning_tokens"] / p["rate"] * 1000

    def row(metric: str, label: str, digits: int = 2, compare: bool = True) -> list[str]:
        return [
            label,
            _cell(r[metric], digits),
            _cell(plain[metric], digits),
            _ratio(r[metric], plain[metric]) if compare else "",
        ]

    rows = [
        row("reasoning_p50_ms", "first reasoning part p50 ms", compare=False),
        row("reasoning_p99_ms", "first reasoning part p99 ms", compare=False),
        row("ttft_p50_ms", "first answer token p50 ms", compare=False),
        row("ttft_p99_ms", "first answer token p99 ms", compare=False),
        row("answer_lag_p50_ms", f"… minus its schedule ({schedule_ms:,.0f} ms) p50 ms"),
        row("answer_lag_p99_ms", "… minus its schedule p99 ms"),
        row("gap_p50_ms", "between parts p50 ms"),
        row("gap_p99_ms", "between parts p99 ms"),
        row("request_path_p50_ms", "… request path p50 ms (sent → upstream got it)"),
        row("response_path_p50_ms", "… response path p50 ms (upstream wrote → first part)"),
        row("parts_per_s", f"parts/s (offered {result['offered_parts_per_s']:,.0f})", 0),
        row("reasoning_per_s", "… of which reasoning tokens/s", 0, compare=False),
        row("tokens_per_s", "… of which answer tokens/s", 0, compare=False),
        row("messages_per_s", "part messages/s", 0),
        [
            "errors / answer samples / reasoning samples",
            *(
                f"{_cell(x['errors'], 0)} / {_cell(x['samples'], 0)} / "
                f"{_cell(x['reasoning_samples'], 0)}"
                for x in (r, plain)
            ),
            "",
        ],
    ]
    processes = result["processes"]
    for name in ("bridge", "generator"):
        a, b = processes["reasoning"].get(name), processes["plain"].get(name)
        if a and b:
            rows.append(
                [
                    f"{name} CPU % of one core",
                    _cell(a["cpu_pct"], 0),
                    _cell(b["cpu_pct"], 0),
                    _ratio(a["cpu_pct"], b["cpu_pct"]),
                ]
            )
    total = p["reasoning_tokens"] + p["answer_tokens"]
    header = [
        "",
        f"reasoning ({p['reasoning_tokens']} + {p['answer_tokens']})",
        f"plain ({total} answer)",
        "reasoning ÷ plain",
    ]
    title = (
        f"### Reasoning: {p['streams']:,} concurrent streams at {p['rate']:g} tokens/s, "
        f"{p['reasoning_tokens']} `{p['reasoning_field']}` tokens then {p['answer_tokens']} "
        f"answer tokens ({p['window_s']:g} s window)"
    )
    return f"{title}\n\n{_table(header, rows)}\n\n{_cpu_table(processes)}"


def _capacity_table(result: dict[str, Any]) -> str:
    p, paths = result["params"], result["paths"]
    rows = [
        [
            name,
            _cell(paths[key]["streams"], 0),
            _cell(paths[key]["ttft_p99_ms"], 1),
        ]
        for key, name in (
            ("aistream", "aistream (bridge → generator)"),
            ("bare_ws", "bare websockets"),
        )
    ]
    rows.append(["aistream ÷ bare websockets", _cell(result["ratio"], 2), ""])
    title = (
        f"### Capacity: concurrent {p['rate']:g} tokens/s streams ({p['stream_tokens']} tokens "
        f"each, closed loop) carried with TTFT p99 ≤ {p['ttft_p99_ms']:g} ms and no error"
    )
    return f"{title}\n\n{_table(['', 'streams', 'TTFT p99 ms at it'], rows)}"


_OVERLOAD_ROWS = (
    ("offered", "streams offered", 0),
    ("admitted", "generations admitted in the window", 0),
    ("refused", "… refused (too_many_requests, then resent after the hint)", 0),
    (
        "refused_by_generator",
        "… of them by the generator (a round trip later; the rest the bridge)",
        0,
    ),
    ("refusal_p50_ms", "refusal p50 ms (sent → ai:error)", 2),
    ("refusal_p99_ms", "refusal p99 ms", 2),
    ("probe_refused", "refusals timed by the idle probe (past 1×)", 0),
    ("probe_admitted", "… its generations admitted instead (cancelled at once)", 0),
    ("probe_refusal_p50_ms", "… refusal p50 ms, as the probe saw it", 2),
    ("probe_refusal_p99_ms", "… refusal p99 ms, as the probe saw it", 2),
    ("ttft_p50_ms", "admitted TTFT p50 ms", 1),
    ("ttft_p99_ms", "admitted TTFT p99 ms", 1),
    ("gap_p50_ms", "admitted inter-token p50 ms", 1),
    ("gap_p99_ms", "admitted inter-token p99 ms", 1),
    ("cancel_p50_ms", "ai:cancel → upstream closed p50 ms", 2),
    ("cancel_p99_ms", "ai:cancel → upstream closed p99 ms", 2),
    ("close_p50_ms", "WebSocket close → upstream closed p50 ms", 2),
    ("close_p99_ms", "WebSocket close → upstream closed p99 ms", 2),
    ("tokens_per_s", "tokens/s delivered", 0),
    ("left_open", "upstreams left open after the run", 0),
    ("errors", "errors (anything but done, cancel, refusal)", 0),
    ("client_lag_p99_ms", "(load client's own loop lag p99 ms)", 1),
    ("probe_lag_p99_ms", "(the probe's own loop lag p99 ms)", 1),
)


def _overload_table(result: dict[str, Any]) -> str:
    p, factors = result["params"], result["factors"]
    header = ["", *(f"{f}× ({_cell(factors[f]['offered'], 0)})" for f in factors)]
    rows = [
        [label, *(_cell(factors[f][metric], digits) for f in factors)]
        for metric, label, digits in _OVERLOAD_ROWS
    ]
    violations = sum(len(v) for v in result["lifecycle_violations"].values())
    crashed = sorted({n for runs in result["crashed"].values() for r in runs for n in r})
    title = (
        f"### Overload: offered load in multiples of the capacity ({p['capacity']:,} streams, "
        f"{p['capacity_source']}), {p['window_s']:g} s window; lifecycle violations "
        f"{violations}, processes that died: {', '.join(crashed) or 'none'}"
    )
    return f"{title}\n\n{_table(header, rows)}\n\n{_cpu_table(result['processes'])}"


def _resume_table(result: dict[str, Any]) -> str:
    cost, burst = result["cost"], result["burst"]
    rows = [
        [
            label,
            _cell(cost["plain"][m], d),
            _cell(cost["resumable"][m], d),
            _cell(cost["redis"][m], d),
            _ratio(cost["resumable"][m], cost["plain"][m]),
            _ratio(cost["redis"][m], cost["plain"][m]),
        ]
        for m, label, d in (
            ("ttft_p50_ms", "TTFT p50 ms", 2),
            ("ttft_p99_ms", "TTFT p99 ms", 2),
            ("tokens_per_s", "tokens/s", 0),
            ("generator_cpu_us_per_token", "generator CPU µs per token", 1),
            ("bridge_cpu_us_per_token", "bridge CPU µs per token", 1),
            ("redis_cpu_us_per_token", "redis-server CPU µs per token", 1),
            ("errors", "errors", 0),
        )
    ]
    per = result["bytes_per_retained_generation"]
    in_redis = result.get("redis_bytes_per_retained_generation", [])
    title = (
        f"### Resume: {result['params']['streams']:,} streams — plain, resumable (log in memory), "
        "resumable with Redis"
    )
    bursts = "; ".join(
        f"{variant}: {_cell(figures['resumed'], 0)} of {_cell(figures['resumes'], 0)} resumed, "
        f"first event after ai:resume p50 {_cell(figures['first_event_p50_ms'], 1)} ms, p99 "
        f"{_cell(figures['first_event_p99_ms'], 1)} ms, errors {_cell(figures['errors'], 0)}"
        for variant, figures in burst.items()
    )
    extra = (
        f"Memory per retained generation: generator RSS (resumable − plain, over the generations "
        f"retained) {', '.join(f'{b:,} B' for b in per) or '—'}; Redis (used_memory over the "
        f"generations retained) {', '.join(f'{b:,} B' for b in in_redis) or '—'}.\n\n"
        f"Burst (every stream dropped at once, then resumed): {bursts}."
    )
    bare = burst.get("bare_ws")
    if bare is not None:
        ratios = ", ".join(
            f"{variant} {_ratio(burst[variant]['first_event_p99_ms'], bare['first_event_p99_ms'])}"
            for variant in burst
            if variant != "bare_ws"
        )
        extra += f" First event p99 ÷ the bare websockets server's: {ratios}."
    cancel = result.get("cancel")
    if cancel is not None:
        cells = "; ".join(
            f"{variant} p50 {_cell(f['p50_ms'], 1)} ms, p99 {_cell(f['p99_ms'], 1)} ms, not "
            f"closed {_cell(f['not_closed'], 0)}"
            for variant, f in cancel.items()
        )
        extra += f"\n\n`ai:cancel` → upstream closed among the live streams: {cells}."
    header = ["", "plain", "resumable", "redis", "resumable ÷ plain", "redis ÷ plain"]
    return f"{title}\n\n{_table(header, rows)}\n\n{extra}"


def tables(results: dict[str, Any]) -> str:
    """Every scenario's table, as Markdown."""
    parts: list[str] = []
    scenarios = results["scenarios"]
    if "ttft" in scenarios:
        parts += _ttft_tables(scenarios["ttft"])
    if "firehose" in scenarios:
        parts.append(_firehose_table(scenarios["firehose"]))
    if "cancel" in scenarios:
        parts.append(_cancel_table(scenarios["cancel"]))
    if "idle" in scenarios:
        parts.append(_idle_table(scenarios["idle"]))
    if "slow" in scenarios:
        parts.append(_slow_table(scenarios["slow"]))
    if "reasoning" in scenarios:
        parts.append(_reasoning_table(scenarios["reasoning"]))
    if "capacity" in scenarios:
        parts.append(_capacity_table(scenarios["capacity"]))
    if "overload" in scenarios:
        parts.append(_overload_table(scenarios["overload"]))
    if "resume" in scenarios:
        parts.append(_resume_table(scenarios["resume"]))
    return "\n\n".join(parts)


def _verdict(value: float | None, limit: float, *, at_most: bool = True) -> dict[str, Any]:
    if value is None:
        return {"value": None, "limit": limit, "verdict": "n/a"}
    ok = value <= limit if at_most else value >= limit
    return {"value": value, "limit": limit, "verdict": "met" if ok else "MISSED"}


def targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's targets, each with its measured median and a verdict."""
    s = results["scenarios"]
    out: dict[str, dict[str, Any]] = {}

    def med(agg: Agg | None) -> float | None:
        return None if not agg else agg.get("median")

    levels = s.get("ttft", {}).get("levels", {})
    if "100" in levels:
        added = levels["100"]["added_vs_direct"]
        out["TTFT added p50 at 100 streams ≤ 1.5 ms"] = _verdict(med(added["ttft_p50_ms"]), 1.5)
        out["TTFT added p99 at 100 streams ≤ 10 ms"] = _verdict(med(added["ttft_p99_ms"]), 10)
        absolute = levels["100"]["paths"]["aistream"]
        out["(stricter) TTFT p50 at 100 streams ≤ 1.5 ms, absolute"] = _verdict(
            med(absolute["ttft_p50_ms"]), 1.5
        )
        out["(stricter) TTFT p99 at 100 streams ≤ 10 ms, absolute"] = _verdict(
            med(absolute["ttft_p99_ms"]), 10
        )
    if "1000" in levels:
        data = levels["1000"]
        added = data["added_vs_direct"]
        # the SDK client saturates at 1,000 streams (its TTFT is seconds): a difference with it
        # means nothing, so the verdict uses the absolute figure, an upper bound of what is added
        out["TTFT added p99 at 1,000 streams ≤ 25 ms (absolute TTFT; the upstream's is 0)"] = (
            _verdict(med(data["paths"]["aistream"]["ttft_p99_ms"]), 25)
        )
        out["1,000 streams: no errors"] = _verdict(med(data["paths"]["aistream"]["errors"]), 0)
        out["1,000 streams at 30 tokens/s held (≥ 95% of 30k tokens/s)"] = _verdict(
            med(data["paths"]["aistream"]["tokens_per_s"]),
            0.95 * data["offered_tokens_per_s"],
            at_most=False,
        )
    if "firehose" in s and s["firehose"]["params"]["clients"] >= 50:
        value = med(s["firehose"]["paths"]["aistream"]["tokens_per_s"])
        out["Firehose ≥ 75,000 tokens/s"] = _verdict(value, 75_000, at_most=False)
    if "1000" in s.get("cancel", {}).get("levels", {}):
        for name, label in (("aistream_cancel", "ai:cancel"), ("aistream_close", "WS close")):
            v = s["cancel"]["levels"]["1000"]["variants"][name]
            out[f"{label} → upstream closed p50 ≤ 2 ms"] = _verdict(med(v["p50_ms"]), 2)
            out[f"{label} → upstream closed p99 ≤ 10 ms"] = _verdict(med(v["p99_ms"]), 10)
            out[f"{label} at 1,000: every sampled upstream closed"] = _verdict(
                med(v["not_closed"]), 0
            )
            out[f"{label} at 1,000: 1,000 streams live"] = _verdict(
                med(v["live_streams"]), 1000, at_most=False
            )
    if "idle" in s and s["idle"]["params"]["connections"] >= 10_000:
        value = med(s["idle"]["paths"]["aistream"]["bytes_per_connection"])
        out["Idle ≤ 16 KB per connection"] = _verdict(value, 16 * 1024)
    if "slow" in s:
        value = med(s["slow"]["figures"]["buffered_bytes_per_connection"])
        out["Slow reader ≤ 1 MB buffered per connection"] = _verdict(value, 1 << 20)
        closed = med(s["slow"]["figures"]["upstreams_closed"])
        opened = med(s["slow"]["figures"]["upstreams"])
        out["Slow reader: every upstream closed (slow_consumer)"] = _verdict(
            closed, opened, at_most=False
        )
    factors = s.get("overload", {}).get("factors", {})
    if "1.0" in factors and "2.0" in factors:
        at_1, at_2 = factors["1.0"], factors["2.0"]
        base = med(at_1["ttft_p99_ms"])
        out["Overload 2×: admitted TTFT p99 ≤ 2× its value at 1×"] = _verdict(
            med(at_2["ttft_p99_ms"]), 2 * base if base is not None else float("nan")
        )
        out["Overload 2×: ai:cancel → upstream closed p99 ≤ 10 ms"] = _verdict(
            med(at_2["cancel_p99_ms"]), 10
        )
        out["Overload 2×: WS close → upstream closed p99 ≤ 10 ms"] = _verdict(
            med(at_2["close_p99_ms"]), 10
        )
    for factor, figures in factors.items():
        if float(factor) > 1:
            # timed by the probe where there is one: a process with nothing else to do, so the
            # figure is the servers' and the machine's, not a busy client's own lag
            value, by = med(figures.get("probe_refusal_p99_ms")), "the probe"
            if value is None:
                value, by = med(figures["refusal_p99_ms"]), "the load client"
            out[f"Overload {factor}×: refusals within 5 ms p99 (timed by {by})"] = _verdict(
                value, 5
            )
            out[f"Overload {factor}×: nothing left open upstream"] = _verdict(
                med(figures["left_open"]), 0
            )
    if "overload" in s:
        crashed = [n for runs in s["overload"]["crashed"].values() for r in runs for n in r]
        out["Overload: no process died"] = _verdict(len(crashed), 0)
        violations = sum(len(v) for v in s["overload"]["lifecycle_violations"].values())
        out["Overload: lifecycle checker on every conversation"] = _verdict(violations, 0)
    return out


def plot_overload(runs: dict[str, dict[str, Any]], path: Path) -> bool:
    """Draw admitted TTFT p99 and cancel → upstream closed p99 against offered load, one line
    per results file (``runs``: label → results); False if none has an overload scenario."""
    series = {
        k: r["scenarios"]["overload"] for k, r in runs.items() if "overload" in r["scenarios"]
    }
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for label, result in series.items():
        factors = result["factors"]
        xs = [float(f) for f in factors]
        for ax, metric in zip(
            axes, ("ttft_p99_ms", "cancel_p99_ms", "refusal_p99_ms"), strict=True
        ):
            ys = [factors[f][metric]["median"] for f in factors]
            ax.plot(xs, [y if y is not None else float("nan") for y in ys], "-o", label=label)
    for ax, title in zip(
        axes,
        ("admitted TTFT p99", "ai:cancel → upstream closed p99", "refusal (ai:error) p99"),
        strict=True,
    ):
        ax.set_yscale("log")
        ax.set_xlabel("offered load (× capacity)")
        ax.set_ylabel("ms (median of runs)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot(results: dict[str, Any], path: Path) -> bool:
    """Draw TTFT p50/p99 against concurrency for every path; False if there is nothing to draw."""
    levels = results["scenarios"].get("ttft", {}).get("levels", {})
    if len(levels) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [int(level) for level in levels]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    names = {
        "aistream": "aistream (2 hops)",
        "direct": "openai SDK direct",
        "bare_ws": "bare websockets",
        "bare_grpc": "bare grpc.aio",
    }
    for ax, metric, title in (
        (axes[0], "ttft", "time to first token"),
        (axes[1], "gap", "inter-token delay"),
    ):
        for key, label in names.items():
            for q, style in (("p50", "-o"), ("p99", "--x")):
                ys = [levels[str(x)]["paths"][key][f"{metric}_{q}_ms"]["median"] for x in xs]
                ax.plot(xs, ys, style, label=f"{label} {q}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("concurrent streams (30 tokens/s each)")
        ax.set_ylabel("ms (median of runs)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
