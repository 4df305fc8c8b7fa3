"""The command line: ``python -m aistream.testing.fake_upstream`` serves until SIGTERM or SIGINT.

Once listening it prints ``fake-upstream listening on http://HOST:PORT/v1`` (flushed), the line
other processes wait for; ``--script`` sets the default script as a JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence

from aistream.testing.fake_upstream.script import Script
from aistream.testing.fake_upstream.server import FakeUpstream

__all__ = ["main"]


async def _run(host: str, port: int, script: Script) -> int:
    """Serve until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with FakeUpstream(script, host=host, port=port) as fake:
        print(f"fake-upstream listening on {fake.base_url}", flush=True)
        await stop.wait()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fake upstream from the command line until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m aistream.testing.fake_upstream",
        description="Run a fake OpenAI-compatible upstream that speaks HTTP/1.1 and SSE.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind (default 0: any free)")
    parser.add_argument("--script", default=None, help="default script as a JSON object")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    try:
        script = Script.from_json(json.loads(args.script)) if args.script else Script()
    except (ValueError, TypeError) as exc:
        parser.error(f"--script: {exc}")
    return asyncio.run(_run(args.host, args.port, script))
