"""``ez-rknn compare MODEL REFERENCE``: the same inputs through two models, and how far apart each
output is (the numbers are ``similarity``'s). Typically ``model.rknn`` on the NPU against
``model.onnx`` on the CPU, but any two models our backends load.

Inputs and outputs are paired by name when both models use the same names, else by position
(with a note). Inputs are made once per run in MODEL's input shapes (dynamic dims REFERENCE fixes
taken from it) and types, except where MODEL reports a quantised integer type and REFERENCE a
float one: an .rknn reports its internal (int8) type but takes floats and quantises them itself,
while the float model it came from wants floats. Then they are given to REFERENCE, cast to its
types where they differ.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..tensors import ONNX_TYPE_TO_DTYPE, NodeArg
from .errors import MODEL_HINT, UsageError, user_input
from .models import Feed, InputSpec, ShapeSpec, build_feed
from .report import format_table
from .similarity import OutputComparison, Tolerance, compare_arrays

__all__ = [
    "JSON_SCHEMA",
    "ComparePlan",
    "InputPair",
    "CompareResult",
    "pair_names",
    "run_compare",
    "compare_json",
    "compare_table",
]

JSON_SCHEMA = "ez-rknn-compare/1"


@dataclass(frozen=True)
class ComparePlan:
    """What to compare and how; ``min_cosine`` None means report only."""

    model: str
    reference: str
    backend: Optional[str] = None
    reference_backend: Optional[str] = None
    files: Sequence[InputSpec] = ()
    shapes: Sequence[ShapeSpec] = ()
    runs: int = 1
    seed: int = 0
    tolerance: Tolerance = Tolerance()
    min_cosine: Optional[float] = None

    def __post_init__(self) -> None:
        if self.runs < 1:
            raise ValueError(f"runs must be >= 1, got {self.runs}")
        if self.min_cosine is not None and not -1.0 <= self.min_cosine <= 1.0:
            raise ValueError(f"min_cosine is a cosine, between -1 and 1: got {self.min_cosine}")


@dataclass(frozen=True)
class InputPair:
    """One input as fed: its name in each model, shape, dtypes, and where the data came from."""

    name: str
    reference_name: str
    shape: tuple[int, ...]
    dtype: str
    reference_dtype: str
    source: str  # "random" or the file's path


@dataclass
class CompareResult:
    plan: ComparePlan
    backend: str
    reference_backend: str
    inputs: list[InputPair]
    outputs: list[OutputComparison]
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[OutputComparison]:
        """Outputs below ``--min-cosine`` or not comparable (none without ``--min-cosine``)."""
        if self.plan.min_cosine is None:
            return []
        return [out for out in self.outputs if not out.passes(self.plan.min_cosine)]

    @property
    def passed(self) -> Optional[bool]:
        return None if self.plan.min_cosine is None else not self.failures


def pair_names(
    kind: str, names: Sequence[str], reference_names: Sequence[str], notes: list[str]
) -> list[tuple[str, str]]:
    """``(name in MODEL, name in REFERENCE)`` pairs: by name when the sets agree, else by position
    when the counts do (noted), else a UsageError naming both lists."""
    if set(names) == set(reference_names):
        return [(name, name) for name in names]
    if len(names) == len(reference_names):
        pairs = list(zip(names, reference_names))
        notes.append(
            f"{kind}s paired by position (their names differ): "
            + ", ".join(f"{a} -> {b}" for a, b in pairs)
        )
        return pairs
    raise UsageError(
        f"the models' {kind}s match neither by name nor by count: MODEL has "
        f"{', '.join(names) or 'none'}; REFERENCE has {', '.join(reference_names) or 'none'}",
        hint="compare models of the same network (e.g. model.rknn converted from model.onnx)",
    )


def _open(path: str, backend: Optional[str], stack: contextlib.ExitStack) -> Any:
    from .. import InferenceSession, make_provider_options

    if not os.path.isfile(path):
        raise FileNotFoundError(f"model not found: {path}")
    with user_input(MODEL_HINT):
        session = InferenceSession(path, provider_options=make_provider_options(backend=backend))
    stack.callback(session.close)
    return session


def _reference_feed(
    feed: dict[str, np.ndarray],
    pairs: Sequence[tuple[str, str]],
    dtypes: dict[str, Optional[np.dtype]],
) -> dict[str, np.ndarray]:
    """MODEL's arrays under REFERENCE's names, cast to REFERENCE's dtypes where they differ."""
    result = {}
    for name, ref in pairs:
        wanted = dtypes.get(ref)
        array = feed[name]
        result[ref] = array if wanted is None or wanted == array.dtype else array.astype(wanted)
    return result


