"""The small interface every backend implements; the engine knows nothing else about a runtime.

A backend loads one model and describes it (``inputs``, ``outputs``, ``metadata``). For each worker
slot the engine asks it for a ``Runner``: a plain, synchronous object that runs one task at a time.
The engine guarantees a runner is never called by two threads at once, so a runner may own a
non-thread-safe native handle (an RKNN context). Backends start no threads and never wait on
anything but their runtime.

Zero copy (the ``iobinding`` package) adds a small device-memory interface: ``Backend.allocate`` /
``Backend.import_dmabuf`` make ``DeviceBuffer`` objects, ``Backend.check_binding`` vets one for a
model tensor, and ``Runner.run_buffers`` runs one inference on bound buffers. ``DeviceBuffer``
keeps the lifetime rules (pinned while a run uses it, freed exactly once) so a backend only
supplies the native calls. What a backend must get right beyond the method docstrings:

* ``zero_copy_inputs`` / ``zero_copy_outputs``: one ``TensorSpec`` per tensor in the logical
  layout of SPEC.md 12.1, dtype the buffer's element type (outputs: the model's own type),
  ``accepts=(dtype,)``; ``device_type`` is what values report (``"rknpu2"``).
* Buffers register with the backend's ``BufferTracker``, and ``close()`` calls
  ``buffers.release_all()`` before destroying anything a buffer needs. ``_free`` may run on any
  thread (the garbage collector's) while a worker runs: it takes the native context's lock.
* A buffer is made once but runs on whichever slot takes the task, so it must be valid on every
  runner's native context. A runner that caches what it has set compares ``DeviceBuffer``
  objects with ``is``, never addresses or ids (a freed buffer's successor may reuse them).
  ``run_buffers`` does no syncs: ``OrtValue`` syncs around its own CPU reads and writes.

The RKNN implementation: ``rknn/memory.py`` (``RknnBuffer``: one ``rknn_tensor_mem``;
``NativeLayout``: logical tensor <-> NHWC-with-stride / NC1HWC2 bytes) and ``rknn/backend.py``
(mems made on one memory context, bound on each runner's own binding context, every tensor set
each run). Host-memory backends are tested by ``tests/test_iobinding*.py``, RKNN against the
emulator by ``tests/test_rknn_zero_copy*.py``.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional, Protocol

import numpy as np

from ..tensors import ModelMetadata, TensorSpec

__all__ = [
    "usable_cpus",
    "ErrorBoundary",
    "SlotSpec",
    "Runner",
    "Backend",
    "BindingJob",
    "BufferRequest",
    "DeviceBuffer",
    "HostArrayBuffer",
    "BufferTracker",
    "MEM_DEFAULT",
    "MEM_CACHEABLE",
    "MEM_NON_CACHEABLE",
    "MEM_TRY_SRAM",
]

#: ``BufferRequest.mem_flags`` bits, with the values of ``rknn_create_mem2``'s alloc flags.
MEM_DEFAULT = 0  # cacheable
MEM_CACHEABLE = 1
MEM_NON_CACHEABLE = 2
MEM_TRY_SRAM = 4


def usable_cpus() -> int:
    """CPUs this process may run on (affinity-aware, unlike ``os.cpu_count``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class ErrorBoundary:
    """The one place a backend's runtime errors become ours (as httpx's
    ``map_httpcore_exceptions``), chained ``from`` the original. A plain reusable context
    manager rather than a generator, since a runner enters it on every inference: subclasses
    say in ``translate`` what a runtime exception becomes (None: not the runtime's, let it pass).
    ``what`` names the model or the inputs in the messages."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> Literal[False]:
        if exc is None or not isinstance(exc, Exception):
            return False
        ours = self.translate(exc)
        if ours is None:
            return False
        raise ours from exc

    def translate(self, exc: Exception) -> Optional[Exception]:
        raise NotImplementedError


@dataclass(frozen=True)
class SlotSpec:
    """One worker slot as the engine lays it out from ``schedule`` / ``tp_mode``.

    ``core`` is the core the slot is pinned to (None: not pinned, the runtime picks). ``core_mask``
    is the RKNN core mask to bind (None: leave the runtime's default). For the onnxruntime backend a
    core is a CPU worker slot and ``intra_op_threads`` says how many threads one task may use.
    """

    index: int
    core: Optional[int]
    core_mask: Optional[int]
    intra_op_threads: int = 1


@dataclass(frozen=True)
class BufferRequest:
    """What a device buffer is for.

    ``shape`` and ``dtype`` are the logical view: what ``OrtValue.numpy()`` returns and
    ``update_inplace`` takes (the layout of ``Backend.zero_copy_inputs/outputs``). ``io_kind``
    ("input" / "output") and ``index`` (into those lists) name the model tensor the buffer is made
    for, so the backend can lay it out natively (strides, NC1HWC2); both None: a generic dense
    buffer. The caller has already checked shape and dtype against the tensor's spec.
    ``mem_flags`` combines the ``MEM_*`` bits (RKNN cacheability / SRAM; host memory ignores them).
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    io_kind: Optional[str] = None
    index: Optional[int] = None
    mem_flags: int = MEM_DEFAULT

    @property
    def nbytes(self) -> int:
        """Bytes of the dense logical tensor (native layouts may need more)."""
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


class DeviceBuffer(ABC):
    """A block of memory a runtime reads or writes in place (an RKNN ``rknn_tensor_mem``, a
    dma-buf, or host memory standing in for one).

    This class owns the lifetime rules so no backend re-implements them: a run ``pin()``s the
    buffers it uses; ``release()`` frees at once when unpinned and otherwise when the last pin
    goes, so memory is never freed under a running inference; ``_free`` is called exactly once,
    and the buffer leaves its ``BufferTracker`` then. Subclasses supply the native calls.
    """

    def __init__(self, request: BufferRequest, tracker: BufferTracker) -> None:
        self.request = request
        self._lock = threading.Lock()
        self._pins = 0
        self._release_requested = False
        self._tracker = tracker
        tracker.add(self)

    @property
    def released(self) -> bool:
        """True once ``release()`` was called (the memory may still be pinned by a run)."""
        return self._release_requested

    def pin(self) -> bool:
        """Keep the memory alive for a run. False (and nothing pinned) if already released."""
        with self._lock:
            if self._release_requested:
                return False
            self._pins += 1
            return True

    def unpin(self) -> None:
        with self._lock:
            self._pins -= 1
            free = self._release_requested and self._pins == 0
        if free:
            self._finalize()

    def release(self) -> None:
        """Free the memory now, or after the runs that pinned it. Idempotent."""
        with self._lock:
            if self._release_requested:
                return
            self._release_requested = True
            free = self._pins == 0
        if free:
            self._finalize()

    def _finalize(self) -> None:
        try:
            self._free()
        finally:
            self._tracker.discard(self)

    # -- what a backend implements ---------------------------------------------------------

    @abstractmethod
    def _free(self) -> None:
        """Release the native memory (``rknn_destroy_mem``, munmap, close the dup'ed fd).
        Called exactly once, from any thread, never while pinned."""

    @abstractmethod
    def read(self) -> np.ndarray:
        """A new array of ``request.shape``/``dtype`` with the buffer's contents, converted from
        the native layout. Callers sync first. May raise ValueError for a layout the CPU cannot
        read (NC1HWC2 with pass-through)."""

    @abstractmethod
    def write(self, array: np.ndarray) -> None:
        """Store ``array`` (already checked: ``request.shape``/``dtype``) in the native layout.
        Callers sync afterwards."""

    def sync_to_device(self) -> None:  # noqa: B027 - host memory needs no sync
        """Make CPU writes visible to the device (``rknn_mem_sync`` TO_DEVICE)."""

    def sync_from_device(self) -> None:  # noqa: B027 - host memory needs no sync
        """Make device writes visible to the CPU (``rknn_mem_sync`` FROM_DEVICE)."""

    @property
    @abstractmethod
    def data_ptr(self) -> int:
        """Virtual address of the first element (``virt_addr + offset``)."""

    @abstractmethod
    def memory_info(self) -> dict[str, Any]:
        """Backend details for ``OrtValue.memory_info()`` (size, fd, offset, strides...)."""


class HostArrayBuffer(DeviceBuffer):
    """Host memory (a numpy array) standing in for a device buffer, for backends whose runtime
    reads host memory: subclasses add ``_free`` and ``memory_info``."""

    def __init__(self, request: BufferRequest, tracker: BufferTracker, array: np.ndarray) -> None:
        self._array = array
        super().__init__(request, tracker)

    def read(self) -> np.ndarray:
        return self._array.copy()

    def write(self, array: np.ndarray) -> None:
        np.copyto(self._array, array)

    @property
    def data_ptr(self) -> int:
        return int(self._array.ctypes.data)


class BufferTracker:
    """The live buffers of one backend: ``release_all()`` at backend close frees what users still
    hold, and the counters let tests check that every buffer was freed exactly once."""

    def __init__(self) -> None:
        # Reentrant: a value collected by the garbage collector while this thread holds the lock
        # (any allocation may start a collection) frees its buffer, which re-enters ``discard``.
        self._lock = threading.RLock()
        self._live: set[DeviceBuffer] = set()
        self.allocated = 0
        self.freed = 0

    @property
    def live(self) -> int:
        return len(self._live)

    def add(self, buffer: DeviceBuffer) -> None:
        with self._lock:
            self._live.add(buffer)
            self.allocated += 1

    def discard(self, buffer: DeviceBuffer) -> None:
        with self._lock:
            self._live.remove(buffer)  # KeyError: freed twice, a bug worth a traceback
            self.freed += 1

    def release_all(self) -> None:
        """Release every live buffer; one that fails to free does not keep the others alive (the
        first error is raised once all were tried)."""
        with self._lock:
            buffers = list(self._live)
        error: Optional[BaseException] = None
        for buffer in buffers:
            try:
                buffer.release()
            except Exception as exc:  # noqa: BLE001 - re-raised below
                error = error or exc
        if error is not None:
            raise error


class BindingJob(Protocol):
    """What an I/O-binding task hands to ``Runner.run_binding`` (``iobinding`` makes it)."""

    def run_on(self, runner: Runner) -> list[Any]:
        """Pin the bound buffers, call ``runner.run_buffers``, unpin; return the bound outputs."""
        ...


class Runner(ABC):
    """Runs tasks for one worker slot, one at a time."""

    @abstractmethod
    def run(self, inputs: Sequence[np.ndarray], output_indices: Sequence[int]) -> list[np.ndarray]:
        """Run one inference.

        ``inputs`` are validated arrays in model input order (dtype among the spec's ``accepts``,
        shape compatible with the spec). ``output_indices`` are the model outputs wanted, in the
        order wanted (may repeat). Returns fresh arrays the caller owns.
        """

    def run_binding(self, job: BindingJob, output_indices: Sequence[int]) -> list[Any]:
        """The engine's entry point for an I/O-binding task (``method="run_binding"``): the job
        keeps the buffers alive around ``run_buffers`` and returns the bound output values."""
        return job.run_on(self)

    def run_buffers(self, inputs: Sequence[DeviceBuffer], outputs: Sequence[DeviceBuffer]) -> None:
        """Run one inference reading ``inputs`` and writing ``outputs`` in place: one buffer per
        model input / output, in model order, each made by this runner's backend and accepted by
        its ``check_binding``. Buffers are pinned for the call. No syncs needed: callers sync
        around their own CPU reads and writes."""
        raise NotImplementedError(f"{type(self).__name__} does not support I/O binding (zero copy)")

    def run_buffers_sizing(
        self, inputs: Sequence[DeviceBuffer], outputs: Sequence[Optional[DeviceBuffer]]
    ) -> list[Optional[np.ndarray]]:
        """``run_buffers`` where an output may be ``None`` (bound without a shape): the runtime
        sizes it, and the result holds its array at that position (``Backend.adopt`` wraps it).
        Called only when the backend ``sizes_outputs_at_run``."""
        raise NotImplementedError(f"{type(self).__name__} cannot size outputs at run time")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the runner owns. Called once, after its last ``run``."""


class Backend(ABC):
    """One loaded model on one runtime."""

    #: Short name: "onnxruntime", "rknn", "openvino".
    name: str = ""
    #: What ``get_providers()`` returns.
    providers: list[str]
    inputs: Sequence[TensorSpec]
    outputs: Sequence[TensorSpec]
    metadata: ModelMetadata

    @property
    def native_inputs(self) -> Sequence[TensorSpec]:
        """The runtime's native view of the inputs (RKNN zero-copy attrs); default: ``inputs``."""
        return self.inputs

    @property
    def native_outputs(self) -> Sequence[TensorSpec]:
        return self.outputs

    #: What zero-copy values report as ``device_name()``.
    device_type: str = "cpu"
    #: The runtime allocates an output bound without a shape at run time (onnxruntime's
    #: ``bind_output(name)`` on a dynamic output); RKNN needs every size up front.
    sizes_outputs_at_run: bool = False

    @property
    def zero_copy_inputs(self) -> Sequence[TensorSpec]:
        """The inputs as bound values see them (logical shape, buffer dtype); default ``inputs``.
        RKNN: the zero-copy attrs of SPEC.md 12.1 (``layout`` decides NCHW/NHWC)."""
        return self.inputs

    @property
    def zero_copy_outputs(self) -> Sequence[TensorSpec]:
        """The outputs as bound values see them; default ``outputs``. RKNN: the model's own type
        (zero-copy outputs are not dequantised)."""
        return self.outputs

    def allocate(self, request: BufferRequest) -> DeviceBuffer:
        """A new zero-filled buffer for ``request``."""
        raise NotImplementedError(f"the {self.name} backend does not support zero-copy buffers")

    def adopt(self, request: BufferRequest, array: np.ndarray) -> DeviceBuffer:
        """A buffer over ``array``, an output the runtime sized (``sizes_outputs_at_run``)."""
        raise NotImplementedError(f"the {self.name} backend sizes no outputs at run time")

    def import_dmabuf(
        self, fd: int, request: BufferRequest, *, size: int, offset: int, virt_addr: Optional[int]
    ) -> DeviceBuffer:
        """A buffer over ``size`` bytes of the dma-buf ``fd`` from ``offset`` (``size`` already
        checked to hold ``request.nbytes``). Dup the fd: the caller may close it. ``virt_addr``: the
        caller's mapping of the fd, if it has one."""
        raise NotImplementedError(f"the {self.name} backend does not import dma-bufs")

    def check_binding(  # noqa: B027 - buffers of this backend bind as made by default
        self, buffer: DeviceBuffer, io_kind: str, index: int
    ) -> None:
        """Raise ValueError if ``buffer`` (shape and dtype already checked) cannot serve model
        tensor ``index`` (e.g. a generic dense buffer for a strided native input)."""

    def check_feed(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Raise ValueError if a feed that passed the generic checks (``normalize_feed``: None
        dims match anything) still cannot run, e.g. a shape a dynamic-shape RKNN model does not
        allow; called on the caller's thread so the error comes before queuing. Returns
        ``arrays`` so the call wraps ``normalize_feed`` in place."""
        return arrays

    @abstractmethod
    def default_cores(self) -> list[int]:
        """Cores that get a worker each when neither ``schedule`` nor ``tp_mode`` is given."""

    def check_cores(self, cores: Sequence[int]) -> None:  # noqa: B027 - any core is fine by default
        """Raise ValueError if ``cores`` (from ``schedule``) name a core this machine lacks."""

    @abstractmethod
    def open_runner(self, slot: SlotSpec) -> Runner:
        """Create the runner of one worker slot (an RKNN context, an onnxruntime session...)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the backend owns, after every runner was closed."""
