"""ez-rknn-async: onnxruntime-style inference with async modes, on Rockchip NPUs and any CPU.

The public names of API.md; everything else is internal.
"""

from __future__ import annotations

from . import errors
from .engine.stats import SessionStats, SlotStats
from .errors import *  # noqa: F403 - every typed error is public (errors.__all__)
from .iobinding import IOBinding, OrtValue, SessionIOBinding
from .options import (
    RknnProviderOptions,
    Rknpu2ProviderOptions,
    Rknpu3ProviderOptions,
    make_provider_options,
    make_rknpu2_provider_options,
    make_rknpu3_provider_options,
)
from .session import InferenceSession
from .tensors import ModelMetadata, NodeArg

__version__ = "0.1.0"

__all__ = [
    "InferenceSession",
    "make_provider_options",
    "make_rknpu2_provider_options",
    "make_rknpu3_provider_options",
    "RknnProviderOptions",
    "Rknpu2ProviderOptions",
    "Rknpu3ProviderOptions",
    *errors.__all__,
    "NodeArg",
    "ModelMetadata",
    "SessionStats",
    "SlotStats",
    "OrtValue",
    "IOBinding",
    "SessionIOBinding",
    "__version__",
]

for _name in (
    "InferenceSession",
    "make_provider_options",
    "make_rknpu3_provider_options",
    "Rknpu2ProviderOptions",
    "Rknpu3ProviderOptions",
    "NodeArg",
    "ModelMetadata",
    "SessionStats",
    "SlotStats",
    "OrtValue",
    "SessionIOBinding",
):
    globals()[_name].__module__ = __name__
del _name
