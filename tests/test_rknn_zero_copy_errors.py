"""Zero-copy misuse on the emulated NPU: each mistake is a clear error before it reaches the
runtime, and the emulator (which counts double frees, use after free, undersized mems, mems
outliving their context) sees no violation."""

from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest

from ez_rknn_async import (
    BindingClosedError,
    InferenceSession,
    OrtValue,
    SessionClosedError,
    ValueReleasedError,
    ZeroCopyUnavailableError,
    make_provider_options,
)
from ez_rknn_async.backends.rknn.abi import CONTEXT_TYPE, Query, RknnTensorAttr
from ez_rknn_async.backends.rknn.library import load_library

from rknn_emu import EmuModel, EmuTensor

pytest_plugins = ("rknn_fixtures",)

MODEL = EmuModel(
    inputs=[EmuTensor("image", "uint8", (1, 6, 5, 3)), EmuTensor("vec", "float16", (2, 7))],
    outputs=[EmuTensor("score", "int8", (1, 12), scale=0.5)],
    gain=0.01,
)
IMAGE = np.zeros((1, 3, 6, 5), np.uint8)
VEC = np.ones((2, 7), np.float16)


@pytest.fixture
def sess(npu):
    with InferenceSession(MODEL.data(), provider_options={"schedule": [0, 1, 2]}) as session:
        yield session
    assert npu.live_mems == 0


def complete(binding):
    binding.bind_cpu_input("image", IMAGE)
    binding.bind_cpu_input("vec", VEC)
    binding.bind_output("score")
    return binding


def image_value(sess, array=IMAGE):
    return OrtValue.ortvalue_from_numpy(
        array, "rknpu2", session=sess, name="image", io_kind="input"
    )


@pytest.mark.parametrize(
    "make, error, message",
    [
        (
            lambda s: image_value(s, IMAGE.astype(np.float32)),
            TypeError,
            r"input 'image': expected dtype uint8",
        ),
        (
            lambda s: image_value(s, np.zeros((1, 6, 5, 3), np.uint8)),
            ValueError,
            r"input 'image': expected shape \[1, 3, 6, 5\], got \[1, 6, 5, 3\]",
        ),
        (
            lambda s: OrtValue.ortvalue_from_shape_and_type(
                [1, 12], np.float32, "rknpu2", session=s, name="score", io_kind="output"
            ),
            TypeError,
            r"output 'score': expected dtype int8",
        ),
    ],
)
def test_wrong_shape_or_dtype_is_refused(sess, make, error, message):
    with pytest.raises(error, match=message):
        make(sess)


def test_a_generic_buffer_does_not_fit_a_padded_native_layout(sess):
    generic = OrtValue.ortvalue_from_shape_and_type([1, 3, 6, 5], np.uint8, "rknpu2", session=sess)
    dense_ok = OrtValue.ortvalue_from_shape_and_type([2, 7], np.float16, "rknpu2", session=sess)
    with sess.io_binding() as binding:
        with pytest.raises(ValueError, match=r"input 'image' native zero-copy layout mismatch: "):
            binding.bind_ortvalue_input("image", generic)
        complete(binding).bind_ortvalue_input("vec", dense_ok)  # 2-D: dense natively
        dense_ok.update_inplace(VEC)
        sess.run_with_iobinding(binding)
        assert binding.copy_outputs_to_cpu()[0].dtype == np.int8


def test_a_dmabuf_too_small_or_past_its_fd_is_refused(sess):
    fd = os.memfd_create("frame")
    os.ftruncate(fd, 100)
    try:
        for size, message in (
            (90, "smaller than the 288 bytes input 'image' needs"),
            (288, "past its end"),
        ):
            with pytest.raises(ValueError, match=message):
                OrtValue.ortvalue_from_dmabuf(
                    fd,
                    [1, 3, 6, 5],
                    np.uint8,
                    size=size,
                    session=sess,
                    name="image",
                    io_kind="input",
                )
    finally:
        os.close(fd)


def test_a_value_released_while_bound_fails_the_run_clearly(sess, npu):
    value = image_value(sess)
    with sess.io_binding() as binding:
        complete(binding).bind_ortvalue_input("image", value)
        sess.run_with_iobinding(binding)
        value.release()
        with pytest.raises(ValueReleasedError, match="input 'image' is bound to an OrtValue"):
            sess.submit(None, binding)
        binding.bind_cpu_input("image", IMAGE)
        sess.submit(None, binding).result(10)  # the dup context was re-set: no stale mem
    assert npu.violations == 0


