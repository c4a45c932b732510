"""``ez-rknn`` end to end: real commands on real models, in-process and through a subprocess."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from ez_rknn_async.cli import main as cli_main
from ez_rknn_async.cli import report as cli_report
from ez_rknn_async.cli.commands import COMMANDS
from ez_rknn_async.cli.commands import bench as bench_command
from ez_rknn_async.cli.errors import ExitCode, explain
from ez_rknn_async.cli.main import main
from ez_rknn_async.cli.report import JSON_SCHEMA

from onnx_models import broadcast_model, save

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LATENCY_KEYS = {"median", "avg", "min", "max", "p90", "p99"}
TABLE_HEADER = ["mode", "frames", "time s", "fps", "speed-up", "first", "median", "avg", "min",
                "max", "p90", "p99"]  # fmt: skip


def run_cli(capsys, *argv):
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def table_rows(out: str) -> dict[str, list[str]]:
    """Rows of the bench table by mode name (cells split on runs of two spaces)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("mode "))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        cells = [cell.strip() for cell in line.split("  ") if cell.strip()]
        rows[cells[0]] = cells
    return rows


# --- bench -------------------------------------------------------------------------------------


def test_bench_all_modes_and_comparators_table_json_plot(capsys, add_mul_path, tmp_path):
    json_path, png_path = tmp_path / "bench.json", tmp_path / "bench.png"
    code, out, err = run_cli(
        capsys, "bench", add_mul_path, "--frames", 40, "--warmup", 3, "--mode", "all",
        "--compare", "ort,ort-async,openvino", "--json", json_path, "--plot", png_path,
    )  # fmt: skip
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("mode "))
    assert header.split() == " ".join(TABLE_HEADER).split()
    rows = table_rows(out)
    assert list(rows) == ["run", "async", "pipeline", "ort", "ort-async", "openvino"]
    assert all(row[1] == "40" for row in rows.values())
    assert rows["ort"][4] == "1.00x"
    assert "speed-up = fps / fps of 'ort'" in out
    assert "dynamic batch" in err  # the add_mul model's N became 1, and the user is told

    doc = json.loads(json_path.read_text())
    assert doc["schema"] == JSON_SCHEMA
    assert doc["model"]["backend"] == "onnxruntime"
    assert doc["baseline"] == "ort"
    assert doc["config"]["inputs"]["a"] == {"shape": [1, 4], "dtype": "float32"}
    assert doc["config"]["depth"] >= 2 and doc["skipped"] == []
    for result in doc["results"]:
        assert result["count"] == 40 and result["warmup_frames"] == 3
        assert result["fps"] > 0 and result["duration_s"] > 0
        assert set(result["latency_ms"]) == LATENCY_KEYS
        lat = result["latency_ms"]
        assert 0 < lat["min"] <= lat["median"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert result["fps"] == pytest.approx(result["count"] / result["duration_s"])
    by_name = {r["name"]: r for r in doc["results"]}
    assert by_name["ort"]["speedup"] == pytest.approx(1.0)
    assert by_name["run"]["ours"] and not by_name["openvino"]["ours"]

    data = png_path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    image = pytest.importorskip("matplotlib.image").imread(str(png_path))
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400
    assert image.std() > 0.01  # something was drawn


def test_bench_yolov8n_with_shape_and_given_input(capsys, yolo, tmp_path):
    frame = tmp_path / "frame.npy"
    np.save(frame, np.random.default_rng(1).random((1, 3, 320, 320), dtype=np.float32))
    code, out, err = run_cli(
        capsys, "bench", yolo, "--input", f"images={frame}", "--frames", 4, "--warmup", 0,
        "--depth", 2, "--json", "-",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)  # --json - prints only the JSON document
    assert [r["name"] for r in doc["results"]] == ["run", "async", "pipeline"]
    assert doc["config"]["depth"] == 2
    assert doc["config"]["inputs"]["images"]["shape"] == [1, 3, 320, 320]
    assert all(r["count"] == 4 for r in doc["results"])


def test_bench_quiet_prints_nothing_and_repeat_interleaves(capsys, add_mul_path, tmp_path):
    json_path = tmp_path / "r.json"
    code, out, err = run_cli(
        capsys, "bench", add_mul_path, "--mode", "run,pipeline", "--frames", 30, "--repeat", 3,
        "--warmup", 0, "-q", "--json", json_path,
    )  # fmt: skip
    assert (code, out, err) == (0, "", "")
    doc = json.loads(json_path.read_text())
    assert [len(r["round_fps"]) for r in doc["results"]] == [3, 3]
    assert [r["count"] for r in doc["results"]] == [30, 30]


def test_bench_time_budget(capsys, add_mul_path):
    code, out, _ = run_cli(
        capsys, "bench", add_mul_path, "--mode", "run", "--time", 0.3, "--warmup", 0, "--json", "-"
    )
    assert code == 0
    result = json.loads(out)["results"][0]
    # the budget is checked between frames: duration ends at the last completion, just under it
    assert 0.28 <= result["duration_s"] < 1.5 and result["count"] > 10


def test_compare_skips_what_is_missing_with_a_note(capsys, add_mul_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a)
    )
    code, out, _ = run_cli(
        capsys, "bench", add_mul_path, "--mode", "run", "--compare", "ort,openvino",
        "--frames", 5, "--warmup", 0,
    )  # fmt: skip
    assert code == 0
    assert list(table_rows(out)) == ["run", "ort"]
    assert "skipped openvino: openvino is not installed (pip install openvino)" in out


