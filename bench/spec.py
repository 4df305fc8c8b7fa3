"""What one benchmark stream looks like, carried in the prompt so every server reads the same.

A prompt is ``#fake {"ttft": …, "interval": …, "tokens": …} TAG``: the ``#fake`` directive of
``aistream.testing.fake_upstream`` (so that upstream understands it too), then a tag naming the
request, which lets an upstream's record be matched to the client request that caused it. The bare
baseline servers read the same directive, so they push the same frames on the same schedule.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["DIRECTIVE", "StreamSpec", "parse_prompt", "token_text"]

DIRECTIVE = "#fake "


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """The upstream's script for one stream: delay to the first token, gap, token count."""

    ttft: float = 0.0
    """Seconds from the request to the first token."""
    interval: float = 0.0
    """Seconds between tokens; 0 = as fast as the connection takes them."""
    tokens: int = 30
    """Tokens in the answer."""

    def prompt(self, tag: str) -> str:
        """The prompt asking for this stream, tagged ``tag``."""
        script = {"ttft": self.ttft, "interval": self.interval, "tokens": self.tokens}
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
    spec = StreamSpec(
        ttft=float(value.get("ttft", 0.0)),
        interval=float(value.get("interval", 0.0)),
        tokens=int(value.get("tokens", 30)),
    )
    return spec, text[end:].strip()


def token_text(index: int) -> str:
    """The text of token ``index`` (the same words as the product's fake upstream)."""
    return f"tok{index % 1000} "