def test_foreign_and_closed_bindings_are_refused(sess, npu):
    with InferenceSession(MODEL.data()) as other:
        foreign = complete(other.io_binding())
        with pytest.raises(ValueError, match="the IOBinding belongs to a different session"):
            sess.run_with_iobinding(foreign)
        with pytest.raises(ValueError, match="the OrtValue belongs to a different session"):
            sess.io_binding().bind_ortvalue_input("image", image_value(other))
        foreign.close()
    binding = complete(sess.io_binding())
    binding.close()
    with pytest.raises(BindingClosedError, match="the IOBinding is closed"):
        sess.submit(None, binding)


def test_after_close_everything_raises_and_nothing_leaks(npu):
    sess = InferenceSession(MODEL.data())
    value = image_value(sess)
    binding = complete(sess.io_binding())
    sess.run_with_iobinding(binding)
    sess.close()
    assert npu.live_mems == 0 and npu.live_contexts == 0
    for call in (value.numpy, lambda: sess.run_with_iobinding(binding), binding.get_outputs):
        with pytest.raises(SessionClosedError):
            call()
    value.release()
    binding.close()


def test_contexts_from_separate_inits_refuse_zero_copy(npu):
    options = make_provider_options(disable_dup_context=True)
    needs_dup = pytest.raises(ZeroCopyUnavailableError, match="zero copy needs rknn_dup_context")
    with InferenceSession(MODEL.data(), provider_options=options) as sess, needs_dup:
        image_value(sess)


def test_zero_copy_only_runtime_runs_bindings_on_the_first_context(npu, monkeypatch):
    """RV1106's librknnmrt has no rknn_inputs_set: binding runs share the workers' contexts."""
    monkeypatch.setenv("EZ_RKNN_RUNTIME_LIB", str(npu.paths.zero_copy_only))
    npu.use("rv1106")
    with InferenceSession(MODEL.data()) as sess, complete(sess.io_binding()) as binding:
        sess.run_with_iobinding(binding)
        assert binding.copy_outputs_to_cpu()[0].shape == (1, 12)


def test_the_emulator_counts_every_mem_rule_broken(npu):
    """The rules the backend relies on are enforced: each breach below is one violation."""
    lib = load_library()
    model = MODEL.data()
    origin, dup, other = CONTEXT_TYPE(), CONTEXT_TYPE(), CONTEXT_TYPE()
    assert lib.rknn_init(ctypes.byref(origin), model, len(model), 0, None) == 0
    assert lib.rknn_dup_context(ctypes.byref(origin), ctypes.byref(dup)) == 0
    assert lib.rknn_init(ctypes.byref(other), model, len(model), 0, None) == 0
    attr = RknnTensorAttr()
    size = ctypes.sizeof(attr)
    assert lib.rknn_query(origin.value, Query.NATIVE_NHWC_INPUT_ATTR, ctypes.byref(attr), size) == 0
    assert (attr.w_stride, attr.size_with_stride) == (16, 288)
    small = lib.rknn_create_mem(origin.value, attr.size)
    mem = lib.rknn_create_mem(origin.value, attr.size_with_stride)
    breaches = [
        lambda: lib.rknn_set_io_mem(dup.value, small, ctypes.byref(attr)),  # size < with stride
        lambda: lib.rknn_set_io_mem(other.value, mem, ctypes.byref(attr)),  # another rknn_init
        lambda: lib.rknn_run(dup.value, None),  # zero copy, tensors without a mem
        lambda: lib.rknn_inputs_set(dup.value, 0, None),  # a zero-copy context copies
        lambda: lib.rknn_destroy_mem(dup.value, mem),  # not the context that made it
        lambda: lib.rknn_destroy(origin.value),  # mems still alive (and a dup)
    ]
    assert lib.rknn_set_io_mem(dup.value, mem, ctypes.byref(attr)) == 0
    for count, breach in enumerate(breaches, 1):
        assert breach() != 0
        assert npu.violations == count, npu.last_violation
    assert lib.rknn_destroy_mem(origin.value, mem) == 0
    assert lib.rknn_destroy_mem(origin.value, mem) != 0  # double free
    assert "freed twice" in npu.last_violation
    assert lib.rknn_run(dup.value, None) != 0  # the destroyed mem is still set on dup
    assert "use after free" in npu.last_violation
    npu.expected_violations = len(breaches) + 2
    assert lib.rknn_destroy_mem(origin.value, small) == 0
    for context in (dup, other, origin):
        assert lib.rknn_destroy(context.value) == 0
