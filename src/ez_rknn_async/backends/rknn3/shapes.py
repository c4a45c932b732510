"""Dynamic-shape RKNPU3 models: every shape a model was exported for, and which one a feed is.

A dynamic model lists its shapes (``DYNAMIC_SHAPE_CONFIG``); ``rknn3_set_shape(id)`` makes one
current on a context, and the attr queries then describe that shape (this binding's reading of
RKNN3_ABI.md 4.1, as the emulator implements it). The backend learns each shape's codecs once;
a feed selects the shape whose input shapes it has, exactly, and anything else is refused before
queuing. Dims that differ between shapes show as None. Mems are sized for the largest shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ...tensors import Dim, TensorSpec
from .attrs import TensorCodec

__all__ = ["ModelShape", "Shapes"]


@dataclass(frozen=True)
class ModelShape:
    """One shape of the model: the codecs of its inputs and outputs."""

    inputs: list[TensorCodec]
    outputs: list[TensorCodec]

    @property
    def key(self) -> tuple[tuple[Dim, ...], ...]:
        return tuple(codec.spec.shape for codec in self.inputs)


def _merged(specs: Sequence[TensorSpec]) -> TensorSpec:
    dims = tuple(d[0] if len(set(d)) == 1 else None for d in zip(*(s.shape for s in specs)))
    return dataclasses.replace(specs[0], shape=dims)


class Shapes:
    """Every shape of one model (one for a static model)."""

    def __init__(self, shapes: Sequence[ModelShape]) -> None:
        self.all = list(shapes)
        self.dynamic = len(self.all) > 1
        self._index = {shape.key: i for i, shape in enumerate(self.all)}

    def specs(self, is_input: bool, native: bool = False) -> list[TensorSpec]:
        """The user's (or the native) specs, None where the shapes differ."""
        per_shape = [s.inputs if is_input else s.outputs for s in self.all]
        return [
            _merged([c.native if native else c.spec for c in codecs]) for codecs in zip(*per_shape)
        ]

    def max_sizes(self, is_input: bool) -> list[int]:
        """Bytes each input's (output's) mem needs for every shape."""
        per_shape = [s.inputs if is_input else s.outputs for s in self.all]
        return [max(c.aligned_size for c in codecs) for codecs in zip(*per_shape)]

    def index(self, arrays: Sequence[np.ndarray], names: Sequence[str]) -> int:
        """The shape ``arrays`` has; ValueError naming the shapes the model allows."""
        if not self.dynamic:
            return 0
        key = tuple(tuple(array.shape) for array in arrays)
        found = self._index.get(key)
        if found is None:
            given = ", ".join(f"{n} {list(s)}" for n, s in zip(names, key))
            allowed = "; ".join(
                ", ".join(f"{n} {list(d)}" for n, d in zip(names, shape.key)) for shape in self.all
            )
            raise ValueError(
                f"input shapes {given} are not among this dynamic-shape RKNPU3 model's shapes: "
                f"{allowed}"
            )
        return found
