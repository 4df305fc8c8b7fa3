"""The same over the betterproto2 SDK (``aistream_client``): idiomatic dataclasses, asyncio.

Streams one answer and cancels a second after three tokens. Run a generator first, then:

    python examples/sdk_client.py [--target 127.0.0.1:50051]
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

from grpclib.client import Channel

from aistream_client.aistream.v1 import (
    Cancel,
    ClientEvent,
    ErrorCode,
    Generate,
    GeneratorStub,
)


async def main(target: str) -> int:
    """Stream one answer, cancel another; 0 if both ended as expected."""
    host, _, port = target.rpartition(":")
    outgoing: asyncio.Queue[ClientEvent | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[ClientEvent]:
        while (event := await outgoing.get()) is not None:
            yield event

    await outgoing.put(ClientEvent(generate=Generate(request_id="answer", prompt="Hello!")))
    await outgoing.put(ClientEvent(generate=Generate(request_id="stopped", prompt="Long?")))
    endings: dict[str, str] = {}
    stopped_tokens = 0  # (counted: seq numbers every part, reasoning too)
    channel = Channel(host, int(port))
    try:
        async for event in GeneratorStub(channel).stream(requests()):
            if event.token is not None:
                if event.token.request_id == "answer":
                    print(event.token.chunk, end="", flush=True)
                else:  # stop the other answer after its third token
                    stopped_tokens += max(event.token.count, 1)
                    if stopped_tokens >= 3:
                        await outgoing.put(ClientEvent(cancel=Cancel(request_id="stopped")))
            elif event.done is not None:
                endings[event.done.request_id] = "done"
                print(f"\n[{event.done.request_id}] done ({event.done.finish_reason.name})")
            elif event.error is not None:
                endings[event.error.request_id] = event.error.code.name
                print(f"[{event.error.request_id}] error {event.error.code.name}")
            if len(endings) == 2:
                await outgoing.put(None)  # half-close: the server ends the call
    finally:
        channel.close()
    ok = endings == {"answer": "done", "stopped": ErrorCode.CANCELLED.name}
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051")
    raise SystemExit(asyncio.run(main(parser.parse_args().target)))
