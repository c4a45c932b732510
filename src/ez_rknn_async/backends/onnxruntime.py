"""The onnxruntime backend: the default for ONNX models, on any CPU.

Parallelism comes from the engine, not from onnxruntime's thread pool: every slot runs its task
with ``intra_op_num_threads=1`` (tp_mode asks for more), so N slots keep N cores busy with N
frames. onnxruntime's ``InferenceSession.run`` is thread-safe, so slots that need the same thread
count share one onnxruntime session (one copy of the weights); only the engine decides who runs.

Zero copy runs on host memory standing in for device memory (``host.py``): a buffer is a numpy
array wrapped, without a copy, in an onnxruntime ``OrtValue``, and a binding run is onnxruntime's
own ``run_with_iobinding`` (an output bound without a shape is allocated by onnxruntime).

onnxruntime's own exceptions never reach users: ``translate_errors`` is the one place they become
ours (``ValueError`` for an invalid argument or model, ``InferenceError`` for a failed run).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from ..errors import InferenceError
from ..options import ProviderOptions
from ..tensors import ONNX_TYPE_TO_DTYPE, ModelMetadata, TensorSpec
from . import ModelSource
from .base import (
    Backend,
    BufferRequest,
    BufferTracker,
    DeviceBuffer,
    ErrorBoundary,
    Runner,
    SlotSpec,
    usable_cpus,
)
from .host import HostBuffer, HostMemory

__all__ = ["OnnxRuntimeBackend", "OrtBuffer", "load", "translate_errors"]

_CPU = "CPUExecutionProvider"
#: Every exception type onnxruntime's native layer raises (Fail, InvalidArgument, EPFail...).
_ORT_ERRORS = tuple(
    value
    for value in vars(_ort_state).values()
    if isinstance(value, type) and issubclass(value, Exception)
)
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
#: The ones that mean "what you gave me is wrong" rather than "the run failed".
_ORT_INVALID = (
    _ort_state.InvalidArgument,
    _ort_state.InvalidProtobuf,
    _ort_state.InvalidGraph,
    _ort_state.NoSuchFile,
)


class translate_errors(ErrorBoundary):  # noqa: N801 - used like a function: with translate_errors(...)
    """The backend's one error boundary: onnxruntime's exceptions become ``ValueError`` (an
    invalid argument or model) or ``InferenceError`` (the run failed); anything else passes."""

    __slots__ = ()

    def translate(self, exc: Exception) -> Optional[Exception]:
        if isinstance(exc, _ORT_INVALID):
            return ValueError(f"onnxruntime rejected {self.what}: {_message(exc)}")
        if isinstance(exc, _ORT_ERRORS):
            return InferenceError(f"onnxruntime failed on {self.what}: {_message(exc)}")
        return None


def _message(exc: BaseException) -> str:
    """onnxruntime's message without its ``[ONNXRuntimeError] : 2 : INVALID_ARGUMENT :`` prefix."""
    return _ORT_PREFIX.sub("", str(exc).strip())


def load(
    source: ModelSource,
    options: ProviderOptions,
    *,
    sess_options: Any = None,
    share_with: Optional[Backend] = None,
    providers: Optional[Sequence[Any]] = None,
) -> OnnxRuntimeBackend:
    shared = share_with if isinstance(share_with, OnnxRuntimeBackend) else None
    return OnnxRuntimeBackend(source, sess_options, providers, shared)


def _spec(arg: Any) -> TensorSpec:
    dtype = ONNX_TYPE_TO_DTYPE.get(arg.type)
    if dtype is None:  # sequences, maps, strings: passed through untouched
        dtype = np.dtype(object)
    return TensorSpec(arg.name, tuple(arg.shape), dtype, arg.type)


@contextlib.contextmanager
def _threads(sess_options: Any, intra: int) -> Iterator[Any]:
    """The user's SessionOptions with our thread counts, restored afterwards (ORT copies them)."""
    saved = (sess_options.intra_op_num_threads, sess_options.inter_op_num_threads)
    sess_options.intra_op_num_threads = intra
    sess_options.inter_op_num_threads = 1
    try:
        yield sess_options
    finally:
        sess_options.intra_op_num_threads, sess_options.inter_op_num_threads = saved


