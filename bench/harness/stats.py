"""Summaries of repeated measurements: every figure is reported as min/median/max."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TypedDict


class Spread(TypedDict):
    """A figure measured ``n`` times."""

    min: float
    median: float
    max: float
    n: int


def spread(values: Sequence[float]) -> Spread:
    """min / median / max of ``values`` (at least one)."""
    if not values:
        raise ValueError("no values to summarise")
    return Spread(
        min=float(min(values)),
        median=float(statistics.median(values)),
        max=float(max(values)),
        n=len(values),
    )


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> Spread:
    """Spread of the pairwise ratios of two series measured in the same rounds
    (interleaved, so each pair shared the machine's load at that moment)."""
    if len(numerators) != len(denominators):
        raise ValueError("ratios need series of equal length")
    return spread([a / b for a, b in zip(numerators, denominators, strict=True) if b > 0] or [0.0])


def fmt(value: Spread, digits: int = 2) -> str:
    """``median (min-max)`` for a markdown table."""
    return f"{value['median']:.{digits}f} ({value['min']:.{digits}f}-{value['max']:.{digits}f})"
