"""``doctor.collect()``: what the machine has and what is missing, never raising."""

from __future__ import annotations

import pytest

from ez_rknn_async.backends.rknn import doctor, soc

pytest_plugins = ("rknn_fixtures",)


def test_with_the_emulated_runtime(npu, monkeypatch, tmp_path):
    version = tmp_path / "version"
    version.write_text("RKNPU driver: v0.9.8\n")
    monkeypatch.setattr(doctor, "DRIVER_VERSION_PATHS", (str(tmp_path / "none"), str(version)))
    monkeypatch.setenv("EZ_RKNN_SOC", "rk3576")
    report = doctor.collect()
    assert set(report) == {"python", "numpy", "runtime", "soc", "problems"}
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
