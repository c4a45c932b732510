"""Output of every command: one sink with modes, the bench table, its JSON and its plot.

``Output`` is the only thing that writes: human mode prints tables (stdout) and notes and progress
bars (stderr); JSON mode prints one JSON document on stdout and nothing else; quiet mode prints
nothing but errors. tqdm and matplotlib are imported only when used.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, TextIO

from .bench import BenchResult, ModeResult
from .errors import MissingDependencyError
from .measure import Budget, Progress
from .stats import UNSTABLE_FACTOR, pick_unit

__all__ = [
    "Output",
    "Column",
    "format_table",
    "bench_table",
    "bench_json",
    "bench_header",
    "require_matplotlib",
    "write_plot",
    "TqdmProgress",
    "BENCH_COLUMNS",
    "DEMO_COLUMNS",
    "JSON_SCHEMA",
]

#: Version tag of the ``--json`` document; bump when a field changes meaning.
JSON_SCHEMA = "ez-rknn-bench/1"
_CLI_EXTRA = "pip install 'ez-rknn-async[cli]'"
_PLOT_EXTRA = "pip install 'ez-rknn-async[plot]'"


class Output:
    """Where a command's results and notes go. ``mode``: "human", "json" or "quiet"."""

    def __init__(
        self, mode: str = "human", out: Optional[TextIO] = None, err: Optional[TextIO] = None
    ) -> None:
        if mode not in ("human", "json", "quiet"):
            raise ValueError(f"unknown output mode {mode!r}")
        self.mode = mode
        self._out = out or sys.stdout
        self._err = err or sys.stderr

    def result(self, human: str, data: Any) -> None:
        """The command's answer: ``human`` text or ``data`` as JSON, per the mode."""
        if self.mode == "human":
            print(human, file=self._out)
        elif self.mode == "json":
            print(json.dumps(data, indent=2), file=self._out)

    def note(self, text: str) -> None:
        """Something the user should know that is not the answer (stderr, human mode only)."""
        if self.mode == "human":
            print(f"note: {text}", file=self._err)

    def progress(self) -> Optional[Progress]:
        """A tqdm bar in human mode on a terminal; None elsewhere (logs and CI get no carriage
        returns) or, with a note, when tqdm is missing."""
        isatty = getattr(self._err, "isatty", None)
        if self.mode != "human" or isatty is None or not isatty():
            return None
        try:
            import tqdm
        except ImportError:
            self.note(f"install tqdm for a progress bar: {_CLI_EXTRA}")
            return None
        return TqdmProgress(tqdm.tqdm, self._err)


class TqdmProgress(Progress):
    """One bar per measured row, counting frames (``--frames``) or seconds (``--time``).

    Refreshed at most every 0.1 s from the loop, so a 20 us model is not slowed by its own bar.
    """

    _EVERY = 0.1

    def __init__(self, factory: Callable[..., Any], stream: TextIO) -> None:
        self._factory, self._stream = factory, stream
        self._bar: Any = None
        self._by_frames = True
        self._next = 0.0

    def start(self, title: str, budget: Budget) -> None:
        self._by_frames = budget.frames is not None
        total = budget.frames if self._by_frames else budget.seconds
        unit = "frame" if self._by_frames else "s"
        fmt = "{desc:>14} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} " + unit + " {postfix}"
        self._bar = self._factory(
            total=total, desc=title, file=self._stream, leave=False, bar_format=fmt
        )
        self._next = 0.0

    def update(self, frames: int, elapsed: float) -> None:
        if elapsed < self._next:
            return
        self._next = elapsed + self._EVERY
        self._bar.n = min(frames if self._by_frames else round(elapsed, 1), self._bar.total)
        self._bar.set_postfix_str(f"{frames / elapsed:.1f} fps" if elapsed > 0 else "")

    def stop(self) -> None:
        self._bar.close()


