"""What the kernel tells about the NPU: the files of Rockchip's ``rknpu`` driver, devfreq, and the
mainline ``rocket`` driver. Plain readers and parsers, no librknnrt: ``ez-rknn top``, ``doctor`` and
the server's metrics all read the board through this one module.

Files (each taken under ``$EZ_RKNN_SYSFS_ROOT``, default ``/``, so tests build a fake tree):

* ``/sys/kernel/debug/rknpu/`` (debugfs, root only; ``/proc/rknpu/`` when the driver is built with
  ``CONFIG_ROCKCHIP_RKNPU_PROC_FS``): ``version`` ("RKNPU driver: v0.9.8"), ``load`` ("NPU load:
  Core0: 12%, Core1:  0%, Core2:  0%," on multi-core NPUs, "NPU load: 12%" on single-core ones;
  drivers older than 0.7.2 have none), ``freq`` (Hz), ``volt`` (µV), ``power`` (on/off) and ``mm``
  (SRAM use, only with ``CONFIG_ROCKCHIP_RKNPU_SRAM``: "SRAM total size: 978944, used: 0, free:
  978944", bytes). The vendor driver exposes no DRAM usage.
* ``/sys/class/devfreq/<addr>.npu/``: ``cur_freq``, ``min_freq``, ``max_freq`` (Hz), ``governor``.
* ``/sys/bus/platform/drivers/RKNPU`` (the vendor driver) and ``/sys/bus/platform/drivers/rocket``
  with ``/dev/accel/accel*`` (the mainline driver, Linux 6.18+), which exposes no load counters.
"""

from __future__ import annotations

import glob
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional

__all__ = [
    "ROOT_ENV",
    "DEBUGFS_DIRS",
    "DEVFREQ_GLOB",
    "NpuFileError",
    "Sram",
    "Devfreq",
    "NpuStatus",
    "root",
    "path",
    "parse_load",
    "parse_driver_version",
    "parse_sram",
    "find_debugfs",
    "read_core_loads",
    "read_devfreq",
    "kernel_driver",
    "kernel_release",
    "accel_devices",
    "read_status",
]

#: A directory standing in for ``/`` (a fake sysfs/debugfs/dev tree in tests).
ROOT_ENV = "EZ_RKNN_SYSFS_ROOT"
#: Where the rknpu driver puts its files: debugfs first, then the procfs variants.
DEBUGFS_DIRS = ("/sys/kernel/debug/rknpu", "/proc/rknpu", "/proc/debug/rknpu")
DEVFREQ_GLOB = "/sys/class/devfreq/*.npu"
_VENDOR_DRIVER = "/sys/bus/platform/drivers/RKNPU"
_ROCKET_DRIVER = "/sys/bus/platform/drivers/rocket"
_ACCEL_GLOB = "/dev/accel/accel*"
_OSRELEASE = "/proc/sys/kernel/osrelease"

_CORE_LOAD = re.compile(r"Core(\d+):\s*(\d+)\s*%")
_SINGLE_LOAD = re.compile(r"NPU load:\s*(\d+)\s*%")
_VERSION = re.compile(r"v?(\d+\.\d+\.\d+)")
_SRAM = re.compile(r"SRAM total size:\s*(\d+),\s*used:\s*(\d+),\s*free:\s*(\d+)")


