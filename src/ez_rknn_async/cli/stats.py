"""Pure statistics for ``ez-rknn bench``: no I/O, no clocks, so every number is testable.

Latencies are kept in seconds everywhere; units are chosen only when printing (``pick_unit``), as
CPython's ``timeit`` does, so a 40 us tiny model and a 400 ms detector both read naturally.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Callable

__all__ = [
    "LatencyStats",
    "percentile",
    "summarize",
    "window_rates",
    "unstable",
    "autorange",
    "pick_unit",
    "UNSTABLE_FACTOR",
    "MIN_WINDOW_FRAMES",
]

#: Fewest frames in a ``window_rates`` window.
MIN_WINDOW_FRAMES = 10
#: timeit's rule: when the worst sample is this many times slower than the best, say so.
UNSTABLE_FACTOR = 4.0

_UNITS = (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9))


@dataclass(frozen=True)
class LatencyStats:
    """The latency columns of the report (seconds), in ``benchmark_app``'s order."""

    median: float
    avg: float
    min: float
    max: float
    p90: float
    p99: float

    def scaled(self, factor: float) -> dict[str, float]:
        """The same figures multiplied by ``factor`` (1e3 gives milliseconds for JSON)."""
        return {key: value * factor for key, value in asdict(self).items()}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation, numpy's default method.

    Written out rather than calling numpy so the table and the tests agree on one definition.
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    position = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


def summarize(latencies: Sequence[float]) -> LatencyStats:
    """Median/avg/min/max/p90/p99 of per-frame latencies (seconds)."""
    values = sorted(latencies)
    if not values:
        raise ValueError("no latencies to summarize")
    return LatencyStats(
        median=percentile(values, 50),
        avg=math.fsum(values) / len(values),
        min=values[0],
        max=values[-1],
        p90=percentile(values, 90),
        p99=percentile(values, 99),
    )


def window_rates(done_times: Sequence[float], windows: int = 20) -> list[float]:
    """Throughput (frames/s) over consecutive windows of equal frame counts.

    ``done_times`` are completion instants in order. One overall fps hides stalls; the windows show
    the distribution the plot draws and the instability check reads. A window spans at least
    ``MIN_WINDOW_FRAMES`` frames, so a few-microsecond model does not produce noise for rates.
    """
    times = sorted(done_times)
    if len(times) <= MIN_WINDOW_FRAMES:
        return []
    per_window = max(MIN_WINDOW_FRAMES, (len(times) - 1) // windows)
    rates = []
    for start in range(0, len(times) - per_window, per_window):
        span = times[start + per_window] - times[start]
        if span > 0:
            rates.append(per_window / span)
    return rates


def unstable(rates: Sequence[float], factor: float = UNSTABLE_FACTOR) -> bool:
    """True when the slowest sample is more than ``factor`` times slower than the fastest."""
    return bool(rates) and min(rates) * factor < max(rates)


def autorange(run_batch: Callable[[int], float], min_time: float = 0.2) -> tuple[int, float]:
    """timeit's autorange: run batches of 1, 2, 5, 10, 20, 50... frames until one takes
    ``min_time`` seconds. Returns (frames in that batch, its duration).

    ``run_batch(n)`` runs ``n`` frames and returns the seconds they took. Used as the warm-up: it
    adapts to a 20 us model and a 2 s one alike and ends with every worker busy.
    """
    if min_time <= 0:
        raise ValueError(f"min_time must be > 0, got {min_time}")
    scale = 1
    while True:
        for step in (1, 2, 5):
            number = step * scale
            elapsed = run_batch(number)
            if elapsed >= min_time:
                return number, elapsed
        scale *= 10


def pick_unit(seconds: float) -> tuple[str, float]:
    """The largest unit in which ``seconds`` is at least 1, as (name, seconds per unit)."""
    for name, size in _UNITS:
        if seconds >= size:
            return name, size
    return _UNITS[-1]