def _fixed(dim: Any) -> bool:
    return isinstance(dim, int) and dim > 0


def _feed_node(node: Any, reference: Any, notes: list[str]) -> Any:
    """The NodeArg to make ``node``'s data for: MODEL's, with REFERENCE's fixed dims where
    MODEL's are dynamic, and REFERENCE's float type over MODEL's quantised integer one."""
    shape, kind = list(node.shape), node.type
    if len(shape) == len(reference.shape):
        merged = [d if _fixed(d) or not _fixed(r) else r for d, r in zip(shape, reference.shape)]
        if merged != shape:
            notes.append(
                f"input {node.name}: dynamic dims taken from REFERENCE: {shape} -> {merged}"
            )
            shape = merged
    ours, theirs = ONNX_TYPE_TO_DTYPE.get(node.type), ONNX_TYPE_TO_DTYPE.get(reference.type)
    if ours is not None and theirs is not None and ours.kind in "iu" and theirs.kind == "f":
        notes.append(
            f"input {node.name}: MODEL reports {node.type} (quantised), REFERENCE takes "
            f"{reference.type}: data made as {reference.type} for both"
        )
        kind = reference.type
    return NodeArg(node.name, shape, kind)


def run_compare(plan: ComparePlan) -> CompareResult:
    """Run both models ``plan.runs`` times (random inputs seeded ``seed + run``) and compare."""
    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        model = _open(plan.model, plan.backend, stack)
        reference = _open(plan.reference, plan.reference_backend, stack)
        ref_nodes = {node.name: node for node in reference.get_inputs()}
        ref_types = {name: ONNX_TYPE_TO_DTYPE.get(node.type) for name, node in ref_nodes.items()}
        in_pairs = pair_names("input", [n.name for n in model.get_inputs()], list(ref_nodes), notes)
        ref_of = dict(in_pairs)
        inputs = [_feed_node(n, ref_nodes[ref_of[n.name]], notes) for n in model.get_inputs()]
        out_pairs = pair_names(
            "output",
            [n.name for n in model.get_outputs()],
            [n.name for n in reference.get_outputs()],
            notes,
        )
        out_names = [name for name, _ in out_pairs]
        ref_out_names = [ref for _, ref in out_pairs]
        results: list[Optional[OutputComparison]] = [None] * len(out_pairs)
        first: Optional[Feed] = None
        for run in range(plan.runs):
            made = build_feed(inputs, plan.shapes, plan.files, seed=plan.seed + run)
            if first is None:
                first = made
            with user_input():  # the user's data (or shapes) handed to both models
                ours = model.run(out_names, made.arrays)
                theirs = reference.run(
                    ref_out_names, _reference_feed(made.arrays, in_pairs, ref_types)
                )
            for index, ((name, ref), a, b) in enumerate(zip(out_pairs, ours, theirs)):
                one = compare_arrays(name, a, b, plan.tolerance, reference_name=ref)
                earlier = results[index]
                results[index] = one if earlier is None else earlier.combine(one)
        assert first is not None  # ComparePlan holds runs >= 1
        notes += first.notes
        pairs = [
            InputPair(
                name=name,
                reference_name=ref,
                shape=tuple(first.arrays[name].shape),
                dtype=str(first.arrays[name].dtype),
                reference_dtype=str(ref_types.get(ref) or first.arrays[name].dtype),
                source=first.sources[name],
            )
            for name, ref in in_pairs
        ]
        notes += [
            f"input {p.name}: {p.dtype} data cast to {p.reference_dtype} for the reference"
            for p in pairs
            if p.dtype != p.reference_dtype
        ]
        return CompareResult(
            plan=plan,
            backend=model.backend_name,
            reference_backend=reference.backend_name,
            inputs=pairs,
            outputs=[r for r in results if r is not None],
            notes=notes,
        )


