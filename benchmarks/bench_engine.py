"""Issue 3 figures: our modes vs plain onnxruntime, side by side in one process.

    .venv/bin/python benchmarks/bench_engine.py [--frames 60] [--rounds 5]

* Throughput on YOLOv8n 320 (the nudenet wheel's 320n.onnx): plain onnxruntime sequential ``run``
  with 1 and with 2 intra-op threads vs ours (default options) in ``run``, ``run_async`` and
  ``run_pipeline``; and two plain Python threads each looping a 1-thread onnxruntime ``run``, the
  practical ceiling of data parallelism on this machine (no engine at all). Rounds interleave
  every contender so machine noise hits them alike; the median ratio over rounds is reported.
* Per-call overhead of ``sess.run`` over onnxruntime ``run`` on a tiny model (median of
  interleaved blocks).
* The engine alone, with a runner that does nothing: µs per ``run`` and per ``run_async`` task.
* Memory: RSS after 100,000 ``run`` calls on the tiny model, against RSS after a warm-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from ez_rknn_async import InferenceSession  # noqa: E402

from fakes import echo, make_engine  # noqa: E402
from onnx_models import add_mul_model, yolo_path  # noqa: E402


def plain(model, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def fps(fn, frames: int) -> float:
    start = time.perf_counter()
    fn(frames)
    return frames / (time.perf_counter() - start)


def throughput(frames: int, rounds: int) -> dict[str, float]:
    path = yolo_path()
    x = np.random.default_rng(0).random((1, 3, 320, 320), dtype=np.float32)
    ort1, ort2 = plain(path, 1), plain(path, 2)
    sess = InferenceSession(path)

    def async_mode(n):
        done = threading.Semaphore(0)
        for _ in range(n):
            sess.run_async(None, [x], lambda r, u, e: done.release())
        for _ in range(n):
            done.acquire()

    def raw_threads(n):
        """Two plain threads, each looping onnxruntime run: the machine's practical ceiling."""
        threads = [
            threading.Thread(target=lambda: [ort1.run(None, {"images": x}) for _ in range(n // 2)])
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def pipeline(n):
        for _ in range(n):
            sess.run_pipeline([x])
        sess.drain_pipeline()

    contenders = {
        "onnxruntime run, 1 thread": lambda n: [ort1.run(None, {"images": x}) for _ in range(n)],
        "onnxruntime run, 2 threads": lambda n: [ort2.run(None, {"images": x}) for _ in range(n)],
        "2 plain threads x ORT 1 thread": raw_threads,
        "ours run": lambda n: [sess.run(None, [x]) for _ in range(n)],
        "ours run_async": async_mode,
        "ours run_pipeline": pipeline,
    }
    for fn in contenders.values():  # warm-up
        fn(4)
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            samples[name].append(fps(fn, frames))
    sess.close()
    return {name: statistics.median(values) for name, values in samples.items()}


def overhead(blocks: int = 30, calls: int = 500) -> tuple[float, float]:
    model = add_mul_model()
    a = np.ones((1, 4), np.float32)
    ref = plain(model, 1)
    sess = InferenceSession(model)
    feed = {"a": a, "b": a}
    ours, theirs = [], []
    for _ in range(blocks):
        start = time.perf_counter()
        for _ in range(calls):
            ref.run(None, feed)
        theirs.append((time.perf_counter() - start) / calls)
        start = time.perf_counter()
        for _ in range(calls):
            sess.run(None, feed)
        ours.append((time.perf_counter() - start) / calls)
    sess.close()
    return statistics.median(theirs) * 1e6, statistics.median(ours) * 1e6


def engine_alone(tasks: int = 20000) -> tuple[float, float]:
    """µs per task of the engine itself: a runner that does nothing, ``run`` and ``run_async``."""
    engine, _ = make_engine(2, echo, max_queue_size=8)
    start = time.perf_counter()
    for value in range(tasks):
        engine.run_inline([value], (0,))
    inline = (time.perf_counter() - start) / tasks
    done = threading.Semaphore(0)
    start = time.perf_counter()
    for value in range(tasks):
        engine.submit_callback([value], (0,), lambda r, u, e: done.release(), None)
    for _ in range(tasks):
        done.acquire()
    callbacks = (time.perf_counter() - start) / tasks
    engine.close()
    return inline * 1e6, callbacks * 1e6


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def memory(runs: int = 100_000) -> tuple[int, int]:
    model = add_mul_model()
    a = np.ones((1, 4), np.float32)
    with InferenceSession(model) as sess:
        for _ in range(5000):
            sess.run(None, [a, a])
        before = rss_kib()
        for i in range(runs):
            sess.run(None, [a, a]) if i % 2 else sess.submit(None, [a, a]).result()
        return before, rss_kib()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results = throughput(args.frames, args.rounds)
    base1 = results["onnxruntime run, 1 thread"]
    best = max(base1, results["onnxruntime run, 2 threads"])
    cpus = os.cpu_count()
    print(f"YOLOv8n 320, {args.frames} frames x {args.rounds} rounds (median fps), {cpus} CPUs")
    print(f"{'contender':30} {'fps':>8} {'vs ORT 1 thread':>16} {'vs best ORT':>12}")
    for name, value in results.items():
        print(f"{name:30} {value:8.1f} {value / base1:15.2f}x {value / best:11.2f}x")
    theirs, ours = overhead()
    print(
        f"\nper-call run() on a tiny model: onnxruntime {theirs:.1f} us, ours {ours:.1f} us, "
        f"overhead {ours - theirs:.1f} us (median)"
    )
    inline, callbacks = engine_alone()
    print(f"engine alone (no-op runner): run {inline:.1f} us, run_async {callbacks:.1f} us a task")
    before, after = memory()
    print(f"RSS over 100,000 runs: {before} KiB -> {after} KiB ({after - before:+d} KiB)")


if __name__ == "__main__":
    main()
