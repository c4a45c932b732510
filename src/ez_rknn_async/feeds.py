"""Input feeds and output names, normalised once on the caller's thread (pure functions).

Errors name what was wrong: the input, what the model expects and what was given, and every
missing name at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

from .tensors import Dim, TensorSpec

__all__ = [
    "normalize_feed",
    "resolve_outputs",
    "format_shape",
    "check_array",
    "check_tensor",
    "split_batch",
    "copy_for_async",
    "run_option",
]


def format_shape(shape: Sequence[Dim]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def resolve_outputs(output_names: Any, outputs: Sequence[TensorSpec]) -> tuple[int, ...]:
    """Indices of the requested outputs. None or empty -> all, in model order (as onnxruntime)."""
    if not output_names:
        return tuple(range(len(outputs)))
    if isinstance(output_names, (str, bytes)):
        raise TypeError(
            f"output_names must be a list of output names or None, not a string ({output_names!r})"
        )
    index = {spec.name: i for i, spec in enumerate(outputs)}
    try:
        return tuple(index[name] for name in output_names)
    except KeyError:
        unknown = [name for name in output_names if name not in index]
        raise ValueError(
            f"Unknown output name(s) {unknown}; the model's outputs are {list(index)}"
        ) from None
    except TypeError:
        raise TypeError(
            f"output_names must be a list of names or None, got {type(output_names).__name__}"
        ) from None


def normalize_feed(input_feed: Any, inputs: Sequence[TensorSpec]) -> list[np.ndarray]:
    """Arrays in model input order, each checked against its spec.

    ``input_feed`` is a dict name -> value, a list/tuple in input order, or one array for a
    one-input model. Arrays must have one of the spec's accepted dtypes (no silent casting, as in
    onnxruntime); other values (nested lists, scalars) are converted to the spec's dtype.
    """
    values: Sequence[Any]
    if type(input_feed) is dict or isinstance(input_feed, Mapping):  # (the common case first)
        values = _from_mapping(input_feed, inputs)
    elif isinstance(input_feed, (list, tuple)):
        if len(input_feed) != len(inputs):
            raise ValueError(
                f"input_feed has {len(input_feed)} values, the model has {len(inputs)} inputs "
                f"{[spec.name for spec in inputs]}"
            )
        values = input_feed
    elif isinstance(input_feed, np.ndarray):
        if len(inputs) != 1:
            raise ValueError(
                f"a single array was given, but the model has {len(inputs)} inputs "
                f"{[spec.name for spec in inputs]}: pass a dict or a list"
            )
        values = (input_feed,)
    else:
        raise TypeError(
            "input_feed must be a dict, a list/tuple or a numpy array, "
            f"got {type(input_feed).__name__}"
        )
    return [check_array(value, spec) for value, spec in zip(values, inputs)]


def _from_mapping(feed: Mapping, inputs: Sequence[TensorSpec]) -> list[Any]:
    """Values in input order. Every input must be given and nothing else (onnxruntime raises
    ``Invalid input name`` for an extra key: a typo must not pass silently)."""
    try:
        values = [feed[spec.name] for spec in inputs]
    except KeyError:
        values = None
    if values is not None and len(feed) == len(inputs):
        return values
    names = [spec.name for spec in inputs]
    missing = [name for name in names if name not in feed]
    unknown = [name for name in feed if name not in names]
    if not missing:
        raise ValueError(f"Unknown input name(s) {unknown}; the model's inputs are {names}")
    message = f"Required inputs {missing} are missing from input feed {list(feed)}"
    if unknown:
        message += f"; unknown input names {unknown}; the model's inputs are {names}"
    raise ValueError(message)


def check_array(value: Any, spec: TensorSpec, *, role: str = "input") -> np.ndarray:
    """``value`` as an array the backend accepts for ``spec``, or a ValueError/TypeError.

    None and bare bools are refused as onnxruntime refuses them (None would become NaN and True
    1.0 through ``np.asarray``)."""
    if isinstance(value, np.ndarray):
        if value.shape == spec.shape and value.dtype in spec.accepts:
            return value  # exactly the spec's shape (the hot path: every run checks its feed)
        array = value
    elif value is None:
        raise ValueError(
            f"{role} {spec.name!r} is None; give it an array of {format_shape(spec.shape)} "
            f"{spec.dtype} (onnxruntime refuses None as well)"
        )
    elif isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"{role} {spec.name!r}: got the bool {bool(value)}, not a tensor; pass an array of "
            f"{format_shape(spec.shape)} {spec.dtype} (onnxruntime refuses a bare bool as well)"
        )
    else:
        try:
            array = np.asarray(value, dtype=spec.dtype)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{role} {spec.name!r}: cannot convert {type(value).__name__} to a "
                f"{spec.dtype} array ({exc})"
            ) from None
    check_tensor(array.shape, array.dtype, spec, role=role)
    return array


def check_tensor(
    shape: Sequence[int], dtype: np.dtype, spec: TensorSpec, *, role: str = "input"
) -> None:
    """Raise TypeError/ValueError unless a tensor of ``shape``/``dtype`` fits ``spec``: the one
    check behind feeds and zero-copy values. ``role`` names the tensor kind in the message."""
    if dtype not in spec.accepts:
        expected = " or ".join(str(dt) for dt in spec.accepts)
        raise TypeError(
            f"{role} {spec.name!r}: expected dtype {expected} ({spec.type}), got {dtype}"
        )
    expected_shape = spec.shape
    if len(shape) != len(expected_shape):
        raise ValueError(
            f"{role} {spec.name!r}: expected rank {len(expected_shape)} "
            f"{format_shape(expected_shape)}, got rank {len(shape)} {list(shape)}"
        )
    for got, want in zip(shape, expected_shape):
        if got != want and isinstance(want, int) and want >= 0:
            raise ValueError(
                f"{role} {spec.name!r}: expected shape {format_shape(expected_shape)}, "
                f"got {list(shape)}"
            )


def split_batch(
    arrays: Sequence[np.ndarray], inputs: Sequence[TensorSpec]
) -> list[list[np.ndarray]]:
    """Dispatch batch: one single-sample feed per index of axis 0 (shared by every input)."""
    sizes = {array.shape[0] if array.ndim else None for array in arrays}
    if None in sizes:
        raise ValueError("ztu_modelrt_dispatch_batch needs every input to have a batch axis")
    if len(sizes) != 1:
        batch = {spec.name: a.shape[0] for spec, a in zip(inputs, arrays)}
        raise ValueError(f"ztu_modelrt_dispatch_batch: batch size mismatch across inputs {batch}")
    for spec in inputs:
        if isinstance(spec.shape[0], int) and spec.shape[0] not in (0, 1, -1):
            raise ValueError(
                f"ztu_modelrt_dispatch_batch needs a batch dimension of 1 or dynamic; input "
                f"{spec.name!r} has {format_shape(spec.shape)}"
            )
    size = int(sizes.pop())  # type: ignore[arg-type]  # None was rejected above
    if size == 0:
        raise ValueError("ztu_modelrt_dispatch_batch: batch size must be greater than 0")
    return [[array[i : i + 1] for array in arrays] for i in range(size)]


def copy_for_async(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Own copies of the caller's arrays, so they may be reused as soon as the call returns."""
    return [np.array(array, copy=True, order="C") for array in arrays]


def run_option(run_options: Any, key: str) -> Optional[Any]:
    """A run option from a dict or an onnxruntime ``RunOptions`` (``get_run_config_entry``)."""
    if run_options is None:
        return None
    if isinstance(run_options, Mapping):
        return run_options.get(key)
    getter = getattr(run_options, "get_run_config_entry", None)
    if getter is None:
        raise TypeError(
            f"run_options must be None, a dict or an onnxruntime RunOptions, "
            f"got {type(run_options).__name__}"
        )
    try:
        return getter(key)
    except Exception:  # noqa: BLE001 - onnxruntime raises when the key is absent
        return None
