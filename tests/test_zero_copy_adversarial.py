"""Adversarial zero-copy lifetimes on the emulated NPU: buffers freed under failures, collections
and closes from every thread, and the bugs they found (each test named after its bug).

The ``npu`` fixture fails a test whose emulator saw a rule violation (double free, use after free,
a context destroyed with mems) or still holds a context or a mem afterwards."""

from __future__ import annotations

import gc
import os
import random
import threading
from typing import Any

import numpy as np
import pytest

from ez_rknn_async import InferenceSession, OrtValue, SessionClosedError, ValueReleasedError
from ez_rknn_async.backends.rknn.abi import TensorFormat
from ez_rknn_async.backends.rknn.context import Context
from ez_rknn_async.backends.rknn.library import RKNNError
from ez_rknn_async.backends.rknn.memory import NativeLayout, RknnBuffer

from fakes import wait_for
from rknn_emu import EmuModel, EmuTensor

pytest_plugins = ("rknn_fixtures",)

MODEL = EmuModel(
    inputs=[EmuTensor("image", "uint8", (1, 6, 5, 3)), EmuTensor("vec", "float16", (2, 7))],
    outputs=[EmuTensor("score", "int8", (1, 12), scale=0.5)],
    gain=0.01,
)
IMAGE = np.arange(90, dtype=np.uint8).reshape(1, 3, 6, 5)
VEC = np.ones((2, 7), np.float16)
THREE_CORES = {"schedule": [0, 1, 2], "max_queue_size": 64}


def image_value(sess: InferenceSession) -> Any:
    return OrtValue.ortvalue_from_numpy(
        IMAGE, "rknpu2", session=sess, name="image", io_kind="input"
    )


def complete(sess: InferenceSession) -> Any:
    binding = sess.io_binding()
    binding.bind_cpu_input("image", IMAGE)
    binding.bind_cpu_input("vec", VEC)
    binding.bind_output("score")
    return binding


def finishes(fn: Any, seconds: float = 5.0) -> bool:
    """Run ``fn`` on a daemon thread; False if it is still running after ``seconds``."""
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive()


class _CollectingLock:
    """A lock that runs a garbage collection once acquired, as any allocation made while holding
    it may (a list, a ctypes argument...)."""

    def __init__(self, lock: Any) -> None:
        self._lock = lock

    def __enter__(self) -> _CollectingLock:
        self._lock.__enter__()
        gc.collect()
        return self

    def __exit__(self, *exc_info: Any) -> Any:
        return self._lock.__exit__(*exc_info)


