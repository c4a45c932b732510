"""Every calling mode and option of the public API, end to end on the emulated NPU."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from ez_rknn_async import InferenceSession, make_provider_options

from rknn_emu import EmuModel, EmuTensor, reference

pytest_plugins = ("rknn_fixtures",)

MODEL = EmuModel(
    inputs=[EmuTensor("image", "int8", (1, 4, 4, 3), zp=1, scale=0.05)],
    outputs=[
        EmuTensor("logits", "float16", (1, 6)),
        EmuTensor("mask", "int8", (1, 2, 4, 4), scale=0.1),
    ],
    gain=0.5,
)
OPTIONS = {
    "default": {},
    "schedule": {"schedule": [0, 1, 2]},
    "weighted schedule": {"schedule": [0, 0, 1]},
    "tp_mode": {"tp_mode": "0,1,2", "threads_per_core": 2},
    "no dup": {"disable_dup_context": True, "threads_per_core": 2},
    "pacing, completion order": {"enable_pacing": True, "sequential_callbacks": False},
    "tiny queue": {"max_queue_size": 1, "submit_timeout_ms": 5000},
    "nhwc": {"layout": "nhwc"},
}


def frames(count, layout="nchw"):
    rng = np.random.default_rng(count)
    shape = (1, 4, 4, 3) if layout == "nhwc" else (1, 3, 4, 4)
    return [rng.uniform(-3, 3, shape).astype(np.float32) for _ in range(count)]


def expected(frame, layout="nchw"):
    nchw = frame.transpose(0, 3, 1, 2) if layout == "nhwc" else frame
    return reference(MODEL, [nchw])


def check(results, frame, layout="nchw"):
    for got, want in zip(results, expected(frame, layout)):
        np.testing.assert_array_equal(got, want)


@pytest.fixture(params=list(OPTIONS), ids=list(OPTIONS))
def case(request, npu):
    """(session, layout) for each option set, on an RK3588 with 0.5 ms per inference."""
    npu.use("rk3588", compute_us=500)
    options = OPTIONS[request.param]
    with InferenceSession(MODEL.data(), provider_options=make_provider_options(**options)) as s:
        yield s, options.get("layout", "nchw")
    assert npu.live_contexts == 0


def test_run(case):
    sess, layout = case
    for frame in frames(6, layout):
        check(sess.run(None, {"image": frame}), frame, layout)
        (mask,) = sess.run(["mask"], [frame])
        np.testing.assert_array_equal(mask, expected(frame, layout)[1])


def test_run_async(case):
    sess, layout = case
    inputs = frames(12, layout)
    results = {}
    done = threading.Semaphore(0)

    def callback(outputs, index, err):
        results[index] = (outputs, err)
        done.release()

    for index, frame in enumerate(inputs):
        sess.run_async(None, frame, callback, index)
    for _ in inputs:
        assert done.acquire(timeout=10)
    for index, frame in enumerate(inputs):
        outputs, err = results[index]
        assert err == ""
        check(outputs, frame, layout)


def test_run_pipeline_and_drain(case):
    sess, layout = case
    inputs = frames(10, layout)
    returned = [sess.run_pipeline(frame, depth=3) for frame in inputs]
    assert returned[:3] == [None, None, None]
    returned = returned[3:] + sess.drain_pipeline()
    assert len(returned) == len(inputs)
    for outputs, frame in zip(returned, inputs):
        check(outputs, frame, layout)


def test_submit_and_arun(case):
    sess, layout = case
    inputs = frames(8, layout)
    futures = [sess.submit(None, [frame]) for frame in inputs]
    for future, frame in zip(futures, inputs):
        check(future.result(timeout=10), frame, layout)

    async def main():
        return await asyncio.gather(*(sess.arun(None, [frame]) for frame in inputs))

    for outputs, frame in zip(asyncio.run(main()), inputs):
        check(outputs, frame, layout)


def test_dispatch_batch(case):
    sess, layout = case
    inputs = frames(5, layout)
    batch = np.concatenate(inputs)
    logits, mask = sess.run(None, [batch], {"ztu_modelrt_dispatch_batch": True})
    assert logits.shape == (5, 6) and mask.shape == (5, 2, 4, 4)
    for index, frame in enumerate(inputs):
        want_logits, want_mask = expected(frame, layout)
        np.testing.assert_array_equal(logits[index : index + 1], want_logits)
        np.testing.assert_array_equal(mask[index : index + 1], want_mask)


def test_closed_session_raises_at_once(npu):
    sess = InferenceSession(MODEL.data())
    sess.close()
    sess.close()
    with pytest.raises(RuntimeError):
        sess.run(None, frames(1)[0])


def test_output_selection_repeats_and_read_only_inputs(npu):
    """Each requested output is its own array (a name asked twice gets a copy), in the order
    asked, also after other selections were served; read-only inputs are read as they are."""
    npu.use("rk3588")
    frame = frames(1)[0]
    frame.setflags(write=False)
    logits, mask = expected(frame)
    with InferenceSession(MODEL.data(), provider_options=make_provider_options(schedule=[0])) as s:
        for names, want in (
            (["mask", "logits", "mask"], [mask, logits, mask]),
            (["logits"], [logits]),
            (["mask", "mask"], [mask, mask]),
            (None, [logits, mask]),
            (["mask", "logits", "mask"], [mask, logits, mask]),
        ):
            got = s.run(names, {"image": frame})
            assert len(got) == len(want)
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, w)
            assert len({id(g) for g in got}) == len(got)
            assert all(g.flags.writeable and g.flags.c_contiguous for g in got)
