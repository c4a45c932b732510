"""Bad input: a clear error naming what was wrong, raised before queuing; the session goes on."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ez_rknn_async import InferenceSession, SessionClosedError, make_provider_options

A = np.ones((2, 4), np.float32)


@pytest.fixture
def sess(add_mul_path):
    with InferenceSession(add_mul_path) as session:
        yield session
        # after every error the session still answers correctly
        np.testing.assert_array_equal(session.run(["sum"], [A, A])[0], A + A)


@pytest.mark.parametrize(
    "feed, error, message",
    [
        ({"a": A}, ValueError, r"Required inputs \['b'\] are missing from input feed \['a'\]"),
        ({}, ValueError, r"Required inputs \['a', 'b'\] are missing"),
        ({"a": A, "c": A}, ValueError, r"unknown input names \['c'\]"),
        ([A], ValueError, "input_feed has 1 values, the model has 2 inputs"),
        (A, ValueError, "a single array was given, but the model has 2 inputs"),
        ("a", TypeError, "input_feed must be a dict, a list/tuple or a numpy array, got str"),
        (
            {"a": A.astype(np.float64), "b": A},
            TypeError,
            r"input 'a': expected dtype float32 \(tensor\(float\)\), got float64",
        ),
        (
            {"a": A, "b": np.ones(4, np.float32)},
            ValueError,
            r"input 'b': expected rank 2 \[N, 4\], got rank 1 \[4\]",
        ),
        (
            {"a": np.ones((2, 5), np.float32), "b": A},
            ValueError,
            r"input 'a': expected shape \[N, 4\], got \[2, 5\]",
        ),
        ({"a": [[1, 2, 3, "x"]], "b": A}, TypeError, "input 'a': cannot convert list"),
    ],
)
def test_bad_feeds_in_every_mode(sess, feed, error, message):
    with pytest.raises(error, match=message):
        sess.run(None, feed)
    with pytest.raises(error, match=message):
        sess.submit(None, feed)
    with pytest.raises(error, match=message):
        sess.run_async(None, feed, lambda *args: None)
    with pytest.raises(error, match=message):
        sess.run_pipeline(feed)
    assert len(sess._pipeline) == 0


@pytest.mark.parametrize(
    "names, error, message",
    [
        (
            ["nope", "sum", "also"],
            ValueError,
            r"Unknown output name\(s\) \['nope', 'also'\]; "
            r"the model's outputs are \['sum', 'prod'\]",
        ),
        ("sum", TypeError, "output_names must be a list of output names or None, not a string"),
        (5, TypeError, "output_names must be a list of names or None, got int"),
    ],
)
def test_bad_output_names(sess, names, error, message):
    with pytest.raises(error, match=message):
        sess.run(names, [A, A])
    with pytest.raises(error, match=message):
        sess.submit(names, [A, A])


def test_run_async_and_submit_reject_dispatch_batch(sess):
    with pytest.raises(ValueError, match="run_async does not support ztu_modelrt_dispatch_batch"):
        sess.run_async(None, [A, A], lambda *a: None, None, {"ztu_modelrt_dispatch_batch": True})
    with pytest.raises(ValueError, match="submit does not support ztu_modelrt_dispatch_batch"):
        sess.submit(None, [A, A], {"ztu_modelrt_dispatch_batch": "yes"})
    with pytest.raises(ValueError, match="'ztu_modelrt_dispatch_batch' must be a boolean"):
        sess.run(None, [A, A], {"ztu_modelrt_dispatch_batch": "perhaps"})
    with pytest.raises(TypeError, match="run_options must be None, a dict or an onnxruntime"):
        sess.run(None, [A, A], 42)


def test_dispatch_batch_errors(sess):
    with pytest.raises(ValueError, match="batch size mismatch across inputs"):
        sess.run(None, [A, A[:1]], {"ztu_modelrt_dispatch_batch": True})
    empty = np.ones((0, 4), np.float32)
    with pytest.raises(ValueError, match="batch size must be greater than 0"):
        sess.run(None, [empty, empty], {"ztu_modelrt_dispatch_batch": True})


def test_callback_and_depth_checks(sess):
    with pytest.raises(TypeError, match="callback must be callable, got NoneType"):
        sess.run_async(None, [A, A], None)
    with pytest.raises(ValueError, match="pipeline depth must be > 0, got 0"):
        sess.run_pipeline([A, A], depth=0)
    with pytest.raises(TypeError, match="depth must be an integer, got str"):
        sess.run_pipeline([A, A], depth="3")


def test_fixed_batch_model_rejects_dispatch(tmp_path):
    from onnx_models import add_mul_model, save

    path = save(tmp_path, "fixed.onnx", add_mul_model(batch=2))
    with (
        InferenceSession(path) as sess,
        pytest.raises(
            ValueError, match="needs a batch dimension of 1 or dynamic; input 'a' has \\[2, 4\\]"
        ),
    ):
        sess.run(None, [A, A], {"ztu_modelrt_dispatch_batch": True})


def test_constructor_errors(tmp_path, add_mul_path):
    with pytest.raises(FileNotFoundError, match="Failed to open model file: .*missing.onnx"):
        InferenceSession(str(tmp_path / "missing.onnx"))
    with pytest.raises(TypeError):
        InferenceSession(12)
    with pytest.raises(ValueError, match="Unknown provider_options key: 'shedule'"):
        InferenceSession(add_mul_path, provider_options={"shedule": [0]})
    with pytest.raises(TypeError, match="use_weight_from must be an InferenceSession or None"):
        InferenceSession(add_mul_path, use_weight_from="other")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x01 not a model")
    with pytest.raises(ValueError, match="(?i)protobuf|invalid|load") as info:
        InferenceSession(str(garbage))
    assert str(garbage) in str(info.value)
    assert type(info.value.__cause__).__module__.startswith("onnxruntime")


def test_every_call_raises_after_close(add_mul_path):
    sess = InferenceSession(add_mul_path, provider_options=make_provider_options(schedule=[0]))
    sess.close()
    sess.close()  # idempotent
    calls = [
        lambda: sess.run(None, [A, A]),
        lambda: sess.submit(None, [A, A]),
        lambda: sess.run_async(None, [A, A], lambda *a: None),
        lambda: sess.run_pipeline([A, A]),
        lambda: sess.drain_pipeline(),
    ]
    for call in calls:
        with pytest.raises(SessionClosedError, match="closed"):
            call()
    assert sess.get_inputs()[0].name == "a"  # metadata stays readable
    assert not [t for t in threading.enumerate() if t.name.startswith("EzRknn")]


def test_use_weight_from_shares_the_onnxruntime_session(add_mul_path):
    with InferenceSession(add_mul_path) as owner:
        with InferenceSession(add_mul_path, use_weight_from=owner) as sharer:
            assert sharer._backend._sessions is owner._backend._sessions
            np.testing.assert_array_equal(sharer.run(["prod"], [A, A])[0], A * A)
        owner.close()
        with pytest.raises(SessionClosedError):
            InferenceSession(add_mul_path, use_weight_from=owner)
