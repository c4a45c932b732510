"""The onnxruntime backend: the default for ONNX models, on any CPU.

Parallelism comes from the engine, not from onnxruntime's thread pool: every slot runs its task
with ``intra_op_num_threads=1`` (tp_mode asks for more), so N slots keep N cores busy with N
frames. onnxruntime's ``InferenceSession.run`` is thread-safe, so slots that need the same thread
count share one onnxruntime session (one copy of the weights); only the engine decides who runs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import numpy as np
import onnxruntime as ort

from ..options import ProviderOptions
from ..tensors import ONNX_TYPE_TO_DTYPE, ModelMetadata, TensorSpec
from . import ModelSource
from .base import Backend, Runner, SlotSpec

__all__ = ["OnnxRuntimeBackend", "load", "usable_cpus"]

_CPU = "CPUExecutionProvider"


def usable_cpus() -> int:
    """CPUs this process may run on (affinity-aware, unlike ``os.cpu_count``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


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


class _OrtRunner(Runner):
    __slots__ = ("_run", "_input_names", "_output_names")

    def __init__(self, session: ort.InferenceSession) -> None:
        self._run = session.run
        self._input_names = [arg.name for arg in session.get_inputs()]
        self._output_names = [arg.name for arg in session.get_outputs()]

    def run(self, inputs: Sequence[np.ndarray], output_indices: Sequence[int]) -> list[np.ndarray]:
        names = self._output_names
        return self._run([names[i] for i in output_indices], dict(zip(self._input_names, inputs)))


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

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
            with _threads(self._sess_options, intra) as options:
                session = ort.InferenceSession(model, options, providers=self._providers)
            self._sessions[intra] = session
        return session

    def default_cores(self) -> list[int]:
        return list(range(usable_cpus()))

    def open_runner(self, slot: SlotSpec) -> Runner:
        return _OrtRunner(self._session(slot.intra_op_threads))

    def close(self) -> None:
        self._sessions = {}


def _usable_providers(providers: Optional[Sequence[Any]]) -> list[Any]:
    """The caller's providers that this onnxruntime build has (RKNN names are dropped), else CPU."""
    available = set(ort.get_available_providers())
    chosen = [
        p for p in providers or () if (p[0] if isinstance(p, (tuple, list)) else p) in available
    ]
    return chosen or [_CPU]
