"""Zero copy on the onnxruntime backend: binding runs equal the copying path bit for bit, in every
calling mode, with imported fds (a memfd stands in for a dma-buf) and many bindings in flight."""

from __future__ import annotations

import asyncio
import gc
import os
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ez_rknn_async import (
    BindingInFlightError,
    InferenceSession,
    IOBinding,
    OrtValue,
    SessionIOBinding,
    ValueReleasedError,
    make_provider_options,
)
from ez_rknn_async.backends import onnxruntime as ort_backend

from checks import assert_same
from onnx_models import add_mul_model, save, yolo_path

H, W = 48, 64


def _model(nodes, inputs, outputs, initializers=()) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def image_model() -> bytes:
    """image uint8[1,3,H,W] -> normalized = float(image) / 255 (float), nhwc = the image
    transposed to [1,H,W,3] (uint8): a camera frame in, a float and a uint8 tensor out."""
    return _model(
        [
            helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["f", "scale"], ["normalized"]),
            helper.make_node("Transpose", ["image"], ["nhwc"], perm=[0, 2, 3, 1]),
        ],
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, 3, H, W])],
        [
            helper.make_tensor_value_info("normalized", TensorProto.FLOAT, [1, 3, H, W]),
            helper.make_tensor_value_info("nhwc", TensorProto.UINT8, [1, H, W, 3]),
        ],
        [helper.make_tensor("scale", TensorProto.FLOAT, [], [1 / 255])],
    )


def int8_model() -> bytes:
    """A quantised path: x float[1,16], q int8[1,16] -> xq = quantize(x) (int8),
    deq = dequantize(q) (float), requant = quantize(dequantize(q) + x) (int8)."""
    return _model(
        [
            helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["xq"]),
            helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["deq"]),
            helper.make_node("Add", ["deq", "x"], ["summed"]),
            helper.make_node("QuantizeLinear", ["summed", "scale", "zp"], ["requant"]),
        ],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16]),
            helper.make_tensor_value_info("q", TensorProto.INT8, [1, 16]),
        ],
        [
            helper.make_tensor_value_info("xq", TensorProto.INT8, [1, 16]),
            helper.make_tensor_value_info("deq", TensorProto.FLOAT, [1, 16]),
            helper.make_tensor_value_info("requant", TensorProto.INT8, [1, 16]),
        ],
        [
            helper.make_tensor("scale", TensorProto.FLOAT, [], [0.05]),
            helper.make_tensor("zp", TensorProto.INT8, [], [3]),
        ],
    )


