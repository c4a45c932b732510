"""Soak: many threads, every calling mode, sessions closed under load, for minutes.

    .venv/bin/python benchmarks/soak.py [--seconds 60] [--threads 8]

Producers hammer one session with ``run``, ``submit``, ``run_async`` and ``run_pipeline`` while a
closer replaces the session every few hundred milliseconds. Every result is checked against the
known answer (``a + b`` of a model the soak builds), every callback must arrive exactly once,
calls on a closed session must raise ``SessionClosedError`` and nothing else, and at the end no
engine thread may be left and RSS must be flat. Exits non-zero on any violation.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from collections import Counter

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from ez_rknn_async import InferenceSession, SessionClosedError, make_provider_options  # noqa: E402

from onnx_models import add_mul_model  # noqa: E402


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


class Soak:
    def __init__(self, model: bytes) -> None:
        self.model = model
        self.options = make_provider_options(max_queue_size=4, submit_timeout_ms=30000)
        self.session = InferenceSession(model, provider_options=self.options)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []
        self.pending: set[int] = set()
        self.next_token = 0

    def check(self, value: float, outputs) -> None:
        if float(outputs[0][0, 0]) != 2 * value:
            self.errors.append(f"wrong result for {value}: {outputs[0][0, 0]}")

    def callback(self, results, token, err) -> None:
        with self.lock:
            if token not in self.pending:
                self.errors.append(f"callback {token} delivered twice or never sent")
            self.pending.discard(token)
        if err:
            if "closed" not in err:
                self.errors.append(f"callback error: {err}")
            self.count("async-closed")
        else:
            self.check(token % 1000, results)
            self.count("async")

    def count(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    def producer(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            sess = self.session
            value = float(rng.randrange(1000))
            a = np.full((1, 4), value, np.float32)
            mode = rng.choice(("run", "submit", "async", "pipeline"))
            try:
                if mode == "run":
                    self.check(value, sess.run(["sum"], [a, a]))
                elif mode == "submit":
                    self.check(value, sess.submit(["sum"], [a, a]).result(60))
                elif mode == "async":
                    with self.lock:
                        token = self.next_token * 1000 + int(value)
                        self.next_token += 1
                        self.pending.add(token)
                    try:
                        sess.run_async(["sum"], [a, a], self.callback, token)
                    except BaseException:
                        with self.lock:
                            self.pending.discard(token)
                        raise
                    continue
                else:
                    sess.run_pipeline([a, a], depth=2)
                self.count(mode)
            except SessionClosedError:
                self.count("closed")
            except Exception as exc:  # noqa: BLE001 - any other error is a finding
                self.errors.append(f"{mode}: {type(exc).__name__}: {exc}")

    def closer(self) -> None:
        while not self.stop.wait(0.3):
            old = self.session
            self.session = InferenceSession(self.model, provider_options=self.options)
            old.close()
            self.count("sessions")

    def run(self, seconds: float, threads: int) -> int:
        workers = [threading.Thread(target=self.producer, args=(i,)) for i in range(threads)]
        workers.append(threading.Thread(target=self.closer))
        start_rss = rss_kib()
        for worker in workers:
            worker.start()
        time.sleep(seconds)
        self.stop.set()
        for worker in workers:
            worker.join(60)
        self.session.close()
        deadline = time.monotonic() + 10
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.01)
        left = [t.name for t in threading.enumerate() if t.name.startswith("EzRknn")]
        if self.pending:
            self.errors.append(f"{len(self.pending)} callbacks never delivered")
        if left:
            self.errors.append(f"engine threads left: {left}")
        if any(worker.is_alive() for worker in workers):
            self.errors.append("a producer hung")
        print(f"{seconds:.0f} s, {threads} producers: {dict(self.counts)}")
        print(f"RSS {start_rss} KiB -> {rss_kib()} KiB")
        for error in self.errors[:20]:
            print("ERROR", error)
        return 1 if self.errors else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    return Soak(add_mul_model()).run(args.seconds, args.threads)


if __name__ == "__main__":
    sys.exit(main())
