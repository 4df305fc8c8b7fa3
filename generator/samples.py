"""Made-up content, the same every time: words picked by a text, and JSON values valid against a
JSON Schema (what the simulated model writes for tool-call arguments and structured output).
Pure: no I/O, no clock.

    sample({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
           "Weather in Lisbon?")                         # → {"city": "Lisbon"}
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator
from typing import Any

__all__ = ["WORDS", "sample", "seeded_words"]

WORDS = (  # noqa: SIM905 - a sentence reads better than a 30-item list
    "stream lifecycle token cancel bridge generator upstream latency browser socket frame "
    "schema deadline backpressure request answer model chunk event error retry timeout "
    "buffer flush render protocol client server message usage sequence"
).split()
"""The vocabulary of made-up text."""


def seeded_words(text: str) -> Iterator[str]:
    """An endless, deterministic stream of words picked by ``text``."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    while True:
        seed = (seed * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        yield WORDS[seed % len(WORDS)]


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
            words = seeded_words(self._prompt)
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
