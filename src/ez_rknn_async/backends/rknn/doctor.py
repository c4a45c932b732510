"""What this machine has for RKNN, and what is missing with the fix: the data of ``ez-rknn doctor``.

Every probe is guarded: ``collect`` reports a failing probe as a problem and never raises, so the
command works exactly on the machines where something is wrong. No model is needed: the runtime's
version is read from the banner librknnrt embeds ("librknnrt version: 2.3.2 (...)"), the driver's
from the rknpu driver's files. Given a model, its toolkit version and target platforms (when the
file states them) close the version triangle: kernel driver, librknnrt, toolkit.

Known-incompatible combinations (``version_problems``), each from Rockchip's own words:

* librknnrt older (major.minor) than the toolkit that built the model: the runtime rejects the
  file ("Invalid RKNN model version"); Rockchip: keep toolkit, runtime and rknn_server equal.
* librknnrt 2.x on an rknpu driver older than 0.9.2 (RKNN SDK User Guide 2.x: driver >= 0.9.2).
* a model converted for another SoC: ``rknn_init`` fails with RKNN_ERR_TARGET_PLATFORM_UNMATCH.
* the mainline ``rocket`` driver (Linux 6.18+, /dev/accel/accel*): librknnrt only talks to
  Rockchip's rknpu driver, so it cannot run at all (``kernel_problems``).
"""

from __future__ import annotations

import os
import platform
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

import numpy as np

from . import kernel, library, soc
from .attrs import MIN_API_TEXT, api_version_outdated
from .model_file import RknnFileInfo, read_model_file

__all__ = [
    "collect",
    "DRIVER_VERSION_PATHS",
    "MIN_DRIVER_FOR_SDK2",
    "read_api_version",
    "read_driver_version",
    "version_problems",
    "kernel_problems",
]

#: Where the rknpu kernel driver states its version ("RKNPU driver: v0.9.8"), under
#: ``kernel.root()``; the list of Rockchip's RKNN SDK User Guide (2.2.1) plus procfs builds.
DRIVER_VERSION_PATHS = (
    "/sys/kernel/debug/rknpu/version",
    "/sys/kernel/debug/rknpu/driver_version",
    "/proc/rknpu/version",
    "/proc/debug/rknpu/driver_version",
    "/proc/debug/rknpu/version",
    "/sys/module/rknpu/version",
)
#: The rknpu driver the RKNN SDK 2.x user guide asks for.
MIN_DRIVER_FOR_SDK2 = (0, 9, 2)
#: SoCs that run each other's models (one NPU generation under two names).
_SAME_NPU = {"rk3566": "rk3568", "rv1103": "rv1106", "rv1103b": "rv1106b"}
_BANNER = re.compile(rb"librknnrt version: ([^\0\n]+)")


def read_api_version(path: str) -> Optional[str]:
    """The version string embedded in a runtime library file, or None."""
    with open(path, "rb") as file:
        match = _BANNER.search(file.read())
    return match.group(1).decode("ascii", "replace").strip() if match else None


def read_driver_version(paths: Optional[Sequence[str]] = None) -> Optional[str]:
    """The rknpu driver's version from the first readable file of ``DRIVER_VERSION_PATHS``."""
    for path in DRIVER_VERSION_PATHS if paths is None else paths:
        try:
            with open(kernel.path(path), encoding="ascii", errors="replace") as file:
                version = kernel.parse_driver_version(file.read())
        except OSError:
            continue
        if version:
            return version
    return None


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def _npu_family(name: str) -> str:
    for alias, family in _SAME_NPU.items():
        if name.startswith(alias):
            return family
    return name


