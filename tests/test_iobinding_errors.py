"""Zero copy misuse: every wrong shape, dtype, size, name, owner or state is a clear error, and
nothing is leaked or freed twice. onnxruntime backend."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ez_rknn_async import (
    BindingClosedError,
    InferenceSession,
    IOBinding,
    OrtValue,
    SessionClosedError,
    ValueReleasedError,
)
from ez_rknn_async.backends.base import (
    Backend,
    BufferRequest,
    BufferTracker,
    DeviceBuffer,
)
from ez_rknn_async.iobinding import parse_mem_flags

from fakes import FunctionRunner

A = np.ones((2, 4), np.float32)


@pytest.fixture
def sess(add_mul_path):
    """add_mul with a dynamic batch: inputs a, b float[N,4]; outputs sum, prod."""
    with InferenceSession(add_mul_path) as session:
        yield session
    assert session._backend.buffers.live == 0


@pytest.fixture
def other(add_mul_path):
    with InferenceSession(add_mul_path) as session:
        yield session


def device(sess, array=A, name="a", io_kind="input"):
    return OrtValue.ortvalue_from_numpy(array, "rknpu2", session=sess, name=name, io_kind=io_kind)


def complete(binding):
    binding.bind_cpu_input("a", A)
    binding.bind_cpu_input("b", A)
    binding.bind_output("sum", shape=[2, 4])
    binding.bind_output("prod", shape=[2, 4])
    return binding


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda s: OrtValue.ortvalue_from_numpy([1, 2]), TypeError, "takes a numpy array"),
        (
            lambda s: OrtValue.ortvalue_from_numpy(A, "cuda"),
            ValueError,
            "'cpu', 'rknpu2' or 'rknpu3'",
        ),
        (lambda s: OrtValue.ortvalue_from_numpy(A, "cpu", 1), ValueError, "device_id must be 0"),
        (lambda s: OrtValue.ortvalue_from_numpy(A, layout="nchw"), ValueError, "layout must be"),
        (
            lambda s: OrtValue.ortvalue_from_numpy(A, session=s),
            ValueError,
            "a 'cpu' OrtValue wraps host memory",
        ),
        (lambda s: OrtValue.ortvalue_from_numpy(A, "rknpu2"), ValueError, "needs session="),
        (
            lambda s: OrtValue.ortvalue_from_numpy(A, "rknpu2", session=object()),
            TypeError,
            "session must be an InferenceSession",
        ),
        (
            lambda s: OrtValue.ortvalue_from_numpy(A, "rknpu2", session=s, name="a"),
            ValueError,
            "name and io_kind go together",
        ),
        (
            lambda s: device(s, name="c"),
            ValueError,
            r"Unknown input name: 'c'; the model's inputs are \['a', 'b'\]",
        ),
        (lambda s: device(s, io_kind="in"), ValueError, "io_kind must be 'input' or 'output'"),
        (
            lambda s: device(s, A.astype(np.float64)),
            TypeError,
            r"input 'a': expected dtype float32 \(tensor\(float\)\), got float64",
        ),
        (
            lambda s: device(s, np.ones((2, 5), np.float32)),
            ValueError,
            r"input 'a': expected shape \[N, 4\], got \[2, 5\]",
        ),
        (
            lambda s: device(s, np.ones(8, np.float32), "sum", "output"),
            ValueError,
            "output 'sum': expected rank 2",
        ),
        (
            lambda s: OrtValue.ortvalue_from_numpy(np.array(["x"]), "rknpu2", session=s),
            TypeError,
            "is not a tensor element type",
        ),
        (
            lambda s: OrtValue.ortvalue_from_shape_and_type([2, 4], "tensor(string)"),
            TypeError,
            r"element_type 'tensor\(string\)' is not a tensor element type",
        ),
        (
            lambda s: OrtValue.ortvalue_from_shape_and_type([2, -1], np.float32),
            ValueError,
            "negative dimensions",
        ),
        (
            lambda s: OrtValue.ortvalue_from_shape_and_type(5, np.float32),
            TypeError,
            "shape must be a sequence of integers",
        ),
        (
            lambda s: OrtValue.ortvalue_from_shape_and_type(
                [2, 4], np.float32, "rknpu2", session=s, mem_flags="fast"
            ),
            ValueError,
            "Unknown mem_flags: 'fast'",
        ),
        (
            lambda s: OrtValue.ortvalue_from_dmabuf(3, [2, 4], np.float32, size=32),
            ValueError,
            "ortvalue_from_dmabuf needs session=, name= and io_kind=",
        ),
        (
            lambda s: OrtValue.ortvalue_from_dmabuf(
                3, [2, 4], np.float32, size=31, session=s, name="a", io_kind="input"
            ),
            ValueError,
            r"dmabuf size 31 is smaller than the 32 bytes of \[2, 4\] float32",
        ),
        (
            lambda s: OrtValue.ortvalue_from_dmabuf(
                -1, [2, 4], np.float32, size=32, session=s, name="a", io_kind="input"
            ),
            ValueError,
            "fd must be >= 0",
        ),
        (
            lambda s: OrtValue.ortvalue_from_dmabuf(
                3, [2, 4], np.float32, size=32, offset="0", session=s, name="a", io_kind="input"
            ),
            TypeError,
            "offset must be an integer",
        ),
        (lambda s: OrtValue(), TypeError, "make OrtValues with OrtValue.ortvalue_from_numpy"),
    ],
)
def test_bad_values_are_refused(sess, make, error, message):
    with pytest.raises(error, match=message):
        make(sess)


def test_a_dmabuf_past_the_end_of_its_fd_is_refused(sess):
    fd = os.memfd_create("short")
    try:
        os.ftruncate(fd, 40)
        with pytest.raises(ValueError, match="holds 40 bytes; offset 16 \\+ size 32 goes past"):
            OrtValue.ortvalue_from_dmabuf(
                fd,
                [2, 4],
                np.float32,
                size=32,
                offset=16,
                session=sess,
                name="a",
                io_kind="input",
            )
    finally:
        os.close(fd)


def test_update_inplace_takes_the_exact_shape_and_dtype(sess):
    value = device(sess)
    with pytest.raises(ValueError, match=r"the OrtValue is \[2, 4\] float32, got \[2, 4\] float64"):
        value.update_inplace(A.astype(np.float64))
    with pytest.raises(TypeError, match="update_inplace takes a numpy array"):
        value.update_inplace(A.tolist())
    value.update_inplace(A * 3)
    np.testing.assert_array_equal(value.numpy(), A * 3)


@pytest.mark.parametrize(
    "bind, error, message",
    [
        (
            lambda b, s, o: b.bind_cpu_input("c", A),
            ValueError,
            "Unknown input name: 'c'",
        ),
        (
            lambda b, s, o: b.bind_cpu_input("a", A.astype(np.float16)),
            TypeError,
            "input 'a': expected dtype float32",
        ),
        (
            lambda b, s, o: b.bind_cpu_input("a", np.ones((2, 3), np.float32)),
            ValueError,
            r"input 'a': expected shape \[N, 4\], got \[2, 3\]",
        ),
        (
            lambda b, s, o: b.bind_input("a", "cpu", 0, np.float32, [2, 4], 1234),
            NotImplementedError,
            "raw buffer pointer is not supported",
        ),
        (
            lambda b, s, o: b.bind_ortvalue_input("a", A),
            TypeError,
            "bind_ortvalue_input takes an OrtValue, got ndarray",
        ),
        (
            lambda b, s, o: b.bind_ortvalue_input("a", OrtValue.ortvalue_from_numpy(A)),
            TypeError,
            "needs an OrtValue in session memory .* host arrays go through bind_cpu_input",
        ),
        (
            lambda b, s, o: b.bind_ortvalue_output("sum", OrtValue.ortvalue_from_numpy(A)),
            TypeError,
            "host arrays go through bind_output",
        ),
        (
            lambda b, s, o: b.bind_ortvalue_input("a", device(o)),
            ValueError,
            "bind_ortvalue_input: the OrtValue belongs to a different session",
        ),
        (
            lambda b, s, o: b.bind_ortvalue_input("b", device(s)),
            ValueError,
            "the OrtValue was made for input 'a'; it cannot be bound to input 'b'",
        ),
        (
            lambda b, s, o: b.bind_ortvalue_output("sum", device(s)),
            ValueError,
            "made for input 'a'; it cannot be bound to output 'sum'",
        ),
        (
            lambda b, s, o: b.bind_ortvalue_input(
                "a", OrtValue.ortvalue_from_numpy(A.astype(np.int32), "rknpu2", session=s)
            ),
            TypeError,
            "input 'a': expected dtype float32 .* got int32",
        ),
        (
            lambda b, s, o: b.bind_output("sum", element_type=np.int8, shape=[2, 4]),
            TypeError,
            "output 'sum': expected dtype float32",
        ),
        (
            lambda b, s, o: b.bind_output("sum", shape=[2, 4], buffer_ptr=4096),
            ValueError,
            "bind_output does not take a raw buffer_ptr",
        ),
        (
            lambda b, s, o: b.bind_output("sum", "gpu", shape=[2, 4]),
            ValueError,
            "device_type must be 'cpu', 'rknpu2' or 'rknpu3'",
        ),
        (
            lambda b, s, o: b.bind_output("nope", shape=[2, 4]),
            ValueError,
            r"Unknown output name: 'nope'; the model's outputs are \['sum', 'prod'\]",
        ),
    ],
)
def test_bad_bindings_are_refused(sess, other, bind, error, message):
    binding = sess.io_binding()
    with pytest.raises(error, match=message):
        bind(binding, sess, other)
    binding.close()


def test_generic_buffers_bind_where_shape_and_dtype_fit(sess):
    generic = OrtValue.ortvalue_from_shape_and_type([2, 4], np.float32, "rknpu2", session=sess)
    with sess.io_binding() as binding:
        complete(binding)
        binding.bind_ortvalue_input("b", generic)
        binding.bind_ortvalue_output("sum", generic)  # in place: sum = a + b into b
        generic.update_inplace(A * 5)
        sess.run_with_iobinding(binding)
        np.testing.assert_array_equal(generic.numpy(), A * 6)


def test_runs_need_every_tensor_bound(sess):
    binding = IOBinding(sess)  # onnxruntime's spelling of sess.io_binding()
    binding.bind_output("prod", shape=[2, 4])
    with pytest.raises(ValueError, match=r"model inputs \['a', 'b'\] are not bound"):
        sess.run_with_iobinding(binding)
    binding.bind_cpu_input("a", A)
    binding.bind_cpu_input("b", A)
    with pytest.raises(ValueError, match=r"submit: model outputs \['sum'\] are not bound"):
        sess.submit(None, binding)
    binding.bind_output("sum", shape=[2, 4])
    sess.run_with_iobinding(binding)
    assert [v.shape() for v in binding.get_outputs()] == [[2, 4], [2, 4]]
    binding.clear_binding_inputs()
    with pytest.raises(ValueError, match="inputs .* are not bound"):
        sess.run_with_iobinding(binding)
    binding.clear_binding_outputs()
    assert binding.get_outputs() == []
    binding.close()


def test_a_released_value_fails_the_run_clearly(sess):
    value = device(sess)
    with sess.io_binding() as binding:
        complete(binding).bind_ortvalue_input("a", value)
        value.release()
        with pytest.raises(ValueReleasedError, match="input 'a' is bound to an OrtValue that"):
            sess.run_with_iobinding(binding)
        with pytest.raises(ValueReleasedError, match="the OrtValue was released"):
            value.numpy()
        with pytest.raises(ValueReleasedError, match="the OrtValue was released"):
            binding.bind_ortvalue_input("a", value)
        assert not value.has_value() and "released" in repr(value)
        binding.bind_cpu_input("a", A)
        sess.run_with_iobinding(binding)


def test_outputs_owned_by_a_cleared_binding_are_released(sess):
    binding = complete(sess.io_binding())
    sess.run_with_iobinding(binding)
    outputs = binding.get_outputs()
    binding.clear_binding_outputs()
    with pytest.raises(ValueReleasedError, match="released"):
        outputs[0].numpy()
    binding.close()


def test_bindings_of_another_session_are_rejected(sess, other):
    foreign = complete(other.io_binding())
    with pytest.raises(ValueError, match="run_with_iobinding: the IOBinding belongs to a diff"):
        sess.run_with_iobinding(foreign)
    with pytest.raises(ValueError, match="submit: the IOBinding belongs to a different session"):
        sess.submit(None, foreign)
    with pytest.raises(ValueError, match="run_async: the IOBinding belongs to a different"):
        sess.run_async(None, foreign, lambda *args: None)
    with pytest.raises(TypeError, match="run_with_iobinding takes an IOBinding from io_binding"):
        sess.run_with_iobinding({"a": A, "b": A})
    other.run_with_iobinding(foreign)  # still usable where it belongs
    foreign.close()


def test_binding_calls_that_make_no_sense_are_refused(sess):
    binding = complete(sess.io_binding())
    with pytest.raises(ValueError, match="submit: output_names must be None with an IOBinding"):
        sess.submit(["sum"], binding)
    with pytest.raises(ValueError, match="does not support ztu_modelrt_dispatch_batch"):
        sess.run_with_iobinding(binding, {"ztu_modelrt_dispatch_batch": True})
    with pytest.raises(ValueError, match="run_async does not support ztu_modelrt_dispatch_"):
        sess.run_async(None, binding, print, None, {"ztu_modelrt_dispatch_batch": "on"})
    binding.close()


def test_a_closed_binding_is_refused(sess):
    binding = complete(sess.io_binding())
    before = sess._backend.buffers.live
    binding.close()
    binding.close()
    assert sess._backend.buffers.live == before - 4  # what it allocated itself
    for call in (
        lambda: sess.run_with_iobinding(binding),
        lambda: sess.submit(None, binding),
        lambda: binding.bind_cpu_input("a", A),
        lambda: binding.get_outputs(),
        lambda: binding.synchronize_inputs(),
    ):
        with pytest.raises(BindingClosedError, match="the IOBinding is closed"):
            call()


def test_after_session_close_every_zero_copy_call_raises(add_mul_path):
    sess = InferenceSession(add_mul_path)
    value = device(sess)
    binding = complete(sess.io_binding())
    binding.bind_ortvalue_input("a", value)
    sess.close()
    assert sess._backend.buffers.live == 0
    calls = [
        sess.io_binding,
        lambda: sess.run_with_iobinding(binding),
        lambda: sess.submit(None, binding),
        lambda: device(sess),
        lambda: OrtValue.ortvalue_from_shape_and_type([1], np.int8, "rknpu2", session=sess),
        lambda: binding.bind_cpu_input("a", A),
        lambda: binding.bind_output("sum", shape=[2, 4]),
        binding.get_outputs,
        binding.copy_outputs_to_cpu,
        binding.clear_binding_inputs,
        binding.synchronize_outputs,
    ]
    calls += [getattr(value, name) for name in ("numpy", "data_ptr", "shape", "element_type")]
    calls += [value.device_name, value.memory_info, value.has_value, value.sync_to_device]
    for call in calls:
        with pytest.raises(SessionClosedError):
            call()
    value.release()  # cleanup stays quiet
    binding.close()
    assert "released" in repr(value)


@pytest.mark.parametrize(
    "flags, expected",
    [(None, 0), ("default", 0), (" Cacheable ", 1), ("uncached", 2), ("sram", 4), (6, 6)],
)
def test_mem_flags(flags, expected):
    assert parse_mem_flags(flags) == expected


@pytest.mark.parametrize(
    "flags, error", [(3, ValueError), (8, ValueError), (True, TypeError), (1.0, TypeError)]
)
def test_bad_mem_flags(flags, error):
    with pytest.raises(error, match="mem_flags"):
        parse_mem_flags(flags)


class _CountingBuffer(DeviceBuffer):
    def __init__(self, tracker: BufferTracker) -> None:
        super().__init__(BufferRequest((2,), np.dtype(np.float32)), tracker)
        self.frees = 0

    def _free(self) -> None:
        self.frees += 1

    def read(self) -> np.ndarray:
        return np.zeros(2, np.float32)

    def write(self, array: np.ndarray) -> None:
        pass

    @property
    def data_ptr(self) -> int:
        return 0

    def memory_info(self) -> dict:
        return {}


def test_a_pinned_buffer_is_freed_once_when_the_last_pin_goes():
    tracker = BufferTracker()
    buffer = _CountingBuffer(tracker)
    assert buffer.pin() and buffer.pin()
    buffer.release()
    buffer.release()
    assert buffer.released and buffer.frees == 0 and tracker.live == 1
    assert not buffer.pin()  # no new runs on a released buffer
    buffer.unpin()
    assert buffer.frees == 0
    buffer.unpin()
    assert buffer.frees == 1 and tracker.live == 0 and tracker.freed == tracker.allocated == 1
    tracker.release_all()
    assert buffer.frees == 1


def test_backends_without_zero_copy_say_so():
    class Plain(Backend):
        name = "plain"
        inputs = outputs = ()

        def default_cores(self):
            return [0]

        def open_runner(self, slot):
            return FunctionRunner()

    backend = Plain()
    request = BufferRequest((1,), np.dtype(np.uint8))
    with pytest.raises(NotImplementedError, match="the plain backend does not support zero-copy"):
        backend.allocate(request)
    with pytest.raises(NotImplementedError, match="the plain backend does not import dma-bufs"):
        backend.import_dmabuf(0, request, size=1, offset=0, virt_addr=None)
    with pytest.raises(NotImplementedError, match="FunctionRunner does not support I/O binding"):
        FunctionRunner().run_buffers([], [])
