"""The names the original library's 0.11 release added, which its users now write."""

from __future__ import annotations

import inspect
import json
import warnings

import pytest

import ez_rknn_async
from ez_rknn_async import (
    InferenceSession,
    RknnProviderOptions,
    Rknpu2ProviderOptions,
    make_provider_options,
    make_rknpu2_provider_options,
)

from onnx_models import add_mul_model
from rknn_emu import EmuModel, EmuTensor

pytest_plugins = ("rknn_fixtures",)

#: A 5-wide float16 image (native rows padded to 16 pixels), a 2-D input, an NC1HWC2 output.
PADDED = EmuModel(
    inputs=[EmuTensor("image", "float16", (1, 6, 5, 3)), EmuTensor("vec", "float16", (2, 7))],
    outputs=[EmuTensor("mask", "float16", (1, 3, 6, 5))],
)


def test_make_rknpu2_provider_options_and_the_typed_dicts():
    assert make_rknpu2_provider_options is make_provider_options
    assert RknnProviderOptions is Rknpu2ProviderOptions
    keywords = set(inspect.signature(make_provider_options).parameters) - {"unknown"}
    assert set(Rknpu2ProviderOptions.__annotations__) == keywords
    made = make_rknpu2_provider_options(schedule=[0, 1], tp_mode=None)
    assert set(made) <= keywords and made["schedule"] == [0, 1]
    for name in ("make_rknpu2_provider_options", "RknnProviderOptions", "Rknpu2ProviderOptions"):
        assert name in ez_rknn_async.__all__


def test_get_provider_options_has_onnxruntimes_shape_with_plain_values(add_mul_path):
    options = make_provider_options(schedule=[0, 0, 1], max_queue_size=5)
    with InferenceSession(add_mul_path, provider_options=options) as sess:
        got = sess.get_provider_options()
    assert list(got) == ["CPUExecutionProvider"]
    values = got["CPUExecutionProvider"]
    assert values["schedule"] == [0, 0, 1] and values["max_queue_size"] == 5
    assert values["layout"] == "nchw" and "tp_mode" not in values  # in force; unset left out
    assert json.loads(json.dumps(got)) == got  # plain values only


def test_rknn_provider_is_rknpu2_and_both_names_are_accepted(npu):
    model = PADDED.data()
    for providers in (["RKNPU2ExecutionProvider"], ["RKNNExecutionProvider"], None):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with InferenceSession(model, providers=providers) as sess:
                assert sess.get_providers() == ["RKNPU2ExecutionProvider"]
                values = sess.get_provider_options()["RKNPU2ExecutionProvider"]
                assert "priority" not in values  # RKNPU3's keys mean nothing here
    onnx = add_mul_model()
    for providers in (
        ["RKNPU2ExecutionProvider", "CPUExecutionProvider"],
        ["RKNNExecutionProvider"],
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # onnxruntime itself would warn about the name
            with InferenceSession(onnx, providers=providers) as sess:
                assert sess.get_providers() == ["CPUExecutionProvider"]


def test_node_args_show_the_runtimes_layout_and_padded_strides(npu):
    with InferenceSession(PADDED.data()) as sess:
        image, vec = sess.get_native_inputs()
        assert (image.layout, image.shape) == ("NHWC", [1, 6, 5, 3])
        assert image.strides == [6 * 16 * 3, 16 * 3, 3, 1]  # rows padded to w_stride 16
        assert (vec.layout, vec.strides) == ("UNDEFINED", [7, 1])
        (mask,) = sess.get_native_outputs()
        assert (mask.layout, mask.shape) == ("NC1HWC2", [1, 1, 6, 5, 8])
        assert mask.strides == [6 * 5 * 8, 6 * 5 * 8, 5 * 8, 8, 1]
        logical = sess.get_inputs()[0]  # the user's view: NCHW, dense
        assert (logical.layout, logical.shape, logical.strides) == (
            "NCHW",
            [1, 3, 6, 5],
            [90, 30, 5, 1],
        )
    nhwc = make_provider_options(layout="nhwc")
    with InferenceSession(PADDED.data(), provider_options=nhwc) as sess:
        assert (sess.get_inputs()[0].layout, sess.get_inputs()[0].strides) == (
            "NHWC",
            [90, 15, 3, 1],
        )


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_node_args_of_onnx_models_have_no_layout_and_dense_strides(backend):
    options = make_provider_options(backend=backend)
    with InferenceSession(add_mul_model(batch=3), provider_options=options) as sess:
        for arg in sess.get_inputs() + sess.get_outputs() + sess.get_native_inputs():
            assert (arg.layout, arg.shape, arg.strides) == ("UNDEFINED", [3, 4], [4, 1])
    with InferenceSession(add_mul_model(), provider_options=options) as sess:
        assert sess.get_inputs()[0].strides == []  # a dynamic batch fixes no strides
        assert [arg.layout for arg in sess.get_outputs()] == ["UNDEFINED"] * 2
