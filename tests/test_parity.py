"""Outputs equal plain onnxruntime's, for every feed form, output selection and calling mode."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import onnxruntime as ort
import pytest

from ez_rknn_async import InferenceSession, make_provider_options

from checks import assert_same


def reference(path):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def yolo_frames():
    rng = np.random.default_rng(0)
    return [rng.random((1, 3, 320, 320), dtype=np.float32) for _ in range(6)]


def test_yolo_all_modes_match_onnxruntime(yolo, yolo_frames):
    ref = reference(yolo)
    want = [ref.run(None, {"images": frame}) for frame in yolo_frames]
    with InferenceSession(yolo) as sess:
        assert sess.get_providers() == ["CPUExecutionProvider"]
        assert [a.name for a in sess.get_inputs()] == [a.name for a in ref.get_inputs()]
        assert sess.get_inputs()[0].shape == ref.get_inputs()[0].shape
        for frame, expected in zip(yolo_frames, want):
            assert_same(sess.run(None, {"images": frame}), expected)
        futures = [sess.submit(None, frame) for frame in yolo_frames]
        for future, expected in zip(futures, want):
            assert_same(future.result(timeout=60), expected)

        got = {}
        done = threading.Event()

        def callback(results, index, err):
            assert err == ""
            got[index] = results
            if len(got) == len(yolo_frames):
                done.set()

        for index, frame in enumerate(yolo_frames):
            sess.run_async(None, [frame], callback, index)
        assert done.wait(60)
        for index, expected in enumerate(want):
            assert_same(got[index], expected)

        piped = [sess.run_pipeline({"images": frame}, depth=2) for frame in yolo_frames]
        assert piped[:2] == [None, None]
        tail = sess.drain_pipeline()
        results = piped[2:] + tail
        assert len(results) == len(yolo_frames)
        for result, expected in zip(results, want):
            assert_same(result, expected)
        assert sess.drain_pipeline() == []


def test_yolo_dispatch_batch_equals_per_sample_runs(yolo, yolo_frames):
    ref = reference(yolo)
    batch = np.concatenate(yolo_frames[:3])
    want = np.concatenate([ref.run(None, {"images": f})[0] for f in yolo_frames[:3]])
    with InferenceSession(yolo) as sess:
        (got,) = sess.run(None, {"images": batch}, {"ztu_modelrt_dispatch_batch": True})
        run_options = ort.RunOptions()
        run_options.add_run_config_entry("ztu_modelrt_dispatch_batch", "1")
        (again,) = sess.run(None, {"images": batch}, run_options)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(again, want)


@pytest.mark.parametrize(
    "feed_form", ["dict", "list", "tuple", "nested_lists", "non_contiguous", "single_batch"]
)
def test_add_mul_feed_forms(add_mul_path, feed_form):
    rng = np.random.default_rng(1)
    a = rng.random((2, 4), dtype=np.float32)
    b = rng.random((2, 4), dtype=np.float32)
    feeds = {
        "dict": {"a": a, "b": b},
        "list": [a, b],
        "tuple": (a, b),
        "nested_lists": {"a": a.tolist(), "b": b.tolist()},
        "non_contiguous": {"a": np.asfortranarray(a), "b": b[:, ::-1].copy()[:, ::-1]},
        "single_batch": {"a": a[:1], "b": b[:1]},
    }
    feed = feeds[feed_form]
    ref_feed = feed if isinstance(feed, dict) else {"a": feed[0], "b": feed[1]}
    want = reference(add_mul_path).run(None, ref_feed)
    with InferenceSession(add_mul_path) as sess:
        assert_same(sess.run(None, feed), want)
        assert_same(sess.submit([], feed).result(timeout=10), want)


def test_output_subsets_order_and_duplicates(add_mul_path):
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    ref = reference(add_mul_path)
    with InferenceSession(add_mul_path) as sess:
        for names in (["prod"], ["prod", "sum"], ["sum", "sum"], None, []):
            want = ref.run(names, {"a": a, "b": a}) if names else ref.run(None, {"a": a, "b": a})
            assert_same(sess.run(names, {"a": a, "b": a}), want)
            assert_same(sess.submit(names, [a, a]).result(timeout=10), want)
        assert sess.input_names == ["a", "b"] and sess.output_names == ["sum", "prod"]


def test_int64_and_float16_inputs(mixed_path):
    ids = np.array([[1, 2, 3], [4, 5, 2**40]], dtype=np.int64)
    h = np.array([[0.5, 1.5, -2.25], [3.0, 65504 / 2, 0.0]], dtype=np.float16)
    want = reference(mixed_path).run(None, {"ids": ids, "h": h})
    with InferenceSession(mixed_path) as sess:
        got = sess.run(None, {"ids": ids, "h": h})
        assert [g.dtype for g in got] == [np.int64, np.float16, np.float32]
        assert_same(got, want)
        assert [a.type for a in sess.get_inputs()] == ["tensor(int64)", "tensor(float16)"]
        # nested lists are converted to the input's own type, as onnxruntime does
        assert_same(sess.run(None, {"ids": ids.tolist(), "h": h.tolist()}), want)


def test_dynamic_batch_and_hw_with_0d_output(dynamic_path):
    ref = reference(dynamic_path)
    rng = np.random.default_rng(2)
    with InferenceSession(dynamic_path) as sess:
        assert sess.get_inputs()[0].shape == ["N", 3, "H", "W"]
        for shape in [(1, 3, 8, 8), (3, 3, 5, 17), (2, 3, 1, 1)]:
            img = rng.random(shape, dtype=np.float32)
            assert_same(sess.run(None, img), ref.run(None, {"img": img}))
        batch = rng.random((4, 3, 6, 6), dtype=np.float32)
        pooled, total = sess.run(None, batch, {"ztu_modelrt_dispatch_batch": True})
        np.testing.assert_allclose(pooled, ref.run(["pooled"], {"img": batch})[0], rtol=1e-6)
        want_totals = [ref.run(["total"], {"img": batch[i : i + 1]})[0] for i in range(4)]
        assert total.shape == (4,)
        np.testing.assert_array_equal(total, np.stack(want_totals))


def test_arun_matches_run(add_mul_path):
    a = np.ones((3, 4), np.float32)

    async def main(sess):
        return await asyncio.gather(*(sess.arun(None, {"a": a * i, "b": a}) for i in range(20)))

    ref = reference(add_mul_path)
    opts = make_provider_options(max_queue_size=1)
    with InferenceSession(add_mul_path, provider_options=opts) as sess:
        results = asyncio.run(main(sess))
    for i, got in enumerate(results):
        assert_same(got, ref.run(None, {"a": a * i, "b": a}))


def test_model_bytes_and_metadata(add_mul_path):
    with open(add_mul_path, "rb") as file:
        data = file.read()
    with InferenceSession(data) as sess:
        meta = sess.get_modelmeta()
        assert meta.producer_name == "ez-rknn-tests"
        assert meta.custom_metadata_map == {"purpose": "tests"}
        assert sess.backend_name == "onnxruntime"


def test_sess_options_honoured_except_threads(add_mul_path, tmp_path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 7
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    with InferenceSession(add_mul_path, sess_options=options) as sess:
        sess.run(None, [np.ones((1, 4), np.float32)] * 2)
    assert (tmp_path / "optimized.onnx").exists()
    assert options.intra_op_num_threads == 7  # the caller's object is left as it was
