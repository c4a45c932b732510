"""Argument types and options that more than one command takes.

Each type raises ``argparse.ArgumentTypeError``, so argparse prints ``error: argument --x: ...``
and exits with ``ExitCode.USAGE`` (2) before any model is loaded.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any, Callable, TypeVar, Union

__all__ = [
    "RAW",
    "BACKENDS",
    "convert",
    "positive",
    "non_negative",
    "backend_option",
    "input_options",
    "require_file",
]

#: Our help texts are laid out by hand (tables, examples): argparse must not re-wrap them.
RAW = argparse.RawDescriptionHelpFormatter
#: The backends ``--backend`` (and ``compare --reference-backend``) may force.
BACKENDS = ("onnxruntime", "rknn", "openvino")

T = TypeVar("T")
_Group = Union[argparse.ArgumentParser, "argparse._ArgumentGroup"]


def convert(kind: Callable[[str], T], text: str, error: str) -> T:
    """``kind(text)``; argparse's ``error`` (saying what was expected) when ``kind`` refuses it.
    The one conversion step of every numeric argument type."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(error) from None


def _number(kind: Callable[[str], Any], minimum: float, strict: bool) -> Callable[[str], Any]:
    """An argparse type: a finite ``kind`` above ``minimum`` (or at it, unless ``strict``)."""

    def parse(text: str) -> Any:
        value = convert(kind, text, f"not a number: {text!r}")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < minimum or (strict and value == minimum):
            bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


def positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type: a finite ``kind`` > 0."""
    return _number(kind, 0, strict=True)


def non_negative(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type: a finite ``kind`` >= 0."""
    return _number(kind, 0, strict=False)


def backend_option(parser: _Group) -> None:
    """``--backend``, as ``info``, ``bench`` and ``compare`` take it."""
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="force a backend (default: from the model: .rknn -> rknn, ONNX -> onnxruntime)",
    )


def input_options(group: _Group, shape_example: str) -> None:
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


def require_file(path: str) -> None:
    """Fail with ``ExitCode.NOT_FOUND`` before any backend tries (and words it differently)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model not found: {path}")