class NpuFileError(OSError):
    """A driver file that is missing or unreadable, with what to do about it in ``hint``."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def root(environ: Optional[Mapping[str, str]] = None) -> str:
    """The directory taken for ``/``: ``$EZ_RKNN_SYSFS_ROOT`` or ``/``."""
    environ = os.environ if environ is None else environ
    return environ.get(ROOT_ENV, "") or "/"


def path(absolute: str, base: Optional[str] = None) -> str:
    """``absolute`` under ``base`` (default: ``root()``)."""
    return os.path.join(root() if base is None else base, absolute.lstrip("/"))


# --- parsers (pure) ----------------------------------------------------------------------------


def parse_load(text: str) -> dict[int, int]:
    """Per-core load in percent from the ``load`` file; a single-core NPU is core 0."""
    cores = {int(core): int(load) for core, load in _CORE_LOAD.findall(text)}
    if cores:
        return cores
    single = _SINGLE_LOAD.search(text)
    if single is None:
        raise ValueError(f"not an rknpu load line: {text.strip()[:80]!r}")
    return {0: int(single.group(1))}


def parse_driver_version(text: str) -> Optional[str]:
    """``0.9.8`` from "RKNPU driver: v0.9.8" (None if there is no version in ``text``)."""
    match = _VERSION.search(text)
    return match.group(1) if match else None


@dataclass(frozen=True)
class Sram:
    """NPU SRAM in bytes, from the ``mm`` file."""

    total: int
    used: int
    free: int


def parse_sram(text: str) -> Optional[Sram]:
    """The totals line of the ``mm`` bitmap dump; None if the file has none (SRAM not set up)."""
    match = _SRAM.search(text)
    return Sram(*(int(value) for value in match.groups())) if match else None


# --- readers -----------------------------------------------------------------------------------


def _read(file: str) -> str:
    with open(file, encoding="ascii", errors="replace") as handle:
        return handle.read()


def _read_int(file: str) -> Optional[int]:
    try:
        return int(_read(file).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def find_debugfs(base: Optional[str] = None) -> Optional[str]:
    """The first existing rknpu debug directory (whether or not it is readable), or None."""
    for candidate in DEBUGFS_DIRS:
        full = path(candidate, base)
        if os.path.isdir(full):
            return full
    return None


def _debugfs_error(base: Optional[str]) -> NpuFileError:
    """Why no rknpu file could be found: no NPU, the rocket driver, not root, or no debugfs."""
    driver = kernel_driver(base)
    if driver == "rocket":
        return NpuFileError(
            "the NPU is driven by the mainline 'rocket' driver, which reports no load",
            hint="`ez-rknn doctor` explains the options; Rockchip's rknpu driver has "
            "/sys/kernel/debug/rknpu/load",
        )
    if driver is None and read_devfreq(base) is None:
        return NpuFileError(
            "no Rockchip NPU found (no rknpu driver files, no NPU devfreq device)",
            hint="run on a Rockchip board whose kernel has the rknpu driver; `ez-rknn doctor` "
            "tells what this machine has",
        )
    debug = path("/sys/kernel/debug", base)
    if os.path.isdir(debug) and not os.access(debug, os.R_OK | os.X_OK):
        return NpuFileError(
            f"permission denied: {debug} is readable by root only",
            hint="run as root, e.g. sudo ez-rknn top",
        )
    if not os.path.isdir(debug) or not os.listdir(debug):
        return NpuFileError(
            f"debugfs is not mounted on {debug}",
            hint="mount it: sudo mount -t debugfs none /sys/kernel/debug",
        )
    return NpuFileError(
        "the NPU has no rknpu debug files (" + ", ".join(DEBUGFS_DIRS) + ")",
        hint="use a kernel built with CONFIG_ROCKCHIP_RKNPU_DEBUG_FS=y (Rockchip's default)",
    )


def read_core_loads(base: Optional[str] = None) -> dict[int, int]:
    """Per-core NPU load in percent, ``{core: percent}``, from the rknpu ``load`` file.

    The driver averages each core's busy time over its own window (about a second). Raises
    ``NpuFileError`` (an OSError) with a message and a ``hint`` when it cannot be read: no NPU,
    debugfs not mounted, not root, a driver too old to report load (< 0.7.2), or ``rocket``.
    """
    directory = find_debugfs(base)
    if directory is None:
        raise _debugfs_error(base)
    file = os.path.join(directory, "load")
    try:
        text = _read(file)
    except PermissionError:
        raise NpuFileError(
            f"permission denied reading {file}", hint="run as root, e.g. sudo ez-rknn top"
        ) from None
    except FileNotFoundError:
        raise NpuFileError(
            f"{file} does not exist: rknpu drivers older than 0.7.2 do not report load",
            hint="update the board's kernel (rknpu driver 0.9.x)",
        ) from None
    except OSError as exc:
        raise NpuFileError(f"cannot read {file}: {exc}") from exc
    try:
        return parse_load(text)
    except ValueError as exc:
        raise NpuFileError(f"{file}: {exc}", hint="report this output as a bug") from None


@dataclass(frozen=True)
class Devfreq:
    """The NPU's devfreq device: frequencies in Hz and the governor."""

    device: str
    cur_hz: Optional[int]
    min_hz: Optional[int]
    max_hz: Optional[int]
    governor: Optional[str]


