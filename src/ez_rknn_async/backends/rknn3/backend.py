"""The RKNPU3 backend: librknn3_api contexts behind the Backend/Runner interface.

Every worker slot owns one context (``rknn3_init`` on its device, the model and its ``.weight``
loaded, ``rknn3_model_init`` with the slot's core group): the runtime wants one context per
device, the core count is fixed at export and each context's weights live on its own cores, and
1.1 has no ``rknn3_dup_context``. ``devices.plan_routes`` says which groups exist; the engine's
"cores" are indices into that list. A slot's calls are serialised by the engine and by the
context's lock (the runtime's rule). A run: encode the inputs into the slot's tensor mems
(``attrs.TensorCodec``), ``mem_sync`` TO_DEVICE, ``rknn3_run``, ``mem_sync`` FROM_DEVICE, decode.

The first context (made to read the model's description) becomes the first slot's.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from ...errors import BackendClosedError, RKNNError, RunTimeoutError
from ...options import ProviderOptions
from ...tensors import ModelMetadata, TensorSpec
from ..base import (
    MEM_CACHEABLE,
    Backend,
    BufferRequest,
    BufferTracker,
    DeviceBuffer,
    Runner,
    SlotSpec,
)
from ..rknn.abi import MemSyncMode as MemSync  # the same values in librknn3_api
from ..rknn.memory import map_bytes
from . import attrs
from .abi import CONTEXT_TYPE, Abi, Query
from .devices import Device, Route, find_devices, plan_routes, select_devices
from .library import Library3, check, load_library, unsupported, version_of
from .memory import NativeHostBuffer
from .model import PROVIDER, read_weight
from .shapes import ModelShape, Shapes

__all__ = ["Rknn3Backend", "Rknn3Runner", "Context3", "load"]


class Context3:
    """One rknn3_context; ``lock`` serialises every call on it."""

    def __init__(self, lib: Library3, handle: int, route: Optional[Route]) -> None:
        self.lib = lib
        self.handle = handle
        self.route = route
        self.lock = threading.RLock()
        self._destroyed = False

    def call(self, api: str, *args: Any) -> None:
        with self.lock:
            code = getattr(self.lib, api)(self.handle, *args)
        check(api, code)

    def query(self, command: Query, info: Any) -> Any:
        self.call("rknn3_query", int(command), ctypes.byref(info), ctypes.sizeof(info))
        return info

    def destroy(self) -> None:
        with self.lock:
            if self._destroyed:
                return
            self._destroyed = True
            code = self.lib.rknn3_destroy(self.handle)
        check("rknn3_destroy", code)


#: Seconds ``rknn3_init`` may take before the session gives up on it (1.0.x runtimes hang when
#: the proxy or firmware is of another version; 1.1 returns RKNN3_ERR_INCOMPATIBLE_VERSION).
INIT_TIMEOUT_ENV = "EZ_RKNN3_INIT_TIMEOUT_S"
INIT_TIMEOUT_S = 30.0


def init_timeout() -> float:
    text = os.environ.get(INIT_TIMEOUT_ENV, "").strip()
    try:
        return float(text) if text else INIT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"{INIT_TIMEOUT_ENV} must be a number of seconds, got {text!r}") from None


def _init(lib: Library3, device: Device) -> int:
    """``rknn3_init`` on ``device`` (by id: required with 2+ devices), on a helper thread so a
    hung init costs the caller ``init_timeout()`` seconds, not the process. The abandoned thread
    destroys the context itself if the call ever succeeds."""
    extend = lib.abi.struct("rknn3_init_extend")()
    device_id = ctypes.create_string_buffer(device.id.encode())
    extend.device_id = ctypes.addressof(device_id)
    handle = CONTEXT_TYPE()
    codes: list[int] = []
    lock = threading.Lock()
    returned = threading.Event()

    def call() -> None:
        code = lib.rknn3_init(ctypes.byref(handle), ctypes.byref(extend))
        with lock:
            codes.append(code)
            abandoned = returned.is_set()
            returned.set()
        if abandoned and code == 0:
            lib.rknn3_destroy(handle.value)

    thread = threading.Thread(target=call, name=f"EzRknn3Init-{device.id}", daemon=True)
    thread.start()
    timeout = init_timeout()
    returned.wait(timeout)
    with lock:
        finished = bool(codes)
        returned.set()  # from now on a late return is the thread's to clean up
    if not finished:
        raise RKNNError(
            f"rknn3_init on {device.id} did not return within {timeout:g} s "
            f"({INIT_TIMEOUT_ENV}): librknn3_api and rknn3_transfer_proxy/firmware are probably "
            "of different versions (1.0.x runtimes hang on that); run `ez-rknn doctor`",
            -13,
            "RKNN3_ERR_COMMUNICATION",
        )
    thread.join()
    check("rknn3_init", codes[0])
    return handle.value


def open_context(lib: Library3, device: Device, model: bytes, weight: bytes) -> Context3:
    """A context on ``device`` with the model and its weight loaded; destroyed again if loading
    fails."""
    context = Context3(lib, _init(lib, device), None)
    try:
        context.call("rknn3_load_model_from_data", model, len(model), weight, len(weight))
    except BaseException:
        context.destroy()
        raise
    return context


def core_number(context: Context3) -> int:
    """The core count the model was exported for (valid before model_init)."""
    return int(context.query(Query.CORE_NUMBER, ctypes.c_uint32()).value)


class Rknn3Backend(Backend):
    """One RKNPU3 model on one or more devices; ``open_runner`` gives each slot a context."""

    name = "rknn3"
    device_type = "rknpu3"

    def __init__(
        self, lib: Library3, model: bytes, weight: bytes, options: ProviderOptions
    ) -> None:
        if options.tp_mode is not None:
            raise ValueError(
                "provider option 'tp_mode' does not apply to RKNPU3 models (their core count is "
                "fixed at export); use run_core_mask, schedule or threads_per_core"
            )
        self.providers = [PROVIDER]
        self.library_path = lib.path
        self.abi: Abi = lib.abi
        self._lib = lib
        self._model = model
        self._weight = weight
        self._options = options
        self._lock = threading.Lock()
        self._closed = False
        self.buffers = BufferTracker()
        self.devices = select_devices(find_devices(lib, self.abi), options.device_id)
        origin = open_context(lib, self.devices[0], model, weight)
        try:
            self.core_number = core_number(origin)
            self.routes = plan_routes(self.devices, self.core_number, options.run_core_mask)
            self._model_init(origin, self.routes[0])
            self._describe(origin)
        except BaseException:
            origin.destroy()
            raise
        self._origin: Optional[Context3] = origin

    # ------------------------------------------------------------------ description

    def _model_init(self, context: Context3, route: Route) -> None:
        config = self.abi.struct("rknn3_config")()
        config.priority = self._options.priority
        config.run_timeout = self._options.run_timeout_ms
        config.run_core_mask = route.mask
        context.call("rknn3_model_init", ctypes.byref(config))
        context.route = route

    def attr(self, context: Context3, command: Query, index: int) -> Any:
        attr = self.abi.struct("rknn3_tensor_attr")()
        attr.index = index
        return context.query(command, attr)

    def codecs(self, context: Context3, is_input: bool) -> list[attrs.TensorCodec]:
        """Each input's (or output's) codec as ``context`` reports its attrs."""
        abi = self.abi
        count = context.query(Query.IN_OUT_NUM, abi.struct("rknn3_input_output_num")())
        total = count.n_input if is_input else count.n_output
        origin, native = (
            (abi.origin_input, abi.native_input)
            if is_input
            else (abi.origin_output, abi.native_output)
        )
        kind = "input" if is_input else "output"
        return [
            attrs.codec(
                self.attr(context, origin, i),
                self.attr(context, native, i),
                f"{kind}_{i}",
                is_input,
            )
            for i in range(total)
        ]

    def _describe(self, context: Context3) -> None:
        versions = context.query(Query.SDK_VERSION, self.abi.struct("rknn3_sdk_version")())
        self.api_version = attrs.text(versions.api_version)
        self.driver_version = attrs.text(versions.drv_version)
        if version_of(self.api_version) != self.abi.version:
            raise unsupported(
                f"{self.library_path} reports version {self.api_version!r} but exports the "
                f"symbols of ABI {self.abi.version}"
            )
        count = self._shape_count(context)
        self.shapes = Shapes([self._shape(context, i, count > 1) for i in range(count)])
        self._inputs, self._outputs = self.shapes.all[0].inputs, self.shapes.all[0].outputs
        self.inputs = self.shapes.specs(True)
        self.outputs = self.shapes.specs(False)
        custom = context.query(Query.CUSTOM_STRING, self.abi.struct("rknn3_custom_string")())
        text = attrs.text(custom.string)
        self.metadata = ModelMetadata(
            custom_metadata_map={"rknn_custom_string": text} if text else {}
        )

    def _shape_count(self, context: Context3) -> int:
        """How many shapes the model has: 1 unless it is a dynamic-shape model."""
        config = context.query(Query.DYNAMIC_SHAPE_CONFIG, self.abi.struct("rknn3_shape_config")())
        return max(1, int(config.n_shapes))

    def _shape(self, context: Context3, shape_id: int, dynamic: bool) -> ModelShape:
        """The codecs of one shape (made current on ``context`` first, if dynamic)."""
        if dynamic:
            context.call("rknn3_set_shape", shape_id)
        return ModelShape(self.codecs(context, True), self.codecs(context, False))

    def check_feed(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """A dynamic model runs only at its exported shapes: refuse others before queuing."""
        self.shapes.index(arrays, [spec.name for spec in self.inputs])
        return arrays

    @property
    def native_inputs(self) -> Sequence[TensorSpec]:
        return self.shapes.specs(True, native=True)

    @property
    def native_outputs(self) -> Sequence[TensorSpec]:
        return self.shapes.specs(False, native=True)

    # ------------------------------------------------------------------ zero copy

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

    # ------------------------------------------------------------------ slots

    def default_cores(self) -> list[int]:
        """One "core" per route: every core group of every selected device."""
        return list(range(len(self.routes)))

    def check_cores(self, cores: Sequence[int]) -> None:
        bad = [core for core in cores if core >= len(self.routes)]
        if bad:
            listing = ", ".join(f"{i}: {r.describe()}" for i, r in enumerate(self.routes))
            raise ValueError(
                f"schedule names core group(s) {bad}; this RKNPU3 session has {len(self.routes)} "
                f"({listing})"
            )

    def open_runner(self, slot: SlotSpec) -> Rknn3Runner:
        route = self.routes[(slot.core or 0) % len(self.routes)]
        with self._lock:
            if self._closed:
                raise BackendClosedError("the RKNPU3 backend is closed")
            context, self._origin = (
                (self._origin, None)
                if self._origin is not None and self._origin.route == route
                else (None, self._origin)
            )
        if context is None:
            context = open_context(self._lib, route.device, self._model, self._weight)
            try:
                self._model_init(context, route)
            except BaseException:
                context.destroy()
                raise
        try:
            return Rknn3Runner(self, context)
        except BaseException:
            context.destroy()
            raise

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            origin, self._origin = self._origin, None
        try:
            self.buffers.release_all()
        finally:
            if origin is not None:
                origin.destroy()


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


def load(
    source: Any,
    options: ProviderOptions,
    *,
    sess_options: Any = None,
    providers: Any = None,
    share_with: Optional[Backend] = None,
) -> Rknn3Backend:
    """Entry point of backends.load_backend: ``source`` is a ``ModelSource``. ``sess_options``
    and ``providers`` mean nothing to librknn3_api: ignored."""
    if share_with is not None:
        raise ValueError("use_weight_from is not supported for RKNPU3 models")
    weight = read_weight(source.path, options.weight_path)
    lib = load_library(options.runtime_library)
    return Rknn3Backend(lib, bytes(source.data), weight, options)
