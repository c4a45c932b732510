"""run_pipeline on a Completion (now) vs on a Future (before), side by side in one process.

    .venv/bin/python benchmarks/bench_pipeline_completion.py                 # 0, 200, 1000 us
    .venv/bin/python benchmarks/bench_pipeline_completion.py --compute-us 200 --rounds 9

Two sessions of ours on the same emulated RK3588 (``schedule=[0, 1, 2]``, ``max_queue_size=6``,
the 1x16 float32 model of ``bench_vs_ztu.py``, ``run_pipeline(feed, 6)`` through the same driver):
one as it is, one whose engine queues pipeline frames with ``submit`` (a
``concurrent.futures.Future``, what ``run_pipeline`` used before ``engine/completion.py``). Rounds
interleave the two (alternating which goes first); prints each round's ratio Completion/Future and
the median (> 1: the Completion is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ez_rknn_async.cli.comparators import make_driver  # noqa: E402
from ez_rknn_async.cli.measure import Budget, measure  # noqa: E402

from rknn_emu import EmuModel, EmuTensor, process_npu  # noqa: E402

MODEL = EmuModel([EmuTensor("x", "float32", (1, 16))], [EmuTensor("y", "float32", (1, 16))])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compute-us", default="0,200,1000", help="comma list")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.0, help="per session and round")
    args = parser.parse_args()
    npu = process_npu()
    from ez_rknn_async import InferenceSession, make_provider_options

    path = str(MODEL.write(Path(os.environ.get("TMPDIR", "/tmp")) / "bench_completion.rknn"))
    options = make_provider_options(schedule=[0, 1, 2], max_queue_size=6)
    feed = {"x": np.ones((1, 16), np.float32)}
    print(f"run_pipeline(feed, 6), {args.rounds} interleaved rounds of {args.seconds} s")
    for compute_us in (int(v) for v in args.compute_us.split(",")):
        npu.use("rk3588", compute_us=compute_us)
        now = InferenceSession(path, provider_options=options)
        before = InferenceSession(path, provider_options=options)
        engine = before._engine
        engine.enqueue = lambda inputs, indices, api, e=engine: e.submit(inputs, indices)
        try:
            drivers = {
                name: make_driver("ztu-pipeline", session, feed, 6)
                for name, session in (("completion", now), ("future", before))
            }
            for driver in drivers.values():
                measure(driver, Budget(seconds=0.3))  # warm-up
            rates: dict[str, list[float]] = {name: [] for name in drivers}
            for index in range(args.rounds):
                order = list(drivers.items())
                for name, driver in order if index % 2 == 0 else order[::-1]:
                    timeline = measure(driver, Budget(seconds=args.seconds))
                    rates[name].append(timeline.count / timeline.duration)
        finally:
            now.close()
            before.close()
        ratios = [a / b for a, b in zip(rates["completion"], rates["future"])]
        print(
            f"{compute_us:>6} us  Completion {statistics.median(rates['completion']):8.0f}/s  "
            f"Future {statistics.median(rates['future']):8.0f}/s  ratio median "
            f"{statistics.median(ratios):.2f}x  per round " + " ".join(f"{r:.2f}" for r in ratios),
            flush=True,
        )
    if npu.violations:
        print(f"emulator violations: {npu.violations} ({npu.last_violation})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
