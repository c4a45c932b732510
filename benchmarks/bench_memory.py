"""Issue 11, point 4: memory stays flat over many tasks in every calling mode.

    .venv/bin/python benchmarks/bench_memory.py [--tasks 1000000] [--samples 10]

On the emulated RK3588 (``tests/npu_emulator``, 0 us per inference, a 1x16 float32 model, three
cores) every mode runs ``--tasks`` tasks after a warm-up: ``run``, ``submit``, ``run_async``,
``run_pipeline``, ``arun`` and ``run_with_iobinding`` (zero copy: bound device buffers).
RSS is sampled ``--samples`` times along the way; a leak of even 8 bytes a task would show as
+7.8 MiB over 10^6 tasks, and in the second half as much as in the first (``2nd half``: RSS at
the end minus RSS half way; a one-time growth, allocator arenas filling, shows in the first).

Then ``tracemalloc`` counts what each mode allocates: the Python blocks and bytes still alive after
``--traced`` more tasks than before them (a leak grows with the count; a few blocks of caches
do not), and the peak of traced memory while one task is in flight (what one task allocates at
once: its Task, Future, input copy, output array, ...).
Exits non-zero if the emulator saw a rule violation or a leak.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from bench_engine import rss_kib  # noqa: E402

from rknn_emu import EmuModel, EmuTensor, process_npu  # noqa: E402

MODEL = EmuModel(
    inputs=[EmuTensor("x", "float32", (1, 16))], outputs=[EmuTensor("y", "float32", (1, 16))]
)
Mode = Callable[[int], None]


def modes(session) -> dict[str, Mode]:
    """Each mode as ``fn(count)``: runs ``count`` tasks and returns once all are done."""
    x = np.ones((1, 16), np.float32)
    feed = {"x": x}

    def run(count: int) -> None:
        for _ in range(count):
            session.run(None, feed)

    def submit(count: int) -> None:
        pending = []
        for _ in range(count):
            pending.append(session.submit(None, feed))
            if len(pending) > 6:
                pending.pop(0).result()
        for future in pending:
            future.result()

    def run_async(count: int) -> None:
        done = threading.Semaphore(0)
        for _ in range(count):
            session.run_async(None, feed, lambda results, user_data, err: done.release())
        for _ in range(count):
            if not done.acquire(timeout=60):
                raise RuntimeError("a run_async callback never came")

    def pipeline(count: int) -> None:
        for _ in range(count):
            session.run_pipeline(feed, depth=6)
        session.drain_pipeline()

    def arun(count: int) -> None:
        async def main() -> None:
            window = 6
            for start in range(0, count, window):
                batch = min(window, count - start)
                await asyncio.gather(*(session.arun(None, feed) for _ in range(batch)))

        asyncio.run(main())

    binding = session.io_binding()
    binding.bind_cpu_input("x", x)
    binding.bind_output("y")

    def iobinding(count: int) -> None:
        for _ in range(count):
            session.run_with_iobinding(binding)

    return {
        "run": run,
        "submit": submit,
        "run_async": run_async,
        "run_pipeline": pipeline,
        "arun": arun,
        "run_with_iobinding": iobinding,
    }


def rss_flat(mode: Mode, tasks: int, samples: int) -> tuple[list[int], float]:
    mode(20_000)  # warm-up: caches, free lists, allocator arenas
    rss = [rss_kib()]
    start = time.perf_counter()
    step = max(1, tasks // samples)
    done = 0
    while done < tasks:
        count = min(step, tasks - done)
        mode(count)
        done += count
        rss.append(rss_kib())
    return rss, tasks / (time.perf_counter() - start)


def traced(mode: Mode, tasks: int) -> tuple[int, int, int]:
    """(blocks alive after ``tasks`` tasks, their bytes, peak bytes of one task in flight)."""
    mode(2000)
    tracemalloc.start()
    try:
        mode(200)
        before = tracemalloc.take_snapshot()
        mode(tasks)
        after = tracemalloc.take_snapshot()
        stats = after.compare_to(before, "filename")
        blocks = sum(stat.count_diff for stat in stats)
        size = sum(stat.size_diff for stat in stats)
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        mode(1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return blocks, size, peak - base


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--traced", type=int, default=20_000)
    args = parser.parse_args(argv)
    npu = process_npu()
    npu.use("rk3588", compute_us=0)

    from ez_rknn_async import InferenceSession, make_provider_options

    options = make_provider_options(schedule=[0, 1, 2])
    print(f"emulated RK3588, 0 us/inference, 1x16 float32, schedule=[0,1,2], {args.tasks} tasks")
    print(f"tracemalloc: blocks/bytes alive after {args.traced} more tasks, peak of one task")
    print(
        f"{'mode':20} {'tasks/s':>8} {'RSS start':>11} {'RSS end':>11} {'max-start':>10}"
        f" {'2nd half':>9}  {'blocks':>6} {'bytes':>7} {'peak, 1 task':>12}"
    )
    with InferenceSession(MODEL.data(), provider_options=options) as session:
        for name, mode in modes(session).items():
            rss, rate = rss_flat(mode, args.tasks, args.samples)
            blocks, size, peak = traced(mode, args.traced)
            print(
                f"{name:20} {rate:8.0f} {rss[0]:7d} KiB {rss[-1]:7d} KiB "
                f"{max(rss) - rss[0]:+6d} KiB {rss[-1] - rss[len(rss) // 2]:+5d} KiB"
                f"  {blocks:+6d} {size:+7d} {peak:10d} B"
            )
    violations, live = npu.violations, npu.live_allocations
    print(f"emulator: {violations} violations, {live} live allocations after close")
    return 1 if violations or live else 0


if __name__ == "__main__":
    sys.exit(main())
