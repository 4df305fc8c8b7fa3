"""An agent loop over gRPC with the betterproto2 SDK: the model calls a tool, we run it, it answers.

Offers the model one tool, ``get_weather(city)``, and asks about the weather. The reasoning and the
answer print as they stream; the calls the model makes arrive whole in ``Done.tool_calls``. The
loop runs each call here (a made-up, deterministic weather), sends the conversation back (the
assistant's turn with its calls, one ``tool`` message per result) and prints the final answer and
each turn's usage. Works with the simulated model (the generator's default) and with any
OpenAI-compatible upstream. Run a generator first, then:

    python examples/agent_loop.py [--target 127.0.0.1:50051] [--prompt "…"]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
from typing import Any

from grpclib.client import Channel

from aistream_client.aistream.v1 import (
    ChatMessage,
    ClientEvent,
    Done,
    FinishReason,
    Generate,
    GeneratorStub,
    Json,
    Role,
    Tool,
    ToolCall,
    Usage,
)

PROMPT = "What's the weather like in Lisbon right now?"
MAX_TURNS = 4
"""Model turns at most: a model that keeps calling tools is stopped there."""

WEATHER_TOOL = Tool(
    name="get_weather",
    description="The current weather in a city.",
    parameters=Json(
        text=json.dumps(
            {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "The city, e.g. Paris"}},
                "required": ["city"],
                "additionalProperties": False,
            }
        )
    ),
)


def get_weather(city: str) -> dict[str, Any]:
    """The tool: a made-up weather, the same for the same city every time."""
    digest = hashlib.sha256(city.strip().lower().encode()).digest()
    sky = ("sunny", "cloudy", "rainy", "windy")[digest[1] % 4]
    return {"city": city, "temperature_c": 8 + digest[0] % 20, "sky": sky}


def run(call: ToolCall) -> str:
    """Run one tool call; its result, as the JSON text a ``tool`` message carries."""
    try:
        arguments = json.loads(call.arguments)
    except json.JSONDecodeError:
        return json.dumps({"error": "the arguments are not JSON"})
    if call.name != "get_weather" or not isinstance(arguments, dict):
        return json.dumps({"error": f"no tool {call.name!r} taking these arguments"})
    return json.dumps(get_weather(str(arguments.get("city", ""))), ensure_ascii=False)


class Printer:
    """Prints streamed parts, each run of one kind after a ``[kind]`` label."""

    def __init__(self) -> None:
        self._kind = ""

    def write(self, kind: str, text: str) -> None:
        if kind != self._kind:
            self.line()
            print(f"[{kind}] ", end="")
            self._kind = kind
        print(text, end="", flush=True)

    def line(self) -> None:
        """End the current run."""
        if self._kind:
            print(flush=True)
        self._kind = ""


def usage_line(usage: Usage | None) -> str:
    if usage is None:
        return "[usage] none"
    return (
        f"[usage] prompt={usage.prompt_tokens} completion={usage.completion_tokens}"
        f" reasoning={usage.reasoning_tokens if usage.reasoning_tokens is not None else '-'}"
        f" cached={usage.cached_tokens if usage.cached_tokens is not None else '-'}"
        f" ({usage.source.name.lower()})"
    )


async def turn(stub: GeneratorStub, generate: Generate) -> tuple[Done | None, str]:
    """One model turn: stream it, printing its parts; its Done (None when it ended in error) and
    its answer text."""
    out = Printer()
    done: Done | None = None
    text: list[str] = []
    # One call per turn: the Generate, then a half-close; the call ends after the terminal event.
    async for event in stub.stream([ClientEvent(generate=generate)]):
        if event.reasoning is not None:
            out.write("reasoning", event.reasoning.chunk)
        elif event.token is not None:
            out.write("answer", event.token.chunk)
            text.append(event.token.chunk)
        elif event.refusal is not None:
            out.write("refusal", event.refusal.chunk)
        elif event.tool_call is not None:
            out.line()
            print(f"[calling] {event.tool_call.name} ({event.tool_call.id})", flush=True)
        elif event.done is not None:
            done = event.done
        elif event.error is not None:
            out.line()
            error = event.error
            print(f"[error] {error.code.name.lower()}: {error.message}", flush=True)
    out.line()
    if done is not None:
        print(f"[done] {done.finish_reason.name.lower()}")
        print(usage_line(done.usage), flush=True)
    return done, "".join(text)


async def main(target: str, prompt: str) -> int:
    """Run the loop to the model's final answer; 0 if it ended in Done."""
    host, _, port = target.rpartition(":")
    conversation = [ChatMessage(role=Role.USER, content=prompt)]
    channel = Channel(host, int(port))
    try:
        stub = GeneratorStub(channel)
        for number in range(1, MAX_TURNS + 1):
            print(f"--- turn {number}")
            generate = Generate(
                request_id=f"agent-{number}", messages=conversation, tools=[WEATHER_TOOL]
            )
            done, text = await turn(stub, generate)
            if done is None:
                return 1
            if done.finish_reason != FinishReason.TOOL_CALLS or not done.tool_calls:
                return 0  # the final answer
            # The model's turn goes back as it was: its text (often none) and its calls.
            conversation.append(
                ChatMessage(role=Role.ASSISTANT, content=text, tool_calls=done.tool_calls)
            )
            for call in done.tool_calls:
                result = run(call)
                print(f"[tool] {call.name}({call.arguments}) -> {result}", flush=True)
                conversation.append(
                    ChatMessage(role=Role.TOOL, content=result, tool_call_id=call.id)
                )
        print(f"[stopped] still calling tools after {MAX_TURNS} turns")
        return 1
    finally:
        channel.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--prompt", default=PROMPT)
    options = parser.parse_args()
    raise SystemExit(asyncio.run(main(options.target, options.prompt)))
