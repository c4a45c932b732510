"""Models and inputs for the CLI: the demo's YOLOv8n, ``--shape``/``--input`` specs, random feeds.

Specs are parsed before any model loads, so a typo costs milliseconds, not a model load.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..tensors import ONNX_TYPE_TO_DTYPE
from .errors import MissingDependencyError, UsageError

__all__ = [
    "ShapeSpec",
    "InputSpec",
    "Feed",
    "parse_shape_spec",
    "parse_input_spec",
    "build_feed",
    "find_demo_model",
    "DEMO_MODEL_FILE",
]

#: The YOLOv8n (320x320) detector the ``nudenet`` wheel ships; small, real, and pip-installable.
DEMO_MODEL_FILE = "320n.onnx"
_DIMS = re.compile(r"^\[?\s*(\d+(?:\s*[x,]\s*\d+)*)\s*\]?$")


@dataclass(frozen=True)
class ShapeSpec:
    """``--shape [name=]1x3x640x640``: the shape to feed; ``name`` None means the only input."""

    name: Optional[str]
    dims: tuple[int, ...]


@dataclass(frozen=True)
class InputSpec:
    """``--input [name=]file.npy``: feed this array instead of random data."""

    name: Optional[str]
    path: str


@dataclass
class Feed:
    """The arrays a benchmark feeds, and notes on choices the user should know about."""

    arrays: dict[str, np.ndarray]
    notes: list[str] = field(default_factory=list)


def _split_name(text: str, option: str) -> tuple[Optional[str], str]:
    name, sep, value = text.partition("=")
    if not sep:
        return None, text
    if not name:
        raise UsageError(f"bad {option} {text!r}: empty input name before '='")
    return name, value


def parse_shape_spec(text: str) -> ShapeSpec:
    """Parse ``name=1x3x640x640`` (also ``1,3,640,640`` or ``[1,3,640,640]``; name optional)."""
    name, dims_text = _split_name(text, "--shape")
    match = _DIMS.match(dims_text.strip())
    dims = tuple(int(d) for d in re.split(r"\s*[x,]\s*", match.group(1))) if match else ()
    if not dims or any(d <= 0 for d in dims):
        raise UsageError(
            f"bad --shape {text!r}: expected NAME=DIMS with positive integer dims",
            hint="for example --shape images=1x3x640x640 (see `ez-rknn info MODEL` for names)",
        )
    return ShapeSpec(name, dims)


def parse_input_spec(text: str) -> InputSpec:
    """Parse ``name=file.npy`` (name optional for a one-input model)."""
    name, path = _split_name(text, "--input")
    if not path:
        raise UsageError(
            f"bad --input {text!r}: expected NAME=FILE.npy",
            hint="for example --input images=frame.npy",
        )
    return InputSpec(name, path)


def _resolve_name(name: Optional[str], names: Sequence[str], option: str) -> str:
    if name is None:
        if len(names) != 1:
            raise UsageError(
                f"{option} needs an input name: the model has {len(names)} inputs "
                f"({', '.join(names)})",
                hint=f"write {option} NAME=..., with NAME one of: {', '.join(names)}",
            )
        return names[0]
    if name not in names:
        raise UsageError(
            f"{option}: the model has no input named {name!r}",
            hint=f"its inputs are: {', '.join(names)}",
        )
    return name


def _fixed(dim: Any) -> bool:
    return isinstance(dim, int) and dim >= 0


def _fit_shape(
    name: str, model_shape: Sequence[Any], given: Optional[tuple[int, ...]], notes: list[str]
) -> tuple[int, ...]:
    """The concrete shape to feed: the user's, checked against the fixed dims, or the model's.

    A dynamic batch (axis 0) becomes 1, with a note. Any other dynamic dim (an image size, a
    sequence length) has no safe default, so it is an error that shows the ``--shape`` to write.
    """
    if given is None:
        dynamic = [i for i, d in enumerate(model_shape) if not _fixed(d)]
        if [i for i in dynamic if i > 0]:
            template = "x".join(str(d) if _fixed(d) else "N" for d in model_shape)
            raise UsageError(
                f"input {name!r} has dynamic dims {list(model_shape)}; random data needs a shape",
                hint=f"give one, e.g. --shape {name}={template.replace('N', '1', 1)} with every N "
                "set (see `ez-rknn info MODEL`)",
            )
        if dynamic:
            notes.append(f"input {name!r} has a dynamic batch {model_shape[0]!r}; using 1")
        return tuple(d if _fixed(d) else 1 for d in model_shape)
    if len(given) != len(model_shape):
        raise UsageError(
            f"--shape {name}: {len(given)} dims given, the model's input has {len(model_shape)} "
            f"{list(model_shape)}"
        )
    for axis, (want, have) in enumerate(zip(model_shape, given)):
        if _fixed(want) and want != have:
            raise UsageError(
                f"--shape {name}: dim {axis} is fixed to {want} in the model, got {have}",
                hint=f"the model's shape is {list(model_shape)}; only dynamic dims can be set",
            )
    return given


def _random_array(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Plausible data: [0, 1) floats, full-range bytes, small non-negative ints (safe as ids)."""
    if dtype.kind == "f":
        return rng.random(shape, dtype=np.float32).astype(dtype, copy=False)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    if dtype.itemsize == 1:
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    return rng.integers(0, 10, size=shape, dtype=dtype)


def _load_npy(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input file not found: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise UsageError(f"cannot read {path} as a .npy array: {exc}") from exc


def build_feed(
    inputs: Sequence[Any],
    shapes: Sequence[ShapeSpec] = (),
    files: Sequence[InputSpec] = (),
    seed: int = 0,
) -> Feed:
    """One array per model input (``inputs``: NodeArgs), from files or random (seeded) data."""
    names = [node.name for node in inputs]
    given_shapes = {_resolve_name(s.name, names, "--shape"): s.dims for s in shapes}
    given_files = {_resolve_name(f.name, names, "--input"): f.path for f in files}
    rng = np.random.default_rng(seed)
    feed = Feed({})
    for node in inputs:
        if node.name in given_files:
            feed.arrays[node.name] = _load_npy(given_files[node.name])
            continue
        dtype = ONNX_TYPE_TO_DTYPE.get(node.type)
        if dtype is None:
            raise UsageError(
                f"cannot make random data for input {node.name!r} of type {node.type}",
                hint=f"give it with --input {node.name}=FILE.npy",
            )
        shape = _fit_shape(node.name, node.shape, given_shapes.get(node.name), feed.notes)
        feed.arrays[node.name] = _random_array(rng, shape, dtype)
    return feed


def find_demo_model() -> str:
    """Path of the YOLOv8n ``320n.onnx`` inside the installed ``nudenet`` package.

    Found with ``find_spec`` and never imported: nudenet's own dependencies (opencv) are not needed
    and usually not installed.
    """
    spec = importlib.util.find_spec("nudenet")
    hint = "pip install --no-deps nudenet"
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("the demo model (package 'nudenet', YOLOv8n 320)", hint)
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, DEMO_MODEL_FILE)
        if os.path.isfile(path):
            return path
    raise MissingDependencyError(f"{DEMO_MODEL_FILE} inside the 'nudenet' package", hint)
