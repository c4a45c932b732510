"""Threads around an RKNN inference in flight: the GIL is free, the first context is idle.

A run is stopped inside the emulated ``rknn_run`` (``Npu.block_runs``) and the test synchronises
on that event (``Npu.wait_blocked``), then releases it; no sleeps. A run the test never released
would go on after 30 s with an emulator violation, so a regression fails instead of hanging.
"""

from __future__ import annotations

import threading

import numpy as np

from ez_rknn_async import InferenceSession, OrtValue, make_provider_options

from rknn_emu import EmuModel, EmuTensor, reference

pytest_plugins = ("rknn_fixtures",)

MODEL = EmuModel(
    inputs=[EmuTensor("image", "int8", (1, 4, 4, 3), zp=1, scale=0.05)],
    outputs=[EmuTensor("mask", "int8", (1, 2, 4, 4), scale=0.1)],
    gain=0.5,
)
FRAME = np.random.default_rng(0).uniform(-3, 3, (1, 3, 4, 4)).astype(np.float32)


def test_rknn_run_releases_the_gil(npu):
    """While one thread is inside rknn_run, another Python thread runs bytecode (ctypes drops
    the GIL around a CDLL call); then the run completes with its result."""
    results = []
    with InferenceSession(MODEL.data()) as sess:
        npu.block_runs(1)
        runner = threading.Thread(target=lambda: results.append(sess.run(None, [FRAME])))
        runner.start()
        ticked = threading.Event()
        try:
            assert npu.wait_blocked(1, timeout=10) == 1
            ticker = threading.Thread(target=lambda: (sum(range(10_000)), ticked.set()))
            ticker.start()
            assert ticked.wait(10), "no other Python thread ran during rknn_run"
            ticker.join(10)
            assert npu.wait_blocked(1, timeout=0) == 1 and not results  # still in flight
        finally:
            npu.release_runs()
            runner.join(10)
        assert not runner.is_alive()
        np.testing.assert_array_equal(results[0][0], reference(MODEL, [FRAME])[0])


def test_allocations_never_wait_behind_inferences(npu):
    """Every runner is inside rknn_run; the session's first tensor mem (made on the first
    context, which no runner uses) and a zero-copy value's write complete meanwhile."""
    options = make_provider_options(schedule=[0, 1, 2])
    with InferenceSession(MODEL.data(), provider_options=options) as sess:
        npu.block_runs(3)
        futures = [sess.submit(None, [FRAME]) for _ in range(3)]
        allocated = threading.Event()
        values = []

        def allocate():
            values.append(
                OrtValue.ortvalue_from_numpy(
                    np.ones((1, 3, 4, 4), np.int8),
                    "rknpu2",
                    session=sess,
                    name="image",
                    io_kind="input",
                )
            )
            allocated.set()

        user = threading.Thread(target=allocate)
        try:
            assert npu.wait_blocked(3, timeout=10) == 3
            user.start()
            assert allocated.wait(10), "an allocation waited behind the inferences"
            assert npu.wait_blocked(3, timeout=0) == 3  # all three still in flight
        finally:
            npu.release_runs()
            user.join(10)
        want = reference(MODEL, [FRAME])[0]
        for future in futures:
            np.testing.assert_array_equal(future.result(timeout=10)[0], want)
        np.testing.assert_array_equal(values[0].numpy(), np.ones((1, 3, 4, 4), np.int8))
