"""The OpenVINO backend (CPU): ONNX or OpenVINO IR models through OpenVINO's runtime.

How it gets OpenVINO's own throughput (issue 11):

* Static compiles. OpenVINO's CPU plugin runs a model compiled for fixed shapes markedly faster
  than a dynamic one, so a model with dynamic dims gets one static compile per input shape it is
  fed repeatedly (``_Compiles``: a small LRU). A shape's first sighting runs on the dynamic compile,
  so a stream of one-off shapes (OCR lines of every width) never pays a compile per frame.
* Streams and requests. Compiles use OpenVINO's THROUGHPUT hint; by default the engine gets one
  worker slot per infer request OpenVINO recommends (``OPTIMAL_NUMBER_OF_INFER_REQUESTS``), and an
  explicit ``schedule``/``threads_per_core`` caps the requests the hint plans for at the slot
  count. ``tp_mode`` asks for the LATENCY hint instead: one request gets the cores it names.
* No copies in: inputs are shared with the request (``share_inputs``: the engine keeps them alive
  for the run); the requested outputs are copied out once, since the request reuses its memory.
* ``precision`` sets ``INFERENCE_PRECISION_HINT``; without it OpenVINO picks (bf16 on CPUs that
  have it, like its own default).
Zero copy runs on host memory (``host.py``).

OpenVINO raises plain ``RuntimeError`` for everything; ``translate_errors`` is the one place that
becomes ours (``ValueError`` for a model or a tensor it cannot take, ``InferenceError`` for a
failed run), with OpenVINO's source-location lines dropped from the message.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import numpy as np
import openvino as ov

from ..errors import InferenceError
from ..options import ProviderOptions
from ..tensors import ModelMetadata, TensorSpec, type_string
from . import ModelSource
from .base import Backend, BufferTracker, ErrorBoundary, Runner, SlotSpec, usable_cpus
from .host import HostMemory, HostRunner

__all__ = ["OpenVinoBackend", "load", "translate_errors", "STATIC_COMPILES"]

#: Static compiles kept per session (input shapes, least recently used evicted).
STATIC_COMPILES = 4
#: A shape gets a static compile once it has been fed this many times.
_COMPILE_AFTER = 2
#: Distinct shapes whose sightings are counted before the count starts afresh.
_SIGHTINGS = 64

Shapes = tuple[tuple[int, ...], ...]

#: What OpenVINO says when a tensor does not fit the model (shape or rank; the last one when the
#: tensor shares the caller's memory).
_INVALID_MARKERS = ("ParameterMismatch", "is incompatible with", "Can't set the input tensor")


class translate_errors(ErrorBoundary):  # noqa: N801 - used like a function: with translate_errors(...)
    """The backend's one error boundary. ``invalid=True`` (reading a model) makes every OpenVINO
    error a ``ValueError``; during a run only a tensor that does not fit is one, anything else is
    an ``InferenceError``."""

    __slots__ = ("invalid",)

    def __init__(self, what: str, *, invalid: bool = False) -> None:
        super().__init__(what)
        self.invalid = invalid

    def translate(self, exc: Exception) -> Optional[Exception]:
        if not isinstance(exc, RuntimeError):
            return None
        message = _message(exc)
        if self.invalid or any(marker in message for marker in _INVALID_MARKERS):
            return ValueError(f"OpenVINO rejected {self.what}: {message}")
        return InferenceError(f"OpenVINO failed on {self.what}: {message}")


class _SignalStack(ctypes.Structure):
    """``stack_t`` of sigaltstack(2)."""

    _fields_ = [
        ("ss_sp", ctypes.c_void_p),
        ("ss_flags", ctypes.c_int),
        ("ss_size", ctypes.c_size_t),
    ]


@contextlib.contextmanager
def _keep_signal_stack() -> Iterator[None]:
    """Put the calling thread's alternate signal stack back after an OpenVINO call.

    ``compile_model`` points the calling thread's sigaltstack at memory of its own and frees
    that memory later (when its objects go, possibly on another thread), which leaves the
    thread's alternate stack dangling: Python runs its SIGINT handler there, so the next Ctrl-C
    crashed the interpreter (SIGSEGV). Where the C library has no sigaltstack, nothing to do.
    """
    try:
        sigaltstack = ctypes.CDLL(None).sigaltstack
    except (AttributeError, OSError):  # not a POSIX libc
        yield
        return
    saved = _SignalStack()
    if sigaltstack(None, ctypes.byref(saved)) != 0:
        yield
        return
    try:
        yield
    finally:
        sigaltstack(ctypes.byref(saved), None)


def _message(exc: BaseException) -> str:
    """OpenVINO's message without its ``Exception from src/...cpp:N:`` location lines."""
    lines = (line.strip() for line in str(exc).splitlines())
    return " ".join(line for line in lines if line and not line.startswith("Exception from "))


