"""The session side of zero copy: which tensors values bind to, and whether the session is open.

The lowest layer of the package: values and bindings hold a ``SessionMemory`` (never the session
itself), and it knows neither of them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backends.base import Backend, BufferRequest
from ..errors import SessionClosedError
from ..feeds import check_tensor
from ..tensors import TensorSpec, type_string

__all__ = ["SessionMemory", "memory_of"]

_IO_KINDS = ("input", "output")


class SessionMemory:
    """The zero-copy side of one session: its backend, the tensors values bind to, and whether the
    session is open. Values and bindings hold this rather than the session, so a session that
    goes out of scope is still closed (and its values then raise SessionClosedError)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._specs = {
            "input": list(backend.zero_copy_inputs),
            "output": list(backend.zero_copy_outputs),
        }
        self._index = {
            kind: {spec.name: i for i, spec in enumerate(specs)}
            for kind, specs in self._specs.items()
        }
        self._closed = False

    def check_open(self) -> None:
        if self._closed:
            raise SessionClosedError("the session is closed")

    def close(self) -> None:
        """Every later value or binding call raises; the backend frees the buffers at its close."""
        self._closed = True

    def specs(self, io_kind: str) -> list[TensorSpec]:
        return self._specs[io_kind]

    def tensor(self, io_kind: Any, name: Any) -> int:
        """The index of the model tensor ``name`` among the ``io_kind`` tensors."""
        if io_kind not in _IO_KINDS:
            raise ValueError(f"io_kind must be 'input' or 'output', got {io_kind!r}")
        index = self._index[io_kind].get(name) if isinstance(name, str) else None
        if index is None:
            raise ValueError(
                f"Unknown {io_kind} name: {name!r}; the model's {io_kind}s are "
                f"{list(self._index[io_kind])}"
            )
        return index

    def request(
        self, name: Any, io_kind: Any, shape: tuple[int, ...], dtype: np.dtype, mem_flags: int
    ) -> BufferRequest:
        """A buffer request for model tensor ``name`` (checked against it), or a generic one."""
        if type_string(dtype) == "tensor(unknown)":
            raise TypeError(f"{dtype} is not a tensor element type")
        if name is None and io_kind is None:
            return BufferRequest(shape, dtype, mem_flags=mem_flags)
        if name is None or io_kind is None:
            raise ValueError(
                "name and io_kind go together: both for a buffer laid out for that model "
                "tensor, neither for a generic buffer"
            )
        index = self.tensor(io_kind, name)
        check_tensor(shape, dtype, self._specs[io_kind][index], role=io_kind)
        return BufferRequest(shape, dtype, io_kind, index, mem_flags)


def memory_of(session: Any) -> SessionMemory:
    """The memory of an open ``InferenceSession`` (what a value or binding is made with)."""
    memory = getattr(session, "_zero_copy", None)
    if not isinstance(memory, SessionMemory):
        raise TypeError(f"session must be an InferenceSession, got {type(session).__name__}")
    memory.check_open()
    return memory
