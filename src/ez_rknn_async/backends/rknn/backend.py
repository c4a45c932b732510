"""The RKNN backend: librknnrt contexts behind the Backend/Runner interface.

The model file's bytes go to ``rknn_init`` unchanged; everything known about the model comes from
``rknn_query``. Each worker slot gets its own context (``rknn_dup_context`` of the first one, or a
fresh ``rknn_init`` when dup is disabled, custom ops are loaded or weights are shared), bound to its
cores with ``rknn_set_core_mask`` where the SoC has more than one. Contexts form a small tree (dups
and weight sharers under the context they came from) and each is destroyed only once it is closed
and nothing hangs under it, which gives the runtime's destroy order for free.
"""

from __future__ import annotations

import ctypes
import re
import threading
import warnings
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from ...options import ProviderOptions
from ...tensors import ModelMetadata, TensorSpec
from ..base import Backend, Runner, SlotSpec
from .abi import (
    CONTEXT_TYPE,
    InitFlag,
    Query,
    RknnCustomString,
    RknnInitExtend,
    RknnInput,
    RknnInputOutputNum,
    RknnOutput,
    RknnSdkVersion,
    RknnTensorAttr,
    TensorFormat,
    TensorType,
)
from .custom_ops import CustomOp, load_custom_ops
from .library import Library, check, load_library
from .soc import Soc, detect_soc

__all__ = ["RknnBackend", "RknnRunner", "load", "MIN_API_VERSION"]

#: Older runtimes work but are known to be buggy (SPEC.md 2).
MIN_API_VERSION = (2, 4, 1)

#: Array dtypes librknnrt converts itself (rknn_input.type with pass_through = 0).
_INPUT_TYPES: dict[np.dtype, TensorType] = {
    np.dtype(np.float32): TensorType.FLOAT32,
    np.dtype(np.float16): TensorType.FLOAT16,
    np.dtype(np.int8): TensorType.INT8,
    np.dtype(np.uint8): TensorType.UINT8,
}
_ACCEPTS: tuple[np.dtype, ...] = tuple(_INPUT_TYPES)
_FLOAT32 = np.dtype(np.float32)
#: The model's internal type as get_inputs()/get_outputs() show it (SPEC.md 11).
_TYPE_STRINGS = {
    TensorType.FLOAT32: "tensor(float)",
    TensorType.FLOAT16: "tensor(float16)",
    TensorType.INT8: "tensor(int8)",
    TensorType.UINT8: "tensor(uint8)",
    TensorType.INT16: "tensor(int16)",
    TensorType.UINT16: "tensor(uint16)",
    TensorType.INT32: "tensor(int32)",
    TensorType.UINT32: "tensor(uint32)",
    TensorType.INT64: "tensor(int64)",
    TensorType.BOOL: "tensor(bool)",
}
_NCHW_LAYOUTS = ("nchw", "nchw_software")