def load(
    source: ModelSource,
    options: ProviderOptions,
    *,
    sess_options: Any = None,
    providers: Any = None,
    share_with: Optional[Backend] = None,
) -> OpenVinoBackend:
    """``sess_options``/``providers`` are onnxruntime's and mean nothing here; ``share_with``
    is a documented no-op (OpenVINO shares nothing between compiled models)."""
    return OpenVinoBackend(source, options)


def _spec(port: Any) -> TensorSpec:
    dims = tuple(dim.get_length() if dim.is_static else None for dim in port.get_partial_shape())
    dtype = np.dtype(port.get_element_type().to_dtype())
    return TensorSpec(port.get_any_name(), dims, dtype, type_string(dtype))


class _Compiled:
    """One compiled model and its idle infer requests (a runner borrows one per run, so an
    evicted compile is freed once its last run ends)."""

    __slots__ = ("model", "_idle")

    def __init__(self, model: Any) -> None:
        self.model = model
        self._idle: list[Any] = []

    def take(self) -> Any:
        try:
            return self._idle.pop()  # atomic under the GIL
        except IndexError:
            return self.model.create_infer_request()

    def give(self, request: Any) -> None:
        self._idle.append(request)


class _Compiles:
    """The compiled models of one backend: the model as read (dynamic or not) and, for a
    dynamic model, an LRU of static compiles by input shapes."""

    def __init__(self, core: Any, model: Any, config: dict[str, str]) -> None:
        self._core = core
        self._model = model
        self._config = config
        self._lock = threading.Lock()
        self.base = _Compiled(self._compile(model, "the model"))
        self._dynamic = any(port.get_partial_shape().is_dynamic for port in model.inputs)
        self._static: OrderedDict[Shapes, _Compiled] = OrderedDict()
        self._sightings: dict[Shapes, int] = {}

    def for_shapes(self, shapes: Shapes) -> _Compiled:
        if not self._dynamic:
            return self.base
        with self._lock:  # held while compiling: other shapes wait once, not compile twice
            compiled = self._static.get(shapes)
            if compiled is not None:
                self._static.move_to_end(shapes)
                return compiled
            seen = self._sightings.get(shapes, 0) + 1
            if seen < _COMPILE_AFTER:
                if len(self._sightings) >= _SIGHTINGS:
                    self._sightings.clear()
                self._sightings[shapes] = seen
                return self.base
            self._sightings.pop(shapes, None)
            compiled = self._compile_static(shapes)
            self._static[shapes] = compiled
            if len(self._static) > STATIC_COMPILES:
                self._static.popitem(last=False)
            return compiled

    def precisions(self) -> dict[Optional[Shapes], str]:
        """Each live compile's inference precision: None for the model as read, then the
        static compiles by input shapes, least recently used first."""
        with self._lock:
            compiles = [(None, self.base), *self._static.items()]
        return {shapes: _precision(compiled.model) for shapes, compiled in compiles}

    def _compile_static(self, shapes: Shapes) -> _Compiled:
        """A compile for ``shapes``; the dynamic one where OpenVINO cannot fix the model to
        them (the shapes ran on it already: a static compile is only ever faster)."""
        model = self._model.clone()
        try:
            with translate_errors(f"the input shapes {list(shapes)}", invalid=True):
                model.reshape(
                    {port.get_any_name(): list(s) for port, s in zip(model.inputs, shapes)}
                )
                return _Compiled(self._compile(model, f"the model at {list(shapes)}"))
        except ValueError:
            return self.base

    def _compile(self, model: Any, what: str) -> Any:
        with _keep_signal_stack(), translate_errors(what, invalid=True):
            return self._core.compile_model(model, "CPU", self._config)