def random_feed(sess: InferenceSession, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feed = {}
    for arg in sess.get_inputs():
        if arg.type == "tensor(float)":
            feed[arg.name] = rng.standard_normal(arg.shape).astype(np.float32)
        elif arg.type == "tensor(uint8)":
            feed[arg.name] = rng.integers(0, 256, arg.shape, dtype=np.uint8)
        else:
            feed[arg.name] = rng.integers(-128, 128, arg.shape, dtype=np.int8)
    return feed


def bound_to(sess: InferenceSession, feed: dict[str, np.ndarray], shapes=None) -> SessionIOBinding:
    """A binding with ``feed`` copied in and every output bound (``shapes``: dynamic outputs)."""
    binding = sess.io_binding()
    for name, array in feed.items():
        binding.bind_cpu_input(name, array)
    for index, name in enumerate(sess.output_names):
        binding.bind_output(name, shape=None if shapes is None else shapes[index])
    return binding


def live_buffers(sess: InferenceSession) -> int:
    return sess._backend.buffers.live


MODELS = {"float": lambda: add_mul_model(batch=2), "uint8": image_model, "int8": int8_model}


@pytest.fixture(params=sorted(MODELS))
def model_path(request, tmp_path) -> str:
    return save(tmp_path, f"{request.param}.onnx", MODELS[request.param]())


def test_every_binding_mode_equals_the_copying_path(model_path):
    rng = np.random.default_rng(1)
    with InferenceSession(model_path) as sess:
        feed = random_feed(sess, rng)
        want = sess.run(None, feed)

        binding = bound_to(sess, feed)
        assert sess.run_with_iobinding(binding) is None
        assert_same(binding.copy_outputs_to_cpu(), want)
        assert [v.shape() for v in binding.get_outputs()] == [list(w.shape) for w in want]

        # device values made from arrays, bound by reference
        values = {
            name: OrtValue.ortvalue_from_numpy(
                array, "rknpu2", session=sess, name=name, io_kind="input"
            )
            for name, array in feed.items()
        }
        by_value = sess.io_binding()
        for name, value in values.items():
            by_value.bind_ortvalue_input(name, value)
        outputs = [
            OrtValue.ortvalue_from_shape_and_type(
                arg.shape, arg.type, "rknpu2", session=sess, name=arg.name, io_kind="output"
            )
            for arg in sess.get_outputs()
        ]
        for arg, value in zip(sess.get_outputs(), outputs):
            by_value.bind_ortvalue_output(arg.name, value)
        assert_same([v.numpy() for v in sess.submit(None, by_value).result(10)], want)
        assert_same([v.numpy() for v in outputs], want)
        assert by_value.get_outputs() == outputs

        done = threading.Event()
        delivered = {}

        def callback(results, user_data, err):
            delivered.update(results=results, user_data=user_data, err=err)
            done.set()

        sess.run_async(None, by_value, callback, "frame-1")
        assert done.wait(10)
        assert delivered["err"] == "" and delivered["user_data"] == "frame-1"
        assert_same([v.numpy() for v in delivered["results"]], want)

        arun_results = asyncio.run(sess.arun(None, binding))
        assert_same([v.numpy() for v in arun_results], want)
        binding.close()
        by_value.close()
    assert live_buffers(sess) == 0


def test_yolo_binding_equals_the_copying_path():
    frame = np.random.default_rng(2).random((1, 3, 320, 320), dtype=np.float32)
    with InferenceSession(yolo_path()) as sess:
        want = sess.run(None, {"images": frame})
        with bound_to(sess, {"images": frame}, [w.shape for w in want]) as binding:
            sess.run_with_iobinding(binding)
            assert_same(binding.copy_outputs_to_cpu(), want)


def test_bound_values_are_read_and_written_in_place(tmp_path):
    path = save(tmp_path, "image.onnx", image_model())
    rng = np.random.default_rng(3)
    with InferenceSession(path) as sess:
        frame = OrtValue.ortvalue_from_shape_and_type(
            [1, 3, H, W], np.uint8, "rknpu2", session=sess, name="image", io_kind="input"
        )
        binding = sess.io_binding()
        binding.bind_ortvalue_input("image", frame)
        binding.bind_output("nhwc")
        binding.bind_output("normalized")
        allocated = sess._backend.buffers.allocated
        for _ in range(3):
            image = rng.integers(0, 256, (1, 3, H, W), dtype=np.uint8)
            frame.update_inplace(image)
            sess.run_with_iobinding(binding)
            nhwc, normalized = binding.copy_outputs_to_cpu()  # first-bind order
            want_normalized, want_nhwc = sess.run(None, {"image": image})
            np.testing.assert_array_equal(nhwc, want_nhwc)
            np.testing.assert_array_equal(normalized, want_normalized)
        # rebinding a same-sized output keeps its buffer: no allocation per frame
        binding.bind_output("nhwc")
        binding.bind_cpu_input("image", image)
        binding.bind_cpu_input("image", image)
        assert sess._backend.buffers.allocated == allocated + 1
        binding.close()
        frame.release()
        assert live_buffers(sess) == 0


def _memfd(data: bytes, size: int, offset: int) -> int:
    fd = os.memfd_create("frame")
    os.ftruncate(fd, size)
    os.pwrite(fd, data, offset)
    return fd


def test_memfd_stands_in_for_a_dmabuf(tmp_path):
    path = save(tmp_path, "image.onnx", image_model())
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (1, 3, H, W), dtype=np.uint8)
    offset = 4096 + 100  # not page aligned
    open_fds = len(os.listdir("/proc/self/fd"))
    fd = _memfd(image.tobytes(), 3 * 4096 + image.nbytes, offset)
    out_fd = _memfd(b"", 3 * 4096, 0)
    with InferenceSession(path) as sess:
        try:
            frame = OrtValue.ortvalue_from_dmabuf(
                fd,
                [1, 3, H, W],
                "tensor(uint8)",
                size=image.nbytes,
                offset=offset,
                session=sess,
                name="image",
                io_kind="input",
            )
            nhwc = OrtValue.ortvalue_from_dmabuf(
                out_fd,
                [1, H, W, 3],
                np.uint8,
                size=H * W * 3,
                session=sess,
                name="nhwc",
                io_kind="output",
            )
        finally:
            os.close(out_fd)  # the values hold their own dup of the fd
        info = frame.memory_info()
        assert info["dmabuf_backed"] and info["offset"] == offset and info["fd"] != fd
        assert info["device_type"] == frame.device_name() == "cpu"
        np.testing.assert_array_equal(frame.numpy(), image)

        binding = sess.io_binding()
        binding.bind_ortvalue_input("image", frame)
        binding.bind_ortvalue_output("nhwc", nhwc)
        binding.bind_output("normalized")
        sess.run_with_iobinding(binding)
        want = sess.run(None, image)
        np.testing.assert_array_equal(binding.get_outputs()[1].numpy(), want[0])
        # the output went straight into the other fd's memory
        written = np.frombuffer(os.pread(nhwc.memory_info()["fd"], H * W * 3, 0), np.uint8)
        np.testing.assert_array_equal(written.reshape(1, H, W, 3), want[1])

        # a producer writing the next frame into the fd: no rebind, no copy
        image2 = rng.integers(0, 256, (1, 3, H, W), dtype=np.uint8)
        os.pwrite(fd, image2.tobytes(), offset)
        os.close(fd)
        future = sess.submit(None, binding)
        assert_same([v.numpy() for v in future.result(10)], sess.run(None, image2)[::-1])
        binding.close()
        assert live_buffers(sess) == 2  # the two imported values, still held here
    assert live_buffers(sess) == 0
    assert len(os.listdir("/proc/self/fd")) == open_fds  # the dup'ed fds were closed


