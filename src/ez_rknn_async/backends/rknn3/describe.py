"""What an RKNPU3 model is, as its first context's queries tell it: versions, specs, shapes.

Why a module of its own: as in ``backends/rknn/describe.py``, describing the model is one job
(every ``rknn3_query`` a session makes before its first run), apart from opening contexts
(``context.py``), zero copy (``zero_copy.py``) and running (``runner.py``). What an attr means is
``attrs.py``; a dynamic-shape model's list of shapes is ``shapes.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ...tensors import ModelMetadata, TensorSpec
from . import attrs
from .abi import Abi, Query
from .context import Context3
from .library import unsupported, version_of
from .shapes import ModelShape, Shapes

__all__ = ["ModelDescription3"]


class ModelDescription3:
    """The model's description, queried on a context (a base of ``Rknn3Backend``, which sets
    ``abi`` and ``library_path``); the runners query their own contexts' attrs through ``attr``
    and ``codecs``."""

    abi: Abi
    library_path: str
    shapes: Shapes
    inputs: Sequence[TensorSpec]
    outputs: Sequence[TensorSpec]
    metadata: ModelMetadata

    def attr(self, context: Context3, command: Query, index: int) -> Any:
        attr = self.abi.struct("rknn3_tensor_attr")()
        attr.index = index
        return context.query(command, attr)

    def codecs(self, context: Context3, is_input: bool) -> list[attrs.TensorCodec]:
        """Each input's (or output's) codec as ``context`` reports its attrs."""
        abi = self.abi
        count = context.query(Query.IN_OUT_NUM, abi.struct("rknn3_input_output_num")())
        total = count.n_input if is_input else count.n_output
        origin, native = (
            (abi.origin_input, abi.native_input)
            if is_input
            else (abi.origin_output, abi.native_output)
        )
        kind = "input" if is_input else "output"
        return [
            attrs.codec(
                self.attr(context, origin, i),
                self.attr(context, native, i),
                f"{kind}_{i}",
                is_input,
            )
            for i in range(total)
        ]

    def _describe(self, context: Context3) -> None:
        versions = context.query(Query.SDK_VERSION, self.abi.struct("rknn3_sdk_version")())
        self.api_version = attrs.text(versions.api_version)
        self.driver_version = attrs.text(versions.drv_version)
        if version_of(self.api_version) != self.abi.version:
            raise unsupported(
                f"{self.library_path} reports version {self.api_version!r} but exports the "
                f"symbols of ABI {self.abi.version}"
            )
        count = self._shape_count(context)
        self.shapes = Shapes([self._shape(context, i, count > 1) for i in range(count)])
        self.inputs = self.shapes.specs(True)
        self.outputs = self.shapes.specs(False)
        custom = context.query(Query.CUSTOM_STRING, self.abi.struct("rknn3_custom_string")())
        text = attrs.text(custom.string)
        self.metadata = ModelMetadata(
            custom_metadata_map={"rknn_custom_string": text} if text else {}
        )

    def _shape_count(self, context: Context3) -> int:
        """How many shapes the model has: 1 unless it is a dynamic-shape model."""
        config = context.query(Query.DYNAMIC_SHAPE_CONFIG, self.abi.struct("rknn3_shape_config")())
        return max(1, int(config.n_shapes))

    def _shape(self, context: Context3, shape_id: int, dynamic: bool) -> ModelShape:
        """The codecs of one shape (made current on ``context`` first, if dynamic)."""
        if dynamic:
            context.call("rknn3_set_shape", shape_id)
        return ModelShape(self.codecs(context, True), self.codecs(context, False))

    def check_feed(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """A dynamic model runs only at its exported shapes: refuse others before queuing."""
        self.shapes.index(arrays, [spec.name for spec in self.inputs])
        return arrays

    @property
    def native_inputs(self) -> Sequence[TensorSpec]:
        return self.shapes.specs(True, native=True)

    @property
    def native_outputs(self) -> Sequence[TensorSpec]:
        return self.shapes.specs(False, native=True)
