"""Zero copy: ``OrtValue`` and ``IOBinding`` over a backend's device buffers (SPEC.md 12).

Usage, the same on a board (RKNN) and on a laptop (onnxruntime)::

    frame = OrtValue.ortvalue_from_dmabuf(fd, [1, 1080, 1920, 3], np.uint8, size=n,
                                          session=sess, name="images", io_kind="input")
    binding = sess.io_binding()
    binding.bind_ortvalue_input("images", frame)
    binding.bind_output("scores")             # a buffer in session memory
    sess.run_with_iobinding(binding)          # or sess.submit(None, binding) -> Future
    scores = binding.copy_outputs_to_cpu()[0]

Values
    A *host* value (``device_type="cpu"``, no session) wraps a numpy array. A *device* value
    (``device_type="rknpu2"`` and ``session=``) owns one buffer of that session's memory; with
    ``name``/``io_kind`` it is laid out for that model tensor. The onnxruntime backend's session
    memory is host memory, so ``device_name()`` says ``"cpu"`` there, and the same code runs.
    ``numpy()`` of a device value is a copy in the logical layout (``shape()``); zero-copy outputs
    keep the model's own type (no dequantisation on RKNN).

Safety (what the original got wrong, SPEC.md 15.5)
    * A binding run takes a worker slot through the engine like any task, so it never races the
      workers; ``submit``/``run_async``/``arun`` accept a binding to pipeline frames across cores.
      One binding is one run at a time: submitting it again while in flight, or changing it then,
      raises; use one binding per frame in flight.
    * Buffers are freed exactly once: by ``OrtValue.release()``, when the value is collected, by
      ``IOBinding.clear_*``/``close()`` for buffers the binding allocated (``bind_cpu_input``,
      ``bind_output``), or at ``session.close()`` for all. A run pins its buffers, so a release
      during a run frees after it; a run whose value was released before it raises.
    * Shapes and dtypes are checked when a value is made and when it is bound, by the same code as
      feeds (``feeds.check_tensor``); a value of another session, a binding of another session, a
      closed binding each raise; after ``session.close()`` every call raises SessionClosedError.

Deliberate differences from the original: no silent casting (``ortvalue_from_numpy`` of an
``rknpu2`` value needs the tensor's dtype, as feeds do); ``bind_cpu_input`` copies into session
memory at bind time (as the original; onnxruntime reads the array at run time); ``mem_flags`` is
handed to the backend; ``element_type()`` of host values is their real type.

For backend authors (phase 2, RKNN): implement, in ``backends/base.py`` terms,

* ``Backend.device_type = "rknpu2"``.
* ``Backend.zero_copy_inputs`` / ``zero_copy_outputs``: one ``TensorSpec`` per tensor in the
  logical layout of SPEC.md 12.1 (``layout="nhwc"`` -> NHWC, else NCHW for 4-D inputs), dtype the
  buffer's element type (outputs: the model's own type), ``accepts=(dtype,)``.
* ``Backend.allocate(request)``: ``rknn_create_mem``/``rknn_create_mem2`` (``request.mem_flags``)
  of the native attr's ``size_with_stride`` (``zero_copy_layout``: NHWC or NC1HWC2/pass-through)
  for ``request.io_kind``/``request.index``, or a dense block for a generic request; dma-heap where
  present. Zero-filled. Return a ``DeviceBuffer`` subclass registered with the backend's
  ``BufferTracker``.
* ``Backend.import_dmabuf(fd, request, size=, offset=, virt_addr=)``: dup the fd,
  ``rknn_create_mem_from_fd`` (mmap it unless ``virt_addr``); check ``size`` against the native
  size.
* ``Backend.check_binding(buffer, io_kind, index)``: ValueError when the buffer's native layout or
  size does not fit that tensor (a generic dense buffer for a strided input...).
* ``Backend.close()``: ``self.buffers.release_all()`` before destroying any context.
* ``DeviceBuffer``: ``_free`` (``rknn_destroy_mem`` under the owning context's lock: it may run on
  any thread, e.g. the garbage collector's, while a worker runs), ``read``/``write`` converting
  between the logical array and the native layout (w_stride padding, NC1HWC2; ValueError where
  the CPU cannot), ``sync_to_device``/``sync_from_device`` (``rknn_mem_sync``), ``data_ptr``
  (``virt_addr + offset``) and ``memory_info`` (size, fd, offset, virt_addr, dmabuf_backed,
  size_with_stride, w_stride, h_stride, fmt, pass_through).
* ``Runner.run_buffers(inputs, outputs)``: on the slot's own context, ``rknn_set_io_mem`` for each
  buffer with its native attr, then ``rknn_run``. A buffer is made once but runs on whichever slot
  takes the task: check (emulator, RKNN docs) that a mem made on one context may be set on another
  context of the same model; if not, allocate on context 0 and keep per-context registrations.
  Skipping ``rknn_set_io_mem`` when a context already has a buffer set is fine if the cache holds
  the ``DeviceBuffer`` objects and compares them with ``is`` (never addresses or ids, which a
  freed buffer's successor may reuse). No syncs: ``OrtValue`` syncs around its own CPU reads and
  writes.

The tests to mirror are ``tests/test_iobinding*.py``: run them against the emulator with the
emulator's buffer counters in place of ``backend.buffers``.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

import numpy as np

from .backends.base import (
    MEM_CACHEABLE,
    MEM_DEFAULT,
    MEM_NON_CACHEABLE,
    MEM_TRY_SRAM,
    Backend,
    BufferRequest,
    DeviceBuffer,
    Runner,
)
from .errors import SessionClosedError
from .feeds import check_array, check_tensor, format_shape
from .tensors import ONNX_TYPE_TO_DTYPE, TensorSpec, type_string

__all__ = ["OrtValue", "SessionIOBinding", "IOBinding", "SessionMemory", "parse_mem_flags"]

_T = TypeVar("_T")
_DEVICE_TYPES = ("cpu", "rknpu2")
_IO_KINDS = ("input", "output")
_LAYOUTS = ("onnx", "native")
_MEM_FLAGS = {
    "default": MEM_DEFAULT,
    "cacheable": MEM_CACHEABLE,
    "non_cacheable": MEM_NON_CACHEABLE,
    "non-cacheable": MEM_NON_CACHEABLE,
    "uncached": MEM_NON_CACHEABLE,
    "try_sram": MEM_TRY_SRAM,
    "sram": MEM_TRY_SRAM,
}


def parse_mem_flags(value: Any) -> int:
    """``mem_flags`` as ``MEM_*`` bits: a name of SPEC.md 12.2, an int of those bits, or None."""
    if value is None:
        return MEM_DEFAULT
    if isinstance(value, str):
        try:
            return _MEM_FLAGS[value.strip().lower()]
        except KeyError:
            raise ValueError(
                f"Unknown mem_flags: {value!r}; expected one of {', '.join(_MEM_FLAGS)}"
            ) from None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        both = MEM_CACHEABLE | MEM_NON_CACHEABLE
        if not 0 <= value <= both | MEM_TRY_SRAM or value & both == both:
            raise ValueError(
                f"mem_flags {value} is not a combination of cacheable (1) or non-cacheable (2) "
                "and try-SRAM (4)"
            )
        return int(value)
    raise TypeError(f"mem_flags must be a string, an int or None, got {type(value).__name__}")


def _element_dtype(element_type: Any) -> np.dtype:
    """A numpy dtype from a dtype-like or an onnxruntime type string such as ``tensor(float)``."""
    if isinstance(element_type, str) and element_type.startswith("tensor("):
        dtype = ONNX_TYPE_TO_DTYPE.get(element_type)
    else:
        try:
            dtype = np.dtype(element_type)
        except TypeError:
            dtype = None
    if dtype is None or type_string(dtype) == "tensor(unknown)":
        raise TypeError(f"element_type {element_type!r} is not a tensor element type")
    return dtype


def _dims(shape: Any) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise TypeError(f"shape must be a sequence of integers, got {shape!r}") from None
    if any(d < 0 for d in dims):
        raise ValueError(f"shape must not have negative dimensions, got {list(dims)}")
    return dims


def _check_layout(layout: Any) -> None:
    """``layout`` is accepted for source compatibility with the original, which ignores it: the
    memory layout always follows the session's ``zero_copy_layout``, and ``numpy()`` /
    ``update_inplace`` always use the logical shape."""
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(_LAYOUTS)}, got {layout!r}")


def _check_device(device_type: Any, device_id: Any) -> str:
    kind = device_type.lower() if isinstance(device_type, str) else device_type
    if kind not in _DEVICE_TYPES:
        raise ValueError(f"device_type must be 'cpu' or 'rknpu2', got {device_type!r}")
    if device_id != 0:
        raise ValueError(f"device_id must be 0 (one device per session), got {device_id!r}")
    return kind


def _memory_of(session: Any) -> SessionMemory:
    memory = getattr(session, "_zero_copy", None)
    if not isinstance(memory, SessionMemory):
        raise TypeError(f"session must be an InferenceSession, got {type(session).__name__}")
    memory.check_open()
    return memory


def _placement(
    device_type: Any, device_id: Any, session: Any, name: Any, io_kind: Any
) -> Optional[SessionMemory]:
    """The session memory a new value lives in, or None for a host value."""
    if _check_device(device_type, device_id) == "cpu":
        if session is not None or name is not None or io_kind is not None:
            raise ValueError(
                "a 'cpu' OrtValue wraps host memory and belongs to no session; pass "
                "device_type='rknpu2' with session= for a buffer in session memory"
            )
        return None
    if session is None:
        raise ValueError(
            "an 'rknpu2' OrtValue needs session= (and name= and io_kind= for a model tensor)"
        )
    return _memory_of(session)


class SessionMemory:
    """The zero-copy side of one session: its backend, the tensors values bind to, and whether the
    session is open. Values and bindings hold this rather than the session, so a session that
    goes out of scope is still closed (and its values then raise SessionClosedError)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._specs = {
            "input": list(backend.zero_copy_inputs),
            "output": list(backend.zero_copy_outputs),
        }
        self._index = {
            kind: {spec.name: i for i, spec in enumerate(specs)}
            for kind, specs in self._specs.items()
        }
        self._closed = False

    def check_open(self) -> None:
        if self._closed:
            raise SessionClosedError("the session is closed")

    def close(self) -> None:
        """Every later value or binding call raises; the backend frees the buffers at its close."""
        self._closed = True

    def specs(self, io_kind: str) -> list[TensorSpec]:
        return self._specs[io_kind]

    def tensor(self, io_kind: Any, name: Any) -> int:
        """The index of the model tensor ``name`` among the ``io_kind`` tensors."""
        if io_kind not in _IO_KINDS:
            raise ValueError(f"io_kind must be 'input' or 'output', got {io_kind!r}")
        index = self._index[io_kind].get(name) if isinstance(name, str) else None
        if index is None:
            raise ValueError(
                f"Unknown {io_kind} name: {name!r}; the model's {io_kind}s are "
                f"{list(self._index[io_kind])}"
            )
        return index

    def request(
        self, name: Any, io_kind: Any, shape: tuple[int, ...], dtype: np.dtype, mem_flags: int
    ) -> BufferRequest:
        """A buffer request for model tensor ``name`` (checked against it), or a generic one."""
        if type_string(dtype) == "tensor(unknown)":
            raise TypeError(f"{dtype} is not a tensor element type")
        if name is None and io_kind is None:
            return BufferRequest(shape, dtype, mem_flags=mem_flags)
        if name is None or io_kind is None:
            raise ValueError(
                "name and io_kind go together: both for a buffer laid out for that model "
                "tensor, neither for a generic buffer"
            )
        index = self.tensor(io_kind, name)
        check_tensor(shape, dtype, self._specs[io_kind][index], role=io_kind)
        return BufferRequest(shape, dtype, io_kind, index, mem_flags)

    def new_value(
        self, make: Callable[[BufferRequest], DeviceBuffer], request: BufferRequest
    ) -> _DeviceValue:
        return _DeviceValue(self, make(request))

    def check_bindable(self, value: Any, io_kind: str, index: int, api: str) -> _DeviceValue:
        """``value``, if it may serve as model tensor ``index`` of kind ``io_kind``."""
        if not isinstance(value, OrtValue):
            raise TypeError(f"{api} takes an OrtValue, got {type(value).__name__}")
        if not isinstance(value, _DeviceValue):
            host_way = "bind_cpu_input" if io_kind == "input" else "bind_output"
            raise TypeError(
                f"{api} needs an OrtValue in session memory (device_type='rknpu2', session=...); "
                f"host arrays go through {host_way}"
            )
        if value._memory is not self:
            raise ValueError(f"{api}: the OrtValue belongs to a different session")
        value._check()
        buffer = value._buffer
        spec = self._specs[io_kind][index]
        made_for = buffer.request
        made_kind, made_index = made_for.io_kind, made_for.index
        generic = made_kind is None or made_index is None
        if not generic and (made_kind, made_index) != (io_kind, index):
            other = self._specs[made_kind][made_index].name  # type: ignore[index]
            raise ValueError(
                f"{api}: the OrtValue was made for {made_kind} {other!r}; it cannot be "
                f"bound to {io_kind} {spec.name!r}"
            )
        check_tensor(made_for.shape, made_for.dtype, spec, role=io_kind)
        self.backend.check_binding(buffer, io_kind, index)
        return value

    def launch(self, binding: Any, api: str, start: Callable[[_Flight], _T]) -> _T:
        """Claim ``binding`` for one run and ``start(flight)`` it (hand it to the engine).

        The flight ends when its run ends (before the result is published, so the caller may
        resubmit at once), when ``start`` fails (nothing was queued), or when the returned future
        is done without a run (cancelled, or failed by ``close()``).
        """
        if not isinstance(binding, SessionIOBinding):
            raise TypeError(
                f"{api} takes an IOBinding from io_binding(), got {type(binding).__name__}"
            )
        if binding._memory is not self:
            raise ValueError(f"{api}: the IOBinding belongs to a different session")
        flight = binding._launch(api)
        try:
            outcome = start(flight)
        except BaseException:
            flight.finish()
            raise
        if isinstance(outcome, Future):
            outcome.add_done_callback(flight.finish)
        return outcome


