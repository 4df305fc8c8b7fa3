"""Prometheus metrics of the generator and the bridge: definitions, buckets, bounded labels.

Names follow the OpenTelemetry GenAI semantic conventions where one exists, converted the
Prometheus way (``gen_ai.client.operation.duration`` → ``gen_ai_client_operation_duration_seconds``
), and are ``aistream_*`` for the lifecycle figures no convention has. Each process has one
registry (its server's ``GeneratorMetrics`` or ``BridgeMetrics``; never the library's global one)
and no name appears in both, so the bridge of ``aistream up`` can append its generator's page to
its own.

Nothing here is touched per token: a generation records at its start, its first token and its
end, a connection at its open and close; gauges of what is open are read when scraped. Labels
are bounded: no request id ever; the model (which clients choose) is one of the first
``metrics_max_models`` distinct names seen, then ``other``. With ``metrics`` off every recording
is a no-op and nothing is registered.

::

    generator (AISTREAM_METRICS_PORT)             bridge (/metrics on its own port)
    gen_ai_client_operation_duration_seconds      aistream_bridge_connections_open / _total
    gen_ai_client_token_usage                     aistream_bridge_handshakes_refused_total
    aistream_generations_total                    aistream_bridge_generations_in_flight
    aistream_requests_refused_total               aistream_bridge_generations_total
    aistream_time_to_first_token_seconds          aistream_bridge_slow_consumers_total
    aistream_cancel_upstream_close_seconds        aistream_bridge_frames_refused_total
    aistream_upstream_streams_open                aistream_bridge_generator_scrape_up
    aistream_generator_generations_in_flight      aistream_bridge_loop_lag_seconds
    aistream_generator_calls_open                 aistream_bridge_generation_limit
    aistream_generator_loop_lag_seconds           aistream_bridge_process_*
    aistream_generator_generation_limit           + the generator's page, when
    aistream_generator_process_*                    generator_metrics_url is set
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Literal
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import start_http_server

from aistream import codes
from aistream.headroom import Headroom
from aistream.settings import Settings

__all__ = [
    "BRIDGE_OFF",
    "CANCEL_CLOSE_BUCKETS",
    "CONTENT_TYPE",
    "GENERATOR_OFF",
    "OPERATION_DURATION_BUCKETS",
    "OTHER_MODEL",
    "TOKEN_USAGE_BUCKETS",
    "TTFT_BUCKETS",
    "BridgeMetrics",
    "FrameRefusal",
    "GeneratorMetrics",
    "ModelLabels",
    "UpstreamOpen",
    "scrape",
]

log = logging.getLogger(__name__)

# No ``*_created`` series beside each counter and histogram: they would double the pages and no
# query of ours needs them. (A process-wide switch of prometheus_client's; ours are its only users.)
disable_created_metrics()  # type: ignore[no-untyped-call]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text format, as both pages are rendered."""

# Bucket boundaries, chosen on purpose (vLLM's habit): the GenAI conventions' advice where it has
# one, so that dashboards made for other GenAI servers read ours.
OPERATION_DURATION_BUCKETS = tuple(round(0.01 * 2**i, 2) for i in range(14))
"""Seconds, 0.01 … 81.92 doubling (the conventions' advice for operation duration)."""
TOKEN_USAGE_BUCKETS = tuple(float(4**i) for i in range(14))
"""Tokens, 1 … 67,108,864, ×4 (the conventions' advice for token usage)."""
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0
)  # fmt: skip
"""Seconds (the conventions' advice for a server's time to first token)."""
CANCEL_CLOSE_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0
)  # fmt: skip
"""Seconds, 100 µs … 5 s: the promise is "within milliseconds"; a second is already a fault."""

OTHER_MODEL = "other"
"""The ``gen_ai_request_model`` of every model past the first ``metrics_max_models``."""

_OPERATION = "chat"
"""``gen_ai_operation_name``: every generation is a chat completion."""
_SCRAPE_TIMEOUT = 2.0
"""Seconds the bridge waits for its generator's page before rendering its own without it."""
_SCRAPE_MAX_BYTES = 16 << 20
_OFF_PAGE = b"# aistream metrics are off (AISTREAM_METRICS=false)\n"

