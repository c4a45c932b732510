"""``doctor.collect()``: what the machine has and what is missing, never raising."""

from __future__ import annotations

import json
import struct

import pytest

from ez_rknn_async.backends.rknn import doctor, kernel, soc
from ez_rknn_async.backends.rknn.model_file import RknnFileInfo, parse_model_file
from ez_rknn_async.cli.errors import ExitCode
from ez_rknn_async.cli.main import main

from fake_board import FakeBoard
from rknn_emu import EmuModel, EmuTensor

pytest_plugins = ("rknn_fixtures",)


def rknn_file(toolkit: str, platforms=("rk3588",), header: int = 64) -> bytes:
    """An .rknn file as rknn-toolkit2 lays it out: header, model data, then the JSON trailer."""
    data = b"\x11" * 40  # stands for the compiled network
    document = json.dumps({"version": toolkit, "target_platform": list(platforms)}).encode()
    head = b"RKNN" + bytes(4) + struct.pack("<QQ", 6, len(data))
    return head.ljust(header, b"\0") + data + struct.pack("<Q", len(document)) + document


def test_with_the_emulated_runtime(npu, monkeypatch, tmp_path):
    version = tmp_path / "version"
    version.write_text("RKNPU driver: v0.9.8\n")
    monkeypatch.setattr(doctor, "DRIVER_VERSION_PATHS", (str(tmp_path / "none"), str(version)))
    monkeypatch.setenv("EZ_RKNN_SOC", "rk3576")
    report = doctor.collect()
    assert set(report) == {"python", "numpy", "kernel", "runtime", "soc", "problems"}
    assert report["runtime"] == {
        "library": str(npu.paths.library),
        "api_version": "2.4.2 (ez-rknn emulator)",
        "driver_version": "0.9.8",
        "candidates": [str(npu.paths.library)],
    }
    assert report["soc"] == {"name": "rk3576", "source": "EZ_RKNN_SOC", "npu_cores": [0, 1]}
    assert report["problems"] == []
    assert report["numpy"]["version"] and report["python"]["version"]


def test_on_a_machine_without_an_npu(monkeypatch, tmp_path):
    monkeypatch.setenv("EZ_RKNN_RUNTIME_LIB", str(tmp_path / "librknnrt.so"))
    monkeypatch.delenv("EZ_RKNN_SOC", raising=False)
    monkeypatch.setattr(doctor, "DRIVER_VERSION_PATHS", (str(tmp_path / "none"),))
    monkeypatch.setattr(soc, "COMPATIBLE_PATHS", (str(tmp_path / "none"),))
    report = doctor.collect()
    assert report["runtime"]["library"] is None and report["runtime"]["api_version"] is None
    assert report["soc"] == {"name": None, "source": "unknown", "npu_cores": [0]}
    problems = {p["what"].split(" ")[0]: p["fix"] for p in report["problems"]}
    assert "EZ_RKNN_RUNTIME_LIB" in problems["librknnrt"]
    assert "rknpu driver" in problems["no"]
    assert problems["SoC"].startswith("set EZ_RKNN_SOC=rk3588")


def test_old_runtime_and_unknown_soc_name(npu, monkeypatch, tmp_path):
    old = tmp_path / "librknnrt.so"
    old.write_bytes(npu.paths.library.read_bytes().replace(b"version: 2.4.2", b"version: 2.3.0"))
    monkeypatch.setenv("EZ_RKNN_RUNTIME_LIB", str(old))
    monkeypatch.setenv("EZ_RKNN_SOC", "rk9999")
    whats = [p["what"] for p in doctor.collect()["problems"]]
    assert any("librknnrt 2.3.0" in w and "older than 2.4.1" in w for w in whats)
    assert any("'rk9999' is not a known SoC" in w for w in whats)


def test_a_failing_probe_is_a_problem_not_an_exception(monkeypatch):
    def broken(*_args):
        raise OSError("device tree exploded")

    monkeypatch.setattr(soc, "detect_soc", broken)
    report = doctor.collect()
    assert report["soc"]["name"] is None
    assert any("device tree exploded" in p["what"] for p in report["problems"])


@pytest.mark.parametrize(
    ("text", "version"), [("RKNPU driver: v0.9.6", "0.9.6"), ("garbage", None)]
)
def test_driver_version_file(tmp_path, text, version):
    path = tmp_path / "version"
    path.write_text(text)
    assert doctor.read_driver_version([str(path)]) == version


