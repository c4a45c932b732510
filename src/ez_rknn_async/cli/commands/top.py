"""``ez-rknn top``: live per-core NPU load, frequency and SRAM."""

from __future__ import annotations

import argparse
import sys

from ..args import RAW, positive
from ..errors import ExitCode
from ..top import FILES_HELP, run_top

__all__ = ["register", "run"]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "top",
        help="live per-core NPU load, frequency and SRAM",
        description="Sample the NPU every --interval seconds: per-core load, clock and voltage, "
        "devfreq range and governor, SRAM use. A table redrawn in place on a terminal; one "
        "JSON line per sample with --json. Ctrl-C stops it. Exit code "
        f"{int(ExitCode.NO_NPU)} when the load cannot be read (not a board, not root).",
        epilog=FILES_HELP,
        formatter_class=RAW,
    )
    parser.add_argument(
        "--interval",
        type=positive(float),
        default=1.0,
        metavar="SECONDS",
        help="time between samples (default: 1; the driver averages load over about 1 s)",
    )
    parser.add_argument(
        "--count", type=positive(int), metavar="N", help="stop after N samples (default: never)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line per sample")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    run_top(sys.stdout, interval=args.interval, count=args.count, as_json=args.json)
    return ExitCode.OK