class _Context:
    """One rknn_context and the contexts that depend on it (its dups and weight sharers).

    ``lock`` makes "one thread per context" a guarantee of this module, not only of the engine.
    ``close`` destroys the context once nothing depends on it, then retries its parent.
    """

    _tree_lock = threading.Lock()

    def __init__(self, lib: Library, handle: int, parent: Optional[_Context]) -> None:
        self.lib = lib
        self.handle = handle
        self.parent = parent
        self.lock = threading.Lock()
        self.children = 0
        self.closed = False
        self.destroyed = False
        if parent is not None:
            with _Context._tree_lock:
                parent.children += 1

    def close(self) -> None:
        with _Context._tree_lock:
            if self.closed:
                return
            self.closed = True
            node: Optional[_Context] = self
            while node is not None and node.closed and not node.children and not node.destroyed:
                with node.lock:
                    code = node.lib.rknn_destroy(node.handle)
                node.destroyed = True
                if code:
                    warnings.warn(
                        f"rknn_destroy failed with code {code}", RuntimeWarning, stacklevel=2
                    )
                if node.parent is not None:
                    node.parent.children -= 1
                node = node.parent


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _parse_version(text: str) -> Optional[tuple[int, ...]]:
    match = re.match(r"\s*(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(part) for part in match.groups()) if match else None


class RknnBackend(Backend):
    """One model loaded into librknnrt; ``open_runner`` gives each worker slot its own context."""

    name = "rknn"

    def __init__(
        self,
        lib: Library,
        soc: Soc,
        model: bytes,
        options: ProviderOptions,
        share_with: Optional[RknnBackend] = None,
    ) -> None:
        self.providers = ["RKNNExecutionProvider"]
        self.soc = soc
        self.library_path = lib.path
        self._lib = lib
        self._model = model
        self._options = options
        self._owner = share_with
        self._lock = threading.Lock()
        self._origin_taken = False
        self._closed = False
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
        attrs = [self._attr(Query.INPUT_ATTR, i) for i in range(counts.n_input)]
        self.inputs = [_input_spec(a, i, layout) for i, a in enumerate(attrs)]
        self.input_formats = [_input_format(a, layout) for a in attrs]
        output_attrs = [self._attr(Query.OUTPUT_ATTR, i) for i in range(counts.n_output)]
        self.outputs = [_output_spec(a, i) for i, a in enumerate(output_attrs)]
        self.output_dims = [_dims(a) for a in output_attrs]
        self._native_inputs = [
            _native_spec(self._attr(Query.NATIVE_INPUT_ATTR, i), f"input_{i}")
            for i in range(counts.n_input)
        ]
        self._native_outputs = [
            _native_spec(self._attr(Query.NATIVE_OUTPUT_ATTR, i), f"output_{i}")
            for i in range(counts.n_output)
        ]
        custom = _text(self._query(Query.CUSTOM_STRING, RknnCustomString()).string)
        self.metadata = ModelMetadata(
            custom_metadata_map={"rknn_custom_string": custom} if custom else {}
        )
        versions = self._query(Query.SDK_VERSION, RknnSdkVersion())
        self.api_version = _text(versions.api_version)
        self.driver_version = _text(versions.drv_version)
        parsed = _parse_version(self.api_version)
        if parsed is not None and parsed < MIN_API_VERSION:
            warnings.warn(
                f"RKNN API version {self.api_version} is likely outdated; please update "
                f"librknnrt ({self.library_path}). Recommended minimum version is "
                f"{'.'.join(map(str, MIN_API_VERSION))}.",
                UserWarning,
                stacklevel=4,
            )

    @property
    def native_inputs(self) -> Sequence[TensorSpec]:
        return self._native_inputs

    @property
    def native_outputs(self) -> Sequence[TensorSpec]:
        return self._native_outputs

    # ------------------------------------------------------------------ contexts

    def _init_context(self) -> _Context:
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
        context = _Context(self._lib, handle.value, owner)
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

    def _dup_context(self) -> _Context:
        origin = self._origin
        source, handle = CONTEXT_TYPE(origin.handle), CONTEXT_TYPE()
        with origin.lock:
            code = self._lib.rknn_dup_context(ctypes.byref(source), ctypes.byref(handle))
        check("rknn_dup_context", code)
        return _Context(self._lib, handle.value, origin)

    def default_cores(self) -> list[int]:
        return list(self.soc.cores)

    def check_cores(self, cores: Sequence[int]) -> None:
        self.soc.check_cores(cores)

    def open_runner(self, slot: SlotSpec) -> RknnRunner:
        """The first runner uses the context from rknn_init; later ones get their own."""
        mask = None if slot.core_mask is None else self.soc.core_mask(slot.core_mask)
        with self._lock:
            if self._closed:
                raise RuntimeError("the RKNN backend is closed")
            reuse_origin = not self._origin_taken
            self._origin_taken = True
        if reuse_origin:
            context = self._origin
        else:
            context = self._init_context() if self._fresh_contexts else self._dup_context()
        try:
            if mask is not None:
                with context.lock:
                    code = self._lib.rknn_set_core_mask(context.handle, mask)
                check("rknn_set_core_mask", code)
        except BaseException:
            if not reuse_origin:
                context.close()
            raise
        return RknnRunner(self, context, owns_context=not reuse_origin)

    def close(self) -> None:
        """Destroys the first context once every runner's and every sharer's is gone."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._origin.close()


class RknnRunner(Runner):
    """Runs tasks on one context: inputs_set -> run -> outputs_get (float32) -> release."""

    def __init__(self, backend: RknnBackend, context: _Context, owns_context: bool) -> None:
        self._lib = backend._lib
        self._context = context
        self._owns_context = owns_context
        self._input_formats = backend.input_formats
        self._output_shapes = backend.output_dims
        self._inputs = (RknnInput * len(backend.inputs))()
        for index, item in enumerate(self._inputs):
            item.index = index
        self._outputs = (RknnOutput * max(1, len(backend.outputs)))()
        for item in self._outputs:
            item.want_float = 1  # dequantised float32, as the original
            item.is_prealloc = 1  # straight into the numpy array we return

    def run(self, inputs: Sequence[np.ndarray], output_indices: Sequence[int]) -> list[np.ndarray]:
        lib, handle = self._lib, self._context.handle
        feeds = []
        for item, array, (fmt, transpose) in zip(self._inputs, inputs, self._input_formats):
            array = np.ascontiguousarray(array.transpose(0, 2, 3, 1) if transpose else array)
            item.buf = array.ctypes.data
            item.size = array.nbytes
            item.type = _INPUT_TYPES[array.dtype]
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

    def close(self) -> None:
        if self._owns_context:
            self._context.close()


def _name(attr: Any, fallback: str) -> str:
    return _text(attr.name) or fallback


def _dims(attr: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in attr.dims[: attr.n_dims])


def _type_string(attr: Any) -> str:
    return _TYPE_STRINGS.get(attr.type, "tensor(unknown)")


def _input_spec(attr: Any, index: int, layout: str) -> TensorSpec:
    """The user's view of an input: 4-D inputs are reported NHWC and shown NCHW unless the
    layout is nhwc/any (SPEC.md 6.3; the dims are taken as NHWC whatever ``fmt`` says)."""
    dims = _dims(attr)
    if len(dims) == 4 and layout in _NCHW_LAYOUTS:
        dims = (dims[0], dims[3], dims[1], dims[2])
    return TensorSpec(
        _name(attr, f"input_{index}"), dims, _FLOAT32, type=_type_string(attr), accepts=_ACCEPTS
    )


def _input_format(attr: Any, layout: str) -> tuple[int, bool]:
    """(rknn_input.fmt, transpose NCHW->NHWC in numpy first) for one input."""
    if attr.n_dims != 4:
        return TensorFormat.UNDEFINED, False
    if layout == "nchw":
        return TensorFormat.NCHW, False  # librknnrt transposes
    return TensorFormat.NHWC, layout == "nchw_software"


def _output_spec(attr: Any, index: int) -> TensorSpec:
    return TensorSpec(
        _name(attr, f"output_{index}"), _dims(attr), _FLOAT32, type=_type_string(attr)
    )


def _native_spec(attr: Any, fallback: str) -> TensorSpec:
    return TensorSpec(_name(attr, fallback), _dims(attr), _FLOAT32, type=_type_string(attr))


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