def test_many_bindings_in_flight_across_workers(tmp_path):
    path = save(tmp_path, "image.onnx", image_model())
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 256, (1, 3, H, W), dtype=np.uint8) for _ in range(12)]
    options = make_provider_options(schedule=[0, 1, 2, 3], max_queue_size=12)
    with InferenceSession(path, provider_options=options) as sess:
        want = [sess.run(None, frame) for frame in frames]
        bindings = [bound_to(sess, {"image": frame}) for frame in frames]
        for _ in range(3):
            futures = [sess.submit(None, binding) for binding in bindings]
            for future, expected in zip(futures, want):
                assert_same([v.numpy() for v in future.result(10)], expected)
        assert sess.stats().peak_queued > 1
        results = []
        done = threading.Event()

        def callback(outputs, index, err):
            results.append((index, [v.numpy() for v in outputs], err))
            if len(results) == len(bindings):
                done.set()

        for index, binding in enumerate(bindings):
            sess.run_async(None, binding, callback, index)
        assert done.wait(10)
        assert [index for index, _, _ in results] == list(range(len(bindings)))
        for (_, outputs, err), expected in zip(results, want):
            assert err == ""
            assert_same(outputs, expected)
    assert live_buffers(sess) == 0


@pytest.fixture
def gate(monkeypatch):
    """Binding runs wait at the gate until it opens: a run held in flight, deterministically."""
    entered, opened = threading.Semaphore(0), threading.Event()
    original = ort_backend._OrtRunner.run_buffers

    def gated(self, inputs, outputs):
        entered.release()
        assert opened.wait(10)
        original(self, inputs, outputs)

    monkeypatch.setattr(ort_backend._OrtRunner, "run_buffers", gated)
    yield entered, opened
    opened.set()


def test_a_binding_in_flight_is_not_run_or_changed_again(add_mul_path, gate):
    entered, opened = gate
    a = np.ones((2, 4), np.float32)
    with InferenceSession(add_mul_path, provider_options={"schedule": [0]}) as sess:
        binding = bound_to(sess, {"a": a, "b": a}, [(2, 4)] * 2)
        future = sess.submit(None, binding)
        assert entered.acquire(timeout=10)
        with pytest.raises(BindingInFlightError, match="IOBinding is already in flight"):
            sess.submit(None, binding)
        with pytest.raises(BindingInFlightError, match="bind_cpu_input: the IOBinding is in fl"):
            binding.bind_cpu_input("a", a)
        with pytest.raises(BindingInFlightError, match="clear_binding_outputs: the IOBinding"):
            binding.clear_binding_outputs()
        other = bound_to(sess, {"a": a, "b": 2 * a}, [(2, 4)] * 2)
        queued = sess.submit(None, other)  # waits for the single worker
        assert queued.cancel()
        sess.submit(None, other).cancel()  # a cancelled run hands its binding back
        opened.set()
        assert_same([v.numpy() for v in future.result(10)], [2 * a, a])
        # resubmitting as soon as the result is out never sees a stale "in flight"
        for _ in range(20):
            sess.submit(None, binding).result(10)
        sess.run_with_iobinding(other)
        assert_same(other.copy_outputs_to_cpu(), [3 * a, 2 * a])


