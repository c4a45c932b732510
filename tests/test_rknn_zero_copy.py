"""Zero copy on the emulated NPU: binding runs equal the copying path bit for bit (float and int8
models, both zero_copy_layouts, both input layouts), fds imported from memfds, many bindings in
flight across 3 cores, every tensor mem destroyed once (the ``npu`` fixture checks the emulator)."""

from __future__ import annotations

import asyncio
import os
import threading

import numpy as np
import pytest

from ez_rknn_async import InferenceSession, OrtValue, make_provider_options
from ez_rknn_async.backends.rknn import zero_copy as zero_copy_module

from rknn_emu import EmuModel, EmuTensor

pytest_plugins = ("rknn_fixtures",)

#: Float model: a 5-wide image (native rows padded to 16 pixels), a 2-D input, a 4-D output
#: with 3 of the 8 fp16 NC1HWC2 lanes used.
FLOAT = EmuModel(
    inputs=[EmuTensor("image", "float16", (1, 6, 5, 3)), EmuTensor("vec", "float16", (2, 7))],
    outputs=[EmuTensor("mask", "float16", (1, 3, 6, 5)), EmuTensor("logits", "float16", (1, 12))],
    gain=0.25,
)
#: Int8 model: a uint8 camera frame, a 20-channel int8 feature map (NC1HWC2 natively, C2 = 16).
INT8 = EmuModel(
    inputs=[
        EmuTensor("image", "uint8", (1, 6, 5, 3)),
        EmuTensor("feat", "int8", (1, 4, 4, 20), zp=-3, scale=0.1),
    ],
    outputs=[
        EmuTensor("mask", "int8", (1, 20, 4, 4), zp=2, scale=0.2),
        EmuTensor("score", "int8", (1, 10), zp=0, scale=0.5),
    ],
    gain=0.01,
)
MODELS = {"float": FLOAT, "int8": INT8}


def random_inputs(model: EmuModel, layout: str, rng: np.random.Generator) -> dict:
    """Zero-copy inputs in the model's own types, logical layout (NCHW unless layout=nhwc)."""
    feeds = {}
    for tensor in model.inputs:
        shape = tensor.dims
        if len(shape) == 4 and layout != "nhwc":
            n, h, w, c = shape
            shape = (n, c, h, w)
        if tensor.type == "float16":
            feeds[tensor.name] = rng.uniform(-4, 4, shape).astype(np.float16)
        else:
            info = np.iinfo(tensor.type)
            feeds[tensor.name] = rng.integers(info.min, info.max + 1, shape, dtype=tensor.type)
    return feeds


def real(tensor: EmuTensor, values: np.ndarray) -> np.ndarray:
    """Float32 reals of quantised values (the copying path's output, or a pass-through input)."""
    if tensor.type.startswith("float"):
        return values.astype(np.float32)
    scale = np.float64(np.float32(tensor.scale))
    return ((values.astype(np.float64) - tensor.zp) * scale).astype(np.float32)


def copying_feed(model: EmuModel, inputs: dict, sess: InferenceSession) -> dict:
    """What ``run`` takes for the same inputs: pass-through (NC1HWC2) inputs hold quantised
    values, which ``run`` gets as reals; the others are fed as they are."""
    natives = {arg.name: arg for arg in sess.get_native_inputs()}
    zero_copy_native = sess._options.zero_copy_layout == "native"
    return {
        t.name: real(t, inputs[t.name])
        if zero_copy_native and len(natives[t.name].shape) == 5
        else inputs[t.name]
        for t in model.inputs
    }


def assert_dequantised_equal(model: EmuModel, zero_copy: list, copied: list) -> None:
    for tensor, raw, want in zip(model.outputs, zero_copy, copied):
        assert raw.dtype == np.dtype(tensor.type) and raw.shape == want.shape
        np.testing.assert_array_equal(real(tensor, raw), want)


@pytest.fixture(
    params=[
        (m, z, layout) for m in MODELS for z in ("nhwc", "native") for layout in ("nchw", "nhwc")
    ]
)
def case(request, npu):
    model_name, zero_copy_layout, layout = request.param
    options = make_provider_options(
        zero_copy_layout=zero_copy_layout, layout=layout, schedule=[0, 1, 2]
    )
    with InferenceSession(MODELS[model_name].data(), provider_options=options) as sess:
        yield MODELS[model_name], sess, layout
    assert npu.live_mems == 0


