"""``ez-rknn bench``: what to run (``Plan``), running it (``run_plan``) and what came out.

The parts: ``measure.py`` is the one measurement loop and its drivers; ``comparators.py`` the
runtimes measured next to ours and how each is opened; ``report.py`` the table, JSON and plot;
``stats.py`` the arithmetic. ``__all__`` still names the measurement's pieces (re-exported from
``measure.py`` and ``comparators.py``), so imports of them from here keep working.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .comparators import COMPARATORS, ROWS, Sessions, make_driver, row_names, why_not
from .errors import UsageError, user_input
from .measure import (
    AsyncDriver,
    Budget,
    Driver,
    OpenVinoDriver,
    PipelineDriver,
    Progress,
    RunDriver,
    Timeline,
    measure,
)
from .models import InputSpec, ShapeSpec, build_feed
from .stats import LatencyStats, autorange, summarize, unstable, window_rates

__all__ = [
    "MODES",
    "COMPARATORS",
    "Budget",
    "Plan",
    "Timeline",
    "ModeResult",
    "Skipped",
    "BenchResult",
    "Driver",
    "RunDriver",
    "AsyncDriver",
    "PipelineDriver",
    "OpenVinoDriver",
    "Progress",
    "measure",
    "run_plan",
    "parse_modes",
    "parse_compare",
    "auto_depth",
]

#: Shorter rows are not checked for instability: their samples are too few to judge.
STABILITY_MIN_SECONDS = 1.0
#: Our session's modes, in table order.
MODES = ("run", "async", "pipeline")


def _parse_list(text: str, allowed: Sequence[str], option: str, extra: Sequence[str]) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in allowed and name not in extra]
    if unknown or not names:
        raise UsageError(
            f"unknown {option} {unknown[0] if unknown else text!r}",
            hint=f"choose from {', '.join([*allowed, *extra])} (comma-separated)",
        )
    return names


def parse_modes(text: str) -> list[str]:
    """``--mode``: ``run``, ``async``, ``pipeline``, a comma list of them, or ``all``."""
    names = _parse_list(text, MODES, "--mode", ("all",))
    return list(MODES) if "all" in names else list(dict.fromkeys(names))


def parse_compare(text: str) -> list[str]:
    """``--compare``: comma list of ``COMPARATORS`` names, ``all``, or ``none``."""
    names = _parse_list(text, tuple(COMPARATORS), "--compare", ("all", "none"))
    if "none" in names:
        return []
    return list(COMPARATORS) if "all" in names else list(dict.fromkeys(names))


def auto_depth(workers: int) -> int:
    """Frames in flight when ``--depth`` is not given: two per worker, so none ever idles."""
    return max(2, 2 * workers)


@dataclass(frozen=True)
class Plan:
    """Everything ``run_plan`` needs; built from the command line or by the demo."""

    model: str
    modes: Sequence[str]
    compare: Sequence[str] = ()
    budget: Budget = Budget(seconds=10.0)
    depth: Optional[int] = None  #: frames in flight (async, pipeline); None: ``auto_depth``
    shapes: Sequence[ShapeSpec] = ()
    files: Sequence[InputSpec] = ()
    provider_options: dict[str, Any] = field(default_factory=dict)
    warmup: Optional[int] = None  #: frames after the first; None: autorange
    repeat: int = 1
    baseline: Optional[str] = None  #: row the speed-up divides by; None: "ort", else the first


@dataclass
class ModeResult:
    """One row of the table: a runtime in a mode, all rounds merged."""

    name: str
    label: str
    ours: bool
    load: float
    first: float
    warmup_frames: int
    timelines: list[Timeline] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(t.count for t in self.timelines)

    @property
    def duration(self) -> float:
        return sum(t.duration for t in self.timelines)

    @property
    def fps(self) -> float:
        return self.count / self.duration if self.duration > 0 else 0.0

    @property
    def latencies(self) -> list[float]:
        return [value for t in self.timelines for value in t.latencies]

    @property
    def latency(self) -> LatencyStats:
        return summarize(self.latencies)

    @property
    def window_fps(self) -> list[float]:
        return [rate for t in self.timelines for rate in window_rates(t.done)]

    @property
    def round_fps(self) -> list[float]:
        return [t.count / t.duration for t in self.timelines if t.duration > 0]

    @property
    def unstable(self) -> bool:
        """timeit's warning, over rounds when there are several, else over time windows; only
        for runs long enough (``STABILITY_MIN_SECONDS``, 5 samples) for the samples to mean it."""
        rates = self.round_fps if len(self.timelines) > 1 else self.window_fps
        return self.duration >= STABILITY_MIN_SECONDS and len(rates) >= 5 and unstable(rates)


@dataclass(frozen=True)
class Skipped:
    """A requested row that could not run, and why (printed as a note, kept in the JSON)."""

    name: str
    reason: str


@dataclass
class BenchResult:
    """What ``ez-rknn bench`` measured, ready for the table, the JSON and the plot."""

    plan: Plan
    backend: str
    providers: list[str]
    depth: int
    feed: dict[str, np.ndarray]
    results: list[ModeResult]
    skipped: list[Skipped]
    notes: list[str] = field(default_factory=list)

    @property
    def baseline(self) -> Optional[ModeResult]:
        wanted = self.plan.baseline or "ort"
        by_name = {result.name: result for result in self.results}
        return by_name.get(wanted) or (self.results[0] if self.results else None)

    def speedup(self, result: ModeResult) -> Optional[float]:
        base = self.baseline
        return result.fps / base.fps if base is not None and base.fps > 0 else None


def _open_rows(
    plan: Plan, sessions: Sessions, feed: dict[str, Any], depth: int, backend: str
) -> tuple[list[tuple[ModeResult, Driver]], list[Skipped]]:
    """A driver per requested row, ours first. A comparator that cannot run here (not installed,
    cannot load this model) becomes one ``Skipped`` note instead of failing the whole run."""
    rows: list[tuple[ModeResult, Driver]] = []
    skipped: dict[str, Skipped] = {}
    for row, comparator, label in row_names(plan):
        if comparator in skipped:
            continue
        key, kind = ROWS[row]
        reason = why_not(comparator, backend) if comparator else None
        if reason is None:
            try:
                session, load = sessions.get(key)
            except Exception as exc:
                if not comparator:
                    raise
                reason = f"failed to load: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
        if reason is not None:
            skipped[comparator] = Skipped(comparator, reason)
            continue
        result = ModeResult(row, label, not comparator, load, 0.0, 0)
        rows.append((result, make_driver(kind, session, feed, depth)))
    return rows, list(skipped.values())


def _warm(driver: Driver, warmup: Optional[int]) -> tuple[float, int]:
    """Time the first frame apart, then warm up (autorange when ``warmup`` is None).

    Returns (first-frame latency, warm-up frames after it).
    """
    first = measure(driver, Budget(frames=1)).latencies[0]
    if warmup is None:
        batches: list[int] = []

        def run_batch(frames: int) -> float:
            batches.append(frames)
            return measure(driver, Budget(frames=frames)).duration

        autorange(run_batch)
        return first, sum(batches)
    if warmup > 0:
        measure(driver, Budget(frames=warmup))
    return first, warmup


def run_plan(plan: Plan, progress: Optional[Progress] = None) -> BenchResult:
    """Open every row, warm each up, then measure them in ``repeat`` interleaved rounds.

    Our session is opened first: it says which backend runs, how many workers it has (the
    automatic depth) and what inputs to synthesize. Interleaving rounds spreads a noisy
    neighbour's load over all rows, which keeps ratios honest on a shared machine.
    """
    if plan.repeat < 1:
        raise UsageError(f"--repeat must be >= 1, got {plan.repeat}")
    if not plan.modes:
        raise UsageError("bench needs at least one --mode")
    with contextlib.ExitStack() as stack:
        sessions = Sessions(plan, stack)
        ours = sessions.get("ours")[0]
        feed = build_feed(ours.get_inputs(), plan.shapes, plan.files)
        with user_input():  # one run: the library's verdict on the user's feed, before timing
            ours.run(None, feed.arrays)
        depth = plan.depth or auto_depth(len(ours.worker_slots))
        backend = ours.backend_name
        rows, skipped = _open_rows(plan, sessions, feed.arrays, depth, backend)
        for result, driver in rows:
            result.first, result.warmup_frames = _warm(driver, plan.warmup)
        budget = plan.budget.split(plan.repeat)
        for round_index in range(plan.repeat):
            for result, driver in rows:
                suffix = f" [{round_index + 1}/{plan.repeat}]" if plan.repeat > 1 else ""
                result.timelines.append(measure(driver, budget, progress, result.name + suffix))
        providers = list(ours.get_providers())
    return BenchResult(
        plan=plan,
        backend=backend,
        providers=providers,
        depth=depth,
        feed=feed.arrays,
        results=[row for row, _ in rows],
        skipped=skipped,
        notes=feed.notes,
    )
