"""``ez-rknn bench``: one measurement loop, many drivers.

A *driver* issues frames one at a time and reports each completion; the loop in ``measure`` owns
the clock. Three drivers cover everything: ``RunDriver`` (sequential ``run``), ``AsyncDriver``
(``run_async`` with a window of ``depth`` frames in flight) and ``PipelineDriver``
(``run_pipeline``), plus ``OpenVinoDriver`` for OpenVINO's ``AsyncInferQueue``. Our session and
plain onnxruntime share the first two, because onnxruntime's ``run`` and ``run_async`` have the
signatures ours copies, so the comparison runs literally the same loop.

Latency of a frame = its completion instant minus its submission instant, as the caller sees it
(for the pipeline: until ``run_pipeline`` hands the result back). Duration = first submission to
last completion; fps = frames / duration (OpenVINO ``benchmark_app``'s definitions).
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from ..errors import InferenceError
from .errors import MODEL_HINT, UsageError, user_input
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
Done = Callable[[int], None]


@dataclass(frozen=True)
class Budget:
    """When a measurement stops: after ``frames`` frames or ``seconds`` seconds, whichever first."""

    frames: Optional[int] = None
    seconds: Optional[float] = None

    def __post_init__(self) -> None:
        if self.frames is None and self.seconds is None:
            raise ValueError("a budget needs frames or seconds")

    def reached(self, frames: int, elapsed: float) -> bool:
        return (self.frames is not None and frames >= self.frames) or (
            self.seconds is not None and elapsed >= self.seconds
        )

    def split(self, parts: int) -> Budget:
        """The budget of one of ``parts`` interleaved rounds."""
        frames = None if self.frames is None else max(1, math.ceil(self.frames / parts))
        seconds = None if self.seconds is None else self.seconds / parts
        return Budget(frames, seconds)


@dataclass
class Timeline:
    """Submission and completion instants (``perf_counter`` seconds) of each frame."""

    submitted: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.submitted)

    @property
    def duration(self) -> float:
        return max(self.done) - self.submitted[0] if self.submitted else 0.0

    @property
    def latencies(self) -> list[float]:
        return [end - start for start, end in zip(self.submitted, self.done)]


class Progress(ABC):
    """Where the loop reports how far it is (a tqdm bar in human mode, nothing otherwise)."""

    @abstractmethod
    def start(self, title: str, budget: Budget) -> None: ...

    @abstractmethod
    def update(self, frames: int, elapsed: float) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...


class Driver(ABC):
    """Issues frames to one runtime in one mode."""

    def begin(self, done: Done) -> None:
        """Called before the first ``issue`` of a measurement with the completion recorder."""
        self._done = done

    @abstractmethod
    def issue(self, index: int) -> None:
        """Submit frame ``index``; ``self._done(index)`` must be called once it completes."""

    def finish(self) -> None:  # noqa: B027 - synchronous drivers have nothing in flight
        """Wait until every issued frame completed; raise the first failure."""


class RunDriver(Driver):
    """``sess.run(None, feed)`` in a loop: ours or onnxruntime's, same call."""

    def __init__(self, session: Any, feed: dict[str, Any]) -> None:
        self._session, self._feed = session, feed

    def issue(self, index: int) -> None:
        self._session.run(None, self._feed)
        self._done(index)


class AsyncDriver(Driver):
    """``sess.run_async`` with at most ``depth`` frames in flight (ours or onnxruntime's >= 1.16).

    The window is what OpenVINO's ``-nireq`` is: without it, latency would measure queueing.
    """

    def __init__(self, session: Any, feed: dict[str, Any], depth: int) -> None:
        self._session, self._feed, self._depth = session, feed, depth
        self._slots = threading.Semaphore(depth)
        self._error = ""

    def _callback(self, results: Any, index: int, err: str) -> None:
        if err and not self._error:
            self._error = err
        self._done(index)
        self._slots.release()

    def _raise_error(self) -> None:
        if self._error:
            error, self._error = self._error, ""
            raise InferenceError(f"run_async failed: {error}")  # a callback has only the text

    def issue(self, index: int) -> None:
        self._slots.acquire()
        self._raise_error()
        self._session.run_async(None, self._feed, self._callback, index)

    def finish(self) -> None:
        for _ in range(self._depth):
            self._slots.acquire()
        for _ in range(self._depth):
            self._slots.release()
        self._raise_error()


