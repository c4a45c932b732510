"""``ez-rknn doctor [MODEL]``: what this machine's NPU stack is, and what to fix."""

from __future__ import annotations

import argparse

from ..args import RAW, require_file
from ..errors import ExitCode

__all__ = ["register", "run"]

_EPILOG = """\
known-incompatible combinations it names:
  librknnrt older (major.minor) than the rknn-toolkit2 that built the model (the runtime rejects
    the file: "Invalid RKNN model version")
  librknnrt 2.x on an rknpu driver older than 0.9.2 (RKNN SDK 2.x user guide)
  a model converted for another SoC (RKNN_ERR_TARGET_PLATFORM_UNMATCH)
  the mainline 'rocket' driver (Linux 6.18+, /dev/accel/accel*): librknnrt cannot drive it
  librknnrt older than the 2.4.1 this library was written against
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "doctor",
        help="check the kernel driver, runtime, SoC and NPU cores",
        description="Probe the NPU's kernel driver (Rockchip's rknpu, or the mainline 'rocket' "
        "that librknnrt cannot use), the RKNN runtime library, the SoC and its NPU cores, and the "
        "optional packages; print each problem with its fix. Given an .rknn MODEL, also check "
        "the version triangle: kernel driver, librknnrt, and the rknn-toolkit2 that built the "
        f"model. Exit code {int(ExitCode.PROBLEMS)} when there are problems, 0 otherwise.",
        epilog=_EPILOG,
        formatter_class=RAW,
    )
    parser.add_argument(
        "model", nargs="?", metavar="MODEL", help=".rknn file whose toolkit version to check"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..doctor import collect, exit_code, render
    from ..report import Output

    if args.model is not None:
        require_file(args.model)
    report = collect(args.model)
    Output("json" if args.json else "human").result(render(report), report)
    return exit_code(report)
