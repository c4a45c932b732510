"""``ez-rknn info`` and ``doctor`` for RKNPU3, on the emulated librknn3_api: devices, versions,
and the proxy/firmware version mismatch that hangs a 1.0 runtime's init (probed in a child
process under a timeout)."""

from __future__ import annotations

import json
import time

from ez_rknn_async.backends.rknn3 import doctor
from ez_rknn_async.cli.errors import ExitCode
from ez_rknn_async.cli.main import main

from rknn3_emu import Model3, Tensor3

pytest_plugins = ("rknn3_fixtures",)

MODEL = Model3(
    [Tensor3("img", "uint8", (1, 3, 8, 8), 0, 0.5)], [Tensor3("score", "float32", (1, 10))]
)


def test_info_shows_the_rknpu3_backend_devices_and_why(npu3, tmp_path, capsys):
    path = MODEL.write(tmp_path, "tiny")
    assert main(["info", str(path), "--json"]) == ExitCode.OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["backend"]["name"] == "rknn3"
    assert doc["backend"]["reason"] == "the content starts with the RKNPU3 magic"
    assert doc["backend"]["providers"] == ["RKNPU3ExecutionProvider"]
    assert doc["backend"]["workers"] == 16  # 2 devices x 8 one-core groups
    assert doc["native_inputs"][0]["shape"] == [1, 1, 8, 8, 16]
    assert doc["runtime"]["abi"] == npu3.abi
    assert doc["runtime"]["api_version"].startswith(f"{npu3.abi}.0 (ez-rknn emulator)")
    assert doc["runtime"]["devices"] == [
        "0000:01:00.0 (PCIE, 8 cores)",
        "0000:02:00.0 (PCIE, 8 cores)",
    ]
    assert main(["info", str(path)]) == ExitCode.OK
    assert "devices   0000:01:00.0 (PCIE, 8 cores); 0000:02:00.0" in capsys.readouterr().out


def test_doctor_opens_every_device_and_reports_versions(npu3, capsys):
    code = main(["doctor", "--json"])
    doc = json.loads(capsys.readouterr().out)
    section = doc["rknn3"]
    assert section["library"] == str(npu3.library) and section["abi"] == npu3.abi
    assert section["devices"] == [
        f"0000:0{n}:00.0 (PCIE, 8 cores): api {npu3.abi}.0 (emulated), proxy/firmware {npu3.abi}.0"
        for n in (1, 2)
    ]
    assert not [p for p in doc["problems"] if "0000:0" in p["what"]]
    assert code == (ExitCode.PROBLEMS if doc["problems"] else ExitCode.OK)


def test_a_1_1_runtime_reports_the_version_mismatch(npu3_11, monkeypatch):
    npu3_11.use(devices=1)
    monkeypatch.setenv("RKNN3_EMU_DEVICES", "1")
    monkeypatch.setenv("RKNN3_EMU_FIRMWARE_VERSION", "1.0.4")
    report = doctor.collect()
    assert report["rknn3"]["devices"] == [
        "0000:01:00.0 (PCIE, 8 cores): init failed: RKNN3_ERR_INCOMPATIBLE_VERSION"
    ]
    [problem] = report["problems"]
    assert "RKNN3_ERR_INCOMPATIBLE_VERSION (-18)" in problem["what"]
    assert "one SDK version of librknn3_api, rknn3_transfer_proxy" in problem["fix"]


def test_a_hanging_1_0_init_is_killed_and_reported_as_the_mismatch(emulator3, monkeypatch):
    monkeypatch.setenv("EZ_RKNN3_RUNTIME_LIB", str(emulator3.library("1.0")))
    monkeypatch.setenv("RKNN3_EMU_DEVICES", "2")
    monkeypatch.setenv("RKNN3_EMU_FIRMWARE_VERSION", "1.1.0")
    start = time.monotonic()
    report = doctor.collect(timeout_s=1.0)
    assert time.monotonic() - start < 10  # the children hang for 120 s unless killed
    assert [line.split(": ", 1)[1] for line in report["rknn3"]["devices"]] == [
        "init hung (version mismatch?)"
    ] * 2
    assert len(report["problems"]) == 2
    assert "did not answer within 1 s" in report["problems"][0]["what"]


def test_without_librknn3_api_nothing_is_wrong_unless_asked_for(tmp_path):
    assert doctor.collect(environ={})["rknn3"]["library"] in (None, "librknn3_api.so")
    missing = {"EZ_RKNN3_RUNTIME_LIB": str(tmp_path / "librknn3_api.so")}
    [problem] = doctor.collect(environ=missing)["problems"]
    assert "EZ_RKNN3_RUNTIME_LIB=" in problem["what"] and "no such file" in problem["what"]
