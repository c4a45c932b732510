"""What ``rknn_query`` answers mean to users: tensor attrs -> ``TensorSpec``, version strings.

Pure functions of the ctypes structs the backend queried (``RknnTensorAttr`` and friends); no
runtime call happens here, so the rules of SPEC.md 6.3 and 11 (names, NCHW/NHWC views, the
model's internal type strings) read in one place.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ...tensors import TensorSpec, dense_strides
from .abi import TensorFormat, TensorType

__all__ = [
    "INPUT_TYPES",
    "text",
    "MIN_API_VERSION",
    "MIN_API_TEXT",
    "api_version_outdated",
    "tensor_name",
    "shape",
    "type_string",
    "buffer_dtype",
    "input_spec",
    "input_format",
    "output_spec",
    "layout_name",
    "native_strides",
    "native_spec",
]

#: Array dtypes librknnrt converts itself (rknn_input.type with pass_through = 0).
INPUT_TYPES: dict[np.dtype, TensorType] = {
    np.dtype(np.float32): TensorType.FLOAT32,
    np.dtype(np.float16): TensorType.FLOAT16,
    np.dtype(np.int8): TensorType.INT8,
    np.dtype(np.uint8): TensorType.UINT8,
}
_ACCEPTS: tuple[np.dtype, ...] = tuple(INPUT_TYPES)
_FLOAT32 = np.dtype(np.float32)
#: The model's internal type as get_inputs()/get_outputs() show it (SPEC.md 11).
_TYPE_STRINGS = {
    TensorType.FLOAT32: "tensor(float)",
    TensorType.FLOAT16: "tensor(float16)",
    TensorType.INT8: "tensor(int8)",
    TensorType.UINT8: "tensor(uint8)",
    TensorType.INT16: "tensor(int16)",
    TensorType.UINT16: "tensor(uint16)",
    TensorType.INT32: "tensor(int32)",
    TensorType.UINT32: "tensor(uint32)",
    TensorType.INT64: "tensor(int64)",
    TensorType.BOOL: "tensor(bool)",
}
_NCHW_LAYOUTS = ("nchw", "nchw_software")
#: numpy views of the runtime's types (INT4 and BFLOAT16 have none: their bytes as uint8/uint16).
_DTYPES: dict[int, np.dtype] = {
    TensorType.FLOAT32: np.dtype(np.float32),
    TensorType.FLOAT16: np.dtype(np.float16),
    TensorType.INT8: np.dtype(np.int8),
    TensorType.UINT8: np.dtype(np.uint8),
    TensorType.INT16: np.dtype(np.int16),
    TensorType.UINT16: np.dtype(np.uint16),
    TensorType.INT32: np.dtype(np.int32),
    TensorType.UINT32: np.dtype(np.uint32),
    TensorType.INT64: np.dtype(np.int64),
    TensorType.BOOL: np.dtype(np.bool_),
    TensorType.INT4: np.dtype(np.uint8),
    TensorType.BFLOAT16: np.dtype(np.uint16),
}


def text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


#: Older runtimes work but are known to be buggy (SPEC.md 2).
MIN_API_VERSION = (2, 4, 1)
MIN_API_TEXT = ".".join(map(str, MIN_API_VERSION))


def api_version_outdated(version: str) -> bool:
    """Whether the first three integers of a runtime version string are below
    ``MIN_API_VERSION`` (the original's rule; a string without digits is not judged). One rule
    for the session's warning and ``ez-rknn doctor``."""
    numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:3])
    return bool(numbers) and numbers < MIN_API_VERSION


def tensor_name(attr: Any, fallback: str) -> str:
    return text(attr.name) or fallback


def shape(attr: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in attr.dims[: attr.n_dims])


def type_string(attr: Any) -> str:
    return _TYPE_STRINGS.get(attr.type, "tensor(unknown)")


def buffer_dtype(attr: Any) -> np.dtype:
    """The numpy view of a zero-copy buffer of this (native) attr; uint8 for unknown types."""
    return _DTYPES.get(attr.type, np.dtype(np.uint8))


def layout_name(fmt: int) -> str:
    """librknnrt's name of a tensor format (``get_format_string``): NCHW, NHWC, NC1HWC2."""
    try:
        return TensorFormat(fmt).name
    except ValueError:
        return TensorFormat.UNDEFINED.name


def native_strides(attr: Any) -> tuple[int, ...]:
    """Element strides of a native tensor as laid out in memory: the W axis padded to
    ``w_stride`` and the H axis to ``h_stride`` where the runtime pads them (0: not padded)."""
    dims = list(shape(attr))
    axes = {TensorFormat.NHWC: (1, 2), TensorFormat.NCHW: (2, 3), TensorFormat.NC1HWC2: (2, 3)}
    padded = axes.get(attr.fmt)
    if padded is not None and len(dims) > padded[1]:
        h_axis, w_axis = padded
        dims[w_axis] = max(dims[w_axis], int(attr.w_stride))
        dims[h_axis] = max(dims[h_axis], int(attr.h_stride))
    return dense_strides(tuple(dims))


def input_spec(attr: Any, index: int, layout: str) -> TensorSpec:
    """The user's view of an input: 4-D inputs are reported NHWC and shown NCHW unless the
    layout is nhwc/any (SPEC.md 6.3; the dims are taken as NHWC whatever ``fmt`` says)."""
    dims = shape(attr)
    view = TensorFormat.UNDEFINED.name
    if len(dims) == 4:
        view = TensorFormat.NHWC.name
        if layout in _NCHW_LAYOUTS:
            dims, view = (dims[0], dims[3], dims[1], dims[2]), TensorFormat.NCHW.name
    return TensorSpec(
        tensor_name(attr, f"input_{index}"),
        dims,
        _FLOAT32,
        type=type_string(attr),
        accepts=_ACCEPTS,
        layout=view,
    )


def input_format(attr: Any, layout: str) -> tuple[int, bool]:
    """(rknn_input.fmt, transpose NCHW->NHWC in numpy first) for one input."""
    if attr.n_dims != 4:
        return TensorFormat.UNDEFINED, False
    if layout == "nchw":
        return TensorFormat.NCHW, False  # librknnrt transposes
    return TensorFormat.NHWC, layout == "nchw_software"


def output_spec(attr: Any, index: int) -> TensorSpec:
    return native_spec(attr, f"output_{index}")


def native_spec(attr: Any, fallback: str) -> TensorSpec:
    """A tensor as the runtime reports it: its dims, layout name and padded strides."""
    return TensorSpec(
        tensor_name(attr, fallback),
        shape(attr),
        _FLOAT32,
        type=type_string(attr),
        layout=layout_name(attr.fmt),
        strides=native_strides(attr),
    )