FrameRefusal = Literal[
    "invalid", "rate", "per_connection", "per_client", "shutting_down", "control_flood", "shed"
]
"""Why the bridge refused a frame (``aistream_bridge_frames_refused_total{reason}``)."""


class ModelLabels:
    """The bounded model label: the first ``limit`` distinct names (``seed`` first), then
    ``other``. Clients name the model (up to ``max_model_chars`` of anything), so the label's
    values — and every series under it — stay at most ``limit`` + 1."""

    __slots__ = ("_known", "limit")

    def __init__(self, limit: int, seed: tuple[str, ...] = ()) -> None:
        self.limit = limit
        self._known: set[str] = set()
        for name in seed:
            self(name)

    def __call__(self, name: str) -> str:
        """The label value for model ``name``."""
        known = self._known
        if name in known:
            return name
        if len(known) < self.limit:
            known.add(name)
            return name
        return OTHER_MODEL


class _Ended:
    """The label children one kind of end records into (looked up once per model and code)."""

    __slots__ = ("duration", "generations", "input_tokens", "output_tokens")

    def __init__(self, metrics: GeneratorMetrics, model: str, code: str) -> None:
        outcome = "error" if code else "done"
        self.duration = metrics.operation_duration.labels(_OPERATION, model, code)
        self.generations = metrics.generations.labels(model, outcome, code)
        self.input_tokens = metrics.token_usage.labels(_OPERATION, model, "input")
        self.output_tokens = metrics.token_usage.labels(_OPERATION, model, "output")


class UpstreamOpen:
    """Wraps one generation's upstream stream (entered before it, left after it): the stream
    counts in ``aistream_upstream_streams_open`` while inside, and if the generation was ended
    from outside (``cancelled``), the time from then until the stream's ``async with`` has
    closed it goes to ``aistream_cancel_upstream_close_seconds``."""

    __slots__ = ("_metrics", "_since")

    def __init__(self, metrics: GeneratorMetrics) -> None:
        self._metrics = metrics
        self._since: float | None = None

    def cancelled(self) -> None:
        """The generation was ended from outside (a Cancel, its call ending, a shutdown): the
        clock starts now."""
        if self._since is None:
            self._since = time.monotonic()

    async def __aenter__(self) -> None:
        if self._metrics.enabled:
            self._metrics.upstream_open += 1

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        metrics = self._metrics
        if not metrics.enabled:
            return
        metrics.upstream_open -= 1
        if self._since is not None:
            metrics.cancel_close.observe(time.monotonic() - self._since)


def _watch_headroom(registry: CollectorRegistry | None, process: str, headroom: Headroom) -> None:
    """The gauges of a process's headroom: its loop's lag and the limit it sets."""
    if registry is None:
        return
    Gauge(
        f"aistream_{process}_loop_lag_seconds",
        "How late the event loop is on most turns (the 9th of 10 ticks over shed_window_ms): "
        "what admission weighs (shed_loop_lag_ms).",
        registry=registry,
    ).set_function(lambda: headroom.measured)
    Gauge(
        f"aistream_{process}_generation_limit",
        "Generations admitted at once, as the loop's lag has set it (+Inf: no limit learned, "
        "or shedding off); past it a generation is refused with too_many_requests.",
        registry=registry,
    ).set_function(lambda: headroom.limit)