def test_release_during_a_run_frees_after_it(add_mul_path, gate):
    entered, opened = gate
    a = np.ones((2, 4), np.float32)
    with InferenceSession(add_mul_path) as sess:
        value = OrtValue.ortvalue_from_numpy(a, "rknpu2", session=sess, name="a", io_kind="input")
        binding = sess.io_binding()
        binding.bind_ortvalue_input("a", value)
        binding.bind_cpu_input("b", a)
        binding.bind_output("sum", shape=[2, 4])
        binding.bind_output("prod", shape=[2, 4])
        future = sess.submit(None, binding)
        assert entered.acquire(timeout=10)
        before = live_buffers(sess)
        value.release()
        assert live_buffers(sess) == before  # pinned by the run
        opened.set()
        assert_same([v.numpy() for v in future.result(10)], [2 * a, a])
        assert live_buffers(sess) == before - 1
        with pytest.raises(ValueReleasedError, match="input 'a' is bound to an OrtValue that"):
            sess.run_with_iobinding(binding)


def test_session_close_releases_every_buffer_once(add_mul_path):
    sess = InferenceSession(add_mul_path)
    tracker = sess._backend.buffers
    a = np.ones((2, 4), np.float32)
    kept = [
        OrtValue.ortvalue_from_numpy(a, "rknpu2", session=sess, name="a", io_kind="input"),
        OrtValue.ortvalue_from_shape_and_type([3], np.int8, "rknpu2", session=sess),
    ]
    kept[1].release()
    kept[1].release()
    dropped = OrtValue.ortvalue_from_numpy(a, "rknpu2", session=sess)
    del dropped
    gc.collect()
    bindings = [bound_to(sess, {"a": a, "b": a}, [(2, 4)] * 2) for _ in range(3)]
    for binding in bindings:
        sess.submit(None, binding).result(10)
    bindings[0].close()
    assert tracker.live == 1 + 4 * 2
    sess.close()
    assert tracker.live == 0 and tracker.freed == tracker.allocated == 3 + 3 * 4
    for binding in bindings:
        binding.close()  # idempotent and quiet after the session closed
    kept[0].release()
    assert tracker.freed == tracker.allocated


def test_host_values_wrap_numpy_arrays():
    array = np.arange(6, dtype=np.int16).reshape(2, 3)
    value = OrtValue.ortvalue_from_numpy(array)
    assert value.numpy() is array and value.data_ptr() == array.ctypes.data
    assert (value.device_name(), value.device_type(), value.device_id()) == ("cpu", "cpu", 0)
    assert value.shape() == [2, 3] and value.element_type() == "tensor(int16)"
    assert value.is_tensor() and value.has_value()
    assert value.memory_info() == {"device_type": "cpu", "device_id": 0}
    value.update_inplace(array * 2)
    np.testing.assert_array_equal(array, np.arange(6).reshape(2, 3) * 2)
    value.sync_to_device()
    value.sync_from_device()
    value.release()  # host memory belongs to numpy: nothing to free
    zeros = OrtValue.ortvalue_from_shape_and_type((2, 2), "tensor(float16)")
    assert zeros.numpy().dtype == np.float16 and not zeros.numpy().any()
    assert "tensor(float16) [2, 2] (cpu)" in repr(zeros)
    assert IOBinding is SessionIOBinding


def test_dynamic_outputs_take_a_shape(tmp_path):
    path = save(tmp_path, "dyn.onnx", add_mul_model())
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    with InferenceSession(path) as sess, sess.io_binding() as binding:
        binding.bind_cpu_input("a", a)
        binding.bind_cpu_input("b", a)
        binding.bind_output("sum", shape=(3, 4))
        binding.bind_output("prod", "rknpu2", 0, np.float32, [3, 4], mem_flags="non_cacheable")
        sess.run_with_iobinding(binding, run_options={"ztu_modelrt_dispatch_batch": False})
        assert_same(binding.copy_outputs_to_cpu(), sess.run(None, [a, a]))
        binding.synchronize_inputs()
        binding.synchronize_outputs()


def test_arun_waits_for_queue_space_without_holding_the_binding(add_mul_path, gate):
    entered, opened = gate
    a = np.ones((2, 4), np.float32)
    options = {"schedule": [0], "max_queue_size": 1}
    with InferenceSession(add_mul_path, provider_options=options) as sess:
        bindings = [bound_to(sess, {"a": a, "b": k * a}, [(2, 4)] * 2) for k in range(3)]
        running = sess.submit(None, bindings[0])
        assert entered.acquire(timeout=10)
        queued = sess.submit(None, bindings[1])  # the queue is full now

        async def main():
            waiting = asyncio.ensure_future(sess.arun(None, bindings[2]))
            while sess.stats().waiting_submitters == 0:  # parked on the loop, queue full
                await asyncio.sleep(0)
            assert not waiting.done()
            opened.set()
            return await waiting

        last = asyncio.run(main())
        for k, outputs in enumerate([running.result(10), queued.result(10), last]):
            assert_same([v.numpy() for v in outputs], [(1 + k) * a, k * a])
