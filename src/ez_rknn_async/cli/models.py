"""Models and inputs for the CLI: the demo's YOLOv8n, ``--shape``/``--input`` specs, random feeds.

Specs are parsed before any model loads, so a typo costs milliseconds, not a model load. An input
file is a ``.npy`` array, a ``.npz`` archive (arrays named after the inputs) or an image, read with
Pillow when it is installed and resized to the input's height and width: uint8 inputs get the
pixels (0-255), float inputs pixels / 255 (0-1); any other normalisation goes into a ``.npy``.
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
    "load_image",
    "DEMO_MODEL_FILE",
    "IMAGE_SUFFIXES",
]

#: The YOLOv8n (320x320) detector the ``nudenet`` wheel ships; small, real, and pip-installable.
DEMO_MODEL_FILE = "320n.onnx"
#: File name endings read as images (with Pillow).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_PILLOW = "pip install 'ez-rknn-async[cli]'  (or: pip install pillow)"
_DIMS = re.compile(r"^\[?\s*(\d+(?:\s*[x,]\s*\d+)*)\s*\]?$")


@dataclass(frozen=True)
class ShapeSpec:
    """``--shape [name=]1x3x640x640``: the shape to feed; ``name`` None means the only input."""

    name: Optional[str]
    dims: tuple[int, ...]


@dataclass(frozen=True)
class InputSpec:
    """``--input [name=]file``: feed this array (.npy, .npz or an image) instead of random data;
    ``name`` None means the only input, or for a .npz every input it has an array for."""

    name: Optional[str]
    path: str


@dataclass
class Feed:
    """The arrays a benchmark feeds, where each came from (a file's path or ``"random"``), and
    notes on choices the user should know about."""

    arrays: dict[str, np.ndarray]
    notes: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)


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
            f"bad --input {text!r}: expected NAME=FILE (.npy, .npz or an image)",
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


def _require(path: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input file not found: {path}")


def _load_npy(path: str) -> np.ndarray:
    _require(path)
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise UsageError(f"cannot read {path} as a .npy array: {exc}") from exc


def _load_npz(path: str) -> dict[str, np.ndarray]:
    _require(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as exc:
        raise UsageError(f"cannot read {path} as a .npz archive: {exc}") from exc


def _image_layout(name: str, shape: Sequence[Any]) -> tuple[int, int, int]:
    """(channel axis, H axis, W axis) of an image-shaped input: channels of 1, 3 or 4 next to the
    batch (NCHW) or last (NHWC), on 3-D or 4-D inputs."""
    rank = len(shape)
    if rank in (3, 4):
        first = rank - 3
        if shape[first] in (1, 3, 4):
            return first, first + 1, first + 2
        if shape[-1] in (1, 3, 4):
            return rank - 1, first, first + 1
    raise UsageError(
        f"input {name!r} has shape {list(shape)}, not an image (N)CHW or (N)HWC with 1, 3 or 4 "
        "channels",
        hint=f"give it as an array: --input {name}=FILE.npy",
    )


def load_image(name: str, path: str, shape: Sequence[Any], dtype: np.dtype) -> np.ndarray:
    """The image at ``path`` as input ``name`` of ``shape`` (dynamic H/W: the image's own size;
    a dynamic batch: 1) and ``dtype`` (uint8: 0-255, float: 0-1, other integers: 0-255)."""
    channel, h_axis, w_axis = _image_layout(name, shape)
    _require(path)
    try:
        from PIL import Image
    except ImportError as exc:
        raise MissingDependencyError("Pillow (needed to read images for --input)", _PILLOW) from exc
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[int(shape[channel])]
    try:
        with Image.open(path) as image:
            image = image.convert(mode)
            height = shape[h_axis] if _fixed(shape[h_axis]) else image.height
            width = shape[w_axis] if _fixed(shape[w_axis]) else image.width
            bilinear = getattr(Image, "Resampling", Image).BILINEAR  # Pillow < 9.1 has no enum
            pixels = np.asarray(image.resize((int(width), int(height)), bilinear))
    except OSError as exc:
        raise UsageError(f"cannot read {path} as an image: {exc}") from exc
    hwc = pixels.reshape(int(height), int(width), -1)
    array = np.moveaxis(hwc, -1, 0) if channel < h_axis else hwc
    if len(shape) == 4:
        batch = shape[0] if _fixed(shape[0]) and shape[0] > 0 else 1
        array = np.repeat(array[None], batch, axis=0)
    if dtype.kind == "f":
        return (array.astype(np.float32) / 255.0).astype(dtype)
    return array.astype(dtype)


def _files_by_input(
    files: Sequence[InputSpec], names: Sequence[str]
) -> dict[str, tuple[str, Optional[np.ndarray]]]:
    """Each given input's file, with its array when it was already taken out of a .npz."""
    given: dict[str, tuple[str, Optional[np.ndarray]]] = {}
    for spec in files:
        if spec.name is None and spec.path.lower().endswith(".npz"):
            arrays = _load_npz(spec.path)
            unknown = sorted(set(arrays) - set(names))
            if unknown:
                raise UsageError(
                    f"--input {spec.path}: arrays {', '.join(unknown)} name no input of the model",
                    hint=f"its inputs are: {', '.join(names)}",
                )
            given.update((name, (spec.path, array)) for name, array in arrays.items())
            continue
        name = _resolve_name(spec.name, names, "--input")
        if spec.path.lower().endswith(".npz"):
            arrays = _load_npz(spec.path)
            if name not in arrays and len(arrays) != 1:
                raise UsageError(
                    f"--input {name}={spec.path}: no array named {name!r} "
                    f"(it has {', '.join(arrays) or 'none'})"
                )
            given[name] = (
                spec.path,
                arrays[name] if name in arrays else next(iter(arrays.values())),
            )
            continue
        given[name] = (spec.path, None)
    return given


def build_feed(
    inputs: Sequence[Any],
    shapes: Sequence[ShapeSpec] = (),
    files: Sequence[InputSpec] = (),
    seed: int = 0,
) -> Feed:
    """One array per model input (``inputs``: NodeArgs), from files or random (seeded) data."""
    names = [node.name for node in inputs]
    given_shapes = {_resolve_name(s.name, names, "--shape"): s.dims for s in shapes}
    given_files = _files_by_input(files, names)
    rng = np.random.default_rng(seed)
    feed = Feed({})
    for node in inputs:
        dtype = ONNX_TYPE_TO_DTYPE.get(node.type)
        source, array = given_files.get(node.name, (None, None))
        feed.sources[node.name] = source or "random"
        if array is not None:
            feed.arrays[node.name] = array
            continue
        if source is not None and not source.lower().endswith(IMAGE_SUFFIXES):
            feed.arrays[node.name] = _load_npy(source)
            continue
        if dtype is None:
            raise UsageError(
                f"cannot make data for input {node.name!r} of type {node.type}",
                hint=f"give it with --input {node.name}=FILE.npy",
            )
        if source is not None:
            shape = given_shapes.get(node.name) or node.shape
            feed.arrays[node.name] = load_image(node.name, source, shape, dtype)
            continue
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
