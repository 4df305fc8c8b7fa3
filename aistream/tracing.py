"""Traces: W3C trace context across every hop, and opt-in OpenTelemetry spans.

One trace per request, whatever the client sent::

    client ─traceparent─▶ bridge ─Generate.traceparent─▶ generator ─traceparent header─▶ upstream

    bridge:     ai:generate (SERVER, child of the client's span)
                └ aistream.v1.Generator/StreamBatches (CLIENT: the gRPC hop)
    generator:    └ chat {model} (SERVER, GenAI attributes)
                    └ POST {path} (CLIENT: the upstream HTTP request)

*Context.* A request's ``traceparent`` (``ai:generate`` field, ``Generate.traceparent`` on the
gRPC hop — the bridge multiplexes many requests on one call, and gRPC metadata is per call — and
the HTTP header to the upstream) is checked against the W3C format (``valid``); one that is not
valid is ignored, as a proxy ignores a malformed optional header, never an error. A backend
service calling the generator directly may instead send it as call metadata
(``from_metadata``): it then stands for every Generate of that call that carries none.

*Off* (the default: no exporter configured): no OpenTelemetry code is imported and no span is
made. The only work is carrying the client's string: the upstream sees the trace id the client
sent, as from any well-behaved proxy.

*On* (``Settings.traces_exporter``: the standard ``OTEL_TRACES_EXPORTER``, or an OTLP endpoint
set with ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; the ``otel``
extra installed): ``configure`` installs a tracer provider with a batching exporter; each hop
starts its spans as children of the context it received and passes on its own innermost span's
context. The exporter's own details (endpoint, headers, timeout, ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``) are the OpenTelemetry SDK's to read. Spans
are made at a request's start and ended at its end: never one per token.

``install`` puts any tracer provider in place (tests: an in-memory exporter), ``None`` turns
tracing off again.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Literal

from aistream import codes
from aistream.errors import SettingsError
from aistream.settings import Settings
from aistream.v1 import events_pb2 as pb

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

__all__ = [
    "TRACEPARENT",
    "chat_span",
    "configure",
    "enabled",
    "end_chat",
    "end_error",
    "end_request",
    "end_upstream",
    "from_metadata",
    "incoming",
    "install",
    "request_spans",
    "shutdown",
    "start_span",
    "trace_id",
    "traceparent",
    "upstream_span",
    "valid",
]

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
"""The header, metadata key and JSON field that carries W3C trace context."""

# version "00" is exactly 55 characters; a later version may append fields after a "-"
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.S)
_MAX_CHARS = 256  # a longer value is not taken for one (a later version adds little)
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16

_tracer: Tracer | None = None
_provider: TracerProvider | None = None


# --- trace context (no OpenTelemetry needed) -----------------------------------------------------


def valid(value: str) -> bool:
    """Whether ``value`` is a W3C ``traceparent`` one may continue: lowercase hex fields, a
    version other than ``ff`` (``00`` exactly 55 characters), non-zero trace and parent ids."""
    if len(value) > _MAX_CHARS:
        return False
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return False
    version, trace, parent, _, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return False
    return trace != _ZERO_TRACE and parent != _ZERO_SPAN


def incoming(value: str) -> str:
    """``value`` if it is a valid ``traceparent``, else ``""`` (ignored)."""
    return value if value and valid(value) else ""


def trace_id(value: str) -> str:
    """The trace id of a (valid) ``traceparent``; ``"-"`` for none (the logs' way)."""
    return value[3:35] if value else "-"


def from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The valid ``traceparent`` of a gRPC call's metadata, or ``""``."""
    for key, value in metadata or ():
        if key == TRACEPARENT and isinstance(value, str):
            return incoming(value)
    return ""


# --- switching it on ---------------------------------------------------------------------------


def enabled() -> bool:
    """Whether spans are being recorded (a tracer provider is installed)."""
    return _tracer is not None


def install(provider: TracerProvider | None) -> None:
    """Record spans with ``provider`` from now on (``None``: stop; the previous provider is left
    to its owner)."""
    global _tracer, _provider
    _provider = provider
    _tracer = None if provider is None else provider.get_tracer("aistream")


def configure(settings: Settings, service: str) -> bool:
    """Install a tracer provider exporting to ``settings.traces_exporter`` (see the module doc);
    ``service`` names the process when ``OTEL_SERVICE_NAME`` does not. Whether tracing is on.
    An unknown exporter raises SettingsError; without the ``otel`` extra, a warning says so and
    tracing stays off."""
    names = [name.strip() for name in (settings.traces_exporter or "").split(",") if name.strip()]
    names = [name for name in names if name != "none"]
    if not names:
        return False
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "traces_exporter=%s but opentelemetry is not installed "
            "(pip install 'aistream[otel]'): no spans are recorded",
            settings.traces_exporter,
        )
        return False
    try:
        exporters = [_exporter(name, settings.otlp_protocol) for name in names]
    except ImportError as exc:
        raise SettingsError(f"traces_exporter={settings.traces_exporter}: {exc}") from None
    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service}))
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider)
    log.info("tracing on exporter=%s protocol=%s", ",".join(names), settings.otlp_protocol)
    return True


