"""``ez-rknn info MODEL``: describe a model and the backend chosen for it."""

from __future__ import annotations

import argparse

from ..args import RAW, backend_option, require_file
from ..errors import ExitCode

__all__ = ["register", "run"]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "info",
        help="describe a model and the backend chosen for it",
        description="Inputs and outputs (name, shape, type, layout), the runtime's native "
        "tensors (RKNN), metadata, and which backend serves the model and why.",
        formatter_class=RAW,
    )
    parser.add_argument("model", metavar="MODEL", help=".onnx or .rknn file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    backend_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..info import describe, render
    from ..report import Output

    require_file(args.model)
    info = describe(args.model, args.backend)
    Output("json" if args.json else "human").result(render(info), info)
    return ExitCode.OK
