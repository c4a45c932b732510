"""The OpenVINO backend (CPU): ONNX or OpenVINO IR models through OpenVINO's runtime.

The model is compiled once with one CPU stream per worker slot; each slot owns an infer request
(one stream's worth of threads), so the engine's slots map onto OpenVINO's own throughput
streams. ``tp_mode`` gives one request the whole machine instead. ``precision`` sets
``INFERENCE_PRECISION_HINT``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import openvino as ov

from ..options import ProviderOptions
from ..tensors import ModelMetadata, TensorSpec, type_string
from . import ModelSource
from .base import Backend, Runner, SlotSpec, usable_cpus

__all__ = ["OpenVinoBackend", "load"]


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


class _OpenVinoRunner(Runner):
    __slots__ = ("_request", "_ports")

    def __init__(self, request: Any, ports: Sequence[Any]) -> None:
        self._request = request
        self._ports = ports

    def run(self, inputs: Sequence[np.ndarray], output_indices: Sequence[int]) -> list[np.ndarray]:
        results = self._request.infer(list(inputs))  # copies outputs out of the request
        return [np.array(results[self._ports[i]]) for i in output_indices]


class OpenVinoBackend(Backend):
    name = "openvino"
    providers = ["OpenVINOExecutionProvider"]

    def __init__(self, source: ModelSource, options: ProviderOptions) -> None:
        self._core = ov.Core()
        self._model = self._core.read_model(source.path if source.path else source.data)
        self._options = options
        self._compiled: Optional[Any] = None
        self.inputs = [_spec(port) for port in self._model.inputs]
        self.outputs = [_spec(port) for port in self._model.outputs]
        self.metadata = ModelMetadata(graph_name=self._model.friendly_name)

    def default_cores(self) -> list[int]:
        return list(range(usable_cpus()))

    def open_runner(self, slot: SlotSpec) -> Runner:
        compiled = self._compiled
        if compiled is None:  # first slot: compile for the layout the engine chose
            compiled = self._compiled = self._compile(slot)
        return _OpenVinoRunner(compiled.create_infer_request(), compiled.outputs)

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
        return self._core.compile_model(self._model, "CPU", config)

    def close(self) -> None:
        self._compiled = None
