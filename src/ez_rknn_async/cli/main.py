"""The ``ez-rknn`` command: ``info``, ``bench``, ``compare``, ``top``, ``doctor``, ``demo``,
``serve``.

``main(argv)`` parses, runs one command and returns the exit code (``errors.ExitCode``). Known
errors become ``error: ...`` plus ``hint: ...`` on stderr through the one table in ``errors``;
``EZ_RKNN_DEBUG=1`` adds their tracebacks; unknown errors keep theirs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any, Callable, Optional

from .. import __version__
from .bench import COMPARATORS, MODES, Budget, Plan, parse_compare, parse_modes, run_plan
from .errors import EXIT_CODE_HELP, ExitCode, UsageError, explain
from .models import parse_input_spec, parse_shape_spec

__all__ = ["main", "build_parser", "serve_token", "DEBUG_ENV", "TOKEN_ENV"]

#: Set to 1 to print the traceback of known errors too.
DEBUG_ENV = "EZ_RKNN_DEBUG"
_DEFAULT_SECONDS = 10.0

_MAIN_EPILOG = f"""\
commands:
  info MODEL     inputs, outputs, native tensors, metadata; which backend runs it and why
  bench MODEL    fps and latency of every calling mode, optionally next to onnxruntime/OpenVINO
  compare MODEL REFERENCE
                 the same inputs through two models (.rknn on the NPU vs .onnx on the CPU):
                 cosine, errors, mismatches, top-k agreement per output; a CI check
  top            live per-core NPU load, frequency and SRAM (Rockchip boards, as root)
  doctor         which runtime library, SoC and NPU cores this machine has, and what to fix
  demo           YOLOv8n on the CPU: run / run_async / run_pipeline vs plain onnxruntime
  serve MODEL..  an inference server (KServe v2 / Triton protocol) over HTTP and gRPC

exit codes:
{EXIT_CODE_HELP}

Set {DEBUG_ENV}=1 to see the traceback behind an error.
"""

_DOCTOR_EPILOG = """\
known-incompatible combinations it names:
  librknnrt older (major.minor) than the rknn-toolkit2 that built the model (the runtime rejects
    the file: "Invalid RKNN model version")
  librknnrt 2.x on an rknpu driver older than 0.9.2 (RKNN SDK 2.x user guide)
  a model converted for another SoC (RKNN_ERR_TARGET_PLATFORM_UNMATCH)
  the mainline 'rocket' driver (Linux 6.18+, /dev/accel/accel*): librknnrt cannot drive it
  librknnrt older than the 2.4.1 this library was written against
"""

_COMPARE_DESCRIPTION = """\
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

_COMPARE_EPILOG = f"""\
exit codes: 0 when done (and, with --min-cosine, every output passed); {int(ExitCode.MISMATCH)} when
an output's cosine is below --min-cosine or it cannot be compared (different sizes, nothing
finite); the usual codes otherwise (see ez-rknn --help).

examples:
  ez-rknn compare model.rknn model.onnx                       random inputs, one run
  ez-rknn compare model.rknn model.onnx --input images=cat.jpg --runs 5
  ez-rknn compare model.rknn model.onnx --min-cosine 0.999 --json   in CI
  ez-rknn compare model.onnx model.onnx --reference-backend openvino
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
  ez-rknn bench model.rknn --schedule 0,1,2 --compare ztu    the original library, same modes
"""


