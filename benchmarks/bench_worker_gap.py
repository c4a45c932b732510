"""Where a worker's time goes between two native runs on its core (issue 11, target 1).

    .venv/bin/python benchmarks/bench_worker_gap.py                       # 200 us, pipeline+async
    .venv/bin/python benchmarks/bench_worker_gap.py --compute-us 1000 --threads 2

Wraps ``NativeSequence.run`` (the native calls of one inference), ``RknnRunner.run`` and
``Task.run`` with ``time.perf_counter_ns`` marks per thread, runs ours alone on the emulated RK3588
(``schedule=[0, 1, 2]``, ``max_queue_size=--depth``, the drivers of ``bench_vs_ztu.py``) and prints
the median of every segment between two consecutive marks on the worker threads: the native
sequence itself, then each Python step from its return to the next task's native call. The wrappers
add about 0.3 µs per mark; the gap is what a worker's core waits between two inferences.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ez_rknn_async.backends.rknn.runner import RknnRunner  # noqa: E402
from ez_rknn_async.backends.rknn.sequence import NativeSequence  # noqa: E402
from ez_rknn_async.cli.comparators import make_driver  # noqa: E402
from ez_rknn_async.cli.measure import Budget, measure  # noqa: E402
from ez_rknn_async.engine.tasks import Task  # noqa: E402

from rknn_emu import EmuModel, EmuTensor, process_npu  # noqa: E402

MODEL = EmuModel([EmuTensor("x", "float32", (1, 16))], [EmuTensor("y", "float32", (1, 16))])
#: (class, method, mark before, mark after): the marks a worker passes, in call order.
PROBES = (
    (Task, "run", "Task.run", "Task.run returned"),
    (RknnRunner, "run", "RknnRunner.run", "RknnRunner.run returned"),
    (NativeSequence, "run", "native calls", "native calls returned"),
)
MARKS: dict[int, list[tuple[str, int]]] = {}


def probe(cls: type, method: str, before: str, after: str) -> None:
    """Replace ``cls.method`` by a wrapper that marks its entry and exit on the calling thread."""
    original: Callable[..., Any] = getattr(cls, method)
    clock = time.perf_counter_ns

    def marked(*args: Any, **kwargs: Any) -> Any:
        marks = MARKS.setdefault(threading.get_ident(), [])
        marks.append((before, clock()))
        try:
            return original(*args, **kwargs)
        finally:
            marks.append((after, clock()))

    setattr(cls, method, marked)


def segments() -> dict[str, list[int]]:
    """Nanoseconds between consecutive marks, by segment, on the threads that ran native calls."""
    spans: dict[str, list[int]] = {}
    for marks in MARKS.values():
        if not any(label == "native calls" for label, _ in marks):
            continue  # a caller's thread
        for (first, start), (then, end) in zip(marks, marks[1:]):
            spans.setdefault(f"{first} -> {then}", []).append(end - start)
    return spans


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compute-us", type=int, default=200)
    parser.add_argument("--modes", default="pipeline,async", help="run,async,pipeline")
    parser.add_argument("--threads", type=int, default=1, help="threads_per_core")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--depth", type=int, default=6)
    args = parser.parse_args()
    npu = process_npu()
    npu.use("rk3588", compute_us=args.compute_us)
    for each in PROBES:
        probe(*each)
    from ez_rknn_async import InferenceSession, make_provider_options

    path = str(MODEL.write(Path(os.environ.get("TMPDIR", "/tmp")) / "bench_worker_gap.rknn"))
    options = make_provider_options(
        schedule=[0, 1, 2], max_queue_size=args.depth, threads_per_core=args.threads
    )
    feed = {"x": np.ones((1, 16), np.float32)}
    with InferenceSession(path, provider_options=options) as session:
        for mode in (m for m in args.modes.split(",") if m):
            kind = "ztu-pipeline" if mode == "pipeline" else mode
            driver = make_driver(kind, session, feed, args.depth)
            measure(driver, Budget(seconds=0.3))  # warm-up
            MARKS.clear()
            timeline = measure(driver, Budget(seconds=args.seconds))
            print(
                f"{args.compute_us} us emulated, {mode}, threads_per_core={args.threads}: "
                f"{timeline.count / timeline.duration:,.0f} tasks/s"
            )
            for name, spans in segments().items():
                median = statistics.median(spans) / 1e3
                print(f"  {name:<52} {median:8.1f} µs median  (n={len(spans)})")
            print_gap()
    return 0


def print_gap() -> None:
    """Native return -> next native call on the same thread: the time its core stood idle; with
    the native sequence's own mean, the cycle of a core (3 cores: 3 / cycle tasks/s)."""
    gaps: list[float] = []
    native: list[float] = []
    for marks in MARKS.values():
        ends = [t for label, t in marks if label == "native calls returned"]
        starts = [t for label, t in marks if label == "native calls"]
        gaps += [(start - end) / 1e3 for end, start in zip(ends, starts[1:])]
        native += [(end - start) / 1e3 for start, end in zip(starts, ends)]
    if not gaps:
        return
    gaps.sort()
    n = len(gaps)
    tail = [gap for gap in gaps if gap > 100]
    print(
        f"  {'gap: native return -> next native call':<52} {gaps[n // 2]:8.1f} µs median  "
        f"(mean {statistics.mean(gaps):.1f}, p10 {gaps[n // 10]:.1f}, p90 {gaps[n * 9 // 10]:.1f}; "
        f"{len(tail) / n:.1%} over 100 µs hold {sum(tail) / sum(gaps):.0%} of the gap time)"
    )
    cycle = statistics.mean(native) + statistics.mean(gaps)
    print(
        f"  {'native sequence mean, cycle of a core':<52} {statistics.mean(native):8.1f} µs, "
        f"{cycle:.1f} µs"
    )


if __name__ == "__main__":
    sys.exit(main())
