"""The ``ez-rknn`` command: ``info``, ``bench``, ``compare``, ``top``, ``doctor``, ``demo``,
``serve``.

``main(argv)`` parses, runs one command and returns the exit code (``errors.ExitCode``). Known
errors become ``error: ...`` plus ``hint: ...`` on stderr through the one table in ``errors``;
``EZ_RKNN_DEBUG=1`` adds their tracebacks; unknown errors keep theirs.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Optional

from .. import __version__
from .args import RAW
from .commands import COMMANDS
from .commands.serve import TOKEN_ENV, serve_token
from .errors import EXIT_CODE_HELP, ExitCode, explain

__all__ = ["main", "build_parser", "serve_token", "DEBUG_ENV", "TOKEN_ENV"]

#: Set to 1 to print the traceback of known errors too.
DEBUG_ENV = "EZ_RKNN_DEBUG"

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


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; ``--help`` of each command is its manual."""
    parser = argparse.ArgumentParser(
        prog="ez-rknn",
        description="Run and measure neural networks on Rockchip NPUs and CPUs.",
        epilog=_MAIN_EPILOG,
        formatter_class=RAW,
    )
    parser.add_argument("--version", action="version", version=f"ez-rknn-async {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for command in COMMANDS:
        command.register(commands)
    return parser


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