def test_every_binding_mode_equals_the_copying_path(case, npu):
    model, sess, layout = case
    rng = np.random.default_rng(1)
    inputs = random_inputs(model, layout, rng)
    want = sess.run(None, copying_feed(model, inputs, sess))

    binding = sess.io_binding()
    for name, array in inputs.items():
        binding.bind_cpu_input(name, array)
    for arg in sess.get_outputs():
        binding.bind_output(arg.name)
    sess.run_with_iobinding(binding)
    assert_dequantised_equal(model, binding.copy_outputs_to_cpu(), want)

    values = {
        name: OrtValue.ortvalue_from_numpy(
            array, "rknpu2", session=sess, name=name, io_kind="input"
        )
        for name, array in inputs.items()
    }
    for name, value in values.items():
        assert value.device_name() == "rknpu2"
        np.testing.assert_array_equal(value.numpy(), inputs[name])  # native layout round trip
    outputs = [
        OrtValue.ortvalue_from_shape_and_type(
            arg.shape, t.type, "rknpu2", session=sess, name=arg.name, io_kind="output"
        )
        for arg, t in zip(sess.get_outputs(), model.outputs)
    ]
    by_value = sess.io_binding()
    for name, value in values.items():
        by_value.bind_ortvalue_input(name, value)
    for arg, value in zip(sess.get_outputs(), outputs):
        by_value.bind_ortvalue_output(arg.name, value)
    results = sess.submit(None, by_value).result(10)
    assert_dequantised_equal(model, [v.numpy() for v in results], want)

    done = threading.Event()
    delivered = {}
    sess.run_async(None, by_value, lambda r, u, e: (delivered.update(r=r, e=e), done.set()))
    assert done.wait(10) and delivered["e"] == ""
    assert_dequantised_equal(model, [v.numpy() for v in delivered["r"]], want)
    results = asyncio.run(sess.arun(None, binding))
    assert_dequantised_equal(model, [v.numpy() for v in results], want)
    binding.close()
    by_value.close()


def test_memfd_frames_are_imported_not_copied(npu):
    """A producer writes NHWC frames into a memfd (a stand-in dma-buf): no rebind, no copy."""
    model = EmuModel(
        inputs=[EmuTensor("image", "uint8", (1, 8, 16, 3))],  # 16 wide: rows need no padding
        outputs=[EmuTensor("score", "int8", (1, 24), scale=0.5)],
        gain=0.01,
    )
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, (1, 8, 16, 3), dtype=np.uint8)
    offset = 4096 + 64
    open_fds = len(os.listdir("/proc/self/fd"))
    fd = os.memfd_create("frame")
    os.ftruncate(fd, offset + frame.nbytes)
    os.pwrite(fd, frame.tobytes(), offset)
    options = {"layout": "nhwc", "schedule": [0, 1, 2]}
    with InferenceSession(model.data(), provider_options=options) as sess:
        value = OrtValue.ortvalue_from_dmabuf(
            fd,
            frame.shape,
            np.uint8,
            size=frame.nbytes,
            offset=offset,
            session=sess,
            name="image",
            io_kind="input",
        )
        info = value.memory_info()
        assert info["dmabuf_backed"] and info["offset"] == offset and info["fd"] != fd
        assert info["fmt"] == 1 and info["w_stride"] == 16 and info["pass_through"] == 0
        np.testing.assert_array_equal(value.numpy(), frame)
        binding = sess.io_binding()
        binding.bind_ortvalue_input("image", value)
        binding.bind_output("score")
        for _ in range(3):
            frame = rng.integers(0, 256, frame.shape, dtype=np.uint8)
            os.pwrite(fd, frame.tobytes(), offset)
            (score,) = sess.submit(None, binding).result(10)
            assert_dequantised_equal(model, [score.numpy()], sess.run(None, frame))
        os.close(fd)
        binding.close()
        assert npu.live_mems == 1  # the imported value, still held here
    assert npu.live_mems == 0
    assert len(os.listdir("/proc/self/fd")) == open_fds  # dup'ed fds closed


