"""Zero-copy values of the RKNPU3 backend: host buffers holding a tensor's native bytes.

An ``rknn3_tensor_mem`` belongs to one context on one device, and a value must serve whichever
slot runs its task, on any device; its bytes cross PCIe in ``rknn3_mem_sync`` in any case. So a
value is host memory in the tensor's *native* layout and type (the shape the runtime reports,
e.g. NC1HWC2 int8): the user writes and reads what the NPU sees, nothing is converted, and a run
copies the bytes into its slot's tensor mems (one memcpy per tensor and direction).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..base import BufferRequest, BufferTracker, HostArrayBuffer

__all__ = ["NativeHostBuffer"]


class NativeHostBuffer(HostArrayBuffer):
    """``request.shape``/``dtype`` bytes of host memory (the native view of a tensor, or a
    generic dense buffer); ``raw`` is its bytes."""

    def __init__(self, request: BufferRequest, tracker: BufferTracker) -> None:
        array = np.zeros(request.shape, request.dtype)
        self.raw = array.reshape(-1).view(np.uint8)
        super().__init__(request, tracker, array)

    def _free(self) -> None:
        self.raw = self._array = np.empty(0, np.uint8)

    def memory_info(self) -> dict[str, Any]:
        return {"size": int(self._array.nbytes), "fd": -1, "offset": 0, "dmabuf_backed": False}
