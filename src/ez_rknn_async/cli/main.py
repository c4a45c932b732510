"""The ``ez-rknn`` command: ``info``, ``bench``, ``doctor``, ``demo``.

``main(argv)`` parses, runs one command and returns the exit code (``errors.ExitCode``). Known
errors become ``error: ...`` plus ``hint: ...`` on stderr through the one table in ``errors``;
``EZ_RKNN_DEBUG=1`` adds their tracebacks; unknown errors keep theirs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any, Callable, Optional

from .. import __version__
from .bench import COMPARATORS, MODES, Budget, Plan, parse_compare, parse_modes, run_plan
from .errors import EXIT_CODE_HELP, ExitCode, UsageError, explain
from .models import parse_input_spec, parse_shape_spec

__all__ = ["main", "build_parser", "DEBUG_ENV"]

#: Set to 1 to print the traceback of known errors too.
DEBUG_ENV = "EZ_RKNN_DEBUG"
_DEFAULT_SECONDS = 10.0

_MAIN_EPILOG = f"""\
commands:
  info MODEL     inputs, outputs, native tensors, metadata; which backend runs it and why
  bench MODEL    fps and latency of every calling mode, optionally next to onnxruntime/OpenVINO
  doctor         which runtime library, SoC and NPU cores this machine has, and what to fix
  demo           YOLOv8n on the CPU: run / run_async / run_pipeline vs plain onnxruntime

exit codes:
{EXIT_CODE_HELP}

Set {DEBUG_ENV}=1 to see the traceback behind an error.
"""

_BENCH_DESCRIPTION = """\
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

_BENCH_EPILOG = """\
inputs are random (seeded) unless given with --input. A dynamic batch dim becomes 1; any other
dynamic dim (image size, sequence length) must be set with --shape.

examples:
  ez-rknn bench yolov8n.onnx                                 all modes, 10 s each
  ez-rknn bench yolov8n.onnx --compare ort,ort-async,openvino --plot bench.png
  ez-rknn bench model.onnx --mode async --depth 8 --frames 500 --json out.json
  ez-rknn bench model.onnx --shape images=1x3x640x640        set the dynamic dims
  ez-rknn bench model.onnx --input images=frame.npy          feed a real frame
  ez-rknn bench model.rknn --schedule 0,1,2 --threads 2      3 NPU cores, 2 workers each
"""


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def _warmup(text: str) -> Optional[int]:
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a frame count or 'auto', got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _backend_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--backend",
        choices=("onnxruntime", "rknn", "openvino"),
        help="force a backend (default: from the model: .rknn -> rknn, ONNX -> onnxruntime)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; ``--help`` of each command is its manual."""
    parser = argparse.ArgumentParser(
        prog="ez-rknn",
        description="Run and measure neural networks on Rockchip NPUs and CPUs.",
        epilog=_MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ez-rknn-async {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    raw = argparse.RawDescriptionHelpFormatter

    info = commands.add_parser(
        "info",
        help="describe a model and the backend chosen for it",
        description="Inputs and outputs (name, shape, type, layout), the runtime's native "
        "tensors (RKNN), metadata, and which backend serves the model and why.",
        formatter_class=raw,
    )
    info.add_argument("model", metavar="MODEL", help=".onnx or .rknn file")
    info.add_argument("--json", action="store_true", help="print JSON instead of tables")
    _backend_option(info)
    info.set_defaults(func=_cmd_info)

    bench = commands.add_parser(
        "bench",
        help="measure fps and latency per mode",
        description=_BENCH_DESCRIPTION,
        epilog=_BENCH_EPILOG,
        formatter_class=raw,
    )
    bench.add_argument("model", metavar="MODEL", help=".onnx or .rknn file")
    what = bench.add_argument_group("what to run")
    what.add_argument("--mode", default="all", help=f"{', '.join(MODES)} or all (default: all)")
    what.add_argument(
        "--compare",
        default="none",
        metavar="LIST",
        help="comparators to run side by side, or all (default: none)",
    )
    what.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="[NAME=]FILE.npy",
        help="feed this array to input NAME (repeatable; NAME optional for one input)",
    )
    what.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="[NAME=]DIMS",
        help="shape for random data, e.g. images=1x3x640x640 (sets dynamic dims; repeatable)",
    )
    how = bench.add_argument_group("how long")
    how.add_argument(
        "--time",
        type=_positive(float),
        metavar="SECONDS",
        help=f"seconds per row (default: {_DEFAULT_SECONDS:g}, or unlimited with --frames)",
    )
    how.add_argument(
        "--frames",
        type=_positive(int),
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
        type=_positive(int),
        default=1,
        metavar="R",
        help="split the budget into R interleaved rounds (fairer on a busy machine)",
    )
    session = bench.add_argument_group("our session")
    session.add_argument(
        "--depth",
        type=_positive(int),
        metavar="N",
        help="frames in flight for async/pipeline and comparators (default: 2 x workers)",
    )
    session.add_argument(
        "--schedule", metavar="CORES", help="cores to run on, e.g. 0,1,2 (default: all)"
    )
    session.add_argument(
        "--threads", type=_positive(int), metavar="N", help="workers per core (threads_per_core)"
    )
    _backend_option(session)
    output = bench.add_argument_group("output")
    output.add_argument("--json", metavar="FILE", help="write the results as JSON ('-': stdout)")
    output.add_argument(
        "--plot", metavar="FILE.png", help="draw fps and latency per row (matplotlib)"
    )
    output.add_argument("-q", "--quiet", action="store_true", help="no table, no progress bar")
    bench.set_defaults(func=_cmd_bench)

    doctor = commands.add_parser(
        "doctor",
        help="check the runtime, SoC and NPU cores",
        description="Probe the RKNN runtime library, the SoC and its NPU cores, and the optional "
        f"packages; print each problem with its fix. Exit code {int(ExitCode.PROBLEMS)} when "
        "there are problems, 0 otherwise.",
    )
    doctor.add_argument("--json", action="store_true", help="print JSON instead of tables")
    doctor.set_defaults(func=_cmd_doctor)

    demo = commands.add_parser(
        "demo",
        help="YOLOv8n on the CPU: our modes vs plain onnxruntime (under a minute)",
        description="Run the YOLOv8n 320 model shipped in the nudenet wheel on the CPU in the "
        "three modes and next to plain onnxruntime (one thread, and default threads).",
    )
    demo.add_argument(
        "--time", type=_positive(float), default=None, metavar="SECONDS", help="seconds per row"
    )
    demo.set_defaults(func=_cmd_demo)
    return parser


