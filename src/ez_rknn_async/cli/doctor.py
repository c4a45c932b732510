"""``ez-rknn doctor``: which runtime, SoC and NPU cores this machine has, and what to fix.

The probes live with the RKNN backend (``backends.rknn.doctor.collect``, guarded there); this module
only adds the optional packages the CLI itself uses and prints the dict. Exit code
``ExitCode.PROBLEMS`` when ``problems`` is not empty, so ``ez-rknn doctor && ...`` works in scripts.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable, Optional

from ..ray import BOARD_START
from .errors import ExitCode

__all__ = ["collect", "render", "exit_code", "OPTIONAL_PACKAGES"]

#: Packages that enable parts of the CLI, and what each one enables.
OPTIONAL_PACKAGES = {
    "onnxruntime": "ONNX models on the CPU, --compare ort,ort-async",
    "openvino": "--compare openvino",
    "tqdm": "progress bars",
    "matplotlib": "bench --plot",
    "pillow": "images for bench/compare --input",
    "ray": "a fleet of boards: serve --ray, ez_rknn_async.ray.Predictor",
}


def _package_versions() -> dict[str, Optional[str]]:
    from importlib import metadata

    found: dict[str, Optional[str]] = {}
    for name in OPTIONAL_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def collect(
    model: Optional[str] = None,
    probe: Optional[Callable[..., dict[str, Any]]] = None,
    probe3: Optional[Callable[[], dict[str, Any]]] = None,
) -> dict[str, Any]:
    """The RKNN backend's report (with ``model``'s versions when given), the RKNPU3 backend's
    ``rknn3`` section and its problems, plus an ``optional packages`` section."""
    if probe is None:
        probe = importlib.import_module("ez_rknn_async.backends.rknn.doctor").collect
    if probe3 is None:
        probe3 = importlib.import_module("ez_rknn_async.backends.rknn3.doctor").collect
    report = dict(probe() if model is None else probe(model=model))
    rknn3 = probe3()
    report["rknn3"] = rknn3["rknn3"]
    report["problems"] = list(report.get("problems") or []) + rknn3["problems"]
    report["packages"] = _package_versions()
    if report.get("runtime", {}).get("library") or rknn3.get("rknn3", {}).get("library"):
        report["fleet"] = _fleet()
    return report


def _fleet() -> dict[str, str]:
    """How this board joins a Ray fleet: printed where an NPU runtime was found."""
    cpus = os.cpu_count() or 1
    return {
        "join a Ray cluster": BOARD_START,
        "cpus": f"keep Ray's default --num-cpus ({cpus} here): a serve --ray replica takes 1, "
        "Ray Data tasks the rest",
    }


def exit_code(report: dict[str, Any]) -> ExitCode:
    return ExitCode.PROBLEMS if report.get("problems") else ExitCode.OK


def _value(value: Any, key: str = "") -> str:
    if value is None:
        return "-"
    if key == "npu_cores":  # a list of core ids: "0" alone would read as "no cores"
        return f"{len(value)} (ids {', '.join(map(str, value))})" if value else "none"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value) or "-"
    return str(value)


def render(report: dict[str, Any]) -> str:
    """Sections of ``key  value`` lines, then each problem with its fix."""
    lines: list[str] = []
    for section, values in report.items():
        if section == "problems" or not isinstance(values, dict):
            continue
        lines.append(section)
        width = max((len(str(key)) for key in values), default=0)
        for key, value in values.items():
            note = f"  ({OPTIONAL_PACKAGES[key]})" if section == "packages" else ""
            shown = (
                "not installed" if section == "packages" and value is None else _value(value, key)
            )
            if isinstance(value, (list, tuple)) and len(shown) > 60:  # paths: one per line
                lines.append(f"  {key}")
                lines += [f"    {item}" for item in value]
                continue
            lines.append(f"  {key:<{width}}  {shown}{note}")
        lines.append("")
    problems = report.get("problems") or []
    if not problems:
        lines.append("no problems found")
    else:
        lines.append(f"{len(problems)} problem{'s' if len(problems) > 1 else ''}:")
        for problem in problems:
            lines += [f"  - {problem['what']}", f"    fix: {problem['fix']}"]
    return "\n".join(lines)