# --- errors and exit codes ---------------------------------------------------------------------


M = "{m}"  # replaced with the model path


@pytest.mark.parametrize(
    "argv, code, message, hint",
    [
        (["bench", "nope.onnx"], ExitCode.NOT_FOUND, "model not found: nope.onnx", "the path"),
        (["bench", M, "--mode", "fast"], ExitCode.USAGE, "unknown --mode 'fast'", "run, async"),
        (["bench", M, "--compare", "trt"], ExitCode.USAGE, "unknown --compare 'trt'", "ort-async"),
        (["bench", M, "--shape", "a=1xq"], ExitCode.USAGE, "bad --shape 'a=1xq'", "=1x3x640x640"),
        (["bench", M, "--shape", "z=1x4"], ExitCode.USAGE, "no input named 'z'", "a, b"),
        (["bench", M, "--input", "a=/no/x.npy"], ExitCode.NOT_FOUND, "input file not found", ""),
        (["bench", M, "--schedule", "x"], ExitCode.USAGE, "schedule", "--schedule 0,1,2"),
        (["info", "missing.rknn"], ExitCode.NOT_FOUND, "model not found", ""),
    ],
)
def test_errors_are_one_line_with_a_hint_and_a_documented_code(
    capsys, add_mul_path, argv, code, message, hint
):
    result, out, err = run_cli(capsys, *[arg.format(m=add_mul_path) for arg in argv])
    assert result == code
    assert out == ""
    lines = err.strip().splitlines()
    assert lines[0].startswith("error: ") and message in lines[0]
    assert lines[1].startswith("hint: ") and hint in lines[1]
    assert "Traceback" not in err


def test_input_that_does_not_fit_the_model_is_exit_1(capsys, add_mul_path, tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((1, 5), np.float32))
    code, _, err = run_cli(capsys, "bench", add_mul_path, "--input", f"a={bad}", "--frames", 2)
    assert code == ExitCode.ERROR
    assert err.startswith("error: ") and "hint: compare --input / --shape" in err


def test_dynamic_image_dims_need_a_shape(capsys, yolo):
    code, _, err = run_cli(capsys, "bench", yolo, "--frames", 1)
    assert code == ExitCode.USAGE
    assert "dynamic dims" in err and "--shape images=1x3xNxN" in err


def test_argparse_errors_exit_2(capsys, add_mul_path):
    code, _, err = run_cli(capsys, "bench", add_mul_path, "--frames", 0)
    assert code == ExitCode.USAGE and "must be > 0" in err
    code, _, err = run_cli(capsys, "frobnicate")
    assert code == ExitCode.USAGE and "invalid choice" in err


