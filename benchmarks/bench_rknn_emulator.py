"""Issue 4 figures: the RKNN backend on the emulated NPU (tests/npu_emulator), in one process.

    .venv/bin/python benchmarks/bench_rknn_emulator.py [--frames 120] [--rounds 3]

* Multi-core scaling: an emulated RK3588 (3 cores, 20 ms per inference); ``run_pipeline`` frames/s
  with ``schedule=[0]`` vs ``schedule=[0, 1, 2]``, the default options (every core) and
  ``tp_mode="all"`` (one inference split over the three cores). Rounds interleave the contenders;
  the median is reported.
* Overhead per task with 0 µs compute: the backend alone (its runner called in a loop: the ctypes
  calls and the emulator's own work), then ``run_pipeline`` and ``run`` through the session. The
  engine's overhead is the session's time per task minus the runner's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from rknn_emu import EmuModel, EmuTensor, Npu, process_npu  # noqa: E402

MODEL = EmuModel(
    inputs=[EmuTensor("image", "uint8", (1, 16, 16, 3), scale=1 / 255)],
    outputs=[EmuTensor("scores", "int8", (1, 10), zp=-5, scale=0.02)],
)
SCHEDULES = {
    "schedule=[0]": {"schedule": [0]},
    "schedule=[0,1,2]": {"schedule": [0, 1, 2]},
    "default (every core)": {},
    'tp_mode="all"': {"tp_mode": "all"},
}


def pipeline_fps(session, frame: np.ndarray, frames: int) -> float:
    start = time.perf_counter()
    for _ in range(frames):
        session.run_pipeline([frame], depth=6)
    session.drain_pipeline()
    return frames / (time.perf_counter() - start)


def scaling(npu: Npu, frames: int, rounds: int) -> dict[str, float]:
    from ez_rknn_async import InferenceSession, make_provider_options

    npu.use("rk3588", compute_us=20_000)
    frame = np.zeros((1, 3, 16, 16), np.uint8)
    sessions = {
        name: InferenceSession(MODEL.data(), provider_options=make_provider_options(**options))
        for name, options in SCHEDULES.items()
    }
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            samples[name].append(pipeline_fps(session, frame, frames))
    for session in sessions.values():
        session.close()
    return {name: statistics.median(values) for name, values in samples.items()}


def per_task_us(fn, tasks: int, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(tasks)
        best = min(best, (time.perf_counter() - start) / tasks)
    return best * 1e6


def overhead(npu: Npu, tasks: int) -> dict[str, float]:
    from ez_rknn_async import InferenceSession, make_provider_options
    from ez_rknn_async.backends import ModelSource, SlotSpec
    from ez_rknn_async.backends.rknn.backend import load
    from ez_rknn_async.options import ProviderOptions

    npu.use("rk3588", compute_us=0)
    frame = np.zeros((1, 3, 16, 16), np.uint8)
    backend = load(ModelSource(MODEL.data()), ProviderOptions())
    runner = backend.open_runner(SlotSpec(0, 0, 1))
    outputs = [0]

    def backend_only(n):
        for _ in range(n):
            runner.run([frame], outputs)

    results = {"backend runner.run": per_task_us(backend_only, tasks)}
    runner.close()
    backend.close()
    options = make_provider_options(schedule=[0])
    with InferenceSession(MODEL.data(), provider_options=options) as session:

        def pipeline(n):
            for _ in range(n):
                session.run_pipeline([frame])
            session.drain_pipeline()

        def run(n):
            for _ in range(n):
                session.run(None, [frame])

        results["session run_pipeline"] = per_task_us(pipeline, tasks)
        results["session run"] = per_task_us(run, tasks)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=3000)
    args = parser.parse_args(argv)
    npu = process_npu()

    fps = scaling(npu, args.frames, args.rounds)
    base = fps["schedule=[0]"]
    print(f"RK3588 emulated, 20 ms/inference, run_pipeline depth 6, {args.frames} frames, median")
    print(f"{'options':24} {'frames/s':>9} {'vs one core':>12}")
    for name, value in fps.items():
        print(f"{name:24} {value:9.1f} {value / base:11.2f}x")

    times = overhead(npu, args.tasks)
    engine = times["session run_pipeline"] - times["backend runner.run"]
    print(f"\nper task, 0 us compute, best of 5 x {args.tasks} tasks:")
    for name, value in times.items():
        print(f"{name:24} {value:8.1f} us")
    print(f"{'engine overhead':24} {engine:8.1f} us (run_pipeline minus runner.run)")
    violations, live = npu.violations, npu.live_allocations
    print(f"\nemulator: {violations} violations, {live} live allocations after close")
    return 1 if violations or live else 0


if __name__ == "__main__":
    sys.exit(main())
