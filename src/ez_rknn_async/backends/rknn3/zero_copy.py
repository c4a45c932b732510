"""Zero copy for RKNPU3 models: values are host buffers of each tensor's native shape and type.

A run copies a value's bytes into the slot's own tensor mems (``Rknn3Runner.run_buffers``):
each context's mems live on its own cores, so a value cannot be one slot's mem. Dynamic-shape
models are refused (a value has one native shape).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from ...errors import BackendClosedError
from ...tensors import TensorSpec
from ..base import BufferRequest, BufferTracker, DeviceBuffer
from .describe import ModelDescription3
from .memory import NativeHostBuffer

__all__ = ["ZeroCopy3"]


class ZeroCopy3(ModelDescription3):
    """The zero-copy capability, on top of the description (a base of ``Rknn3Backend``, which
    sets ``buffers``, ``_lock`` and ``_closed``)."""

    buffers: BufferTracker
    _lock: threading.Lock
    _closed: bool

    @property
    def zero_copy_inputs(self) -> Sequence[TensorSpec]:
        """Values hold what the NPU reads: the native shape and the tensor's own type."""
        return self.native_inputs

    @property
    def zero_copy_outputs(self) -> Sequence[TensorSpec]:
        return self.native_outputs

    def allocate(self, request: BufferRequest) -> DeviceBuffer:
        """Host memory of the requested (native) shape and type; ``iobinding`` has checked
        both against ``zero_copy_inputs``/``outputs``, so every buffer binds as made."""
        if self.shapes.dynamic:
            raise ValueError(
                "zero copy is not supported for dynamic-shape RKNPU3 models (values have one "
                "native shape); use run/submit/run_async with numpy inputs"
            )
        with self._lock:
            if self._closed:
                raise BackendClosedError("the RKNPU3 backend is closed")
            return NativeHostBuffer(request, self.buffers)