@pytest.mark.parametrize(
    "version, outdated",
    [
        ("2.3.2 (429f97ae6b@2025-04-09T09:09:27)", True),
        ("2.4", True),
        ("1.6.0", True),
        ("2.4.1 (abc@2026-01-01)", False),
        ("2.10.0", False),
        ("unknown", False),
    ],
)
def test_one_version_rule_for_the_warning_and_the_doctor(version, outdated):
    from ez_rknn_async.backends.rknn.attrs import api_version_outdated

    assert api_version_outdated(version) is outdated


# --- the model file's own statement --------------------------------------------------------------


@pytest.mark.parametrize("header", [64, 24])
def test_model_file_states_toolkit_and_platforms(header):
    info = parse_model_file(rknn_file("1.6.2-source_code", ("RK3588",), header))
    assert info == RknnFileInfo(6, "1.6.2-source_code", ("rk3588",))


def test_model_files_that_do_not_tell():
    emulator_model = EmuModel(
        [EmuTensor("x", "float32", (1, 4))], [EmuTensor("y", "float32", (1, 4))]
    )
    assert parse_model_file(emulator_model.data()) is None
    assert parse_model_file(b"RKNN" + bytes(60)) is None  # no trailer
    assert parse_model_file(rknn_file("2.3.0")[:-3]) is None  # cut short
    assert parse_model_file(b"\x08\x01onnx") is None


# --- the version triangle ------------------------------------------------------------------------


def info(toolkit, platforms=("rk3588",)):
    return RknnFileInfo(6, toolkit, tuple(platforms))


@pytest.mark.parametrize(
    ("driver", "api", "model", "soc_name", "expected"),
    [
        ("0.9.8", "2.3.2 (429f97ae6b@2025-04-09T09:09:27)", info("2.3.2"), "rk3588", []),
        ("0.9.8", "2.3.2 (x)", info("2.3.0-source"), "rk3588s", []),  # older toolkit, rk3588s
        ("0.9.8", "1.4.0 (a10f100eb@2022-09-09T09:07:14)", info("2.3.0"), "rk3588", ["newer than"]),
        ("0.9.1", "2.0.0b0", None, None, ["needs the rknpu driver 0.9.2"]),
        ("0.8.2", "1.6.0 (9a7b5d24c@2023-12-13)", None, "rk3588", []),  # a 1.x runtime is fine
        ("0.9.8", "2.3.2", info("2.3.2", ["rk3576"]), "rk3588", ["converted for rk3576"]),
        ("0.9.8", "2.3.2", info("2.3.2", ["rk3568"]), "rk3566", []),  # one NPU, two names
        (None, None, info("2.3.2"), None, []),  # unknown corners are not judged
    ],
)
def test_version_problems(driver, api, model, soc_name, expected):
    whats = [p["what"] for p in doctor.version_problems(driver, api, model, soc_name)]
    assert len(whats) == len(expected)
    for what, text in zip(whats, expected):
        assert text in what


# --- doctor on fake boards (EZ_RKNN_SYSFS_ROOT) --------------------------------------------------


@pytest.fixture
def board(tmp_path, monkeypatch) -> FakeBoard:
    root = tmp_path / "root"
    monkeypatch.setenv(kernel.ROOT_ENV, str(root))
    monkeypatch.delenv("EZ_RKNN_SOC", raising=False)
    return FakeBoard(root)


def test_vendor_board_with_matching_versions(npu, board, tmp_path, monkeypatch):
    board.kernel("6.1.84-rockchip")
    board.soc("rk3588")
    board.rknpu(version="0.9.8")
    model = tmp_path / "model.rknn"
    model.write_bytes(rknn_file("2.4.0", ("rk3588",)))
    report = doctor.collect(model=str(model))
    assert report["kernel"] == {
        "release": "6.1.84-rockchip",
        "npu_driver": "rknpu",
        "accel_devices": [],
    }
    assert report["runtime"]["driver_version"] == "0.9.8"
    assert report["soc"] == {"name": "rk3588", "source": "device-tree", "npu_cores": [0, 1, 2]}
    assert report["model"] == {
        "path": str(model),
        "toolkit_version": "2.4.0",
        "target_platforms": ["rk3588"],
    }
    assert report["problems"] == []


