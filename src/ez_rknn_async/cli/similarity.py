"""How close one output is to its reference: the numbers ``ez-rknn compare`` reports. Pure NumPy.

Definitions (the ``compare --help`` text repeats them):

* cosine similarity of the flattened outputs, in float64, over the elements finite on both sides;
  1.0 when both are all zeros, 0.0 when only one is, None when no element is finite on both sides.
  It ignores scale: a uniformly scaled output still has cosine 1.0 (the errors show the scale).
* max abs error: max |x - ref|; mean abs error likewise; max rel error: max |x - ref| / |ref| over
  the elements whose |ref| exceeds ``atol`` (smaller ones are judged by the absolute error alone).
* mismatched: elements with |x - ref| > atol + rtol * |ref| (NumPy's ``isclose`` rule, the
  reference as the base), plus non-finite elements that differ (NaN vs a number, inf vs -inf).
* top-1 / top-5 agreement, for classifier-shaped outputs only (after dropping size-1 dims, one or
  two dims with at least 2 classes on the last): the share of rows whose argmax agrees, and the
  share of rows whose reference top-1 class is among the output's five highest scores (top-5 only
  with more than 5 classes).
* NaN and inf counts, on each side.

``OutputComparison.combine`` merges two runs: the worst cosine and maxima, summed counts, means
and agreements weighted by elements and rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

__all__ = ["Tolerance", "OutputComparison", "compare_arrays", "class_axis_shape"]


@dataclass(frozen=True)
class Tolerance:
    """Per-element tolerance: an element mismatches when |x - ref| > atol + rtol * |ref|.

    The defaults suit an fp16 or int8 NPU against a float32 CPU: fp16 keeps about three
    significant digits, so a 1 % relative error is typical and 1e-3 absorbs near-zero noise.
    """

    atol: float = 1e-3
    rtol: float = 1e-2

    def __post_init__(self) -> None:
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class OutputComparison:
    """One output against its reference (over one or several runs)."""

    name: str
    reference_name: str
    shape: tuple[int, ...]
    reference_shape: tuple[int, ...]
    comparable: bool
    elements: int = 0
    cosine: Optional[float] = None
    max_abs_error: float = 0.0
    mean_abs_error: float = 0.0
    max_rel_error: float = 0.0
    mismatched: int = 0
    nan: int = 0
    inf: int = 0
    reference_nan: int = 0
    reference_inf: int = 0
    rows: int = 0
    top1: Optional[float] = None
    top5: Optional[float] = None
    note: str = ""

    @property
    def mismatch_fraction(self) -> float:
        return self.mismatched / self.elements if self.elements else 0.0

    def passes(self, min_cosine: float) -> bool:
        """Comparable, and a cosine of at least ``min_cosine``."""
        return self.comparable and self.cosine is not None and self.cosine >= min_cosine

    def combine(self, other: OutputComparison) -> OutputComparison:
        """This run and ``other`` (of the same output) as one result."""
        if not (self.comparable and other.comparable):
            return self if not self.comparable else other
        elements = self.elements + other.elements
        rows = self.rows + other.rows
        cosines = [c for c in (self.cosine, other.cosine) if c is not None]

        def weighted(a: Optional[float], wa: int, b: Optional[float], wb: int) -> Optional[float]:
            if a is None or b is None or wa + wb == 0:
                return None
            return (a * wa + b * wb) / (wa + wb)

        return replace(
            self,
            elements=elements,
            cosine=min(cosines) if len(cosines) == 2 else None,
            max_abs_error=max(self.max_abs_error, other.max_abs_error),
            mean_abs_error=weighted(
                self.mean_abs_error, self.elements, other.mean_abs_error, other.elements
            )
            or 0.0,
            max_rel_error=max(self.max_rel_error, other.max_rel_error),
            mismatched=self.mismatched + other.mismatched,
            nan=self.nan + other.nan,
            inf=self.inf + other.inf,
            reference_nan=self.reference_nan + other.reference_nan,
            reference_inf=self.reference_inf + other.reference_inf,
            rows=rows,
            top1=weighted(self.top1, self.rows, other.top1, other.rows),
            top5=weighted(self.top5, self.rows, other.top5, other.rows),
            note=self.note or other.note,
        )


def class_axis_shape(shape: tuple[int, ...]) -> Optional[tuple[int, int]]:
    """``(rows, classes)`` of a classifier-shaped output, or None.

    Size-1 dims are dropped; what remains must be ``[classes]`` or ``[rows, classes]`` with at least
    two classes: ``[1, 1000]``, ``[8, 10]``, ``[1, 1000, 1, 1]``, ``[1, 40, 6625]`` (a text
    recogniser: 40 positions of 6625 characters).
    """
    dims = [d for d in shape if d != 1]
    if not dims or len(dims) > 2 or dims[-1] < 2:
        return None
    return (dims[0] if len(dims) == 2 else 1), dims[-1]


def _cosine(x: np.ndarray, y: np.ndarray) -> Optional[float]:
    if x.size == 0:
        return None
    # Scaled to a max of 1 first: the squares of large values overflow where the cosine does not.
    ax, ay = float(np.max(np.abs(x))), float(np.max(np.abs(y)))
    if ax == 0.0 and ay == 0.0:
        return 1.0
    if ax == 0.0 or ay == 0.0:
        return 0.0
    x, y = x / ax, y / ay
    return float(np.clip(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)), -1.0, 1.0))


def _topk(actual: np.ndarray, reference: np.ndarray, classes: int) -> tuple[float, Optional[float]]:
    a, r = actual.reshape(-1, classes), reference.reshape(-1, classes)
    wanted = np.argmax(r, axis=1)
    top1 = float(np.mean(np.argmax(a, axis=1) == wanted))
    if classes <= 5:
        return top1, None
    five = np.argsort(-a, axis=1, kind="stable")[:, :5]  # ties: the lower class, like argmax
    return top1, float(np.mean(np.any(five == wanted[:, None], axis=1)))


def compare_arrays(
    name: str,
    actual: np.ndarray,
    reference: np.ndarray,
    tolerance: Tolerance = Tolerance(),
    reference_name: Optional[str] = None,
) -> OutputComparison:
    """Every number of the module docstring for one output of one run.

    Outputs of different shapes but the same size are compared flattened (with a note, e.g. an
    RKNN output reported with its batch dim dropped); different sizes are not comparable.
    """
    actual, reference = np.asarray(actual), np.asarray(reference)
    base = OutputComparison(
        name=name,
        reference_name=reference_name or name,
        shape=tuple(actual.shape),
        reference_shape=tuple(reference.shape),
        comparable=actual.size == reference.size,
    )
    if not base.comparable:
        return replace(
            base,
            note=f"not comparable: {actual.size} elements {list(actual.shape)} vs "
            f"{reference.size} {list(reference.shape)}",
        )
    note = "" if actual.shape == reference.shape else "shapes differ: compared flattened"
    x = actual.astype(np.float64).ravel()
    y = reference.astype(np.float64).ravel()
    finite_x, finite_y = np.isfinite(x), np.isfinite(y)
    both = finite_x & finite_y
    xs, ys = x[both], y[both]
    error = np.abs(xs - ys)
    magnitude = np.abs(ys)
    close = error <= tolerance.atol + tolerance.rtol * magnitude
    # Non-finite elements match only when equal (NaN with NaN, inf with the same inf).
    odd = ~both
    same_odd = (np.isnan(x[odd]) & np.isnan(y[odd])) | (x[odd] == y[odd])
    relative = magnitude > tolerance.atol
    rows_classes = class_axis_shape(tuple(reference.shape))
    top1: Optional[float] = None
    top5: Optional[float] = None
    rows = 0
    if rows_classes is not None and reference.dtype.kind == "f" and actual.dtype.kind == "f":
        rows, classes = rows_classes
        top1, top5 = _topk(x, y, classes)
    return replace(
        base,
        elements=int(x.size),
        cosine=_cosine(xs, ys),
        max_abs_error=float(error.max()) if error.size else 0.0,
        mean_abs_error=float(error.mean()) if error.size else 0.0,
        max_rel_error=float((error[relative] / magnitude[relative]).max())
        if relative.any()
        else 0.0,
        mismatched=int(np.count_nonzero(~close) + np.count_nonzero(~same_odd)),
        nan=int(np.count_nonzero(np.isnan(x))),
        inf=int(np.count_nonzero(np.isinf(x))),
        reference_nan=int(np.count_nonzero(np.isnan(y))),
        reference_inf=int(np.count_nonzero(np.isinf(y))),
        rows=rows,
        top1=top1,
        top5=top5,
        note=note,
    )
