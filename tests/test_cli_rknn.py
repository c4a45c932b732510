"""``ez-rknn`` on an RKNN model, served by the emulated librknnrt (tests/npu_emulator)."""

from __future__ import annotations

import json

from ez_rknn_async.cli.errors import ExitCode
from ez_rknn_async.cli.main import main

from rknn_emu import EmuModel, EmuTensor

pytest_plugins = ("rknn_fixtures",)

MODEL = EmuModel(
    inputs=[EmuTensor("img", "uint8", (1, 8, 8, 3))],
    outputs=[EmuTensor("score", "float32", (1, 10))],
    custom_string="made-for-cli-tests",
)


def test_info_shows_the_rknn_backend_native_tensors_and_custom_string(npu, tmp_path, capsys):
    path = MODEL.write(tmp_path / "tiny.rknn")
    assert main(["info", str(path), "--json"]) == ExitCode.OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["backend"]["name"] == "rknn"
    assert doc["backend"]["reason"] == "the file name ends in .rknn"
    assert doc["backend"]["providers"] == ["RKNPU2ExecutionProvider"]
    assert doc["backend"]["workers"] == 3  # an RK3588 has three NPU cores
    assert doc["inputs"][0]["shape"] == [1, 3, 8, 8]  # NCHW for the user
    assert doc["native_inputs"][0]["shape"] == [1, 8, 8, 3]  # NHWC for the runtime
    assert doc["metadata"]["custom_metadata_map"]["rknn_custom_string"] == "made-for-cli-tests"
    assert doc["runtime"]["library"] == str(npu.paths.library)
    assert doc["runtime"]["soc"] == "rk3588" and doc["runtime"]["npu_cores"] == [0, 1, 2]
    assert main(["info", str(path)]) == ExitCode.OK
    out = capsys.readouterr().out
    assert "native inputs (runtime view)" in out and "made-for-cli-tests" in out
    assert f"runtime   {npu.paths.library} (api " in out
    assert "soc       rk3588, NPU cores 0, 1, 2" in out


def test_bench_rknn_on_a_schedule_skips_onnx_comparators(npu, tmp_path, capsys):
    path = MODEL.write(tmp_path / "tiny.rknn")
    argv = ["bench", str(path), "--frames", "30", "--schedule", "0,1,2", "--threads", "2"]
    assert main([*argv, "--compare", "ort,openvino", "--json", "-"]) == ExitCode.OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["model"]["backend"] == "rknn"
    assert doc["config"]["depth"] == 12  # 2 x (3 cores x 2 threads)
    assert doc["config"]["provider_options"] == {"schedule": [0, 1, 2], "threads_per_core": 2}
    assert [r["count"] for r in doc["results"]] == [30, 30, 30]
    assert {s["name"]: s["reason"] for s in doc["skipped"]} == {
        "ort": "needs an ONNX model (this one is .rknn)",
        "openvino": "needs an ONNX model (this one is .rknn)",
    }
    assert doc["baseline"] == "run"  # no onnxruntime row: our run is the baseline
    assert sum(npu.core_runs(core) for core in range(3)) >= 90


def test_bench_rejects_a_core_the_soc_lacks(npu, tmp_path, capsys):
    path = MODEL.write(tmp_path / "tiny.rknn")
    code = main(["bench", str(path), "--frames", "3", "--schedule", "0,7"])
    err = capsys.readouterr().err
    assert code == ExitCode.ERROR
    assert err.startswith("error: ") and "7" in err.splitlines()[0]


def test_doctor_sees_the_emulated_runtime_and_soc(npu, capsys):
    code = main(["doctor", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["runtime"]["library"] and "emulator" in (doc["runtime"]["api_version"] or "")
    assert doc["soc"] == {**doc["soc"], "name": "rk3588", "source": "EZ_RKNN_SOC"}
    assert doc["soc"]["npu_cores"] == [0, 1, 2]
    assert code == (ExitCode.PROBLEMS if doc["problems"] else ExitCode.OK)
