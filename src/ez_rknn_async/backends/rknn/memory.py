"""Zero-copy memory of the RKNN backend: native layouts and ``rknn_tensor_mem`` buffers.

A buffer is one ``rknn_tensor_mem`` (``rknn_create_mem``/``_mem2``, or ``rknn_create_mem_from_fd``
over a dma-buf: an imported fd, or one from ``/dev/dma_heap/system``), created on the backend's
*memory context*. Users always see the logical tensor (``BufferRequest.shape``); ``NativeLayout``
maps it to the bytes the NPU reads or writes (NHWC rows padded to ``w_stride``, NC1HWC2 channel
blocks), so ``read``/``write`` convert with numpy views and at most one copy.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import struct
from dataclasses import dataclass
from math import prod
from typing import Any, Optional

import numpy as np

from ..base import BufferRequest, BufferTracker, DeviceBuffer
from .abi import MemSyncMode, RknnTensorMem, TensorFormat
from .context import Context
from .library import check

__all__ = ["NativeLayout", "RknnBuffer", "DMA_HEAP", "dma_heap_alloc", "map_bytes"]

#: The dma-heap tried first for cacheable buffers (shareable with RGA, encoders...).
DMA_HEAP = "/dev/dma_heap/system"
# struct dma_heap_allocation_data { __u64 len; __u32 fd; __u32 fd_flags; __u64 heap_flags; };
_HEAP_DATA = struct.Struct("=QIIQ")
# DMA_HEAP_IOCTL_ALLOC = _IOWR('H', 0x0, struct dma_heap_allocation_data)
_HEAP_IOCTL_ALLOC = 0xC0000000 | (_HEAP_DATA.size << 16) | (ord("H") << 8)
_BYTE_P = ctypes.POINTER(ctypes.c_uint8)
_FORMAT_NAMES: dict[int, str] = {
    TensorFormat.NCHW: "NCHW",
    TensorFormat.NHWC: "NHWC",
    TensorFormat.NC1HWC2: "NC1HWC2",
    TensorFormat.UNDEFINED: "dense",
}


def dma_heap_alloc(size: int) -> Optional[int]:
    """A new dma-buf fd of ``size`` bytes from ``DMA_HEAP``, or None where there is no heap."""
    try:
        heap = os.open(DMA_HEAP, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = bytearray(_HEAP_DATA.pack(size, 0, os.O_RDWR | os.O_CLOEXEC, 0))
        fcntl.ioctl(heap, _HEAP_IOCTL_ALLOC, data)
        return int(_HEAP_DATA.unpack(data)[1])
    except OSError:
        return None
    finally:
        os.close(heap)


def map_bytes(address: int, size: int) -> np.ndarray:
    """A uint8 view of ``size`` bytes at ``address`` (memory the runtime mapped)."""
    return np.ctypeslib.as_array(ctypes.cast(address, _BYTE_P), (size,))


@dataclass(frozen=True)
class NativeLayout:
    """Where the elements of a logical tensor sit in its buffer.

    ``fmt`` NHWC: ``dims`` [N, H, W, C], rows ``w_stride`` pixels apart. NC1HWC2: ``dims``
    [N, C1, H, W, C2], channel c of pixel (h, w) at block c // C2, lane c % C2; ``channels`` is the
    real C (lanes past it are padding the NPU fills with garbage). UNDEFINED: dense, the logical
    shape itself. ``nchw``: the logical 4-D shape is NCHW (else NHWC).
    """

    fmt: int
    dims: tuple[int, ...]
    dtype: np.dtype
    w_stride: int = 0
    channels: int = 0
    nchw: bool = True
    pass_through: bool = False

    @classmethod
    def dense(cls, shape: tuple[int, ...], dtype: np.dtype) -> NativeLayout:
        return cls(TensorFormat.UNDEFINED, tuple(shape), np.dtype(dtype))

    @property
    def _native_shape(self) -> tuple[int, ...]:
        if self.fmt == TensorFormat.NHWC:
            n, h, _, c = self.dims
            return (n, h, self.w_stride, c)
        return self.dims

    @property
    def size(self) -> int:
        """Bytes the buffer needs (the attr's ``size_with_stride``)."""
        return prod(self._native_shape) * self.dtype.itemsize

    @property
    def dense_bytes(self) -> bool:
        """True when the bytes are those of the dense logical tensor (a generic buffer fits)."""
        if self.fmt == TensorFormat.NHWC:
            return not self.nchw and self.w_stride == self.dims[2]
        return self.fmt == TensorFormat.UNDEFINED

    def describe(self) -> str:
        text = f"{_FORMAT_NAMES.get(self.fmt, self.fmt)} {list(self.dims)} {self.dtype}"
        if self.fmt == TensorFormat.NHWC and self.w_stride != self.dims[2]:
            text += f", w_stride {self.w_stride}"
        return text + (", pass-through" if self.pass_through else "")

    def _native(self, raw: np.ndarray) -> np.ndarray:
        return raw[: self.size].view(self.dtype).reshape(self._native_shape)

    def read(self, raw: np.ndarray) -> np.ndarray:
        """The logical tensor held in ``raw`` (a new array)."""
        native = self._native(raw)
        if self.fmt == TensorFormat.NHWC:
            nhwc = native[:, :, : self.dims[2]]
        elif self.fmt == TensorFormat.NC1HWC2:
            n, c1, h, w, c2 = self.dims
            nchw = native.transpose(0, 1, 4, 2, 3).reshape(n, c1 * c2, h, w)[:, : self.channels]
            nhwc = nchw.transpose(0, 2, 3, 1)
        else:
            return native.copy()
        return np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2) if self.nchw else nhwc)

    def write(self, raw: np.ndarray, array: np.ndarray) -> None:
        """Store the logical tensor ``array`` in ``raw``."""
        native = self._native(raw)
        if self.fmt == TensorFormat.UNDEFINED:
            np.copyto(native, array.reshape(native.shape))
            return
        nhwc = array.transpose(0, 2, 3, 1) if self.nchw else array
        if self.fmt == TensorFormat.NHWC:
            np.copyto(native[:, :, : self.dims[2]], nhwc)
            return
        n, c1, h, w, c2 = self.dims
        blocks = np.zeros((n, h, w, c1 * c2), self.dtype)
        blocks[..., : self.channels] = nhwc
        np.copyto(native, blocks.reshape(n, h, w, c1, c2).transpose(0, 3, 1, 2, 4))