class OrtBuffer(HostBuffer):
    """A host buffer with onnxruntime's zero-copy view of it, which binding runs bind directly."""

    def __init__(
        self, request: BufferRequest, tracker: BufferTracker, array: np.ndarray, *args: Any
    ) -> None:
        self.ort_value: Optional[ort.OrtValue] = ort.OrtValue.ortvalue_from_numpy(array)
        super().__init__(request, tracker, array, *args)

    def _free(self) -> None:
        self.ort_value = None
        super()._free()


class _OrtRunner(Runner):
    __slots__ = ("_session", "_run", "_input_names", "_output_names", "_errors")

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        self._run = session.run
        self._input_names = [arg.name for arg in session.get_inputs()]
        self._output_names = [arg.name for arg in session.get_outputs()]
        self._errors = translate_errors(f"the inputs {self._input_names}")

    def run(self, inputs: Sequence[np.ndarray], output_indices: Sequence[int]) -> list[np.ndarray]:
        names = self._output_names
        with self._errors:
            return self._run(
                [names[i] for i in output_indices], dict(zip(self._input_names, inputs))
            )

    def run_buffers(self, inputs: Sequence[DeviceBuffer], outputs: Sequence[DeviceBuffer]) -> None:
        self.run_buffers_sizing(inputs, outputs)

    def run_buffers_sizing(
        self, inputs: Sequence[DeviceBuffer], outputs: Sequence[Optional[DeviceBuffer]]
    ) -> list[Optional[np.ndarray]]:
        binding = self._session.io_binding()
        for name, buffer in zip(self._input_names, inputs):
            binding.bind_ortvalue_input(name, buffer.ort_value)  # type: ignore[attr-defined]
        for name, out in zip(self._output_names, outputs):
            if out is None:
                binding.bind_output(name, "cpu")  # onnxruntime sizes and allocates it
            else:
                binding.bind_ortvalue_output(name, out.ort_value)  # type: ignore[attr-defined]
        with self._errors:
            self._session.run_with_iobinding(binding)
        values = binding.get_outputs()
        return [values[k].numpy() if out is None else None for k, out in enumerate(outputs)]


class OnnxRuntimeBackend(HostMemory, Backend):
    name = "onnxruntime"
    buffer_type = OrtBuffer

    def __init__(
        self,
        source: ModelSource,
        sess_options: Any,
        providers: Optional[Sequence[Any]],
        shared: Optional[OnnxRuntimeBackend],
    ) -> None:
        self._source = source
        self._sess_options = sess_options if sess_options is not None else ort.SessionOptions()
        self._providers = _usable_providers(providers)
        self.buffers = BufferTracker()
        # Sessions by intra-op thread count; weight sharing with an identical model reuses them.
        self._sessions: dict[int, ort.InferenceSession] = (
            shared._sessions if shared is not None and shared._source.data == source.data else {}
        )
        first = self._session(1)
        self.providers = first.get_providers()
        self.inputs = [_spec(arg) for arg in first.get_inputs()]
        self.outputs = [_spec(arg) for arg in first.get_outputs()]
        meta = first.get_modelmeta()
        self.metadata = ModelMetadata(
            producer_name=meta.producer_name,
            graph_name=meta.graph_name,
            domain=meta.domain,
            description=meta.description,
            graph_description=meta.graph_description,
            version=meta.version,
            custom_metadata_map=dict(meta.custom_metadata_map),
        )

    def _session(self, intra: int) -> ort.InferenceSession:
        session = self._sessions.get(intra)
        if session is None:
            model = self._source.path if self._source.path is not None else self._source.data
            what = "the model" if self._source.path is None else f"the model {self._source.path}"
            with _threads(self._sess_options, intra) as options, translate_errors(what):
                session = ort.InferenceSession(model, options, providers=self._providers)
            self._sessions[intra] = session
        return session

    def default_cores(self) -> list[int]:
        return list(range(usable_cpus()))

    def open_runner(self, slot: SlotSpec) -> Runner:
        return _OrtRunner(self._session(slot.intra_op_threads))

    def close(self) -> None:
        self.buffers.release_all()
        self._sessions = {}


def _usable_providers(providers: Optional[Sequence[Any]]) -> list[Any]:
    """The caller's providers that this onnxruntime build has, else CPU. Names it lacks are
    dropped without onnxruntime's warning: a drop-in list such as ``["RKNPU2ExecutionProvider",
    "CPUExecutionProvider"]`` is expected to run anywhere."""
    available = set(ort.get_available_providers())
    chosen = [
        p for p in providers or () if (p[0] if isinstance(p, (tuple, list)) else p) in available
    ]
    return chosen or [_CPU]
