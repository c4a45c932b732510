"""Plain data describing tensors and models, shared by the session and every backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np

__all__ = [
    "Dim",
    "TensorSpec",
    "NodeArg",
    "ModelMetadata",
    "ONNX_TYPE_TO_DTYPE",
    "type_string",
    "dense_strides",
    "UNDEFINED_LAYOUT",
]

#: The layout name of a tensor whose runtime gives it none (librknnrt's ``UNDEFINED``; ONNX
#: tensors carry no layout).
UNDEFINED_LAYOUT = "UNDEFINED"

#: One dimension: an int when fixed, a symbolic name (str) or None when dynamic.
Dim = Union[int, str, None]

#: onnxruntime type strings and the numpy dtype they carry.
ONNX_TYPE_TO_DTYPE: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(bool)": np.dtype(np.bool_),
}
_DTYPE_TO_ONNX_TYPE = {dt: name for name, dt in ONNX_TYPE_TO_DTYPE.items()}


def type_string(dtype: Optional[np.dtype]) -> str:
    """The onnxruntime-style type string of a numpy dtype (``tensor(unknown)`` if it has none)."""
    if dtype is None:
        return "tensor(unknown)"
    return _DTYPE_TO_ONNX_TYPE.get(np.dtype(dtype), "tensor(unknown)")


def dense_strides(shape: tuple[Dim, ...]) -> tuple[int, ...]:
    """Row-major strides in elements; () when a dim is unknown (nothing fixes them then)."""
    strides: list[int] = []
    step = 1
    for dim in reversed(shape):
        if not isinstance(dim, int) or dim < 0:
            return ()
        strides.append(step)
        step *= dim
    return tuple(reversed(strides))


@dataclass(frozen=True)
class TensorSpec:
    """What a backend tells the engine about one model input or output.

    ``shape`` is in the user's layout (what ``run`` takes or returns). ``dtype`` is the element type
    a list input is converted to; ``accepts`` lists the array dtypes fed as they are (onnxruntime:
    exactly ``dtype``; RKNN: every type librknnrt converts itself). ``type`` is the string
    ``get_inputs()`` shows, which for RKNN is the model's internal type, as in the original.
    ``layout`` is the runtime's layout name (``NHWC``, ``NC1HWC2``...) and ``strides`` its
    element strides, padding included (RKNN's ``w_stride``); by default ``UNDEFINED`` and the
    dense strides of ``shape``.
    """

    name: str
    shape: tuple[Dim, ...]
    dtype: np.dtype
    type: str = ""
    accepts: tuple[np.dtype, ...] = ()
    layout: str = UNDEFINED_LAYOUT
    strides: Optional[tuple[int, ...]] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        if not self.type:
            object.__setattr__(self, "type", type_string(self.dtype))
        accepts = tuple(np.dtype(d) for d in self.accepts) or (self.dtype,)
        object.__setattr__(self, "accepts", accepts)
        if self.strides is None:
            object.__setattr__(self, "strides", dense_strides(self.shape))


class NodeArg:
    """Public, read-only view of a tensor, as onnxruntime's ``NodeArg`` (name, shape, type) plus
    the original 0.11's ``layout`` and ``strides`` (the runtime's layout name and element strides;
    native views include RKNN's row padding)."""

    __slots__ = ("_name", "_shape", "_type", "_layout", "_strides")

    def __init__(
        self,
        name: str,
        shape: list[Dim],
        type: str,
        layout: str = UNDEFINED_LAYOUT,
        strides: Optional[list[int]] = None,
    ) -> None:
        self._name, self._shape, self._type = name, list(shape), type
        self._layout = layout
        self._strides = list(dense_strides(tuple(shape)) if strides is None else strides)

    @classmethod
    def from_spec(cls, spec: TensorSpec) -> NodeArg:
        return cls(spec.name, list(spec.shape), spec.type, spec.layout, list(spec.strides or ()))

    @property
    def name(self) -> str:
        return self._name

    @property
    def shape(self) -> list[Dim]:
        return list(self._shape)

    @property
    def type(self) -> str:
        return self._type

    @property
    def layout(self) -> str:
        """``NCHW``, ``NHWC``, ``NC1HWC2`` or ``UNDEFINED`` (ONNX tensors carry no layout)."""
        return self._layout

    @property
    def strides(self) -> list[int]:
        """Element strides per dim (padding included); [] while a dim is dynamic."""
        return list(self._strides)

    def __repr__(self) -> str:
        return f"NodeArg(name={self._name!r}, type={self._type!r}, shape={self._shape!r})"

    def _key(self) -> tuple:
        return (self._name, self._shape, self._type, self._layout, self._strides)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NodeArg):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class ModelMetadata:
    """Model metadata in onnxruntime's shape. RKNN puts its custom string under
    ``custom_metadata_map["rknn_custom_string"]``."""

    producer_name: str = ""
    graph_name: str = ""
    domain: str = ""
    description: str = ""
    graph_description: str = ""
    version: int = 0
    custom_metadata_map: dict[str, str] = field(default_factory=dict)
