"""Custom-op plugins: dlopen each library, ask it for its op, refuse duplicates (SPEC.md 4).

A plugin is a shared library exporting ``rknn_custom_op* get_rknn_custom_op(void)``; the runtime
needs the op registered on every context that runs the model. Libraries stay loaded for the life
of the process (ctypes has no safe unload while the runtime may still call into them).
"""

from __future__ import annotations

import ctypes
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .abi import RknnCustomOp

__all__ = ["DEFAULT_PLUGIN_DIR", "PLUGIN_PATTERN", "CustomOp", "plugin_paths", "load_custom_ops"]

#: Where board images keep op plugins (Android: /vendor/lib64).
DEFAULT_PLUGIN_DIR = "/usr/lib/rknpu/op_plugins"
PLUGIN_PATTERN = ("librkcst_", ".so")


@dataclass(frozen=True)
class CustomOp:
    """One op from one plugin: the pointer handed to ``rknn_register_custom_ops``."""

    path: str
    op_type: str
    version: int
    target: int
    pointer: Any  # ctypes.POINTER(RknnCustomOp), owned by the plugin
    library: ctypes.CDLL  # keeps the plugin loaded


def plugin_paths(explicit: Sequence[str], use_default_dir: bool) -> list[tuple[str, bool]]:
    """``(path, required)`` pairs: explicit paths must load; default-dir finds may be skipped."""
    found = [(path, True) for path in explicit]
    if use_default_dir:
        try:
            names = sorted(os.listdir(DEFAULT_PLUGIN_DIR))
        except OSError as exc:
            warnings.warn(
                f"custom op plugin folder {DEFAULT_PLUGIN_DIR} not readable: {exc.strerror}",
                UserWarning,
                stacklevel=3,
            )
            names = []
        found += [
            (os.path.join(DEFAULT_PLUGIN_DIR, name), False)
            for name in names
            if name.startswith(PLUGIN_PATTERN[0]) and name.endswith(PLUGIN_PATTERN[1])
        ]
    return found


def _load_one(path: str) -> CustomOp:
    try:
        library = ctypes.CDLL(path)
    except OSError as exc:
        raise RuntimeError(f"dlopen {path} fail: {exc}") from exc
    try:
        entry = library.get_rknn_custom_op
    except AttributeError:
        raise RuntimeError(f"dlsym fail for get_rknn_custom_op: {path}") from None
    entry.argtypes = ()
    entry.restype = ctypes.POINTER(RknnCustomOp)
    pointer = entry()
    if not pointer:
        raise RuntimeError(f"get_rknn_custom_op returned NULL: {path}")
    op = pointer.contents
    return CustomOp(
        path, op.op_type.decode(errors="replace"), op.version, op.target, pointer, library
    )


def load_custom_ops(explicit: Sequence[str], use_default_dir: bool) -> list[CustomOp]:
    """Load every plugin; RuntimeError for a bad explicit one or a duplicate op definition."""
    ops: list[CustomOp] = []
    for path, required in plugin_paths(explicit, use_default_dir):
        try:
            op = _load_one(path)
        except RuntimeError as exc:
            if required:
                raise
            warnings.warn(f"skipping custom op plugin: {exc}", UserWarning, stacklevel=3)
            continue
        for seen in ops:
            if (seen.op_type, seen.version, seen.target) == (op.op_type, op.version, op.target):
                raise RuntimeError(
                    f"Duplicate custom op definition detected: op_type={op.op_type!r} "
                    f"version={op.version} target={op.target} in {seen.path} and {op.path}"
                )
        ops.append(op)
    return ops