def test_rocket_board(npu, board, monkeypatch, capsys):
    board.kernel("6.18.2-edge-rockchip64")
    board.soc("rk3588")
    board.rocket()
    code = main(["doctor", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == ExitCode.PROBLEMS
    assert report["kernel"]["npu_driver"] == "rocket"
    assert report["kernel"]["accel_devices"] == ["/dev/accel/accel0"]
    (problem,) = report["problems"]
    assert "mainline 'rocket' driver" in problem["what"] and "cannot use it" in problem["what"]
    for option in ("vendor kernel", "Teflon", "backend='onnxruntime'"):
        assert option in problem["fix"]
    assert main(["doctor"]) == ExitCode.PROBLEMS
    out = capsys.readouterr().out
    assert "npu_driver     rocket" in out and "fix: either boot a Rockchip vendor kernel" in out


def test_mainline_kernel_without_an_npu_driver(board):
    board.kernel("6.18.0")
    board.soc("rk3588")
    (problem,) = [p for p in doctor.collect()["problems"] if "kernel driver" in p["what"]]
    assert "CONFIG_DRM_ACCEL_ROCKET" in problem["fix"]


def test_old_driver_under_a_2x_runtime(npu, board, monkeypatch):
    board.soc("rk3566", board="firefly,roc-rk3566-pc")
    board.rknpu(version="0.9.1", load="NPU load: 0%\n", debugfs="/proc/rknpu")
    report = doctor.collect()
    assert report["runtime"]["driver_version"] == "0.9.1"
    assert report["soc"]["name"] == "rk3566" and report["soc"]["npu_cores"] == [0]
    (problem,) = report["problems"]
    assert "librknnrt 2.4.2 (ez-rknn emulator) needs the rknpu driver 0.9.2" in problem["what"]


def test_doctor_model_newer_than_the_runtime_and_for_another_soc(npu, board, tmp_path, capsys):
    board.soc("rk3588")
    board.rknpu(version="0.9.8")
    model = tmp_path / "new.rknn"
    model.write_bytes(rknn_file("2.5.1+81f21f4d", ("rk3576",)))
    code = main(["doctor", str(model), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == ExitCode.PROBLEMS
    assert report["model"]["toolkit_version"] == "2.5.1+81f21f4d"
    whats = [p["what"] for p in report["problems"]]
    assert any("rknn-toolkit2 2.5.1+81f21f4d, newer than librknnrt 2.4.2" in w for w in whats)
    assert any("converted for rk3576, this SoC is rk3588" in w for w in whats)
    assert len(whats) == 2


def test_doctor_model_that_does_not_tell_and_a_missing_one(npu, board, tmp_path, capsys):
    board.soc("rk3588")
    board.rknpu(version="0.9.8")
    model = EmuModel([EmuTensor("x", "float32", (1, 4))], [EmuTensor("y", "float32", (1, 4))])
    path = model.write(tmp_path / "emu.rknn")
    assert main(["doctor", str(path), "--json"]) == ExitCode.OK
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == {"path": str(path), "toolkit_version": None, "target_platforms": []}
    assert main(["doctor", str(tmp_path / "missing.rknn")]) == ExitCode.NOT_FOUND
    assert "missing.rknn" in capsys.readouterr().err


def test_vendor_driver_seen_by_a_user(board):
    board.soc("rk3588")
    board.mkdir("/sys/bus/platform/drivers/RKNPU")  # sysfs is world-readable, debugfs is not
    report = doctor.collect()
    assert report["kernel"]["npu_driver"] == "rknpu"
    (problem,) = [p for p in report["problems"] if "rknpu" in p["what"]]
    assert "loaded but its version is not readable" in problem["what"]
    assert problem["fix"].startswith("run as root")


def test_doctor_prints_the_ray_start_line_of_a_board(npu, board, monkeypatch, capsys):
    board.kernel("6.1.84-rockchip")
    board.soc("rk3588")
    board.rknpu(version="0.9.8")
    assert main(["doctor"]) == ExitCode.OK
    out = capsys.readouterr().out
    assert "join a Ray cluster  ray start --address=HEAD:6379 --resources='{\"rknpu\": 1}'" in out
    assert main(["doctor", "--json"]) == ExitCode.OK
    fleet = json.loads(capsys.readouterr().out)["fleet"]
    assert (
        fleet["join a Ray cluster"] == "ray start --address=HEAD:6379 --resources='{\"rknpu\": 1}'"
    )


def test_doctor_without_a_runtime_has_no_ray_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("EZ_RKNN_RUNTIME_LIB", str(tmp_path / "librknnrt.so"))
    monkeypatch.setenv("EZ_RKNN3_RUNTIME_LIB", str(tmp_path / "librknn3_api.so"))
    assert main(["doctor", "--json"]) == ExitCode.PROBLEMS
    assert "fleet" not in json.loads(capsys.readouterr().out)
