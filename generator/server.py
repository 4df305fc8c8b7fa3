"""The generator's grpc.aio server: the Generator service, health checking and reflection.

``GeneratorServer.start`` binds (port 0 picks a free port; ``port`` says which) and serves;
``stop`` shuts down gracefully: health turns NOT_SERVING, new generations are refused, running
ones may finish for ``drain_timeout`` seconds and are then ended with a retryable
``unavailable`` error, their upstreams closed; then the server stops. With ``metrics_port``
set, ``/metrics`` is served on that port too (``metrics_port`` says which).
"""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from aistream.generator.auth import TokenAuthInterceptor
from aistream.generator.openai_upstream import OpenAIUpstream
from aistream.generator.service import GeneratorService
from aistream.generator.simulated import SimulatedUpstream
from aistream.generator.upstream import Upstream
from aistream.settings import GRPC_MAX_MESSAGE_BYTES, Settings
from aistream.v1 import generator_pb2, generator_pb2_grpc

__all__ = ["SERVICE_NAME", "GeneratorServer", "make_upstream"]

log = logging.getLogger(__name__)

SERVICE_NAME = generator_pb2.DESCRIPTOR.services_by_name["Generator"].full_name

_OPTIONS = [
    # A second server on the same port must fail, not share it silently.
    ("grpc.so_reuseport", 0),
    # Notice a peer that vanished without closing its connection.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Deliberate message limits, the same as the bridge's (aistream/settings.py).
    ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
]


def make_upstream(settings: Settings) -> Upstream:
    """The configured upstream: the OpenAI-compatible API, or the simulated model."""
    if settings.upstream_kind == "openai":
        return OpenAIUpstream(settings)
    return SimulatedUpstream(settings)


class GeneratorServer:
    """A running generator: gRPC server, service and upstream."""

    def __init__(self, settings: Settings, upstream: Upstream | None = None) -> None:
        self.settings = settings
        self.upstream = upstream if upstream is not None else make_upstream(settings)
        self.service = GeneratorService(self.upstream, settings)
        self._health = HealthServicer()
        interceptors = []
        if settings.grpc_token is not None:
            interceptors.append(TokenAuthInterceptor(settings.grpc_token))
        self._server = grpc.aio.server(options=_OPTIONS, interceptors=interceptors)
        generator_pb2_grpc.add_GeneratorServicer_to_server(self.service, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self._server,
        )
        self.port = 0
        self.metrics_port: int | None = None
        """Where ``/metrics`` is served (None: nowhere; ``metrics_port`` unset or metrics off)."""

    async def start(self) -> int:
        """Bind and start serving; returns the bound port."""
        s = self.settings
        address = f"{s.generator_host}:{s.generator_port}"
        if s.tls_cert is not None and s.tls_key is not None:
            credentials = grpc.ssl_server_credentials(
                [(s.tls_key.read_bytes(), s.tls_cert.read_bytes())],
                root_certificates=s.tls_client_ca.read_bytes() if s.tls_client_ca else None,
                require_client_auth=s.tls_client_ca is not None,
            )
            self.port = self._server.add_secure_port(address, credentials)
        else:
            self.port = self._server.add_insecure_port(address)
        # /metrics on a port of its own (metrics_port; none by default), on its own thread.
        self.metrics_port = self.service.metrics.serve(s.generator_host, s.metrics_port)
        await self._server.start()
        self.service.start_headroom()
        await self.service.start_durable()
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "generator listening on %s:%d upstream=%s tls=%s",
            s.generator_host,
            self.port,
            self.upstream.kind,
            "mutual" if s.tls_client_ca else "on" if s.tls_cert else "off",
        )
        return self.port

    async def wait(self) -> None:
        """Until the server stops."""
        await self._server.wait_for_termination()

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Graceful shutdown: refuse new work, drain, end the rest, stop, close the upstream."""
        timeout = self.settings.drain_timeout if drain_timeout is None else drain_timeout
        await self._health.enter_graceful_shutdown()
        await self.service.drain(timeout)
        # The ended generations' terminal events still need a moment to reach their clients.
        await self._server.stop(grace=1.0)
        self.service.headroom.stop()
        await self.service.metrics.close()
        await self.upstream.aclose()
        log.info("generator stopped")
