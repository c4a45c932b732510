"""``ez-rknn compare MODEL REFERENCE``: the same inputs through two models, output by output."""

from __future__ import annotations

import argparse

from ..args import BACKENDS, RAW, backend_option, convert, input_options, non_negative, positive
from ..errors import ExitCode
from ..models import parse_input_spec, parse_shape_spec

__all__ = ["register", "run"]

_DESCRIPTION = """\
Feed the same inputs to MODEL and REFERENCE (any two models our backends load: typically
model.rknn on the NPU and model.onnx on the CPU) and report, per output, how far MODEL is from
REFERENCE. Inputs and outputs are paired by name, or by position when the names differ.

inputs: random by default (seeded: --seed, then seed + 1 ... for each further --runs), in each
input's dtype: floats in [0, 1), int8/uint8 over their whole range, other integers in [0, 10).
--input NAME=FILE feeds a .npy array, a .npz archive (arrays named after the inputs; NAME may be
left out) or an image (Pillow; resized to the input's H x W; uint8 inputs get 0-255, float inputs
0-1). Data is made in MODEL's dtypes (REFERENCE's float type where MODEL reports a quantised one,
as an .rknn does) and shapes (dynamic dims that REFERENCE fixes taken from it; others need
--shape), then cast to REFERENCE's dtypes where they differ. When the .rknn was converted with
mean/std values, the ONNX reference must do the same normalisation.

per output:
  cosine      cosine similarity over the elements finite on both sides (scale-blind)
  max abs     max |x - ref|
  max rel     max |x - ref| / |ref| over the elements where |ref| > atol
  mismatched  elements with |x - ref| > atol + rtol * |ref| (and differing NaN/inf)
  top-1/top-5 classifier-shaped outputs ([classes], [rows, classes], size-1 dims ignored): share
              of rows whose argmax agrees / whose reference argmax is in the top five
  NaN/inf     counts in MODEL's output (and REFERENCE's, when it has any)
With --runs N the worst cosine and largest errors of the N runs are reported, counts are summed."""

_EPILOG = f"""\
exit codes: 0 when done (and, with --min-cosine, every output passed); {int(ExitCode.MISMATCH)} when
an output's cosine is below --min-cosine or it cannot be compared (different sizes, nothing
finite); the usual codes otherwise (see ez-rknn --help).

examples:
  ez-rknn compare model.rknn model.onnx                       random inputs, one run
  ez-rknn compare model.rknn model.onnx --input images=cat.jpg --runs 5
  ez-rknn compare model.rknn model.onnx --min-cosine 0.999 --json   in CI
  ez-rknn compare model.onnx model.onnx --reference-backend openvino
"""


def _cosine_bound(text: str) -> float:
    value = convert(float, text, f"not a number: {text!r}")
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a cosine is between -1 and 1, got {text}")
    return value


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "compare",
        help="the same inputs through two models: how far apart each output is",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=RAW,
    )
    parser.add_argument("model", metavar="MODEL", help="the model to check (.rknn, .onnx)")
    parser.add_argument("reference", metavar="REFERENCE", help="the model taken as truth")
    feeds = parser.add_argument_group("inputs")
    input_options(feeds, "x=1x3x48x320")
    feeds.add_argument(
        "--runs", type=positive(int), default=1, metavar="N", help="input sets to run (default 1)"
    )
    feeds.add_argument(
        "--seed", type=non_negative(int), default=0, metavar="S", help="first seed (default 0)"
    )
    checks = parser.add_argument_group("tolerance and verdict")
    checks.add_argument(
        "--atol", type=non_negative(float), default=1e-3, help="absolute tolerance (default 1e-3)"
    )
    checks.add_argument(
        "--rtol", type=non_negative(float), default=1e-2, help="relative tolerance (default 1e-2)"
    )
    checks.add_argument(
        "--min-cosine",
        type=_cosine_bound,
        metavar="X",
        help=f"fail (exit code {int(ExitCode.MISMATCH)}) when an output's cosine is below X",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    backend_option(parser)
    parser.add_argument(
        "--reference-backend",
        choices=BACKENDS,
        help="force REFERENCE's backend (default: from the model)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..compare import ComparePlan, compare_json, compare_table, run_compare
    from ..report import Output
    from ..similarity import Tolerance

    plan = ComparePlan(
        model=args.model,
        reference=args.reference,
        backend=args.backend,
        reference_backend=args.reference_backend,
        files=[parse_input_spec(text) for text in args.input],
        shapes=[parse_shape_spec(text) for text in args.shape],
        runs=args.runs,
        seed=args.seed,
        tolerance=Tolerance(atol=args.atol, rtol=args.rtol),
        min_cosine=args.min_cosine,
    )
    out = Output("json" if args.json else "human")
    result = run_compare(plan)
    for note in result.notes:
        out.note(note)
    out.result(compare_table(result), compare_json(result))
    return ExitCode.MISMATCH if result.passed is False else ExitCode.OK
