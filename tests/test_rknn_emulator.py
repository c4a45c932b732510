"""The emulated NPU enforces librknnrt's rules: a binding that breaks one is caught. Each test
breaks a rule on purpose through the raw binding and tells the fixture how many violations to
expect."""

from __future__ import annotations

import ctypes
import threading
import time

import numpy as np
import pytest

from ez_rknn_async import InferenceSession
from ez_rknn_async.backends.rknn import abi, library

from rknn_emu import EmuModel, EmuTensor

pytest_plugins = ("rknn_fixtures",)

MODEL = EmuModel([EmuTensor("x", "float32", (2, 3))], [EmuTensor("y", "float32", (2, 3))]).data()


@pytest.fixture
def raw(npu):
    """The binding and a fresh context on MODEL, destroyed (with its dups) at the end."""
    lib = library.load_library()
    handle = abi.CONTEXT_TYPE()
    assert lib.rknn_init(ctypes.byref(handle), MODEL, len(MODEL), 0, None) == 0
    contexts = [handle.value]
    yield lib, contexts
    for context in reversed(contexts):
        lib.rknn_destroy(context)


def set_inputs(lib, context, array, type_=abi.TensorType.FLOAT32, size=None):
    inputs = (abi.RknnInput * 1)()
    inputs[0].buf = array.ctypes.data
    inputs[0].size = array.nbytes if size is None else size
    inputs[0].type = type_
    inputs[0].fmt = abi.TensorFormat.UNDEFINED
    return lib.rknn_inputs_set(context, 1, inputs)


def get_outputs(lib, context):
    outputs = (abi.RknnOutput * 1)()
    outputs[0].want_float = 1
    return outputs, lib.rknn_outputs_get(context, 1, outputs, None)


def test_handles_do_not_fit_32_bits_so_truncation_is_caught(raw):
    _, contexts = raw
    assert contexts[0] > 2**32


def test_query_with_an_old_struct_size(npu, raw):
    lib, contexts = raw
    attr = abi.RknnTensorAttr()
    assert lib.rknn_query(contexts[0], abi.Query.INPUT_ATTR, ctypes.byref(attr), 372) == -5
    npu.expected_violations = 1
    assert "info_len(372)" in npu.last_violation


def test_input_buffer_of_the_wrong_size(npu, raw):
    lib, contexts = raw
    image = np.zeros((2, 3), np.uint8)  # 6 bytes, but type 0 (FLOAT32) needs 24
    assert set_inputs(lib, contexts[0], image, type_=abi.TensorType.FLOAT32) == -5
    npu.expected_violations = 1
    assert "param input size(6) != model input size(24)" in npu.last_violation


def test_outputs_must_be_released_before_the_next_get(npu, raw):
    lib, contexts = raw
    x = np.ones((2, 3), np.float32)
    assert set_inputs(lib, contexts[0], x) == 0 and lib.rknn_run(contexts[0], None) == 0
    first, code = get_outputs(lib, contexts[0])
    assert code == 0  # runtime-allocated buffer: readable until released
    values = ctypes.cast(first[0].buf, ctypes.POINTER(ctypes.c_float))
    assert np.ctypeslib.as_array(values, (6,)).tolist() == [1.0] * 6
    _, code = get_outputs(lib, contexts[0])
    assert code == -1
    assert lib.rknn_outputs_release(contexts[0], 1, first) == 0
    npu.expected_violations = 1