def test_missing_matplotlib_prints_the_pip_command_before_measuring(
    capsys, add_mul_path, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(bench_command, "run_plan", lambda *a, **k: pytest.fail("measured anyway"))
    code, _, err = run_cli(capsys, "bench", add_mul_path, "--plot", tmp_path / "x.png")
    assert code == ExitCode.MISSING_DEPENDENCY
    assert "pip install 'ez-rknn-async[plot]'" in err
    assert not (tmp_path / "x.png").exists()


def test_interrupt_is_130_unknown_errors_keep_their_traceback(capsys, add_mul_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_command, "run_plan", interrupted)
    assert run_cli(capsys, "bench", add_mul_path)[0] == ExitCode.INTERRUPTED

    class Bug(Exception):
        pass

    def buggy(*args, **kwargs):
        raise Bug("a bug")

    monkeypatch.setattr(bench_command, "run_plan", buggy)
    with pytest.raises(Bug):
        main(["bench", add_mul_path])


def test_debug_env_adds_the_traceback_to_known_errors(capsys, monkeypatch):
    monkeypatch.setenv(cli_main.DEBUG_ENV, "1")
    code, _, err = run_cli(capsys, "bench", "nope.onnx")
    assert code == ExitCode.NOT_FOUND
    assert "Traceback" in err and "error: model not found" in err


def test_help_teaches(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    assert "exit codes:" in out and "EZ_RKNN_DEBUG" in out
    for command in ("info", "bench", "doctor", "demo"):
        assert f"  {command}" in out
    code, out, _ = run_cli(capsys, "bench", "--help")
    assert code == 0
    for text in ("examples:", "--compare", "ort-async", "OpenVINO AsyncInferQueue", "--shape",
                 "run_pipeline(feed, depth)", "p90"):  # fmt: skip
        assert text in out


def test_every_command_module_registers_its_own_run_and_is_documented(capsys):
    """The dispatcher's wiring: each module in ``COMMANDS`` adds one sub-command whose ``func``
    is that module's ``run``, ``ez-rknn --help`` lists it, and its own ``--help`` works."""
    parser = cli_main.build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    names = list(subparsers.choices)
    assert names == ["info", "bench", "compare", "doctor", "top", "demo", "serve"]
    for name, module in zip(names, COMMANDS):
        assert subparsers.choices[name].get_default("func") is module.run, name
    _, main_help, _ = run_cli(capsys, "--help")
    for name in names:
        assert f"\n  {name} " in main_help.split("commands:")[1], name
        code, out, _ = run_cli(capsys, name, "--help")
        assert code == 0 and out.startswith(f"usage: ez-rknn {name}"), name


# --- info --------------------------------------------------------------------------------------


def test_info_human_and_json(capsys, add_mul_path):
    code, out, _ = run_cli(capsys, "info", add_mul_path)
    assert code == 0
    assert "backend   onnxruntime: the file name ends in .onnx" in out
    assert "CPUExecutionProvider" in out
    for text in ("inputs", "outputs", "sum", "prod", "[N, 4]", "tensor(float)", "ez-rknn-tests",
                 "purpose"):  # fmt: skip
        assert text in out
    code, out, _ = run_cli(capsys, "info", add_mul_path, "--json")
    doc = json.loads(out)
    assert doc["backend"]["name"] == "onnxruntime" and doc["backend"]["workers"] >= 1
    assert [t["name"] for t in doc["inputs"]] == ["a", "b"]
    assert doc["inputs"][0] == {
        "name": "a",
        "shape": ["N", 4],
        "type": "tensor(float)",
        "layout": "-",
    }
    assert doc["metadata"]["custom_metadata_map"] == {"purpose": "tests"}


def test_info_yolo_guesses_nchw_and_explains_a_forced_backend(capsys, yolo):
    code, out, _ = run_cli(capsys, "info", yolo, "--backend", "onnxruntime")
    assert code == 0
    assert "forced with --backend" in out
    assert "NCHW*" in out and "layout guessed from the shape" in out
    assert "Ultralytics" in out


# --- doctor ------------------------------------------------------------------------------------


def fake_doctor(problems):
    module = types.ModuleType("ez_rknn_async.backends.rknn.doctor")
    module.collect = lambda: {
        "python": {"version": "3.11"},
        "numpy": {"version": "2.0"},
        "runtime": {
            "library": None,
            "api_version": None,
            "driver_version": None,
            "candidates": ["/usr/lib/librknnrt.so"],
        },  # fmt: skip
        "soc": {"name": "rk3588", "source": "EZ_RKNN_SOC", "npu_cores": [0, 1, 2]},
        "problems": problems,
    }
    return module


def test_doctor_problems_give_exit_4_and_each_fix(capsys, monkeypatch):
    problem = {"what": "librknnrt.so not found", "fix": "set EZ_RKNN_RUNTIME_LIB"}
    monkeypatch.setitem(sys.modules, "ez_rknn_async.backends.rknn.doctor", fake_doctor([problem]))
    code, out, _ = run_cli(capsys, "doctor")
    assert code == ExitCode.PROBLEMS
    assert "- librknnrt.so not found" in out and "fix: set EZ_RKNN_RUNTIME_LIB" in out
    assert "npu_cores" in out and "3 (ids 0, 1, 2)" in out and "packages" in out
    monkeypatch.setitem(sys.modules, "ez_rknn_async.backends.rknn.doctor", fake_doctor([]))
    code, out, _ = run_cli(capsys, "doctor", "--json")
    assert code == ExitCode.OK
    doc = json.loads(out)
    assert doc["soc"]["npu_cores"] == [0, 1, 2] and doc["problems"] == []
    assert doc["packages"]["onnxruntime"] is not None


def test_doctor_real_probes(capsys):
    pytest.importorskip("ez_rknn_async.backends.rknn.doctor")
    code, out, _ = run_cli(capsys, "doctor", "--json")
    doc = json.loads(out)
    assert {"python", "numpy", "runtime", "soc", "problems"} <= set(doc)
    assert {"library", "api_version", "driver_version", "candidates"} <= set(doc["runtime"])
    assert doc["soc"]["source"] in ("EZ_RKNN_SOC", "device-tree", "unknown")
    assert code == (ExitCode.PROBLEMS if doc["problems"] else ExitCode.OK)


# --- demo and the installed command ------------------------------------------------------------


def test_demo_runs_yolo_in_all_modes_against_onnxruntime(capsys):
    code, out, err = run_cli(capsys, "demo", "--time", 0.4)
    assert code == 0, err
    assert "320n.onnx" in out
    rows = table_rows(out)
    assert list(rows) == ["run", "async", "pipeline", "ort-1t", "ort"]
    header = next(line for line in out.splitlines() if line.startswith("mode "))
    assert header.split() == ["mode", "runtime", "frames", "fps", "speed-up", "median"]
    assert rows["ort-1t"][-2] == "1.00x"
    assert "speed-up = fps / fps of 'ort-1t'" in out


def test_subprocess_exit_codes_and_json(add_mul_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    command = [sys.executable, "-m", "ez_rknn_async.cli"]
    done = subprocess.run(
        [*command, "bench", add_mul_path, "--mode", "async", "--frames", "10", "--json", "-"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["results"][0]["count"] == 10
    done = subprocess.run(
        [*command, "bench", "missing.onnx"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == ExitCode.NOT_FOUND
    assert done.stderr.startswith("error: model not found: missing.onnx")


def test_a_value_error_of_ours_keeps_its_traceback(capsys, add_mul_path, monkeypatch):
    """Only typed errors print one line: a builtin ValueError outside the hand-over of the
    user's model, options and feed is a bug, and must not pass for bad input."""

    def broken_table(*args, **kwargs):
        raise ValueError("a bug in the report")

    monkeypatch.setattr(cli_report, "bench_table", broken_table)
    with pytest.raises(ValueError, match="a bug in the report"):
        main(["bench", add_mul_path, "--frames", "2", "--mode", "run"])
    assert explain(ValueError("x")) is None and explain(TypeError("x")) is None


def test_a_failed_inference_is_exit_1_with_the_runtimes_message(capsys, tmp_path):
    """The user's feed passes our checks, the runtime fails: InferenceError, one line."""
    path = save(tmp_path, "bcast.onnx", broadcast_model())
    code, _, err = run_cli(capsys, "bench", path, "--shape", "a=2", "--shape", "b=3", "--frames", 1)
    assert code == ExitCode.ERROR
    assert err.startswith("error: onnxruntime failed on the inputs ['a', 'b']")
    assert "hint: the runtime failed" in err and "Traceback" not in err


def test_a_model_the_runtime_rejects_is_exit_1_with_a_model_hint(capsys, tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x01 not a model")
    for command in ("info", "bench"):
        code, out, err = run_cli(capsys, command, garbage)
        assert code == ExitCode.ERROR and out == ""
        first, hint = err.strip().splitlines()
        assert first.startswith(f"error: onnxruntime rejected the model {garbage}")
        assert hint.startswith("hint: check MODEL")
