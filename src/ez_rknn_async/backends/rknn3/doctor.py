"""What this machine has for RKNPU3 (librknn3_api, devices, versions), and what to fix.

``collect`` never raises. Without the library nothing is wrong (most boards have no RK182x card)
unless ``EZ_RKNN3_RUNTIME_LIB`` asks for one. The library's version is read from the banner the
binaries embed ("librknn3_api version: 1.1.0"), the devices from ``rknn3_find_devices``.

The proxy/firmware version needs a context, and ``rknn3_init`` against a proxy or firmware of
another version *hangs* on 1.0.x runtimes (1.1 returns RKNN3_ERR_INCOMPATIBLE_VERSION instead).
So each device is opened in a child process (``python -m ez_rknn_async.backends.rknn3.doctor``)
under a timeout: a child that does not answer is killed and reported as that mismatch.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any, Optional

from ...errors import RuntimeNotFoundError
from . import library
from .abi import CONTEXT_TYPE, Query, error_name
from .devices import find_devices

__all__ = ["collect", "read_library_version", "probe_devices", "PROBE_TIMEOUT_S"]

PROBE_TIMEOUT_S = 15.0
_BANNER = re.compile(rb"librknn3_api version: ([^\0\n]+)")
_SAME_VERSION = (
    "install one SDK version of librknn3_api, rknn3_transfer_proxy and the card's firmware "
    "(rknn3-runtime of the same airockchip/rknn3-toolkit release), then restart the proxy"
)

Problems = list[dict[str, str]]


def read_library_version(path: str) -> Optional[str]:
    """The version string embedded in a librknn3_api file, or None."""
    with open(path, "rb") as file:
        match = _BANNER.search(file.read())
    return match.group(1).decode("ascii", "replace").strip() if match else None


def _open_device(lib: Any, device_id: str) -> dict[str, Any]:
    """In the child: rknn3_init on one device, its SDK versions, rknn3_destroy."""
    abi = lib.abi
    extend = abi.struct("rknn3_init_extend")()
    name = ctypes.create_string_buffer(device_id.encode())
    extend.device_id = ctypes.addressof(name)
    context = CONTEXT_TYPE()
    code = lib.rknn3_init(ctypes.byref(context), ctypes.byref(extend))
    if code:
        return {"id": device_id, "error": code}
    versions = abi.struct("rknn3_sdk_version")()
    code = lib.rknn3_query(
        context.value, Query.SDK_VERSION, ctypes.byref(versions), ctypes.sizeof(versions)
    )
    lib.rknn3_destroy(context.value)
    if code:
        return {"id": device_id, "error": code}
    return {
        "id": device_id,
        "api_version": versions.api_version.decode(errors="replace"),
        "drv_version": versions.drv_version.decode(errors="replace"),
    }


def _child() -> None:
    """``python -m ez_rknn_async.backends.rknn3.doctor DEVICE_ID``: one JSON line."""
    lib = library.load_library()
    print(json.dumps(_open_device(lib, sys.argv[1])), flush=True)


def probe_devices(
    device_ids: list[str], environ: Mapping[str, str], timeout_s: float
) -> list[Optional[dict[str, Any]]]:
    """One child per device, in parallel under one deadline; None for a child that did not
    answer in time (it is killed)."""
    children = [
        subprocess.Popen(
            [sys.executable, "-m", __name__, device_id],
            env=dict(environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for device_id in device_ids
    ]
    results: list[Optional[dict[str, Any]]] = []
    deadline = time.monotonic() + timeout_s
    for child in children:
        try:
            out, _ = child.communicate(timeout=max(0.0, deadline - time.monotonic()))
            results.append(json.loads(out) if child.returncode == 0 and out.strip() else None)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            results.append(None)
    return results


def _device_problems(
    device_id: str, result: Optional[dict[str, Any]], timeout_s: float, problems: Problems
) -> str:
    """The device's line for the report; appends what is wrong with it to ``problems``."""
    if result is None:
        problems.append(
            {
                "what": f"rknn3_init on {device_id} did not answer within {timeout_s:g} s: "
                "librknn3_api and rknn3_transfer_proxy/firmware are probably of different "
                "versions (1.0.x runtimes hang on that), or the proxy is stuck",
                "fix": _SAME_VERSION,
            }
        )
        return "init hung (version mismatch?)"
    code = result.get("error")
    if code is not None:
        name = error_name(code)
        fix = _SAME_VERSION if code == -18 else "check the card and that rknn3_transfer_proxy runs"
        problems.append({"what": f"rknn3_init on {device_id} failed: {name} ({code})", "fix": fix})
        return f"init failed: {name}"
    api, drv = result["api_version"], result["drv_version"]
    if library.version_of(api) != library.version_of(drv):
        problems.append(
            {
                "what": f"{device_id}: librknn3_api {api} but proxy/firmware {drv}",
                "fix": _SAME_VERSION,
            }
        )
    return f"api {api}, proxy/firmware {drv}"


def collect(
    environ: Optional[Mapping[str, str]] = None, timeout_s: float = PROBE_TIMEOUT_S
) -> dict[str, Any]:
    """``{"rknn3": {...}, "problems": [...]}``; never raises."""
    environ = os.environ if environ is None else environ
    problems: Problems = []
    info: dict[str, Any] = {
        "library": None,
        "library_version": None,
        "abi": None,
        "devices": [],
        "candidates": library.candidates(environ),
    }
    try:
        lib = library.load_library(environ=environ)
        info["library"], info["abi"] = lib.path, lib.abi.version
        if os.sep in lib.path:
            info["library_version"] = read_library_version(lib.path)
        devices = find_devices(lib, lib.abi)
        results = probe_devices([d.id for d in devices], environ, timeout_s)
        info["devices"] = [
            f"{d.id} ({d.type}, {d.cores} cores): "
            + _device_problems(d.id, result, timeout_s, problems)
            for d, result in zip(devices, results)
        ]
        if not devices:
            problems.append(
                {
                    "what": "librknn3_api found no RKNPU3 device",
                    "fix": "check the card and its driver, and start rknn3_transfer_proxy "
                    "(rknn3-server on RK3572)",
                }
            )
    except RuntimeNotFoundError as exc:
        if environ.get(library.ENV_VAR, "").strip():
            problems.append({"what": exc.what, "fix": exc.fix})
    except Exception as exc:  # a doctor reports, it does not crash
        problems.append({"what": f"probing librknn3_api: {exc}", "fix": "see the message"})
    return {"rknn3": info, "problems": problems}


if __name__ == "__main__":
    _child()
