"""A fake Rockchip board as a directory tree: what ``EZ_RKNN_SYSFS_ROOT`` points the readers at.

The texts are the drivers' real formats (rknpu_debugger.c, rknpu_mm.c, devfreq sysfs), as users
post them: ``NPU load:  Core0: 63%, Core1: 65%, Core2: 64%,``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

__all__ = ["FakeBoard", "RK3588_LOAD", "SRAM_MM_512K"]

RK3588_LOAD = "NPU load:  Core0: 63%, Core1: 65%, Core2:  0%,\n"
#: ``cat /sys/kernel/debug/rknpu/mm`` after 512 KiB of the RK3588's 956 KiB SRAM were taken.
SRAM_MM_512K = """SRAM bitmap: "*" - used, "." - free (1bit = 4KB)
[000] [********************************]
[001] [********************************]
[002] [********************************]
[003] [********************************]
[004] [................................]
[005] [................................]
[006] [................................]
[007] [...............]
SRAM total size: 978944, used: 524288, free: 454656
"""


class FakeBoard:
    """Builds the files under ``root``; each method adds one part of a board."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, absolute: str, text: str) -> Path:
        file = self.root / absolute.lstrip("/")
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text)
        return file

    def mkdir(self, absolute: str) -> Path:
        directory = self.root / absolute.lstrip("/")
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def kernel(self, release: str) -> None:
        self.write("/proc/sys/kernel/osrelease", release + "\n")

    def soc(self, name: str, board: str = "radxa,rock-5b") -> None:
        self.write("/proc/device-tree/compatible", f"{board}\0rockchip,{name}\0")

    def rknpu(
        self,
        version: Optional[str] = "0.9.8",
        load: Optional[str] = RK3588_LOAD,
        freq_hz: int = 1_000_000_000,
        mm: Optional[str] = None,
        debugfs: str = "/sys/kernel/debug/rknpu",
    ) -> Path:
        """Rockchip's vendor driver with its debugfs files (``load=None``: a driver < 0.7.2)."""
        self.mkdir("/sys/bus/platform/drivers/RKNPU")
        directory = self.mkdir(debugfs)
        if version is not None:
            self.write(f"{debugfs}/version", f"RKNPU driver: v{version}\n")
        if load is not None:
            self.write(f"{debugfs}/load", load)
        self.write(f"{debugfs}/freq", f"{freq_hz}\n")
        self.write(f"{debugfs}/volt", "850000\n")
        self.write(f"{debugfs}/power", "on\n")
        if mm is not None:
            self.write(f"{debugfs}/mm", mm)
        return directory

    def devfreq(
        self, device: str = "fdab0000.npu", cur_hz: int = 1_000_000_000, governor: str = "userspace"
    ) -> None:
        base = f"/sys/class/devfreq/{device}"
        self.write(f"{base}/cur_freq", f"{cur_hz}\n")
        self.write(f"{base}/min_freq", "300000000\n")
        self.write(f"{base}/max_freq", "1000000000\n")
        self.write(f"{base}/governor", governor + "\n")

    def rocket(self, accel: int = 1) -> None:
        """The mainline driver: a platform driver and /dev/accel nodes, no debugfs files."""
        self.mkdir("/sys/bus/platform/drivers/rocket")
        for index in range(accel):
            self.write(f"/dev/accel/accel{index}", "")
