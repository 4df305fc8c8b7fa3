"""The embedded simulated model: the default when no upstream is configured.

Deterministic (the same request gives the same stream), labelled "simulated" everywhere (its model
name, the logs, the start banner), with a configurable time to first token and token rate, so the
whole product, its demos, tests and benchmarks run with no key and no network.

It streams every part a model can, one piece per token at the configured pace:

- **reasoning** first: ``simulated_reasoning_tokens`` tokens of "thinking" about the prompt;
- then **tool calls**, when the request has tools, ``tool_choice`` is not ``"none"`` and the last
  message is not a tool result: the forced tool, else the first; with ``"required"``, every tool
  as parallel calls whose argument pieces interleave. The arguments are made from each tool's
  JSON Schema (``sample``), so they validate. Finish ``tool_calls``;
- or an **answer**: the made-up words (after tool results: words that use the results); with a
  ``response_format``, JSON instead (a value made from the ``json_schema``'s schema, or
  ``{"answer": …}`` for ``json_object``), indented, in pieces of a few characters. Finish ``stop``;
- or a **refusal**, when the script asks for one. Finish ``stop``;
- **usage** on the last delta: every piece streamed is a completion token (``reasoning_tokens``:
  the reasoning ones). ``max_tokens`` bounds them all (finish ``length`` when it cut the stream).

The last user message may script the simulation with a first line ``#simulate {json}``; keys:
``tokens`` (answer length; in words for a JSON answer), ``reasoning`` (reasoning length),
``ttft_ms``, ``tokens_per_s``, ``fail_before`` (an upstream failure before the first token),
``fail_after`` (an upstream failure after that many answer tokens), ``stall_after`` (stop sending
after that many answer tokens, until a time limit or cancel ends it), ``truncate_after`` (end the
stream after that many answer tokens without finishing), ``refuse`` (refuse instead of answering),
``invalid_json`` (cut the last character off the JSON it writes: tool-call arguments and structured
output). Answer tokens are every piece after the reasoning.
Example: ``#simulate {"fail_after": 5}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields, replace
from typing import Literal

import orjson

from aistream.generator.samples import sample, seeded_words
from aistream.generator.upstream import (
    CallPiece,
    Delta,
    Message,
    UpstreamFailure,
    UpstreamRequest,
    truncated,
)
from aistream.settings import Settings
from aistream.v1 import events_pb2 as pb

__all__ = ["SIMULATED_MODEL", "SimulatedUpstream", "answer_tokens", "sample"]

SIMULATED_MODEL = "aistream-simulated"
DIRECTIVE = "#simulate "
REFUSAL = "I can't help with that."
ARGS_PIECE = 6
"""Characters per tool-call arguments piece."""
JSON_PIECE = 4
"""Characters per piece of a structured (JSON) answer."""


@dataclass(frozen=True, slots=True)
class _Script:
    tokens: int = 60
    reasoning: int | None = None
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    fail_before: bool = False
    fail_after: int | None = None
    stall_after: int | None = None
    truncate_after: int | None = None
    refuse: bool = False
    invalid_json: bool = False


def _script_of(request: UpstreamRequest) -> tuple[_Script, str]:
    """The simulation script in the prompt's first line, if any, and the prompt without it.

    The prompt is the last user message (the last message when there is none)."""
    users = [m for m in request.messages if m.role == "user"] or request.messages[-1:]
    prompt = users[-1].content if users else ""
    script = _Script()
    if prompt.startswith(DIRECTIVE):
        first, _, rest = prompt.partition("\n")
        try:
            options = orjson.loads(first[len(DIRECTIVE) :])
        except orjson.JSONDecodeError:
            options = {}
        if isinstance(options, dict):
            known = {f.name for f in fields(_Script)}
            script = replace(script, **{k: v for k, v in options.items() if k in known})
        prompt = rest
    return script, prompt


def _topic(prompt: str) -> str:
    return " ".join(prompt.split()[:8]) or "nothing"


def answer_tokens(prompt: str, count: int, intro: str | None = None) -> list[str]:
    """The simulated answer to ``prompt``: ``count`` tokens, the same every time.

    ``intro`` replaces its first line (``**Simulated answer** to: _<prompt>_``)."""
    if intro is None:
        intro = f"**Simulated answer** to: _{_topic(prompt)}_\n\n"
    tokens = [word + " " for word in intro.split(" ") if word]
    words = seeded_words(prompt)
    i = 0
    while len(tokens) < count:
        i += 1
        tokens.append(next(words) + (".\n\n" if i % 12 == 0 else ", " if i % 5 == 0 else " "))
    return tokens[:count]


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _abbreviated(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# --- the stream -------------------------------------------------------------------------------

_Kind = Literal["reasoning", "answer", "open"]
"""A piece's kind: ``open`` (a tool call's start) is no token; the others are one each."""


@dataclass(frozen=True, slots=True)
class _Call:
    id: str
    name: str
    arguments: str


def _tool_name(tool: object) -> str:
    function = tool.get("function") if isinstance(tool, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) else "tool"


def _tool_schema(tool: object) -> object:
    function = tool.get("function") if isinstance(tool, dict) else None
    return function.get("parameters", {}) if isinstance(function, dict) else {}


def _calls(request: UpstreamRequest, prompt: str, script: _Script) -> list[_Call]:
    """The tool calls this request gets (none when it gets an answer)."""
    choice = request.tool_choice
    ends_with_result = bool(request.messages) and request.messages[-1].role == "tool"
    if not request.tools or choice == "none" or ends_with_result:
        return []
    tools: Sequence[object] = request.tools[:1]
    if isinstance(choice, dict):
        function = choice.get("function", choice)
        wanted = function.get("name") if isinstance(function, dict) else None
        tools = [t for t in request.tools if _tool_name(t) == wanted][:1] or tools
    elif choice == "required":
        tools = request.tools
    calls: list[_Call] = []
    for index, tool in enumerate(tools):
        name = _tool_name(tool)
        arguments = orjson.dumps(sample(_tool_schema(tool), prompt)).decode()
        if script.invalid_json:
            arguments = arguments[:-1]
        key = f"{len(request.messages)}\x00{prompt}\x00{name}\x00{index}"
        call_id = "call_" + hashlib.sha256(key.encode()).hexdigest()[:24]
        calls.append(_Call(call_id, name, arguments))
    return calls


def _results(messages: Sequence[Message]) -> list[tuple[str, str]]:
    """The tool results the conversation ends with: (tool name, result) pairs."""
    names = {c.id: c.name for m in messages for c in m.tool_calls}
    trailing: list[Message] = []
    for message in reversed(messages):
        if message.role != "tool":
            break
        trailing.insert(0, message)
    return [(names.get(m.tool_call_id, "the tool"), m.content) for m in trailing]


def _structured(request: UpstreamRequest, prompt: str, words: list[str], broken: bool) -> str:
    """The JSON answer a response_format asks for, indented."""
    wanted = request.response_format or {}
    if wanted.get("type") == "json_schema":
        spec = wanted.get("json_schema")
        value = sample(spec.get("schema", {}) if isinstance(spec, dict) else {}, prompt)
    else:
        value = {"answer": "".join(words).strip()}
    text = orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    return text[:-1] if broken else text


def _thoughts(
    request: UpstreamRequest, script: _Script, prompt: str, calls: list[_Call], count: int
) -> list[str]:
    """``count`` tokens of reasoning about the request, the same every time."""
    topic = _topic(prompt)
    lines = [f"The user asks: {topic}" + ("" if topic[-1] in ".?!" else ".")]
    if script.refuse:
        lines.append("This is something I should not help with, so I will decline politely.")
    elif results := _results(request.messages):
        for name, result in results:
            brief = _abbreviated(result, 40)
            end = "" if brief[-1:] in "….!?" else "."
            lines.append(f"The {name} tool returned {brief}{end}")
        lines.append("I should answer with what it found.")
        if request.response_format is not None:
            lines.append("The answer must be JSON in the requested format.")
    elif len(calls) == 1:
        lines.append(f"The {calls[0].name} tool can answer this, so I should call it")
        lines.append(f"with {calls[0].arguments}.")
    elif calls:
        lines.append(f"I should call {', '.join(c.name for c in calls)} together.")
    elif request.response_format is not None:
        lines.append("I should answer with JSON in the requested format.")
    else:
        lines.append("I should explain it step by step, starting with the basics.")
    tokens = [word + " " for word in " ".join(lines).split()]
    words = seeded_words("thinking\x00" + prompt)
    while len(tokens) < count:
        tokens += ["Then ", "I ", "consider ", "the ", next(words) + " ", "and ", "the "]
        tokens.append(next(words) + ". ")
    tokens = tokens[:count]
    if tokens:
        tokens[-1] = tokens[-1].rstrip()
    return tokens


def _plan(
    request: UpstreamRequest, script: _Script, prompt: str, reasoning: int
) -> tuple[list[tuple[_Kind, Delta]], str]:
    """Every piece of the stream, in order, and the finish reason."""
    calls = [] if script.refuse else _calls(request, prompt, script)
    plan: list[tuple[_Kind, Delta]] = [
        ("reasoning", Delta(reasoning=t, reasoning_count=1))
        for t in _thoughts(request, script, prompt, calls, reasoning)
    ]
    if script.refuse:
        plan += [("answer", Delta(refusal=w)) for w in re.findall(r"\S+\s*", REFUSAL)]
        return plan, "stop"
    if calls:
        for index, call in enumerate(calls):
            plan.append(("open", Delta(calls=[CallPiece(index, id=call.id, name=call.name)])))
        rounds = [_pieces(call.arguments, ARGS_PIECE) for call in calls]
        for r in range(max(len(pieces) for pieces in rounds)):
            plan += [
                ("answer", Delta(calls=[CallPiece(i, arguments=pieces[r])]))
                for i, pieces in enumerate(rounds)
                if r < len(pieces)
            ]
        return plan, "tool_calls"
    intro = None
    if results := _results(request.messages):
        used = ", ".join(f"{name}: {_abbreviated(result, 80)}" for name, result in results)
        intro = f"**Simulated answer** using {used}\n\n"
    words = answer_tokens(prompt, script.tokens, intro)
    if request.response_format is not None:
        text = _structured(request, prompt, words, script.invalid_json)
        words = _pieces(text, JSON_PIECE)
    plan += [("answer", Delta(text=w, count=1)) for w in words]
    return plan, "stop"


class SimulatedUpstream:
    """A deterministic stand-in model that streams made-up parts at a configured pace."""

    kind: Literal["simulated"] = "simulated"

    def __init__(self, settings: Settings) -> None:
        self._ttft = settings.simulated_ttft
        self._rate = settings.simulated_tokens_per_s
        self._reasoning = settings.simulated_reasoning_tokens

    def model_name(self, requested: str | None) -> str:
        """Always the simulated model, whatever was asked for."""
        return SIMULATED_MODEL

    async def aclose(self) -> None:
        """Nothing to release."""

    @asynccontextmanager
    async def stream(self, request: UpstreamRequest) -> AsyncIterator[AsyncIterator[Delta]]:
        """Stream the simulated parts (nothing to close: there is no connection)."""
        script, prompt = _script_of(request)
        if script.fail_before:
            raise UpstreamFailure(
                pb.ERROR_CODE_UPSTREAM_ERROR, "the simulated upstream failed", retryable=True
            )
        yield self._deltas(request, script, prompt)

    async def _deltas(
        self, request: UpstreamRequest, script: _Script, prompt: str
    ) -> AsyncIterator[Delta]:
        ttft = self._ttft if script.ttft_ms is None else script.ttft_ms / 1000
        rate = self._rate if script.tokens_per_s is None else script.tokens_per_s
        interval = 1 / rate if rate > 0 else 0.0
        reasoning = self._reasoning if script.reasoning is None else script.reasoning
        plan, finish = _plan(request, script, prompt, reasoning)
        await asyncio.sleep(ttft)
        answered = thought = 0
        for i, (kind, delta) in enumerate(plan):
            if answered + thought == request.max_tokens:
                finish = "length"
                break
            if kind != "reasoning":
                if answered == script.fail_after:
                    raise UpstreamFailure(
                        pb.ERROR_CODE_UPSTREAM_ERROR,
                        "the simulated upstream failed during the answer",
                        retryable=True,
                    )
                if answered == script.stall_after:
                    await asyncio.Event().wait()  # until a time limit or a cancel ends it
                if answered == script.truncate_after:
                    raise truncated()
            if i and interval:
                await asyncio.sleep(interval)
            yield delta
            answered += kind == "answer"
            thought += kind == "reasoning"
        yield Delta(
            finish_reason=finish,
            prompt_tokens=sum(len(m.content) for m in request.messages) // 4 + 1,
            completion_tokens=answered + thought,
            reasoning_tokens=thought,
        )
