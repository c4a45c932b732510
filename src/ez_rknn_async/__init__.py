"""ez-rknn-async: onnxruntime-style inference with async modes, on Rockchip NPUs and any CPU.

The public names of API.md; everything else is internal.
"""

from __future__ import annotations

from .errors import (
    BackendClosedError,
    BindingClosedError,
    BindingInFlightError,
    InferenceError,
    IOBindingError,
    RKNNError,
    RuntimeNotFoundError,
    SessionBrokenError,
    SessionClosedError,
    SubmitTimeoutError,
    ValueReleasedError,
)
from .iobinding import IOBinding, OrtValue, SessionIOBinding
from .options import (
    RknnProviderOptions,
    Rknpu2ProviderOptions,
    make_provider_options,
    make_rknpu2_provider_options,
)
from .session import InferenceSession
from .tensors import ModelMetadata, NodeArg

__version__ = "0.1.0"

__all__ = [
    "InferenceSession",
    "make_provider_options",
    "make_rknpu2_provider_options",
    "RknnProviderOptions",
    "Rknpu2ProviderOptions",
    "RKNNError",
    "RuntimeNotFoundError",
    "InferenceError",
    "SessionClosedError",
    "BackendClosedError",
    "SessionBrokenError",
    "SubmitTimeoutError",
    "IOBindingError",
    "BindingInFlightError",
    "BindingClosedError",
    "ValueReleasedError",
    "NodeArg",
    "ModelMetadata",
    "OrtValue",
    "IOBinding",
    "SessionIOBinding",
    "__version__",
]

for _name in (
    "InferenceSession",
    "make_provider_options",
    "Rknpu2ProviderOptions",
    "make_rknpu2_provider_options",
    "RknnProviderOptions",
    "Rknpu2ProviderOptions",
    "NodeArg",
    "ModelMetadata",
    "OrtValue",
    "SessionIOBinding",
):
    globals()[_name].__module__ = __name__
del _name
