"""A backend made of a plain function, for tests and for backends under development.

``FakeBackend`` is a complete ``Backend`` (specs, metadata, runners, host-memory zero copy, one
error boundary) whose inference is ``fn(inputs) -> outputs``, the way httpx's ``MockTransport``
wraps a handler. ``session()`` puts an ``InferenceSession`` on it, so every calling mode, the
engine and the I/O binding run for real around the function::

    backend = FakeBackend(lambda xs: [xs[0] + xs[1]],
                          inputs=[TensorSpec("a", (None, 4), np.float32),
                                  TensorSpec("b", (None, 4), np.float32)],
                          outputs=[TensorSpec("sum", (None, 4), np.float32)])
    with backend.session(make_provider_options(schedule=[0, 1])) as sess:
        sess.run(None, {"a": a, "b": b})

The conformance suite (``tests/test_conformance.py``) runs it next to the real backends.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Callable, Optional

import numpy as np

from .backends.base import Backend, BufferTracker, ErrorBoundary, Runner, SlotSpec
from .backends.host import HostMemory, HostRunner
from .errors import InferenceError
from .tensors import ModelMetadata, TensorSpec

__all__ = ["FakeBackend", "InferenceFunction"]

#: All model inputs in model order -> all model outputs in model order.
InferenceFunction = Callable[[list[np.ndarray]], Sequence[Any]]


class _FakeErrors(ErrorBoundary):
    """The fake runtime's error boundary: whatever ``fn`` raises is a failed inference."""

    __slots__ = ()

    def translate(self, exc: Exception) -> Optional[Exception]:
        return InferenceError(f"fake runtime failed on {self.what}: {type(exc).__name__}: {exc}")


_ERRORS = _FakeErrors("the inputs")


class _FunctionRunner(HostRunner):
    """One slot: calls the backend's function; counts its calls."""

    def __init__(self, backend: FakeBackend, slot: SlotSpec) -> None:
        self._backend = backend
        self.slot = slot
        self.closed = False

    def run(self, inputs: Sequence[np.ndarray], output_indices: Sequence[int]) -> list[np.ndarray]:
        backend = self._backend
        with _ERRORS:
            results = list(backend.fn(list(inputs)))
        if len(results) != len(backend.outputs):
            raise InferenceError(
                f"fake runtime: fn returned {len(results)} outputs, the model has "
                f"{len(backend.outputs)}"
            )
        with backend._lock:
            backend.calls += 1
        outputs = backend.outputs
        return [np.array(results[i], dtype=outputs[i].dtype) for i in output_indices]

    def close(self) -> None:
        self.closed = True


class FakeBackend(HostMemory, Backend):
    """A backend whose inference is ``fn``. ``cores`` are the slots the default layout uses;
    ``calls`` counts inferences; ``runners`` are the runners opened (each ``.closed`` at the
    end); ``closed`` counts ``close()`` calls."""

    name = "fake"

    def __init__(
        self,
        fn: InferenceFunction,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        *,
        metadata: Optional[ModelMetadata] = None,
        cores: Sequence[int] = (0, 1),
        providers: Sequence[str] = ("FakeExecutionProvider",),
    ) -> None:
        self.fn = fn
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.metadata = metadata if metadata is not None else ModelMetadata(graph_name="fake")
        self.providers = list(providers)
        self.buffers = BufferTracker()
        self.runners: list[_FunctionRunner] = []
        self.calls = 0
        self.closed = 0
        self._cores = list(cores)
        self._lock = threading.Lock()

    def session(self, provider_options: Any = None) -> Any:
        """An ``InferenceSession`` on this backend (which it closes at its own close)."""
        from .session import InferenceSession

        return InferenceSession._on_backend(self, provider_options)

    def default_cores(self) -> list[int]:
        return list(self._cores)

    def open_runner(self, slot: SlotSpec) -> Runner:
        runner = _FunctionRunner(self, slot)
        self.runners.append(runner)
        return runner

    def close(self) -> None:
        self.closed += 1
        self.buffers.release_all()
