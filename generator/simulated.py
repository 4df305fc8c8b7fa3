"""The embedded simulated model: the default when no upstream is configured.

Deterministic (the same prompt gives the same answer), labelled "simulated" everywhere (its model
name, the logs, the start banner), with a configurable time to first token and token rate, so the
whole product, its demos, tests and benchmarks run with no key and no network.

A prompt may script the simulation with a first line ``#simulate {json}``; keys:
``tokens`` (answer length), ``ttft_ms``, ``tokens_per_s``, ``fail_before`` (an upstream failure
before the first token), ``fail_after`` (an upstream failure after that many tokens),
``stall_after`` (stop sending after that many tokens, until a time limit or cancel ends it),
``truncate_after`` (end the stream after that many tokens without finishing). Example:
``#simulate {"fail_after": 5}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields, replace
from typing import Literal

import orjson

from aistream.generator.upstream import Delta, UpstreamFailure, UpstreamRequest, truncated
from aistream.settings import Settings
from aistream.v1 import events_pb2 as pb

__all__ = ["SIMULATED_MODEL", "SimulatedUpstream", "answer_tokens"]

log = logging.getLogger(__name__)

SIMULATED_MODEL = "aistream-simulated"
DIRECTIVE = "#simulate "

_WORDS = (  # noqa: SIM905 - a sentence reads better than a 30-item list
    "stream lifecycle token cancel bridge generator upstream latency browser socket frame "
    "schema deadline backpressure request answer model chunk event error retry timeout "
    "buffer flush render protocol client server message usage sequence"
).split()


@dataclass(frozen=True, slots=True)
class _Script:
    tokens: int = 60
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    fail_before: bool = False
    fail_after: int | None = None
    stall_after: int | None = None
    truncate_after: int | None = None


def _script_of(request: UpstreamRequest) -> tuple[_Script, str]:
    """The simulation script in the prompt's first line, if any, and the prompt without it."""
    prompt = request.messages[-1][1] if request.messages else ""
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


def answer_tokens(prompt: str, count: int) -> list[str]:
    """The simulated answer to ``prompt``: ``count`` tokens, the same every time."""
    topic = " ".join(prompt.split()[:8]) or "nothing"
    intro = f"**Simulated answer** to: _{topic}_\n\n".split(" ")
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")
    tokens = [word + " " for word in intro if word]
    i = 0
    while len(tokens) < count:
        seed = (seed * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        word = _WORDS[seed % len(_WORDS)]
        i += 1
        tokens.append(word + (".\n\n" if i % 12 == 0 else ", " if i % 5 == 0 else " "))
    return tokens[:count]


class SimulatedUpstream:
    """A deterministic stand-in model that streams a made-up answer at a configured pace."""

    kind: Literal["simulated"] = "simulated"

    def __init__(self, settings: Settings) -> None:
        self._ttft = settings.simulated_ttft
        self._rate = settings.simulated_tokens_per_s

    def model_name(self, requested: str | None) -> str:
        """Always the simulated model, whatever was asked for."""
        return SIMULATED_MODEL

    async def aclose(self) -> None:
        """Nothing to release."""

    @asynccontextmanager
    async def stream(self, request: UpstreamRequest) -> AsyncIterator[AsyncIterator[Delta]]:
        """Stream the simulated answer (nothing to close: there is no connection)."""
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
        count = min(script.tokens, request.max_tokens)
        tokens = answer_tokens(prompt, count)
        await asyncio.sleep(ttft)
        for i, text in enumerate(tokens):
            if i == script.fail_after:
                raise UpstreamFailure(
                    pb.ERROR_CODE_UPSTREAM_ERROR,
                    "the simulated upstream failed during the answer",
                    retryable=True,
                )
            if i == script.stall_after:
                await asyncio.Event().wait()  # until a time limit or a cancel ends it
            if i == script.truncate_after:
                raise truncated()
            if i and interval:
                await asyncio.sleep(interval)
            yield Delta(text=text, count=1)
        prompt_tokens = sum(len(text) for _, text in request.messages) // 4 + 1
        yield Delta(
            finish_reason="length" if count < script.tokens else "stop",
            prompt_tokens=prompt_tokens,
            completion_tokens=len(tokens),
        )
