"""``ez-rknn compare`` end to end: an .rknn on the emulated NPU against the same network in ONNX,
and a real PP-OCR model against its fp16 self, in-process through ``main``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ez_rknn_async import NodeArg
from ez_rknn_async.cli.compare import JSON_SCHEMA
from ez_rknn_async.cli.errors import ExitCode, MissingDependencyError, UsageError
from ez_rknn_async.cli.main import main
from ez_rknn_async.cli.models import build_feed, load_image, parse_input_spec

from onnx_models import (
    add_mul_model,
    emulator_network_model,
    fp16_activations_copy,
    ppocr_path,
    save,
)
from rknn_emu import EmuModel, EmuTensor

pytest_plugins = ("rknn_fixtures",)

#: An image input and a vector input; a classifier-shaped and a 4-D output.
NET = EmuModel(
    inputs=[EmuTensor("img", "uint8", (1, 8, 8, 3)), EmuTensor("x", "float32", (1, 16))],
    outputs=[EmuTensor("score", "float32", (1, 10)), EmuTensor("feat", "float32", (1, 4, 2, 2))],
)
#: Two inputs of the same scale, so that a changed weight turns the outputs' direction.
TWO = EmuModel(
    inputs=[EmuTensor("a", "float32", (1, 16)), EmuTensor("b", "float32", (1, 16))],
    outputs=[EmuTensor("y", "float32", (1, 16))],
)


def run_cli(capsys, *argv):
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def png(path, width=20, height=12):
    from PIL import Image

    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def test_emulated_npu_equals_its_onnx_twin(npu, tmp_path, capsys):
    rknn = NET.write(tmp_path / "net.rknn")
    onnx = save(tmp_path, "net.onnx", emulator_network_model(NET))
    image = png(tmp_path / "photo.png")
    code, out, err = run_cli(
        capsys, "compare", rknn, onnx, "--input", f"img={image}", "--runs", 3,
        "--min-cosine", 0.999999, "--json",
    )  # fmt: skip
    assert code == ExitCode.OK, err
    doc = json.loads(out)
    assert doc["schema"] == JSON_SCHEMA and doc["passed"] is True
    assert (doc["model"]["backend"], doc["reference"]["backend"]) == ("rknn", "onnxruntime")
    assert doc["runs"] == 3 and npu.calls("rknn_run") == 3
    img, x = doc["inputs"]
    assert img == {
        "name": "img", "reference_name": "img", "shape": [1, 3, 8, 8], "dtype": "uint8",
        "reference_dtype": "uint8", "source": str(image),
    }  # fmt: skip
    assert x["source"] == "random" and x["dtype"] == "float32"
    score, feat = doc["outputs"]
    assert (score["name"], score["shape"], feat["shape"]) == ("score", [1, 10], [1, 4, 2, 2])
    for output in (score, feat):
        assert output["cosine"] == pytest.approx(1.0, abs=1e-9) and output["passed"] is True
        assert output["mismatched"] == 0 and output["max_abs_error"] < 1e-3
        assert output["nan"] == output["inf"] == 0
    assert score["elements"] == 30 and score["rows"] == 3 and score["top1"] == 1.0
    assert feat["top1"] is None  # [1, 4, 2, 2] is not classifier-shaped


def test_a_changed_weight_is_detected_and_sets_the_exit_code(npu, tmp_path, capsys):
    rknn = TWO.write(tmp_path / "two.rknn")
    changed = save(tmp_path, "two.onnx", emulator_network_model(TWO, weights=[1.0, 0.5]))
    code, out, _ = run_cli(capsys, "compare", rknn, changed)  # a report: no verdict asked
    assert code == ExitCode.OK and "PASS" not in out and "FAIL" not in out
    code, out, _ = run_cli(capsys, "compare", rknn, changed, "--min-cosine", 0.99)
    assert code == ExitCode.MISMATCH
    row = next(line for line in out.splitlines() if line.startswith("y "))
    cells = [cell.strip() for cell in row.split("  ") if cell.strip()]  # columns: 2+ spaces
    assert cells[:2] == ["y", "[1, 16]"]
    cosine = float(cells[2])
    assert 0.8 < cosine < 0.99  # a + 2b against a + 0.5b, a and b uniform in [0, 1)
    assert out.splitlines()[-1] == f"FAIL: y (cosine {cosine:.6f} < 0.99)"
    code, out, _ = run_cli(capsys, "compare", rknn, changed, "--min-cosine", 0.99, "--json")
    (y,) = json.loads(out)["outputs"]
    assert code == ExitCode.MISMATCH and y["passed"] is False and y["mismatched"] > 0
    assert y["max_rel_error"] > 0.1


def test_quantised_npu_against_the_float_model(npu, tmp_path, capsys):
    """An int8 input (what an .rknn reports) against the float ONNX it came from: float data for
    both, which the runtime quantises; the error is at most half a quantisation step."""
    scale = 1 / 128
    quantised = EmuModel(
        inputs=[EmuTensor("q", "int8", (1, 64), zp=-4, scale=scale)],
        outputs=[EmuTensor("y", "float32", (1, 64))],
    )
    rknn = quantised.write(tmp_path / "q.rknn")
    onnx = save(tmp_path, "q.onnx", emulator_network_model(quantised))
    code, out, err = run_cli(capsys, "compare", rknn, onnx, "--min-cosine", 0.999, "--json")
    assert code == ExitCode.OK, err
    doc = json.loads(out)
    assert doc["inputs"][0]["dtype"] == doc["inputs"][0]["reference_dtype"] == "float32"
    assert any("tensor(int8) (quantised)" in note for note in doc["notes"])
    (y,) = doc["outputs"]
    assert 0.999 < y["cosine"] < 1.0
    assert 0 < y["max_abs_error"] <= scale / 2 + 1e-6


def test_ppocr_recogniser_against_its_fp16_self(tmp_path, capsys):
    reference = ppocr_path()
    fp16 = save(tmp_path, "rec_fp16.onnx", fp16_activations_copy(reference))
    code, out, err = run_cli(
        capsys, "compare", fp16, reference, "--shape", "x=1x3x48x320", "--min-cosine", 0.999,
        "--json",
    )  # fmt: skip
    assert code == ExitCode.OK, err
    (scores,) = json.loads(out)["outputs"]
    assert scores["shape"] == [1, 40, 6625] and scores["rows"] == 40
    assert 0.999 <= scores["cosine"] < 1.0  # fp16 rounding is seen, and is small
    assert 0 < scores["max_abs_error"] < 0.05
    assert scores["top1"] >= 0.95 and scores["top5"] == 1.0
    assert scores["nan"] == scores["inf"] == 0


def test_table_for_people(tmp_path, capsys):
    path = save(tmp_path, "am.onnx", add_mul_model())
    code, out, err = run_cli(capsys, "compare", path, path, "--reference-backend", "openvino")
    assert code == ExitCode.OK
    lines = out.splitlines()
    assert lines[0] == f"model      {path}  (backend onnxruntime)"
    assert lines[1] == f"reference  {path}  (backend openvino)"
    assert lines[2] == "input      a [1, 4] float32: random (seed 0)"
    header = next(line for line in lines if line.startswith("output"))
    assert header.split() == [
        "output", "shape", "cosine", "max", "abs", "max", "rel", "mismatched", "top-1", "top-5",
        "NaN/inf",
    ]  # fmt: skip
    sum_row = next(line for line in lines if line.startswith("sum "))
    assert sum_row.split()[3] == "1.000000" and "0 (0.00%)" in sum_row  # after "[1, 4]"
    assert any(line.startswith("mismatched: |x - ref| > 0.001 + 0.01 * |ref|") for line in lines)
    assert "dynamic batch" in err  # notes go to stderr


def test_inputs_paired_by_position_and_cast(tmp_path, capsys):
    """Different input names and a float16 reference: paired by position, cast, both noted."""
    from onnx import TensorProto, helper

    from onnx_models import _model

    half = _model(
        [helper.make_node("Add", ["p", "q"], ["s"]), helper.make_node("Mul", ["p", "q"], ["m"])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT16, [1, 4]) for n in ("p", "q")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT16, [1, 4]) for n in ("s", "m")],
    )
    model = save(tmp_path, "am.onnx", add_mul_model())
    other = save(tmp_path, "half.onnx", half)
    code, out, err = run_cli(capsys, "compare", model, other, "--json", "--atol", 0.01)
    assert code == ExitCode.OK, err
    doc = json.loads(out)
    assert [(i["name"], i["reference_name"]) for i in doc["inputs"]] == [("a", "p"), ("b", "q")]
    assert [o["reference_name"] for o in doc["outputs"]] == ["s", "m"]
    assert doc["inputs"][0]["reference_dtype"] == "float16"
    assert any("paired by position" in note for note in doc["notes"])
    assert any("float32 data cast to float16" in note for note in doc["notes"])
    assert all(o["cosine"] > 0.9999 and o["mismatched"] == 0 for o in doc["outputs"])


def test_dynamic_dims_are_taken_from_the_reference(tmp_path, capsys):
    dynamic = save(tmp_path, "dyn.onnx", add_mul_model())
    fixed = save(tmp_path, "fixed.onnx", add_mul_model(batch=2))
    code, out, err = run_cli(capsys, "compare", dynamic, fixed, "--json")
    assert code == ExitCode.OK, err
    doc = json.loads(out)
    assert [i["shape"] for i in doc["inputs"]] == [[2, 4], [2, 4]]
    assert "input a: dynamic dims taken from REFERENCE: ['N', 4] -> [2, 4]" in doc["notes"]


def test_inputs_from_npz_and_npy(tmp_path, capsys):
    model = save(tmp_path, "am.onnx", add_mul_model())
    a, b = np.ones((2, 4), np.float32), np.full((2, 4), 3, np.float32)
    np.savez(tmp_path / "feeds.npz", a=a, b=b)
    np.save(tmp_path / "b.npy", b)
    code, out, _ = run_cli(
        capsys, "compare", model, model, "--input", tmp_path / "feeds.npz", "--json"
    )
    doc = json.loads(out)
    assert code == ExitCode.OK and [i["shape"] for i in doc["inputs"]] == [[2, 4], [2, 4]]
    assert {i["source"] for i in doc["inputs"]} == {str(tmp_path / "feeds.npz")}
    code, out, _ = run_cli(
        capsys, "compare", model, model, "--input", f"b={tmp_path / 'b.npy'}", "--json"
    )
    sources = {i["name"]: i["source"] for i in json.loads(out)["inputs"]}
    assert sources == {"a": "random", "b": str(tmp_path / "b.npy")}


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--input", "zz=x.npy"], ExitCode.USAGE, "no input named 'zz'"),
        (["--input", "a=missing.npy"], ExitCode.NOT_FOUND, "input file not found"),
        (["--input", "a=photo.png"], ExitCode.USAGE, "not an image"),
        (["--min-cosine", "2"], ExitCode.USAGE, "between -1 and 1"),
        (["--atol", "-1"], ExitCode.USAGE, "must be >= 0, got -1"),
        (["--rtol", "nan"], ExitCode.USAGE, "must be a finite number, got nan"),
        (["--runs", "0"], ExitCode.USAGE, "must be > 0"),
    ],
)
def test_bad_arguments(tmp_path, capsys, monkeypatch, argv, code, message):
    monkeypatch.chdir(tmp_path)
    png(tmp_path / "photo.png")
    model = save(tmp_path, "am.onnx", add_mul_model())
    got, _, err = run_cli(capsys, "compare", model, model, *argv)
    assert got == code and message in err


def test_models_that_do_not_match(tmp_path, capsys):
    from onnx_models import dynamic_hw_model

    model = save(tmp_path, "am.onnx", add_mul_model())
    other = save(tmp_path, "dyn.onnx", dynamic_hw_model())
    code, _, err = run_cli(capsys, "compare", model, other)
    assert code == ExitCode.USAGE
    assert "inputs match neither by name nor by count: MODEL has a, b; REFERENCE has img" in err
    code, _, err = run_cli(capsys, "compare", model, tmp_path / "missing.onnx")
    assert code == ExitCode.NOT_FOUND and "missing.onnx" in err


def test_outputs_of_different_sizes_fail_the_check(tmp_path, capsys):
    from onnx import TensorProto, helper

    from onnx_models import _model

    wider = _model(
        [
            helper.make_node("Concat", ["a", "b"], ["sum"], axis=1),
            helper.make_node("Mul", ["a", "b"], ["prod"]),
        ],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("a", "b")],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, [1, 8]),
            helper.make_tensor_value_info("prod", TensorProto.FLOAT, [1, 4]),
        ],
    )
    model = save(tmp_path, "am.onnx", add_mul_model(batch=1))
    other = save(tmp_path, "wide.onnx", wider)
    code, out, _ = run_cli(capsys, "compare", model, other, "--min-cosine", 0.5)
    assert code == ExitCode.MISMATCH
    assert "sum: not comparable: 4 elements [1, 4] vs 8 [1, 8]" in out
    assert out.splitlines()[-1] == "FAIL: sum (not comparable)"


# --- feeds from files ----------------------------------------------------------------------------


def test_images_fit_nchw_and_nhwc_inputs(tmp_path):
    path = png(tmp_path / "photo.png", width=20, height=12)
    nchw = load_image("img", str(path), [1, 3, 6, 10], np.dtype(np.uint8))
    nhwc = load_image("img", str(path), ["N", 6, 10, 3], np.dtype(np.float32))
    assert nchw.shape == (1, 3, 6, 10) and nhwc.shape == (1, 6, 10, 3)
    np.testing.assert_allclose(np.moveaxis(nchw, 1, -1) / 255.0, nhwc, rtol=1e-6)
    assert nhwc.dtype == np.float32 and nhwc.min() >= 0.0 and nhwc.max() <= 1.0
    own_size = load_image("img", str(path), [None, 1, "H", "W"], np.dtype(np.uint8))
    assert own_size.shape == (1, 1, 12, 20)  # dynamic H and W: the image's own, in grey


def test_image_without_pillow_names_the_pip_command(tmp_path, monkeypatch):
    import sys

    path = png(tmp_path / "photo.png")
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(MissingDependencyError, match="Pillow") as info:
        load_image("img", str(path), [1, 3, 4, 4], np.dtype(np.uint8))
    assert info.value.hint.endswith("(or: pip install pillow)")


def test_npz_given_a_name(tmp_path):
    inputs = [NodeArg("a", [1, 2], "tensor(float)"), NodeArg("b", [1, 2], "tensor(float)")]
    np.savez(tmp_path / "one.npz", anything=np.ones((1, 2), np.float32))
    feed = build_feed(inputs, files=[parse_input_spec(f"b={tmp_path / 'one.npz'}")])
    np.testing.assert_array_equal(feed.arrays["b"], np.ones((1, 2)))
    assert feed.sources == {"a": "random", "b": str(tmp_path / "one.npz")}
    np.savez(tmp_path / "two.npz", x=np.ones(2), y=np.ones(2))
    with pytest.raises(UsageError, match="no array named 'b' \\(it has x, y\\)"):
        build_feed(inputs, files=[parse_input_spec(f"b={tmp_path / 'two.npz'}")])
    with pytest.raises(UsageError, match="arrays x, y name no input"):
        build_feed(inputs, files=[parse_input_spec(str(tmp_path / "two.npz"))])


def test_plan_checks_its_values():
    from ez_rknn_async.cli.compare import ComparePlan

    with pytest.raises(ValueError, match="runs must be >= 1, got 0"):
        ComparePlan("a.onnx", "b.onnx", runs=0)
    with pytest.raises(ValueError, match="between -1 and 1: got 1.5"):
        ComparePlan("a.onnx", "b.onnx", min_cosine=1.5)


def test_help_documents_compare_top_and_their_exit_codes(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    assert "  compare MODEL REFERENCE" in out and "  top " in out
    assert "    6  compare: an output is below --min-cosine" in out
    assert "    7  top: no NPU load to read" in out
    code, out, _ = run_cli(capsys, "compare", "--help")
    for text in ("atol + rtol * |ref|", "whose reference argmax is in the top five", "--min-cosine",
                 "exit codes: 0 when done", "uint8 inputs get 0-255", "seed + 1"):  # fmt: skip
        assert text in " ".join(out.split())
    code, out, _ = run_cli(capsys, "top", "--help")
    assert "/sys/kernel/debug/rknpu/load" in out and "/sys/class/devfreq/*.npu/" in out
    code, out, _ = run_cli(capsys, "doctor", "--help")
    assert "known-incompatible combinations" in out and "rocket" in out
