"""Finding and loading librknnrt, with every function's signature written as data.

Loading is lazy (first RKNN session or ``doctor``), so the package imports on machines without
the runtime. The library comes from ``EZ_RKNN_RUNTIME_LIB`` if set, else the usual system places.
A function the loaded library lacks (old runtime, RV1106's librknnmrt, core masks off RK3588/3576)
becomes a stub that raises when *called*, so one missing symbol never breaks loading.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from typing import Optional

from ...errors import RKNNError, RuntimeNotFoundError
from ..native import LibraryFinder, NativeLibrary, Signature
from .abi import (
    CONTEXT_TYPE,
    ERRORS,
    RknnCustomOp,
    RknnInitExtend,
    RknnInput,
    RknnOutput,
    error_name,
)

__all__ = [
    "ENV_VAR",
    "FIX",
    "RuntimeNotFoundError",
    "SYSTEM_CANDIDATES",
    "Signature",
    "SIGNATURES",
    "Library",
    "candidates",
    "load_library",
    "check",
]

ENV_VAR = "EZ_RKNN_RUNTIME_LIB"
#: Where board images put the runtime (RKNN_ABI.md 1); a bare name last lets dlopen search
#: LD_LIBRARY_PATH and the linker cache.
SYSTEM_CANDIDATES = (
    "/usr/lib/librknnrt.so",
    "/usr/lib64/librknnrt.so",
    "/usr/lib/aarch64-linux-gnu/librknnrt.so",
    "/usr/lib/arm-linux-gnueabihf/librknnrt.so",
    "/usr/local/lib/librknnrt.so",
    "/vendor/lib64/librknnrt.so",
    "/vendor/lib/librknnrt.so",
    "/usr/lib/librknnmrt.so",
    "librknnrt.so",
)
FIX = (
    f"install the board's librknnrt.so (rknpu2 runtime from rknn-toolkit2) into /usr/lib, "
    f"or set {ENV_VAR} to its path"
)


_ctx = CONTEXT_TYPE
_u32, _i32, _u64, _int, _vp = (
    ctypes.c_uint32,
    ctypes.c_int32,
    ctypes.c_uint64,
    ctypes.c_int,
    ctypes.c_void_p,
)


SIGNATURES: tuple[Signature, ...] = (
    # int rknn_init(rknn_context* ctx, void* model, uint32_t size, uint32_t flag,
    #               rknn_init_extend* extend);
    Signature("rknn_init", (ctypes.POINTER(_ctx), _vp, _u32, _u32, ctypes.POINTER(RknnInitExtend))),
    # int rknn_dup_context(rknn_context* context_in, rknn_context* context_out);
    Signature(
        "rknn_dup_context", (ctypes.POINTER(_ctx), ctypes.POINTER(_ctx)), missing_on="RV1103/RV1106"
    ),
    # int rknn_destroy(rknn_context ctx);
    Signature("rknn_destroy", (_ctx,)),
    # int rknn_query(rknn_context ctx, rknn_query_cmd cmd, void* info, uint32_t size);
    Signature("rknn_query", (_ctx, _int, _vp, _u32)),
    # int rknn_inputs_set(rknn_context ctx, uint32_t n_inputs, rknn_input inputs[]);
    Signature(
        "rknn_inputs_set", (_ctx, _u32, ctypes.POINTER(RknnInput)), missing_on="RV1103/RV1106"
    ),
    # int rknn_set_core_mask(rknn_context ctx, rknn_core_mask core_mask);
    Signature("rknn_set_core_mask", (_ctx, _int), missing_on="SoCs other than RK3588/RK3576"),
    # int rknn_set_batch_core_num(rknn_context ctx, int core_num);
    Signature("rknn_set_batch_core_num", (_ctx, _int), missing_on="SoCs other than RK3588/RK3576"),
    # int rknn_run(rknn_context ctx, rknn_run_extend* extend);
    Signature("rknn_run", (_ctx, _vp)),
    # int rknn_wait(rknn_context ctx, rknn_run_extend* extend);
    Signature("rknn_wait", (_ctx, _vp), missing_on="every platform (rknn_run blocks)"),
    # int rknn_outputs_get(rknn_context ctx, uint32_t n_outputs, rknn_output outputs[],
    #                      rknn_output_extend* extend);
    Signature(
        "rknn_outputs_get",
        (_ctx, _u32, ctypes.POINTER(RknnOutput), _vp),
        missing_on="RV1103/RV1106",
    ),
    # int rknn_outputs_release(rknn_context ctx, uint32_t n_outputs, rknn_output outputs[]);
    Signature(
        "rknn_outputs_release",
        (_ctx, _u32, ctypes.POINTER(RknnOutput)),
        missing_on="RV1103/RV1106",
    ),
    # rknn_tensor_mem* rknn_create_mem(rknn_context ctx, uint32_t size);
    Signature("rknn_create_mem", (_ctx, _u32), restype=_vp),
    # rknn_tensor_mem* rknn_create_mem2(rknn_context ctx, uint64_t size, uint64_t alloc_flags);
    Signature("rknn_create_mem2", (_ctx, _u64, _u64), restype=_vp),
    # rknn_tensor_mem* rknn_create_mem_from_fd(rknn_context ctx, int32_t fd, void* virt_addr,
    #                                          uint32_t size, int32_t offset);
    Signature("rknn_create_mem_from_fd", (_ctx, _i32, _vp, _u32, _i32), restype=_vp),
    # rknn_tensor_mem* rknn_create_mem_from_phys(rknn_context ctx, uint64_t phys_addr,
    #                                            void* virt_addr, uint32_t size);
    Signature("rknn_create_mem_from_phys", (_ctx, _u64, _vp, _u32), restype=_vp),
    # int rknn_destroy_mem(rknn_context ctx, rknn_tensor_mem* mem);
    Signature("rknn_destroy_mem", (_ctx, _vp)),
    # int rknn_set_weight_mem(rknn_context ctx, rknn_tensor_mem* mem);
    Signature("rknn_set_weight_mem", (_ctx, _vp)),
    # int rknn_set_internal_mem(rknn_context ctx, rknn_tensor_mem* mem);
    Signature("rknn_set_internal_mem", (_ctx, _vp)),
    # int rknn_set_io_mem(rknn_context ctx, rknn_tensor_mem* mem, rknn_tensor_attr* attr);
    Signature("rknn_set_io_mem", (_ctx, _vp, _vp)),
    # int rknn_set_input_shapes(rknn_context ctx, uint32_t n_inputs, rknn_tensor_attr attr[]);
    Signature("rknn_set_input_shapes", (_ctx, _u32, _vp)),
    # int rknn_mem_sync(rknn_context ctx, rknn_tensor_mem* mem, rknn_mem_sync_mode mode);
    Signature("rknn_mem_sync", (_ctx, _vp, _int)),
    # int rknn_register_custom_ops(rknn_context ctx, rknn_custom_op* op, uint32_t custom_op_num);
    Signature("rknn_register_custom_ops", (_ctx, ctypes.POINTER(RknnCustomOp), _u32)),
)


def check(api: str, code: int) -> None:
    """Raise ``RKNNError`` for a non-zero code: ``rknn_run failed: RKNN_ERR_FAIL (-1): ...``."""
    if code != 0:
        description = ERRORS.get(code, ("", "unknown error code"))[1]
        name = error_name(code)
        raise RKNNError(f"{api} failed: {name} ({code}): {description}", code, name)


class Library(NativeLibrary):
    """A loaded librknnrt: each function of ``SIGNATURES`` is an attribute (or a raising stub)."""

    def __init__(self, path: str) -> None:
        super().__init__(path, SIGNATURES)

    def missing_error(self, signature: Signature) -> Exception:
        where = f" (not provided on {signature.missing_on})" if signature.missing_on else ""
        return RKNNError(
            f"{signature.name} is not available in {self.path}{where}; a newer librknnrt may "
            "provide it",
            -1,
            "RKNN_ERR_FAIL",
        )


_FINDER = LibraryFinder(ENV_VAR, SYSTEM_CANDIDATES)


def candidates(environ: Optional[Mapping[str, str]] = None) -> list[str]:
    """Where the runtime is looked for, in order: the env var (alone, if set), then the system."""
    return _FINDER.candidates(environ)


def load_library(environ: Optional[Mapping[str, str]] = None) -> Library:
    """The runtime library (loaded once per path); RKNNError with the fix when there is none."""
    library, why = _FINDER.load(Library, environ)
    if library is None:
        raise RuntimeNotFoundError(f"librknnrt not found ({why})", FIX)
    return library
