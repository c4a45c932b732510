"""One contract, every backend: the same model shape and the same calls on each, with the same
results (by each backend's reference) and the same errors.

The model: inputs ``a`` and ``b`` (float32, [batch, 4]), outputs ``sum`` and ``prod``. A backend
joins by adding one line to ``CASES``: a function that opens such a session and says what its
outputs should be.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest

from ez_rknn_async import (
    InferenceError,
    InferenceSession,
    RKNNError,
    SessionBrokenError,
    SessionClosedError,
    make_provider_options,
)
from ez_rknn_async.tensors import TensorSpec
from ez_rknn_async.testing import FakeBackend

from onnx_models import add_mul_model
from rknn3_emu import Model3, Tensor3
from rknn_emu import EmuModel, EmuTensor, reference

pytest_plugins = ("rknn_fixtures", "rknn3_fixtures")

TIMEOUT = 30


@dataclass
class Case:
    """One backend under test: how to open the model, what it returns, what else it takes."""

    open: Callable[..., InferenceSession]  # (**provider options) -> session
    expect: Callable[[Sequence[np.ndarray]], list[np.ndarray]]  # [a, b] -> [sum, prod]
    extra_dtypes: tuple[type, ...] = ()  # accepted besides float32 (RKNN converts them)
    #: A feed the runtime fails on (after our checks pass it): batches that disagree.
    fail: Callable[[], list[np.ndarray]] = lambda: [
        np.ones((2, 4), np.float32),
        np.ones((3, 4), np.float32),
    ]
    failure: type[BaseException] = InferenceError
    rtol: float = 0.0


def fake_case(request) -> Case:
    specs = [TensorSpec(name, (None, 4), np.float32) for name in ("a", "b")]
    outputs = [TensorSpec(name, (None, 4), np.float32) for name in ("sum", "prod")]

    def add_mul(inputs: list[np.ndarray]) -> list[np.ndarray]:
        a, b = inputs
        return [a + b, a * b]

    return Case(
        open=lambda **o: FakeBackend(add_mul, specs, outputs).session(make_provider_options(**o)),
        expect=lambda feed: [feed[0] + feed[1], feed[0] * feed[1]],
    )


def onnx_case(backend: str) -> Callable[[Any], Case]:
    def make(request) -> Case:
        model = add_mul_model()
        return Case(
            open=lambda **o: InferenceSession(
                model, provider_options=make_provider_options(backend=backend, **o)
            ),
            expect=lambda feed: [feed[0] + feed[1], feed[0] * feed[1]],
        )

    return make


#: The emulator's network is its own function of the inputs (rknn_emu.reference), batch 1.
EMU_MODEL = EmuModel(
    inputs=[EmuTensor("a", "float32", (1, 4)), EmuTensor("b", "float32", (1, 4))],
    outputs=[EmuTensor("sum", "float32", (1, 4)), EmuTensor("prod", "float32", (1, 4))],
    gain=0.5,
)


def rknn_case(request) -> Case:
    npu = request.getfixturevalue("npu")
    return Case(
        open=lambda **o: InferenceSession(EMU_MODEL.data(), provider_options=o or None),
        expect=lambda feed: _per_sample(lambda x: reference(EMU_MODEL, x), feed),
        extra_dtypes=(np.float16, np.uint8, np.int8),
        fail=lambda: (npu.inject("rknn_run", -1), feed())[1],  # its batch is fixed: inject
        failure=RKNNError,
        rtol=1e-6,
    )


#: The RKNPU3 emulator runs the same network (rknn3_emu.Model3.reference), batch 1, one core.
EMU3_MODEL = Model3(
    inputs=[Tensor3("a", "float32", (1, 4)), Tensor3("b", "float32", (1, 4))],
    outputs=[Tensor3("sum", "float32", (1, 4)), Tensor3("prod", "float32", (1, 4))],
    gain=0.5,
)


def rknn3_case(request) -> Case:
    npu3 = request.getfixturevalue("npu3_11")
    npu3.use(devices=1, cores=2)
    path = str(EMU3_MODEL.write(request.getfixturevalue("tmp_path")))
    return Case(
        open=lambda **o: InferenceSession(path, provider_options=o or None),
        expect=lambda feed: _per_sample(EMU3_MODEL.reference, feed),
        extra_dtypes=(np.float16, np.uint8, np.int8),
        fail=lambda: (npu3.inject("rknn3_run", -5), feed())[1],
        failure=RKNNError,
        rtol=1e-6,
    )


def _per_sample(fn: Callable, feed: Sequence[np.ndarray]) -> list[np.ndarray]:
    """A batch-1 model's reference over a batch: one sample at a time, joined on axis 0."""
    parts = [fn([x[i : i + 1] for x in feed]) for i in range(len(feed[0]))]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


#: One line per backend.
CASES = {
    "fake": fake_case,
    "onnxruntime": onnx_case("onnxruntime"),
    "openvino": onnx_case("openvino"),
    "rknn": rknn_case,
    "rknn3": rknn3_case,
}


@pytest.fixture(params=list(CASES))
def case(request) -> Case:
    return CASES[request.param](request)


