"""Backend selection: which runtime serves a model.

Each backend lives in its own module and exposes
``load(model, options, *, sess_options=None, providers=None, share_with=None) -> Backend``.
Modules are imported only when chosen, so neither onnxruntime nor librknnrt is needed to import
the package.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any, Optional, Union

from ..options import ProviderOptions
from .base import Backend, Runner, SlotSpec
from .rknn3 import model as rknpu3_model

__all__ = ["Backend", "Runner", "SlotSpec", "ModelSource", "choose_backend", "load_backend"]

_MODULES = {
    "onnxruntime": "ez_rknn_async.backends.onnxruntime",
    "rknn": "ez_rknn_async.backends.rknn.backend",
    "rknn3": "ez_rknn_async.backends.rknn3.backend",
    "openvino": "ez_rknn_async.backends.openvino",
}
_INSTALL_HINT = {
    "onnxruntime": "pip install 'ez-rknn-async[onnxruntime]'",
    "openvino": "pip install 'ez-rknn-async[openvino]'",
    "rknn": "install the board's librknnrt.so or set EZ_RKNN_RUNTIME_LIB",
    "rknn3": "install librknn3_api.so or set EZ_RKNN3_RUNTIME_LIB",
}


@dataclass(frozen=True)
class ModelSource:
    """The model as the user gave it: its bytes, and its path when it came from a file."""

    data: bytes
    path: Optional[str] = None

    @classmethod
    def from_user(cls, path_or_bytes: Union[str, bytes, os.PathLike[str]]) -> ModelSource:
        if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
            return cls(bytes(path_or_bytes))
        path = os.fspath(path_or_bytes)  # TypeError for anything that is not a path, as in ORT
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        try:
            with open(path, "rb") as file:
                return cls(file.read(), path)
        except OSError as exc:
            raise FileNotFoundError(f"Failed to open model file: {path} ({exc.strerror})") from exc

    @property
    def looks_like_onnx(self) -> bool:
        """ONNX files are protobuf ModelProto: they start with field 1 (ir_version, varint)."""
        if self.path is not None and self.path.lower().endswith(".onnx"):
            return True
        if self.path is not None and self.path.lower().endswith(".rknn"):
            return False
        return self.data[:1] == b"\x08"


def choose_backend(source: ModelSource, options: ProviderOptions, providers: Any = None) -> str:
    """``backend`` option if given, else ``providers=["RKNPU3ExecutionProvider"]``, else ONNX
    models -> onnxruntime, RKNPU3 models (``rknn3.model``: header or companion .weight) ->
    rknn3, anything else -> rknn."""
    if options.backend is not None:
        return options.backend
    names = [p[0] if isinstance(p, (tuple, list)) else p for p in providers or ()]
    if rknpu3_model.PROVIDER in names:
        return "rknn3"
    if source.looks_like_onnx:
        return "onnxruntime"
    return "rknn3" if rknpu3_model.is_rknpu3(source.data, source.path) else "rknn"


def load_backend(
    source: ModelSource,
    options: ProviderOptions,
    *,
    sess_options: Any = None,
    providers: Any = None,
    share_with: Optional[Backend] = None,
) -> Backend:
    name = choose_backend(source, options, providers)
    try:
        module = importlib.import_module(_MODULES[name])
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("ez_rknn_async"):
            raise
        raise ImportError(
            f"the {name} backend needs the package {exc.name!r}: {_INSTALL_HINT[name]}"
        ) from exc
    return module.load(
        source, options, sess_options=sess_options, providers=providers, share_with=share_with
    )