class PipelineDriver(Driver):
    """``sess.run_pipeline(feed, depth)``: each call returns the frame ``depth`` calls older."""

    def __init__(self, session: Any, feed: dict[str, Any], depth: int) -> None:
        self._session, self._feed, self._depth = session, feed, depth
        self._pending: collections.deque[int] = collections.deque()

    def issue(self, index: int) -> None:
        self._pending.append(index)
        if self._session.run_pipeline(self._feed, self._depth) is not None:
            self._done(self._pending.popleft())

    def finish(self) -> None:
        for _ in self._session.drain_pipeline():
            self._done(self._pending.popleft())
        if self._pending:
            raise RuntimeError(f"drain_pipeline left {len(self._pending)} frames unaccounted")


class OpenVinoDriver(Driver):
    """OpenVINO's ``AsyncInferQueue`` with ``depth`` infer requests (``benchmark_app -nireq``)."""

    def __init__(self, compiled: Any, feed: dict[str, Any], depth: int) -> None:
        import openvino

        self._feed = feed
        self._queue = openvino.AsyncInferQueue(compiled, depth)
        self._queue.set_callback(lambda request, index: self._done(index))

    def issue(self, index: int) -> None:
        self._queue.start_async(self._feed, index)

    def finish(self) -> None:
        self._queue.wait_all()


def measure(
    driver: Driver, budget: Budget, progress: Optional[Progress] = None, title: str = ""
) -> Timeline:
    """Issue frames until ``budget`` is reached, then wait for all of them. The only loop."""
    timeline = Timeline()
    submitted, done = timeline.submitted, timeline.done
    clock = time.perf_counter

    def complete(index: int) -> None:
        done[index] = clock()

    driver.begin(complete)
    if progress is not None:
        progress.start(title, budget)
    start = clock()
    frames = 0
    try:
        while not budget.reached(frames, clock() - start):
            submitted.append(clock())
            done.append(math.nan)
            driver.issue(frames)
            frames += 1
            if progress is not None:
                progress.update(frames, clock() - start)
        driver.finish()
    finally:
        if progress is not None:
            progress.stop()
    return timeline


# --- what to run -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparator:
    """A plain-runtime row: what it is, what it needs, how its driver is made. ``model`` is the
    file kind it loads; ``per_mode`` comparators give one row per mode of ours (``ztu-run``...)."""

    label: str
    requires: str
    pip: str
    model: str = "onnx"
    per_mode: bool = False


COMPARATORS: dict[str, Comparator] = {
    "ort": Comparator(
        "onnxruntime run (default threads)", "onnxruntime", "pip install onnxruntime"
    ),
    "ort-1t": Comparator(
        "onnxruntime run (intra_op_num_threads=1)", "onnxruntime", "pip install onnxruntime"
    ),
    "ort-async": Comparator(
        "onnxruntime run_async (default threads)", "onnxruntime", "pip install onnxruntime"
    ),
    "openvino": Comparator(
        "OpenVINO AsyncInferQueue (CPU, THROUGHPUT hint)", "openvino", "pip install openvino"
    ),
    "ztu": Comparator(
        "the original C++ library (.rknn), one row per --mode",
        "ztu_somemodelruntime_ez_rknn_async",
        "pip install ztu-somemodelruntime-ez-rknn-async",
        model="rknn",
        per_mode=True,
    ),
    "rknnlite": Comparator(
        "Rockchip RKNNLite inference (.rknn, boards)",
        "rknnlite",
        "pip install rknn-toolkit-lite2 on the board",
        model="rknn",
    ),
}
_OUR_LABELS = {
    "run": "ez-rknn run",
    "async": "ez-rknn run_async",
    "pipeline": "ez-rknn run_pipeline",
}
_ZTU_LABELS = {mode: label.replace("ez-rknn", "original") for mode, label in _OUR_LABELS.items()}


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


# --- opening runtimes --------------------------------------------------------------------------

#: Row -> (session it runs on, driver). Rows share sessions where the runtime allows it (our three
#: modes; ``ort`` and ``ort-async``), so a comparison loads each model once per runtime.
_ROWS: dict[str, tuple[str, str]] = {
    "run": ("ours", "run"),
    "async": ("ours", "async"),
    "pipeline": ("ours", "pipeline"),
    "ort": ("ort", "run"),
    "ort-1t": ("ort-1t", "run"),
    "ort-async": ("ort", "async"),
    "openvino": ("openvino", "openvino"),
    "ztu-run": ("ztu", "run"),
    "ztu-async": ("ztu", "async"),
    "ztu-pipeline": ("ztu", "ztu-pipeline"),
    "rknnlite": ("rknnlite", "run"),
}


