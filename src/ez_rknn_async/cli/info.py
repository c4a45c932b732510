"""``ez-rknn info MODEL``: what a model takes and gives, and which backend serves it and why."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, Optional

from ..backends import ModelSource
from ..backends.rknn3 import model as rknpu3_model
from ..tensors import UNDEFINED_LAYOUT
from .errors import MODEL_HINT, user_input
from .report import format_table

__all__ = ["backend_reason", "guess_layout", "describe", "render"]


def backend_reason(source: ModelSource, forced: Optional[str]) -> str:
    """Why ``choose_backend`` picked what it picked, in the words of its rules."""
    if forced is not None:
        return "forced with --backend"
    if source.data.startswith(rknpu3_model.MAGICS):
        return "the content starts with the RKNPU3 magic"
    if rknpu3_model.is_rknpu3(source.data, source.path):
        return "a .weight file with the same name lies next to it (an RKNPU3 export)"
    path = (source.path or "").lower()
    if path.endswith(".onnx"):
        return "the file name ends in .onnx"
    if path.endswith(".rknn"):
        return "the file name ends in .rknn"
    if source.looks_like_onnx:
        return "the content starts like an ONNX protobuf"
    return "the content is not ONNX, so it is taken for an RKNN model"


def guess_layout(node: Any) -> str:
    """The node's own layout if it reports one (RKNN native tensors), else a guess from a 4-D
    shape: channels (1, 3 or 4) next to the batch is NCHW, last is NHWC; ``*`` marks a guess."""
    layout = getattr(node, "layout", None)
    if layout and layout != UNDEFINED_LAYOUT:
        return str(layout)
    shape = list(node.shape)
    if len(shape) != 4:
        return "-"
    if shape[1] in (1, 3, 4) and shape[3] not in (1, 3, 4):
        return "NCHW*"
    if shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4):
        return "NHWC*"
    return "-"


def _tensors(nodes: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        {"name": n.name, "shape": list(n.shape), "type": n.type, "layout": guess_layout(n)}
        for n in nodes
    ]


def describe(model: str, backend: Optional[str] = None) -> dict[str, Any]:
    """Everything ``info`` shows, as plain data (the ``--json`` document)."""
    from .. import InferenceSession, make_provider_options

    source = ModelSource.from_user(model)
    with user_input(MODEL_HINT):
        session = InferenceSession(model, provider_options=make_provider_options(backend=backend))
    with session:
        meta = session.get_modelmeta()
        native_in, native_out = session.get_native_inputs(), session.get_native_outputs()
        info = {
            "model": {"path": os.path.abspath(model), "bytes": len(source.data)},
            "backend": {
                "name": session.backend_name,
                "reason": backend_reason(source, backend),
                "providers": list(session.get_providers()),
                "workers": len(session.worker_slots),
            },
            "inputs": _tensors(session.get_inputs()),
            "outputs": _tensors(session.get_outputs()),
            "native_inputs": _tensors(native_in),
            "native_outputs": _tensors(native_out),
            "metadata": asdict(meta) if hasattr(meta, "__dataclass_fields__") else vars(meta),
        }
        if session.backend_name == "rknn":
            info["runtime"] = _rknn_runtime()
        if session.backend_name == "rknn3":
            info["runtime"] = _rknn3_runtime()
    return info


def _rknn3_runtime() -> dict[str, Any]:
    """librknn3_api, its version and ABI, and the devices (without opening them: ``ez-rknn
    doctor`` does that, under a timeout)."""
    from ..backends.rknn3 import doctor, library
    from ..backends.rknn3.devices import find_devices

    lib = library.load_library()
    version = doctor.read_library_version(lib.path) if os.sep in lib.path else None
    devices = find_devices(lib, lib.abi)
    return {
        "library": lib.path,
        "api_version": version,
        "driver_version": None,
        "abi": lib.abi.version,
        "devices": [f"{d.id} ({d.type}, {d.cores} cores)" for d in devices],
    }


def _rknn_runtime() -> dict[str, Any]:
    """The runtime library, its and the driver's versions, and the SoC with its NPU cores: what
    a bug report about an RKNN model needs next to the tensors (``ez-rknn doctor`` has more)."""
    from ..backends.rknn.doctor import collect

    machine = collect()
    runtime = {key: machine["runtime"][key] for key in ("library", "api_version", "driver_version")}
    return {**runtime, "soc": machine["soc"]["name"], "npu_cores": machine["soc"]["npu_cores"]}


def _clip(text: str, width: int = 80) -> str:
    """One line of at most ``width`` characters (YOLO exports put whole class lists here)."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _shape_text(shape: Sequence[Any]) -> str:
    """``[batch, 3, 320, 320]``; symbolic dims longer than a name (shape formulas) become ``?``."""
    dims = [str(d) if isinstance(d, int) or d is None or len(d) <= 12 else "?" for d in shape]
    return "[" + ", ".join(dims) + "]"


def _tensor_table(title: str, tensors: list[dict[str, Any]]) -> str:
    rows = [[t["name"], _shape_text(t["shape"]), t["type"], t["layout"]] for t in tensors]
    table = format_table(["name", "shape", "type", "layout"], rows, [True, True, True, True])
    return f"{title}\n" + "\n".join("  " + line for line in table.splitlines())


def render(info: dict[str, Any]) -> str:
    """The human page: model, backend and why, tensors, native tensors, metadata."""
    backend = info["backend"]
    lines = [
        f"model     {info['model']['path']} ({info['model']['bytes'] / 1e6:.2f} MB)",
        f"backend   {backend['name']}: {backend['reason']}",
        f"providers {', '.join(backend['providers'])}; {backend['workers']} worker slots",
    ]
    runtime = info.get("runtime")
    if runtime is not None:
        lines.append(
            f"runtime   {runtime['library']} (api {runtime['api_version'] or 'unknown'}, "
            f"driver {runtime['driver_version'] or 'unknown'})"
        )
    if runtime is not None and "soc" in runtime:
        cores = ", ".join(map(str, runtime["npu_cores"])) or "none found"
        lines.append(f"soc       {runtime['soc'] or 'unknown'}, NPU cores {cores}")
    if runtime is not None and "devices" in runtime:
        lines.append(f"devices   {'; '.join(runtime['devices']) or 'none found'}")
    lines += [
        "",
        _tensor_table("inputs", info["inputs"]),
        "",
        _tensor_table("outputs", info["outputs"]),
    ]
    if (info["native_inputs"], info["native_outputs"]) != (info["inputs"], info["outputs"]):
        lines += [
            "",
            _tensor_table("native inputs (runtime view)", info["native_inputs"]),
            "",
            _tensor_table("native outputs (runtime view)", info["native_outputs"]),
        ]
    meta = dict(info["metadata"])
    custom = meta.pop("custom_metadata_map", {}) or {}
    lines += ["", "metadata"]
    items = [(k, v) for k, v in meta.items() if v not in ("", None)] + sorted(custom.items())
    lines += [f"  {key:<18} {_clip(str(value))}" for key, value in items]
    if any(t["layout"].endswith("*") for t in info["inputs"] + info["outputs"]):
        lines += ["", "* layout guessed from the shape"]
    return "\n".join(lines)
