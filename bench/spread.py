"""The spread of a bench's rounds: one helper for every bench that prints it."""
from __future__ import annotations

import statistics


def quartiles(values: list[float]) -> tuple[float, float]:
    """The lower and upper quartile (the middle half of the rounds lies between)."""
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]
