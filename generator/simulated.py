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
import math
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import orjson

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

_WORDS = (  # noqa: SIM905 - a sentence reads better than a 30-item list
    "stream lifecycle token cancel bridge generator upstream latency browser socket frame "
    "schema deadline backpressure request answer model chunk event error retry timeout "
    "buffer flush render protocol client server message usage sequence"
).split()


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


def _seeded_words(text: str) -> Iterator[str]:
    """An endless, deterministic stream of words picked by ``text``."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    while True:
        seed = (seed * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        yield _WORDS[seed % len(_WORDS)]


def _topic(prompt: str) -> str:
    return " ".join(prompt.split()[:8]) or "nothing"


def answer_tokens(prompt: str, count: int, intro: str | None = None) -> list[str]:
    """The simulated answer to ``prompt``: ``count`` tokens, the same every time.

    ``intro`` replaces its first line (``**Simulated answer** to: _<prompt>_``)."""
    if intro is None:
        intro = f"**Simulated answer** to: _{_topic(prompt)}_\n\n"
    tokens = [word + " " for word in intro.split(" ") if word]
    words = _seeded_words(prompt)
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


# --- JSON values from JSON Schemas ------------------------------------------------------------

_PLACES = frozenset(("city", "location", "place", "town", "country", "region", "destination"))
_QUERIES = frozenset(("query", "q", "search", "question", "topic", "subject", "keywords"))
_TEXTS = frozenset(("answer", "summary", "text", "content", "description", "explanation"))
_FORMATS = {
    "date": "2025-01-01",
    "date-time": "2025-01-01T12:00:00Z",
    "time": "12:00:00",
    "email": "someone@example.com",
    "uri": "https://example.com/",
    "uuid": "123e4567-e89b-42d3-a456-426614174000",
    "hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
}
_OPENERS = frozenset(
    "What How Why When Where Who Which Is Are Can Could Would Will Do Does Please "  # noqa: SIM905
    "Tell Give Show Find Get The A An I Hi Hello Hey And Or In On At For".split()
)
"""Capitalised words that open a question: not a place's name."""
_SHALLOW = 4
"""Below this depth optional properties and optional array items are left out (so a recursive
schema ends)."""
_DEEPEST = 32


def sample(schema: object, prompt: str = "") -> object:
    """A JSON value valid against ``schema`` (the common subset of JSON Schema: ``type``,
    ``properties``/``required``, ``items``, ``enum``, ``const``, ``anyOf``/``oneOf``/``allOf``,
    local ``$ref``, number bounds, string lengths and formats; not ``pattern``), made with words of
    ``prompt``; the same every time. What it cannot read is ``null``."""
    return _Sampler(schema, prompt).value(schema, "", 0)


