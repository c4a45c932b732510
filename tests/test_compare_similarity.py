"""The numbers of ``ez-rknn compare`` on arrays whose answers are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ez_rknn_async.cli.similarity import (
    OutputComparison,
    Tolerance,
    class_axis_shape,
    compare_arrays,
)


def test_identical_outputs():
    ref = np.arange(12, dtype=np.float32).reshape(3, 4)
    result = compare_arrays("y", ref.copy(), ref)
    assert result.comparable and result.cosine == pytest.approx(1.0)
    assert (result.max_abs_error, result.mean_abs_error, result.max_rel_error) == (0, 0, 0)
    assert result.mismatched == 0 and result.elements == 12
    assert (result.top1, result.top5, result.rows) == (1.0, None, 3)  # 4 classes: no top-5
    assert result.passes(0.9999) and result.note == ""


def test_one_element_off_by_hand():
    ref = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    out = np.array([1.0, 2.0, 3.0, 4.05], dtype=np.float32)
    result = compare_arrays("y", out, ref, Tolerance(atol=1e-3, rtol=1e-2))
    dot, nx, ny = 1 + 4 + 9 + 4 * 4.05, 1 + 4 + 9 + 4.05**2, 30.0
    assert result.cosine == pytest.approx(dot / math.sqrt(nx * ny), abs=1e-9)
    assert result.max_abs_error == pytest.approx(0.05, abs=1e-6)
    assert result.mean_abs_error == pytest.approx(0.0125, abs=1e-6)
    assert result.max_rel_error == pytest.approx(0.0125, abs=1e-6)
    assert result.mismatched == 1  # 0.05 > 0.001 + 0.01 * 4
    assert result.mismatch_fraction == 0.25
    assert compare_arrays("y", out, ref, Tolerance(atol=0.02, rtol=0.01)).mismatched == 0


def test_cosine_ignores_scale_the_errors_do_not():
    ref = np.array([1.0, -2.0, 3.0])
    result = compare_arrays("y", 2 * ref, ref)
    assert result.cosine == pytest.approx(1.0)
    assert result.max_abs_error == 3.0 and result.max_rel_error == 1.0 and result.mismatched == 3


def test_orthogonal_opposite_and_zero_outputs():
    assert compare_arrays("y", np.array([1.0, 0.0]), np.array([0.0, 1.0])).cosine == 0.0
    assert compare_arrays("y", -np.ones(3), np.ones(3)).cosine == pytest.approx(-1.0)
    assert compare_arrays("y", np.zeros(3), np.zeros(3)).cosine == 1.0
    assert compare_arrays("y", np.zeros(3), np.ones(3)).cosine == 0.0


def test_huge_values_do_not_overflow_the_cosine():
    ref = np.array([1e200, 2e200, 3e200])
    assert compare_arrays("y", ref * 1.0, ref).cosine == pytest.approx(1.0)


def test_rel_error_skips_references_below_atol():
    ref = np.array([0.0, 1e-6, 10.0])
    out = np.array([1e-4, 2e-6, 10.0])
    result = compare_arrays("y", out, ref)
    assert result.max_rel_error == 0.0  # tiny references are judged by the absolute error only
    assert result.max_abs_error == pytest.approx(1e-4) and result.mismatched == 0


def test_nan_and_inf():
    ref = np.array([1.0, np.nan, np.inf, np.inf, 5.0, 6.0])
    out = np.array([1.0, np.nan, np.inf, -np.inf, np.nan, 6.0])
    result = compare_arrays("y", out, ref)
    assert (result.nan, result.inf, result.reference_nan, result.reference_inf) == (2, 2, 1, 2)
    assert result.mismatched == 2  # inf vs -inf, NaN vs 5; NaN vs NaN and inf vs inf agree
    assert result.cosine == pytest.approx(1.0)  # over the finite pairs (1, 1) and (6, 6)
    nothing_finite = compare_arrays("y", np.full(3, np.nan), np.ones(3))
    assert nothing_finite.cosine is None and not nothing_finite.passes(0.0)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((1, 1000), (1, 1000)),
        ((8, 10), (8, 10)),
        ((1, 1000, 1, 1), (1, 1000)),
        ((1, 40, 6625), (40, 6625)),  # a text recogniser: one row per position
        ((5,), (1, 5)),
        ((1, 1), None),
        ((1,), None),
        ((2, 3, 4), None),
        ((1, 84, 2100), (84, 2100)),  # a detector's [1, 4 + classes, boxes]: argmax per channel
    ],
)
def test_classifier_shapes(shape, expected):
    assert class_axis_shape(shape) == expected


def test_top1_and_top5_by_hand():
    ref = np.zeros((3, 10), dtype=np.float32)
    ref[0, 2] = ref[1, 7] = ref[2, 4] = 1.0  # reference classes 2, 7, 4
    out = np.zeros_like(ref)
    out[0, 2] = 1.0  # agrees
    out[1, [0, 1, 3, 5]] = 0.9  # four classes above the reference's 7, which comes fifth
    out[1, 0], out[1, 7] = 1.0, 0.5
    out[2, 9] = 1.0  # 4 not even in the top five (all the rest are zeros, 4 ties at 0)
    out[2, [0, 1, 2, 3]] = 0.5
    result = compare_arrays("y", out, ref)
    assert result.rows == 3
    assert result.top1 == pytest.approx(1 / 3)
    assert result.top5 == pytest.approx(2 / 3)


def test_top5_ties_go_to_the_lower_class():
    ref = np.eye(10, dtype=np.float32)[[7]]  # class 7
    tied = np.zeros((1, 10), dtype=np.float32)
    tied[0, 9] = 1.0  # then nine classes tied at 0: the five kept are 9, 0, 1, 2, 3
    assert compare_arrays("y", tied, ref).top5 == 0.0
    tied[0, 2] = -1.0  # one tie fewer: 9, 0, 1, 3, 4 still leaves 7 out
    assert compare_arrays("y", tied, ref).top5 == 0.0


def test_integer_outputs_have_no_topk():
    ids = np.array([[3, 1, 2]], dtype=np.int64)
    result = compare_arrays("ids", ids, ids)
    assert result.top1 is None and result.cosine == pytest.approx(1.0)


def test_shapes_differ():
    ref = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    same_size = compare_arrays("y", ref.reshape(2, 3), ref)
    assert same_size.comparable and same_size.note == "shapes differ: compared flattened"
    assert same_size.cosine == pytest.approx(1.0)
    other = compare_arrays("y", np.zeros(5), ref, reference_name="ref_y")
    assert not other.comparable and not other.passes(-1.0)
    assert other.note == "not comparable: 5 elements [5] vs 6 [1, 2, 3]"
    assert other.reference_name == "ref_y"


def test_combine_runs():
    ref = np.eye(10, dtype=np.float32)[:2]  # two rows, classes 0 and 1
    first = compare_arrays("y", ref, ref)
    worse = ref.copy()
    worse[1] = np.eye(10, dtype=np.float32)[2]  # row 1 now says class 2...
    worse[1, 1] = 0.5  # ...with the reference's class 1 second
    second = compare_arrays("y", worse, ref)
    both = first.combine(second)
    assert both.elements == 40 and both.rows == 4
    assert both.cosine == second.cosine == pytest.approx(1.5 / (2**0.5 * 1.5))
    assert both.mismatched == second.mismatched == 2
    assert both.top1 == pytest.approx(3 / 4) and both.top5 == pytest.approx(1.0)
    assert both.max_abs_error == 1.0 and both.mean_abs_error == pytest.approx(1.5 / 40)
    broken = OutputComparison("y", "y", (5,), (2, 10), comparable=False, note="not comparable")
    assert not first.combine(broken).comparable and not broken.combine(first).comparable


@pytest.mark.parametrize("bad", [{"atol": -1.0}, {"rtol": float("nan")}, {"atol": "1"}])
def test_tolerance_rejects_bad_values(bad):
    key = next(iter(bad))
    with pytest.raises(ValueError, match=f"{key} must be a finite number >= 0"):
        Tolerance(**bad)