def _number(kind: Callable[[str], Any], minimum: float, strict: bool) -> Callable[[str], Any]:
    """An argparse type: a finite ``kind`` above ``minimum`` (or at it, unless ``strict``)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < minimum or (strict and value == minimum):
            bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    return _number(kind, 0, strict=True)


def _non_negative(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    return _number(kind, 0, strict=False)


def _cosine_bound(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a cosine is between -1 and 1, got {text}")
    return value


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


def _input_options(group: argparse._ArgumentGroup, shape_example: str) -> None:
    """``--input`` and ``--shape``, as ``bench`` and ``compare`` take them."""
    group.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="[NAME=]FILE",
        help="feed this .npy, .npz or image to input NAME (repeatable; NAME optional for one "
        "input)",
    )
    group.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="[NAME=]DIMS",
        help=f"shape for random data, e.g. {shape_example} (sets dynamic dims; repeatable)",
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
    _input_options(what, "images=1x3x640x640")
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

    compare = commands.add_parser(
        "compare",
        help="the same inputs through two models: how far apart each output is",
        description=_COMPARE_DESCRIPTION,
        epilog=_COMPARE_EPILOG,
        formatter_class=raw,
    )
    compare.add_argument("model", metavar="MODEL", help="the model to check (.rknn, .onnx)")
    compare.add_argument("reference", metavar="REFERENCE", help="the model taken as truth")
    feeds = compare.add_argument_group("inputs")
    _input_options(feeds, "x=1x3x48x320")
    feeds.add_argument(
        "--runs", type=_positive(int), default=1, metavar="N", help="input sets to run (default 1)"
    )
    feeds.add_argument(
        "--seed", type=_non_negative(int), default=0, metavar="S", help="first seed (default 0)"
    )
    checks = compare.add_argument_group("tolerance and verdict")
    checks.add_argument(
        "--atol", type=_non_negative(float), default=1e-3, help="absolute tolerance (default 1e-3)"
    )
    checks.add_argument(
        "--rtol", type=_non_negative(float), default=1e-2, help="relative tolerance (default 1e-2)"
    )
    checks.add_argument(
        "--min-cosine",
        type=_cosine_bound,
        metavar="X",
        help=f"fail (exit code {int(ExitCode.MISMATCH)}) when an output's cosine is below X",
    )
    compare.add_argument("--json", action="store_true", help="print JSON instead of the table")
    _backend_option(compare)
    compare.add_argument(
        "--reference-backend",
        choices=("onnxruntime", "rknn", "openvino"),
        help="force REFERENCE's backend (default: from the model)",
    )
    compare.set_defaults(func=_cmd_compare)

    doctor = commands.add_parser(
        "doctor",
        help="check the kernel driver, runtime, SoC and NPU cores",
        description="Probe the NPU's kernel driver (Rockchip's rknpu, or the mainline 'rocket' "
        "that librknnrt cannot use), the RKNN runtime library, the SoC and its NPU cores, and the "
        "optional packages; print each problem with its fix. Given an .rknn MODEL, also check "
        "the version triangle: kernel driver, librknnrt, and the rknn-toolkit2 that built the "
        f"model. Exit code {int(ExitCode.PROBLEMS)} when there are problems, 0 otherwise.",
        epilog=_DOCTOR_EPILOG,
        formatter_class=raw,
    )
    doctor.add_argument(
        "model", nargs="?", metavar="MODEL", help=".rknn file whose toolkit version to check"
    )
    doctor.add_argument("--json", action="store_true", help="print JSON instead of tables")
    doctor.set_defaults(func=_cmd_doctor)

    top = commands.add_parser(
        "top",
        help="live per-core NPU load, frequency and SRAM",
        description="Sample the NPU every --interval seconds: per-core load, clock and voltage, "
        "devfreq range and governor, SRAM use. A table redrawn in place on a terminal; one "
        "JSON line per sample with --json. Ctrl-C stops it. Exit code "
        f"{int(ExitCode.NO_NPU)} when the load cannot be read (not a board, not root).",
        epilog=_top_files_help(),
        formatter_class=raw,
    )
    top.add_argument(
        "--interval",
        type=_positive(float),
        default=1.0,
        metavar="SECONDS",
        help="time between samples (default: 1; the driver averages load over about 1 s)",
    )
    top.add_argument(
        "--count", type=_positive(int), metavar="N", help="stop after N samples (default: never)"
    )
    top.add_argument("--json", action="store_true", help="one JSON object per line per sample")
    top.set_defaults(func=_cmd_top)

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
    _serve_parser(commands)
    return parser


#: The environment variable ``serve`` reads its bearer token from (``--token`` wins).
TOKEN_ENV = "EZ_RKNN_SERVE_TOKEN"

_SERVE_DESCRIPTION = """\
Serve models over the Open Inference Protocol (KServe v2, the protocol of Triton), so existing
clients work unchanged: tritonclient (HTTP and gRPC), KServe clients, curl.

  HTTP  GET  /v2/health/live  /v2/health/ready  /v2  /v2/models/NAME  /v2/models/NAME/ready
        POST /v2/models/NAME/infer   (JSON tensors, or the binary tensor data extension)
        GET  /metrics                (Prometheus)
  gRPC  inference.GRPCInferenceService: ServerLive, ServerReady, ModelReady, ServerMetadata,
        ModelMetadata, ModelInfer

