"""What an RKNN model is, as the first context's queries tell it: specs, formats, dynamic shapes.

Why a module of its own: describing the model is one job (every ``rknn_query`` a session makes
before its first run), apart from making contexts (``backend.py``), zero copy (``zero_copy.py``)
and running (``runner.py``). What the queried attrs mean to users is ``attrs.py``; dynamic
shapes (rknn-toolkit2 ``dynamic_input``) are ``dynamic.py``: an input whose INPUT_DYNAMIC_RANGE
lists more than one shape makes the model dynamic, its varying dims show as None, and the
outputs' shapes are learnt by setting each allowed shape on the first context.
"""

from __future__ import annotations

import ctypes
import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from ...options import ProviderOptions
from ...tensors import ModelMetadata, TensorSpec
from . import attrs
from .abi import (
    Query,
    RknnCustomString,
    RknnInputOutputNum,
    RknnInputRange,
    RknnSdkVersion,
    RknnTensorAttr,
)
from .context import Context
from .dynamic import Dims, DynamicShapes, ranged_dims
from .library import Library, check

__all__ = ["ModelDescription", "current_output_dims"]


class ModelDescription:
    """The model's description, queried on the first context (a base of ``RknnBackend``, which
    sets ``_lib``, ``_origin``, ``_options`` and ``library_path``)."""

    _lib: Library
    _origin: Context
    _options: ProviderOptions
    library_path: str
    dynamic: Optional[DynamicShapes]
    inputs: Sequence[TensorSpec]
    outputs: Sequence[TensorSpec]
    _input_attrs: list[Any]
    _output_attrs: list[Any]

    def _query(self, command: Query, info: Any) -> Any:
        with self._origin.lock:
            code = self._lib.rknn_query(
                self._origin.handle, command, ctypes.byref(info), ctypes.sizeof(info)
            )
        check("rknn_query", code)
        return info

    def _attr(self, command: Query, index: int) -> Any:
        attr = RknnTensorAttr()
        attr.index = index
        return self._query(command, attr)

    def _describe(self) -> None:
        counts = self._query(Query.IN_OUT_NUM, RknnInputOutputNum())
        layout = self._options.layout
        input_attrs = [self._attr(Query.INPUT_ATTR, i) for i in range(counts.n_input)]
        self.inputs = [attrs.input_spec(a, i, layout) for i, a in enumerate(input_attrs)]
        self.input_formats = [attrs.input_format(a, layout) for a in input_attrs]
        output_attrs = [self._attr(Query.OUTPUT_ATTR, i) for i in range(counts.n_output)]
        self.outputs = [attrs.output_spec(a, i) for i, a in enumerate(output_attrs)]
        self.output_dims = [attrs.shape(a) for a in output_attrs]
        self._native_inputs = [
            attrs.native_spec(self._attr(Query.NATIVE_INPUT_ATTR, i), f"input_{i}")
            for i in range(counts.n_input)
        ]
        self._native_outputs = [
            attrs.native_spec(self._attr(Query.NATIVE_OUTPUT_ATTR, i), f"output_{i}")
            for i in range(counts.n_output)
        ]
        self._input_attrs, self._output_attrs = input_attrs, output_attrs
        self._describe_dynamic(input_attrs, layout)
        custom = attrs.text(self._query(Query.CUSTOM_STRING, RknnCustomString()).string)
        self.metadata = ModelMetadata(
            custom_metadata_map={"rknn_custom_string": custom} if custom else {}
        )
        versions = self._query(Query.SDK_VERSION, RknnSdkVersion())
        self.api_version = attrs.text(versions.api_version)
        self.driver_version = attrs.text(versions.drv_version)
        if attrs.api_version_outdated(self.api_version):
            warnings.warn(
                f"RKNN API version {self.api_version} is likely outdated; please update "
                f"librknnrt ({self.library_path}). Recommended minimum version is "
                f"{attrs.MIN_API_TEXT}.",
                UserWarning,
                stacklevel=4,
            )

    def _input_range(self, index: int, attr: Any) -> tuple[list[Dims], int]:
        """Input ``index``'s allowed runtime dims and their fmt; the queried shape alone when the
        runtime has no INPUT_DYNAMIC_RANGE answer (older runtimes, static models)."""
        info = RknnInputRange()
        info.index = index
        with self._origin.lock:
            code = self._lib.rknn_query(
                self._origin.handle,
                Query.INPUT_DYNAMIC_RANGE,
                ctypes.byref(info),
                ctypes.sizeof(info),
            )
        n_dims = int(info.n_dims)
        if code != 0 or info.shape_number == 0 or n_dims != attr.n_dims:
            return [attrs.shape(attr)], int(attr.fmt)
        width = len(attr.dims)
        shapes = [
            tuple(int(d) for d in info.dyn_range[s * width : s * width + n_dims])
            for s in range(info.shape_number)
        ]
        return list(dict.fromkeys(shapes)), int(info.fmt)

    def _describe_dynamic(self, input_attrs: Sequence[Any], layout: str) -> None:
        """Finds dynamic inputs; for a dynamic model, shows varying dims as None and learns the
        outputs' shapes by setting each allowed shape on the first context (SPEC.md 7)."""
        found = [self._input_range(i, a) for i, a in enumerate(input_attrs)]
        if all(len(shapes) <= 1 for shapes, _ in found):
            return
        nchw_view = layout in ("nchw", "nchw_software")  # as attrs.input_spec shows 4-D inputs
        shapes = DynamicShapes(
            [r for r, _ in found], input_attrs, [fmt for _, fmt in found], nchw_view
        )
        outputs: list[list[Dims]] = [[] for _ in self.outputs]
        origin = self._origin
        for key in shapes.probe_keys():
            for index, dims in enumerate(current_output_dims(self._lib, origin, shapes, key)):
                outputs[index].append(dims)
        self.dynamic = shapes
        self.inputs = [
            dataclasses.replace(spec, shape=shapes.user_shape(i))
            for i, spec in enumerate(self.inputs)
        ]
        self.outputs = [
            dataclasses.replace(spec, shape=ranged_dims(dims))
            for spec, dims in zip(self.outputs, outputs)
        ]

    def check_feed(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """A dynamic model runs only at its allowed shapes: refuse others before queuing."""
        if self.dynamic is not None:
            self.dynamic.check(arrays, [spec.name for spec in self.inputs])
        return arrays

    @property
    def native_inputs(self) -> Sequence[TensorSpec]:
        return self._native_inputs

    @property
    def native_outputs(self) -> Sequence[TensorSpec]:
        return self._native_outputs


def current_output_dims(
    lib: Library, context: Context, shapes: DynamicShapes, key: Sequence[Dims]
) -> list[Dims]:
    """``rknn_set_input_shapes(key)`` on ``context``, then every output's CURRENT_OUTPUT_ATTR
    dims (the shapes the next run returns)."""
    attrs_in = shapes.shape_attrs(key)
    result = []
    with context.lock:
        code = lib.rknn_set_input_shapes(context.handle, len(key), attrs_in)
        check("rknn_set_input_shapes", code)
        count = RknnInputOutputNum()
        check(
            "rknn_query",
            lib.rknn_query(
                context.handle, Query.IN_OUT_NUM, ctypes.byref(count), ctypes.sizeof(count)
            ),
        )
        for index in range(count.n_output):
            attr = RknnTensorAttr()
            attr.index = index
            code = lib.rknn_query(
                context.handle, Query.CURRENT_OUTPUT_ATTR, ctypes.byref(attr), ctypes.sizeof(attr)
            )
            check("rknn_query", code)
            result.append(attrs.shape(attr))
    return result
