"""Many threads on one real onnxruntime session, every calling mode at once: each frame's
result arrives exactly once, carries that frame's data, and comes in order where the mode
promises an order (run_async callbacks, run_pipeline)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from ez_rknn_async import InferenceSession, make_provider_options

FRAMES = 30  # per thread
TIMEOUT = 60
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def frame(tag: float, batch: int = 1) -> list[np.ndarray]:
    """a = tag, b = 1: sum = tag + 1 and prod = tag identify the frame in every output."""
    a = np.full((batch, 4), tag, np.float32)
    return [a, np.ones_like(a)]


def tag_of(outputs) -> float:
    total, product = (np.asarray(o) for o in outputs)
    tag = float(product[0, 0])
    assert np.all(product == tag) and np.all(total == tag + 1), "outputs mixed between frames"
    return tag


def test_every_mode_from_many_threads_delivers_each_frame_exactly_once(add_mul_path):
    options = make_provider_options(schedule=[0, 1, 2], max_queue_size=3, submit_timeout_ms=30000)
    seen: Counter = Counter()
    seen_lock = threading.Lock()
    callback_order: dict[int, list[int]] = {}
    callbacks_done = threading.Event()
    expected_callbacks = 2 * FRAMES

    def record(tag: float) -> None:
        with seen_lock:
            seen[tag] += 1

    with InferenceSession(add_mul_path, provider_options=options) as sess:

        def by_run(base: int) -> None:
            for k in range(FRAMES):
                record(tag_of(sess.run(None, frame(base + k))))

        def by_submit(base: int) -> None:
            futures = [sess.submit(None, frame(base + k)) for k in range(FRAMES)]
            for k, future in enumerate(futures):
                tag = tag_of(future.result(TIMEOUT))
                assert tag == base + k
                record(tag)

        def by_run_async(base: int) -> None:
            def callback(results, k, err):
                assert err == "", err
                record(tag_of(results))
                with seen_lock:
                    callback_order.setdefault(base, []).append(k)
                    if sum(len(v) for v in callback_order.values()) == expected_callbacks:
                        callbacks_done.set()

            for k in range(FRAMES):
                sess.run_async(None, frame(base + k), callback, k)

        def by_arun(base: int) -> None:
            async def main() -> list:
                return await asyncio.gather(
                    *(sess.arun(None, frame(base + k)) for k in range(FRAMES))
                )

            for k, outputs in enumerate(asyncio.run(main())):
                assert tag_of(outputs) == base + k
                record(base + k)

        def by_pipeline(base: int) -> None:
            returned = [sess.run_pipeline(frame(base + k), depth=3) for k in range(FRAMES)]
            assert returned[:3] == [None] * 3
            tags = [tag_of(out) for out in returned[3:] + sess.drain_pipeline()]
            assert tags == [base + k for k in range(FRAMES)]  # in submission order
            for tag in tags:
                record(tag)

        def by_dispatch_batch(base: int) -> None:
            for k in range(0, FRAMES, 3):
                tags = np.array([base + k + j for j in range(3)], np.float32)
                a = np.repeat(tags[:, None], 4, axis=1)
                total, product = sess.run(
                    None, [a, np.ones_like(a)], {"ztu_modelrt_dispatch_batch": 1}
                )
                np.testing.assert_array_equal(product, a)
                np.testing.assert_array_equal(total, a + 1)
                for tag in tags:
                    record(float(tag))

        def by_iobinding(base: int) -> None:
            binding = sess.io_binding()
            for k in range(FRAMES):
                a, b = frame(base + k)
                binding.bind_cpu_input("a", a)
                binding.bind_cpu_input("b", b)
                binding.bind_output("sum")
                binding.bind_output("prod")
                sess.run_with_iobinding(binding)
                tag = tag_of(binding.copy_outputs_to_cpu())
                assert tag == base + k
                record(tag)
            binding.close()

        workers: list[Callable[[int], None]] = [
            by_run,
            by_run,
            by_submit,
            by_run_async,
            by_run_async,
            by_arun,
            by_pipeline,
            by_dispatch_batch,
            by_iobinding,
        ]
        start = threading.Barrier(len(workers))
        errors: list[BaseException] = []

        def worker(index: int, body: Callable[[int], None]) -> None:
            try:
                start.wait(TIMEOUT)
                body(1000 * (index + 1))
            except BaseException as exc:  # re-raised on the test's thread
                errors.append(exc)

        threads = [
            threading.Thread(target=worker, args=(i, body)) for i, body in enumerate(workers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        assert not any(thread.is_alive() for thread in threads)
        if errors:
            raise errors[0]
        assert callbacks_done.wait(TIMEOUT)
        stats = sess.stats()

    want = Counter(float(1000 * (i + 1) + k) for i in range(len(workers)) for k in range(FRAMES))
    assert seen == want  # every frame once: nothing lost, nothing twice
    for order in callback_order.values():
        assert order == list(range(FRAMES))  # sequential callbacks keep each caller's order
    assert stats.queued == 0 and stats.running == 0


def test_a_failed_assertion_in_a_thread_fails_the_test(tmp_path):
    """filterwarnings = error: what a thread raises reaches pytest as a warning, so it fails."""
    test = tmp_path / "test_thread_assert.py"
    test.write_text(
        "import threading\n\n"
        "def check():\n"
        "    assert 1 == 2, 'wrong in a thread'\n\n"
        "def test_thread():\n"
        "    thread = threading.Thread(target=check)\n"
        "    thread.start()\n"
        "    thread.join()\n"
    )
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(PYPROJECT)]
    result = subprocess.run(
        [*command, "--rootdir", str(tmp_path), str(test)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout
    assert "wrong in a thread" in result.stdout and "1 failed" in result.stdout
