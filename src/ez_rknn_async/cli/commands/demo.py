"""``ez-rknn demo``: YOLOv8n on the CPU, our modes vs plain onnxruntime (``make demo``)."""

from __future__ import annotations

import argparse
import os

from ..args import positive
from ..errors import ExitCode

__all__ = ["register", "run"]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "demo",
        help="YOLOv8n on the CPU: our modes vs plain onnxruntime (under a minute)",
        description="Run the YOLOv8n 320 model shipped in the nudenet wheel on the CPU in the "
        "three modes and next to plain onnxruntime (one thread, and default threads).",
    )
    parser.add_argument(
        "--time", type=positive(float), default=None, metavar="SECONDS", help="seconds per row"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import run_plan
    from ..demo import demo_plan
    from ..report import DEMO_COLUMNS, Output, bench_header, bench_table

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
