"""Dynamic-shape RKNN models (rknn-toolkit2 ``dynamic_input``): the allowed input shapes.

Why a module of its own: such a model runs only at the shapes it was converted for, and the
runtime must be told the shape before the inputs are set (``rknn_set_input_shapes``). Users see
the dims that vary across the allowed shapes as None (SPEC.md 7 and 15.6: the original's strict
check against the queried shape made these models unusable), a feed of any other shape is refused
on the caller's thread with the list of shapes it may use, and each runner tells its context
about a new shape only when the shape changes. The runtime reports 4-D input shapes NHWC; users
see them in their layout (NCHW unless ``layout`` says otherwise), so both views live here.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from .abi import RknnTensorAttr

__all__ = ["DynamicShapes", "ranged_dims", "Dims"]

Dims = tuple[int, ...]


def ranged_dims(shapes: Sequence[Dims]) -> tuple[Optional[int], ...]:
    """One shape with None where ``shapes`` disagree (the user's view of a dynamic tensor)."""
    first = shapes[0]
    return tuple(d if all(s[k] == d for s in shapes) else None for k, d in enumerate(first))


class DynamicShapes:
    """The allowed shapes of every input, in the runtime's dims (NHWC for 4-D) and the user's.

    ``ranges[i]`` lists input i's allowed runtime dims (one entry for a static input of a dynamic
    model); ``attrs[i]`` is its INPUT_ATTR (name and index go back to rknn_set_input_shapes);
    ``nchw_view`` says whether users see 4-D inputs as NCHW.
    """

    def __init__(
        self,
        ranges: Sequence[Sequence[Dims]],
        attrs: Sequence[Any],
        fmts: Sequence[int],
        nchw_view: bool,
    ) -> None:
        self.ranges = [list(r) for r in ranges]
        self._attrs = list(attrs)
        self._fmts = list(fmts)
        self.nchw_view = nchw_view

    def _user(self, dims: Dims) -> Dims:
        if len(dims) == 4 and self.nchw_view:
            return (dims[0], dims[3], dims[1], dims[2])
        return dims

    def _runtime(self, shape: Dims) -> Dims:
        if len(shape) == 4 and self.nchw_view:
            return (shape[0], shape[2], shape[3], shape[1])
        return shape

    def allowed(self, index: int) -> list[Dims]:
        """Input ``index``'s allowed shapes in the user's layout."""
        return [self._user(dims) for dims in self.ranges[index]]

    def user_shape(self, index: int) -> tuple[Optional[int], ...]:
        return ranged_dims(self.allowed(index))

    def key(self, arrays: Sequence[np.ndarray]) -> tuple[Dims, ...]:
        """The runtime dims of every input of a feed (what rknn_set_input_shapes gets)."""
        return tuple(self._runtime(tuple(int(d) for d in a.shape)) for a in arrays)

    def check(self, arrays: Sequence[np.ndarray], names: Sequence[str]) -> None:
        """ValueError naming the input and listing its allowed shapes unless every array has
        one of its input's allowed shapes."""
        layout = "NCHW" if self.nchw_view else "NHWC"
        for index, (array, name) in enumerate(zip(arrays, names)):
            allowed = self.allowed(index)
            if tuple(array.shape) not in allowed:
                listed = ", ".join(str(list(s)) for s in allowed)
                raise ValueError(
                    f"input {name!r} has shape {list(array.shape)}, which this dynamic-shape "
                    f"RKNN model was not converted for; allowed shapes ({layout} for 4-D "
                    f"inputs): {listed}"
                )

    def shape_attrs(self, key: Sequence[Dims]) -> Any:
        """The ``rknn_tensor_attr`` array rknn_set_input_shapes takes for ``key``: index, name,
        n_dims, dims and fmt of every input (fmt as INPUT_DYNAMIC_RANGE reports it)."""
        result = (RknnTensorAttr * len(key))()
        for index, (attr, dims) in enumerate(zip(result, key)):
            ctypes.memmove(
                ctypes.byref(attr), ctypes.byref(self._attrs[index]), ctypes.sizeof(attr)
            )
            attr.index = index
            attr.n_dims = len(dims)
            for k in range(len(attr.dims)):
                attr.dims[k] = dims[k] if k < len(dims) else 0
            attr.fmt = self._fmts[index]
        return result

    def probe_keys(self) -> list[tuple[Dims, ...]]:
        """One key per allowed shape index (rknn-toolkit2 lists the shapes of every input by
        position; a shorter list repeats its last entry): what describing the outputs runs."""
        count = max(len(r) for r in self.ranges)
        return [tuple(r[min(s, len(r) - 1)] for r in self.ranges) for s in range(count)]
