"""Ours vs the original C++ library on the same emulated RK3588, side by side in one process.

    .venv/bin/python benchmarks/bench_vs_ztu.py                      # 0, 200, 1000, 20000 us
    .venv/bin/python benchmarks/bench_vs_ztu.py --compute-us 0 --modes async,pipeline --seconds 2
    .venv/bin/python benchmarks/bench_vs_ztu.py --compute-us 200,1000 --ours-threads 2

``--ours-threads 2`` adds ours with ``threads_per_core=2`` (two contexts per core) to the same
interleaved rounds, one row each (``mode/t2``), against the same original figure.

The yardstick of issue 11 (per-task overhead): the same 1x16 float32 model file, the same
emulated librknnrt (tests/npu_emulator, ``compute_us`` of NPU time per inference), the same
provider options (``schedule=[0, 1, 2]``, ``max_queue_size=--depth``), the bench's own drivers
(``ez_rknn_async.cli.measure``: ``run`` in a loop, ``run_async`` with ``--depth`` frames in flight,
``run_pipeline(feed, depth)``; for both libraries the driver the original needs, which has no
drain: it flushes with dummy frames). Rounds interleave ours and the original's; the median
tasks/s of the rounds is kept and the ratio ours/original printed (>= 1.0: ours is faster).

The original's submit sometimes misses a wake-up and waits its whole ``submit_timeout_ms``
(10 s) before going on (seen in ``run_pipeline`` after tens of thousands of calls). Such stalls
(a gap of over 1 s between two completions) are counted and their time left out of its rate, so
the ratio compares per-task cost; the ``stalls`` column says when that happened.
Needs the original installed (the ``test`` extra does on Linux x86_64/aarch64).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ez_rknn_async.cli.comparators import make_driver  # noqa: E402
from ez_rknn_async.cli.measure import Budget, Timeline, measure  # noqa: E402
from ez_rknn_async.cli.rivals import ZTU_LIBRARY_VAR, ZTU_MODULE  # noqa: E402

from rknn_emu import EmuModel, EmuTensor, Npu, process_npu  # noqa: E402

MODEL = EmuModel([EmuTensor("x", "float32", (1, 16))], [EmuTensor("y", "float32", (1, 16))])
MODES = ("run", "async", "pipeline")
STALL_SECONDS = 1.0


def rate(timeline: Timeline) -> tuple[float, int]:
    """(tasks/s without stalls, number of stalls) of one measurement."""
    done = sorted(timeline.done)
    gaps = [b - a for a, b in zip(done, done[1:]) if b - a > STALL_SECONDS]
    busy = timeline.duration - sum(gaps)
    return (timeline.count / busy if busy > 0 else 0.0), len(gaps)


def compare(npu: Npu, ztu, path: str, compute_us: int, args) -> list[dict]:
    """Every mode at one emulated inference time: ours and the original's, rounds interleaved."""
    from ez_rknn_async import InferenceSession, make_provider_options

    npu.use("rk3588", compute_us=compute_us)
    options = {"schedule": [0, 1, 2], "max_queue_size": args.depth}
    feed = {"x": np.ones((1, 16), np.float32)}
    sessions = {
        "ours": InferenceSession(path, provider_options=make_provider_options(**options)),
        "ztu": ztu.InferenceSession(path, provider_options=ztu.make_provider_options(**options)),
    }
    for threads in args.ours_threads:  # ours with more contexts per core, in the same rounds
        sessions[f"ours_t{threads}"] = InferenceSession(
            path, provider_options=make_provider_options(threads_per_core=threads, **options)
        )
    rows = []
    try:
        for mode in args.modes:
            # One driver for both: the original's run_pipeline has no drain, so its driver
            # flushes with dummy frames, whose work overlaps the next round; ours draining
            # instead would idle cores at every round's end and start (2-3% at 20 ms).
            kind = "ztu-pipeline" if mode == "pipeline" else mode
            drivers = {name: make_driver(kind, s, feed, args.depth) for name, s in sessions.items()}
            for each in drivers.values():
                measure(each, Budget(seconds=min(0.3, args.seconds)))  # warm-up
            samples: dict[str, list[float]] = {name: [] for name in drivers}
            stalls = dict.fromkeys(drivers, 0)
            for _ in range(args.rounds):
                for name, each in drivers.items():
                    tasks_per_s, stalled = rate(measure(each, Budget(seconds=args.seconds)))
                    samples[name].append(tasks_per_s)
                    stalls[name] += stalled
            theirs = statistics.median(samples["ztu"])
            for name in (n for n in drivers if n != "ztu"):
                ours = statistics.median(samples[name])
                rows.append(
                    {
                        "compute_us": compute_us,
                        "mode": mode,
                        "ours": ours,
                        "ztu": theirs,
                        "ratio": ours / theirs if theirs else float("inf"),
                        "ztu_stalls": stalls["ztu"],
                        "ours_stalls": stalls[name],
                        "threads_per_core": int(name[6:]) if name != "ours" else 1,
                    }
                )
                print_row(rows[-1])
    finally:
        for name, session in sessions.items():
            if name != "ztu":
                session.close()
        sessions.clear()  # the original has no close(): freed with its last reference
        gc.collect()
    return rows


def print_row(row: dict) -> None:
    stalls = f"{row['ztu_stalls']}/{row['ours_stalls']}"
    mode = f"{row['mode']}/t{row['threads_per_core']}"
    print(
        f"{row['compute_us']:>9}  {mode:<11}  {row['ours']:>10.0f}  {row['ztu']:>10.0f}"
        f"  {row['ratio']:>6.2f}x  {stalls:>7}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compute-us", default="0,200,1000,20000", help="comma list")
    parser.add_argument("--modes", default=",".join(MODES), help="run,async,pipeline")
    parser.add_argument("--seconds", type=float, default=1.0, help="per row and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--depth", type=int, default=6, help="frames in flight, queue size")
    parser.add_argument(
        "--ours-threads",
        default="",
        help="comma list: also measure ours with these threads_per_core (e.g. 2), same rounds",
    )
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    args.modes = [m for m in args.modes.split(",") if m]
    args.ours_threads = [int(v) for v in args.ours_threads.split(",") if v]
    if importlib.util.find_spec(ZTU_MODULE) is None:
        print("the original is not installed: pip install ztu-somemodelruntime-ez-rknn-async")
        return 2
    npu = process_npu()
    os.environ[ZTU_LIBRARY_VAR] = str(npu.paths.library)
    ztu = importlib.import_module(ZTU_MODULE)
    path = str(MODEL.write(Path(os.environ.get("TMPDIR", "/tmp")) / "bench_vs_ztu.rknn"))
    print(
        f"emulated RK3588, schedule=[0,1,2], depth {args.depth}, {args.rounds} rounds of "
        f"{args.seconds} s, median tasks/s; stalls = original/ours waits over {STALL_SECONDS} s"
    )
    print(
        f"{'compute us':>9}  {'mode/tpc':<11}  {'ours /s':>10}  {'original /s':>10}  {'ratio':>7}  "
        f"{'stalls':>7}"
    )
    rows = []
    for compute_us in (int(v) for v in args.compute_us.split(",")):
        rows += compare(npu, ztu, path, compute_us, args)
    if npu.violations:
        print(f"emulator violations: {npu.violations} ({npu.last_violation})")
        return 1
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
