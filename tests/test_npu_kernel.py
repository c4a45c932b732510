"""The NPU's kernel files: parsers on the drivers' real texts, readers on fake board trees."""

from __future__ import annotations

import os

import pytest

from ez_rknn_async.backends.rknn import kernel
from ez_rknn_async.backends.rknn.kernel import NpuFileError, Sram

from fake_board import RK3588_LOAD, SRAM_MM_512K, FakeBoard


@pytest.fixture
def board(tmp_path, monkeypatch) -> FakeBoard:
    monkeypatch.setenv(kernel.ROOT_ENV, str(tmp_path))
    return FakeBoard(tmp_path)


@pytest.mark.parametrize(
    ("text", "loads"),
    [
        (RK3588_LOAD, {0: 63, 1: 65, 2: 0}),
        ("NPU load:  Core0: 21%, Core1: 11%, Core2:  0%,\n", {0: 21, 1: 11, 2: 0}),  # rk3588
        ("NPU load:  Core0:100%, Core1:  7%,\n", {0: 100, 1: 7}),  # rk3576, two cores
        ("NPU load: 45%\n", {0: 45}),  # rk3566/rk3568: one core, no "CoreN:"
        ("NPU load:  0%\n", {0: 0}),
    ],
)
def test_parse_load_of_every_driver_layout(text, loads):
    assert kernel.parse_load(text) == loads


def test_parse_load_rejects_other_text():
    with pytest.raises(ValueError, match="not an rknpu load line"):
        kernel.parse_load("unavailable\n")


def test_parse_driver_version_and_sram():
    assert kernel.parse_driver_version("RKNPU driver: v0.9.8\n") == "0.9.8"
    assert kernel.parse_driver_version("garbage") is None
    assert kernel.parse_sram(SRAM_MM_512K) == Sram(total=978944, used=524288, free=454656)
    assert kernel.parse_sram("") is None


def test_root_defaults_to_slash_and_follows_the_environment(tmp_path):
    assert kernel.root({}) == "/"
    assert kernel.root({kernel.ROOT_ENV: str(tmp_path)}) == str(tmp_path)
    assert kernel.path("/sys/x", str(tmp_path)) == os.path.join(str(tmp_path), "sys/x")


def test_read_status_of_an_rk3588(board):
    board.rknpu(mm=SRAM_MM_512K)
    board.devfreq(cur_hz=800_000_000)
    status = kernel.read_status()
    assert status.driver == "rknpu" and status.driver_version == "0.9.8"
    assert status.loads == {0: 63, 1: 65, 2: 0}
    assert status.freq_hz == 1_000_000_000 and status.voltage_uv == 850000
    assert status.power == "on"
    assert status.sram == Sram(978944, 524288, 454656)
    assert status.devfreq is not None and status.devfreq.device == "fdab0000.npu"
    assert (status.devfreq.cur_hz, status.devfreq.max_hz) == (800_000_000, 1_000_000_000)
    assert status.devfreq.governor == "userspace"
    assert status.unavailable == {}


def test_procfs_variant_and_core_loads_api(board):
    board.rknpu(load="NPU load: 12%\n", debugfs="/proc/rknpu")
    assert kernel.read_core_loads() == {0: 12}
    assert kernel.read_core_loads(str(board.root)) == {0: 12}


def test_not_a_board(board):
    with pytest.raises(NpuFileError, match="no Rockchip NPU found") as info:
        kernel.read_core_loads()
    assert "rknpu driver" in info.value.hint
    status = kernel.read_status()
    assert status.driver is None and status.loads == {} and status.devfreq is None
    assert "no Rockchip NPU found" in status.unavailable["load"]


def test_old_driver_without_load(board):
    board.rknpu(version="0.4.2", load=None)
    with pytest.raises(NpuFileError, match="older than 0.7.2"):
        kernel.read_core_loads()


def test_not_root(board, monkeypatch):
    """As a user, debugfs (mode 700) hides rknpu/: the board is seen through sysfs only."""
    board.mkdir("/sys/bus/platform/drivers/RKNPU")
    board.mkdir("/sys/kernel/debug/dri")
    monkeypatch.setattr(kernel.os, "access", lambda *_args: False)
    with pytest.raises(NpuFileError, match="readable by root only") as info:
        kernel.read_core_loads()
    assert "sudo" in info.value.hint


def test_unreadable_load_file_is_a_permission_error(board, monkeypatch):
    board.rknpu()
    real_open = open

    def guarded(file, *args, **kwargs):  # what a non-root user meets in debugfs
        if str(file).endswith("rknpu/load"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", guarded)
    with pytest.raises(NpuFileError, match="permission denied reading .*rknpu/load") as info:
        kernel.read_core_loads()
    assert "run as root" in info.value.hint
    assert "permission denied" in kernel.read_status().unavailable["load"]


def test_board_with_the_npu_but_no_debugfs_mounted(board):
    board.mkdir("/sys/bus/platform/drivers/RKNPU")
    board.mkdir("/sys/kernel/debug")
    with pytest.raises(NpuFileError, match="debugfs is not mounted") as info:
        kernel.read_core_loads()
    assert "mount -t debugfs" in info.value.hint


def test_rocket_driver(board):
    board.rocket(accel=2)
    assert kernel.kernel_driver() == "rocket"
    assert kernel.accel_devices() == ["/dev/accel/accel0", "/dev/accel/accel1"]
    with pytest.raises(NpuFileError, match="mainline 'rocket' driver"):
        kernel.read_core_loads()


def test_kernel_release(board):
    assert kernel.kernel_release() is None
    board.kernel("6.18.2-edge-rockchip64")
    assert kernel.kernel_release() == "6.18.2-edge-rockchip64"
