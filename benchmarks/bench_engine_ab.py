"""The engine's per-task cost, this checkout against another revision, side by side in one run.

    .venv/bin/python benchmarks/bench_engine_ab.py REV [--rounds 7] [--tasks 20000]

``REV`` (a commit, e.g. ``main``) is exported with ``git archive`` to a temporary directory. Each
round runs, in a fresh subprocess per tree and alternating which goes first, the engine alone with
a runner that does nothing (``tests/fakes.py``): µs per ``run`` (inline on the caller's thread)
and per ``run_async`` task (queued, a worker, the callback thread). Reports the median of the
rounds per tree and the ratio this/REV (< 1: this checkout is cheaper).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import json, sys, threading, time
sys.path[:0] = [{src!r}, {tests!r}]
from fakes import echo, make_engine
tasks = {tasks}
engine, _ = make_engine(2, echo, max_queue_size=8)
for value in range(2000):
    engine.run_inline([value], (0,))
start = time.perf_counter()
for value in range(tasks):
    engine.run_inline([value], (0,))
inline = (time.perf_counter() - start) / tasks
done = threading.Semaphore(0)
release = lambda r, u, e: done.release()
start = time.perf_counter()
for value in range(tasks):
    engine.submit_callback([value], (0,), release, None)
for _ in range(tasks):
    done.acquire()
callbacks = (time.perf_counter() - start) / tasks
engine.close()
print(json.dumps({{"run": inline * 1e6, "run_async": callbacks * 1e6}}))
"""


def probe(tree: Path, tasks: int) -> dict[str, float]:
    code = PROBE.format(src=str(tree / "src"), tests=str(tree / "tests"), tasks=tasks)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600
    )
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rev")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tasks", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.rev, "src", "tests"],
            capture_output=True,
            check=True,
        )
        subprocess.run(["tar", "-x", "-C", str(other)], input=archive.stdout, check=True)
        trees = {"this": ROOT, args.rev: other}
        figures: dict[str, dict[str, list[float]]] = {
            name: {"run": [], "run_async": []} for name in trees
        }
        for round_ in range(args.rounds):
            order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
            for name in order:
                for mode, value in probe(trees[name], args.tasks).items():
                    figures[name][mode].append(value)
    print(f"engine per-task cost, median of {args.rounds} interleaved rounds x {args.tasks} tasks")
    print(f"| mode | this µs | {args.rev} µs | this/{args.rev} |")
    print("|---|---:|---:|---:|")
    for mode in ("run", "run_async"):
        this = statistics.median(figures["this"][mode])
        base = statistics.median(figures[args.rev][mode])
        print(f"| {mode} | {this:.2f} | {base:.2f} | {this / base:.2f}x |")


if __name__ == "__main__":
    main()
