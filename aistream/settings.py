"""Settings: one frozen, validated object; the environment is read here and nowhere else.

Every field can be set from the environment as ``AISTREAM_<FIELD>`` (``AISTREAM_BRIDGE_PORT=9000``,
``AISTREAM_STALL_TIMEOUT=5``), and command-line flags override the environment. The upstream uses
the ``openai`` SDK's standard names: ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``. When neither is set
the embedded simulated model serves every request. Traces are switched on by OpenTelemetry's
standard names (``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_ENDPOINT``…: ``_otel``). Times
are in seconds, sizes in bytes or characters as named. ``docs/configuration.md`` lists every field.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_type_hints

from aistream.errors import SettingsError

__all__ = [
    "ENV_PREFIX",
    "GRPC_BATCH_BYTES",
    "GRPC_MAX_MESSAGE_BYTES",
    "MAX_SINGLE_EVENT_BYTES",
    "Settings",
    "SettingsError",
]

ENV_PREFIX = "AISTREAM_"

# The gRPC hop's message sizes, set deliberately and the same on both sides, so that no setting
# on either side can make one side send what the other refuses (which would fail a shared call,
# and every user's generation on it, with RESOURCE_EXHAUSTED). A batch takes events while it holds
# less than GRPC_BATCH_BYTES (and always its first event); a single event is at most
# MAX_SINGLE_EVENT_BYTES (a browser frame, ws_max_size; an upstream event,
# upstream_max_event_bytes; both capped by validation) plus its fields: every message stays far
# inside GRPC_MAX_MESSAGE_BYTES, which each side gives grpc as its send and receive limit.
GRPC_BATCH_BYTES = 1 << 20
MAX_SINGLE_EVENT_BYTES = 8 << 20
GRPC_MAX_MESSAGE_BYTES = 16 << 20

UpstreamKind = Literal["openai", "simulated"]


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of the generator and the bridge, validated on construction."""

    # --- upstream -------------------------------------------------------------------------
    base_url: str | None = None
    """OpenAI-compatible base URL (``OPENAI_BASE_URL``); unset with no api key → simulated."""
    api_key: str | None = field(default=None, repr=False)
    """Upstream API key (``OPENAI_API_KEY``). Never leaves the generator, never logged."""
    model: str = "gpt-4o-mini"
    """Model asked of a real upstream when a Generate names none."""
    upstream_max_retries: int = 2
    """SDK retries of 429/5xx/connection errors, only before the first byte, within the deadline."""
    upstream_max_event_bytes: int = 256 * 1024
    """Largest server-sent event (or line) accepted from the upstream; a larger one ends that
    generation with ``upstream_error`` (nothing else is affected). Also bounds what one event
    may carry across the gRPC hop."""
    simulated_ttft: float = 0.25
    """Simulated model: delay before its first token."""
    simulated_tokens_per_s: float = 40.0
    """Simulated model: tokens per second after the first (0 = as fast as possible)."""
    simulated_reasoning_tokens: int = 24
    """Simulated model: reasoning tokens it streams before each answer (0: it answers at once)."""

    # --- time limits (seconds) ----------------------------------------------------------------
    first_token_timeout: float = 30.0
    """From accepting a Generate to the first token (includes connect and SDK retries)."""
    stall_timeout: float = 30.0
    """Longest gap allowed between two tokens."""
    deadline: float = 300.0
    """Total time limit of a generation that asks for none."""
    max_deadline: float = 900.0
    """Upper bound of a per-request ``timeout_ms``; larger values are clamped to this."""
    drain_timeout: float = 5.0
    """On shutdown: how long in-flight generations may finish before they are ended."""

    # --- request limits -------------------------------------------------------------------
    max_request_id_chars: int = 128
    """Longest request id accepted."""
    max_model_chars: int = 256
    """Longest model name accepted."""
    max_prompt_chars: int = 100_000
    """Longest prompt accepted, in characters."""
    max_messages: int = 200
    """Most history messages accepted in one Generate."""
    max_history_chars: int = 400_000
    """Total characters of all ``messages`` contents plus the prompt."""
    max_tokens_cap: int = 4096
    """Upper bound of ``max_tokens``; a request asking for more gets this."""
    max_tools: int = 128
    """Most ``tools`` accepted in one Generate."""
    max_tool_calls: int = 64
    """Most tool calls in one assistant message of the history, and in one answer: an upstream
    that opens more ends its generation with ``upstream_error``."""
    max_tool_arguments_chars: int = 256 * 1024
    """Longest arguments text of one tool call in the history, and of all the calls one answer
    streams together (past it the generation ends with ``invalid_output``)."""
    max_schema_chars: int = 64 * 1024
    """Longest JSON (as compact text) of one tool's ``parameters``, of the ``responseFormat``
    schema, and of ``toolChoice``."""
    max_output_chars: int = 256 * 1024
    """With ``responseFormat``: longest answer text kept to parse at the end; a longer answer
    ends with ``invalid_output``. (Done then carries it parsed: keep it well under
    ``ws_send_buffer``.)"""

    # --- generator ------------------------------------------------------------------------
    generator_host: str = "127.0.0.1"
    """Address the generator listens on."""
    generator_port: int = 50051
    """Port the generator listens on (0: any free port, printed at start)."""
    stream_buffer: int = 4096
    """ServerEvents queued per gRPC stream before generations wait for the writer (keep it
    above ``max_generations_per_stream``: under load each running generation has an event
    waiting, its tokens merged into it; the bytes bound below is what bounds memory)."""
    stream_buffer_bytes: int = 256 * 1024
    """Bytes of ServerEvents queued per gRPC stream before generations wait for the writer. A
    generation that waits longer than ``stall_timeout`` ends with ``slow_consumer``."""
    stream_flush_interval: float = 0.0
    """Batched streams: least time between two writes on one stream; events arriving meanwhile join
    the next batch. 0 (the default) writes whatever waits as soon as the previous write is done,
    which batches under load without delaying anything; a spacing trades latency for fewer
    messages (2 ms added ~5 ms to the p50 time to first token at 100 streams)."""
    upstream_reads_per_s: int = 3000
    """Upstream network reads per second the generator spreads over its live answers. With ``n``
    answers streaming, each one's body is read at most every ``n / upstream_reads_per_s``
    seconds (at most ``max_read_interval``); tokens that arrive meanwhile are read, and sent on,
    together. Below that many answers × token rate nothing waits, and a first token never does.
    0: read every answer as soon as data arrives."""
    max_read_interval: float = 0.3
    """Upper bound of the spacing between two reads of one answer's body (see above)."""
    max_generations: int = 2000
    """Generations running at once in the generator process; more → ``too_many_requests`` with
    the ``retryAfterMs`` hint of ``shed_retry_after_ms`` (the server is full: shed, as without
    headroom)."""
    shed_loop_lag_ms: float = 5.0
    """Shed load (generator and bridge, each for itself): while this process's event loop is
    late by more than this on most turns (the 9th of every 10 ticks of ``shed_window_ms``), the
    number of generations it admits is cut to 80 % of what runs (once per window); while it is
    under half of this, that limit grows again by 1 % a tick. Past the limit a new generation
    is refused at once with ``too_many_requests`` and ``retryAfterMs``, so the streams carried
    keep their pace and cancels stay fast. 0: never shed."""
    shed_window_ms: float = 500.0
    """The window the loop's lag is measured over (ten ticks), and the least time between two
    cuts of the limit."""
    shed_retry_after_ms: int = 1000
    """The ``retryAfterMs`` hint of a refusal that sheds load (no headroom, or the generator at
    ``max_generations``)."""
    resume_grace: float = 30.0
    """Seconds a resumable generation runs on with nobody following it (its connection gone,
    no resume yet); then it is cancelled, its upstream closed."""
    resume_retention: float = 900.0
    """Seconds an ended resumable generation can still be resumed (replayed whole)."""
    resume_max_bytes: int = 256 * 1024 * 1024
    """What the generator keeps of resumable generations' logs at most: past it, ended logs
    are dropped oldest first, and a running one that does not fit stops being resumable
    (a resume of either is not_found, never a partial replay)."""
    redis_url: str | None = None
    """Redis for durable streams across nodes (``redis://HOST:PORT/DB``, ``rediss://`` for TLS,
    ``unix:///PATH``), the same for every bridge and generator: the generator copies each
    resumable generation's log there, and a bridge resumes from there any generation, whichever
    generator runs it. Unset: logs stay in the generator's memory (one node; a resume must
    reach the generator that runs the generation)."""
    max_generations_per_stream: int = 2000
    """Generations running at once on one gRPC stream; more → ``too_many_requests``. The bridge
    sends all its generations over ``generator_streams`` shared streams (one by default), so
    this bounds a bridge too: keep it at ``max_generations`` unless other clients share the
    generator."""

    # --- bridge ---------------------------------------------------------------------------
    bridge_host: str = "127.0.0.1"
    """Address the bridge listens on."""
    bridge_port: int = 8080
    """Port of the bridge: WebSocket at /ws, web client at / (0: any free port)."""
    generator_target: str = "127.0.0.1:50051"
    """Where the bridge finds its generators: ``host:port``, or any gRPC target naming several —
    ``ipv4:10.0.0.1:50051,10.0.0.2:50051``, ``dns:///generators.internal:50051`` (every
    address the name resolves to) — over which gRPC's ``round_robin`` spreads the calls (keep
    ``generator_streams`` at least the number of generators: a call stays where it opened)."""
    generator_streams: int = 1
    """gRPC streams to the generator shared by all connections (each connection uses one); each
    side batches what waits for a stream into one message, so fewer streams mean fewer, larger
    messages (at 1,000 live streams one shared stream had a lower time to first token and
    ~8 % less CPU than four; docs/performance.md)."""
    ws_max_size: int = 1 << 20
    """Largest incoming WebSocket message; larger ones close the socket with 1009."""
    ws_ping_interval: float = 20.0
    """Seconds between keepalive pings to each browser."""
    ws_ping_timeout: float = 20.0
    """A browser that does not answer a ping within this is gone: its generations are cancelled."""
    ws_close_timeout: float = 2.0
    """How long a closing handshake may take before the socket is dropped."""
    ws_compression: bool = False
    """permessage-deflate; off by default (it costs ~40% of throughput on token-sized frames)."""
    ws_send_buffer: int = 640 * 1024
    """Bytes of frames queued for one WebSocket (plus at most 32 KiB in websockets' write buffer
    and ``ws_socket_send_buffer`` in the kernel: under 1 MB per connection in all).
    A client that lets more pile up is a slow consumer: its generations end with
    ``slow_consumer`` and the socket is closed with 1008. Keep it above the generator's
    ``stream_buffer_bytes``: one batch from the generator carries up to that much."""
    ws_socket_send_buffer: int = 128 * 1024
    """SO_SNDBUF of each WebSocket (Linux doubles it: 256 KiB): what the kernel holds for a client
    that stopped reading, before the bridge's own queue fills. 0: the kernel's autotuning (on
    Linux up to ``net.ipv4.tcp_wmem``'s maximum, 4 MB by default, per connection)."""
    max_connections: int = 20_000
    """WebSocket connections at once; more are refused with HTTP 503."""
    max_generations_per_connection: int = 32
    """Generations running at once on one WebSocket; more → ``too_many_requests``."""
    max_generations_per_client: int = 1024
    """Generations running at once for one client (``client_key``) over all its WebSockets;
    more → ``too_many_requests``: opening many sockets does not take every slot from the rest
    (the default is half of what one generator runs, ``max_generations``). Behind a proxy every
    client has the proxy's address: set ``client_key`` so that the share is per user.
    0 = no per-client share."""
    client_key: str = "peer"
    """Who a client is, for ``max_generations_per_client``: ``peer`` (its IP address),
    ``forwarded`` (the first address of ``X-Forwarded-For``, else the peer — only behind a proxy
    that sets it), or ``header:NAME`` (the value of a header your authenticating proxy sets,
    e.g. ``header:X-User-Id``; the peer when absent)."""
    frames_per_second: float = 50.0
    """Frames a WebSocket may send per second on average (cancels of running ids are free)."""
    frames_burst: int = 100
    """Frames a WebSocket may send in a burst above ``frames_per_second``."""
    static_dir: Path | None = None
    """Built web client to serve at ``/``; None → ``webclient/dist`` of this checkout."""

    # --- access control ---------------------------------------------------------------------
    allowed_origins: tuple[str, ...] = ()
    """Origins (``https://app.example``) allowed to open the WebSocket besides the bridge's own
    origin and localhost; comma-separated in the environment. Others get HTTP 403."""
    public_hosts: tuple[str, ...] = ()
    """Host names browsers reach the bridge by (``chat.example.com``, behind a proxy), besides
    the address it listens on (and the loopback names when that is loopback or every
    interface); comma-separated in the environment. A browser's handshake naming any other
    ``Host`` is refused (HTTP 403): a page on a DNS-rebinding domain cannot pass as the
    bridge's own origin."""
    auth_token: str | None = field(default=None, repr=False)
    """If set, browsers must present it: cookie ``aistream_token``, query ``?token=``, or the
    WebSocket subprotocol ``aistream.token.<token>``. Otherwise HTTP 401."""
    grpc_token: str | None = field(default=None, repr=False)
    """If set, gRPC calls must carry ``authorization: Bearer <token>`` (the bridge sends it)."""
    tls_cert: Path | None = None
    """Generator: PEM certificate chain; with ``tls_key`` the gRPC port speaks TLS."""
    tls_key: Path | None = None
    """Generator: PEM private key of ``tls_cert``."""
    tls_client_ca: Path | None = None
    """Generator: PEM CA; if set, gRPC clients must present a certificate it signed (mutual TLS)."""
    generator_tls_ca: Path | None = None
    """Bridge: PEM CA to verify the generator with; if set, the bridge connects with TLS."""
    generator_tls_cert: Path | None = None
    """Bridge: PEM client certificate for mutual TLS with the generator."""
    generator_tls_key: Path | None = None
    """Bridge: PEM private key of ``generator_tls_cert``."""

    log_level: str = "INFO"
    """DEBUG, INFO, WARNING or ERROR (logs go to stderr)."""
    log_format: Literal["text", "json"] = "text"
    """``text`` (time, level, logger, message) or ``json``: one JSON object per line with
    ``time``, ``level``, ``logger``, ``message`` and every ``key=value`` of the message
    (``request_id``, ``conn``, ``code``…) as a field, for log pipelines."""

    # --- traces (OpenTelemetry; the ``otel`` extra) -----------------------------------------
    traces_exporter: str | None = None
    """Where spans go: ``otlp``, ``console``, or another installed OpenTelemetry exporter's
    name; comma-separated for several. Read from the standard ``OTEL_TRACES_EXPORTER`` too; set
    to ``otlp`` by ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``.
    Unset or ``none``: no span is recorded (a client's ``traceparent`` is still passed on to
    the upstream). The exporter reads its own ``OTEL_*`` settings (endpoint, headers, service
    name, sampler)."""
    otlp_protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    """The ``otlp`` exporter's protocol; read from the standard
    ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL`` too."""

    # --- metrics (Prometheus; docs/operations.md, "Metrics") ---------------------------------
    metrics: bool = True
    """Record metrics. Off: every recording is a no-op (nothing to measure on the hot path), the
    bridge's ``/metrics`` says so and the generator serves none."""
    metrics_port: int | None = None
    """Generator: port of its own HTTP server for ``/metrics``, on ``generator_host`` (0: any
    free port, printed in its ready line). Unset: none. (The bridge serves ``/metrics`` on
    ``bridge_port``, like ``/healthz``.)"""
    metrics_max_models: int = 20
    """Distinct models the ``gen_ai_request_model`` label tells apart: the default model and the
    first others seen; the rest are counted as ``other``. Clients name the model, so this bounds
    the number of series."""
    generator_metrics_url: str | None = None
    """Bridge: the generator's ``/metrics`` (``http://HOST:PORT/metrics``); if set, the bridge's
    ``/metrics`` appends that page, fetched on each scrape (what ``aistream up`` does)."""

    def __post_init__(self) -> None:
        positive = (
            "first_token_timeout",
            "stall_timeout",
            "deadline",
            "max_deadline",
            "ws_max_size",
            "upstream_max_event_bytes",
            "ws_ping_interval",
            "ws_ping_timeout",
            "ws_close_timeout",
            "max_request_id_chars",
            "max_model_chars",
            "max_prompt_chars",
            "max_messages",
            "max_history_chars",
            "max_tokens_cap",
            "max_tools",
            "max_tool_calls",
            "max_tool_arguments_chars",
            "max_schema_chars",
            "max_output_chars",
            "stream_buffer",
            "stream_buffer_bytes",
            "ws_send_buffer",
            "max_generations",
            "max_generations_per_stream",
            "generator_streams",
            "max_connections",
            "max_generations_per_connection",
            "frames_per_second",
            "frames_burst",
            "metrics_max_models",
            "shed_window_ms",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in (
            "simulated_ttft",
            "simulated_tokens_per_s",
            "simulated_reasoning_tokens",
            "drain_timeout",
            "ws_socket_send_buffer",
            "stream_flush_interval",
            "upstream_reads_per_s",
            "max_read_interval",
            "shed_loop_lag_ms",
            "shed_retry_after_ms",
        ):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.max_generations_per_client < 0:
            raise SettingsError("max_generations_per_client must be >= 0")
        if self.client_key not in ("peer", "forwarded") and not (
            self.client_key.startswith("header:") and len(self.client_key) > len("header:")
        ):
            raise SettingsError(
                f"client_key must be peer, forwarded or header:NAME, got {self.client_key!r}"
            )
        if self.upstream_max_retries < 0:
            raise SettingsError("upstream_max_retries must be >= 0")
        # A Done hands over the answer's tool calls and structured output in one event: it must
        # fit a gRPC message whatever the model wrote (a character is at most 4 bytes).
        handed_over = 4 * (self.max_tool_arguments_chars + self.max_output_chars)
        if handed_over > MAX_SINGLE_EVENT_BYTES // 2:
            raise SettingsError(
                "max_tool_arguments_chars + max_output_chars must be at most "
                f"{MAX_SINGLE_EVENT_BYTES // 8} characters (what one Done may carry), got "
                f"{self.max_tool_arguments_chars + self.max_output_chars}"
            )
        for name in ("ws_max_size", "upstream_max_event_bytes"):
            # One of these is the largest single event a gRPC message may have to carry.
            if getattr(self, name) > MAX_SINGLE_EVENT_BYTES:
                raise SettingsError(
                    f"{name} must be at most {MAX_SINGLE_EVENT_BYTES}, got {getattr(self, name)}"
                )
        if self.deadline > self.max_deadline:
            raise SettingsError(
                f"deadline ({self.deadline}) must not exceed max_deadline ({self.max_deadline})"
            )
        for name in ("generator_port", "bridge_port", "metrics_port"):
            port = getattr(self, name)
            if port is not None and not 0 <= port <= 65535:
                raise SettingsError(f"{name} must be a port number 0-65535, got {port}")
        if not _is_target(self.generator_target):
            raise SettingsError(
                "generator_target must be HOST:PORT, ipv4:HOST:PORT,HOST:PORT… or "
                f"dns:///NAME:PORT, got {self.generator_target!r}"
            )
        if self.redis_url is not None and not self.redis_url.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise SettingsError(
                f"redis_url must be a redis://, rediss:// or unix:// URL, got {self.redis_url!r}"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError("tls_cert and tls_key must be set together")
        if (self.generator_tls_cert is None) != (self.generator_tls_key is None):
            raise SettingsError("generator_tls_cert and generator_tls_key must be set together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise SettingsError("tls_client_ca needs tls_cert and tls_key")
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise SettingsError(f"base_url must be an http(s) URL, got {self.base_url!r}")
        if self.generator_metrics_url is not None and not self.generator_metrics_url.startswith(
            "http://"
        ):
            raise SettingsError(
                f"generator_metrics_url must be an http:// URL, got {self.generator_metrics_url!r}"
            )
        if self.log_format not in ("text", "json"):
            raise SettingsError(f"log_format must be text or json, got {self.log_format!r}")
        if self.otlp_protocol not in ("http/protobuf", "grpc"):
            raise SettingsError(
                f"otlp_protocol must be http/protobuf or grpc, got {self.otlp_protocol!r}"
            )
        for name in (self.traces_exporter or "").split(","):
            if name.strip() and not name.strip().replace("_", "").isalnum():
                raise SettingsError(f"traces_exporter: {name.strip()!r} is not an exporter name")

    @property
    def upstream_kind(self) -> UpstreamKind:
        """``openai`` when a base URL or API key is configured, else ``simulated``."""
        return "openai" if (self.base_url or self.api_key) else "simulated"

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (``None`` values are ignored), validated again."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``environ`` (default ``os.environ``), then ``overrides`` (not None)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f.name, hints[f.name], raw)
        if "OPENAI_BASE_URL" in env and "base_url" not in values:
            values["base_url"] = env["OPENAI_BASE_URL"] or None
        if "OPENAI_API_KEY" in env and "api_key" not in values:
            values["api_key"] = env["OPENAI_API_KEY"] or None
        values |= {k: v for k, v in _otel(env).items() if k not in values}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _is_target(target: str) -> bool:
    """Whether ``target`` names generators: ``host:port``, or a gRPC ``ipv4:``, ``ipv6:`` or
    ``dns:`` target (grpc/doc/naming.md) — whose addresses each end in a port."""
    scheme, sep, rest = target.partition(":")
    if sep and scheme in ("ipv4", "ipv6", "dns"):
        if scheme == "dns":
            rest = rest.removeprefix("//").partition("/")[2] if rest.startswith("//") else rest
        addresses = rest.split(",") if scheme != "dns" else [rest]
        return all(_has_port(address) for address in addresses)
    return _has_port(target)


def _has_port(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(sep and host and port.isdigit())


def _otel(env: Mapping[str, str]) -> dict[str, Any]:
    """The trace settings the standard ``OTEL_*`` variables make (the exporter reads the rest)."""
    values: dict[str, Any] = {}
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip()
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        values["traces_exporter"] = None
    elif exporter:
        values["traces_exporter"] = exporter
    elif env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        values["traces_exporter"] = "otlp"
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL"
    )
    if protocol:
        values["otlp_protocol"] = protocol.strip()
    return values


def _parse(name: str, hint: Any, raw: str) -> Any:
    """Convert one environment value to the field's type, or raise SettingsError naming it."""
    text = raw.strip()
    try:
        if hint is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if hint is int:
            return int(text)
        if hint is float:
            return float(text)
        if hint == Path | None:
            return Path(text) if text else None
        if hint == str | None:
            return text or None
        if hint == int | None:
            return int(text) if text else None
        if hint == tuple[str, ...]:
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return text
    except ValueError:
        raise SettingsError(
            f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {getattr(hint, '__name__', hint)}"
        ) from None
