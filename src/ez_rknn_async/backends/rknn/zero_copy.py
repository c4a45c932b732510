"""Zero copy on RKNN: tensor mems for users' buffers, and the attrs runners bind them with.

Why a module of its own: it is the one part of the backend users' threads call into (allocating,
importing dma-bufs, checking bindings) while runners run. Every tensor mem is made on the first
context, which no runner uses when there are dups, so allocations and syncs never wait for an
inference; each mem holds its context open (``memory.py``). A runner binds buffers on its own
*binding context*, another dup on the runner's cores: a mem may be set on any context of the
``rknn_init`` that made it, and keeping copying runs (``rknn_inputs_set``) and binding runs on
separate contexts means the runtime never writes a copied input into a user's buffer. Sessions
without dup contexts (``disable_dup_context``, custom ops, ``use_weight_from``) refuse zero copy;
a zero-copy-only runtime (RV1106) binds on the workers' own contexts. Dynamic-shape models refuse
it too (native buffers are sized for one shape).
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from ...errors import BackendClosedError, ZeroCopyUnavailableError
from ...tensors import TensorSpec
from ..base import MEM_CACHEABLE, MEM_DEFAULT, BufferRequest, BufferTracker, DeviceBuffer
from . import attrs
from .abi import Query, RknnTensorMem, TensorFormat
from .context import Context
from .describe import ModelDescription
from .library import RKNNError
from .memory import NativeLayout, RknnBuffer, dma_heap_alloc, map_bytes

__all__ = ["ZeroCopy"]

_NO_DUP = (
    "zero copy needs rknn_dup_context: this session gives every worker context its own rknn_init "
    "(disable_dup_context, custom ops or use_weight_from), and a tensor mem can only be bound on "
    "contexts of the rknn_init that made it"
)


@dataclass(frozen=True)
class _ZeroCopyTensor:
    """A model tensor as bound buffers serve it: the user's view, the attr ``rknn_set_io_mem``
    gets (a native attr, ``pass_through`` set for NC1HWC2 inputs) and the buffer layout."""

    spec: TensorSpec
    attr: Any
    layout: NativeLayout


class ZeroCopy(ModelDescription):
    """Buffers and binding contexts (a base of ``RknnBackend``, which sets the state below and
    makes contexts)."""

    _lock: threading.Lock
    _closed: bool
    _fresh_contexts: bool
    _zero_copy_only: bool
    buffers: BufferTracker
    _dup_context: Callable[[], Context]
    _bind_cores: Callable[[Context, Optional[int]], None]

    def _describe_zero_copy(self) -> None:
        """The zero-copy view of every tensor, from the attrs ``_describe`` queried."""
        self._zero_copy = {
            "input": [self._zero_copy_tensor(True, i, a) for i, a in enumerate(self._input_attrs)],
            "output": [
                self._zero_copy_tensor(False, i, a) for i, a in enumerate(self._output_attrs)
            ],
        }

    def _refuse_dynamic_zero_copy(self) -> None:
        if self.dynamic is not None:
            raise ValueError(
                "zero copy is not supported for dynamic-shape RKNN models (native buffers are "
                "sized for one shape); use run/submit/run_async with numpy inputs"
            )

    def _zero_copy_tensor(self, is_input: bool, index: int, attr: Any) -> _ZeroCopyTensor:
        """SPEC.md 12.1: 4-D tensors use the NHWC native attr in ``zero_copy_layout="nhwc"``,
        else the native one (NC1HWC2 inputs then take pass-through data). The user's view of a
        4-D tensor is NCHW, except inputs with ``layout="nhwc"``; values keep the native type."""
        four_d = attr.n_dims == 4 and attr.fmt in (TensorFormat.NCHW, TensorFormat.NHWC)
        if four_d and self._options.zero_copy_layout == "nhwc":
            command = Query.NATIVE_NHWC_INPUT_ATTR if is_input else Query.NATIVE_NHWC_OUTPUT_ATTR
        else:
            command = Query.NATIVE_INPUT_ATTR if is_input else Query.NATIVE_OUTPUT_ATTR
        native = self._attr(command, index)
        native.pass_through = int(is_input and native.fmt == TensorFormat.NC1HWC2)
        dtype = attrs.buffer_dtype(native)
        dims = attrs.shape(attr)
        shape: tuple[int, ...] = dims
        layout = NativeLayout.dense(dims, dtype)
        if four_d:
            nchw = attr.fmt == TensorFormat.NCHW or (is_input and self._options.layout != "nhwc")
            n, c, h, w = (
                (dims[0], dims[3], dims[1], dims[2]) if attr.fmt == TensorFormat.NHWC else dims
            )
            shape = (n, c, h, w) if nchw else (n, h, w, c)
            layout = NativeLayout(
                native.fmt,
                attrs.shape(native),
                dtype,
                w_stride=int(native.w_stride) or (w if native.fmt == TensorFormat.NHWC else 0),
                channels=c,
                nchw=nchw,
                pass_through=bool(native.pass_through),
            )
        name = attrs.tensor_name(attr, f"{'input' if is_input else 'output'}_{index}")
        spec = TensorSpec(name, shape, dtype, type=attrs.type_string(native), accepts=(dtype,))
        return _ZeroCopyTensor(spec, native, layout)

    @property
    def zero_copy_inputs(self) -> Sequence[TensorSpec]:
        return [tensor.spec for tensor in self._zero_copy["input"]]

    @property
    def zero_copy_outputs(self) -> Sequence[TensorSpec]:
        return [tensor.spec for tensor in self._zero_copy["output"]]

    def io_attrs(self) -> list[Any]:
        """Copies of the attrs ``rknn_set_io_mem`` takes, inputs then outputs (one set per
        runner: the runtime gets a non-const pointer)."""
        tensors = self._zero_copy["input"] + self._zero_copy["output"]
        return [type(t.attr).from_buffer_copy(t.attr) for t in tensors]

    def _layout(self, request: BufferRequest) -> NativeLayout:
        self._refuse_dynamic_zero_copy()
        if request.io_kind is None or request.index is None:
            return NativeLayout.dense(request.shape, request.dtype)
        return self._zero_copy[request.io_kind][request.index].layout

    def _memory(self) -> Context:
        """The context every tensor mem is made on: the first context, which no runner uses
        when dups are (so mems never wait for runs)."""
        with self._lock:
            if self._closed:
                raise BackendClosedError("the RKNN backend is closed")
            if self._fresh_contexts and not self._zero_copy_only:
                raise ZeroCopyUnavailableError(_NO_DUP)
            return self._origin

    def allocate(self, request: BufferRequest) -> DeviceBuffer:
        """A dma-heap buffer where there is a heap and the memory is cacheable, else
        ``rknn_create_mem``/``rknn_create_mem2``. Zero-filled."""
        layout = self._layout(request)
        if request.mem_flags in (MEM_DEFAULT, MEM_CACHEABLE):
            fd = dma_heap_alloc(layout.size)
            if fd is not None:
                try:
                    buffer = self._import(fd, request, layout, layout.size, 0, None)
                finally:
                    os.close(fd)
                return _zero_filled(
                    buffer, lambda: buffer.write(np.zeros(request.shape, request.dtype))
                )
        context = self._memory()
        lib = self._lib
        with context.lock:
            if request.mem_flags != MEM_DEFAULT and lib.has("rknn_create_mem2"):
                mem = lib.rknn_create_mem2(context.handle, layout.size, request.mem_flags)
            else:
                mem = lib.rknn_create_mem(context.handle, layout.size)
        if not mem:
            raise RKNNError(
                f"rknn_create_mem of {layout.size} bytes failed", -4, "RKNN_ERR_MALLOC_FAIL"
            )
        address = RknnTensorMem.from_address(mem)
        raw = map_bytes(address.virt_addr + address.offset, layout.size)
        buffer = RknnBuffer(request, self.buffers, context, mem, layout, raw=raw)
        return _zero_filled(buffer, lambda: raw.fill(0))  # the runtime may not zero memory

    def import_dmabuf(
        self, fd: int, request: BufferRequest, *, size: int, offset: int, virt_addr: Optional[int]
    ) -> DeviceBuffer:
        layout = self._layout(request)
        if size < layout.size:
            name = self._zero_copy[request.io_kind][request.index].spec.name  # type: ignore[index]
            raise ValueError(
                f"dmabuf size {size} is smaller than the {layout.size} bytes {request.io_kind} "
                f"{name!r} needs in its native layout ({layout.describe()})"
            )
        available = os.fstat(fd).st_size
        if offset + size > available:
            raise ValueError(
                f"fd {fd} holds {available} bytes; offset {offset} + size {size} goes past its end"
            )
        if offset >= 2**31 or size >= 2**32:
            raise ValueError(f"offset {offset} / size {size} do not fit rknn_create_mem_from_fd")
        return self._import(fd, request, layout, size, offset, virt_addr)

    def _import(
        self,
        fd: int,
        request: BufferRequest,
        layout: NativeLayout,
        size: int,
        offset: int,
        virt_addr: Optional[int],
    ) -> RknnBuffer:
        """``rknn_create_mem_from_fd`` on a dup of ``fd``, mapped here unless ``virt_addr``."""
        context = self._memory()
        own_fd = os.dup(fd)
        mapping = None
        try:
            if virt_addr is None:
                mapping = mmap.mmap(own_fd, offset + size)
                raw = np.frombuffer(mapping, np.uint8)[offset:]
                virt_addr = int(raw.ctypes.data) - offset
            else:
                raw = map_bytes(virt_addr + offset, size)
            with context.lock:
                mem = self._lib.rknn_create_mem_from_fd(
                    context.handle, own_fd, virt_addr, size, offset
                )
            if not mem:
                raise RKNNError(
                    f"rknn_create_mem_from_fd of fd {fd} ({size} bytes at {offset}) failed",
                    -5,
                    "RKNN_ERR_PARAM_INVALID",
                )
            return RknnBuffer(
                request, self.buffers, context, mem, layout, raw=raw, mapping=mapping, fd=own_fd
            )
        except BaseException:
            raw = None  # noqa: F841 - the view goes before its mapping closes
            if mapping is not None:
                mapping.close()
            os.close(own_fd)
            raise

    def check_binding(self, buffer: DeviceBuffer, io_kind: str, index: int) -> None:
        """The buffer's bytes must be laid out as the tensor's native attr says (a generic
        dense buffer fits tensors whose native layout is dense)."""
        self._refuse_dynamic_zero_copy()
        tensor = self._zero_copy[io_kind][index]
        have = buffer.layout if isinstance(buffer, RknnBuffer) else None
        want = tensor.layout
        if have is None or (have != want and not (have.dense_bytes and want.dense_bytes)):
            what = have.describe() if have is not None else type(buffer).__name__
            raise ValueError(
                f"{io_kind} {tensor.spec.name!r} native zero-copy layout mismatch: the tensor "
                f"needs {want.describe()}, the OrtValue is {what}"
            )

    def binding_context(self, runner_context: Context, mask: Optional[int]) -> Context:
        """The context a runner binds buffers on: a dup of the first context on the runner's
        cores, so copying runs (``rknn_inputs_set``) and binding runs never share a context."""
        if self._zero_copy_only:
            return runner_context
        self._memory()  # the same checks: backend open, dup contexts in use
        context = self._dup_context()
        try:
            self._bind_cores(context, mask)
        except BaseException:
            context.close()
            raise
        return context


def _zero_filled(buffer: RknnBuffer, fill: Any) -> RknnBuffer:
    """``buffer`` after ``fill()`` and a sync; freed if either fails (no one else owns it yet)."""
    try:
        fill()
        buffer.sync_to_device()
    except BaseException:
        buffer.release()
        raise
    return buffer
