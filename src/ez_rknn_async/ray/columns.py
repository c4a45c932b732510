"""Ray Data columns <-> one-sample feeds and results of a session (pure numpy, no Ray).

A row holds one sample. A model tensor has a *batch axis* when its first dimension is 1 or
dynamic ([1, 3, H, W], [?, 1000]). An input column's rows hold the sample without it
([3, H, W]) or with it ([1, 3, H, W]): the row's rank tells which, so neither is ambiguous. A
tensor without a batch axis ([2], [3, H, W] with a fixed 3) is held whole by each row. An output
column's rows hold the output without its batch axis of 1 ([1, 1000] -> [1000]): one form
whatever form the inputs came in, so every block of a dataset has the same column type. Rows of
one shape make an (N, *row) array; rows of several shapes (dynamic models) an object array of
arrays, which Ray stores as a variable-shaped tensor column.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..feeds import format_shape
from ..tensors import ONNX_TYPE_TO_DTYPE, Dim, NodeArg

__all__ = ["input_rows", "output_column", "empty_output_column"]


def _dynamic(dim: Dim) -> bool:
    return not isinstance(dim, int) or dim < 0


def _batch_axis(shape: Sequence[Dim]) -> bool:
    return len(shape) >= 1 and (shape[0] == 1 or _dynamic(shape[0]))


def _fits(row: Sequence[int], shape: Sequence[Dim]) -> bool:
    return len(row) == len(shape) and all(_dynamic(w) or g == w for g, w in zip(row, shape))


def _row_form(spec: NodeArg, row: Sequence[int], where: str) -> bool:
    """True when ``row`` is a sample without the batch axis (the axis must be added), False
    when it has the model's full shape; a ValueError naming the column otherwise."""
    shape = spec.shape
    if _fits(row, shape):
        return False
    if _batch_axis(shape) and _fits(row, shape[1:]):
        return True
    if _batch_axis(shape):
        expected = f"one sample, {format_shape(shape[1:])} (or {format_shape(shape)})"
    else:
        expected = format_shape(shape)
    raise ValueError(
        f"{where} (model input {spec.name!r}, {format_shape(shape)} {spec.type}): a row must "
        f"hold {expected}, got a row of {list(row)}"
    )


def input_rows(spec: NodeArg, column: Any) -> list[Any]:
    """The column's rows as feeds of the model input ``spec``, in row order (views of a tensor
    column, no copy). A numeric column is checked once; an object column (rows of several
    shapes) row by row. Dtypes are left to the session, which refuses what it cannot take."""
    where = f"column {spec.name!r}"
    try:
        values = np.asarray(column)
    except ValueError as exc:  # a list of rows of several shapes
        raise ValueError(
            f"{where}: rows of several shapes must come as an object array ({exc})"
        ) from None
    if values.ndim == 0:
        raise ValueError(f"{where}: expected one value per row, got a scalar")
    if len(values) == 0:  # an empty block: nothing to run, and often no row shape to check
        return []
    if values.dtype != object:
        if _row_form(spec, values.shape[1:], where):
            values = values[:, None]
        return [values[i, ...] for i in range(len(values))]
    rows = []
    for i, value in enumerate(values):
        try:
            row = np.shape(value)
        except ValueError as exc:  # a ragged nested list
            raise ValueError(f"row {i} of {where}: not a tensor ({exc})") from None
        if _row_form(spec, row, f"row {i} of {where}"):
            value = value[None] if isinstance(value, np.ndarray) else [value]
        rows.append(value)
    return rows


def output_column(spec: NodeArg, values: Sequence[np.ndarray]) -> np.ndarray:
    """One output's results, one per row, as a column: without the batch axis of 1."""
    drop = _batch_axis(spec.shape)
    rows = [v[0] if drop and v.ndim and v.shape[0] == 1 else v for v in values]
    if not rows:
        return empty_output_column(spec)
    if all(r.shape == rows[0].shape and r.dtype == rows[0].dtype for r in rows):
        return np.stack(rows)
    column = np.empty(len(rows), dtype=object)
    for i, row in enumerate(rows):
        column[i] = row
    return column


def empty_output_column(spec: NodeArg) -> np.ndarray:
    """The column of a batch without rows: the row shape the model declares (a dynamic
    dimension counts 0) and the dtype its type names (float32 if it names none)."""
    shape = spec.shape[1:] if _batch_axis(spec.shape) else spec.shape
    dims = tuple(0 if _dynamic(d) else int(d) for d in shape)  # type: ignore[arg-type]
    return np.empty((0, *dims), dtype=ONNX_TYPE_TO_DTYPE.get(spec.type, np.dtype(np.float32)))