@pytest.fixture
def sess(case) -> Iterator[InferenceSession]:
    with case.open(schedule=[0, 1]) as session:
        yield session


def feed(batch: int = 1, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-2, 2, (batch, 4)).astype(np.float32) for _ in range(2)]


def assert_outputs(case: Case, got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == np.float32 and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=case.rtol, atol=0)


# -- description ---------------------------------------------------------------------------------


def test_specs_and_metadata(sess):
    assert sess.input_names == ["a", "b"] and sess.output_names == ["sum", "prod"]
    for arg in sess.get_inputs() + sess.get_outputs():
        assert arg.type == "tensor(float)"
        assert len(arg.shape) == 2 and arg.shape[1] == 4
        assert isinstance(arg.layout, str) and isinstance(arg.strides, list)
    providers = sess.get_providers()
    assert providers and all(isinstance(p, str) for p in providers)
    assert list(sess.get_provider_options()) == providers[:1]
    assert sess.get_provider_options()[providers[0]]["schedule"] == [0, 1]
    meta = sess.get_modelmeta()
    assert isinstance(meta.custom_metadata_map, dict)
    assert len(sess.worker_slots) == 2


# -- results -------------------------------------------------------------------------------------


def test_output_selection_and_repeats(case, sess):
    x = feed()
    total, product = case.expect(x)
    assert_outputs(case, sess.run(None, x), [total, product])
    assert_outputs(case, sess.run([], x), [total, product])
    assert_outputs(case, sess.run(["prod", "sum", "prod"], x), [product, total, product])
    with pytest.raises(ValueError, match=r"Unknown output name\(s\) \['x'\]; the model's outputs"):
        sess.run(["sum", "x"], x)


def test_dtype_acceptance(case, sess):
    x = feed()
    assert_outputs(case, sess.run(None, {"a": x[0].tolist(), "b": x[1]}), case.expect(x))
    for dtype in case.extra_dtypes:
        ints = [np.ones((1, 4), dtype), np.full((1, 4), 2, dtype)]
        as_float = [v.astype(np.float32) for v in ints]
        assert_outputs(case, sess.run(None, ints), case.expect(as_float))
    for dtype in (np.float64, np.int64):
        with pytest.raises(
            TypeError, match=rf"input 'a': expected dtype .*float32.*, got {dtype.__name__}"
        ):
            sess.run(None, [x[0].astype(dtype), x[1]])


BAD_FEEDS = [
    ({"a": np.zeros((1, 4), np.float32)}, ValueError, r"Required inputs \['b'\] are missing"),
    (
        {"a": np.zeros((1, 4), np.float32), "b": np.zeros((1, 4), np.float32), "c": 1},
        ValueError,
        r"Unknown input name\(s\) \['c'\]; the model's inputs are \['a', 'b'\]",
    ),
    (
        [np.zeros(4, np.float32)] * 2,
        ValueError,
        r"input 'a': expected rank 2 \[.+, 4\], got rank 1",
    ),
    (
        [np.zeros((1, 5), np.float32)] * 2,
        ValueError,
        r"input 'a': expected shape \[.+, 4\], got \[1, 5\]",
    ),
    ([None, np.zeros((1, 4), np.float32)], ValueError, r"input 'a' is None"),
    (
        [np.zeros((1, 4), np.float32)],
        ValueError,
        r"input_feed has 1 values, the model has 2 inputs",
    ),
    ("frame", TypeError, r"input_feed must be a dict, a list/tuple or a numpy array"),
]


@pytest.mark.parametrize("bad, error, message", BAD_FEEDS)
def test_bad_feeds_fail_alike_in_every_mode(case, sess, bad, error, message):
    calls = [
        lambda: sess.run(None, bad),
        lambda: sess.submit(None, bad),
        lambda: sess.run_async(None, bad, lambda *args: None),
        lambda: sess.run_pipeline(bad),
        lambda: asyncio.run(sess.arun(None, bad)),
    ]
    for call in calls:
        with pytest.raises(error, match=message):
            call()
    assert sess.stats().submitted == 0  # refused before anything was queued
    assert_outputs(case, sess.run(None, feed()), case.expect(feed()))


# -- calling modes -------------------------------------------------------------------------------


def test_every_calling_mode_gives_the_reference_results(case, sess):
    frames = [feed(seed=i) for i in range(6)]
    wants = [case.expect(x) for x in frames]
    assert_outputs(case, sess.run(None, frames[0]), wants[0])
    for x, want in zip(frames, wants):
        assert_outputs(case, sess.submit(None, x).result(TIMEOUT), want)
    outcomes: list[Any] = []
    done = threading.Event()

    def callback(results, user_data, err):
        outcomes.append((user_data, results, err))
        if len(outcomes) == len(frames):
            done.set()

    for i, x in enumerate(frames):
        sess.run_async(None, x, callback, i)
    assert done.wait(TIMEOUT)
    assert [u for u, _, _ in outcomes] == list(range(len(frames)))  # sequential callbacks
    for (_, results, err), want in zip(outcomes, wants):
        assert err == ""
        assert_outputs(case, results, want)
    pipelined = [sess.run_pipeline(x, depth=2) for x in frames]
    assert pipelined[:2] == [None, None]
    for got, want in zip(pipelined[2:] + sess.drain_pipeline(), wants):
        assert_outputs(case, got, want)

    async def gather() -> list:
        return await asyncio.gather(*(sess.arun(None, x) for x in frames[:3]))

    for got, want in zip(asyncio.run(gather()), wants):
        assert_outputs(case, got, want)
    batch = [np.concatenate([x[k] for x in frames]) for k in range(2)]
    got = sess.run(["prod"], batch, {"ztu_modelrt_dispatch_batch": True})
    assert_outputs(case, got, [np.concatenate([w[1] for w in wants])])