class GeneratorMetrics:
    """The generator's registry and what its generations record into it."""

    def __init__(
        self,
        settings: Settings,
        calls_open: Callable[[], float] = lambda: 0,
        default_model: str | None = None,
    ) -> None:
        """``calls_open``: the gRPC calls open now (read when scraped); ``default_model``:
        the model a Generate naming none gets (always one of the bounded label's values)."""
        self.enabled = settings.metrics
        self.registry = CollectorRegistry(auto_describe=True)
        seed = (default_model,) if default_model else ()
        self.models = ModelLabels(settings.metrics_max_models, seed)
        self.upstream_open = 0
        """Upstream streams open now (``aistream_upstream_streams_open``)."""
        self.in_flight = 0
        """Generations started and not ended yet (no terminal event)."""
        self._ended: dict[tuple[str, str], _Ended] = {}
        self._ttft: dict[str, Histogram] = {}
        self._refused: dict[str, Counter] = {}
        self._http: WSGIServer | None = None
        registry = self.registry if self.enabled else None
        model = "gen_ai_request_model"
        self.operation_duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "Duration of each generation, from its acceptance to its terminal event "
            "(error_type: the error code, empty when done).",
            ("gen_ai_operation_name", model, "error_type"),
            buckets=OPERATION_DURATION_BUCKETS,
            registry=registry,
        )
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Tokens per generation by type (input, output), as its terminal event reports "
            "them: the upstream's figures when it sent them, else estimated.",
            ("gen_ai_operation_name", model, "gen_ai_token_type"),
            buckets=TOKEN_USAGE_BUCKETS,
            registry=registry,
        )
        self.generations = Counter(
            "aistream_generations",
            "Generations ended, by outcome (done, error) and error code (empty when done).",
            (model, "outcome", "code"),
            registry=registry,
        )
        self.refused = Counter(
            "aistream_requests_refused",
            "Generates (and cancels) answered with an error before any generation started.",
            ("code",),
            registry=registry,
        )
        self.ttft = Histogram(
            "aistream_time_to_first_token_seconds",
            "From accepting a Generate to the first part of its answer from the upstream "
            "(text, a tool call or a refusal; reasoning is not the answer).",
            (model,),
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.cancel_close = Histogram(
            "aistream_cancel_upstream_close_seconds",
            "From a generation ended from outside (a Cancel read, its call ending, a shutdown) "
            "to its upstream stream closed.",
            buckets=CANCEL_CLOSE_BUCKETS,
            registry=registry,
        )
        if registry is None:
            return
        ProcessCollector(namespace="aistream_generator", registry=registry)
        Gauge(
            "aistream_upstream_streams_open",
            "Upstream streams (HTTP requests) open now; with no generation in flight it is 0 — "
            "anything else is a ghost generation.",
            registry=registry,
        ).set_function(lambda: self.upstream_open)
        Gauge(
            "aistream_generator_generations_in_flight",
            "Generations started and not yet ended (no terminal event sent).",
            registry=registry,
        ).set_function(lambda: self.in_flight)
        Gauge(
            "aistream_generator_calls_open",
            "gRPC calls (Stream, StreamBatches) open now: a bridge keeps generator_streams.",
            registry=registry,
        ).set_function(calls_open)

    def watch(self, headroom: Headroom) -> None:
        """Serve the headroom's gauges (``aistream_generator_loop_lag_seconds``,
        ``aistream_generator_generation_limit``)."""
        _watch_headroom(self.registry if self.enabled else None, "generator", headroom)

    # --- recording (all no-ops with metrics off) --------------------------------------------------

    def model(self, name: str) -> str:
        """The bounded label value for model ``name``."""
        return self.models(name) if self.enabled else ""

    def started(self) -> None:
        """A generation was accepted."""
        if self.enabled:
            self.in_flight += 1

    def first_token(self, model: str, seconds: float) -> None:
        """A generation's first token came, ``seconds`` after its acceptance."""
        if not self.enabled:
            return
        histogram = self._ttft.get(model)
        if histogram is None:
            histogram = self._ttft[model] = self.ttft.labels(model)
        histogram.observe(seconds)

    def ended(
        self,
        model: str,
        code: codes.Code | None,
        seconds: float,
        input_tokens: int,
        output_tokens: int,
    ) -> None:
        """A generation ended (``code`` None: done), ``seconds`` after its acceptance."""
        if not self.enabled:
            return
        self.in_flight -= 1
        key = (model, "" if code is None else codes.json_code(code))
        ended = self._ended.get(key)
        if ended is None:
            ended = self._ended[key] = _Ended(self, *key)
        ended.generations.inc()
        ended.duration.observe(seconds)
        ended.input_tokens.observe(input_tokens)
        ended.output_tokens.observe(output_tokens)

    def refusal(self, code: codes.Code) -> None:
        """A Generate or Cancel was answered with ``code`` without starting anything."""
        if not self.enabled:
            return
        name = codes.json_code(code)
        counter = self._refused.get(name)
        if counter is None:
            counter = self._refused[name] = self.refused.labels(name)
        counter.inc()

    def upstream(self) -> UpstreamOpen:
        """The wrapper around one generation's upstream stream."""
        return UpstreamOpen(self)

    # --- exposing ---------------------------------------------------------------------------------

    def render(self) -> bytes:
        """The page, in the Prometheus text format."""
        return generate_latest(self.registry) if self.enabled else _OFF_PAGE

    def serve(self, host: str, port: int | None) -> int | None:
        """Serve the page over HTTP on ``host:port`` (0: any free port), on a thread of its own;
        the bound port, or None when metrics are off or ``port`` is None."""
        if not self.enabled or port is None:
            return None
        server, _thread = start_http_server(port, host, registry=self.registry)
        self._http = server
        return int(server.server_port)

    async def close(self) -> None:
        """Stop serving the page."""
        server, self._http = self._http, None
        if server is not None:
            await asyncio.to_thread(server.shutdown)  # (waits for its loop's next poll)
            server.server_close()


class BridgeMetrics:
    """The bridge's registry and what its connections record into it; its page may end with
    its generator's (``generator_metrics_url``, fetched on each scrape)."""

    def __init__(
        self,
        settings: Settings,
        connections_open: Callable[[], float] = lambda: 0,
        generations_in_flight: Callable[[], float] = lambda: 0,
    ) -> None:
        """``connections_open``, ``generations_in_flight``: read when scraped."""
        self.enabled = settings.metrics
        self.registry = CollectorRegistry(auto_describe=True)
        self.generator_url = settings.generator_metrics_url
        self._ended: dict[str, Counter] = {}
        self._refused: dict[str, Counter] = {}
        registry = self.registry if self.enabled else None
        self.connections = Counter(
            "aistream_bridge_connections",
            "WebSocket connections accepted.",
            registry=registry,
        )
        self.handshakes_refused = Counter(
            "aistream_bridge_handshakes_refused",
            "WebSocket handshakes refused, by HTTP status (400 malformed, 401 token, "
            "403 origin or host, 503 max_connections).",
            ("status",),
            registry=registry,
        )
        self.generations = Counter(
            "aistream_bridge_generations",
            "Generations ended as their browsers saw them, by outcome and code: also those "
            "the bridge ended itself (unavailable: the generator was lost; slow_consumer).",
            ("outcome", "code"),
            registry=registry,
        )
        self.slow_consumers = Counter(
            "aistream_bridge_slow_consumers",
            "Connections closed because their client did not read (1008 slow_consumer).",
            registry=registry,
        )
        self.frames_refused = Counter(
            "aistream_bridge_frames_refused",
            "Frames refused, by reason: invalid (invalid_request), rate (frames_per_second), "
            "per_connection, per_client (concurrency), shutting_down, control_flood (pings), "
            "shed (no room: this process's limit or its generator's).",
            ("reason",),
            registry=registry,
        )
        self.scrape_up = Gauge(
            "aistream_bridge_generator_scrape_up",
            "1 if the generator's metrics follow on this page, 0 if fetching them failed.",
            registry=registry if self.generator_url else None,
        )
        if registry is None:
            return
        ProcessCollector(namespace="aistream_bridge", registry=registry)
        Gauge(
            "aistream_bridge_connections_open",
            "WebSocket connections open now.",
            registry=registry,
        ).set_function(connections_open)
        Gauge(
            "aistream_bridge_generations_in_flight",
            "Generations the bridge's connections have in flight now.",
            registry=registry,
        ).set_function(generations_in_flight)

    def watch(self, headroom: Headroom) -> None:
        """Serve the headroom's gauges (``aistream_bridge_loop_lag_seconds``,
        ``aistream_bridge_generation_limit``)."""
        _watch_headroom(self.registry if self.enabled else None, "bridge", headroom)

    # --- recording (all no-ops with metrics off) --------------------------------------------------

    def connection_opened(self) -> None:
        """A WebSocket connection was accepted."""
        if self.enabled:
            self.connections.inc()

    def handshake_refused(self, status: int) -> None:
        """A handshake was refused with HTTP ``status``."""
        if self.enabled:
            self.handshakes_refused.labels(str(int(status))).inc()

    def ended(self, code: codes.Code | None) -> None:
        """A generation ended for its browser (``code`` None: done)."""
        if not self.enabled:
            return
        name = "" if code is None else codes.json_code(code)
        self._count("error" if name else "done", name)

    def detached(self) -> None:
        """A resumable generation left this bridge without ending (its socket went, or the
        bridge is shutting down): it runs on for a resume, here or elsewhere."""
        if self.enabled:
            self._count("detached", "")

    def _count(self, outcome: str, code: str) -> None:
        """One more generation gone with ``outcome`` (``code``: an error's), its labelled
        counter made once (keyed by the code, or the outcome when there is none)."""
        key = code or outcome
        counter = self._ended.get(key)
        if counter is None:
            counter = self._ended[key] = self.generations.labels(outcome, code)
        counter.inc()

    def slow_consumer(self) -> None:
        """A connection was cut off as a slow consumer."""
        if self.enabled:
            self.slow_consumers.inc()

    def frame_refused(self, reason: FrameRefusal) -> None:
        """A frame was refused for ``reason``."""
        if not self.enabled:
            return
        counter = self._refused.get(reason)
        if counter is None:
            counter = self._refused[reason] = self.frames_refused.labels(reason)
        counter.inc()

    # --- exposing ---------------------------------------------------------------------------------

    async def render(self) -> bytes:
        """The page: the bridge's metrics, then its generator's when ``generator_url`` is set
        (if that fetch fails, the bridge's alone, with ``aistream_bridge_generator_scrape_up``
        0)."""
        if not self.enabled:
            return _OFF_PAGE
        if self.generator_url is None:
            return generate_latest(self.registry)
        try:
            generator = await scrape(self.generator_url)
        except (OSError, TimeoutError, ValueError) as exc:
            log.warning("generator metrics unavailable from %s: %r", self.generator_url, exc)
            self.scrape_up.set(0)
            return generate_latest(self.registry)
        self.scrape_up.set(1)
        return generate_latest(self.registry) + generator


async def scrape(url: str, timeout: float = _SCRAPE_TIMEOUT) -> bytes:
    """GET an ``http://`` metrics page and return its body (ending with a newline). Raises
    ``OSError`` (unreachable), ``TimeoutError`` or ``ValueError`` (not a 200, too large)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"not an http:// URL: {url!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request = (
        f"GET {target} HTTP/1.0\r\nHost: {parts.netloc}\r\nAccept: text/plain\r\n"
        "Accept-Encoding: identity\r\nConnection: close\r\n\r\n"
    ).encode("ascii")
    chunks: list[bytes] = []
    size = 0
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        try:
            writer.write(request)
            while chunk := await reader.read(65536):
                size += len(chunk)
                if size > _SCRAPE_MAX_BYTES:
                    raise ValueError(f"metrics page over {_SCRAPE_MAX_BYTES} bytes")
                chunks.append(chunk)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(status) < 2 or status[1] != b"200":
        raise ValueError(f"metrics page answered {head[:80]!r}")
    return body if not body or body.endswith(b"\n") else body + b"\n"


GENERATOR_OFF = GeneratorMetrics(Settings(metrics=False))
"""A generator's metrics that record nothing (for parts made without a server's)."""
BRIDGE_OFF = BridgeMetrics(Settings(metrics=False))
"""A bridge's metrics that record nothing (for parts made without a server's)."""
