"""A backend service calling the generator directly over gRPC, with the grpcio stubs.

Starts two generations on one stream, prints the first as it streams, cancels the second after
three tokens, and prints how each ended. Run a generator first (``aistream generator``), then:

    python examples/grpc_client.py [--target 127.0.0.1:50051]
"""

from __future__ import annotations

import argparse
import asyncio

import grpc

from aistream.v1 import events_pb2 as pb
from aistream.v1 import generator_pb2_grpc


async def main(target: str) -> int:
    """Stream one answer, cancel another; 0 if both ended as expected."""
    async with grpc.aio.insecure_channel(target) as channel:
        call = generator_pb2_grpc.GeneratorStub(channel).Stream()
        await call.write(pb.ClientEvent(generate=pb.Generate(request_id="answer", prompt="Hello!")))
        await call.write(pb.ClientEvent(generate=pb.Generate(request_id="stopped", prompt="Long?")))
        endings: dict[str, str] = {}
        stopped_tokens = 0  # (counted: seq numbers every part, reasoning too)
        async for event in call:
            kind = event.WhichOneof("event")
            if kind == "start":
                print(f"[{event.start.request_id}] start (model {event.start.model})")
            elif kind == "token":
                token = event.token
                if token.request_id == "answer":
                    print(token.chunk, end="", flush=True)
                else:  # stop the other answer after its third token
                    stopped_tokens += max(token.count, 1)
                    if stopped_tokens >= 3:
                        await call.write(pb.ClientEvent(cancel=pb.Cancel(request_id="stopped")))
            elif kind == "done":
                usage = event.done.usage
                endings[event.done.request_id] = "done"
                print(f"\n[{event.done.request_id}] done: {usage.completion_tokens} tokens")
            elif kind == "error":
                endings[event.error.request_id] = pb.ErrorCode.Name(event.error.code)
                print(f"[{event.error.request_id}] error {endings[event.error.request_id]}")
            if len(endings) == 2:
                await call.done_writing()
        ok = endings == {"answer": "done", "stopped": "ERROR_CODE_CANCELLED"}
        return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051")
    raise SystemExit(asyncio.run(main(parser.parse_args().target)))
