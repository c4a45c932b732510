"""onnxruntime drop-in gaps, each measured against onnxruntime itself on the same model."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from ez_rknn_async import InferenceSession, make_provider_options
from ez_rknn_async.tensors import TensorSpec
from ez_rknn_async.testing import FakeBackend

CPU = ["CPUExecutionProvider"]
A = np.arange(8, dtype=np.float32).reshape(2, 4)


def scalar_model() -> bytes:
    """y = Identity(x) with a 0-D float x: where a bare Python value could pass as a tensor."""
    t = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", t, [])],
        [helper.make_tensor_value_info("y", t, [])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.fixture(params=["onnxruntime", "openvino"])
def pair(request, add_mul_path):
    """(onnxruntime's own session, ours) on add_mul, ours on each CPU backend."""
    options = make_provider_options(backend=request.param, schedule=[0, 1])
    with InferenceSession(add_mul_path, provider_options=options) as ours:
        yield ort.InferenceSession(add_mul_path, providers=CPU), ours


def test_an_unknown_input_name_is_refused_as_onnxruntime_refuses_it(pair):
    reference, ours = pair
    feed = {"a": A, "b": A, "c": A}
    with pytest.raises(Exception, match="Invalid input name: c"):
        reference.run(None, feed)
    message = r"Unknown input name\(s\) \['c'\]; the model's inputs are \['a', 'b'\]"
    for call in (
        lambda: ours.run(None, feed),
        lambda: ours.submit(None, feed),
        lambda: ours.run_pipeline(feed),
        lambda: ours.run_async(None, feed, lambda *a: None),
    ):
        with pytest.raises(ValueError, match=message):
            call()
    np.testing.assert_array_equal(ours.run(None, {"a": A, "b": A})[0], 2 * A)


def test_none_as_an_input_value_is_refused_naming_the_input(pair):
    reference, ours = pair
    with pytest.raises(Exception, match="Missing Input: a"):
        reference.run(None, {"a": None, "b": A})
    for feed in ({"a": None, "b": A}, [None, A]):
        with pytest.raises(
            ValueError, match=r"input 'a' is None; give it an array of \[(N|\?), 4\]"
        ):
            ours.run(None, feed)
    with pytest.raises(ValueError, match="input 'a' is None"):
        ours.io_binding().bind_cpu_input("a", None)


@pytest.mark.parametrize("value", [True, np.False_])
def test_a_bare_bool_is_refused_as_onnxruntime_refuses_it(value):
    model = scalar_model()
    with pytest.raises(RuntimeError, match="Unable to handle object of type"):
        ort.InferenceSession(model, providers=CPU).run(None, {"x": value})
    with InferenceSession(model) as ours:
        with pytest.raises(TypeError, match=r"input 'x': got the bool (True|False), not a tensor"):
            ours.run(None, {"x": value})
        assert ours.run(None, {"x": np.float32(2.5)})[0] == 2.5  # other scalars still convert


def test_bools_inside_a_nested_list_convert_as_in_onnxruntime(pair):
    reference, ours = pair
    rows = [[True, False, True, True], [False, False, True, False]]
    want = reference.run(None, {"a": rows, "b": A})
    for got, expected in zip(ours.run(None, {"a": rows, "b": A}), want):
        np.testing.assert_array_equal(got, expected)


def test_bind_output_without_shape_on_a_dynamic_output_is_sized_at_run_time(pair):
    reference, ours = pair
    theirs, mine = reference.io_binding(), ours.io_binding()
    for batch in (2, 5, 1):
        a = np.random.default_rng(batch).random((batch, 4), dtype=np.float32)
        for binding in (theirs, mine):
            binding.bind_cpu_input("a", a)
            binding.bind_cpu_input("b", a)
            binding.bind_output("sum")
            binding.bind_output("prod")
        reference.run_with_iobinding(theirs)
        ours.run_with_iobinding(mine)
        want = theirs.copy_outputs_to_cpu()
        got = mine.copy_outputs_to_cpu()
        assert [g.shape for g in got] == [w.shape for w in want] == [(batch, 4)] * 2
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
        assert [v.shape() for v in mine.get_outputs()] == [[batch, 4]] * 2
    mine.bind_cpu_input("a", 3 * A)
    mine.bind_cpu_input("b", A)
    values = ours.submit(None, mine).result(30)  # the values of this run, sized by it
    np.testing.assert_array_equal(values[1].numpy(), 3 * A * A)
    mine.close()


def test_run_with_iobinding_takes_the_originals_keyword_too(pair):
    _, ours = pair
    binding = ours.io_binding()
    binding.bind_cpu_input("a", A)
    binding.bind_cpu_input("b", A)
    binding.bind_output("sum", shape=[2, 4])
    binding.bind_output("prod", shape=[2, 4])
    ours.run_with_iobinding(io_binding=binding)
    np.testing.assert_array_equal(binding.copy_outputs_to_cpu()[0], 2 * A)
    ours.run_with_iobinding(iobinding=binding)
    with pytest.raises(TypeError, match="takes one IOBinding"):
        ours.run_with_iobinding(binding, io_binding=binding)
    with pytest.raises(TypeError, match="takes one IOBinding"):
        ours.run_with_iobinding()
    binding.close()


def test_a_runtime_that_needs_sizes_up_front_keeps_the_clear_error():
    """RKNN's case (its backend does not size outputs at run time): bind_output asks for shape=."""
    specs = [TensorSpec(name, (None, 4), np.float32) for name in ("a", "b")]
    outputs = [TensorSpec(name, (None, 4), np.float32) for name in ("sum", "prod")]
    backend = FakeBackend(lambda xs: [xs[0] + xs[1], xs[0] * xs[1]], specs, outputs)
    backend.sizes_outputs_at_run = False
    with backend.session() as sess, sess.io_binding() as binding:
        with pytest.raises(
            ValueError, match=r"output 'sum' has the dynamic shape \[\?, 4\]; pass shape="
        ):
            binding.bind_output("sum")
        binding.bind_output("sum", shape=[2, 4])  # with a shape it binds