def read_devfreq(base: Optional[str] = None) -> Optional[Devfreq]:
    """The first ``/sys/class/devfreq/*.npu`` device, or None (sysfs is readable by anyone)."""
    for directory in sorted(glob.glob(path(DEVFREQ_GLOB, base))):
        try:
            governor: Optional[str] = _read(os.path.join(directory, "governor")).strip()
        except OSError:
            governor = None
        return Devfreq(
            device=os.path.basename(directory),
            cur_hz=_read_int(os.path.join(directory, "cur_freq")),
            min_hz=_read_int(os.path.join(directory, "min_freq")),
            max_hz=_read_int(os.path.join(directory, "max_freq")),
            governor=governor,
        )
    return None


def accel_devices(base: Optional[str] = None) -> list[str]:
    """``/dev/accel/accel*`` nodes (compute accelerators of the kernel's accel subsystem)."""
    top = path("/", base)
    return sorted("/" + os.path.relpath(p, top) for p in glob.glob(path(_ACCEL_GLOB, base)))


def kernel_driver(base: Optional[str] = None) -> Optional[str]:
    """``"rknpu"`` (Rockchip's vendor driver), ``"rocket"`` (mainline) or None."""
    if os.path.isdir(path(_VENDOR_DRIVER, base)) or find_debugfs(base) is not None:
        return "rknpu"
    if os.path.isdir(path(_ROCKET_DRIVER, base)):
        return "rocket"
    return None


def kernel_release(base: Optional[str] = None) -> Optional[str]:
    """The running kernel's release, e.g. ``6.1.84-rockchip``, from procfs."""
    try:
        return _read(path(_OSRELEASE, base)).strip() or None
    except OSError:
        return None


@dataclass(frozen=True)
class NpuStatus:
    """One sample of everything ``ez-rknn top`` shows; None where the board does not tell.

    ``unavailable`` maps what could not be read (``load``, ``freq``, ...) to why.
    """

    time: float
    driver: Optional[str]
    driver_version: Optional[str]
    loads: dict[int, int]
    freq_hz: Optional[int]
    devfreq: Optional[Devfreq]
    voltage_uv: Optional[int]
    power: Optional[str]
    sram: Optional[Sram]
    unavailable: dict[str, str] = field(default_factory=dict)


def _optional(directory: Optional[str], name: str, unavailable: dict[str, str]) -> Optional[str]:
    if directory is None:
        return None
    file = os.path.join(directory, name)
    try:
        return _read(file)
    except FileNotFoundError:
        return None
    except OSError as exc:
        unavailable[name] = f"{file}: {exc.strerror or exc}"
        return None


def read_status(base: Optional[str] = None) -> NpuStatus:
    """One sample; never raises (what cannot be read is in ``unavailable``)."""
    unavailable: dict[str, str] = {}
    directory = find_debugfs(base)
    try:
        loads = read_core_loads(base)
    except NpuFileError as exc:
        loads = {}
        unavailable["load"] = str(exc)
    version = _optional(directory, "version", unavailable)
    if version is None:
        version = _optional(directory, "driver_version", unavailable)
    freq = _optional(directory, "freq", unavailable)
    volt = _optional(directory, "volt", unavailable)
    power = _optional(directory, "power", unavailable)
    sram = _optional(directory, "mm", unavailable)
    return NpuStatus(
        time=time.time(),
        driver=kernel_driver(base),
        driver_version=parse_driver_version(version) if version else None,
        loads=loads,
        freq_hz=_first_int(freq),
        devfreq=read_devfreq(base),
        voltage_uv=_first_int(volt),
        power=power.strip() if power else None,
        sram=parse_sram(sram) if sram else None,
        unavailable=unavailable,
    )


def _first_int(text: Optional[str]) -> Optional[int]:
    match = re.search(r"\b\d+\b", text or "")
    return int(match.group(0)) if match else None
