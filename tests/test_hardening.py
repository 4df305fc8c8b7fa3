"""Limits, backpressure, access control and graceful shutdown: nothing lost, no ghost generations.

Every stack built by ``make_stack`` checks on teardown that the fake upstream has no response in
progress and no connection open, so each test here also proves "no ghost generations".
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
from pathlib import Path

import grpc
import orjson
import pytest
from conftest import TERMINAL, UNIT, GrpcClient, StackFactory, settings_for
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from aistream.bridge.server import BridgeServer
from aistream.generator.server import GeneratorServer
from aistream.testing.fake_upstream import FakeUpstream, Script

# --- limits -----------------------------------------------------------------------------------


async def test_per_connection_concurrency_limit(make_stack: StackFactory) -> None:
    """Generates beyond max_generations_per_connection get too_many_requests (retryable); the
    running ones finish, and a new generate succeeds once there is room."""
    stack = await make_stack(Script(tokens=20, interval=0.01), max_generations_per_connection=3)
    client = await stack.client()
    for i in range(5):
        await client.generate(f"r{i}")
    refused = [await client.until(lambda f: f["type"] == "ai:error") for _ in range(2)]
    assert {(f[-1]["requestId"], f[-1]["code"], f[-1]["retryable"]) for f in refused} == {
        ("r3", "too_many_requests", True),
        ("r4", "too_many_requests", True),
    }
    by_id = await client.finish_all({"r0", "r1", "r2"})
    assert all(by_id[rid][-1]["type"] == "ai:done" for rid in ("r0", "r1", "r2"))
    await client.generate("r3")
    assert (await client.finish("r3"))["type"] == "ai:done"
    assert len(stack.fake.records) == 4


async def test_frame_flood_is_rate_limited_and_cancel_still_works(make_stack: StackFactory) -> None:
    """Frames beyond the per-connection rate get too_many_requests; the connection goes on and a
    cancel for a running id is never refused."""
    stack = await make_stack(
        Script(tokens=10_000, interval=0.01), frames_per_second=5, frames_burst=5
    )
    client = await stack.client()
    await client.generate("long")
    await client.until(lambda f: f["type"] == "ai:token")
    for i in range(10):
        await client.generate(f"flood{i}", maxTokens=1)
    await client.cancel("long")
    frames = await client.until(
        lambda f: f["type"] == "ai:error" and f["requestId"] == "long", timeout=5 * UNIT
    )
    limited = [f for f in frames if f.get("code") == "too_many_requests"]
    assert len(limited) >= 5
    assert all(f["retryable"] for f in limited)
    assert frames[-1]["code"] == "cancelled"
    refused = {f["requestId"] for f in limited}
    ended = {f["requestId"] for f in frames if f["type"] in TERMINAL}
    await client.finish_all({f"flood{i}" for i in range(10)} - refused - ended)
    await stack.fake.wait_closed(stack.fake.records[0])


async def test_process_generation_limit(fake: FakeUpstream) -> None:
    """At max_generations the generator refuses new ones quickly (too_many_requests, retryable)
    while the running ones carry on to done."""
    fake.script = Script(tokens=20, interval=0.01)
    server = GeneratorServer(settings_for(fake, max_generations=2))
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            a, b = GrpcClient(channel, "a"), GrpcClient(channel, "b")
            await a.generate("a1")
            await b.generate("b1")
            await a.recv()
            await b.recv()
            await b.generate("b2")
            refused = await b.finish("b2")
            assert refused.WhichOneof("event") == "error"
            assert refused.error.code == 6  # ERROR_CODE_TOO_MANY_REQUESTS
            assert refused.error.retryable
            assert (await a.finish("a1")).WhichOneof("event") == "done"
            assert (await b.finish("b1")).WhichOneof("event") == "done"
            await b.generate("b3")
            assert (await b.finish("b3")).WhichOneof("event") == "done"
            a.call.cancel()
            b.call.cancel()
    finally:
        await server.stop(drain_timeout=0)
    assert len(fake.records) == 3


async def test_slow_consumer_is_cut_off_with_bounded_memory(make_stack: StackFactory) -> None:
    """A client that never reads: the bridge's queue stays under ws_send_buffer, then its
    generations are cancelled upstream and the socket is closed with 1008 slow_consumer."""
    bound = 64 * 1024
    stack = await make_stack(
        Script(tokens=100_000, text="x" * 1000, interval=0.0002),  # 100 MB, 5 MB/s per stream
        ws_send_buffer=bound,
        ws_close_timeout=10 * UNIT,  # so the close frame waits for the client to read up to it
    )
    client = await stack.client()
    client.abandon()
    await client.generate("a")
    await client.generate("b")
    client.ws.transport.pause_reading()  # the client stops reading, the kernel buffers fill
    await stack.fake.wait_for(lambda: len(stack.fake.records) == 2)
    await stack.fake.wait_for(lambda: not stack.fake.active(), timeout=10 * UNIT)
    assert {r.outcome for r in stack.fake.records} == {"client_closed"}
    assert all(r.tokens_sent < 100_000 for r in stack.fake.records)
    (connection,) = stack.bridge.connections or [None]
    if connection is not None:
        assert connection.outbox.peak_bytes <= bound
    client.ws.transport.resume_reading()  # read the backlog: error frames, then the close frame
    frames = []
    with contextlib.suppress(ConnectionClosed):
        async for message in client.ws:
            frames.append(orjson.loads(message))
    ends = {f["requestId"]: f["code"] for f in frames if f["type"] == "ai:error"}
    assert ends == {"a": "slow_consumer", "b": "slow_consumer"}
    assert (client.ws.close_code, client.ws.close_reason) == (1008, "slow_consumer")


async def test_max_connections_refuses_with_503(make_stack: StackFactory) -> None:
    """Beyond max_connections the handshake is refused with HTTP 503; existing ones still work."""
    stack = await make_stack(max_connections=2)
    first, _second = await stack.client(), await stack.client()
    with pytest.raises(InvalidStatus) as refused:
        await connect(stack.ws_url)
    assert refused.value.response.status_code == 503
    await first.generate("r1")
    assert (await first.finish("r1"))["type"] == "ai:done"


# --- access control ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),  # not a browser
        ("http://localhost:5173", True),
        ("http://127.0.0.1:9999", True),
        ("https://app.example", True),  # in allowed_origins
        ("https://evil.example", False),
        ("null", False),
    ],
)
async def test_origin_allow_list(
    make_stack: StackFactory, origin: str | None, allowed: bool
) -> None:
    """Only same-origin, localhost and listed origins may open the socket; others get 403."""
    stack = await make_stack(allowed_origins=("https://app.example",))
    headers = {"Origin": origin} if origin else None
    if allowed:
        async with connect(stack.ws_url, additional_headers=headers) as ws:
            await ws.send('{"type":"ai:cancel","requestId":"x"}')
    else:
        with pytest.raises(InvalidStatus) as refused:
            await connect(stack.ws_url, additional_headers=headers)
        assert refused.value.response.status_code == 403


async def test_same_origin_is_allowed(make_stack: StackFactory) -> None:
    """A page served by the bridge itself (Origin = its own host:port) may connect."""
    stack = await make_stack()
    origin = f"http://127.0.0.1:{stack.bridge.port}"
    async with connect(stack.ws_url, additional_headers={"Origin": origin}):
        pass
    with pytest.raises(InvalidStatus):
        await connect(stack.ws_url, additional_headers={"Origin": "http://example.com:1"})


async def test_browser_token_auth(make_stack: StackFactory) -> None:
    """With auth_token set: no or wrong token → 401; query, cookie and subprotocol all work."""
    stack = await make_stack(auth_token="s3cret")
    for bad in (stack.ws_url, stack.ws_url + "?token=wrong"):
        with pytest.raises(InvalidStatus) as refused:
            await connect(bad)
        assert refused.value.response.status_code == 401
    async with connect(stack.ws_url + "?token=s3cret"):
        pass
    async with connect(stack.ws_url, additional_headers={"Cookie": "aistream_token=s3cret"}):
        pass
    async with connect(
        stack.ws_url,
        subprotocols=["aistream.v1", "aistream.token.s3cret"],  # type: ignore[list-item]
    ) as ws:
        assert ws.subprotocol == "aistream.v1"


async def test_grpc_token_auth(fake: FakeUpstream) -> None:
    """With grpc_token set, calls without the bearer token fail UNAUTHENTICATED; the bridge sends
    it; health checks stay open."""
    server = GeneratorServer(settings_for(fake, grpc_token="g-token"))
    port = await server.start()
    bridge = BridgeServer(
        settings_for(fake, generator_target=f"127.0.0.1:{port}", grpc_token="g-token")
    )
    await bridge.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = GrpcClient(channel, "no token")
            await client.generate("r1")
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await client.call.read()
            assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED
            client.abandon()
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        async with connect(f"ws://127.0.0.1:{bridge.port}/ws") as ws:
            await ws.send('{"type":"ai:generate","requestId":"r1","prompt":"hi"}')
            frames = [orjson.loads(await ws.recv()) for _ in range(2)]
            assert frames[0]["type"] == "ai:start"
    finally:
        await bridge.stop(drain_timeout=0)
        await server.stop(drain_timeout=0)


def _certificates(tmp: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all made here."""
    now = datetime.datetime.now(datetime.UTC)

    def make(
        name: str,
        issuer_key: ec.EllipticCurvePrivateKey | None,
        issuer: x509.Name | None,
        ca: bool,
        san: bool,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer or subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return key, builder.sign(issuer_key or key, hashes.SHA256())

    ca_key, ca_cert = make("aistream test CA", None, None, ca=True, san=False)
    files: dict[str, Path] = {}
    for role, san in (("server", True), ("client", False)):
        key, cert = make(f"aistream test {role}", ca_key, ca_cert.subject, ca=False, san=san)
        files[f"{role}_key"] = tmp / f"{role}.key"
        files[f"{role}_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        files[f"{role}_cert"] = tmp / f"{role}.crt"
        files[f"{role}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["ca"] = tmp / "ca.crt"
    files["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return files


@pytest.mark.parametrize("mutual", [False, True])
async def test_tls_on_the_grpc_hop(fake: FakeUpstream, tmp_path: Path, mutual: bool) -> None:
    """The bridge reaches a TLS generator with the test CA (and a client certificate when the
    generator requires one); a plaintext or certificate-less client is refused."""
    certs = _certificates(tmp_path)
    server = GeneratorServer(
        settings_for(
            fake,
            tls_cert=certs["server_cert"],
            tls_key=certs["server_key"],
            tls_client_ca=certs["ca"] if mutual else None,
        )
    )
    port = await server.start()
    target = f"127.0.0.1:{port}"
    client_files = (
        {"generator_tls_cert": certs["client_cert"], "generator_tls_key": certs["client_key"]}
        if mutual
        else {}
    )
    bridge = BridgeServer(
        settings_for(fake, generator_target=target, generator_tls_ca=certs["ca"], **client_files)
    )
    await bridge.start()
    try:
        async with connect(f"ws://127.0.0.1:{bridge.port}/ws") as ws:
            await ws.send('{"type":"ai:generate","requestId":"r1","prompt":"hi"}')
            frames = []
            while not frames or frames[-1]["type"] not in TERMINAL:
                frames.append(orjson.loads(await asyncio.wait_for(ws.recv(), 5 * UNIT)))
            assert frames[-1]["type"] == "ai:done"
        async with grpc.aio.insecure_channel(target) as plain:
            client = GrpcClient(plain, "plaintext")
            client.abandon()
            with pytest.raises(grpc.aio.AioRpcError):
                await client.generate("x")
                await asyncio.wait_for(client.call.read(), 5 * UNIT)
        if mutual:
            only_ca = grpc.ssl_channel_credentials(root_certificates=certs["ca"].read_bytes())
            async with grpc.aio.secure_channel(target, only_ca) as anonymous:
                client = GrpcClient(anonymous, "no client cert")
                client.abandon()
                with pytest.raises(grpc.aio.AioRpcError):
                    await client.generate("x")
                    await asyncio.wait_for(client.call.read(), 5 * UNIT)
    finally:
        await bridge.stop(drain_timeout=0)
        await server.stop(drain_timeout=0)


async def test_api_key_and_upstream_text_never_reach_the_browser(make_stack: StackFactory) -> None:
    """Frames carry neither the upstream API key nor the upstream's error body."""
    stack = await make_stack(
        Script(status=401, error_message="Incorrect API key provided: test-key (sk-internal)")
    )
    client = await stack.client()
    await client.generate("r1")
    frames = await client.until(lambda f: f["type"] in TERMINAL)
    text = orjson.dumps(frames).decode()
    assert "test-key" not in text
    assert "sk-internal" not in text
    assert frames[-1]["code"] == "upstream_error"


# --- graceful shutdown ------------------------------------------------------------------------


async def test_bridge_shutdown_drains_then_closes_1012(make_stack: StackFactory) -> None:
    """On stop, a generation that finishes within the drain ends in done; one that does not gets
    unavailable (retryable); then the socket is closed with 1012 and the upstreams are closed."""
    stack = await make_stack(Script(tokens=10, interval=0.01))
    client = await stack.client()
    await client.generate("short")
    await client.generate("long", "#fake " + '{"tokens": 100000, "interval": 0.01}')
    await client.until(lambda f: f["type"] == "ai:token")
    stopping = asyncio.create_task(stack.bridge.stop(drain_timeout=0.5 * UNIT))
    by_id = await client.finish_all({"short", "long"})
    assert by_id["short"][-1]["type"] == "ai:done"
    assert (by_id["long"][-1]["code"], by_id["long"][-1]["retryable"]) == ("unavailable", True)
    await client.ws.wait_closed()
    assert client.ws.close_code == 1012
    await stopping
    await stack.fake.wait_idle(2 * UNIT)


async def test_per_stream_generation_limit(fake: FakeUpstream) -> None:
    """Beyond max_generations_per_stream one gRPC stream gets too_many_requests; another stream
    on the same channel is not affected."""
    fake.script = Script(tokens=20, interval=0.01)
    server = GeneratorServer(settings_for(fake, max_generations_per_stream=1))
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            a, b = GrpcClient(channel, "a"), GrpcClient(channel, "b")
            await a.generate("a1")
            await a.generate("a2")
            await b.generate("b1")
            refused = await a.finish("a2")
            assert (refused.error.code, refused.error.retryable) == (6, True)
            assert (await a.finish("a1")).WhichOneof("event") == "done"
            assert (await b.finish("b1")).WhichOneof("event") == "done"
            a.call.cancel()
            b.call.cancel()
    finally:
        await server.stop(drain_timeout=0)
