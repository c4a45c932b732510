"""An RKNN worker slot: one context, running tasks copied in and out, or bound buffers.

Why a module of its own: this is the hot path (the engine calls ``run`` once per task) and the
one place a run's native calls are made. They go as one ``NativeSequence`` (``sequence.py``:
inputs_set -> run -> outputs_get -> outputs_release, or set_io_mem... -> run), which a Ctrl-C
cannot cut in half. Outputs are preallocated float32 numpy arrays the runtime writes into
(``want_float``, ``is_prealloc``). On dynamic-shape models a runner tells its context about a
new input shape only when the shape changes.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from math import prod
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from ...errors import ZeroCopyUnavailableError
from ..base import DeviceBuffer, Runner
from . import attrs
from .abi import RknnInput, RknnOutput
from .context import Context
from .describe import current_output_dims
from .dynamic import Dims
from .memory import RknnBuffer
from .sequence import NativeSequence

if TYPE_CHECKING:
    from .backend import RknnBackend

__all__ = ["RknnRunner"]

#: Distinct ``output_indices`` requests whose fetch plan a runner keeps.
_PLAN_CACHE = 32
#: ``rknn_input.type`` by numpy dtype, as plain ints (what a ctypes field store takes fastest).
_INPUT_TYPES = {dtype: int(kind) for dtype, kind in attrs.INPUT_TYPES.items()}
addressof, from_buffer = ctypes.addressof, ctypes.c_char.from_buffer
ascontiguousarray, empty, float32 = np.ascontiguousarray, np.empty, np.float32


@dataclass(frozen=True)
class _OutputPlan:
    """How a runner fetches one ``output_indices`` request: the distinct outputs ``wanted``,
    each one's ``rknn_output`` entry and shape, where each request finds its result when some
    repeat (None: fetched in the requested order), and the native calls of the run."""

    outputs: tuple[tuple[Any, tuple[int, ...]], ...]
    positions: Optional[list[int]]
    sequence: NativeSequence
    wanted: tuple[int, ...]


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
        for index, (item, (fmt, _)) in enumerate(zip(self._inputs, self._input_formats)):
            item.index = index
            item.fmt = fmt
        self._outputs = (RknnOutput * max(1, len(backend.outputs)))()
        for item in self._outputs:
            item.want_float = 1  # dequantised float32, as the original
            item.is_prealloc = 1  # straight into the numpy array we return
        self._transposing = any(transpose for _, transpose in self._input_formats)
        #: The copying run's native calls by number of outputs asked (see sequence.py).
        self._sequences: dict[int, NativeSequence] = {}
        #: output_indices -> how to fetch them, built once per request; ``_bound`` is the plan
        #: whose indices and sizes ``_outputs`` holds now.
        self._plans: dict[tuple[int, ...], _OutputPlan] = {}
        self._bound: Optional[_OutputPlan] = None

    def run(self, inputs: Sequence[np.ndarray], output_indices: Sequence[int]) -> list[np.ndarray]:
        if self._dynamic is not None:
            self._set_shapes(inputs)
        if self._transposing:
            inputs = [
                array.transpose(0, 2, 3, 1) if transpose else array
                for array, (_, transpose) in zip(inputs, self._input_formats)
            ]
        # Only the fields that change run to run are stored (a ctypes store costs as much as
        # the rest of an input's preparation): data address, size and type of each input, the
        # address of each output; the output indices and sizes are stored when the plan changes.
        feeds = [ascontiguousarray(array) for array in inputs]  # alive until inputs_set copied
        for item, array in zip(self._inputs, feeds):
            try:
                item.buf = addressof(from_buffer(array))  # type: ignore[arg-type]
            except (TypeError, ValueError):  # read-only or empty
                item.buf = _address(array)
            item.size = array.nbytes
            item.type = _INPUT_TYPES[array.dtype]
        key = output_indices if type(output_indices) is tuple else tuple(output_indices)
        plan = self._plans.get(key)
        if plan is None or plan is not self._bound:
            plan = self._bind(key)
        results = []
        for item, shape in plan.outputs:
            result = empty(shape, float32)
            try:
                item.buf = addressof(from_buffer(result))  # type: ignore[arg-type]
            except ValueError:  # an empty output
                item.buf = _address(result)
            results.append(result)
        with self._context.lock:
            plan.sequence.run()
        if plan.positions is None:
            return results
        # A name asked for twice: each later request gets its own copy.
        ordered: list[np.ndarray] = []
        for position in plan.positions:
            result = results[position]
            ordered.append(result.copy() if any(r is result for r in ordered) else result)
        return ordered

    def _bind(self, key: tuple[int, ...]) -> _OutputPlan:
        """The plan for a request (made once, cached: requests repeat run after run), its output
        indices and sizes stored in the runner's ``rknn_output`` array."""
        plan = self._plans.get(key)
        if plan is None:
            wanted = tuple(dict.fromkeys(key))
            positions = None if len(wanted) == len(key) else [wanted.index(i) for i in key]
            shapes = [tuple(self._output_shapes[index]) for index in wanted]
            sequence = self._sequences.get(len(wanted)) or self._copying_sequence(len(wanted))
            plan = _OutputPlan(tuple(zip(self._outputs, shapes)), positions, sequence, wanted)
            if len(self._plans) < _PLAN_CACHE:
                self._plans[key] = plan
        self._bound = None  # until every field is stored (an interrupt may land in between)
        for item, index, (_, shape) in zip(self._outputs, plan.wanted, plan.outputs):
            item.index = index
            item.size = 4 * prod(shape)  # float32
        self._bound = plan
        return plan

    def _copying_sequence(self, n_outputs: int) -> NativeSequence:
        """inputs_set -> run -> outputs_get -> outputs_release, which a Ctrl-C cannot cut."""
        lib, handle, outputs = self._lib, self._context.handle, self._outputs
        sequence = self._sequences[n_outputs] = NativeSequence(
            [
                ("rknn_inputs_set", lib.rknn_inputs_set, (handle, len(self._inputs), self._inputs)),
                ("rknn_run", lib.rknn_run, (handle, None)),
                ("rknn_outputs_get", lib.rknn_outputs_get, (handle, n_outputs, outputs, None)),
                ("rknn_outputs_release", lib.rknn_outputs_release, (handle, n_outputs, outputs)),
            ]
        )
        return sequence

    def _set_shapes(self, inputs: Sequence[np.ndarray]) -> None:
        """Tell the context the feed's shapes when they differ from the last ones set (the
        runtime re-plans on every rknn_set_input_shapes), and size the outputs for them."""
        assert self._dynamic is not None
        key = self._dynamic.key(inputs)
        if key == self._current:
            return
        self._dynamic.check(inputs, [spec.name for spec in self._backend.inputs])
        self._current = None  # unknown until the call and the queries succeed
        self._plans.clear()  # their output sizes were those of the last shapes
        self._bound = None
        self._output_shapes = current_output_dims(self._lib, self._context, self._dynamic, key)
        self._current = key

    def run_buffers(self, inputs: Sequence[DeviceBuffer], outputs: Sequence[DeviceBuffer]) -> None:
        """rknn_set_io_mem of every buffer, then rknn_run, on this runner's binding context
        (every tensor is set each run: a context never keeps a pointer to a freed mem)."""
        if self._binding is None:
            self._binding = self._backend.binding_context(self._context, self._mask)
            self._io_attrs = self._backend.io_attrs()
        context, lib = self._binding, self._lib
        steps: list[tuple[str, Any, tuple[Any, ...]]] = []
        for buffer, attr in zip((*inputs, *outputs), self._io_attrs):
            assert isinstance(buffer, RknnBuffer), "check_binding admits RknnBuffers only"
            if buffer.family is not context.family:
                raise ZeroCopyUnavailableError(
                    "this worker's context comes from its own rknn_init, and the buffer "
                    "lives in the first context's memory; run zero copy on one worker "
                    "(schedule=[0]) with this runtime"
                )
            steps.append(
                (
                    "rknn_set_io_mem",
                    lib.rknn_set_io_mem,
                    (context.handle, buffer.mem, ctypes.byref(attr)),
                )
            )
        steps.append(("rknn_run", lib.rknn_run, (context.handle, None)))
        sequence = NativeSequence(steps)  # a Ctrl-C cannot cut it (sequence.py)
        with context.lock:
            sequence.run()

    def close(self) -> None:
        if self._binding is not None and self._binding is not self._context:
            self._binding.close()
        if self._owns_context:
            self._context.close()


def _address(array: np.ndarray) -> int:
    """The address of a C-contiguous array's data: through the buffer protocol (a third of the
    cost of ``array.ctypes.data``), or ``ctypes.data`` for read-only or empty arrays."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(array))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return int(array.ctypes.data)
