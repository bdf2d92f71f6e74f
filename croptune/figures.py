"""How a summary shows counts: the median, 90th percentile and max of a list, and its line."""

from __future__ import annotations

import statistics


def distribution(values: list[int]) -> dict[str, float]:
    """Median, 90th percentile and max of a list of counts."""
    if not values:
        return {"median": 0, "p90": 0, "max": 0}
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {"median": statistics.median(ordered), "p90": p90, "max": ordered[-1]}


def format_distribution(d: dict[str, float]) -> str:
    """'median 7, p90 9, max 9' (a half-way median as 7.5)."""
    if not d:
        return "n/a"
    return f"median {d['median']:g}, p90 {d['p90']:g}, max {d['max']:g}"