class _Cycle:
    """Garbage only the cycle collector frees (a frame and its traceback, a user's object)."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.me = self


# -- bugs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("lock", ["tracker", "memory_context", "context_tree"])
def test_a_value_collected_while_its_lock_is_held_deadlocks(npu, monkeypatch, lock):
    """A DeviceValue in a reference cycle is freed by whichever thread the collector runs on,
    at any allocation: also one made while that thread holds the buffer tracker's lock
    (``release_all``), the memory context's lock (an allocation, a sync) or the context tree's
    lock. Freeing takes the same lock: with a plain Lock the thread waited on itself forever."""
    sess = InferenceSession(MODEL.data(), provider_options={"schedule": [0]})
    kept = image_value(sess)
    gc.collect()
    gc.disable()
    try:
        _Cycle(image_value(sess))  # unreachable, left for the collector
        if lock == "tracker":
            tracker = sess._backend.buffers
            monkeypatch.setattr(tracker, "_lock", _CollectingLock(tracker._lock))
            action = sess.close
        elif lock == "memory_context":
            context = kept._buffer._context
            monkeypatch.setattr(context, "lock", _CollectingLock(context.lock))
            action = kept.numpy
        else:
            monkeypatch.setattr(Context, "_tree_lock", _CollectingLock(Context._tree_lock))
            action = lambda: image_value(sess).release()  # noqa: E731
        assert finishes(action), "deadlocked: the collector's free waited on its own thread"
    finally:
        gc.enable()
        monkeypatch.undo()
    sess.close()
    assert sess._backend.buffers.live == 0


def test_a_failed_zero_fill_leaks_the_new_mem_until_close(npu):
    """``allocate`` made the mem, then its zero-fill sync failed: nobody owned the buffer, so it
    stayed allocated until the session closed (one leaked mem per failed allocation)."""
    with InferenceSession(MODEL.data()) as sess:
        tracker = sess._backend.buffers
        npu.inject("rknn_mem_sync", -1, 1)
        with pytest.raises(RKNNError, match="rknn_mem_sync"):
            OrtValue.ortvalue_from_shape_and_type(
                [1, 12], np.int8, "rknpu2", session=sess, name="score", io_kind="output"
            )
        assert tracker.live == 0 and tracker.allocated == tracker.freed == 1
        assert npu.live_mems == 0


def test_a_failed_destroy_mem_at_close_leaks_the_rest_and_destroys_a_context_with_mems(
    npu, monkeypatch
):
    """One ``rknn_destroy_mem`` failing in ``session.close()``: ``release_all`` stopped at it
    (the other mems and every context stayed alive), and the failed mem still dropped its hold
    on the memory context, which was then destroyed with a live mem (a runtime violation)."""
    failed: list[RknnBuffer] = []
    free = RknnBuffer._free

    def spy(buffer: RknnBuffer) -> None:
        try:
            free(buffer)
        except RKNNError:
            failed.append(buffer)
            raise

    monkeypatch.setattr(RknnBuffer, "_free", spy)
    sess = InferenceSession(MODEL.data(), provider_options=THREE_CORES)
    values = [image_value(sess) for _ in range(3)]
    sess.run_with_iobinding(complete(sess))  # binding contexts too
    npu.inject("rknn_destroy_mem", -1, 1)
    with pytest.raises(RKNNError, match="rknn_destroy_mem"):
        sess.close()
    assert len(failed) == 1 and npu.live_mems == 1  # the other four were freed
    assert npu.violations == 0
    assert npu.live_contexts == 1  # the first context (the memory context), kept by its mem
    # The runtime recovers: the mem goes, then the contexts it held.
    (buffer,) = failed
    context = buffer._context
    assert context.lib.rknn_destroy_mem(context.handle, buffer.mem) == 0
    context.drop()
    assert npu.live_contexts == 0
    for value in values:
        assert not value._buffer._pins


# -- risks that held -------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["rknn_run", "rknn_set_io_mem"])
def test_a_failed_binding_run_unpins_and_the_binding_runs_again(npu, api):
    with InferenceSession(MODEL.data(), provider_options=THREE_CORES) as sess:
        value = image_value(sess)
        binding = complete(sess)
        binding.bind_ortvalue_input("image", value)
        want = sess.run(None, {"image": IMAGE, "vec": VEC})[0]
        npu.inject(api, -1, 2)
        with pytest.raises(RKNNError, match=api):
            sess.run_with_iobinding(binding)
        with pytest.raises(RKNNError, match=api):
            sess.submit(None, binding).result(10)
        assert value._buffer._pins == 0
        (score,) = sess.submit(None, binding).result(10)
        np.testing.assert_array_equal(score.numpy().astype(np.float32) * 0.5, want)
        value.release()
        binding.close()
        assert npu.live_mems == 0 and npu.violations == 0


def pinned(value: OrtValue):
    """A predicate: a run has pinned the value's buffer (it may be released under it now)."""
    buffer = value._buffer
    return lambda: buffer._pins > 0


def test_values_released_and_collected_mid_run_free_after_it(npu):
    npu.use("rk3588", compute_us=20000)
    with InferenceSession(MODEL.data(), provider_options=THREE_CORES) as sess:
        value = image_value(sess)
        binding = complete(sess)
        binding.bind_ortvalue_input("image", value)
        busy = [sess.submit(None, complete(sess)) for _ in range(2)]  # the other cores
        future = sess.submit(None, binding)
        assert wait_for(pinned(value))  # the run holds it now
        value.release()
        binding.close()  # frees its own output after the run
        del value
        gc.collect()
        (score,) = future.result(10)
        with pytest.raises(ValueReleasedError, match="released"):
            score.numpy()
        for other in busy:
            other.result(10)
        assert npu.violations == 0


def test_stress_random_releases_across_three_cores(npu):
    npu.use("rk3588", compute_us=300)
    rng = random.Random(5)
    with InferenceSession(MODEL.data(), provider_options=THREE_CORES) as sess:
        for _ in range(15):
            bindings, values = [], []
            for _ in range(6):
                binding = sess.io_binding()
                image = image_value(sess)
                score = OrtValue.ortvalue_from_shape_and_type(
                    [1, 12], np.int8, "rknpu2", session=sess, name="score", io_kind="output"
                )
                binding.bind_ortvalue_input("image", image)
                binding.bind_cpu_input("vec", VEC)
                binding.bind_ortvalue_output("score", score)
                bindings.append(binding)
                values += [image, score]
            futures = [sess.submit(None, b) for b in bindings]
            for thing in values + bindings:
                if rng.random() < 0.3:
                    thing.release() if isinstance(thing, OrtValue) else thing.close()
            del values
            gc.collect()
            for future in futures:
                try:
                    future.result(10)
                except ValueReleasedError as exc:
                    assert "released" in str(exc)
    assert npu.violations == 0


