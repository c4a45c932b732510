"""Dynamic-shape RKNPU3 models on the emulated librknn3_api: every exported shape runs bit-exact,
on any slot of either device, the shape is set only when it changes, other shapes are refused
before queuing, and zero copy is refused with a clear error."""

from __future__ import annotations

import numpy as np
import pytest

from ez_rknn_async import InferenceSession, OrtValue

from rknn3_emu import Model3, Tensor3

pytest_plugins = ("rknn3_fixtures",)

MODEL = Model3(
    inputs=[
        Tensor3("image", "int8", (1, 3, 4, 6), 1, 0.04, shapes=((1, 3, 8, 6), (1, 3, 2, 10))),
        Tensor3("vec", "float32", (2, 7)),
    ],
    outputs=[Tensor3("mask", "float16", (1, 5, 4, 6)), Tensor3("score", "int8", (1, 9), 0, 0.3)],
    core_num=4,
    gain=0.5,
)


def assert_exact(outputs, feeds):
    for got, want in zip(outputs, MODEL.reference(feeds)):
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_every_shape_runs_bit_exact_on_every_slot(npu3, tmp_path):
    with InferenceSession(str(MODEL.write(tmp_path))) as sess:
        assert sess.get_inputs()[0].shape == [1, 3, None, None]
        assert sess.get_inputs()[1].shape == [2, 7]
        assert sess.get_outputs()[0].shape == [1, 5, None, None]
        assert sess.get_native_inputs()[0].shape == [1, 1, None, None, 16]
        frames = [MODEL.feeds(seed, seed % 3) for seed in range(12)]
        for future, feeds in zip([sess.submit(None, f) for f in frames], frames):
            assert_exact(future.result(30), feeds)
        for feeds in frames[:3]:
            assert_exact(sess.run(None, feeds), feeds)


def test_the_shape_is_set_only_when_it_changes(npu3_11, tmp_path):
    with InferenceSession(str(MODEL.write(tmp_path)), None, None, {"schedule": [0]}) as sess:
        after_setup = npu3_11.calls("rknn3_set_shape")
        assert after_setup == 6  # 3 shapes described on the first context, 3 set up per slot
        for shape in (0, 0, 2, 2, 2, 1, 0):
            feeds = MODEL.feeds(shape, shape)
            assert_exact(sess.run(None, feeds), feeds)
        assert npu3_11.calls("rknn3_set_shape") - after_setup == 4  # 2 -> 0 -> 2 -> 1 -> 0


def test_another_shape_is_refused_before_queuing(npu3_11, tmp_path):
    with InferenceSession(str(MODEL.write(tmp_path))) as sess:
        feeds = [np.zeros((1, 3, 8, 10), np.float32), np.zeros((2, 7), np.float32)]
        runs = npu3_11.calls("rknn3_run")
        expected = r"image \[1, 3, 8, 10\], vec \[2, 7\] are not among .* image \[1, 3, 4, 6\]"
        with pytest.raises(ValueError, match=expected):
            sess.run(None, feeds)
        with pytest.raises(ValueError, match=expected):
            sess.submit(None, feeds)
        assert npu3_11.calls("rknn3_run") == runs
        assert_exact(sess.run(None, MODEL.feeds(3, 2)), MODEL.feeds(3, 2))


def test_zero_copy_is_refused_for_dynamic_models(npu3_11, tmp_path):
    with InferenceSession(str(MODEL.write(tmp_path))) as sess:
        with pytest.raises(ValueError, match="zero copy is not supported for dynamic-shape RKNPU3"):
            OrtValue.ortvalue_from_shape_and_type([2, 7], np.float32, "rknpu3", session=sess)
        binding = sess.io_binding()
        with pytest.raises(ValueError, match="zero copy is not supported"):
            binding.bind_cpu_input("vec", np.zeros((2, 7), np.float32))
        binding.close()
