"""The ``aistream`` command: ``up``, ``generator`` and ``bridge``.

Each command prints one line to stdout once it is listening (the real port, also for ``--port 0``),
so scripts and tests can read where it is; logs go to stderr. SIGINT/SIGTERM shut down gracefully
(stop accepting, end in-flight generations with a retryable error, close upstreams) and exit 0.

``aistream up`` runs the generator as a child process and the bridge in this one — one generator
process and one bridge process, as in production — and prints the URL to open. Its generator
serves ``/metrics`` on a port of its own (its ready line says where), and the bridge's
``/metrics`` appends that page: one scrape sees both processes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from aistream import collector, logs, tracing
from aistream.children import AsyncChild, ChildError
from aistream.settings import ENV_PREFIX, Settings, SettingsError

__all__ = ["main"]

log = logging.getLogger("aistream")

_GENERATOR_READY = re.compile(
    r"aistream generator listening on (\S+):(\d+) \(upstream: (\w+)\)(?: metrics on (http://\S+))?"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aistream", description="Stream LLM generations to browsers and backend services."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def upstream_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--base-url", help="OpenAI-compatible base URL (env OPENAI_BASE_URL)")
        p.add_argument("--api-key", help="upstream API key (env OPENAI_API_KEY)")
        p.add_argument("--model", help="default model for a real upstream (env AISTREAM_MODEL)")

    up = commands.add_parser("up", help="run generator + bridge (+ web client); print the URL")
    up.add_argument("--host", help="bridge address (default 127.0.0.1)")
    up.add_argument("--port", type=int, help="bridge port (default 8080; 0 = any free port)")
    upstream_flags(up)

    gen = commands.add_parser("generator", help="run the gRPC generator")
    gen.add_argument("--host", help="address (default 127.0.0.1)")
    gen.add_argument("--port", type=int, help="port (default 50051; 0 = any free port)")
    gen.add_argument(
        "--metrics-port",
        type=int,
        help="serve /metrics on this port (env AISTREAM_METRICS_PORT; 0 = any free port)",
    )
    gen.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    upstream_flags(gen)

    bridge = commands.add_parser("bridge", help="run the WebSocket bridge")
    bridge.add_argument("--host", help="address (default 127.0.0.1)")
    bridge.add_argument("--port", type=int, help="port (default 8080; 0 = any free port)")
    bridge.add_argument("--generator", help="generator HOST:PORT (default 127.0.0.1:50051)")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        "base_url": getattr(args, "base_url", None),
        "api_key": getattr(args, "api_key", None),
        "model": getattr(args, "model", None),
    }
    if args.command == "generator":
        overrides |= {
            "generator_host": args.host,
            "generator_port": args.port,
            "metrics_port": args.metrics_port,
        }
    else:
        overrides |= {"bridge_host": args.host, "bridge_port": args.port}
    if args.command == "bridge":
        overrides["generator_target"] = args.generator
    return Settings.from_env(**overrides)


def _say(line: str) -> None:
    print(line, flush=True)


def _stop_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM; installed before anything starts listening."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _until_stopped(stop: asyncio.Event, extra: asyncio.Future[Any] | None = None) -> None:
    """Wait for a stop signal, or for ``extra`` to complete."""
    waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait())]
    if extra is not None:
        waiters.append(extra)
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()


def _stdin_closed() -> asyncio.Future[None]:
    """Resolves when stdin reaches EOF: the parent process is gone."""
    loop = asyncio.get_running_loop()
    closed: asyncio.Future[None] = loop.create_future()
    fd = sys.stdin.fileno()

    def on_readable() -> None:
        if not os.read(fd, 4096) and not closed.done():
            loop.remove_reader(fd)
            closed.set_result(None)

    loop.add_reader(fd, on_readable)
    return closed


async def _run_generator(settings: Settings, exit_with_parent: bool) -> None:
    from aistream.generator.server import GeneratorServer

    stop = _stop_signals()
    server = GeneratorServer(settings)
    port = await server.start()
    if server.upstream.kind == "simulated":
        log.warning("no upstream configured: serving the SIMULATED model (set OPENAI_BASE_URL)")
    metrics = ""
    if server.metrics_port is not None:
        host = settings.generator_host
        host = f"[{host}]" if ":" in host else host
        metrics = f" metrics on http://{host}:{server.metrics_port}/metrics"
    _say(
        f"aistream generator listening on {settings.generator_host}:{port} "
        f"(upstream: {server.upstream.kind}){metrics}"
    )
    await _until_stopped(stop, _stdin_closed() if exit_with_parent else None)
    await server.stop()


async def _run_bridge(settings: Settings) -> None:
    from aistream.bridge.server import WS_PATH, BridgeServer

    stop = _stop_signals()
    server = BridgeServer(settings)
    port = await server.start()
    _say(
        f"aistream bridge listening on http://{settings.bridge_host}:{port}/ "
        f"(websocket ws://{settings.bridge_host}:{port}{WS_PATH})"
    )
    await _until_stopped(stop)
    await server.stop()


async def _run_up(settings: Settings) -> None:
    from aistream.bridge.server import BridgeServer

    stop = _stop_signals()
    argv = [sys.executable, "-m", "aistream", "generator", "--host", "127.0.0.1", "--port", "0"]
    if settings.metrics:
        # The bridge's /metrics appends the generator's: one scrape sees both processes.
        argv += ["--metrics-port", str(settings.metrics_port or 0)]
    # `up`'s upstream flags reach its generator through its environment (never its command
    # line, which any local user can read).
    upstream_env = {
        f"{ENV_PREFIX}BASE_URL": settings.base_url,
        f"{ENV_PREFIX}API_KEY": settings.api_key,
        f"{ENV_PREFIX}MODEL": settings.model,
    }
    child_env = {name: value for name, value in upstream_env.items() if value}
    try:
        # its stdin is a pipe: with --exit-with-parent the generator ends when this process does
        started = await AsyncChild.start(
            [*argv, "--exit-with-parent"], _GENERATOR_READY, name="the generator", env=child_env
        )
    except ChildError as exc:
        raise SystemExit(f"aistream: {exc}") from None
    child, match = started.process, started.ready
    upstream = match[3]
    target = f"{match[1]}:{match[2]}"
    bridge = BridgeServer(settings.replace(generator_target=target, generator_metrics_url=match[4]))
    port = await bridge.start()
    url = f"http://{settings.bridge_host}:{port}/"
    if settings.auth_token:
        url += f"?token={quote(settings.auth_token)}"  # the page hands it on to its socket
    if not (bridge.static_dir / "index.html").is_file():
        log.warning("web client not built: run `npm run build` in webclient/ (or scripts/run.sh)")
    label = (
        " — SIMULATED model (set OPENAI_BASE_URL for a real one)" if upstream == "simulated" else ""
    )
    _say(f"aistream is up: open {url}{label}")
    exited = asyncio.ensure_future(child.wait())
    await _until_stopped(stop, exited)
    await bridge.stop()
    if child.returncode is None:
        child.terminate()
    await child.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aistream`` console script."""
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except SettingsError as exc:
        print(f"aistream: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)  # (text or JSON lines, on stderr)
    # websockets logs every connection and HTTP request at INFO; ours say what matters.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, logging.root.level))
    collector.install()
    process = "generator" if args.command == "generator" else "bridge"
    try:
        tracing.configure(settings, service=f"aistream-{process}")
    except SettingsError as exc:
        print(f"aistream: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "generator":
            asyncio.run(_run_generator(settings, args.exit_with_parent))
        elif args.command == "bridge":
            asyncio.run(_run_bridge(settings))
        else:
            asyncio.run(_run_up(settings))
    finally:
        tracing.shutdown()  # the spans still buffered are exported
    return 0
