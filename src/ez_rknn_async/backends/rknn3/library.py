"""Finding and loading librknn3_api, with every function's signature written as data.

Loading is lazy (first RKNPU3 session or ``doctor``). The library comes from the
``runtime_library`` provider option, else ``EZ_RKNN3_RUNTIME_LIB``, else the usual system places.
At load the ABI version is read from the exported symbols (``abi.Abi.marker``): a library that
matches neither 1.0 nor 1.1 is refused with an error naming the supported versions; the backend
then checks the version the runtime reports (``rknn3_query(SDK_VERSION)``) against it. A function
of the other version becomes a stub that raises when called. Struct pointers are passed as
``void*`` because their layout depends on the version.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Mapping
from typing import Callable, Optional

from ...errors import RKNNError, RuntimeNotFoundError, RunTimeoutError, UnsupportedRuntimeError
from ..native import LibraryFinder, NativeLibrary, Signature
from .abi import ABIS, CONTEXT_TYPE, ERRORS, SUPPORTED, TIMEOUT, Abi, error_name

__all__ = [
    "ENV_VAR",
    "FIX",
    "SYSTEM_CANDIDATES",
    "SIGNATURES",
    "unsupported",
    "Library3",
    "candidates",
    "load_library",
    "check",
    "detect_abi",
    "version_of",
]

ENV_VAR = "EZ_RKNN3_RUNTIME_LIB"
#: Install targets of the SDK (RKNN3_ABI.md 1.1): /usr/lib on Linux, /vendor/lib64 on Android.
SYSTEM_CANDIDATES = (
    "/usr/lib/librknn3_api.so",
    "/usr/lib64/librknn3_api.so",
    "/usr/lib/aarch64-linux-gnu/librknn3_api.so",
    "/usr/local/lib/librknn3_api.so",
    "/vendor/lib64/librknn3_api.so",
    "librknn3_api.so",
)
FIX = (
    "install librknn3_api.so (rknn3-runtime of airockchip/rknn3-toolkit) into /usr/lib, or set "
    f"{ENV_VAR} (or the runtime_library provider option) to its path"
)


def unsupported(message: str) -> UnsupportedRuntimeError:
    """The error for a librknn3_api of an ABI this binding does not know (naming the known)."""
    return UnsupportedRuntimeError(
        f"{message}; supported librknn3_api ABI versions: {', '.join(SUPPORTED)}",
        -1,
        "RKNN3_ERR_FAIL",
    )


_ctx = CONTEXT_TYPE
_u32, _i32, _u64, _int, _vp, _cp = (
    ctypes.c_uint32,
    ctypes.c_int32,
    ctypes.c_uint64,
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_char_p,
)
_ONLY_10 = "ABI 1.1 (removed)"
_ONLY_11 = "ABI 1.0 (added in 1.1)"

SIGNATURES: tuple[Signature, ...] = (
    # int rknn3_find_devices(rknn3_devices* pdevs);
    Signature("rknn3_find_devices", (_vp,)),
    # int rknn3_init(rknn3_context* context, rknn3_init_extend* init_extend);
    Signature("rknn3_init", (ctypes.POINTER(_ctx), _vp)),
    # int rknn3_dup_context(rknn3_context context_in, rknn3_context* context_out);  (1.0 only)
    Signature("rknn3_dup_context", (_ctx, ctypes.POINTER(_ctx)), missing_on=_ONLY_10),
    # int rknn3_destroy(rknn3_context context);
    Signature("rknn3_destroy", (_ctx,)),
    # int rknn3_load_model_from_data(rknn3_context, const void* model_data, uint64_t model_size,
    #                                const void* weight_data, uint64_t weight_size);
    Signature("rknn3_load_model_from_data", (_ctx, _vp, _u64, _vp, _u64)),
    # int rknn3_model_init(rknn3_context, rknn3_config* config);
    Signature("rknn3_model_init", (_ctx, _vp)),
    # int rknn3_query(rknn3_context context, rknn3_query_cmd cmd, void* info, uint64_t size);
    Signature("rknn3_query", (_ctx, _int, _vp, _u64)),
    # int rknn3_run(rknn3_context, const rknn3_tensor inputs[], uint32_t n_inputs,
    #               rknn3_tensor outputs[], uint32_t n_outputs);
    Signature("rknn3_run", (_ctx, _vp, _u32, _vp, _u32)),
    # rknn3_tensor_mem* rknn3_create_mem(rknn3_context, uint64_t size, int32_t core_id,
    #                                    rknn3_mem_alloc_flags flags);
    Signature("rknn3_create_mem", (_ctx, _u64, _i32, _int), restype=_vp),
    # int rknn3_destroy_mem(rknn3_context, rknn3_tensor_mem* mem);
    Signature("rknn3_destroy_mem", (_ctx, _vp)),
    # int rknn3_mem_sync(rknn3_context, rknn3_tensor_mem* mem, rknn3_mem_sync_mode mode);
    Signature("rknn3_mem_sync", (_ctx, _vp, _int)),
    # int rknn3_set_shape(rknn3_context, int32_t shape_id);  (dynamic-shape models)
    Signature("rknn3_set_shape", (_ctx, _i32)),
    # int rknn3_mem_sync_range(rknn3_context, rknn3_tensor_mem*, rknn3_mem_sync_mode,
    #                          uint64_t offset, uint64_t length);  (1.1 only)
    Signature("rknn3_mem_sync_range", (_ctx, _vp, _int, _u64, _u64), missing_on=_ONLY_11),
)


def check(api: str, code: int) -> None:
    """Raise ``RKNNError`` for a non-zero code (``RunTimeoutError`` for a timed-out run)."""
    if code != 0:
        description = ERRORS.get(code, ("", "unknown error code"))[1]
        name = error_name(code)
        kind = RunTimeoutError if code == TIMEOUT else RKNNError
        raise kind(f"{api} failed: {name} ({code}): {description}", code, name)


def detect_abi(has: Callable[[str], bool], path: str) -> Abi:
    """The ABI whose marker symbol, alone, the library exports."""
    found = [abi for abi in ABIS.values() if has(abi.marker)]
    if len(found) != 1:
        markers = ", ".join(f"{abi.marker} ({abi.version})" for abi in ABIS.values())
        raise unsupported(
            f"{path} exports {'none' if not found else 'all'} of the version markers {markers}, "
            "so its ABI version is unknown"
        )
    return found[0]


def version_of(text: str) -> Optional[str]:
    """``"1.1"`` for ``"1.1.0 (af2989a1)"``: the major.minor that selects the ABI."""
    match = re.search(r"(\d+)\.(\d+)", text)
    return f"{match.group(1)}.{match.group(2)}" if match else None


class Library3(NativeLibrary):
    """A loaded librknn3_api and the ABI its symbols show (``abi``)."""

    def __init__(self, path: str) -> None:
        super().__init__(path, SIGNATURES)
        self.abi = detect_abi(self.has, path)

    def missing_error(self, signature: Signature) -> Exception:
        return RKNNError(
            f"{signature.name} is not available in {self.path} (exists only in "
            f"{signature.missing_on or 'other versions'})",
            -1,
            "RKNN3_ERR_FAIL",
        )


_FINDER = LibraryFinder(ENV_VAR, SYSTEM_CANDIDATES)


def candidates(environ: Optional[Mapping[str, str]] = None) -> list[str]:
    return _FINDER.candidates(environ)


def load_library(
    path: Optional[str] = None, environ: Optional[Mapping[str, str]] = None
) -> Library3:
    """librknn3_api from ``path`` (the runtime_library option) or the usual places."""
    environ = {ENV_VAR: path} if path else environ
    library, why = _FINDER.load(Library3, environ)
    if library is None:
        raise RuntimeNotFoundError(
            f"librknn3_api not found ({why})", FIX, -10, "RKNN3_ERR_DEVICE_UNAVAILABLE"
        )
    return library