class _Sampler:
    def __init__(self, root: object, prompt: str) -> None:
        self._root = root
        self._prompt = prompt

    def value(self, schema: object, name: str, depth: int) -> object:
        if not isinstance(schema, dict) or depth > _DEEPEST:
            return None
        if isinstance(ref := schema.get("$ref"), str):
            return self.value(self._resolve(ref), name, depth + 1)
        if "const" in schema:
            return schema["const"]
        if isinstance(enum := schema.get("enum"), list) and enum:
            return enum[0]
        for key in ("anyOf", "oneOf"):
            if isinstance(choices := schema.get(key), list) and choices:
                return self.value(choices[0], name, depth + 1)
        if isinstance(parts := schema.get("allOf"), list):
            return self.value(self._merged(schema, parts), name, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else None
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, name, depth)
        if kind == "string":
            return self._string(schema, name)
        if kind in ("number", "integer"):
            return _number(schema, name, integer=kind == "integer")
        return True if kind == "boolean" else None

    def _resolve(self, ref: str) -> object:
        if not ref.startswith("#"):
            return None
        node = self._root
        for raw in ref[1:].split("/")[1:]:
            key = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict):
                node = node.get(key)
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                return None
        return node

    def _merged(self, schema: dict[str, Any], parts: list[Any]) -> dict[str, Any]:
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for part in parts:
            if isinstance(part, dict) and isinstance(ref := part.get("$ref"), str):
                part = self._resolve(ref)
            if not isinstance(part, dict):
                continue
            for key, value in part.items():
                if key == "properties" and isinstance(value, dict):
                    merged["properties"] = {**merged.get("properties", {}), **value}
                elif key == "required" and isinstance(value, list):
                    merged["required"] = [*merged.get("required", []), *value]
                else:
                    merged.setdefault(key, value)
        return merged

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, object]:
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        required = schema.get("required")
        required = [r for r in required if isinstance(r, str)] if isinstance(required, list) else []
        names = [p for p in properties if depth < _SHALLOW or p in required]
        names += [r for r in dict.fromkeys(required) if r not in properties]
        extra = schema.get("additionalProperties")
        return {
            n: self.value(properties.get(n, extra if isinstance(extra, dict) else {}), n, depth + 1)
            for n in names
        }

    def _array(self, schema: dict[str, Any], name: str, depth: int) -> list[object]:
        least = schema.get("minItems")
        count = max(least if isinstance(least, int) else 0, int(depth < _SHALLOW))
        most = schema.get("maxItems")
        if isinstance(most, int):
            count = min(count, most)
        prefix = schema.get("prefixItems")
        prefix = prefix if isinstance(prefix, list) else []
        items = schema.get("items", {"type": "string"})
        out = [self.value(p, name, depth + 1) for p in prefix[:count]]
        out += [self.value(items, name, depth + 1) for _ in range(count - len(out))]
        return out

    def _string(self, schema: dict[str, Any], name: str) -> str:
        parts = {p.lower() for p in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", name)}
        if isinstance(fmt := schema.get("format"), str) and fmt in _FORMATS:
            text = _FORMATS[fmt]
        elif parts & _PLACES:
            text = _place(self._prompt)
        elif parts & _QUERIES:
            text = " ".join(self._prompt.split()[:8]) or "simulated"
        elif parts & _TEXTS:
            words = _seeded_words(self._prompt)
            text = " ".join(next(words) for _ in range(8)).capitalize() + "."
        else:
            text = "simulated"
        least, most = schema.get("minLength"), schema.get("maxLength")
        if isinstance(least, int) and len(text) < least:
            text = text.ljust(least, "-")
        if isinstance(most, int) and len(text) > most:
            text = text[: max(most, 0)]
        return text


def _place(prompt: str) -> str:
    """A capitalised word of the prompt (a name, preferably not a sentence's first word)."""
    later: list[str] = []
    for sentence in re.split(r"[.!?]\s+", prompt):
        words = re.findall(r"[^\W\d_][\w'’-]*", sentence)
        later += [w for w in words[1:] if w[0].isupper()]
    first = [w for w in re.findall(r"[^\W\d_][\w'’-]*", prompt) if w[0].isupper()]
    for word in [*later, *first]:
        word = re.sub(r"['’]s$", "", word)
        if word not in _OPENERS:
            return word
    return "Paris"


def _number(schema: dict[str, Any], name: str, *, integer: bool) -> int | float:
    """A small number picked by ``name`` within the schema's bounds."""

    def bound(key: str) -> float | None:
        value = schema.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value)

    low, high = bound("minimum"), bound("maximum")
    above, below = bound("exclusiveMinimum"), bound("exclusiveMaximum")
    step = bound("multipleOf")

    def fits(x: float) -> bool:
        return (
            (low is None or x >= low)
            and (high is None or x <= high)
            and (above is None or x > above)
            and (below is None or x < below)
            and (not integer or x.is_integer())
        )

    candidates = [float(1 + hashlib.sha256(name.encode()).digest()[0] % 9)]
    bottom = max((b for b in (low, above) if b is not None), default=None)
    top = min((b for b in (high, below) if b is not None), default=None)
    if bottom is not None:
        candidates += [bottom, float(math.floor(bottom) + 1), bottom + 0.5]
    if top is not None:
        candidates += [top, float(math.ceil(top) - 1), top - 0.5]
    if bottom is not None and top is not None:
        candidates.append((bottom + top) / 2)
    if step is not None and step > 0:
        candidates = [step * math.ceil(c / step) for c in candidates]
    chosen = next((c for c in candidates if fits(c)), candidates[0])
    return int(chosen) if chosen.is_integer() else chosen


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
    words = _seeded_words("thinking\x00" + prompt)
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
