"""What one benchmark stream looks like, carried in the prompt so every server reads the same.

A prompt is ``#fake {"ttft": …, "interval": …, "tokens": …} TAG``: the ``#fake`` directive of
``aistream.testing.fake_upstream`` (so that upstream understands it too), then a tag naming the
request, which lets an upstream's record be matched to the client request that caused it. The bare
baseline servers read the same directive, so they push the same frames on the same schedule.

A stream with reasoning adds ``"reasoning": N`` (and ``"reasoning_tokens": N``, which the
product's fake reports in its usage chunk): N reasoning tokens come first, on the same schedule
as the answer's, under the delta key ``reasoning_field`` (``reasoning_content``, DeepSeek's and
llama.cpp's, unless ``"reasoning_field": "reasoning"``, vLLM's, is given). The bare baselines
ignore it: they stream answer tokens only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DIRECTIVE",
    "REASONING_FIELDS",
    "StreamSpec",
    "parse_prompt",
    "reasoning_text",
    "token_text",
]

DIRECTIVE = "#fake "
REASONING_FIELDS = ("reasoning_content", "reasoning")
"""Delta keys of reasoning: DeepSeek's and llama.cpp's (the default), and vLLM's."""


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """The upstream's script for one stream: delay to the first token, gap, token counts."""

    ttft: float = 0.0
    """Seconds from the request to the first token (reasoning or answer)."""
    interval: float = 0.0
    """Seconds between tokens; 0 = as fast as the connection takes them."""
    tokens: int = 30
    """Tokens in the answer."""
    reasoning: int = 0
    """Reasoning tokens streamed before the answer, on the same schedule."""
    reasoning_field: str = REASONING_FIELDS[0]
    """The delta key of the reasoning tokens (one of ``REASONING_FIELDS``)."""

    def __post_init__(self) -> None:
        if self.reasoning_field not in REASONING_FIELDS:
            raise ValueError(f"reasoning_field: one of {', '.join(REASONING_FIELDS)}")

    def prompt(self, tag: str) -> str:
        """The prompt asking for this stream, tagged ``tag``."""
        script: dict[str, Any] = {
            "ttft": self.ttft,
            "interval": self.interval,
            "tokens": self.tokens,
        }
        if self.reasoning:
            script["reasoning"] = script["reasoning_tokens"] = self.reasoning
            if self.reasoning_field != REASONING_FIELDS[0]:
                script["reasoning_field"] = self.reasoning_field
        return f"{DIRECTIVE}{json.dumps(script, separators=(',', ':'))} {tag}"


def parse_prompt(prompt: str) -> tuple[StreamSpec, str]:
    """The spec and tag of a prompt built by ``StreamSpec.prompt`` (defaults if it is not one)."""
    text = prompt.lstrip()
    if not text.startswith(DIRECTIVE):
        return StreamSpec(), text
    try:
        value, end = json.JSONDecoder().raw_decode(text, len(DIRECTIVE))
    except ValueError:
        return StreamSpec(), text
    if not isinstance(value, dict):
        return StreamSpec(), text
    field = value.get("reasoning_field", REASONING_FIELDS[0])
    spec = StreamSpec(
        ttft=float(value.get("ttft", 0.0)),
        interval=float(value.get("interval", 0.0)),
        tokens=int(value.get("tokens", 30)),
        reasoning=int(value.get("reasoning", 0)),
        reasoning_field=field if field in REASONING_FIELDS else REASONING_FIELDS[0],
    )
    return spec, text[end:].strip()


def token_text(index: int) -> str:
    """The text of token ``index`` (the same words as the product's fake upstream)."""
    return f"tok{index % 1000} "


def reasoning_text(index: int) -> str:
    """The text of reasoning token ``index`` (the same words as the product's fake upstream)."""
    return f"think{index % 1000} "
