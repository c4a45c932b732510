"""The OpenVINO backend (CPU): ONNX or OpenVINO IR models through OpenVINO's runtime.

The model is compiled once with one CPU stream per worker slot; each slot owns an infer request
(one stream's worth of threads), so the engine's slots map onto OpenVINO's own throughput
streams. ``tp_mode`` gives one request the whole machine instead. ``precision`` sets
``INFERENCE_PRECISION_HINT``. Zero copy runs on host memory (``host.py``).

OpenVINO raises plain ``RuntimeError`` for everything; ``translate_errors`` is the one place that
becomes ours (``ValueError`` for a model or a tensor it cannot take, ``InferenceError`` for a
failed run), with OpenVINO's source-location lines dropped from the message.
"""

from __future__ import annotations

import contextlib
import ctypes
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

__all__ = ["OpenVinoBackend", "load", "translate_errors"]

#: What OpenVINO says when a tensor does not fit the model (shape or rank).
_INVALID_MARKERS = ("ParameterMismatch", "is incompatible with")


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


class _OpenVinoRunner(HostRunner):
    __slots__ = ("_request", "_ports", "_errors")

    def __init__(self, request: Any, ports: Sequence[Any], input_names: Sequence[str]) -> None:
        self._request = request
        self._ports = ports
        self._errors = translate_errors(f"the inputs {list(input_names)}")

    def run(self, inputs: Sequence[np.ndarray], output_indices: Sequence[int]) -> list[np.ndarray]:
        with self._errors:
            results = self._request.infer(list(inputs))  # copies outputs out of the request
        return [np.array(results[self._ports[i]]) for i in output_indices]


class OpenVinoBackend(HostMemory, Backend):
    name = "openvino"
    providers = ["OpenVINOExecutionProvider"]

    def __init__(self, source: ModelSource, options: ProviderOptions) -> None:
        self._core = ov.Core()
        what = f"the model {source.path}" if source.path else "the model"
        with translate_errors(what, invalid=True):
            self._model = self._core.read_model(source.path if source.path else source.data)
        self._options = options
        self._compiled: Optional[Any] = None
        self.buffers = BufferTracker()
        self.inputs = [_spec(port) for port in self._model.inputs]
        self.outputs = [_spec(port) for port in self._model.outputs]
        self.metadata = ModelMetadata(graph_name=self._model.friendly_name)

    def default_cores(self) -> list[int]:
        return list(range(usable_cpus()))

    def open_runner(self, slot: SlotSpec) -> Runner:
        compiled = self._compiled
        if compiled is None:  # first slot: compile for the layout the engine chose
            compiled = self._compiled = self._compile(slot)
        names = [spec.name for spec in self.inputs]
        return _OpenVinoRunner(compiled.create_infer_request(), compiled.outputs, names)

    def _compile(self, slot: SlotSpec) -> Any:
        options = self._options
        if options.tp_mode is not None:
            streams, threads = 1, slot.intra_op_threads or usable_cpus()
        else:
            cores = set(options.schedule) if options.schedule else self.default_cores()
            streams = len(cores) * options.threads_per_core
            threads = max(1, usable_cpus() // streams)
        config = {"NUM_STREAMS": str(streams), "INFERENCE_NUM_THREADS": str(threads * streams)}
        if options.precision is not None:
            config["INFERENCE_PRECISION_HINT"] = options.precision
        with _keep_signal_stack(), translate_errors("the model", invalid=True):
            return self._core.compile_model(self._model, "CPU", config)

    def close(self) -> None:
        self.buffers.release_all()
        self._compiled = None
