"""ez-rknn-async: onnxruntime-style inference with async modes, on Rockchip NPUs and any CPU.

The public names of API.md; everything else is internal.
"""

from __future__ import annotations

from .errors import RKNNError, RunTimeoutError, SessionClosedError, SubmitTimeoutError
from .iobinding import IOBinding, OrtValue, SessionIOBinding
from .options import Rknpu3ProviderOptions, make_provider_options, make_rknpu3_provider_options
from .session import InferenceSession
from .tensors import ModelMetadata, NodeArg

__version__ = "0.1.0"

__all__ = [
    "InferenceSession",
    "make_provider_options",
    "make_rknpu3_provider_options",
    "Rknpu3ProviderOptions",
    "RKNNError",
    "RunTimeoutError",
    "SessionClosedError",
    "SubmitTimeoutError",
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
    "make_rknpu3_provider_options",
    "Rknpu3ProviderOptions",
    "NodeArg",
    "ModelMetadata",
    "OrtValue",
    "SessionIOBinding",
):
    globals()[_name].__module__ = __name__
del _name