class RknnBuffer(DeviceBuffer):
    """One ``rknn_tensor_mem`` of the memory context ``context``.

    ``family`` is the context tree root whose contexts may bind the mem (``rknn_set_io_mem`` is
    valid on the context that made a mem and on the dups of the same ``rknn_init``). ``mapping``
    and ``fd`` are ours for imported dma-bufs: unmapped and closed after ``rknn_destroy_mem``.
    """

    def __init__(
        self,
        request: BufferRequest,
        tracker: BufferTracker,
        context: Context,
        mem: int,
        layout: NativeLayout,
        *,
        raw: np.ndarray,
        mapping: Optional[mmap.mmap] = None,
        fd: int = -1,
    ) -> None:
        self._context = context
        self.family = context.family
        self.mem = mem
        self._struct = RknnTensorMem.from_address(mem)
        self.layout = layout
        self._raw: Optional[np.ndarray] = raw
        self._mapping = mapping
        self._fd = fd
        self.dmabuf_backed = fd >= 0
        context.hold()  # the context outlives its mems
        super().__init__(request, tracker)

    def _free(self) -> None:
        context = self._context
        try:
            with context.lock:
                code = context.lib.rknn_destroy_mem(context.handle, self.mem)
        finally:
            self._raw = None  # the last view of the mapping, so it can close
            if self._mapping is not None:
                self._mapping.close()
            if self._fd >= 0:
                os.close(self._fd)
        check("rknn_destroy_mem", code)
        context.drop()  # not after a failed destroy: the runtime still has the mem on it

    def _bytes(self) -> np.ndarray:
        assert self._raw is not None, "a pinned buffer is never freed"
        return self._raw

    def read(self) -> np.ndarray:
        return self.layout.read(self._bytes())

    def write(self, array: np.ndarray) -> None:
        self.layout.write(self._bytes(), array)

    def _sync(self, mode: MemSyncMode) -> None:
        context = self._context
        with context.lock:
            code = context.lib.rknn_mem_sync(context.handle, self.mem, mode)
        check("rknn_mem_sync", code)

    def sync_to_device(self) -> None:
        self._sync(MemSyncMode.TO_DEVICE)

    def sync_from_device(self) -> None:
        self._sync(MemSyncMode.FROM_DEVICE)

    @property
    def data_ptr(self) -> int:
        return int(self._bytes().ctypes.data)

    def memory_info(self) -> dict[str, Any]:
        mem, layout = self._struct, self.layout
        return {
            "size": int(mem.size),
            "fd": int(mem.fd),
            "offset": int(mem.offset),
            "virt_addr": int(mem.virt_addr or 0),
            "import_count": int(self.dmabuf_backed),
            "dmabuf_backed": self.dmabuf_backed,
            "attr_size": int(np.prod(self.request.shape, dtype=np.int64)) * layout.dtype.itemsize,
            "size_with_stride": layout.size,
            "w_stride": layout.w_stride,
            "h_stride": 0,
            "fmt": int(layout.fmt),
            "pass_through": int(layout.pass_through),
        }