def _output_json(out: OutputComparison, min_cosine: Optional[float]) -> dict[str, Any]:
    return {
        "name": out.name,
        "reference_name": out.reference_name,
        "shape": list(out.shape),
        "reference_shape": list(out.reference_shape),
        "comparable": out.comparable,
        "elements": out.elements,
        "cosine": out.cosine,
        "max_abs_error": out.max_abs_error,
        "mean_abs_error": out.mean_abs_error,
        "max_rel_error": out.max_rel_error,
        "mismatched": out.mismatched,
        "mismatch_fraction": out.mismatch_fraction,
        "nan": out.nan,
        "inf": out.inf,
        "reference_nan": out.reference_nan,
        "reference_inf": out.reference_inf,
        "rows": out.rows,
        "top1": out.top1,
        "top5": out.top5,
        "note": out.note,
        "passed": None if min_cosine is None else out.passes(min_cosine),
    }


def compare_json(result: CompareResult) -> dict[str, Any]:
    """The machine-readable result (schema ``JSON_SCHEMA``)."""
    plan = result.plan
    return {
        "schema": JSON_SCHEMA,
        "model": {"path": os.path.abspath(plan.model), "backend": result.backend},
        "reference": {"path": os.path.abspath(plan.reference), "backend": result.reference_backend},
        "runs": plan.runs,
        "seed": plan.seed,
        "tolerance": {"atol": plan.tolerance.atol, "rtol": plan.tolerance.rtol},
        "min_cosine": plan.min_cosine,
        "inputs": [
            {
                "name": p.name,
                "reference_name": p.reference_name,
                "shape": list(p.shape),
                "dtype": p.dtype,
                "reference_dtype": p.reference_dtype,
                "source": p.source,
            }
            for p in result.inputs
        ],
        "outputs": [_output_json(out, plan.min_cosine) for out in result.outputs],
        "passed": result.passed,
        "notes": result.notes,
    }


def _percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _row(out: OutputComparison) -> list[str]:
    shape = "[" + ", ".join(map(str, out.shape)) + "]"
    if not out.comparable:
        return [out.name, shape, "-", "-", "-", "-", "-", "-", "-"]
    odd = f"{out.nan}/{out.inf}"
    if out.reference_nan or out.reference_inf:
        odd += f" (ref {out.reference_nan}/{out.reference_inf})"
    return [
        out.name,
        shape,
        "-" if out.cosine is None else f"{out.cosine:.6f}",
        f"{out.max_abs_error:.3g}",
        f"{out.max_rel_error:.3g}",
        f"{out.mismatched} ({100 * out.mismatch_fraction:.2f}%)",
        _percent(out.top1),
        _percent(out.top5),
        odd,
    ]


def compare_table(result: CompareResult) -> str:
    """What was compared, one row per output, the definitions, then PASS/FAIL with --min-cosine."""
    plan = result.plan
    lines = [
        f"model      {plan.model}  (backend {result.backend})",
        f"reference  {plan.reference}  (backend {result.reference_backend})",
    ]
    for p in result.inputs:
        source = f"random (seed {plan.seed})" if p.source == "random" else p.source
        renamed = f" -> {p.reference_name}" if p.reference_name != p.name else ""
        lines.append(f"input      {p.name}{renamed} {list(p.shape)} {p.dtype}: {source}")
    if plan.runs > 1:
        last = plan.seed + plan.runs - 1
        lines.append(
            f"runs       {plan.runs} (random inputs seeded {plan.seed}..{last}; "
            "worst cosine, summed counts)"
        )
    headers = [
        "output",
        "shape",
        "cosine",
        "max abs",
        "max rel",
        "mismatched",
        "top-1",
        "top-5",
        "NaN/inf",
    ]
    table = format_table(headers, [_row(out) for out in result.outputs], [True, True] + [False] * 7)
    tol = plan.tolerance
    lines += [
        "",
        table,
        "",
        f"mismatched: |x - ref| > {tol.atol:g} + {tol.rtol:g} * |ref|; max rel over |ref| > "
        f"{tol.atol:g}",
        "cosine over the elements finite on both sides; top-k along the last axis of "
        "classifier-shaped outputs",
    ]
    lines += [f"{out.name}: {out.note}" for out in result.outputs if out.note]
    if plan.min_cosine is not None:
        if result.passed:
            lines.append(f"PASS: every output has cosine >= {plan.min_cosine:g}")
        else:
            why = [f"{out.name} ({_why(out, plan.min_cosine)})" for out in result.failures]
            lines.append("FAIL: " + ", ".join(why))
    return "\n".join(lines)


def _why(out: OutputComparison, min_cosine: float) -> str:
    if not out.comparable:
        return "not comparable"
    if out.cosine is None:
        return "no finite element to compare"
    return f"cosine {out.cosine:.6f} < {min_cosine:g}"
