"""The RKNN backend: librknnrt contexts behind the Backend/Runner interface.

The model file's bytes go to ``rknn_init`` unchanged; everything known about the model comes from
``rknn_query``. Each worker slot gets its own context (``rknn_dup_context`` of the first one, or a
fresh ``rknn_init`` when dup is disabled, custom ops are loaded or weights are shared), bound to its
cores with ``rknn_set_core_mask`` where the SoC has more than one. Contexts form a small tree
(``context.py``: dups and weight sharers under the context they came from) and each is destroyed
only once it is closed and nothing hangs under it, which gives the runtime's destroy order for
free. What the queried attrs mean to users (specs, formats, type strings) is ``attrs.py``.

Zero copy (``memory.py``): every tensor mem is made on one *memory context*, a dup of the first
context, so allocations and syncs never wait for a run; each mem holds its context open. A
runner binds buffers on its own *binding context*, another dup on the runner's cores: a mem may be
set on any context of the ``rknn_init`` that made it, and keeping copying runs
(``rknn_inputs_set``) and binding runs on separate contexts means the runtime never writes a
copied input into a user's buffer. Every run sets every tensor, so no context keeps a freed mem.
Sessions without dup contexts (``disable_dup_context``, custom ops, ``use_weight_from``) refuse
zero copy; a zero-copy-only runtime (RV1106) binds on the workers' own contexts.

Dynamic-shape models (``dynamic.py``): an input whose INPUT_DYNAMIC_RANGE lists more than one
shape makes the model dynamic. Its varying dims show as None, ``check_feed`` refuses other shapes
before queuing, and each runner calls ``rknn_set_input_shapes`` when its feed's shape differs from
the last one it set, then sizes the outputs from CURRENT_OUTPUT_ATTR. Zero copy is refused there.
"""

from __future__ import annotations

import ctypes
import dataclasses
import mmap
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ...errors import BackendClosedError, ZeroCopyUnavailableError
from ...options import RKNPU2_PROVIDER, ProviderOptions
from ...tensors import ModelMetadata, TensorSpec
from ..base import (
    MEM_CACHEABLE,
    MEM_DEFAULT,
    Backend,
    BufferRequest,
    BufferTracker,
    DeviceBuffer,
    Runner,
    SlotSpec,
)
from . import attrs
from .abi import (
    CONTEXT_TYPE,
    InitFlag,
    Query,
    RknnCustomString,
    RknnInitExtend,
    RknnInput,
    RknnInputOutputNum,
    RknnInputRange,
    RknnOutput,
    RknnSdkVersion,
    RknnTensorAttr,
    RknnTensorMem,
    TensorFormat,
)
from .context import Context
from .custom_ops import CustomOp, load_custom_ops
from .dynamic import Dims, DynamicShapes, ranged_dims
from .library import Library, RKNNError, check, load_library
from .memory import NativeLayout, RknnBuffer, dma_heap_alloc, map_bytes
from .soc import Soc, detect_soc

__all__ = ["RknnBackend", "RknnRunner", "load"]


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


