"""What queried RKNPU3 tensor attrs mean to users: specs, and the host-side conversion.

librknn3_api has no ``want_float`` and no layout conversion: the host writes each input in the
tensor's own type and native layout (NC1HWC2 for 4-D tensors on the NPU) and reads outputs the
same way (RKNN3_ABI.md 5.2, what rknn3lite does in Python). ``TensorCodec`` does both directions
with numpy: quantise/dequantise with the attr's ``qnt_info``, and the layout through the RKNPU2
backend's ``NativeLayout``. Users see the original (NCHW) shapes and float32, as with RKNPU2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...tensors import TensorSpec, type_string
from ..rknn.abi import TensorFormat
from ..rknn.memory import NativeLayout
from .abi import Layout, TensorType

__all__ = ["TensorCodec", "codec", "text", "dims"]

#: numpy's name of each type is the enum name in lower case, except bool (INT4 has none).
_DTYPES: dict[int, np.dtype] = {
    t: np.dtype(np.bool_ if t == TensorType.BOOL else t.name.lower())
    for t in TensorType
    if t != TensorType.INT4
}
_FLOAT32 = np.dtype(np.float32)
#: Feeds taken as they are; each is converted through float64, as the reference does. Not
#: float64 itself: no backend casts silently (onnxruntime and the original refuse it too).
_ACCEPTS = tuple(np.dtype(t) for t in (np.float32, np.float16, np.uint8, np.int8, np.int32))


def text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def dims(attr: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in attr.shape[: attr.n_dims])


@dataclass(frozen=True)
class TensorCodec:
    """One model tensor: the user's spec, the native spec, and the conversions between them."""

    spec: TensorSpec
    native: TensorSpec
    dtype: np.dtype
    scale: float
    zero_point: int
    quantized: bool
    layout: NativeLayout
    aligned_size: int

    def encode(self, array: np.ndarray) -> np.ndarray:
        """``array`` (any accepted dtype) in the tensor's own type, original layout."""
        real = np.asarray(array, dtype=np.float64)
        if self.quantized:
            info = np.iinfo(self.dtype)
            q = np.clip(np.rint(real / self.scale) + self.zero_point, info.min, info.max)
            return q.astype(self.dtype)
        return real.astype(np.float32).astype(self.dtype)

    def decode(self, values: np.ndarray) -> np.ndarray:
        """Values of the tensor's own type as float32."""
        if self.quantized:
            real = (values.astype(np.float64) - self.zero_point) * self.scale
            return real.astype(np.float32)
        return values.astype(np.float32)

    def write(self, raw: np.ndarray, array: np.ndarray) -> None:
        self.layout.write(raw, self.encode(array))

    def read(self, raw: np.ndarray) -> np.ndarray:
        return self.decode(self.layout.read(raw))


def _layout_name(native: Any) -> str:
    """The runtime's name of a native attr's layout (NHWC, NC1HWC2...), for ``NodeArg.layout``."""
    try:
        return Layout(native.layout).name
    except ValueError:
        return Layout.UNDEFINED.name


def _layout(native: Any, shape: tuple[int, ...], dtype: np.dtype, name: str) -> NativeLayout:
    native_dims = dims(native)
    if native.layout == Layout.NC1HWC2 and len(shape) == 4 and len(native_dims) == 5:
        return NativeLayout(TensorFormat.NC1HWC2, native_dims, dtype, channels=shape[1])
    if native.layout == Layout.NHWC and len(shape) == 4:
        w = native_dims[2]
        return NativeLayout(TensorFormat.NHWC, native_dims, dtype, w_stride=w, channels=shape[1])
    if native_dims == shape or int(np.prod(native_dims)) == int(np.prod(shape)):
        return NativeLayout.dense(shape, dtype)
    raise ValueError(
        f"tensor {name!r}: native layout {Layout(native.layout).name} {list(native_dims)} of "
        f"original shape {list(shape)} is not supported"
    )


def codec(origin: Any, native: Any, fallback: str, is_input: bool) -> TensorCodec:
    """The codec of one tensor from its original-layout and native attrs."""
    name = text(origin.name) or fallback
    shape = dims(origin)
    dtype = _DTYPES.get(native.dtype)
    if dtype is None:
        raise ValueError(f"tensor {name!r}: type {native.dtype} is not supported")
    quantized = native.qnt_type != 0 and dtype.kind in "iu"
    type_name = type_string(dtype)
    spec = TensorSpec(name, shape, _FLOAT32, type=type_name, accepts=_ACCEPTS if is_input else ())
    native_spec = TensorSpec(name, dims(native), dtype, type=type_name, layout=_layout_name(native))
    layout = _layout(native, shape, dtype, name)
    if layout.size > native.aligned_size:
        raise ValueError(
            f"tensor {name!r}: {layout.describe()} needs {layout.size} bytes, the runtime "
            f"reports aligned_size {native.aligned_size}"
        )
    return TensorCodec(
        spec,
        native_spec,
        dtype,
        float(np.float64(np.float32(native.qnt_info.scale))),
        int(native.qnt_info.zero_point),
        quantized,
        layout,
        int(native.aligned_size),
    )
