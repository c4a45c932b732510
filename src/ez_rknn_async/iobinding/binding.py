"""``SessionIOBinding``: the inputs and outputs of zero-copy runs, and the claim of one run.

A binding maps every model tensor to a ``DeviceValue`` of its session's memory (its own, from
``bind_cpu_input``/``bind_output``, or the caller's). ``launch`` claims it for one run as a
``_Flight``, the job ``Runner.run_binding`` runs; the flight hands the binding back when it ends.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

import numpy as np

from ..backends.base import MEM_DEFAULT, BufferRequest, DeviceBuffer, Runner
from ..errors import BindingClosedError, BindingInFlightError, ValueReleasedError
from ..feeds import check_array, check_tensor, format_shape
from .memory import SessionMemory, memory_of
from .values import (
    DeviceValue,
    OrtValue,
    allocate,
    check_device,
    check_layout,
    parse_element_type,
    parse_mem_flags,
    parse_shape,
)

__all__ = ["SessionIOBinding", "IOBinding", "launch"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class _Bound:
    value: Optional[DeviceValue]  # None: sized at run time and not run yet
    owned: bool  # allocated by the binding (bind_cpu_input / bind_output): it releases it
    sized_at_run: bool = False  # bind_output without a shape: the runtime sizes it every run


class _Flight:
    """One run of a binding: the buffers in model order, the values it delivers, and the binding
    to hand back when it ends. A worker calls ``run_on`` (through ``Runner.run_binding``)."""

    __slots__ = ("_binding", "_inputs", "_outputs", "_order", "results")

    def __init__(
        self,
        binding: SessionIOBinding,
        inputs: tuple[DeviceBuffer, ...],
        outputs: tuple[Optional[DeviceBuffer], ...],
        order: list[int],
    ) -> None:
        self._binding = binding
        self._inputs = inputs
        self._outputs = outputs  # None: sized by the runtime during the run
        self._order = order  # model output indices in first-bind order (``get_outputs()``'s)
        self.results: list[Optional[OrtValue]] = [  # sized outputs: filled in by the run
            None if outputs[i] is None else binding._outputs[i].value for i in order
        ]

    def run_on(self, runner: Runner) -> list[Optional[OrtValue]]:
        pinned: list[DeviceBuffer] = []
        n_inputs = len(self._inputs)
        try:
            for k, buffer in enumerate(self._inputs + self._outputs):
                if buffer is None:
                    continue
                if not buffer.pin():
                    where = ("input", k) if k < n_inputs else ("output", k - n_inputs)
                    raise _released(self._binding._memory, *where)
                pinned.append(buffer)
            if None in self._outputs:
                sized = runner.run_buffers_sizing(self._inputs, self._outputs)
                for index, array in enumerate(sized):
                    if array is not None:
                        value = self._binding._adopt(index, array)
                        self.results[self._order.index(index)] = value
            else:
                runner.run_buffers(self._inputs, self._outputs)  # type: ignore[arg-type]
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
        self._memory = memory_of(session)
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
        device type). Without ``shape``, a dynamic output is allocated by the runtime at each run
        (as onnxruntime does; ``get_outputs()`` then has it after the first run, and a run
        releases the previous run's value); RKNN needs ``shape`` for one."""
        if buffer_ptr is not None:
            raise ValueError(
                "bind_output does not take a raw buffer_ptr; bind an OrtValue with "
                "bind_ortvalue_output"
            )
        check_device(device_type, device_id)
        check_layout(layout)
        flags = parse_mem_flags(mem_flags)
        with self._editing("bind_output"):
            index = self._memory.tensor("output", name)
            spec = self._memory.specs("output")[index]
            dtype = spec.dtype if element_type is None else parse_element_type(element_type)
            if shape is not None:
                dims = parse_shape(shape)
            elif all(isinstance(d, int) and d >= 0 for d in spec.shape):
                dims = tuple(spec.shape)  # type: ignore[arg-type]
            elif self._memory.backend.sizes_outputs_at_run:
                any_fit = tuple(d if isinstance(d, int) and d >= 0 else 1 for d in spec.shape)
                check_tensor(
                    any_fit, dtype, spec, role="output"
                )  # the dtype; the shape comes later
                self._set(self._outputs, index, _Bound(None, owned=True, sized_at_run=True))
                return
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
            return [bound.value for bound in self._outputs.values() if bound.value is not None]

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
            values = [bound.value for bound in self._inputs.values() if bound.value is not None]
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
            raise BindingClosedError("the IOBinding is closed")

    @contextmanager
    def _editing(self, api: str) -> Iterator[None]:
        with self._lock:
            self._check_usable()
            if self._flight is not None:
                raise BindingInFlightError(
                    f"{api}: the IOBinding is in flight; wait for its run to finish before "
                    "changing it"
                )
            yield

    def _set(self, slots: dict[int, _Bound], index: int, bound: _Bound) -> None:
        """Bind (keeping the first-bind position) and free what the binding owned there."""
        old = slots.get(index)
        slots[index] = bound
        if old is not None and old.owned and old.value is not None and old.value is not bound.value:
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
        if current is not None and current.owned and current.value is not None:
            buffer = current.value._buffer
            if buffer.request == request and not buffer.released:
                return current.value
        value = allocate(self._memory, request)
        self._set(slots, index, _Bound(value, owned=True))
        return value

    def _bind_value(
        self, slots: dict[int, _Bound], io_kind: str, name: str, value: OrtValue, api: str
    ) -> None:
        with self._editing(api):
            index = self._memory.tensor(io_kind, name)
            bindable = _bindable(self._memory, value, io_kind, index, api)
            self._set(slots, index, _Bound(bindable, owned=False))

    def _launch(self, api: str) -> _Flight:
        """Claim the binding for one run: everything bound and live, not already in flight."""
        with self._lock:
            self._check_usable()
            if self._flight is not None:
                raise BindingInFlightError(
                    f"{api}: the IOBinding is already in flight (its previous run has not "
                    "finished); wait for it, or use one IOBinding per frame in flight"
                )
            buffers: list[Optional[DeviceBuffer]] = []
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
                    bound = slots[i]
                    if bound.value is None or bound.sized_at_run:
                        buffers.append(None)  # the runtime sizes it during the run
                        continue
                    buffer = bound.value._buffer
                    if buffer.released:
                        raise _released(self._memory, io_kind, i, f"{api}: ")
                    buffers.append(buffer)
            n_inputs = len(self._inputs)
            flight = _Flight(
                self,
                tuple(buffers[:n_inputs]),  # type: ignore[arg-type]  # inputs are never None
                tuple(buffers[n_inputs:]),
                list(self._outputs),
            )
            self._flight = flight
            return flight

    def _adopt(self, index: int, array: np.ndarray) -> OrtValue:
        """Output ``index`` as the runtime sized it this run: the binding's new value there (the
        previous run's is released; a binding closed meanwhile releases this one too)."""
        request = BufferRequest(array.shape, array.dtype, "output", index)
        value = DeviceValue(self._memory, self._memory.backend.adopt(request, array))
        with self._lock:
            closed = self._closed
            if not closed:
                self._set(self._outputs, index, _Bound(value, owned=True, sized_at_run=True))
        if closed:
            value.release()
        return value

    def _landed(self, flight: _Flight) -> None:
        with self._lock:
            if self._flight is flight:
                self._flight = None


