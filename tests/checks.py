"""Assertions shared by the test modules."""

from __future__ import annotations

import numpy as np

__all__ = ["assert_same"]


def assert_same(got, want) -> None:
    """Two lists of arrays are equal bit for bit, with the same dtypes and shapes."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        np.testing.assert_array_equal(g, w)