class RknnBackend(Backend):
    """One model loaded into librknnrt; ``open_runner`` gives each worker slot its own context."""

    name = "rknn"
    device_type = "rknpu2"

    def __init__(
        self,
        lib: Library,
        soc: Soc,
        model: bytes,
        options: ProviderOptions,
        share_with: Optional[RknnBackend] = None,
    ) -> None:
        self.providers = [RKNPU2_PROVIDER]
        self.soc = soc
        self.library_path = lib.path
        self._lib = lib
        self._model = model
        self._options = options
        self._owner = share_with
        self._lock = threading.Lock()
        self._origin_taken = False
        self._closed = False
        self.buffers = BufferTracker()
        self._memory_context: Optional[Context] = None
        self.dynamic: Optional[DynamicShapes] = None
        wants_ops = bool(options.custom_op_paths) or options.custom_op_default_path
        if share_with is not None and wants_ops:
            raise ValueError("use_weight_from cannot be combined with custom-op loading")
        if share_with is not None and share_with._closed:
            raise ValueError("use_weight_from names a session that is already closed")
        if wants_ops:
            warnings.warn(
                "custom op libraries requested: rknn_dup_context is disabled for stability, "
                "every worker context gets its own rknn_init",
                UserWarning,
                stacklevel=3,
            )
        self._ops: list[CustomOp] = load_custom_ops(
            options.custom_op_paths, options.custom_op_default_path
        )
        self._fresh_contexts = (
            options.disable_dup_context
            or wants_ops
            or share_with is not None
            or not lib.has("rknn_dup_context")
        )
        # A zero-copy-only runtime (RV1103/RV1106) has no copying runs to keep apart from binding
        # runs: workers bind on their own contexts and mems live on the first one.
        self._zero_copy_only = not lib.has("rknn_inputs_set")
        self._origin = self._init_context()
        try:
            self._describe()
        except BaseException:
            self._origin.close()
            raise

    # ------------------------------------------------------------------ model description

    def _query(self, command: Query, info: Any) -> Any:
        with self._origin.lock:
            code = self._lib.rknn_query(
                self._origin.handle, command, ctypes.byref(info), ctypes.sizeof(info)
            )
        check("rknn_query", code)
        return info

    def _attr(self, command: Query, index: int) -> Any:
        attr = RknnTensorAttr()
        attr.index = index
        return self._query(command, attr)

    def _describe(self) -> None:
        counts = self._query(Query.IN_OUT_NUM, RknnInputOutputNum())
        layout = self._options.layout
        input_attrs = [self._attr(Query.INPUT_ATTR, i) for i in range(counts.n_input)]
        self.inputs = [attrs.input_spec(a, i, layout) for i, a in enumerate(input_attrs)]
        self.input_formats = [attrs.input_format(a, layout) for a in input_attrs]
        output_attrs = [self._attr(Query.OUTPUT_ATTR, i) for i in range(counts.n_output)]
        self.outputs = [attrs.output_spec(a, i) for i, a in enumerate(output_attrs)]
        self.output_dims = [attrs.shape(a) for a in output_attrs]
        self._native_inputs = [
            attrs.native_spec(self._attr(Query.NATIVE_INPUT_ATTR, i), f"input_{i}")
            for i in range(counts.n_input)
        ]
        self._native_outputs = [
            attrs.native_spec(self._attr(Query.NATIVE_OUTPUT_ATTR, i), f"output_{i}")
            for i in range(counts.n_output)
        ]
        self._zero_copy = {
            "input": [self._zero_copy_tensor(True, i, a) for i, a in enumerate(input_attrs)],
            "output": [self._zero_copy_tensor(False, i, a) for i, a in enumerate(output_attrs)],
        }
        self._describe_dynamic(input_attrs, layout)
        custom = attrs.text(self._query(Query.CUSTOM_STRING, RknnCustomString()).string)
        self.metadata = ModelMetadata(
            custom_metadata_map={"rknn_custom_string": custom} if custom else {}
        )
        versions = self._query(Query.SDK_VERSION, RknnSdkVersion())
        self.api_version = attrs.text(versions.api_version)
        self.driver_version = attrs.text(versions.drv_version)
        if attrs.api_version_outdated(self.api_version):
            warnings.warn(
                f"RKNN API version {self.api_version} is likely outdated; please update "
                f"librknnrt ({self.library_path}). Recommended minimum version is "
                f"{attrs.MIN_API_TEXT}.",
                UserWarning,
                stacklevel=4,
            )

    def _input_range(self, index: int, attr: Any) -> tuple[list[Dims], int]:
        """Input ``index``'s allowed runtime dims and their fmt; the queried shape alone when the
        runtime has no INPUT_DYNAMIC_RANGE answer (older runtimes, static models)."""
        info = RknnInputRange()
        info.index = index
        with self._origin.lock:
            code = self._lib.rknn_query(
                self._origin.handle,
                Query.INPUT_DYNAMIC_RANGE,
                ctypes.byref(info),
                ctypes.sizeof(info),
            )
        n_dims = int(info.n_dims)
        if code != 0 or info.shape_number == 0 or n_dims != attr.n_dims:
            return [attrs.shape(attr)], int(attr.fmt)
        width = len(attr.dims)
        shapes = [
            tuple(int(d) for d in info.dyn_range[s * width : s * width + n_dims])
            for s in range(info.shape_number)
        ]
        return list(dict.fromkeys(shapes)), int(info.fmt)

    def _describe_dynamic(self, input_attrs: Sequence[Any], layout: str) -> None:
        """Finds dynamic inputs; for a dynamic model, shows varying dims as None and learns the
        outputs' shapes by setting each allowed shape on the first context (SPEC.md 7)."""
        found = [self._input_range(i, a) for i, a in enumerate(input_attrs)]
        if all(len(shapes) <= 1 for shapes, _ in found):
            return
        nchw_view = layout in ("nchw", "nchw_software")  # as attrs.input_spec shows 4-D inputs
        shapes = DynamicShapes(
            [r for r, _ in found], input_attrs, [fmt for _, fmt in found], nchw_view
        )
        outputs: list[list[Dims]] = [[] for _ in self.outputs]
        origin = self._origin
        for key in shapes.probe_keys():
            for index, dims in enumerate(current_output_dims(self._lib, origin, shapes, key)):
                outputs[index].append(dims)
        self.dynamic = shapes
        self.inputs = [
            dataclasses.replace(spec, shape=shapes.user_shape(i))
            for i, spec in enumerate(self.inputs)
        ]
        self.outputs = [
            dataclasses.replace(spec, shape=ranged_dims(dims))
            for spec, dims in zip(self.outputs, outputs)
        ]

    def check_feed(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """A dynamic model runs only at its allowed shapes: refuse others before queuing."""
        if self.dynamic is not None:
            self.dynamic.check(arrays, [spec.name for spec in self.inputs])
        return arrays

    def _refuse_dynamic_zero_copy(self) -> None:
        if self.dynamic is not None:
            raise ValueError(
                "zero copy is not supported for dynamic-shape RKNN models (native buffers are "
                "sized for one shape); use run/submit/run_async with numpy inputs"
            )

    @property
    def native_inputs(self) -> Sequence[TensorSpec]:
        return self._native_inputs

    @property
    def native_outputs(self) -> Sequence[TensorSpec]:
        return self._native_outputs

    # ------------------------------------------------------------------ zero copy

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
        """The context every tensor mem is made on: a dup of the first context (so mems never
        wait for runs), made on first use."""
        with self._lock:
            if self._closed:
                raise BackendClosedError("the RKNN backend is closed")
            if self._memory_context is None:
                if self._zero_copy_only:
                    self._memory_context = self._origin
                elif self._fresh_contexts:
                    raise ZeroCopyUnavailableError(_NO_DUP)
                else:
                    self._memory_context = self._dup_context()
            return self._memory_context

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

    # ------------------------------------------------------------------ contexts

    def _init_context(self) -> Context:
        """A fresh rknn_init of the model bytes (sharing the owner's weights if asked)."""
        handle = CONTEXT_TYPE()
        owner = self._owner._origin if self._owner is not None else None
        extend = None
        if owner is not None:
            extend = RknnInitExtend()
            extend.ctx = owner.handle
        flags = InitFlag.SHARE_WEIGHT_MEM if owner is not None else InitFlag.NONE
        code = self._lib.rknn_init(
            ctypes.byref(handle),
            self._model,
            len(self._model),
            flags,
            None if extend is None else ctypes.byref(extend),
        )
        check("rknn_init", code)
        context = Context(self._lib, handle.value, owner)
        try:
            for op in self._ops:
                check(
                    "rknn_register_custom_ops",
                    self._lib.rknn_register_custom_ops(context.handle, op.pointer, 1),
                )
        except BaseException:
            context.close()
            raise
        return context

    def _dup_context(self) -> Context:
        origin = self._origin
        source, handle = CONTEXT_TYPE(origin.handle), CONTEXT_TYPE()
        with origin.lock:
            code = self._lib.rknn_dup_context(ctypes.byref(source), ctypes.byref(handle))
        check("rknn_dup_context", code)
        return Context(self._lib, handle.value, origin, dup=True)

    def default_cores(self) -> list[int]:
        return list(self.soc.cores)

    def check_cores(self, cores: Sequence[int]) -> None:
        self.soc.check_cores(cores)

    def open_runner(self, slot: SlotSpec) -> RknnRunner:
        """The first runner uses the context from rknn_init; later ones get their own."""
        mask = None if slot.core_mask is None else self.soc.core_mask(slot.core_mask)
        with self._lock:
            if self._closed:
                raise BackendClosedError("the RKNN backend is closed")
            reuse_origin = not self._origin_taken
            self._origin_taken = True
        if reuse_origin:
            context = self._origin
        else:
            context = self._init_context() if self._fresh_contexts else self._dup_context()
        try:
            self._bind_cores(context, mask)
        except BaseException:
            if not reuse_origin:
                context.close()
            raise
        return RknnRunner(self, context, owns_context=not reuse_origin, mask=mask)

    def _bind_cores(self, context: Context, mask: Optional[int]) -> None:
        if mask is not None:
            with context.lock:
                code = self._lib.rknn_set_core_mask(context.handle, mask)
            check("rknn_set_core_mask", code)

    def close(self) -> None:
        """Frees the buffers users still hold, then destroys the first context once every
        runner's, every sharer's and the memory context are gone."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            memory = self._memory_context
        try:
            self.buffers.release_all()
        finally:
            if memory is not None and memory is not self._origin:
                memory.close()  # destroyed once the last mem (one still pinned) is gone
            self._origin.close()


def current_output_dims(
    lib: Library, context: Context, shapes: DynamicShapes, key: Sequence[Dims]
) -> list[Dims]:
    """``rknn_set_input_shapes(key)`` on ``context``, then every output's CURRENT_OUTPUT_ATTR
    dims (the shapes the next run returns)."""
    attrs_in = shapes.shape_attrs(key)
    result = []
    with context.lock:
        code = lib.rknn_set_input_shapes(context.handle, len(key), attrs_in)
        check("rknn_set_input_shapes", code)
        count = RknnInputOutputNum()
        check(
            "rknn_query",
            lib.rknn_query(
                context.handle, Query.IN_OUT_NUM, ctypes.byref(count), ctypes.sizeof(count)
            ),
        )
        for index in range(count.n_output):
            attr = RknnTensorAttr()
            attr.index = index
            code = lib.rknn_query(
                context.handle, Query.CURRENT_OUTPUT_ATTR, ctypes.byref(attr), ctypes.sizeof(attr)
            )
            check("rknn_query", code)
            result.append(attrs.shape(attr))
    return result


def _zero_filled(buffer: RknnBuffer, fill: Any) -> RknnBuffer:
    """``buffer`` after ``fill()`` and a sync; freed if either fails (no one else owns it yet)."""
    try:
        fill()
        buffer.sync_to_device()
    except BaseException:
        buffer.release()
        raise
    return buffer


class RknnRunner(Runner):
    """Runs tasks on one context: inputs_set -> run -> outputs_get (float32) -> release."""

    def __init__(
        self, backend: RknnBackend, context: Context, owns_context: bool, mask: Optional[int]
    ) -> None:
        self._backend = backend
        self._lib = backend._lib
        self._context = context
        self._owns_context = owns_context
        self._mask = mask
        self._binding: Optional[Context] = None
        self._io_attrs: list[Any] = []
        self._input_formats = backend.input_formats
        self._output_shapes = backend.output_dims
        self._dynamic = backend.dynamic
        #: The input shapes last set on this runner's context (None: unknown, set on next run).
        self._current: Optional[tuple[Dims, ...]] = None
        self._inputs = (RknnInput * len(backend.inputs))()
        for index, item in enumerate(self._inputs):
            item.index = index
        self._outputs = (RknnOutput * max(1, len(backend.outputs)))()
        for item in self._outputs:
            item.want_float = 1  # dequantised float32, as the original
            item.is_prealloc = 1  # straight into the numpy array we return

    def run(self, inputs: Sequence[np.ndarray], output_indices: Sequence[int]) -> list[np.ndarray]:
        lib, handle = self._lib, self._context.handle
        if self._dynamic is not None:
            self._set_shapes(inputs)
        feeds = []
        for item, array, (fmt, transpose) in zip(self._inputs, inputs, self._input_formats):
            array = np.ascontiguousarray(array.transpose(0, 2, 3, 1) if transpose else array)
            item.buf = array.ctypes.data
            item.size = array.nbytes
            item.type = attrs.INPUT_TYPES[array.dtype]
            item.fmt = fmt
            feeds.append(array)  # alive until rknn_inputs_set has copied it
        wanted = list(dict.fromkeys(output_indices))
        results = {}
        for item, index in zip(self._outputs, wanted):
            result = results[index] = np.empty(self._output_shapes[index], np.float32)
            item.index = index
            item.buf = result.ctypes.data
            item.size = result.nbytes
        with self._context.lock:
            check("rknn_inputs_set", lib.rknn_inputs_set(handle, len(feeds), self._inputs))
            check("rknn_run", lib.rknn_run(handle, None))
            check(
                "rknn_outputs_get", lib.rknn_outputs_get(handle, len(wanted), self._outputs, None)
            )
            code = lib.rknn_outputs_release(handle, len(wanted), self._outputs)
        check("rknn_outputs_release", code)
        first = set()
        ordered = []
        for index in output_indices:
            ordered.append(results[index] if index not in first else results[index].copy())
            first.add(index)
        return ordered

    def _set_shapes(self, inputs: Sequence[np.ndarray]) -> None:
        """Tell the context the feed's shapes when they differ from the last ones set (the
        runtime re-plans on every rknn_set_input_shapes), and size the outputs for them."""
        assert self._dynamic is not None
        key = self._dynamic.key(inputs)
        if key == self._current:
            return
        self._dynamic.check(inputs, [spec.name for spec in self._backend.inputs])
        self._current = None  # unknown until the call and the queries succeed
        self._output_shapes = current_output_dims(self._lib, self._context, self._dynamic, key)
        self._current = key

    def run_buffers(self, inputs: Sequence[DeviceBuffer], outputs: Sequence[DeviceBuffer]) -> None:
        """rknn_set_io_mem of every buffer, then rknn_run, on this runner's binding context
        (every tensor is set each run: a context never keeps a pointer to a freed mem)."""
        if self._binding is None:
            self._binding = self._backend.binding_context(self._context, self._mask)
            self._io_attrs = self._backend.io_attrs()
        context, lib = self._binding, self._lib
        with context.lock:
            for buffer, attr in zip((*inputs, *outputs), self._io_attrs):
                assert isinstance(buffer, RknnBuffer), "check_binding admits RknnBuffers only"
                if buffer.family is not context.family:
                    raise ZeroCopyUnavailableError(
                        "this worker's context comes from its own rknn_init, and the buffer "
                        "lives in the first context's memory; run zero copy on one worker "
                        "(schedule=[0]) with this runtime"
                    )
                code = lib.rknn_set_io_mem(context.handle, buffer.mem, ctypes.byref(attr))
                check("rknn_set_io_mem", code)
            check("rknn_run", lib.rknn_run(context.handle, None))

    def close(self) -> None:
        if self._binding is not None and self._binding is not self._context:
            self._binding.close()
        if self._owns_context:
            self._context.close()


def load(
    source: Any,
    options: ProviderOptions,
    *,
    sess_options: Any = None,
    providers: Any = None,
    share_with: Optional[Backend] = None,
) -> RknnBackend:
    """Entry point of backends.load_backend: ``source`` is a ``ModelSource`` (bytes + path).
    ``sess_options`` and ``providers`` mean nothing to librknnrt: ignored, as in the original.
    """
    if share_with is not None and not isinstance(share_with, RknnBackend):
        raise ValueError("use_weight_from must be a session running on the RKNN backend")
    return RknnBackend(load_library(), detect_soc(), bytes(source.data), options, share_with)