# --- commands ----------------------------------------------------------------------------------


def _require_file(path: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model not found: {path}")


def _cmd_info(args: argparse.Namespace) -> int:
    from .info import describe, render
    from .report import Output

    _require_file(args.model)
    info = describe(args.model, args.backend)
    Output("json" if args.json else "human").result(render(info), info)
    return ExitCode.OK


def _provider_options(args: argparse.Namespace) -> dict[str, Any]:
    """Our session's options from --schedule/--threads/--backend, validated before any load."""
    from ..options import make_provider_options

    wanted = {"schedule": args.schedule, "threads_per_core": args.threads, "backend": args.backend}
    wanted = {key: value for key, value in wanted.items() if value is not None}
    try:
        made: dict[str, Any] = dict(make_provider_options(**wanted))
    except ValueError as exc:
        raise UsageError(str(exc), hint="for example --schedule 0,1,2 --threads 2") from exc
    return {key: made[key] for key in wanted}


def _cmd_bench(args: argparse.Namespace) -> int:
    from .report import (
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
        budget=Budget(args.frames, args.time or (None if args.frames else _DEFAULT_SECONDS)),
        depth=args.depth,
        shapes=[parse_shape_spec(text) for text in args.shape],
        files=[parse_input_spec(text) for text in args.input],
        provider_options=_provider_options(args),
        warmup=args.warmup,
        repeat=args.repeat,
    )
    _require_file(args.model)
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


def _cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import collect, exit_code, render
    from .report import Output

    report = collect()
    Output("json" if args.json else "human").result(render(report), report)
    return exit_code(report)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import demo_plan
    from .report import DEMO_COLUMNS, Output, bench_header, bench_table

    plan = demo_plan() if args.time is None else demo_plan(args.time)
    out = Output("human")
    print(
        f"ez-rknn demo: {os.path.basename(plan.model)} (YOLOv8n 320) on the CPU, "
        f"{plan.budget.seconds:g} s per row",
        flush=True,
    )
    result = run_plan(plan, out.progress())
    out.result(f"{bench_header(result)}\n\n{bench_table(result, DEMO_COLUMNS)}", None)
    return ExitCode.OK


# --- entry point -------------------------------------------------------------------------------


def _report(exc: BaseException) -> Optional[int]:
    """Print a known error as one line plus a hint; None for an unknown one."""
    known = explain(exc)
    if known is None:
        return None
    code, message, hint = known
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    return int(code)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``ez-rknn`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and argparse's own usage errors
        return int(exc.code or 0) if not isinstance(exc.code, str) else int(ExitCode.USAGE)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except Exception as exc:
        code = _report(exc)
        if code is None:
            raise
        return code
