"""``OrtValue``: a tensor for zero-copy runs, in host memory or in a session's memory.

``OrtValue`` is the public face (onnxruntime's surface); ``_HostValue`` wraps a numpy array,
``DeviceValue`` owns one ``DeviceBuffer`` of a ``SessionMemory``. The argument parsers here
(element types, shapes, devices, layouts, ``mem_flags``) are shared with ``binding``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional

import numpy as np

from ..backends.base import (
    MEM_CACHEABLE,
    MEM_DEFAULT,
    MEM_NON_CACHEABLE,
    MEM_TRY_SRAM,
    BufferRequest,
    DeviceBuffer,
)
from ..errors import ValueReleasedError
from ..feeds import format_shape
from ..tensors import ONNX_TYPE_TO_DTYPE, type_string
from .memory import SessionMemory, memory_of

__all__ = [
    "OrtValue",
    "DeviceValue",
    "allocate",
    "parse_mem_flags",
    "parse_element_type",
    "parse_shape",
    "check_layout",
    "check_device",
]

_DEVICE_TYPES = ("cpu", "rknpu2", "rknpu3")  # the NPU names both mean session memory
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


def parse_element_type(element_type: Any) -> np.dtype:
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


def parse_shape(shape: Any) -> tuple[int, ...]:
    """A user's shape as dims: a buffer has a fixed size, so no symbolic or negative dims."""
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise TypeError(f"shape must be a sequence of integers, got {shape!r}") from None
    if any(d < 0 for d in dims):
        raise ValueError(f"shape must not have negative dimensions, got {list(dims)}")
    return dims


def check_layout(layout: Any) -> None:
    """``layout`` is accepted for source compatibility with the original, which ignores it: the
    memory layout always follows the session's ``zero_copy_layout``, and ``numpy()`` /
    ``update_inplace`` always use the logical shape."""
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(_LAYOUTS)}, got {layout!r}")


def check_device(device_type: Any, device_id: Any) -> str:
    """The lower-cased device type; a session is one device, so ``device_id`` must be 0."""
    kind = device_type.lower() if isinstance(device_type, str) else device_type
    if kind not in _DEVICE_TYPES:
        raise ValueError(f"device_type must be 'cpu', 'rknpu2' or 'rknpu3', got {device_type!r}")
    if device_id != 0:
        raise ValueError(f"device_id must be 0 (one device per session), got {device_id!r}")
    return kind


def _placement(
    device_type: Any, device_id: Any, session: Any, name: Any, io_kind: Any
) -> Optional[SessionMemory]:
    """The session memory a new value lives in, or None for a host value."""
    if check_device(device_type, device_id) == "cpu":
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
    return memory_of(session)


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
        check_layout(layout)
        memory = _placement(device_type, device_id, session, name, io_kind)
        if memory is None:
            return _HostValue(arr if arr.flags.c_contiguous else arr.copy(order="C"))
        request = memory.request(name, io_kind, arr.shape, arr.dtype, MEM_DEFAULT)
        value = allocate(memory, request)
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
        dims, dtype = parse_shape(shape), parse_element_type(element_type)
        check_layout(layout)
        flags = parse_mem_flags(mem_flags)
        memory = _placement(device_type, device_id, session, name, io_kind)
        if memory is None:
            return _HostValue(np.zeros(dims, dtype))
        return allocate(memory, memory.request(name, io_kind, dims, dtype, flags))

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
        check_layout(layout)
        memory = memory_of(session)
        dims, dtype = parse_shape(shape), parse_element_type(element_type)
        request = memory.request(name, io_kind, dims, dtype, MEM_DEFAULT)
        if size < request.nbytes:
            raise ValueError(
                f"dmabuf size {size} is smaller than the {request.nbytes} bytes of "
                f"{list(request.shape)} {request.dtype}"
            )
        buffer = memory.backend.import_dmabuf(
            int(fd), request, size=int(size), offset=int(offset), virt_addr=virt_addr
        )
        return DeviceValue(memory, buffer)

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


class DeviceValue(OrtValue):
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
            raise ValueReleasedError("the OrtValue was released; its buffer is gone")

    @contextmanager
    def _using(self) -> Iterator[DeviceBuffer]:
        """The buffer, pinned while the caller touches it, so a release from another thread
        frees it only afterwards."""
        self._memory.check_open()
        buffer = self._buffer
        if not buffer.pin():
            raise ValueReleasedError("the OrtValue was released; its buffer is gone")
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


def allocate(memory: SessionMemory, request: BufferRequest) -> DeviceValue:
    """A new value owning a zero-filled buffer of ``memory`` made for ``request``."""
    return DeviceValue(memory, memory.backend.allocate(request))