Each MODEL is [NAME=]PATH (NAME defaults to the file's stem) and gets its own session.
Ready means every model is loaded and has run one warm-up inference. Requests run through
the session's asyncio path; at most --max-inflight per model are admitted, others wait up to
the model's submit_timeout_ms and then get 503 + Retry-After (gRPC UNAVAILABLE). SIGTERM or
SIGINT: stop accepting, answer every request in flight, close the sessions, exit 0, all
within --shutdown-timeout: an inference still running then (a hung NPU) is abandoned, its
session left broken and leaked rather than freed under, and the exit code is 1. A model
whose session is broken answers not-ready (HTTP 503, gRPC ready=false), and so does
/v2/health/ready; its requests get 503 (UNAVAILABLE); the other models keep serving.
"""

_SERVE_EPILOG = f"""\
config file (--config, JSON), per-model options:
  {{"models": {{"detector": {{"path": "yolov8n.rknn", "schedule": [0, 1, 2],
                            "max_queue_size": 6, "submit_timeout_ms": 2000,
                            "max_inflight": 48, "max_request_bytes": 16777216,
                            "warmup_shapes": {{"images": [1, 3, 640, 640]}}}}}}}}
  keys: path, any make_provider_options key (backend, schedule, threads_per_core, ...),
  max_inflight, max_request_bytes, warmup_shapes (for dynamic inputs)

security: binds 127.0.0.1 unless --host says otherwise; with --token (or {TOKEN_ENV})
every endpoint but /v2/health/* needs "Authorization: Bearer TOKEN" (gRPC: metadata
"authorization"); no path from a request is ever opened.

exit codes:
    0  stopped by SIGTERM or SIGINT after answering every request in flight; every
       session closed cleanly
    1  a model failed to load or to run its warm-up inference, or a port is taken; or, at
       the stop, a session had to be abandoned: an inference did not finish within
       --shutdown-timeout (or the session was already broken); the "stop:" line names it
    2  bad command line or --config (the message names the model and the key)
    3  a model file does not exist
    5  the [serve] extra is missing (pip command printed)

examples:
  ez-rknn serve yolov8n.rknn
  ez-rknn serve det=yolov8n.rknn cls=mobilenet.onnx --host 0.0.0.0 --port 8000
  ez-rknn serve --config models.json --token "$(cat /etc/ez-rknn/token)"
"""


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535 (0: any free port), got {value}")
    return value


def _serve_parser(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve models over HTTP and gRPC (KServe v2 / Triton protocol)",
        description=_SERVE_DESCRIPTION,
        epilog=_SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "models", nargs="*", metavar="[NAME=]MODEL", help=".onnx or .rknn files to serve"
    )
    serve.add_argument("--config", metavar="FILE", help="JSON file of models and their options")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument(
        "--port", type=_port, default=8000, help="HTTP port (default: 8000; 0: any free port)"
    )
    serve.add_argument(
        "--grpc-port", type=_port, default=8001, help="gRPC port (default: 8001; 0: any free)"
    )
    serve.add_argument(
        "--token", help=f"bearer token required on every endpoint but health (or {TOKEN_ENV})"
    )
    serve.add_argument(
        "--max-inflight",
        type=_positive(int),
        default=64,
        metavar="N",
        help="requests admitted at once per model (default: 64; config: max_inflight)",
    )
    serve.add_argument(
        "--max-request-mb",
        type=_positive(float),
        default=64.0,
        metavar="MB",
        help="largest request body per model (default: 64; config: max_request_bytes)",
    )
    serve.add_argument(
        "--shutdown-timeout",
        type=_positive(float),
        default=30.0,
        metavar="SECONDS",
        help="the bound of a stop: requests in flight are answered and sessions closed "
        "within it, else abandoned (exit 1) (default: 30)",
    )
    serve.set_defaults(func=_cmd_serve)


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


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import ComparePlan, compare_json, compare_table, run_compare
    from .report import Output
    from .similarity import Tolerance

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


def _cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import collect, exit_code, render
    from .report import Output

    if args.model is not None:
        _require_file(args.model)
    report = collect(args.model)
    Output("json" if args.json else "human").result(render(report), report)
    return exit_code(report)


def _top_files_help() -> str:
    from .top import FILES_HELP

    return FILES_HELP


def _cmd_top(args: argparse.Namespace) -> int:
    from .top import run_top

    run_top(sys.stdout, interval=args.interval, count=args.count, as_json=args.json)
    return ExitCode.OK


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


def serve_token(option: Optional[str]) -> Optional[str]:
    """The bearer token: ``--token``, else ``$EZ_RKNN_SERVE_TOKEN``, else none; an empty value
    counts as none (``Environment=EZ_RKNN_SERVE_TOKEN=`` in a unit file)."""
    return option or os.environ.get(TOKEN_ENV) or None


def _cmd_serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from ..backends.rknn.kernel import read_core_loads
    from .errors import MODEL_HINT, MissingDependencyError, RejectedInputError, user_input

    try:
        from ..serve.config import ConfigError, model_specs
        from ..serve.repository import WarmupError
        from ..serve.server import LOGGER, ServerOptions, serve
    except ImportError as exc:
        raise MissingDependencyError(
            f"the server's packages ({exc.name})", "pip install 'ez-rknn-async[serve]'"
        ) from exc
    try:
        specs = model_specs(
            args.models,
            args.config,
            max_inflight=args.max_inflight,
            max_request_bytes=int(args.max_request_mb * 1024 * 1024),
        )
    except ConfigError as exc:
        raise UsageError(str(exc), hint="see `ez-rknn serve --help`") from exc
    for spec in specs:
        _require_file(spec.path)
    handler = logging.StreamHandler()  # this run's stderr: removed when the run ends
    handler.setFormatter(logging.Formatter("%(asctime)s ez-rknn serve %(message)s"))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    options = ServerOptions(
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port,
        token=serve_token(args.token),
        shutdown_timeout=args.shutdown_timeout,
    )
    try:
        with user_input(MODEL_HINT):  # a model or option the library refuses
            # per-core NPU load for /metrics, read at each scrape where the board exposes it
            abandoned = asyncio.run(serve(specs, options, npu_load=read_core_loads))
    except WarmupError as exc:
        raise RejectedInputError(str(exc), hint=exc.hint) from exc
    finally:
        LOGGER.removeHandler(handler)
    return ExitCode.ERROR if abandoned else ExitCode.OK


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
