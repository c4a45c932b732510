"""The OpenVINO backend: same API, results close to onnxruntime's, every calling mode."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from ez_rknn_async import InferenceSession, make_provider_options

ov = pytest.importorskip("openvino")
STATIC_COMPILES = pytest.importorskip("ez_rknn_async.backends.openvino").STATIC_COMPILES


def openvino(**options):
    return make_provider_options(backend="openvino", **options)


def test_add_mul_exact_in_every_mode(add_mul_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.full((3, 4), 0.5, np.float32)
    want = ort.InferenceSession(add_mul_path).run(None, {"a": a, "b": b})
    with InferenceSession(add_mul_path, provider_options=openvino()) as sess:
        assert sess.backend_name == "openvino"
        assert sess.get_providers() == ["OpenVINOExecutionProvider"]
        assert [(i.name, i.type) for i in sess.get_inputs()] == [
            ("a", "tensor(float)"),
            ("b", "tensor(float)"),
        ]
        for got in (
            sess.run(None, {"a": a, "b": b}),
            sess.submit(None, [a, b]).result(30),
            sess.run(None, [a, b], {"ztu_modelrt_dispatch_batch": True}),
        ):
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, w)
        done = threading.Event()
        outcome = []
        sess.run_async(["prod"], [a, b], lambda r, u, e: (outcome.append((r, e)), done.set()))
        assert done.wait(30)
        np.testing.assert_array_equal(outcome[0][0][0], want[1])
        assert outcome[0][1] == ""


def test_yolo_close_to_onnxruntime_with_pipelining(yolo):
    rng = np.random.default_rng(3)
    frames = [rng.random((1, 3, 320, 320), dtype=np.float32) for _ in range(4)]
    ref = ort.InferenceSession(yolo, providers=["CPUExecutionProvider"])
    with InferenceSession(yolo, provider_options=openvino(precision="f32")) as sess:
        assert sess.get_inputs()[0].shape == [None, 3, None, None]
        results = [sess.run_pipeline(frame, depth=2) for frame in frames]
        results = results[2:] + sess.drain_pipeline()
    for frame, (got,) in zip(frames, results):
        (want,) = ref.run(None, {"images": frame})
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-2)


def test_bad_input_is_caught_before_openvino_sees_it(mixed_path):
    with InferenceSession(mixed_path, provider_options=openvino()) as sess:
        with pytest.raises(TypeError, match=r"input 'ids': expected dtype int64"):
            sess.run(None, {"ids": np.ones((1, 3), np.int32), "h": np.ones((1, 3), np.float16)})
        ids = np.array([[1, 2, 3]], np.int64)
        h = np.array([[0.5, 1.0, 2.0]], np.float16)
        got = sess.run(None, {"ids": ids, "h": h})
        np.testing.assert_array_equal(got[0], ids * 2)
        np.testing.assert_array_equal(got[1], h + h)


def _hw_frames(*hw):
    rng = np.random.default_rng(5)
    return [rng.random((1, 3, h, w), dtype=np.float32) for h, w in hw]


def test_static_compile_per_repeated_shape_lru_and_exact_results(dynamic_path):
    ref = ort.InferenceSession(dynamic_path)
    shapes = [(8, 8), (8, 16), (16, 8), (4, 4), (12, 12)]  # one more than the cache holds
    frames = _hw_frames(*shapes)
    with InferenceSession(dynamic_path, provider_options=openvino(precision="f32")) as sess:
        backend = sess._backend

        def static():
            return [key for key in backend.compiled_precisions() if key is not None]

        def check(frame):
            for got, want in zip(sess.run(None, [frame]), ref.run(None, {"img": frame})):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)

        check(frames[0])
        assert static() == []  # a shape seen once runs on the dynamic compile
        check(frames[0])
        assert static() == [((1, 3, 8, 8),)]
        for frame in frames[1:]:
            check(frame)
            check(frame)
        assert len(static()) == STATIC_COMPILES
        # the least recently used shape, (8, 8), went; the others stay, oldest first
        assert static() == [((1, 3, h, w),) for h, w in shapes[1:]]
        check(frames[1])  # a hit refreshes its place
        assert static()[-1] == ((1, 3, 8, 16),)
        results = [sess.run_pipeline(frame, depth=2) for frame in frames * 2][2:]
        results += sess.drain_pipeline()
        for frame, got in zip(frames * 2, results):
            for g, w in zip(got, ref.run(None, {"img": frame})):
                np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4)


def test_precision_is_honoured_by_every_compile(dynamic_path):
    frame = _hw_frames((8, 8))[0]
    core = ov.Core()
    default = core.compile_model(
        core.read_model(dynamic_path), "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"}
    )
    openvino_default = default.get_property("INFERENCE_PRECISION_HINT").to_string()
    for precision, want in (("f32", "f32"), (None, openvino_default)):
        with InferenceSession(dynamic_path, provider_options=openvino(precision=precision)) as sess:
            sess.run(None, [frame])
            sess.run(None, [frame])  # now with a static compile too
            assert sess._backend.compiled_precisions() == {None: want, ((1, 3, 8, 8),): want}


def test_default_slots_are_the_requests_openvino_recommends(dynamic_path, add_mul_path):
    core = ov.Core()
    for path in (dynamic_path, add_mul_path):
        compiled = core.compile_model(
            core.read_model(path), "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"}
        )
        want = compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        with InferenceSession(path, provider_options=openvino()) as sess:
            assert len(sess.worker_slots) == want
        with InferenceSession(path, provider_options=openvino(schedule=[0])) as sess:
            assert len(sess.worker_slots) == 1


CTRL_C_AFTER_A_SESSION = """
import gc, signal, sys, threading
import numpy as np
from ez_rknn_async import InferenceSession, make_provider_options
sys.path.insert(0, sys.argv[1])
from onnx_models import add_mul_model

sess = InferenceSession(add_mul_model(), provider_options=make_provider_options(backend="openvino"))
a = np.ones((1, 4), np.float32)
sess.run(None, [a, a])
sess.close()
holder = [sess]
del sess
dropper = threading.Thread(target=lambda: (holder.clear(), gc.collect()))  # OpenVINO frees here
dropper.start()
dropper.join()
try:
    signal.raise_signal(signal.SIGINT)
except KeyboardInterrupt:
    print("interrupted cleanly")
"""


def test_ctrl_c_after_an_openvino_session_is_a_keyboard_interrupt_not_a_crash():
    """compile_model left the compiling thread's sigaltstack on memory OpenVINO freed later
    (from the thread that dropped the session); Python's SIGINT handler ran there: SIGSEGV."""
    tests = str(Path(__file__).resolve().parent)
    result = subprocess.run(
        [sys.executable, "-c", CTRL_C_AFTER_A_SESSION, tests],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.strip() == "interrupted cleanly"
