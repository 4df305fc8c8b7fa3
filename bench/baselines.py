"""The ceilings of each hop: ``python -m bench.baselines ws|grpc``.

* ``ws``: a bare ``websockets`` server (compression off, as the bridge) that answers each
  ``ai:generate`` by pushing the same JSON frames the bridge would send (``ai:start``, one
  ``ai:token`` per token, ``ai:done``) on the schedule in the prompt — the last hop with nothing
  behind it. A ``resumable`` one it numbers as aistream does and resumes on ``ai:resume`` (on
  any connection) from the position given, on the same schedule: what was made while nobody
  read goes at once.
* ``grpc``: a bare grpc.aio ``Generator.Stream`` service that answers each ``Generate`` with the
  same ``ServerEvent`` messages on the same schedule — the middle hop with nothing behind it.

Both honour a cancel; neither talks to any upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import orjson

from bench.procs import raise_fd_limit
from bench.spec import StreamSpec, parse_prompt, token_text

__all__ = ["main", "push"]


async def push(spec: StreamSpec, emit: Callable[[int], Awaitable[None]]) -> None:
    """Call ``emit(i)`` for each token of ``spec``, each at its due time (or at once if unpaced)."""
    loop = asyncio.get_running_loop()
    start = loop.time() + spec.ttft
    for i in range(spec.tokens):
        if spec.interval > 0 or (i == 0 and spec.ttft > 0):
            delay = start + i * spec.interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        await emit(i)


# --- bare websockets --------------------------------------------------------------------------


_RESUMABLE: dict[str, tuple[StreamSpec, float]] = {}
"""Resume token → the stream's spec and when it started (the bare server's whole "log": a
resumed stream goes on from any position on the same schedule, as if it had never stopped)."""


async def _ws_handler(ws: Any) -> None:
    tasks: dict[str, asyncio.Task[None]] = {}

    async def stream(rid: str, spec: StreamSpec, token: str | None, after: int = -1) -> None:
        # resumable: positions as aistream's (start 0, token i at i + 1); else tokens from 0
        shift = 1 if token is not None else 0
        offset = 0  # (a resume: tokens made before it)

        async def send(index: int) -> None:
            frame = {"type": "ai:token", "requestId": rid, "chunk": token_text(index)}
            await ws.send(orjson.dumps({**frame, "seq": index + shift, "count": 1}).decode())

        async def emit(i: int) -> None:
            await send(i + offset)

        if token is None or after < 0:
            start: dict[str, Any] = {"type": "ai:start", "requestId": rid}
            if token is not None:
                start |= {"seq": 0, "resumeToken": token}
                _RESUMABLE[token] = (spec, asyncio.get_running_loop().time())
            await ws.send(orjson.dumps(start).decode())
        else:  # what was made while nobody read goes at once (from after + 1), then the rest
            began = _RESUMABLE[token][1]
            elapsed = asyncio.get_running_loop().time() - began - spec.ttft
            made = spec.tokens if not spec.interval else int(elapsed / spec.interval) + 1
            offset = max(after, min(made, spec.tokens))
            for index in range(after, offset):
                await send(index)
            due = began + spec.ttft + offset * spec.interval  # the next one's time, as before
            wait = max(0.0, due - asyncio.get_running_loop().time())
            spec = dataclasses.replace(spec, ttft=wait, tokens=spec.tokens - offset)
        await push(spec, emit)
        await ws.send(orjson.dumps({"type": "ai:done", "requestId": rid}).decode())

    def start(rid: str, work: Any) -> None:
        task = asyncio.create_task(work)
        tasks[rid] = task
        task.add_done_callback(lambda _, rid=rid: tasks.pop(rid, None))

    try:
        async for message in ws:
            frame = orjson.loads(message)
            rid = frame.get("requestId", "")
            kind = frame.get("type")
            if kind == "ai:generate":
                spec, _ = parse_prompt(frame.get("prompt", ""))
                token = f"bare.{id(ws):x}.{rid}" if frame.get("resumable") else None
                start(rid, stream(rid, spec, token))
            elif kind == "ai:resume" and frame.get("resumeToken") in _RESUMABLE:
                token = frame["resumeToken"]
                start(rid, stream(rid, _RESUMABLE[token][0], token, frame.get("afterSeq", -1)))
            elif kind == "ai:cancel" and rid in tasks:
                tasks[rid].cancel()
                error = {"type": "ai:error", "requestId": rid, "code": "cancelled"}
                await ws.send(orjson.dumps(error).decode())
    except Exception:  # the socket closed
        pass
    finally:
        for task in list(tasks.values()):
            task.cancel()


async def _serve_ws(host: str, port: int, stop: asyncio.Event) -> None:
    from websockets.asyncio.server import serve

    async with serve(_ws_handler, host, port, compression=None, max_size=2**20) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"bench-ws listening on ws://{host}:{bound}/ws", flush=True)
        await stop.wait()


# --- bare grpc.aio ----------------------------------------------------------------------------


def _grpc_servicer() -> Any:
    from aistream.v1 import events_pb2 as pb
    from aistream.v1 import generator_pb2_grpc

    class Bare(generator_pb2_grpc.GeneratorServicer):  # type: ignore[misc]
        async def Stream(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            out: asyncio.Queue[Any] = asyncio.Queue()
            tasks: dict[str, asyncio.Task[None]] = {}

            async def stream(rid: str, spec: StreamSpec) -> None:
                async def emit(i: int) -> None:
                    token = pb.Token(request_id=rid, chunk=token_text(i), seq=i, count=1)
                    await out.put(pb.ServerEvent(token=token))

                await out.put(pb.ServerEvent(start=pb.Start(request_id=rid)))
                await push(spec, emit)
                await out.put(pb.ServerEvent(done=pb.Done(request_id=rid)))

            async def read() -> None:
                async for event in requests:
                    kind = event.WhichOneof("event")
                    if kind == "generate":
                        rid = event.generate.request_id
                        spec, _ = parse_prompt(event.generate.prompt)
                        task = asyncio.create_task(stream(rid, spec))
                        tasks[rid] = task
                        task.add_done_callback(lambda _, rid=rid: tasks.pop(rid, None))
                    elif kind == "cancel" and event.cancel.request_id in tasks:
                        tasks[event.cancel.request_id].cancel()

            reader = asyncio.create_task(read())
            try:
                while True:
                    yield await out.get()
            finally:
                reader.cancel()
                for task in list(tasks.values()):
                    task.cancel()

    return Bare()


async def _serve_grpc(host: str, port: int, stop: asyncio.Event) -> None:
    import grpc

    from aistream.v1 import generator_pb2_grpc

    server = grpc.aio.server()
    generator_pb2_grpc.add_GeneratorServicer_to_server(_grpc_servicer(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"bench-grpc listening on {host}:{bound}", flush=True)
    await stop.wait()
    await server.stop(grace=0)


async def _serve(kind: str, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(asyncio.CancelledError):
        if kind == "ws":
            await _serve_ws(host, port, stop)
        else:
            await _serve_grpc(host, port, stop)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the chosen baseline until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m bench.baselines", description=__doc__)
    parser.add_argument("kind", choices=("ws", "grpc"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    raise_fd_limit()
    asyncio.run(_serve(args.kind, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