def test_one_context_used_by_two_threads(npu):
    npu.use("rk3588", compute_us=100_000)
    lib = library.load_library()
    handle = abi.CONTEXT_TYPE()
    assert lib.rknn_init(ctypes.byref(handle), MODEL, len(MODEL), 0, None) == 0
    assert set_inputs(lib, handle.value, np.ones((2, 3), np.float32)) == 0
    codes = []
    threads = [
        threading.Thread(target=lambda: codes.append(lib.rknn_run(handle.value, None)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(codes) == [-7, 0]
    assert lib.rknn_destroy(handle.value) == 0
    npu.expected_violations = 1
    assert "used by two threads at once" in npu.last_violation


def test_an_origin_destroyed_before_its_dups_is_tolerated_and_counted(npu, raw):
    """The original library destroys its first context before the dups (observed on this
    emulator) and works on boards: the dup keeps the model alive. Our binding never does it
    (the npu fixture checks the counter)."""
    lib, contexts = raw
    origin, dup = abi.CONTEXT_TYPE(contexts[0]), abi.CONTEXT_TYPE()
    assert lib.rknn_dup_context(ctypes.byref(origin), ctypes.byref(dup)) == 0
    assert lib.rknn_destroy(origin.value) == 0
    contexts[:] = [dup.value]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert set_inputs(lib, dup.value, x) == 0
    assert lib.rknn_run(dup.value, None) == 0
    outputs, code = get_outputs(lib, dup.value)
    assert code == 0
    np.testing.assert_array_equal(
        np.ctypeslib.as_array(ctypes.cast(outputs[0].buf, ctypes.POINTER(ctypes.c_float)), (2, 3)),
        x,
    )
    assert lib.rknn_outputs_release(dup.value, 1, outputs) == 0
    assert npu.early_destroys == 1
    npu.tolerate_early_destroys = True


def test_weight_owners_must_outlive_their_sharers(npu, raw):
    lib, contexts = raw
    sharer_model = EmuModel(
        [EmuTensor("x", "float32", (2, 3))], [EmuTensor("y", "float32", (2, 3))], gain=None
    ).data()
    extend = abi.RknnInitExtend()
    extend.ctx = contexts[0]
    sharer = abi.CONTEXT_TYPE()
    flag = abi.InitFlag.SHARE_WEIGHT_MEM
    assert (
        lib.rknn_init(
            ctypes.byref(sharer), sharer_model, len(sharer_model), flag, ctypes.byref(extend)
        )
        == 0
    )
    assert lib.rknn_destroy(contexts[0]) == -7
    contexts.append(sharer.value)  # the fixture then destroys the sharer first, the owner second
    npu.expected_violations = 1
    assert "still has 1 weight-sharer" in npu.last_violation


@pytest.mark.parametrize(
    ("soc", "mask", "code"), [("rk3566", 0, -13), ("rk3588", 5, -5), ("rk3576", 4, -5)]
)
def test_core_masks_the_soc_rejects(npu, soc, mask, code):
    npu.use(soc)
    lib = library.load_library()
    handle = abi.CONTEXT_TYPE()
    assert lib.rknn_init(ctypes.byref(handle), MODEL, len(MODEL), 0, None) == 0
    assert lib.rknn_set_core_mask(handle.value, mask) == code
    assert lib.rknn_destroy(handle.value) == 0
    npu.expected_violations = 1


def test_the_model_is_passed_as_bytes_not_as_a_path(npu):
    lib = library.load_library()
    handle = abi.CONTEXT_TYPE()
    assert lib.rknn_init(ctypes.byref(handle), b"/tmp/model.rknn\0", 0, 0, None) == -5
    npu.expected_violations = 1


def test_model_files_start_with_the_real_magic(npu):
    """Real .rknn files start with "RKNN" and the original library checks it before rknn_init;
    the emulator's files do too, and it refuses bytes without the magic like garbage (-6)."""
    assert MODEL.startswith(b"RKNN")
    lib = library.load_library()
    handle = abi.CONTEXT_TYPE()
    unmarked = MODEL.replace(b"RKNN ", b"", 1)
    assert lib.rknn_init(ctypes.byref(handle), unmarked, len(unmarked), 0, None) == -6
    assert npu.live_contexts == 0


# ---------------------------------------------------------------- failure modes for other tests


def test_a_delayed_run_takes_its_time(npu):
    """``set_run_delay``: "this rknn_run takes N seconds", for the next ``count`` runs only."""
    with InferenceSession(MODEL) as sess:
        x = np.ones((2, 3), np.float32)
        npu.set_run_delay(0.3, count=1)
        start = time.monotonic()
        np.testing.assert_array_equal(sess.run(None, [x])[0], x)
        assert time.monotonic() - start >= 0.3
        start = time.monotonic()
        sess.run(None, [x])
        assert time.monotonic() - start < 0.3  # the delay applied to one run only


def test_a_blocked_run_waits_for_its_release(npu):
    """``block_runs``: a run stops inside rknn_run, its core held, until the test releases it
    (events, no sleeps); a session pinned to another core goes on meanwhile."""
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    results = []
    pinned = {"schedule": [1]}
    with InferenceSession(MODEL) as sess, InferenceSession(MODEL, provider_options=pinned) as other:
        npu.block_runs(1)
        worker = threading.Thread(
            target=lambda: results.append(sess.run(None, [x])[0]), daemon=True
        )
        worker.start()
        try:
            assert npu.wait_blocked(1, timeout=10) == 1
            assert not results and worker.is_alive()
            np.testing.assert_array_equal(other.run(None, [x])[0], x)  # not blocked: count was 1
        finally:
            assert npu.release_runs() == 1
            worker.join(10)
        assert not worker.is_alive()
        np.testing.assert_array_equal(results[0], x)
    assert npu.wait_blocked(1, timeout=0) == 0
