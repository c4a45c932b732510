"""``ez-rknn`` on an RKNN model, served by the emulated librknnrt (tests/npu_emulator)."""

from __future__ import annotations

import gc
import importlib.machinery
import importlib.util
import json
import sys
import types

import pytest

from ez_rknn_async.cli.errors import ExitCode
from ez_rknn_async.cli.main import main

from rknn_emu import EmuModel, EmuTensor, reference

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


@pytest.mark.skipif(
    importlib.util.find_spec("ztu_somemodelruntime_ez_rknn_async") is None,
    reason="the original library publishes wheels for Linux x86_64/aarch64 only",
)
def test_bench_compares_with_the_original_library_in_every_mode(npu, tmp_path, capsys):
    """``--compare ztu``: the original runs the same file on the same librknnrt, one row per
    mode of ours; RKNNLite (boards only) is skipped with a note."""
    npu.tolerate_early_destroys = True  # the original destroys its first context before its dups
    path = MODEL.write(tmp_path / "tiny.rknn")
    argv = ["bench", str(path), "--frames", "30", "--warmup", "2", "--schedule", "0,1,2"]
    before = npu.calls("rknn_run")
    assert main([*argv, "--compare", "ztu,rknnlite", "--json", "-"]) == ExitCode.OK
    gc.collect()  # the original's session has no close(): freed with its last reference
    doc = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in doc["results"]}
    assert list(rows) == ["run", "async", "pipeline", "ztu-run", "ztu-async", "ztu-pipeline"]
    assert all(r["count"] == 30 and r["fps"] > 0 for r in rows.values())
    assert rows["ztu-async"]["label"] == "original run_async"
    # each row: 1 first frame + 2 warm-up + 30 measured; the original's drain adds dummy frames
    assert npu.calls("rknn_run") - before >= 6 * 33
    assert all(npu.core_runs(core) > 0 for core in range(3))
    reasons = {s["name"]: s["reason"] for s in doc["skipped"]}
    if importlib.util.find_spec("rknnlite") is None:
        assert reasons == {
            "rknnlite": "rknnlite is not installed (pip install rknn-toolkit-lite2 on the board)"
        }
    assert npu.live_contexts == 0


class FakeRknnLite:
    """Rockchip's RKNNLite API as rknn-toolkit-lite2 documents it (boards only, so faked here):
    load_rknn / init_runtime / inference / release, returning 0 on success. Its inference is
    the emulated network (numpy reference) on the NCHW feed it must be told about."""

    NPU_CORE_AUTO = 0
    calls: list = []

    def __init__(self, verbose=False):
        self.model = None

    def load_rknn(self, path):
        FakeRknnLite.calls.append(("load_rknn", path))
        self.model = MODEL
        return 0

    def init_runtime(self, core_mask=0):
        FakeRknnLite.calls.append(("init_runtime", core_mask))
        return 0

    def inference(self, inputs, data_format=None):
        FakeRknnLite.calls.append(("inference", data_format))
        return reference(self.model, inputs)

    def release(self):
        FakeRknnLite.calls.append(("release",))


def test_bench_compare_rknnlite_drives_its_documented_api(npu, tmp_path, capsys, monkeypatch):
    api = types.ModuleType("rknnlite.api")
    api.RKNNLite = FakeRknnLite
    package = types.ModuleType("rknnlite")
    package.__spec__ = importlib.machinery.ModuleSpec("rknnlite", None)
    package.api = api
    monkeypatch.setitem(sys.modules, "rknnlite", package)
    monkeypatch.setitem(sys.modules, "rknnlite.api", api)
    FakeRknnLite.calls = []
    path = MODEL.write(tmp_path / "tiny.rknn")
    argv = ["bench", str(path), "--frames", "5", "--warmup", "0", "--mode", "run"]
    assert main([*argv, "--compare", "rknnlite", "--json", "-"]) == ExitCode.OK
    doc = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["count"]) for r in doc["results"]] == [("run", 5), ("rknnlite", 5)]
    assert FakeRknnLite.calls[:2] == [("load_rknn", str(path)), ("init_runtime", 0)]
    assert FakeRknnLite.calls.count(("inference", ["nchw"])) == 1 + 5  # first frame + measured
    assert FakeRknnLite.calls[-1] == ("release",)


def test_bench_compare_ztu_needs_an_rknn_model(tmp_path, capsys, add_mul_path):
    assert (
        main(
            [
                "bench",
                add_mul_path,
                "--frames",
                "3",
                "--mode",
                "run",
                "--compare",
                "ztu",
                "--json",
                "-",
            ]
        )
        == ExitCode.OK
    )
    doc = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in doc["results"]] == ["run"]
    assert doc["skipped"] == [{"name": "ztu", "reason": "needs an .rknn model on the RKNN backend"}]


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