@pytest.mark.parametrize("where", ["done_callback", "run_async_callback"])
def test_close_from_a_worker_or_callback_thread_with_bindings_in_flight(npu, where):
    npu.use("rk3588", compute_us=3000)
    sess = InferenceSession(MODEL.data(), provider_options=THREE_CORES)
    bindings = [complete(sess) for _ in range(8)]
    closed = threading.Event()
    seen: list = []

    def close(results: Any = None, user_data: Any = 0, err: str = "") -> None:
        if user_data == 0 and not closed.is_set():
            if isinstance(results, list):
                seen.append([v.numpy() for v in results])
            sess.close()
            closed.set()

    if where == "done_callback":
        futures = [sess.submit(None, b) for b in bindings]
        futures[0].add_done_callback(close)
    else:
        for i, binding in enumerate(bindings):
            sess.run_async(None, binding, close, i)
    assert closed.wait(10)
    with pytest.raises(SessionClosedError):
        bindings[1].get_outputs()
    assert npu.live_mems == 0


def test_close_while_other_threads_read_values(npu):
    sess = InferenceSession(MODEL.data(), provider_options=THREE_CORES)
    values = [image_value(sess) for _ in range(20)]
    stop = threading.Event()
    reading = threading.Barrier(4)  # three readers, each through every value once, and us

    def read() -> None:
        first = True
        while True:
            for value in values:
                try:
                    np.testing.assert_array_equal(value.numpy(), IMAGE)
                except (SessionClosedError, ValueReleasedError):
                    if stop.is_set():
                        return
            if first:
                first = False
                reading.wait(10)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    reading.wait(10)
    sess.close()
    stop.set()
    for reader in readers:
        reader.join(5)
    assert npu.live_mems == 0


def test_fds_closed_by_the_caller_right_after_an_unaligned_import(npu):
    open_fds = len(os.listdir("/proc/self/fd"))
    with InferenceSession(MODEL.data(), provider_options={"layout": "nhwc"}) as sess:
        fd = os.memfd_create("frame")
        os.ftruncate(fd, 8192)
        value = OrtValue.ortvalue_from_dmabuf(
            fd, [1, 6, 5, 3], np.uint8, size=288, offset=4003, session=sess, name="image",
            io_kind="input",
        )  # fmt: skip
        os.close(fd)
        frame = np.arange(90, dtype=np.uint8).reshape(1, 6, 5, 3)
        value.update_inplace(frame)
        np.testing.assert_array_equal(value.numpy(), frame)
        binding = sess.io_binding()
        binding.bind_ortvalue_input("image", value)
        binding.bind_cpu_input("vec", VEC)
        binding.bind_output("score")
        (score,) = sess.submit(None, binding).result(10)
        want = sess.run(None, {"image": frame, "vec": VEC})[0]
        np.testing.assert_array_equal(score.numpy().astype(np.float32) * 0.5, want)
    assert len(os.listdir("/proc/self/fd")) == open_fds


@pytest.mark.parametrize("dtype, c2", [("int8", 16), ("float16", 8), ("float32", 4)])
@pytest.mark.parametrize("channels, width", [(1, 1), (3, 5), (17, 7), (8, 16), (33, 3)])
def test_nc1hwc2_and_strided_nhwc_round_trips(dtype, c2, channels, width):
    rng = np.random.default_rng(channels * 100 + width)
    n, h = 2, 3
    logical = rng.integers(-100, 100, (n, channels, h, width)).astype(dtype)
    c1 = -(-channels // c2)
    blocked = NativeLayout(
        TensorFormat.NC1HWC2, (n, c1, h, width, c2), np.dtype(dtype), 0, channels
    )
    stride = -(-width // 16) * 16
    strided = NativeLayout(TensorFormat.NHWC, (n, h, width, channels), np.dtype(dtype), stride)
    for layout in (blocked, strided):
        raw = np.full(layout.size + 7, 0xA5, np.uint8)  # garbage in padding, spare tail
        layout.write(raw, logical)
        np.testing.assert_array_equal(layout.read(raw), logical)
        assert (raw[layout.size :] == 0xA5).all()
    raw = np.zeros(blocked.size, np.uint8)
    blocked.write(raw, logical)
    view = raw.view(dtype).reshape(n, c1, h, width, c2)
    for c in (0, channels - 1):
        np.testing.assert_array_equal(view[:, c // c2, :, :, c % c2], logical[:, c])
