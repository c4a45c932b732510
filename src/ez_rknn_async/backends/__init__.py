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

__all__ = ["Backend", "Runner", "SlotSpec", "ModelSource", "choose_backend", "load_backend"]

_MODULES = {
    "onnxruntime": "ez_rknn_async.backends.onnxruntime",
    "rknn": "ez_rknn_async.backends.rknn.backend",
    "openvino": "ez_rknn_async.backends.openvino",
}
_INSTALL_HINT = {
    "onnxruntime": "pip install 'ez-rknn-async[onnxruntime]'",
    "openvino": "pip install 'ez-rknn-async[openvino]'",
    "rknn": "install the board's librknnrt.so or set EZ_RKNN_RUNTIME_LIB",
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


def choose_backend(source: ModelSource, options: ProviderOptions) -> str:
    """``backend`` option if given, else ONNX models -> onnxruntime, anything else -> rknn."""
    if options.backend is not None:
        return options.backend
    return "onnxruntime" if source.looks_like_onnx else "rknn"


def load_backend(
    source: ModelSource,
    options: ProviderOptions,
    *,
    sess_options: Any = None,
    providers: Any = None,
    share_with: Optional[Backend] = None,
) -> Backend:
    name = choose_backend(source, options)
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
