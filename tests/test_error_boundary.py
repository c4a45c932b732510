"""Each CPU backend translates its runtime's errors at one place: a feed the runtime rejects
becomes a ValueError naming the inputs, a failed run an InferenceError, both chained."""

from __future__ import annotations

import numpy as np
import pytest

from ez_rknn_async import InferenceError, InferenceSession, make_provider_options
from ez_rknn_async.backends import ModelSource, load_backend
from ez_rknn_async.backends.base import SlotSpec
from ez_rknn_async.options import parse_provider_options

from onnx_models import add_mul_model, broadcast_model

BACKENDS = ["onnxruntime", "openvino"]


def _runtime_module(exc: BaseException) -> str:
    cause = exc.__cause__
    assert cause is not None, "the runtime's error must be chained"
    return type(cause).__module__


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failed_run_is_an_inference_error_and_the_session_goes_on(backend):
    options = make_provider_options(backend=backend, schedule=[0])
    with InferenceSession(broadcast_model(), provider_options=options) as sess:
        bad = [np.ones(2, np.float32), np.ones(3, np.float32)]
        for call in (lambda: sess.run(None, bad), lambda: sess.submit(None, bad).result(30)):
            with pytest.raises(InferenceError) as info:
                call()
            assert type(info.value) is InferenceError
            assert "Exception from" not in str(info.value) and "[ONNXRuntimeError]" not in str(
                info.value
            )
            assert _runtime_module(info.value).startswith(("onnxruntime", "builtins"))
        (y,) = sess.run(None, [np.ones(2, np.float32), np.ones(2, np.float32)])
        np.testing.assert_array_equal(y, [2.0, 2.0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_feed_the_runtime_rejects_is_a_value_error_naming_the_inputs(backend):
    """Straight to a runner (our checks bypassed): what the runtime itself says is translated."""
    source = ModelSource(add_mul_model())
    loaded = load_backend(source, parse_provider_options({"backend": backend}))
    runner = loaded.open_runner(SlotSpec(0, None, None))
    try:
        with pytest.raises(ValueError, match=r"rejected the inputs \['a', 'b'\]") as info:
            runner.run([np.ones(4, np.float32), np.ones((1, 4), np.float32)], [0])
        assert info.value.__cause__ is not None
    finally:
        runner.close()
        loaded.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_model_the_runtime_cannot_read_is_a_value_error(backend):
    with pytest.raises(ValueError, match="rejected the model") as info:
        InferenceSession(b"\x08\x01 not a model", provider_options={"backend": backend})
    assert info.value.__cause__ is not None


def test_errors_of_ours_are_not_translated():
    """A bug of ours (any non-runtime exception) passes the boundary untouched."""
    from ez_rknn_async.backends import onnxruntime as ort_backend

    with pytest.raises(KeyError, match="ours"), ort_backend.translate_errors("x"):
        raise KeyError("ours")
