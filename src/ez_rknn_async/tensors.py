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
]

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


@dataclass(frozen=True)
class TensorSpec:
    """What a backend tells the engine about one model input or output.

    ``shape`` is in the user's layout (what ``run`` takes or returns). ``dtype`` is the element type
    a list input is converted to; ``accepts`` lists the array dtypes fed as they are (onnxruntime:
    exactly ``dtype``; RKNN: every type librknnrt converts itself). ``type`` is the string
    ``get_inputs()`` shows, which for RKNN is the model's internal type, as in the original.
    """

    name: str
    shape: tuple[Dim, ...]
    dtype: np.dtype
    type: str = ""
    accepts: tuple[np.dtype, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        if not self.type:
            object.__setattr__(self, "type", type_string(self.dtype))
        accepts = tuple(np.dtype(d) for d in self.accepts) or (self.dtype,)
        object.__setattr__(self, "accepts", accepts)


class NodeArg:
    """Public, read-only view of a tensor, as onnxruntime's ``NodeArg``: name, shape, type."""

    __slots__ = ("_name", "_shape", "_type")

    def __init__(self, name: str, shape: list[Dim], type: str) -> None:
        self._name, self._shape, self._type = name, list(shape), type

    @classmethod
    def from_spec(cls, spec: TensorSpec) -> NodeArg:
        return cls(spec.name, list(spec.shape), spec.type)

    @property
    def name(self) -> str:
        return self._name

    @property
    def shape(self) -> list[Dim]:
        return list(self._shape)

    @property
    def type(self) -> str:
        return self._type

    def __repr__(self) -> str:
        return f"NodeArg(name={self._name!r}, type={self._type!r}, shape={self._shape!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NodeArg):
            return NotImplemented
        return (self._name, self._shape, self._type) == (other._name, other._shape, other._type)

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
