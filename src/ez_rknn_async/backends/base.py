"""The small interface every backend implements; the engine knows nothing else about a runtime.

A backend loads one model and describes it (``inputs``, ``outputs``, ``metadata``). For each worker
slot the engine asks it for a ``Runner``: a plain, synchronous object that runs one task at a time.
The engine guarantees a runner is never called by two threads at once, so a runner may own a
non-thread-safe native handle (an RKNN context). Backends start no threads and never wait on
anything but their runtime.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..tensors import ModelMetadata, TensorSpec

__all__ = ["SlotSpec", "Runner", "Backend"]


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


class Runner(ABC):
    """Runs tasks for one worker slot, one at a time."""

    @abstractmethod
    def run(self, inputs: Sequence[np.ndarray], output_indices: Sequence[int]) -> list[np.ndarray]:
        """Run one inference.

        ``inputs`` are validated arrays in model input order (dtype among the spec's ``accepts``,
        shape compatible with the spec). ``output_indices`` are the model outputs wanted, in the
        order wanted (may repeat). Returns fresh arrays the caller owns.
        """

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
