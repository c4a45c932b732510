"""Zero copy on the emulated librknn3_api: values in the tensors' native layout (NC1HWC2, own
types) bound through IOBinding, in every mode, equal the reference bit for bit on 2 devices."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from ez_rknn_async import InferenceSession, OrtValue

from rknn3_emu import Model3, Tensor3

pytest_plugins = ("rknn3_fixtures",)

MODEL = Model3(
    inputs=[Tensor3("image", "int8", (1, 20, 3, 5), -4, 0.03), Tensor3("vec", "float16", (2, 7))],
    outputs=[Tensor3("mask", "int8", (1, 6, 3, 5), 2, 0.2), Tensor3("score", "float32", (1, 9))],
    core_num=2,
    gain=0.5,
)


def to_native(tensor: Tensor3, real: np.ndarray) -> np.ndarray:
    """Independent of the backend: quantise, then NCHW -> NC1HWC2 with 16 bytes of lanes."""
    dtype = np.dtype(tensor.type)
    if dtype.kind == "f":
        values = real.astype(dtype)
    else:
        scale = np.float64(np.float32(tensor.scale))
        info = np.iinfo(dtype)
        values = np.clip(np.rint(real / scale) + tensor.zp, info.min, info.max).astype(dtype)
    if values.ndim != 4:
        return values
    n, c, h, w = values.shape
    c2 = 16 // dtype.itemsize
    c1 = -(-c // c2)
    padded = np.zeros((n, c1 * c2, h, w), dtype)
    padded[:, :c] = values
    return np.ascontiguousarray(padded.reshape(n, c1, c2, h, w).transpose(0, 1, 3, 4, 2))


def from_native(tensor: Tensor3, native: np.ndarray) -> np.ndarray:
    """NC1HWC2 -> NCHW (padding lanes dropped), dequantised to float32."""
    if native.ndim == 5:
        n, c1, h, w, c2 = native.shape
        native = native.transpose(0, 1, 4, 2, 3).reshape(n, c1 * c2, h, w)[:, : tensor.dims[1]]
    if native.dtype.kind == "f":
        return native.astype(np.float32)
    scale = np.float64(np.float32(tensor.scale))
    return ((native.astype(np.float64) - tensor.zp) * scale).astype(np.float32)


def assert_exact(values, feeds):
    for tensor, value, want in zip(MODEL.outputs, values, MODEL.reference(feeds)):
        np.testing.assert_array_equal(from_native(tensor, value.numpy()), want)


def test_native_values_in_every_binding_mode(npu3, tmp_path):
    feeds = MODEL.feeds(11)
    with InferenceSession(str(MODEL.write(tmp_path))) as sess:
        assert [a.shape for a in sess.get_native_inputs()] == [[1, 2, 3, 5, 16], [2, 7]]
        inputs = {
            t.name: OrtValue.ortvalue_from_numpy(
                to_native(t, f), "rknpu3", session=sess, name=t.name, io_kind="input"
            )
            for t, f in zip(MODEL.inputs, feeds)
        }
        assert inputs["image"].device_name() == "rknpu3"
        binding = sess.io_binding()
        for name, value in inputs.items():
            binding.bind_ortvalue_input(name, value)
        for arg in sess.get_native_outputs():
            binding.bind_output(arg.name)
        sess.run_with_iobinding(binding)
        assert_exact(binding.get_outputs(), feeds)
        assert_exact(sess.submit(None, binding).result(30), feeds)
        assert_exact(asyncio.run(sess.arun(None, binding)), feeds)
        done = threading.Event()
        got = {}
        sess.run_async(None, binding, lambda r, u, e: (got.update(r=r, e=e), done.set()))
        assert done.wait(30) and got["e"] == ""
        assert_exact(got["r"], feeds)
        binding.close()
        assert sess._backend.buffers.live == 2  # the two input values, still held here
    assert sess._backend.buffers.live == 0


def test_many_bindings_in_flight_over_both_devices(npu3, tmp_path):
    npu3.use(devices=2, cores=8, compute_us=2000)
    frames = [MODEL.feeds(seed) for seed in range(12)]
    with InferenceSession(str(MODEL.write(tmp_path)), None, None, {"max_queue_size": 12}) as s:
        bindings, futures = [], []
        for feeds in frames:
            binding = s.io_binding()
            for t, f in zip(MODEL.inputs, feeds):
                binding.bind_cpu_input(t.name, to_native(t, f))
            for arg in s.get_native_outputs():
                binding.bind_output(arg.name)
            bindings.append(binding)
            futures.append(s.submit(None, binding))
        for future, feeds in zip(futures, frames):
            assert_exact(future.result(30), feeds)
        for binding in bindings:
            binding.close()
    assert npu3.contexts_on(0) == 0 and npu3.max_parallel >= 2


def test_a_value_of_another_layout_is_refused(npu3_11, tmp_path):
    with InferenceSession(str(MODEL.write(tmp_path))) as sess:
        binding = sess.io_binding()
        logical = OrtValue.ortvalue_from_shape_and_type(
            [1, 20, 3, 5], np.int8, "rknpu3", session=sess
        )
        expected = r"input 'image': expected rank 5 \[1, 2, 3, 5, 16\], got rank 4 \[1, 20, 3, 5\]"
        with pytest.raises(ValueError, match=expected):
            binding.bind_ortvalue_input("image", logical)
        with pytest.raises(ValueError, match=expected):
            binding.bind_cpu_input("image", np.zeros((1, 20, 3, 5), np.int8))
        with pytest.raises(TypeError, match="int8"):
            binding.bind_cpu_input("image", np.zeros((1, 2, 3, 5, 16), np.float32))
        binding.close()
