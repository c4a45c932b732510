"""What this machine has for RKNN, and what is missing with the fix: the data of ``ez-rknn doctor``.

Every probe is guarded: ``collect`` reports a failing probe as a problem and never raises, so the
command works exactly on the machines where something is wrong. No model is needed: the runtime's
version is read from the banner librknnrt embeds ("librknnrt version: 2.3.2 (...)"), the driver's
from the rknpu driver's files.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

import numpy as np

from . import library, soc
from .attrs import MIN_API_TEXT, api_version_outdated

__all__ = ["collect", "DRIVER_VERSION_PATHS", "read_api_version", "read_driver_version"]

#: Where the rknpu kernel driver states its version ("RKNPU driver: v0.9.8").
DRIVER_VERSION_PATHS = (
    "/sys/kernel/debug/rknpu/version",
    "/proc/debug/rknpu/version",
    "/sys/module/rknpu/version",
)
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
            with open(path, encoding="ascii", errors="replace") as file:
                match = re.search(r"v?(\d+\.\d+\.\d+)", file.read())
        except OSError:
            continue
        if match:
            return match.group(1)
    return None


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
    if info["driver_version"] is None:
        problems.append(
            {
                "what": "no rknpu kernel driver found (or its version file is not readable)",
                "fix": "on a Rockchip board use a kernel with the rknpu driver and run as root to "
                "read debugfs; elsewhere run .onnx models with the onnxruntime backend",
            }
        )
    return info


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


def collect(environ: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """``{"python", "numpy", "runtime", "soc", "problems"}`` for this machine; never raises."""
    environ = os.environ if environ is None else environ
    problems: list[dict[str, str]] = []
    empty_soc: dict[str, Any] = {"name": None, "source": "unknown", "npu_cores": []}
    return {
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
            "machine": platform.machine(),
        },
        "numpy": {"version": np.__version__},
        "runtime": _guard(problems, "probing librknnrt", lambda: _runtime(environ, problems))
        or {"library": None, "api_version": None, "driver_version": None, "candidates": []},
        "soc": _guard(problems, "detecting the SoC", lambda: _soc(environ, problems)) or empty_soc,
        "problems": problems,
    }
