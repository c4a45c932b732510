"""``ez-rknn bench MODEL``: fps and latency of every calling mode, next to comparators."""

from __future__ import annotations

import argparse
import json
from typing import Any, Optional

from ..args import RAW, backend_option, convert, input_options, positive, require_file
from ..bench import MODES, Plan, parse_compare, parse_modes, run_plan
from ..comparators import COMPARATORS
from ..errors import ExitCode, UsageError
from ..measure import Budget
from ..models import parse_input_spec, parse_shape_spec

__all__ = ["register", "run", "DEFAULT_SECONDS"]

#: Seconds per row when neither --time nor --frames is given.
DEFAULT_SECONDS = 10.0

_DESCRIPTION = """\
Measure a model in each calling mode, the way OpenVINO's benchmark_app does: the first inference
is timed apart, then a warm-up, then frames are issued until --time or --frames runs out. Each
row reports frames, duration, fps (frames / duration), the speed-up over a baseline, and the
latency of a frame (its completion minus its submission) as median/avg/min/max/p90/p99.

modes (ours, --mode):
  run        sess.run() in a loop: one frame at a time
  async      sess.run_async() with --depth frames in flight (callbacks)
  pipeline   sess.run_pipeline(feed, depth): each call returns the frame --depth calls older
  all        the three above (default)

comparators (--compare, comma-separated; skipped with a note when not installed):
""" + "\n".join(f"  {name:<10} {c.label}" for name, c in COMPARATORS.items())

_EPILOG = """\
inputs are random (seeded) unless given with --input. A dynamic batch dim becomes 1; any other
dynamic dim (image size, sequence length) must be set with --shape.

examples:
  ez-rknn bench yolov8n.onnx                                 all modes, 10 s each
  ez-rknn bench yolov8n.onnx --compare ort,ort-async,openvino --plot bench.png
  ez-rknn bench model.onnx --mode async --depth 8 --frames 500 --json out.json
  ez-rknn bench model.onnx --shape images=1x3x640x640        set the dynamic dims
  ez-rknn bench model.onnx --input images=frame.npy          feed a real frame
  ez-rknn bench model.rknn --schedule 0,1,2 --threads 2      3 NPU cores, 2 workers each
  ez-rknn bench model.rknn --schedule 0,1,2 --compare ztu    the original library, same modes
"""


def _warmup(text: str) -> Optional[int]:
    if text == "auto":
        return None
    value = convert(int, text, f"expected a frame count or 'auto', got {text!r}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "bench",
        help="measure fps and latency per mode",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=RAW,
    )
    parser.add_argument("model", metavar="MODEL", help=".onnx or .rknn file")
    what = parser.add_argument_group("what to run")
    what.add_argument("--mode", default="all", help=f"{', '.join(MODES)} or all (default: all)")
    what.add_argument(
        "--compare",
        default="none",
        metavar="LIST",
        help="comparators to run side by side, or all (default: none)",
    )
    input_options(what, "images=1x3x640x640")
    how = parser.add_argument_group("how long")
    how.add_argument(
        "--time",
        type=positive(float),
        metavar="SECONDS",
        help=f"seconds per row (default: {DEFAULT_SECONDS:g}, or unlimited with --frames)",
    )
    how.add_argument(
        "--frames",
        type=positive(int),
        metavar="N",
        help="frames per row (stops at the first limit)",
    )
    how.add_argument(
        "--warmup",
        type=_warmup,
        default=None,
        metavar="N|auto",
        help="warm-up frames after the first (default: auto, timeit-style autorange)",
    )
    how.add_argument(
        "--repeat",
        type=positive(int),
        default=1,
        metavar="R",
        help="split the budget into R interleaved rounds (fairer on a busy machine)",
    )
    session = parser.add_argument_group("our session")
    session.add_argument(
        "--depth",
        type=positive(int),
        metavar="N",
        help="frames in flight for async/pipeline and comparators (default: 2 x workers)",
    )
    session.add_argument(
        "--schedule", metavar="CORES", help="cores to run on, e.g. 0,1,2 (default: all)"
    )
    session.add_argument(
        "--threads", type=positive(int), metavar="N", help="workers per core (threads_per_core)"
    )
    backend_option(session)
    output = parser.add_argument_group("output")
    output.add_argument("--json", metavar="FILE", help="write the results as JSON ('-': stdout)")
    output.add_argument(
        "--plot", metavar="FILE.png", help="draw fps and latency per row (matplotlib)"
    )
    output.add_argument("-q", "--quiet", action="store_true", help="no table, no progress bar")
    parser.set_defaults(func=run)


def _provider_options(args: argparse.Namespace) -> dict[str, Any]:
    """Our session's options from --schedule/--threads/--backend, validated before any load."""
    from ...options import make_provider_options

    wanted = {"schedule": args.schedule, "threads_per_core": args.threads, "backend": args.backend}
    wanted = {key: value for key, value in wanted.items() if value is not None}
    try:
        made: dict[str, Any] = dict(make_provider_options(**wanted))
    except ValueError as exc:
        raise UsageError(str(exc), hint="for example --schedule 0,1,2 --threads 2") from exc
    return {key: made[key] for key in wanted}


def run(args: argparse.Namespace) -> int:
    from ..report import (
        Output,
        bench_header,
        bench_json,
        bench_table,
        require_matplotlib,
        write_plot,
    )

    plan = Plan(
        model=args.model,
        modes=parse_modes(args.mode),
        compare=parse_compare(args.compare),
        budget=Budget(args.frames, args.time or (None if args.frames else DEFAULT_SECONDS)),
        depth=args.depth,
        shapes=[parse_shape_spec(text) for text in args.shape],
        files=[parse_input_spec(text) for text in args.input],
        provider_options=_provider_options(args),
        warmup=args.warmup,
        repeat=args.repeat,
    )
    require_file(args.model)
    if args.plot:
        require_matplotlib()
    out = Output("quiet" if args.quiet else "json" if args.json == "-" else "human")
    result = run_plan(plan, out.progress())
    for note in result.notes:
        out.note(note)
    document = bench_json(result)
    out.result(f"{bench_header(result)}\n\n{bench_table(result)}", document)
    if args.json and args.json != "-":
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(document, file, indent=2)
        out.note(f"JSON written to {args.json}")
    if args.plot:
        write_plot(result, args.plot)
        out.note(f"plot written to {args.plot}")
    return ExitCode.OK