def test_padded_rows_need_the_strided_size(npu):
    """A 5-wide NHWC frame is 16 pixels per row natively: the dmabuf must hold size_with_stride
    bytes, and the padding columns never reach the logical view."""
    with InferenceSession(INT8.data(), provider_options={"layout": "nhwc"}) as sess:
        strided = 1 * 6 * 16 * 3
        fd = os.memfd_create("frame")
        os.ftruncate(fd, strided)
        try:
            with pytest.raises(ValueError, match=r"dmabuf size 90 is smaller than the 288 bytes"):
                OrtValue.ortvalue_from_dmabuf(
                    fd, [1, 6, 5, 3], np.uint8, size=90, session=sess, name="image", io_kind="input"
                )
            value = OrtValue.ortvalue_from_dmabuf(
                fd,
                [1, 6, 5, 3],
                np.uint8,
                size=strided,
                session=sess,
                name="image",
                io_kind="input",
            )
        finally:
            os.close(fd)
        image = np.arange(90, dtype=np.uint8).reshape(1, 6, 5, 3)
        value.update_inplace(image)
        np.testing.assert_array_equal(value.numpy(), image)
        assert value.memory_info()["size_with_stride"] == strided
        value.release()


def test_many_bindings_in_flight_across_three_cores(npu):
    npu.use("rk3588", compute_us=2000)
    rng = np.random.default_rng(3)
    frames = [random_inputs(INT8, "nchw", rng) for _ in range(12)]
    options = make_provider_options(schedule=[0, 1, 2], max_queue_size=12)
    with InferenceSession(INT8.data(), provider_options=options) as sess:
        want = [sess.run(None, frame) for frame in frames]
        bindings = []
        for frame in frames:
            binding = sess.io_binding()
            for name, array in frame.items():
                binding.bind_cpu_input(name, array)
            binding.bind_output("mask")
            binding.bind_output("score")
            bindings.append(binding)
        for _ in range(2):
            futures = [sess.submit(None, b) for b in bindings]
            for future, expected in zip(futures, want):
                assert_dequantised_equal(INT8, [v.numpy() for v in future.result(10)], expected)
        assert npu.max_parallel == 3
        assert all(npu.core_runs(core) > 0 for core in range(3))
        assert npu.live_mems == 12 * 4
    assert npu.live_mems == 0


def test_session_close_destroys_every_mem_once(npu):
    sess = InferenceSession(INT8.data())
    image = np.zeros((1, 3, 6, 5), np.uint8)
    kept = OrtValue.ortvalue_from_numpy(
        image, "rknpu2", session=sess, name="image", io_kind="input"
    )
    generic = OrtValue.ortvalue_from_shape_and_type([64], np.int8, "rknpu2", session=sess)
    generic.release()
    generic.release()
    binding = sess.io_binding()
    binding.bind_ortvalue_input("image", kept)
    binding.bind_cpu_input("feat", np.zeros((1, 20, 4, 4), np.int8))
    binding.bind_output("mask", mem_flags="non_cacheable")
    binding.bind_output("score", mem_flags="sram")
    sess.run_with_iobinding(binding)
    assert npu.calls("rknn_create_mem2") == 3 and npu.live_mems == 4  # all but "default"
    sess.close()
    assert npu.live_mems == 0 and npu.calls("rknn_destroy_mem") == 5
    tracker = sess._backend.buffers
    assert tracker.live == 0 and tracker.freed == tracker.allocated == 5
    kept.release()
    binding.close()
    assert npu.calls("rknn_destroy_mem") == 5


def test_dma_heap_buffers_are_imported(npu, monkeypatch):
    """Where /dev/dma_heap/system exists, cacheable buffers come from it (a memfd here)."""
    heap_fds = []

    def fake_heap(size):
        fd = os.memfd_create("dma-heap")
        os.ftruncate(fd, size)
        heap_fds.append(fd)
        return fd

    monkeypatch.setattr(zero_copy_module, "dma_heap_alloc", fake_heap)
    with InferenceSession(INT8.data()) as sess:
        cacheable = OrtValue.ortvalue_from_shape_and_type(
            [1, 20, 4, 4], np.int8, "rknpu2", session=sess, name="mask", io_kind="output"
        )
        uncached = OrtValue.ortvalue_from_shape_and_type(
            [1, 10],
            np.int8,
            "rknpu2",
            session=sess,
            name="score",
            io_kind="output",
            mem_flags="uncached",
        )
        assert cacheable.memory_info()["dmabuf_backed"] and len(heap_fds) == 1
        assert not uncached.memory_info()["dmabuf_backed"]
        assert not cacheable.numpy().any()
        assert npu.calls("rknn_create_mem_from_fd") == 1
    for fd in heap_fds:  # allocate closed the heap's fd; the buffer closed its dup
        with pytest.raises(OSError):
            os.fstat(fd)
