"""Percentiles of one run, and the median with min/max over repeated runs."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["Agg", "aggregate", "percentile", "ratio"]

Agg = dict[str, Any]
"""``{"median": x, "min": x, "max": x, "runs": n}`` (values ``None`` when no run had one)."""


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0–100) by linear interpolation; ``None`` for no values."""
    if not values:
        return None
    data = sorted(values)
    pos = (len(data) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(data) - 1)
    return round(data[low] + (data[high] - data[low]) * (pos - low), 3)


def aggregate(values: Sequence[float | None]) -> Agg:
    """Median, min and max over repeats, ignoring runs without a value."""
    present = [v for v in values if v is not None]
    if not present:
        return {"median": None, "min": None, "max": None, "runs": 0}
    return {
        "median": round(statistics.median(present), 3),
        "min": round(min(present), 3),
        "max": round(max(present), 3),
        "runs": len(present),
    }


def ratio(a: Agg, b: Agg) -> float | None:
    """``a``'s median over ``b``'s, when both exist and ``b``'s is not zero."""
    if a.get("median") is None or not b.get("median"):
        return None
    return round(a["median"] / b["median"], 3)
