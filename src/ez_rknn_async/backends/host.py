"""Zero copy on host memory, for backends whose runtime reads and writes ordinary arrays.

A ``HostBuffer`` is a numpy array standing in for device memory: allocated here, or an mmap of an
imported fd (so a memfd plays the part of a dma-buf). ``HostMemory`` gives a backend
``allocate`` / ``import_dmabuf`` / ``adopt`` over such buffers. ``run_host_buffers`` (what a
``HostRunner``'s binding runs call) runs a binding through the runner's plain ``run``:
the inputs are read in place, the outputs copied into their buffers, and an output bound without
a shape (``None``) is returned as the runtime sized it. onnxruntime binds its buffers natively
instead (``onnxruntime.py``).
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from .base import BufferRequest, BufferTracker, DeviceBuffer, HostArrayBuffer, Runner

__all__ = ["HostBuffer", "HostMemory", "HostRunner", "run_host_buffers"]


class HostBuffer(HostArrayBuffer):
    """Host memory as a device buffer: ``array`` is allocated here, adopted from a run, or maps
    an imported fd."""

    def __init__(
        self,
        request: BufferRequest,
        tracker: BufferTracker,
        array: np.ndarray,
        mapping: Optional[mmap.mmap] = None,
        fd: int = -1,
        offset: int = 0,
    ) -> None:
        self._mapping = mapping
        self._fd = fd
        self._offset = offset
        super().__init__(request, tracker, array)

    @property
    def array(self) -> np.ndarray:
        """The memory itself (no copy): what a run reads and writes."""
        return self._array

    def _free(self) -> None:
        del self._array  # the last views of the mapping go, so it can be unmapped
        if self._mapping is not None:
            self._mapping.close()
            os.close(self._fd)

    def memory_info(self) -> dict[str, Any]:
        return {
            "size": self._array.nbytes,
            "fd": self._fd,
            "offset": self._offset,
            "dmabuf_backed": self._mapping is not None,
        }


class HostMemory:
    """Mixin for a ``Backend`` on host memory: set ``buffers`` (a ``BufferTracker``) and, for a
    runtime-specific buffer, ``buffer_type`` (a ``HostBuffer`` subclass)."""

    buffers: BufferTracker
    buffer_type: type[HostBuffer] = HostBuffer
    #: The runtime sizes an output bound without a shape at run time (``Backend`` reads this).
    sizes_outputs_at_run = True

    def allocate(self, request: BufferRequest) -> DeviceBuffer:
        return self.buffer_type(request, self.buffers, np.zeros(request.shape, request.dtype))

    def adopt(self, request: BufferRequest, array: np.ndarray) -> DeviceBuffer:
        """A buffer over ``array`` (an output the runtime sized and nobody else holds)."""
        return self.buffer_type(request, self.buffers, np.ascontiguousarray(array))

    def import_dmabuf(
        self, fd: int, request: BufferRequest, *, size: int, offset: int, virt_addr: Optional[int]
    ) -> DeviceBuffer:
        """Maps the fd itself (``virt_addr`` is not needed). Any mappable fd works: a memfd
        stands in for a dma-buf in tests."""
        available = os.fstat(fd).st_size
        if offset + size > available:
            raise ValueError(
                f"fd {fd} holds {available} bytes; offset {offset} + size {size} goes past its end"
            )
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        count = int(np.prod(request.shape, dtype=np.int64))
        with contextlib.ExitStack() as undo:
            own_fd = os.dup(fd)
            undo.callback(os.close, own_fd)
            mapping = mmap.mmap(own_fd, offset + size - start, offset=start)
            undo.callback(mapping.close)
            array = np.frombuffer(mapping, request.dtype, count, offset - start)
            buffer = self.buffer_type(
                request, self.buffers, array.reshape(request.shape), mapping, own_fd, offset
            )
            del array
            undo.pop_all()
        return buffer


def run_host_buffers(
    runner: Runner, inputs: Sequence[DeviceBuffer], outputs: Sequence[Optional[DeviceBuffer]]
) -> list[Optional[np.ndarray]]:
    """One binding run through ``runner.run``: what ``Runner.run_buffers`` does for a runtime
    with no binding API of its own. Returns the arrays of the ``None`` outputs."""
    arrays = [buffer.array for buffer in inputs]  # type: ignore[attr-defined]
    results = runner.run(arrays, range(len(outputs)))
    sized: list[Optional[np.ndarray]] = []
    for buffer, result in zip(outputs, results):
        if buffer is None:
            sized.append(result)
        else:
            buffer.write(result)
            sized.append(None)
    return sized


class HostRunner(Runner):
    """A runner whose runtime has no binding API: binding runs go through ``run``."""

    def run_buffers(self, inputs: Sequence[DeviceBuffer], outputs: Sequence[DeviceBuffer]) -> None:
        run_host_buffers(self, inputs, outputs)

    def run_buffers_sizing(
        self, inputs: Sequence[DeviceBuffer], outputs: Sequence[Optional[DeviceBuffer]]
    ) -> list[Optional[np.ndarray]]:
        return run_host_buffers(self, inputs, outputs)
