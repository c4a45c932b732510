"""RKNPU3 model files: telling them from RKNPU2 ones, and finding the companion ``.weight``.

An RKNPU3 export is two files, ``name.rknn`` (graph and commands) and ``name.weight``, which must
come from the same export (RKNN3_ABI.md 4.1). RKNPU2 files start with ``RKNN`` (or ``CYPTRKNN``
when encrypted). The RKNPU3 magic ``RKNX`` is unconfirmed by public sources, so a ``.rknn`` path
with a ``.weight`` beside it also counts as RKNPU3 (RKNPU2 has no weight files);
``providers=["RKNPU3ExecutionProvider"]`` forces the choice.
"""

from __future__ import annotations

import os
from typing import Optional

__all__ = ["PROVIDER", "MAGICS", "companion_weight", "is_rknpu3", "read_weight"]

PROVIDER = "RKNPU3ExecutionProvider"
MAGICS = (b"RKNX",)
_RKNPU2_MAGICS = (b"RKNN", b"CYPTRKNN")


def companion_weight(model_path: str) -> str:
    """``dir/name.weight`` for ``dir/name.rknn`` (same basename)."""
    return os.path.splitext(model_path)[0] + ".weight"


def is_rknpu3(data: bytes, path: Optional[str]) -> bool:
    if data.startswith(MAGICS):
        return True
    if data.startswith(_RKNPU2_MAGICS) or path is None:
        return False
    return path.lower().endswith(".rknn") and os.path.isfile(companion_weight(path))


def read_weight(model_path: Optional[str], weight_path: Optional[str]) -> bytes:
    """The weight bytes: ``weight_path`` if given, else the model path's companion file."""
    if weight_path is None and model_path is None:
        raise ValueError(
            "an RKNPU3 model given as bytes needs its .weight file: pass "
            "make_rknpu3_provider_options(weight_path=...)"
        )
    if weight_path is not None:
        where, how = weight_path, "provider option 'weight_path'"
    else:
        assert model_path is not None
        where, how = companion_weight(model_path), f"the companion of {model_path}"
    try:
        with open(where, "rb") as file:
            return file.read()
    except OSError as exc:
        hint = "" if weight_path is not None else " (or set the weight_path provider option)"
        raise FileNotFoundError(
            f"RKNPU3 weight file {where} ({how}) cannot be read: {exc.strerror}{hint}"
        ) from exc