def _precision(compiled: Any) -> str:
    return str(compiled.get_property("INFERENCE_PRECISION_HINT").to_string())


class _OpenVinoRunner(HostRunner):
    __slots__ = ("_compiles", "_errors")

    def __init__(self, compiles: _Compiles, input_names: Sequence[str]) -> None:
        self._compiles = compiles
        self._errors = translate_errors(f"the inputs {list(input_names)}")

    def run(self, inputs: Sequence[np.ndarray], output_indices: Sequence[int]) -> list[np.ndarray]:
        compiled = self._compiles.for_shapes(tuple(array.shape for array in inputs))
        request = compiled.take()
        try:
            with self._errors:
                request.infer(list(inputs), share_inputs=True, share_outputs=True)
            # The request's output memory is reused by its next run: copy what was asked for.
            return [np.array(request.get_output_tensor(i).data) for i in output_indices]
        finally:
            compiled.give(request)


class OpenVinoBackend(HostMemory, Backend):
    name = "openvino"
    providers = ["OpenVINOExecutionProvider"]

    def __init__(self, source: ModelSource, options: ProviderOptions) -> None:
        self._core = ov.Core()
        what = f"the model {source.path}" if source.path else "the model"
        with translate_errors(what, invalid=True):
            self._model = self._core.read_model(source.path if source.path else source.data)
        self._options = options
        self._compiles: Optional[_Compiles] = None
        self.buffers = BufferTracker()
        self.inputs = [_spec(port) for port in self._model.inputs]
        self.outputs = [_spec(port) for port in self._model.outputs]
        self.metadata = ModelMetadata(graph_name=self._model.friendly_name)

    def default_cores(self) -> list[int]:
        """One slot per infer request OpenVINO recommends for the THROUGHPUT hint (only asked
        for when neither ``schedule`` nor ``tp_mode`` lays the slots out)."""
        options = self._options
        if options.schedule or options.tp_mode is not None:
            return list(range(usable_cpus()))
        requests = self._compile(None).base.model.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        return list(range(max(1, int(requests))))

    def open_runner(self, slot: SlotSpec) -> Runner:
        return _OpenVinoRunner(self._compile(slot), [spec.name for spec in self.inputs])

    def compiled_precisions(self) -> dict[Optional[Shapes], str]:
        """The compiles alive now and the precision OpenVINO runs each at ("f32", "bf16"...):
        None is the model as read, the other keys are the input shapes of static compiles (least
        recently used first). For tools and tests."""
        return {} if self._compiles is None else self._compiles.precisions()

    def _compile(self, slot: Optional[SlotSpec]) -> _Compiles:
        """The compiles, made on first use with the config the layout asks for."""
        if self._compiles is None:
            self._compiles = _Compiles(self._core, self._model, self._config(slot))
        return self._compiles

    def _config(self, slot: Optional[SlotSpec]) -> dict[str, str]:
        options = self._options
        config: dict[str, str]
        if options.tp_mode is not None:
            threads = (slot.intra_op_threads if slot is not None else 0) or usable_cpus()
            config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": str(threads)}
        else:
            config = {"PERFORMANCE_HINT": "THROUGHPUT"}
            if options.schedule:
                slots = len(set(options.schedule)) * options.threads_per_core
                config["PERFORMANCE_HINT_NUM_REQUESTS"] = str(slots)
        if options.precision is not None:
            config["INFERENCE_PRECISION_HINT"] = options.precision
        return config

    def close(self) -> None:
        self.buffers.release_all()
        self._compiles = None
