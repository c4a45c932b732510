"""Dynamic-shape RKNN models (rknn-toolkit2 ``dynamic_input``) on the emulated NPU.

Why: the original checked feeds against the one queried shape, so such models could not run at
their other shapes (SPEC.md 15.6). Every allowed shape must run in every calling mode, bit-exact,
with ``rknn_set_input_shapes`` only when a context's shape changes; other shapes are refused
before anything is queued.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading

import numpy as np
import pytest

from ez_rknn_async import InferenceSession, OrtValue, make_provider_options
from ez_rknn_async.backends.rknn.abi import (
    CONTEXT_TYPE,
    Query,
    RknnInputRange,
    RknnTensorAttr,
    TensorFormat,
)

from rknn_emu import EmuModel, EmuTensor, reference, to_nchw

pytest_plugins = ("rknn_fixtures",)

MODEL = EmuModel(
    inputs=[
        EmuTensor(
            "image", "int8", (1, 4, 4, 3), zp=1, scale=0.05, shapes=((1, 8, 6, 3), (2, 4, 4, 3))
        ),
        EmuTensor("bias", "float32", (1, 5)),
    ],
    outputs=[
        EmuTensor("logits", "float16", (1, 6)),
        EmuTensor("mask", "int8", (1, 2, 4, 4), scale=0.1),
    ],
    gain=0.5,
)
SHAPES = [to_nchw(dims) for dims in MODEL.inputs[0].allowed]  # (1,3,4,4) (1,3,8,6) (2,3,4,4)
THREE_CORES = {"schedule": [0, 1, 2]}


def session(**options):
    return InferenceSession(MODEL.data(), provider_options=make_provider_options(**options))


def frames(count, layout="nchw", seed=0):
    """Feeds cycling through every allowed shape, frame by frame."""
    rng = np.random.default_rng(seed)
    result = []
    for k in range(count):
        shape = SHAPES[k % len(SHAPES)]
        image = rng.uniform(-3, 3, shape).astype(np.float32)
        if layout == "nhwc":
            image = np.ascontiguousarray(image.transpose(0, 2, 3, 1))
        result.append({"image": image, "bias": rng.uniform(-1, 1, (1, 5)).astype(np.float32)})
    return result


def check(results, feed, layout="nchw"):
    image = feed["image"].transpose(0, 3, 1, 2) if layout == "nhwc" else feed["image"]
    want = reference(MODEL, [image, feed["bias"]])
    assert len(results) == len(want)
    for got, expected in zip(results, want):
        assert got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


def test_dynamic_dims_show_as_none(npu):
    with session() as sess:
        assert [i.shape for i in sess.get_inputs()] == [[None, 3, None, None], [1, 5]]
        assert [o.shape for o in sess.get_outputs()] == [[1, 6], [1, 2, None, None]]
    with session(layout="nhwc") as sess:
        assert sess.get_inputs()[0].shape == [None, None, None, 3]


def test_static_models_never_set_shapes(npu):
    static = EmuModel(
        inputs=[EmuTensor("x", "float32", (1, 4, 4, 3))],
        outputs=[EmuTensor("y", "float32", (1, 8))],
    )
    with InferenceSession(static.data()) as sess:
        assert sess.get_inputs()[0].shape == [1, 3, 4, 4]
        sess.run(None, {"x": np.ones((1, 3, 4, 4), np.float32)})
    assert npu.calls("rknn_set_input_shapes") == 0


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "nchw_software"])
def test_run_every_shape(npu, layout):
    with session(layout=layout, **THREE_CORES) as sess:
        for feed in frames(9, layout):
            check(sess.run(None, feed), feed, layout)
            (mask,) = sess.run(["mask"], feed)
            np.testing.assert_array_equal(mask, check_mask(feed, layout))


def check_mask(feed, layout):
    image = feed["image"].transpose(0, 3, 1, 2) if layout == "nhwc" else feed["image"]
    return reference(MODEL, [image, feed["bias"]])[1]


def test_submit_across_three_cores(npu):
    npu.use("rk3588", compute_us=300)
    with session(**THREE_CORES) as sess:
        feeds = frames(30)
        futures = [sess.submit(None, feed) for feed in feeds]
        for future, feed in zip(futures, feeds):
            check(future.result(10), feed)
    assert all(npu.core_runs(core) > 0 for core in range(3))


def test_run_async_across_three_cores(npu):
    npu.use("rk3588", compute_us=300)
    feeds = frames(30, seed=1)
    results = {}
    done = threading.Semaphore(0)

    def callback(outputs, index, err):
        results[index] = (outputs, err)
        done.release()

    with session(**THREE_CORES) as sess:
        for index, feed in enumerate(feeds):
            sess.run_async(None, feed, callback, index)
        for _ in feeds:
            assert done.acquire(timeout=10)
    for index, feed in enumerate(feeds):
        outputs, err = results[index]
        assert err == ""
        check(outputs, feed)


def test_arun(npu):
    async def main(sess, feeds):
        return await asyncio.gather(*(sess.arun(None, feed) for feed in feeds))

    feeds = frames(12, seed=2)
    with session(**THREE_CORES) as sess:
        for outputs, feed in zip(asyncio.run(main(sess, feeds)), feeds):
            check(outputs, feed)


def test_run_pipeline_switches_shapes_frame_by_frame(npu):
    npu.use("rk3588", compute_us=300)
    feeds = frames(31, seed=3)
    with session(**THREE_CORES) as sess:
        got = [sess.run_pipeline(feed, depth=3) for feed in feeds]
        assert got[:3] == [None, None, None]
        got = got[3:] + sess.drain_pipeline()
    assert len(got) == len(feeds)
    for outputs, feed in zip(got, feeds):
        check(outputs, feed)


def test_set_input_shapes_only_on_shape_change(npu):
    with session(schedule=[0]) as sess:
        before = npu.calls("rknn_set_input_shapes")
        a, b, c = frames(3, seed=4)
        for feed in (a, a, a, b, b, c, c, a):
            check(sess.run(None, feed), feed)
        # first run (a fresh context's shape is unknown), then a->b, b->c, c->a
        assert npu.calls("rknn_set_input_shapes") - before == 4
        assert npu.calls("rknn_run") >= 8


def test_each_context_tracks_its_own_shape(npu):
    with session(**THREE_CORES) as sess:
        before = npu.calls("rknn_set_input_shapes")
        feed = frames(1, seed=5)[0]
        for future in [sess.submit(None, feed) for _ in range(30)]:
            check(future.result(10), feed)
        assert npu.calls("rknn_set_input_shapes") - before <= 3  # once per context at most


@pytest.mark.parametrize("mode", ["run", "submit", "run_async", "run_pipeline", "dispatch_batch"])
def test_shape_outside_the_ranges_is_refused_before_queuing(npu, mode):
    feed = {"image": np.zeros((1, 3, 5, 5), np.float32), "bias": np.zeros((1, 5), np.float32)}
    with session(**THREE_CORES) as sess:
        before = npu.calls("rknn_inputs_set"), npu.calls("rknn_set_input_shapes")
        queued = sess.stats().submitted, sess.stats().inline_runs
        call = {
            "run": lambda: sess.run(None, feed),
            "submit": lambda: sess.submit(None, feed),
            "run_async": lambda: sess.run_async(None, feed, lambda *a: None),
            "run_pipeline": lambda: sess.run_pipeline(feed),
            "dispatch_batch": lambda: sess.run(
                None,
                {name: np.concatenate([value] * 2) for name, value in feed.items()},
                {"ztu_modelrt_dispatch_batch": True},
            ),
        }[mode]
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert "'image'" in message and "[1, 3, 5, 5]" in message
        for shape in SHAPES:
            assert str(list(shape)) in message
        assert "NCHW" in message
        assert (npu.calls("rknn_inputs_set"), npu.calls("rknn_set_input_shapes")) == before
        assert (sess.stats().submitted, sess.stats().inline_runs) == queued  # nothing queued
        good = frames(1)[0]
        check(sess.run(None, good), good)  # the session goes on


def test_refusal_lists_nhwc_shapes_in_nhwc_layout(npu):
    feed = {"image": np.zeros((1, 8, 8, 3), np.float32), "bias": np.zeros((1, 5), np.float32)}
    with session(layout="nhwc") as sess, pytest.raises(ValueError, match=r"\[1, 8, 6, 3\]"):
        sess.run(None, feed)


def test_zero_copy_is_refused(npu):
    with session() as sess, pytest.raises(ValueError, match="dynamic-shape"):
        OrtValue.ortvalue_from_numpy(
            np.zeros((1, 3, 4, 4), np.int8), "rknpu2", session=sess, name="image", io_kind="input"
        )


# ---------------------------------------------------------------- the emulator's side


class Raw:
    """One context of the emulated library, called directly (rules the binding never breaks)."""

    def __init__(self, npu, model):
        self.lib = npu.lib
        self.ctx = CONTEXT_TYPE()
        data = model.data()
        assert self.lib.rknn_init(ctypes.byref(self.ctx), data, len(data), 0, None) == 0

    def query(self, command, info, size=None):
        size = ctypes.sizeof(info) if size is None else size
        return self.lib.rknn_query(self.ctx, int(command), ctypes.byref(info), size)

    def set_shapes(self, shapes, names=("image", "bias")):
        attrs = (RknnTensorAttr * len(shapes))()
        for index, (attr, dims) in enumerate(zip(attrs, shapes)):
            attr.index = index
            attr.name = names[index].encode()
            attr.n_dims = len(dims)
            attr.dims[: len(dims)] = dims
            attr.fmt = TensorFormat.NHWC if len(dims) == 4 else TensorFormat.UNDEFINED
        return self.lib.rknn_set_input_shapes(self.ctx, len(shapes), attrs)

    def close(self):
        assert self.lib.rknn_destroy(self.ctx) == 0


def test_emulator_ranges_and_current_attrs(npu):
    raw = Raw(npu, MODEL)
    try:
        info = RknnInputRange()
        assert raw.query(Query.INPUT_DYNAMIC_RANGE, info) == 0
        assert (info.shape_number, info.n_dims, info.fmt) == (3, 4, TensorFormat.NHWC)
        assert [tuple(info.dyn_range[s * 16 : s * 16 + 4]) for s in range(3)] == list(
            MODEL.inputs[0].allowed
        )
        info.index = 1
        assert raw.query(Query.INPUT_DYNAMIC_RANGE, info) == 0
        assert info.shape_number == 1
        assert raw.set_shapes([(1, 8, 6, 3), (1, 5)]) == 0
        attr = RknnTensorAttr()
        attr.index = 1
        assert raw.query(Query.CURRENT_OUTPUT_ATTR, attr) == 0
        assert tuple(attr.dims[:4]) == (1, 2, 8, 6)
        attr.index = 0
        assert raw.query(Query.CURRENT_INPUT_ATTR, attr) == 0
        assert tuple(attr.dims[:4]) == (1, 8, 6, 3)
        assert raw.query(Query.INPUT_ATTR, attr) == 0
        assert tuple(attr.dims[:4]) == (1, 4, 4, 3)
    finally:
        raw.close()


def test_emulator_static_model_answers_no_shapes(npu):
    """Boards answer INPUT_DYNAMIC_RANGE of a static model with shape_number 0: the original
    library, developed on boards, treats any shape_number > 0 as a dynamic model and calls
    rknn_set_input_shapes before each run (a violation on a static model)."""
    static = EmuModel([EmuTensor("image", "int8", (1, 4, 4, 3))], [EmuTensor("y", "int8", (1, 2))])
    raw = Raw(npu, static)
    try:
        info = RknnInputRange()
        assert raw.query(Query.INPUT_DYNAMIC_RANGE, info) == 0
        assert (info.shape_number, info.n_dims, info.name) == (0, 4, b"image")
    finally:
        raw.close()


def test_emulator_counts_misuse_as_violations(npu):
    raw = Raw(npu, MODEL)
    try:
        assert raw.query(Query.INPUT_DYNAMIC_RANGE, RknnInputRange(), size=100) == -5
        assert raw.set_shapes([(1, 5, 5, 3), (1, 5)]) == -5  # not an allowed shape
        assert raw.set_shapes([(1, 4, 4, 3)]) == -5  # one attr per input
        assert raw.set_shapes([(1, 4, 4, 3), (1, 5)], names=("image", "other")) == -5
        assert npu.violations == 4
        npu.expected_violations = 4
    finally:
        raw.close()