class _Sessions:
    """Opens each runtime once, times the load, and closes everything at the end."""

    def __init__(self, plan: Plan, stack: contextlib.ExitStack) -> None:
        self._plan, self._stack = plan, stack
        self._cache: dict[str, tuple[Any, float]] = {}
        self._openers: dict[str, Callable[[], Any]] = {
            "ours": self._open_ours,
            "ort": lambda: self._open_ort(None),
            "ort-1t": lambda: self._open_ort(1),
            "openvino": self._open_openvino,
            "ztu": self._open_ztu,
            "rknnlite": self._open_rknnlite,
        }

    def get(self, key: str) -> tuple[Any, float]:
        """(session, seconds its load took) of ``ours``, ``ort``, ``ort-1t`` or ``openvino``."""
        if key not in self._cache:
            start = time.perf_counter()
            session = self._openers[key]()
            self._cache[key] = (session, time.perf_counter() - start)
        return self._cache[key]

    def _options(self) -> dict[str, Any]:
        """Provider options of ours and of the original: the plan's, and a queue for --depth."""
        depth = self._plan.depth
        queue: dict[str, Any] = {} if depth is None else {"max_queue_size": max(3, depth)}
        return {**queue, **self._plan.provider_options}

    def _open_ours(self) -> Any:
        from .. import InferenceSession, make_provider_options

        options = make_provider_options(**self._options())
        with user_input(MODEL_HINT):
            session = InferenceSession(self._plan.model, provider_options=options)
        self._stack.callback(session.close)
        return session

    def _open_ztu(self) -> Any:
        from .rivals import open_ztu

        return open_ztu(self._plan.model, self._options())  # freed with its last reference

    def _open_rknnlite(self) -> Any:
        from .rivals import open_rknnlite

        session = open_rknnlite(self._plan.model)
        self._stack.callback(session.close)
        return session

    def _open_ort(self, threads: Optional[int]) -> Any:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        return onnxruntime.InferenceSession(
            self._plan.model, options, providers=["CPUExecutionProvider"]
        )

    def _open_openvino(self) -> Any:
        import openvino

        return openvino.Core().compile_model(
            self._plan.model, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"}
        )


def _make_driver(kind: str, session: Any, feed: dict[str, Any], depth: int) -> Driver:
    if kind == "run":
        return RunDriver(session, feed)
    if kind == "async":
        return AsyncDriver(session, feed, depth)
    if kind == "pipeline":
        return PipelineDriver(session, feed, depth)
    if kind == "ztu-pipeline":
        from .rivals import ZtuPipelineDriver

        return ZtuPipelineDriver(session, feed, depth)
    return OpenVinoDriver(session, feed, depth)


def _why_not(name: str, backend: str) -> Optional[str]:
    """Why comparator ``name`` cannot run here, or None if it can."""
    comparator = COMPARATORS[name]
    if comparator.model == "onnx" and backend == "rknn":
        return "needs an ONNX model (this one is .rknn)"
    if comparator.model == "rknn" and backend != "rknn":
        return "needs an .rknn model on the RKNN backend"
    if importlib.util.find_spec(comparator.requires) is None:
        return f"{comparator.requires} is not installed ({comparator.pip})"
    if name == "ort-async":
        import onnxruntime

        if not hasattr(onnxruntime.InferenceSession, "run_async"):
            return f"onnxruntime {onnxruntime.__version__} has no run_async (needs >= 1.16)"
    return None


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


def _row_names(plan: Plan) -> list[tuple[str, str, str]]:
    """(row, comparator or "" for ours, label) of every requested row, ours first; a per-mode
    comparator gives one row per mode of ours."""
    names = [(mode, "", _OUR_LABELS[mode]) for mode in plan.modes]
    for name in plan.compare:
        if COMPARATORS[name].per_mode:
            names += [(f"{name}-{mode}", name, _ZTU_LABELS[mode]) for mode in plan.modes]
        else:
            names.append((name, name, COMPARATORS[name].label))
    return names


def _open_rows(
    plan: Plan, sessions: _Sessions, feed: dict[str, Any], depth: int, backend: str
) -> tuple[list[tuple[ModeResult, Driver]], list[Skipped]]:
    """A driver per requested row, ours first. A comparator that cannot run here (not installed,
    cannot load this model) becomes one ``Skipped`` note instead of failing the whole run."""
    rows: list[tuple[ModeResult, Driver]] = []
    skipped: dict[str, Skipped] = {}
    for row, comparator, label in _row_names(plan):
        if comparator in skipped:
            continue
        key, kind = _ROWS[row]
        reason = _why_not(comparator, backend) if comparator else None
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
        rows.append((result, _make_driver(kind, session, feed, depth)))
    return rows, list(skipped.values())


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
        sessions = _Sessions(plan, stack)
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
