"""One RKNPU3 worker slot: its context, its tensor mems, and a run.

A run: encode the inputs into the slot's tensor mems (``attrs.TensorCodec``), ``mem_sync``
TO_DEVICE, ``rknn3_run``, ``mem_sync`` FROM_DEVICE, decode. A slot's calls are serialised by the
engine and by the context's lock (the runtime's rule).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import RKNNError, RunTimeoutError
from ..base import MEM_CACHEABLE, DeviceBuffer, Runner
from ..rknn.abi import MemSyncMode as MemSync  # the same values in librknn3_api
from ..rknn.memory import map_bytes
from .abi import Abi
from .context import Context3
from .library import check
from .memory import NativeHostBuffer

if TYPE_CHECKING:
    from .backend import Rknn3Backend

__all__ = ["Rknn3Runner"]


class _Mem:
    """One tensor mem of a runner (``size`` bytes on ``core_id``) and its host bytes."""

    def __init__(self, context: Context3, size: int, core_id: int) -> None:
        lib = context.lib
        with context.lock:
            pointer = lib.rknn3_create_mem(context.handle, size, core_id, MEM_CACHEABLE)
        if not pointer:
            raise RKNNError(
                f"rknn3_create_mem of {size} bytes on core {core_id} failed",
                -6,
                "RKNN3_ERR_OUT_OF_MEMORY",
            )
        self.pointer = pointer
        mem = context.lib.abi.struct("rknn3_tensor_mem").from_address(pointer)
        self.raw = map_bytes(mem.virt_addr + mem.offset, size)


class Rknn3Runner(Runner):
    """One slot: its context, one tensor mem per input and output (sized for the largest
    shape), and for each shape of the model the rknn3_tensor arrays (native attrs as this
    context reports them: ``core_id`` is the context's)."""

    def __init__(self, backend: Rknn3Backend, context: Context3) -> None:
        self._context = context
        self._lib = backend._lib
        self._timeout_ms = backend._options.run_timeout_ms
        self._shapes = backend.shapes
        self._names = [spec.name for spec in backend.inputs]
        self._mems: list[_Mem] = []
        self._tensors: list[tuple[Any, Any, list[Any]]] = []  # per shape: inputs, outputs, attrs
        abi = backend.abi
        try:
            for shape_id in range(len(self._shapes.all)):
                if self._shapes.dynamic:
                    context.call("rknn3_set_shape", shape_id)
                attrs_in = [
                    backend.attr(context, abi.native_input, i) for i in range(len(backend.inputs))
                ]
                attrs_out = [
                    backend.attr(context, abi.native_output, i) for i in range(len(backend.outputs))
                ]
                if not self._mems:
                    sizes = self._shapes.max_sizes(True) + self._shapes.max_sizes(False)
                    for size, attr in zip(sizes, attrs_in + attrs_out):
                        self._mems.append(_Mem(context, size, attr.core_id))
                self._tensors.append(self._tensor_arrays(abi, attrs_in, attrs_out))
        except BaseException:
            self._free()
            raise
        self._current = len(self._shapes.all) - 1  # the shape the context was left at
        n_in = len(backend.inputs)
        self._in_mems, self._out_mems = self._mems[:n_in], self._mems[n_in:]

    def _tensor_arrays(
        self, abi: Abi, attrs_in: list[Any], attrs_out: list[Any]
    ) -> tuple[Any, Any, list[Any]]:
        n_in = len(attrs_in)
        tensor = abi.struct("rknn3_tensor")
        arrays = []
        for mems, attrs_ in ((self._mems[:n_in], attrs_in), (self._mems[n_in:], attrs_out)):
            array = (tensor * max(1, len(mems)))()
            for item, mem, attr in zip(array, mems, attrs_):
                item.mem = mem.pointer
                item.attr = ctypes.addressof(attr)
            arrays.append(array)
        return arrays[0], arrays[1], attrs_in + attrs_out  # the attrs live as long as the arrays

    def run(self, inputs: Sequence[np.ndarray], output_indices: Sequence[int]) -> list[np.ndarray]:
        shape_id = self._shapes.index(inputs, self._names)
        shape = self._shapes.all[shape_id]
        for codec, mem, array in zip(shape.inputs, self._in_mems, inputs):
            codec.write(mem.raw, array)
        self._execute(shape_id)
        return [shape.outputs[j].read(self._out_mems[j].raw) for j in output_indices]

    def run_buffers(self, inputs: Sequence[DeviceBuffer], outputs: Sequence[DeviceBuffer]) -> None:
        """The values' native bytes into this slot's mems, a run, the outputs' bytes back."""
        for mem, buffer in zip(self._in_mems, inputs):
            assert isinstance(buffer, NativeHostBuffer), "check_binding admits these only"
            mem.raw[: buffer.raw.size] = buffer.raw
        self._execute(0)  # zero copy is for static models
        for mem, buffer in zip(self._out_mems, outputs):
            assert isinstance(buffer, NativeHostBuffer), "check_binding admits these only"
            buffer.raw[:] = mem.raw[: buffer.raw.size]

    def _execute(self, shape_id: int) -> None:
        """(rknn3_set_shape,) mem_sync TO_DEVICE, rknn3_run, mem_sync FROM_DEVICE."""
        context, lib = self._context, self._lib
        inputs, outputs, _ = self._tensors[shape_id]
        with context.lock:
            if shape_id != self._current:
                self._current = -1  # unknown until the call succeeds
                context.call("rknn3_set_shape", shape_id)
                self._current = shape_id
            for mem in self._in_mems:
                context.call("rknn3_mem_sync", mem.pointer, MemSync.TO_DEVICE)
            code = lib.rknn3_run(
                context.handle, inputs, len(self._in_mems), outputs, len(self._out_mems)
            )
            try:
                check("rknn3_run", code)
            except RunTimeoutError as exc:
                where = context.route.describe() if context.route else "its device"
                raise RunTimeoutError(
                    f"rknn3_run on {where} exceeded run_timeout_ms={self._timeout_ms}: {exc}",
                    exc.code,
                    exc.name,
                ) from exc
            for mem in self._out_mems:
                context.call("rknn3_mem_sync", mem.pointer, MemSync.FROM_DEVICE)

    def _free(self) -> None:
        context = self._context
        mems, self._mems = self._mems, []
        for mem in mems:
            context.call("rknn3_destroy_mem", mem.pointer)

    def close(self) -> None:
        try:
            self._free()
        finally:
            self._context.destroy()