def _exporter(name: str, protocol: str) -> SpanExporter:
    exporter: SpanExporter
    if name == "otlp" and protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        exporter = GrpcExporter()
    elif name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        exporter = HttpExporter()
    elif name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        exporter = ConsoleSpanExporter()
    else:  # another installed exporter, by its entry point name
        found = entry_points(group="opentelemetry_traces_exporter", name=name)
        if not found:
            raise SettingsError(
                f"traces_exporter {name!r} is not otlp, console or an installed exporter"
            )
        exporter = next(iter(found)).load()()
    return exporter


def shutdown() -> None:
    """Export what is still buffered and stop (at exit)."""
    provider = _provider
    install(None)
    if provider is not None:
        provider.shutdown()


# --- spans (only when enabled) -----------------------------------------------------------------


def start_span(
    name: str,
    parent: str,
    kind: Literal["server", "client"],
    attributes: Mapping[str, Any],
) -> Span:
    """A span whose parent is the remote ``parent`` (a valid traceparent; ``""``: a new trace)."""
    from opentelemetry import trace
    from opentelemetry.context import Context

    assert _tracer is not None, "tracing is not enabled"
    context = Context()  # never the ambient one: the parent is what the request says
    if parent:
        _, trace_hex, span_hex, flags = parent.split("-", 4)[:4]
        remote = trace.SpanContext(
            int(trace_hex, 16),
            int(span_hex, 16),
            is_remote=True,
            trace_flags=trace.TraceFlags(int(flags, 16)),
        )
        context = trace.set_span_in_context(trace.NonRecordingSpan(remote), context)
    span_kind = trace.SpanKind.SERVER if kind == "server" else trace.SpanKind.CLIENT
    return _tracer.start_span(name, context, span_kind, attributes)


def traceparent(span: Span) -> str:
    """The ``traceparent`` that makes the next hop a child of ``span``."""
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def end_error(span: Span, error_type: str) -> None:
    """End ``span`` for a request that ended in error ``error_type`` (a JSON code, an HTTP
    status): ``error.type``, and status ERROR unless the client cancelled."""
    from opentelemetry.trace import StatusCode

    span.set_attribute("error.type", error_type)
    if error_type != "cancelled":
        span.set_status(StatusCode.ERROR)
    span.end()


def request_spans(generate: pb.Generate, conn: int) -> tuple[Span, Span]:
    """The bridge's spans for one admitted ``ai:generate``: the request (SERVER, child of the
    client's traceparent) and its gRPC hop (CLIENT, its child), whose context the Generate now
    carries to the generator."""
    request = start_span(
        "ai:generate",
        incoming(generate.traceparent),
        "server",
        {
            "aistream.request_id": generate.request_id,
            "aistream.connection": conn,
            "gen_ai.request.model": generate.model,
        },
    )
    hop = start_span(
        "aistream.v1.Generator/StreamBatches",
        traceparent(request),
        "client",
        {
            "rpc.system": "grpc",
            "rpc.service": "aistream.v1.Generator",
            "rpc.method": "StreamBatches",
        },
    )
    generate.traceparent = traceparent(hop)
    return request, hop


def chat_span(
    generate: pb.Generate, parent: str, model: str, provider: str, max_tokens: int
) -> Span:
    """The generator's span for one accepted Generate (``chat {model}``, SERVER, child of
    ``parent``), with the GenAI request attributes."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
        "gen_ai.request.max_tokens": max_tokens,
        "aistream.request_id": generate.request_id,
    }
    if generate.HasField("temperature"):
        attributes["gen_ai.request.temperature"] = generate.temperature
    return start_span(f"chat {model}", parent, "server", attributes)


def end_chat(
    span: Span,
    finish_reasons: Sequence[str],
    usage: pb.Usage,
    ttft_ms: int | None,
    error_type: str | None = None,
) -> None:
    """End a ``chat`` span with what the generation's end says: finish reasons, token usage
    (and where it came from), time to first token, ``error.type`` if it failed."""
    span.set_attribute("gen_ai.response.finish_reasons", list(finish_reasons))
    span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
    upstream = usage.source == pb.USAGE_SOURCE_UPSTREAM
    span.set_attribute("aistream.usage.source", "upstream" if upstream else "estimated")
    if ttft_ms is not None:
        span.set_attribute("aistream.time_to_first_token_ms", ttft_ms)
    if error_type is None:
        span.end()
    else:
        end_error(span, error_type)


def upstream_span(parent: str, method: str, url: str, address: str, port: int | None) -> Span:
    """The generator's span for the upstream HTTP request (``{method} {path}``, CLIENT)."""
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.full": url,
        "server.address": address,
    }
    if port is not None:
        attributes["server.port"] = port
    path = url.split("://", 1)[-1].partition("/")[2]
    return start_span(f"{method} /{path}", parent, "client", attributes)


def end_upstream(span: Span, status: int | None, error_type: str | None) -> None:
    """End the upstream request's span: its response status, ``error_type`` if it failed."""
    if status is not None:
        span.set_attribute("http.response.status_code", status)
    if error_type is None:
        span.end()
    else:
        end_error(span, error_type)


def end_request(spans: tuple[Span, Span], terminal: pb.ServerEvent) -> None:
    """End the bridge's spans of a request (hop first) with its terminal event."""
    if terminal.WhichOneof("event") == "error":
        error_type = codes.json_code(terminal.error.code)
        for span in reversed(spans):
            end_error(span, error_type)
    else:
        for span in reversed(spans):
            span.end()