# --- tables ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A table column: header, how to get the text of a cell, and alignment."""

    header: str
    cell: Callable[[ModeResult, BenchResult, float], str]
    left: bool = False


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[bool]
) -> str:
    """Plain aligned text, two spaces between columns (copy-pastes into Markdown code blocks)."""
    widths = [max(len(text) for text in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(width) if is_left else cell.rjust(width)
            for cell, width, is_left in zip(cells, widths, left)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def _latency(key: str) -> Callable[[ModeResult, BenchResult, float], str]:
    return lambda row, _, unit: f"{getattr(row.latency, key) / unit:.2f}"


def _speedup(row: ModeResult, bench: BenchResult, _unit: float) -> str:
    ratio = bench.speedup(row)
    return "-" if ratio is None else f"{ratio:.2f}x"


_NAME = Column("mode", lambda row, _, __: row.name, left=True)
_WHAT = Column("runtime", lambda row, _, __: row.label, left=True)
_FRAMES = Column("frames", lambda row, _, __: str(row.count))
_FPS = Column("fps", lambda row, _, __: f"{row.fps:.1f}")
_SPEEDUP = Column("speed-up", _speedup)
_MEDIAN = Column("median", _latency("median"))

#: ``ez-rknn bench``: benchmark_app's report, one row per mode.
BENCH_COLUMNS = (
    _NAME,
    _FRAMES,
    Column("time s", lambda row, _, __: f"{row.duration:.2f}"),
    _FPS,
    _SPEEDUP,
    Column("first", lambda row, _, unit: f"{row.first / unit:.2f}"),
    _MEDIAN,
    Column("avg", _latency("avg")),
    Column("min", _latency("min")),
    Column("max", _latency("max")),
    Column("p90", _latency("p90")),
    Column("p99", _latency("p99")),
)
#: ``ez-rknn demo``: the short version.
DEMO_COLUMNS = (_NAME, _WHAT, _FRAMES, _FPS, _SPEEDUP, _MEDIAN)


def bench_table(bench: BenchResult, columns: Sequence[Column] = BENCH_COLUMNS) -> str:
    """The table, then a legend of rows, units, the baseline, skipped rows and warnings."""
    if not bench.results:
        return "nothing was measured"
    unit_name, unit = pick_unit(min(row.latency.median for row in bench.results))
    headers = [c.header for c in columns]
    rows = [[c.cell(row, bench, unit) for c in columns] for row in bench.results]
    lines = [format_table(headers, rows, [c.left for c in columns]), ""]
    if _WHAT not in columns:
        width = max(len(row.name) for row in bench.results)
        lines += [f"  {row.name:<{width}}  {row.label}" for row in bench.results]
    baseline = bench.baseline
    lines.append(
        f"latency in {unit_name} (first = the first inference, before warm-up); "
        f"speed-up = fps / fps of '{baseline.name if baseline else '-'}'"
    )
    lines += [f"skipped {s.name}: {s.reason}" for s in bench.skipped]
    lines += [
        f"warning: {row.name} is unstable: its slowest sample is more than "
        f"{UNSTABLE_FACTOR:g}x slower than its fastest; the machine may be busy"
        for row in bench.results
        if row.unstable
    ]
    return "\n".join(lines)


def bench_header(bench: BenchResult) -> str:
    """One line on what was run, printed above the table."""
    plan = bench.plan
    budget = plan.budget
    limits = [
        f"{budget.frames} frames" if budget.frames else "",
        f"{budget.seconds:g} s" if budget.seconds else "",
    ]
    providers = ", ".join(bench.providers) or "-"
    return (
        f"{os.path.basename(plan.model)}: backend {bench.backend} ({providers}), "
        f"depth {bench.depth}, {' or '.join(x for x in limits if x)} per row"
        + (f" in {plan.repeat} rounds" if plan.repeat > 1 else "")
        + f", {os.cpu_count()} CPUs"
    )


# --- JSON --------------------------------------------------------------------------------------


def _versions() -> dict[str, Optional[str]]:
    from importlib import metadata

    versions: dict[str, Optional[str]] = {}
    for name in ("ez-rknn-async", "numpy", "onnxruntime", "openvino"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def bench_json(bench: BenchResult) -> dict[str, Any]:
    """The machine-readable result (schema ``JSON_SCHEMA``); times in seconds, latency in ms."""
    plan = bench.plan
    baseline = bench.baseline
    return {
        "schema": JSON_SCHEMA,
        "model": {"path": os.path.abspath(plan.model), "backend": bench.backend},
        "providers": bench.providers,
        "config": {
            "modes": list(plan.modes),
            "compare": list(plan.compare),
            "depth": bench.depth,
            "frames": plan.budget.frames,
            "time_s": plan.budget.seconds,
            "warmup": "auto" if plan.warmup is None else plan.warmup,
            "repeat": plan.repeat,
            "provider_options": plan.provider_options,
            "inputs": {
                name: {"shape": list(a.shape), "dtype": str(a.dtype)}
                for name, a in bench.feed.items()
            },
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "versions": _versions(),
        },
        "baseline": baseline.name if baseline else None,
        "results": [
            {
                "name": row.name,
                "label": row.label,
                "ours": row.ours,
                "count": row.count,
                "duration_s": row.duration,
                "fps": row.fps,
                "speedup": bench.speedup(row),
                "load_s": row.load,
                "first_ms": row.first * 1e3,
                "warmup_frames": row.warmup_frames,
                "latency_ms": row.latency.scaled(1e3),
                "window_fps": row.window_fps,
                "round_fps": row.round_fps,
                "unstable": row.unstable,
            }
            for row in bench.results
        ],
        "skipped": [{"name": s.name, "reason": s.reason} for s in bench.skipped],
        "notes": bench.notes,
    }


# --- plot --------------------------------------------------------------------------------------


def require_matplotlib() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or the pip command. Called before measuring so a
    missing extra fails in a second, not after a ten-minute run."""
    try:
        import matplotlib
    except ImportError as exc:
        raise MissingDependencyError("matplotlib (needed by --plot)", _PLOT_EXTRA) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plot(bench: BenchResult, path: str) -> None:
    """fps per time window (left) and per-frame latency (right), one box per row, to a PNG.
    Our rows are blue, the comparators grey."""
    plt = require_matplotlib()
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    rows = bench.results
    positions = list(range(1, len(rows) + 1))
    unit_name, unit = pick_unit(min(row.latency.median for row in rows))
    fig, (ax_fps, ax_lat) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=90)
    fps_boxes = ax_fps.boxplot(
        [row.window_fps or [row.fps] for row in rows], showfliers=False, patch_artist=True
    )
    ax_fps.plot(positions, [row.fps for row in rows], "D", color="tab:red", label="overall fps")
    ax_fps.set_title("throughput per time window")
    ax_fps.set_ylabel("frames / s")
    ax_fps.set_ylim(bottom=0)
    ax_fps.legend(loc="lower right", fontsize="small")
    latency_boxes = ax_lat.boxplot(
        [[v / unit for v in row.latencies] for row in rows],
        whis=(1, 99),
        showfliers=False,
        patch_artist=True,
    )
    ax_lat.set_title("latency per frame (whiskers: p1..p99)")
    ax_lat.set_ylabel(unit_name)
    ax_lat.set_yscale("log")
    ax_lat.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax_lat.yaxis.set_major_formatter(ScalarFormatter())
    ax_lat.yaxis.set_minor_formatter(NullFormatter())
    colors = ["#9ecae1" if row.ours else "#d9d9d9" for row in rows]
    for boxes in (fps_boxes, latency_boxes):
        for patch, color in zip(boxes["boxes"], colors):
            patch.set_facecolor(color)
    for axis in (ax_fps, ax_lat):
        axis.set_xticks(positions)
        axis.set_xticklabels([row.name for row in rows], rotation=20)
        axis.grid(axis="y", alpha=0.3)
    fig.suptitle(f"ez-rknn bench: {bench_header(bench)}", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