#: onnxruntime's name for the same class.
IOBinding = SessionIOBinding


def launch(memory: SessionMemory, binding: Any, api: str, start: Callable[[_Flight], _T]) -> _T:
    """Claim ``binding`` for one run and ``start(flight)`` it (hand it to the engine).

    The flight ends when its run ends (before the result is published, so the caller may
    resubmit at once), when ``start`` fails (nothing was queued), or when the returned future
    is done without a run (cancelled, or failed by ``close()``).
    """
    if not isinstance(binding, SessionIOBinding):
        raise TypeError(f"{api} takes an IOBinding from io_binding(), got {type(binding).__name__}")
    if binding._memory is not memory:
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


def _bindable(memory: SessionMemory, value: Any, io_kind: str, index: int, api: str) -> DeviceValue:
    """``value``, if it may serve as model tensor ``index`` of kind ``io_kind``."""
    if not isinstance(value, OrtValue):
        raise TypeError(f"{api} takes an OrtValue, got {type(value).__name__}")
    if not isinstance(value, DeviceValue):
        host_way = "bind_cpu_input" if io_kind == "input" else "bind_output"
        raise TypeError(
            f"{api} needs an OrtValue in session memory (device_type='rknpu2', session=...); "
            f"host arrays go through {host_way}"
        )
    if value._memory is not memory:
        raise ValueError(f"{api}: the OrtValue belongs to a different session")
    value._check()
    buffer = value._buffer
    spec = memory.specs(io_kind)[index]
    made_for = buffer.request
    made_kind, made_index = made_for.io_kind, made_for.index
    generic = made_kind is None or made_index is None
    if not generic and (made_kind, made_index) != (io_kind, index):
        other = memory.specs(made_kind)[made_index].name  # type: ignore[arg-type, index]
        raise ValueError(
            f"{api}: the OrtValue was made for {made_kind} {other!r}; it cannot be "
            f"bound to {io_kind} {spec.name!r}"
        )
    check_tensor(made_for.shape, made_for.dtype, spec, role=io_kind)
    memory.backend.check_binding(buffer, io_kind, index)
    return value


def _released(
    memory: SessionMemory, io_kind: str, index: int, prefix: str = ""
) -> ValueReleasedError:
    name = memory.specs(io_kind)[index].name
    return ValueReleasedError(
        f"{prefix}{io_kind} {name!r} is bound to an OrtValue that was released; bind a live value"
    )


def _release_owned(slots: dict[int, _Bound]) -> None:
    for bound in slots.values():
        if bound.owned and bound.value is not None:
            bound.value.release()