def version_problems(
    driver: Optional[str],
    api: Optional[str],
    model: Optional[RknnFileInfo],
    soc_name: Optional[str],
) -> list[dict[str, str]]:
    """The known-incompatible combinations among what is known (unknown corners are skipped)."""
    problems: list[dict[str, str]] = []
    toolkit = model.toolkit_version if model else None
    if api and toolkit and _numbers(api)[:2] < _numbers(toolkit)[:2]:
        problems.append(
            {
                "what": f"the model was built with rknn-toolkit2 {toolkit}, newer than librknnrt "
                f'{api}: the runtime rejects it ("Invalid RKNN model version")',
                "fix": f"update librknnrt.so to {toolkit} or newer (Rockchip: keep the toolkit, "
                "librknnrt and rknn_server at the same version)",
            }
        )
    if api and driver and _numbers(api)[:1] >= (2,) and _numbers(driver) < MIN_DRIVER_FOR_SDK2:
        wanted = ".".join(map(str, MIN_DRIVER_FOR_SDK2))
        problems.append(
            {
                "what": f"librknnrt {api} needs the rknpu driver {wanted} or newer; the kernel has "
                f"{driver} (RKNN SDK 2.x user guide)",
                "fix": "update the board's kernel to a Rockchip BSP with rknpu 0.9.x (or use a "
                "librknnrt 1.x that matches the driver)",
            }
        )
    platforms = model.target_platforms if model else ()
    if platforms and soc_name:
        family = _npu_family(soc_name)
        if not any(family.startswith(_npu_family(p)) for p in platforms):
            problems.append(
                {
                    "what": f"the model was converted for {', '.join(platforms)}, this SoC is "
                    f"{soc_name}: rknn_init fails with RKNN_ERR_TARGET_PLATFORM_UNMATCH",
                    "fix": f"convert it again with rknn.config(target_platform='{family}')",
                }
            )
    return problems


def kernel_problems(
    driver: Optional[str], release: Optional[str], soc_name: Optional[str] = None
) -> list[dict[str, str]]:
    """No readable rknpu driver version: why, and what the user can do: run as root, or, when
    ``rocket`` drives the NPU (or on a Rockchip SoC with Linux 6.18+ might), the options."""
    if driver == "rocket":
        return [
            {
                "what": "the NPU is driven by the mainline 'rocket' driver (/dev/accel, Linux "
                "6.18+): Rockchip's librknnrt only talks to its own rknpu driver and cannot use it",
                "fix": "either boot a Rockchip vendor kernel (BSP 5.10/6.1, rknpu 0.9.x) to run "
                ".rknn models; or keep mainline and run .tflite models on the NPU with Mesa's "
                "Teflon delegate (Mesa 25.3+, libteflon.so); or run .onnx models on the CPU with "
                "backend='onnxruntime' or 'openvino'",
            }
        ]
    if driver == "rknpu":  # loaded, but debugfs is root's
        return [
            {
                "what": "the rknpu driver is loaded but its version is not readable, so the "
                "versions cannot be checked",
                "fix": "run as root (the version is in debugfs: /sys/kernel/debug/rknpu/version)",
            }
        ]
    if driver is None:
        mainline = bool(release and soc_name) and _numbers(release or "")[:2] >= (6, 18)
        return [
            {
                "what": "no rknpu kernel driver found (or its version file is not readable)",
                "fix": "on a Rockchip board use a kernel with the rknpu driver and run as root to "
                "read debugfs"
                + (
                    " (this mainline kernel may have the 'rocket' driver instead: "
                    "CONFIG_DRM_ACCEL_ROCKET, which librknnrt cannot use)"
                    if mainline
                    else ""
                )
                + "; elsewhere run .onnx models with the onnxruntime backend",
            }
        ]
    return []


def _guard(problems: list[dict[str, str]], what: str, probe: Callable[[], Any]) -> Any:
    try:
        return probe()
    except Exception as exc:  # a doctor reports, it does not crash
        problems.append({"what": f"{what}: {exc}", "fix": "report this output as a bug"})
        return None