class OrtValue(ABC):
    """A tensor for zero-copy runs, with onnxruntime's ``OrtValue`` surface (SPEC.md 12.2).

    Make one with ``ortvalue_from_numpy``, ``ortvalue_from_shape_and_type`` or
    ``ortvalue_from_dmabuf``. A device value frees its buffer on ``release()``, when collected,
    or when its session closes, whichever comes first.
    """

    __slots__ = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> OrtValue:
        if cls is OrtValue:
            raise TypeError(
                "make OrtValues with OrtValue.ortvalue_from_numpy, ortvalue_from_shape_and_type "
                "or ortvalue_from_dmabuf"
            )
        return super().__new__(cls)

    # -- constructors ----------------------------------------------------------------------

    @staticmethod
    def ortvalue_from_numpy(
        arr: np.ndarray,
        device_type: str = "cpu",
        device_id: int = 0,
        *,
        name: Optional[str] = None,
        session: Any = None,
        io_kind: Optional[str] = None,
        layout: str = "onnx",
        sync: bool = True,
    ) -> OrtValue:
        """``"cpu"``: wraps ``arr`` (no copy when C-contiguous). ``"rknpu2"``: a buffer of
        ``session``'s memory holding a copy of ``arr``, laid out for model tensor ``name``
        (``io_kind`` "input"/"output") if given; ``sync`` flushes it to the device."""
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"ortvalue_from_numpy takes a numpy array, got {type(arr).__name__}")
        _check_layout(layout)
        memory = _placement(device_type, device_id, session, name, io_kind)
        if memory is None:
            return _HostValue(arr if arr.flags.c_contiguous else arr.copy(order="C"))
        request = memory.request(name, io_kind, arr.shape, arr.dtype, MEM_DEFAULT)
        value = memory.new_value(memory.backend.allocate, request)
        value._store(arr, sync)
        return value

    @staticmethod
    def ortvalue_from_shape_and_type(
        shape: Sequence[int],
        element_type: Any,
        device_type: str = "cpu",
        device_id: int = 0,
        *,
        name: Optional[str] = None,
        session: Any = None,
        io_kind: Optional[str] = None,
        layout: str = "native",
        mem_flags: Any = "cacheable",
    ) -> OrtValue:
        """A zero-filled value: a host array (``"cpu"``) or a buffer of ``session``'s memory
        (``"rknpu2"``), for model tensor ``name`` when given, else generic and dense."""
        dims, dtype = _dims(shape), _element_dtype(element_type)
        _check_layout(layout)
        flags = parse_mem_flags(mem_flags)
        memory = _placement(device_type, device_id, session, name, io_kind)
        if memory is None:
            return _HostValue(np.zeros(dims, dtype))
        return memory.new_value(
            memory.backend.allocate, memory.request(name, io_kind, dims, dtype, flags)
        )

    @staticmethod
    def ortvalue_from_dmabuf(
        fd: int,
        shape: Sequence[int],
        element_type: Any,
        *,
        size: int,
        offset: int = 0,
        virt_addr: Optional[int] = None,
        session: Any = None,
        name: Optional[str] = None,
        io_kind: Optional[str] = None,
        layout: str = "native",
    ) -> OrtValue:
        """A value over ``size`` bytes of the dma-buf ``fd`` from ``offset``, for model tensor
        ``name`` of ``session``. The fd is dup'ed, so the caller may close its own. The CPU
        backend maps any mappable fd (a memfd works)."""
        if session is None or name is None or io_kind is None:
            raise ValueError("ortvalue_from_dmabuf needs session=, name= and io_kind=")
        for arg, low, value in (("fd", 0, fd), ("size", 1, size), ("offset", 0, offset)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{arg} must be an integer, got {type(value).__name__}")
            if value < low:
                raise ValueError(f"{arg} must be >= {low}, got {value}")
        _check_layout(layout)
        memory = _memory_of(session)
        dims, dtype = _dims(shape), _element_dtype(element_type)
        request = memory.request(name, io_kind, dims, dtype, MEM_DEFAULT)
        if size < request.nbytes:
            raise ValueError(
                f"dmabuf size {size} is smaller than the {request.nbytes} bytes of "
                f"{list(request.shape)} {request.dtype}"
            )

        def import_fd(req: BufferRequest) -> DeviceBuffer:
            return memory.backend.import_dmabuf(
                int(fd), req, size=int(size), offset=int(offset), virt_addr=virt_addr
            )

        return memory.new_value(import_fd, request)

    # -- methods ---------------------------------------------------------------------------

    @abstractmethod
    def numpy(self) -> np.ndarray:
        """Host value: the wrapped array itself. Device value: a synced copy, logical layout."""

    @abstractmethod
    def data_ptr(self) -> int:
        """Address of the first element."""

    @abstractmethod
    def device_name(self) -> str:
        """``"cpu"`` for host values, else the backend's device (``"rknpu2"``, or ``"cpu"`` for
        onnxruntime's host-memory buffers)."""

    @abstractmethod
    def has_value(self) -> bool:
        """False once released."""

    @abstractmethod
    def sync_to_device(self) -> None:
        """After writing through ``data_ptr()``: make the writes visible to the device."""

    @abstractmethod
    def sync_from_device(self) -> None:
        """Before reading through ``data_ptr()``: make the device's writes visible."""

    @abstractmethod
    def release(self) -> None:
        """Free the device buffer now (after the run using it, if any) instead of when the value
        is collected. Idempotent; a no-op for host values and after the session closed."""

    def device_type(self) -> str:
        return self.device_name()

    def device_id(self) -> int:
        self._check()
        return 0

    def shape(self) -> list[int]:
        self._check()
        return list(self._shape)

    def element_type(self) -> str:
        """The onnxruntime type string, e.g. ``tensor(float)``."""
        self._check()
        return type_string(self._dtype)

    def is_tensor(self) -> bool:
        self._check()
        return True

    def update_inplace(self, np_arr: np.ndarray) -> None:
        """Overwrite the contents with ``np_arr`` (same shape and dtype), synced to the device."""
        self._check()
        if not isinstance(np_arr, np.ndarray):
            raise TypeError(f"update_inplace takes a numpy array, got {type(np_arr).__name__}")
        if np_arr.shape != self._shape or np_arr.dtype != self._dtype:
            raise ValueError(
                f"update_inplace: the OrtValue is {format_shape(self._shape)} {self._dtype}, got "
                f"{list(np_arr.shape)} {np_arr.dtype}"
            )
        self._store(np_arr)

    def memory_info(self) -> dict[str, Any]:
        return {"device_type": self.device_name(), "device_id": 0, **self._details()}

    # -- what each kind of value supplies --------------------------------------------------

    @property
    @abstractmethod
    def _shape(self) -> tuple[int, ...]: ...

    @property
    @abstractmethod
    def _dtype(self) -> np.dtype: ...

    @abstractmethod
    def _check(self) -> None:
        """Raise if the value may no longer be used."""

    @abstractmethod
    def _store(self, array: np.ndarray, sync: bool = True) -> None:
        """Write ``array`` (already checked) and, with ``sync``, sync it to the device."""

    @abstractmethod
    def _details(self) -> dict[str, Any]:
        """The device part of ``memory_info()``."""


class _HostValue(OrtValue):
    """A numpy array, wrapped: no session, no device memory, nothing to free."""

    __slots__ = ("_array",)

    def __init__(self, array: np.ndarray) -> None:
        self._array = array

    def numpy(self) -> np.ndarray:
        return self._array

    def data_ptr(self) -> int:
        return int(self._array.ctypes.data)

    def device_name(self) -> str:
        return "cpu"

    def has_value(self) -> bool:
        return True

    def sync_to_device(self) -> None:
        pass

    def sync_from_device(self) -> None:
        pass

    def release(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<OrtValue {type_string(self._dtype)} {list(self._shape)} (cpu)>"

    @property
    def _shape(self) -> tuple[int, ...]:
        return self._array.shape

    @property
    def _dtype(self) -> np.dtype:
        return self._array.dtype

    def _check(self) -> None:
        pass

    def _store(self, array: np.ndarray, sync: bool = True) -> None:
        np.copyto(self._array, array)

    def _details(self) -> dict[str, Any]:
        return {}


class _DeviceValue(OrtValue):
    """The one owner of a buffer of session memory: it frees the buffer when released or
    collected (the session frees it at close otherwise)."""

    __slots__ = ("_buffer", "_memory")

    def __init__(self, memory: SessionMemory, buffer: DeviceBuffer) -> None:
        self._memory = memory
        self._buffer = buffer

    def numpy(self) -> np.ndarray:
        with self._using() as buffer:
            buffer.sync_from_device()
            return buffer.read()

    def data_ptr(self) -> int:
        with self._using() as buffer:
            return buffer.data_ptr

    def device_name(self) -> str:
        self._check()
        return self._memory.backend.device_type

    def has_value(self) -> bool:
        self._memory.check_open()
        return not self._buffer.released

    def sync_to_device(self) -> None:
        with self._using() as buffer:
            buffer.sync_to_device()

    def sync_from_device(self) -> None:
        with self._using() as buffer:
            buffer.sync_from_device()

    def release(self) -> None:
        self._buffer.release()

    def __del__(self) -> None:
        buffer = getattr(self, "_buffer", None)  # absent if __init__ never ran
        if buffer is not None:
            buffer.release()

    def __repr__(self) -> str:
        released = ", released" if self._buffer.released else ""
        where = self._memory.backend.device_type + released
        return f"<OrtValue {type_string(self._dtype)} {list(self._shape)} ({where})>"

    @property
    def _shape(self) -> tuple[int, ...]:
        return self._buffer.request.shape

    @property
    def _dtype(self) -> np.dtype:
        return self._buffer.request.dtype

    def _check(self) -> None:
        self._memory.check_open()
        if self._buffer.released:
            raise RuntimeError("the OrtValue was released; its buffer is gone")

    @contextmanager
    def _using(self) -> Iterator[DeviceBuffer]:
        """The buffer, pinned while the caller touches it, so a release from another thread
        frees it only afterwards."""
        self._memory.check_open()
        buffer = self._buffer
        if not buffer.pin():
            raise RuntimeError("the OrtValue was released; its buffer is gone")
        try:
            yield buffer
        finally:
            buffer.unpin()

    def _store(self, array: np.ndarray, sync: bool = True) -> None:
        with self._using() as buffer:
            buffer.write(array)
            if sync:
                buffer.sync_to_device()

    def _details(self) -> dict[str, Any]:
        with self._using() as buffer:
            return buffer.memory_info()


@dataclass(frozen=True)
class _Bound:
    value: _DeviceValue
    owned: bool  # allocated by the binding (bind_cpu_input / bind_output): it releases it


class _Flight:
    """One run of a binding: the buffers in model order, the values it delivers, and the binding
    to hand back when it ends. A worker calls ``run_on`` (through ``Runner.run_binding``)."""

    __slots__ = ("_binding", "_inputs", "_outputs", "results")

    def __init__(
        self,
        binding: SessionIOBinding,
        inputs: tuple[DeviceBuffer, ...],
        outputs: tuple[DeviceBuffer, ...],
        results: list[OrtValue],
    ) -> None:
        self._binding = binding
        self._inputs = inputs
        self._outputs = outputs
        self.results = results

    def run_on(self, runner: Runner) -> list[OrtValue]:
        pinned: list[DeviceBuffer] = []
        n_inputs = len(self._inputs)
        try:
            for k, buffer in enumerate(self._inputs + self._outputs):
                if not buffer.pin():
                    where = ("input", k) if k < n_inputs else ("output", k - n_inputs)
                    raise _released(self._binding._memory, *where)
                pinned.append(buffer)
            runner.run_buffers(self._inputs, self._outputs)
        finally:
            for buffer in pinned:
                buffer.unpin()
            self.finish()
        return self.results

    def finish(self, *_: Any) -> None:
        """Hand the binding back (idempotent; also a future's done-callback)."""
        self._binding._landed(self)


class SessionIOBinding:
    """Inputs and outputs bound to one session's memory, for ``run_with_iobinding`` and for
    ``submit``/``run_async``/``arun`` (pass the binding as ``input_feed``). SPEC.md 12.3.

    Every input and output must be bound before a run. ``get_outputs()`` keeps first-bind order.
    ``close()`` (or ``with``) frees the buffers the binding allocated itself.
    """

    def __init__(self, session: Any) -> None:
        self._memory = _memory_of(session)
        self._lock = threading.Lock()
        self._inputs: dict[int, _Bound] = {}
        self._outputs: dict[int, _Bound] = {}
        self._flight: Optional[_Flight] = None
        self._closed = False

    # -- binding ---------------------------------------------------------------------------

    def bind_cpu_input(self, name: str, arr_on_cpu: Any) -> None:
        """Copy ``arr_on_cpu`` into a buffer of session memory that the binding owns (reused
        while shape and dtype stay the same). Later changes to the array are not seen."""
        with self._editing("bind_cpu_input"):
            index = self._memory.tensor("input", name)
            array = check_array(arr_on_cpu, self._memory.specs("input")[index])
            value = self._owned_value(
                self._inputs, "input", index, array.shape, array.dtype, MEM_DEFAULT
            )
            value._store(array)

    def bind_input(self, *args: Any, **kwargs: Any) -> None:
        """Raw device pointers cannot be checked, so they are not accepted."""
        raise NotImplementedError(
            "bind_input with a raw buffer pointer is not supported; use bind_cpu_input or "
            "bind_ortvalue_input"
        )

    def bind_ortvalue_input(self, name: str, ortvalue: OrtValue) -> None:
        self._bind_value(self._inputs, "input", name, ortvalue, "bind_ortvalue_input")

    def bind_ortvalue_output(self, name: str, ortvalue: OrtValue) -> None:
        self._bind_value(self._outputs, "output", name, ortvalue, "bind_ortvalue_output")

    def bind_output(
        self,
        name: str,
        device_type: str = "cpu",
        device_id: int = 0,
        element_type: Any = None,
        shape: Optional[Sequence[int]] = None,
        buffer_ptr: Optional[int] = None,
        *,
        layout: str = "native",
        mem_flags: Any = "cacheable",
    ) -> None:
        """Bind output ``name`` to a buffer of session memory the binding allocates (for either
        device type). ``shape`` is needed only when the output's shape is dynamic."""
        if buffer_ptr is not None:
            raise ValueError(
                "bind_output does not take a raw buffer_ptr; bind an OrtValue with "
                "bind_ortvalue_output"
            )
        _check_device(device_type, device_id)
        _check_layout(layout)
        flags = parse_mem_flags(mem_flags)
        with self._editing("bind_output"):
            index = self._memory.tensor("output", name)
            spec = self._memory.specs("output")[index]
            dtype = spec.dtype if element_type is None else _element_dtype(element_type)
            if shape is not None:
                dims = _dims(shape)
            elif all(isinstance(d, int) and d >= 0 for d in spec.shape):
                dims = tuple(spec.shape)  # type: ignore[arg-type]
            else:
                raise ValueError(
                    f"output {name!r} has the dynamic shape {format_shape(spec.shape)}; "
                    "pass shape= to bind_output"
                )
            check_tensor(dims, dtype, spec, role="output")
            self._owned_value(self._outputs, "output", index, dims, dtype, flags)

    # -- reading and housekeeping ----------------------------------------------------------

    def get_outputs(self) -> list[OrtValue]:
        """The bound output values, in the order they were first bound."""
        with self._lock:
            self._check_usable()
            return [bound.value for bound in self._outputs.values()]

    def copy_outputs_to_cpu(self) -> list[np.ndarray]:
        """Synced copies of the bound outputs, in ``get_outputs()`` order."""
        return [value.numpy() for value in self.get_outputs()]

    def clear_binding_inputs(self) -> None:
        with self._editing("clear_binding_inputs"):
            released = self._inputs
            self._inputs = {}
        _release_owned(released)

    def clear_binding_outputs(self) -> None:
        with self._editing("clear_binding_outputs"):
            released = self._outputs
            self._outputs = {}
        _release_owned(released)

    def synchronize_inputs(self) -> None:
        """Flush CPU writes of every bound input to the device."""
        with self._lock:
            self._check_usable()
            values = [bound.value for bound in self._inputs.values()]
        for value in values:
            value.sync_to_device()

    def synchronize_outputs(self) -> None:
        """Make the device's writes to every bound output visible to the CPU."""
        for value in self.get_outputs():
            value.sync_from_device()

    def close(self) -> None:
        """Unbind everything and free the buffers the binding allocated (after a run still
        using them). Idempotent, and allowed after the session closed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            inputs, outputs = self._inputs, self._outputs
            self._inputs, self._outputs = {}, {}
        _release_owned(inputs)
        _release_owned(outputs)

    def __enter__(self) -> SessionIOBinding:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "in flight" if self._flight else "idle"
        return f"<IOBinding {len(self._inputs)} inputs, {len(self._outputs)} outputs, {state}>"

    # -- internals -------------------------------------------------------------------------

    def _check_usable(self) -> None:
        self._memory.check_open()
        if self._closed:
            raise RuntimeError("the IOBinding is closed")

    @contextmanager
    def _editing(self, api: str) -> Iterator[None]:
        with self._lock:
            self._check_usable()
            if self._flight is not None:
                raise RuntimeError(
                    f"{api}: the IOBinding is in flight; wait for its run to finish before "
                    "changing it"
                )
            yield

    def _set(self, slots: dict[int, _Bound], index: int, bound: _Bound) -> None:
        """Bind (keeping the first-bind position) and free what the binding owned there."""
        old = slots.get(index)
        slots[index] = bound
        if old is not None and old.owned and old.value is not bound.value:
            old.value.release()

    def _owned_value(
        self,
        slots: dict[int, _Bound],
        io_kind: str,
        index: int,
        shape: tuple[int, ...],
        dtype: np.dtype,
        mem_flags: int,
    ) -> OrtValue:
        """The binding's own buffer for a tensor: the current one if it still fits, else new."""
        request = BufferRequest(tuple(shape), np.dtype(dtype), io_kind, index, mem_flags)
        current = slots.get(index)
        if current is not None and current.owned:
            buffer = current.value._buffer
            if buffer.request == request and not buffer.released:
                return current.value
        value = self._memory.new_value(self._memory.backend.allocate, request)
        self._set(slots, index, _Bound(value, owned=True))
        return value

    def _bind_value(
        self, slots: dict[int, _Bound], io_kind: str, name: str, value: OrtValue, api: str
    ) -> None:
        with self._editing(api):
            index = self._memory.tensor(io_kind, name)
            bindable = self._memory.check_bindable(value, io_kind, index, api)
            self._set(slots, index, _Bound(bindable, owned=False))

    def _launch(self, api: str) -> _Flight:
        """Claim the binding for one run: everything bound and live, not already in flight."""
        with self._lock:
            self._check_usable()
            if self._flight is not None:
                raise RuntimeError(
                    f"{api}: the IOBinding is already in flight (its previous run has not "
                    "finished); wait for it, or use one IOBinding per frame in flight"
                )
            buffers: list[DeviceBuffer] = []
            for io_kind, slots, how in (
                ("input", self._inputs, "bind_cpu_input or bind_ortvalue_input"),
                ("output", self._outputs, "bind_output or bind_ortvalue_output"),
            ):
                specs = self._memory.specs(io_kind)
                if len(slots) < len(specs):
                    missing = [spec.name for i, spec in enumerate(specs) if i not in slots]
                    raise ValueError(
                        f"{api}: model {io_kind}s {missing} are not bound; bind every {io_kind} "
                        f"({how})"
                    )
                for i in range(len(specs)):
                    buffer = slots[i].value._buffer
                    if buffer.released:
                        raise _released(self._memory, io_kind, i, f"{api}: ")
                    buffers.append(buffer)
            n_inputs = len(self._inputs)
            results: list[OrtValue] = [bound.value for bound in self._outputs.values()]
            flight = _Flight(self, tuple(buffers[:n_inputs]), tuple(buffers[n_inputs:]), results)
            self._flight = flight
            return flight

    def _landed(self, flight: _Flight) -> None:
        with self._lock:
            if self._flight is flight:
                self._flight = None


#: onnxruntime's name for the same class.
IOBinding = SessionIOBinding


def _released(memory: SessionMemory, io_kind: str, index: int, prefix: str = "") -> RuntimeError:
    name = memory.specs(io_kind)[index].name
    return RuntimeError(
        f"{prefix}{io_kind} {name!r} is bound to an OrtValue that was released; bind a live value"
    )


def _release_owned(slots: dict[int, _Bound]) -> None:
    for bound in slots.values():
        if bound.owned:
            bound.value.release()