def test_run_with_iobinding(case, sess):
    x = feed(seed=7)
    binding = sess.io_binding()
    binding.bind_cpu_input("a", x[0])
    binding.bind_cpu_input("b", x[1])
    binding.bind_output("sum", shape=[1, 4])
    binding.bind_output("prod", shape=[1, 4])
    sess.run_with_iobinding(binding)
    assert_outputs(case, binding.copy_outputs_to_cpu(), case.expect(x))
    y = feed(seed=8)
    binding.bind_cpu_input("a", y[0])
    binding.bind_cpu_input("b", y[1])
    values = sess.submit(None, binding).result(TIMEOUT)
    assert_outputs(case, [v.numpy() for v in values], case.expect(y))
    binding.close()


def test_a_failed_inference_is_typed_and_the_session_goes_on(case, sess):
    with pytest.raises(case.failure) as info:
        sess.run(None, case.fail())
    assert type(info.value) is case.failure
    with pytest.raises(case.failure):
        sess.submit(None, case.fail()).result(TIMEOUT)
    assert_outputs(case, sess.run(None, feed()), case.expect(feed()))


# -- lifecycle -----------------------------------------------------------------------------------


def test_close_is_idempotent_and_every_later_call_raises(case):
    sess = case.open()
    sess.close()
    sess.close()
    x = feed()
    for call in (
        lambda: sess.run(None, x),
        lambda: sess.submit(None, x),
        lambda: sess.run_async(None, x, lambda *args: None),
        lambda: sess.run_pipeline(x),
        lambda: sess.drain_pipeline(),
        lambda: asyncio.run(sess.arun(None, x)),
        lambda: sess.io_binding(),
        lambda: sess.run(None, x, {"ztu_modelrt_dispatch_batch": True}),
    ):
        with pytest.raises(SessionClosedError):
            call()
    assert sess.input_names == ["a", "b"]  # description stays readable


def test_a_hung_inference_at_close_breaks_the_session_and_nothing_is_lost(case, monkeypatch):
    """close() returns at its deadline although one inference never returns: the inference's
    callback gets the error, the backend is not freed under it, every later call raises."""
    sess = case.open(schedule=[0, 1])
    engine = sess._engine
    runner_type = type(engine._workers[0].runner)
    entered, release = threading.Event(), threading.Event()
    real_run = runner_type.run

    def hang_once(self, inputs, indices):
        if not entered.is_set():
            entered.set()
            release.wait(TIMEOUT)
        return real_run(self, inputs, indices)

    monkeypatch.setattr(runner_type, "run", hang_once)
    errors, delivered = [], threading.Event()
    sess.run_async(None, feed(), lambda results, data, err: (errors.append(err), delivered.set()))
    assert entered.wait(TIMEOUT)
    with pytest.warns(RuntimeWarning, match="leaked on purpose"):
        sess.close(timeout=0.2)
    assert delivered.wait(TIMEOUT) and "abandoned" in errors[0]
    with pytest.raises(SessionBrokenError):
        sess.run(None, feed())
    release.set()
    threads = [worker.thread for worker in engine._workers] + [engine._callbacks.thread]
    for thread in threads:
        thread.join(TIMEOUT)
    assert not any(thread.is_alive() for thread in threads) and len(errors) == 1
    # Free by hand what close() leaked on purpose, now that nothing runs inside it (the
    # emulator fixtures check that nothing is left).
    for worker in engine._workers:
        worker.runner.close()
    sess._backend.close()


# -- the fake itself -----------------------------------------------------------------------------


def test_the_fake_backend_is_driven_like_a_runtime():
    specs = [TensorSpec("x", (2,), np.float32)]
    backend = FakeBackend(lambda xs: [xs[0] * 3, xs[0]], specs, specs * 2, cores=(0, 1, 2))
    with backend.session() as sess:
        assert len(sess.worker_slots) == 3 and sess.get_providers() == ["FakeExecutionProvider"]
        np.testing.assert_array_equal(sess.run(None, [np.ones(2, np.float32)])[0], [3, 3])
        assert backend.calls == 1
    assert backend.closed == 1 and [r.closed for r in backend.runners] == [True] * 3
    short = FakeBackend(lambda xs: [xs[0]], specs, specs * 2)
    with short.session() as sess, pytest.raises(InferenceError, match="fn returned 1 outputs"):
        sess.run(None, [np.ones(2, np.float32)])