def _runtime(environ: Mapping[str, str], problems: list[dict[str, str]]) -> dict[str, Any]:
    info: dict[str, Any] = {
        "library": None,
        "api_version": None,
        "driver_version": None,
        "candidates": library.candidates(environ),
    }
    try:
        info["library"] = library.load_library(environ).path
    except library.RuntimeNotFoundError as exc:
        problems.append({"what": exc.what, "fix": exc.fix})
    if info["library"] and "/" in info["library"]:
        info["api_version"] = _guard(
            problems, "reading the runtime version", lambda: read_api_version(info["library"])
        )
    version = info["api_version"]
    if version and api_version_outdated(version):
        problems.append(
            {
                "what": f"librknnrt {version} is older than {MIN_API_TEXT}",
                "fix": f"update librknnrt.so to {MIN_API_TEXT} or newer (rknn-toolkit2 releases)",
            }
        )
    info["driver_version"] = _guard(problems, "reading the NPU driver version", read_driver_version)
    return info


def _kernel(
    problems: list[dict[str, str]], driver_version: Optional[str], soc_name: Optional[str]
) -> dict[str, Any]:
    driver = kernel.kernel_driver()
    if driver is None and driver_version is not None:
        driver = "rknpu"  # a version file readable where the driver's directories are not
    release = kernel.kernel_release()
    if driver_version is None:
        problems.extend(kernel_problems(driver, release, soc_name))
    return {"release": release, "npu_driver": driver, "accel_devices": kernel.accel_devices()}


def _model(path: str, info: Optional[RknnFileInfo]) -> dict[str, Any]:
    """What the file states (None/empty when it does not: encrypted or unknown layout)."""
    return {
        "path": path,
        "toolkit_version": info.toolkit_version if info else None,
        "target_platforms": list(info.target_platforms) if info else [],
    }


def _soc(environ: Mapping[str, str], problems: list[dict[str, str]]) -> dict[str, Any]:
    found = soc.detect_soc(environ)
    if found.name is None:
        problems.append(
            {
                "what": "SoC unknown (no Rockchip entry in the device tree): 1 NPU core assumed",
                "fix": f"set {soc.ENV_VAR}=rk3588 (or your SoC: {', '.join(soc.NPU_CORES)})",
            }
        )
    elif not found.name.startswith(tuple(soc.NPU_CORES)):
        problems.append(
            {
                "what": f"{soc.ENV_VAR}={found.name!r} is not a known SoC: 1 NPU core assumed",
                "fix": f"set {soc.ENV_VAR} to one of {', '.join(soc.NPU_CORES)}",
            }
        )
    return {"name": found.name, "source": found.source, "npu_cores": list(found.cores)}


def collect(
    environ: Optional[Mapping[str, str]] = None, model: Optional[str] = None
) -> dict[str, Any]:
    """``{"python", "numpy", "kernel", "runtime", "soc", ["model"], "problems"}`` for this machine
    (and ``model``, an .rknn file, when given); never raises."""
    environ = os.environ if environ is None else environ
    problems: list[dict[str, str]] = []
    empty_soc: dict[str, Any] = {"name": None, "source": "unknown", "npu_cores": []}
    runtime = _guard(problems, "probing librknnrt", lambda: _runtime(environ, problems)) or {
        "library": None,
        "api_version": None,
        "driver_version": None,
        "candidates": [],
    }
    found_soc = _guard(problems, "detecting the SoC", lambda: _soc(environ, problems)) or empty_soc
    report: dict[str, Any] = {
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
            "machine": platform.machine(),
        },
        "numpy": {"version": np.__version__},
        "kernel": _guard(
            problems,
            "probing the kernel",
            lambda: _kernel(problems, runtime["driver_version"], found_soc["name"]),
        )
        or {"release": None, "npu_driver": None, "accel_devices": []},
        "runtime": runtime,
        "soc": found_soc,
    }
    file_info: Optional[RknnFileInfo] = None
    if model is not None:
        file_info = _guard(problems, f"reading {model}", lambda: read_model_file(model))
        report["model"] = _model(model, file_info)
    problems.extend(
        version_problems(
            runtime["driver_version"], runtime["api_version"], file_info, found_soc["name"]
        )
    )
    report["problems"] = problems
    return report
