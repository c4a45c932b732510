"""Ctrl-C on the caller's thread at the worst points of an RKNN run costs only that call.

The emulator raises a real SIGINT inside a chosen api call (``Npu.raise_signal``); Python's
handler then raises KeyboardInterrupt as soon as the main thread runs bytecode again, e.g. right
after ``rknn_outputs_get`` returns. The runner's native sequence must still complete (or stop at a
failing call), so every later run on every slot works and the emulator sees no broken rule.
"""

from __future__ import annotations

import ctypes
import signal

import numpy as np
import pytest

from ez_rknn_async import InferenceSession, make_provider_options

from rknn_emu import EmuModel, EmuTensor, reference

pytest_plugins = ("rknn_fixtures",)

MODEL = EmuModel(
    inputs=[EmuTensor("image", "int8", (1, 4, 4, 3), zp=1, scale=0.05)],
    outputs=[EmuTensor("logits", "float16", (1, 6)), EmuTensor("mask", "int8", (1, 2, 4, 4))],
    gain=0.5,
)
SCHEDULE = make_provider_options(schedule=[0, 1, 2])


class _SignalStack(ctypes.Structure):
    """``stack_t`` of sigaltstack(2)."""

    _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]


_SS_DISABLE = 2


@pytest.fixture
def ctrl_c_raises():
    """Python's own SIGINT handler (KeyboardInterrupt), whatever the test runner installed, run
    on the thread's own stack. Why the latter: Python installs its handler with SA_ONSTACK, and
    OpenVINO's CPU plugin (2026.4, earlier tests of this process) can leave the main thread's
    alternate signal stack pointing at memory it freed: a signal then kills the process."""
    libc = ctypes.CDLL(None, use_errno=True)
    off, saved = _SignalStack(flags=_SS_DISABLE), _SignalStack()
    assert libc.sigaltstack(ctypes.byref(off), ctypes.byref(saved)) == 0
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
    libc.sigaltstack(ctypes.byref(saved), None)


def frames(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(count)
    return [rng.uniform(-3, 3, (1, 3, 4, 4)).astype(np.float32) for _ in range(count)]


def check(results, frame) -> None:
    for got, want in zip(results, reference(MODEL, [frame])):
        np.testing.assert_array_equal(got, want)


def assert_every_slot_works(npu, sess) -> None:
    """Three runs stopped inside rknn_run at once (so one on each worker, whatever the engine's
    choice), released and correct; then many tasks and sync runs, all correct."""
    before = [npu.core_runs(core) for core in range(3)]
    inputs = frames(30)
    npu.block_runs(3)
    futures = [sess.submit(None, [frame]) for frame in inputs[:3]]
    try:
        assert npu.wait_blocked(3, timeout=10) == 3
    finally:
        npu.release_runs()
    for future, frame in zip(futures, inputs):
        check(future.result(timeout=20), frame)
    assert all(npu.core_runs(core) > before[core] for core in range(3))
    futures = [sess.submit(None, [frame]) for frame in inputs[3:]]
    for future, frame in zip(futures, inputs[3:]):
        check(future.result(timeout=20), frame)
    for frame in inputs[:3]:
        check(sess.run(None, [frame]), frame)


@pytest.mark.parametrize(
    "api", ["rknn_inputs_set", "rknn_run", "rknn_outputs_get", "rknn_outputs_release"]
)
def test_ctrl_c_inside_a_copying_run(npu, ctrl_c_raises, api):
    with InferenceSession(MODEL.data(), provider_options=SCHEDULE) as sess:
        interrupted = 0
        for frame in frames(30):  # sync runs go round the three slots on this thread
            npu.raise_signal(api, signal.SIGINT, 1)
            try:
                sess.run(None, [frame])
            except KeyboardInterrupt:
                interrupted += 1
        assert interrupted == 30
        assert npu.calls("rknn_outputs_get") == npu.calls("rknn_outputs_release") == 30
        assert_every_slot_works(npu, sess)


@pytest.mark.parametrize("api", ["rknn_set_io_mem", "rknn_run"])
def test_ctrl_c_inside_a_zero_copy_run(npu, ctrl_c_raises, api):
    zeros = np.zeros((1, 3, 4, 4), np.int8)  # converted by the runtime like a copied input
    want = reference(MODEL, [zeros.astype(np.float32)])
    with InferenceSession(MODEL.data(), provider_options=SCHEDULE) as sess:
        binding = sess.io_binding()
        binding.bind_cpu_input("image", zeros)
        for arg in sess.get_outputs():
            binding.bind_output(arg.name)
        for _ in range(9):
            npu.raise_signal(api, signal.SIGINT, 1)
            with pytest.raises(KeyboardInterrupt):
                sess.run_with_iobinding(binding)
        sess.run_with_iobinding(binding)
        for got, expected in zip(binding.copy_outputs_to_cpu(), want):  # raw: zp 0, scale 1
            np.testing.assert_array_equal(got.astype(np.float32), expected)
        assert_every_slot_works(npu, sess)
