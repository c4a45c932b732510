"""The librknnrt C ABI as data: struct layouts, constants and error names (shared/RKNN_ABI.md).

Structs are written as field tables (the C declaration sits above each) and turned into ctypes
classes by one function, so the same table yields the native layout and, in the tests, the armhf
layout (4-byte pointers and contexts) to check against the documented offsets.
"""

from __future__ import annotations

import ctypes
from enum import IntEnum, IntFlag
from typing import Optional

from .. import native

__all__ = [
    "CONTEXT_TYPE",
    "STRUCT_FIELDS",
    "build_structs",
    "STRUCTS",
    "RknnInputOutputNum",
    "RknnTensorAttr",
    "RknnInput",
    "RknnOutput",
    "RknnInitExtend",
    "RknnSdkVersion",
    "RknnCustomString",
    "RknnCustomOp",
    "RknnTensorMem",
    "RknnInputRange",
    "Query",
    "TensorType",
    "TensorFormat",
    "QntType",
    "CoreMask",
    "InitFlag",
    "MemSyncMode",
    "ERRORS",
    "error_name",
    "MAX_DIMS",
]

MAX_DIMS = 16
MAX_NAME_LEN = 256

#: typedef uint64_t rknn_context;  (uint32_t on 32-bit ARM)
CONTEXT_TYPE = ctypes.c_uint64 if ctypes.sizeof(ctypes.c_void_p) == 8 else ctypes.c_uint32

#: struct -> ((field, C type), ...): "ptr" any pointer, "context" an rknn_context, "T[n]" an array.
STRUCT_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    # typedef struct { uint32_t n_input; uint32_t n_output; } rknn_input_output_num;
    "rknn_input_output_num": (("n_input", "u32"), ("n_output", "u32")),
    # typedef struct { uint32_t index; uint32_t n_dims; uint32_t dims[16]; char name[256];
    #   uint32_t n_elems; uint32_t size; rknn_tensor_format fmt; rknn_tensor_type type;
    #   rknn_tensor_qnt_type qnt_type; int8_t fl; int32_t zp; float scale; uint32_t w_stride;
    #   uint32_t size_with_stride; uint8_t pass_through; uint32_t h_stride; } rknn_tensor_attr;
    "rknn_tensor_attr": (
        ("index", "u32"),
        ("n_dims", "u32"),
        ("dims", f"u32[{MAX_DIMS}]"),
        ("name", f"char[{MAX_NAME_LEN}]"),
        ("n_elems", "u32"),
        ("size", "u32"),
        ("fmt", "enum"),
        ("type", "enum"),
        ("qnt_type", "enum"),
        ("fl", "i8"),
        ("zp", "i32"),
        ("scale", "f32"),
        ("w_stride", "u32"),
        ("size_with_stride", "u32"),
        ("pass_through", "u8"),
        ("h_stride", "u32"),
    ),
    # typedef struct { uint32_t index; void* buf; uint32_t size; uint8_t pass_through;
    #   rknn_tensor_type type; rknn_tensor_format fmt; } rknn_input;
    "rknn_input": (
        ("index", "u32"),
        ("buf", "ptr"),
        ("size", "u32"),
        ("pass_through", "u8"),
        ("type", "enum"),
        ("fmt", "enum"),
    ),
    # typedef struct { uint8_t want_float; uint8_t is_prealloc; uint32_t index; void* buf;
    #   uint32_t size; } rknn_output;
    "rknn_output": (
        ("want_float", "u8"),
        ("is_prealloc", "u8"),
        ("index", "u32"),
        ("buf", "ptr"),
        ("size", "u32"),
    ),
    # typedef struct { void* virt_addr; uint64_t phys_addr; int32_t fd; int32_t offset;
    #   uint32_t size; uint32_t flags; void* priv_data; } rknn_tensor_mem;
    "rknn_tensor_mem": (
        ("virt_addr", "ptr"),
        ("phys_addr", "u64"),
        ("fd", "i32"),
        ("offset", "i32"),
        ("size", "u32"),
        ("flags", "u32"),
        ("priv_data", "ptr"),
    ),
    # typedef struct { rknn_context ctx; int32_t real_model_offset; uint32_t real_model_size;
    #   int32_t model_buffer_fd; uint32_t model_buffer_flags; uint8_t reserved[112]; }
    #   rknn_init_extend;
    "rknn_init_extend": (
        ("ctx", "context"),
        ("real_model_offset", "i32"),
        ("real_model_size", "u32"),
        ("model_buffer_fd", "i32"),
        ("model_buffer_flags", "u32"),
        ("reserved", "u8[112]"),
    ),
    # typedef struct { uint64_t frame_id; int32_t non_block; int32_t timeout_ms;
    #   int32_t fence_fd; } rknn_run_extend;
    "rknn_run_extend": (
        ("frame_id", "u64"),
        ("non_block", "i32"),
        ("timeout_ms", "i32"),
        ("fence_fd", "i32"),
    ),
    # typedef struct { uint64_t frame_id; } rknn_output_extend;
    "rknn_output_extend": (("frame_id", "u64"),),
    # typedef struct { char api_version[256]; char drv_version[256]; } rknn_sdk_version;
    "rknn_sdk_version": (("api_version", "char[256]"), ("drv_version", "char[256]")),
    # typedef struct { char string[1024]; } rknn_custom_string;
    "rknn_custom_string": (("string", "char[1024]"),),
    # typedef struct { uint32_t total_weight_size; uint32_t total_internal_size;
    #   uint64_t total_dma_allocated_size; uint32_t total_sram_size; uint32_t free_sram_size;
    #   uint32_t reserved[10]; } rknn_mem_size;
    "rknn_mem_size": (
        ("total_weight_size", "u32"),
        ("total_internal_size", "u32"),
        ("total_dma_allocated_size", "u64"),
        ("total_sram_size", "u32"),
        ("free_sram_size", "u32"),
        ("reserved", "u32[10]"),
    ),
    # typedef struct { int64_t run_duration; } rknn_perf_run;
    "rknn_perf_run": (("run_duration", "i64"),),
    # typedef struct { char* perf_data; uint64_t data_len; } rknn_perf_detail;
    "rknn_perf_detail": (("perf_data", "ptr"), ("data_len", "u64")),
    # typedef struct { uint32_t index; uint32_t shape_number; rknn_tensor_format fmt;
    #   char name[256]; uint32_t dyn_range[512][16]; uint32_t n_dims; } rknn_input_range;
    "rknn_input_range": (
        ("index", "u32"),
        ("shape_number", "u32"),
        ("fmt", "enum"),
        ("name", f"char[{MAX_NAME_LEN}]"),
        ("dyn_range", f"u32[{512 * MAX_DIMS}]"),
        ("n_dims", "u32"),
    ),
    # The head of rknn_custom_op (rknn_custom_op.h): { uint32_t version; rknn_target_type target;
    #   char op_type[256]; ... kernel fields and callbacks }. Plugins own the struct; we only
    #   read these fields (to reject duplicates) and pass the plugin's pointer on.
    "rknn_custom_op": (
        ("version", "u32"),
        ("target", "enum"),
        ("op_type", f"char[{MAX_NAME_LEN}]"),
    ),
}


def build_structs(
    pointer: type = ctypes.c_void_p, context: Optional[type] = None
) -> dict[str, type[ctypes.Structure]]:
    """ctypes classes for ``STRUCT_FIELDS``. Pass ``pointer=context=c_uint32`` for armhf."""
    return native.build_structs(STRUCT_FIELDS, pointer, context or CONTEXT_TYPE)


STRUCTS = build_structs()
RknnInputOutputNum = STRUCTS["rknn_input_output_num"]
RknnTensorAttr = STRUCTS["rknn_tensor_attr"]
RknnInput = STRUCTS["rknn_input"]
RknnOutput = STRUCTS["rknn_output"]
RknnInitExtend = STRUCTS["rknn_init_extend"]
RknnSdkVersion = STRUCTS["rknn_sdk_version"]
RknnCustomString = STRUCTS["rknn_custom_string"]
RknnCustomOp = STRUCTS["rknn_custom_op"]
RknnTensorMem = STRUCTS["rknn_tensor_mem"]
RknnInputRange = STRUCTS["rknn_input_range"]


class Query(IntEnum):
    """rknn_query_cmd (the ones the backend issues)."""

    IN_OUT_NUM = 0
    INPUT_ATTR = 1
    OUTPUT_ATTR = 2
    SDK_VERSION = 5
    CUSTOM_STRING = 7
    NATIVE_INPUT_ATTR = 8
    NATIVE_OUTPUT_ATTR = 9
    NATIVE_NHWC_INPUT_ATTR = 10
    NATIVE_NHWC_OUTPUT_ATTR = 11
    INPUT_DYNAMIC_RANGE = 13
    CURRENT_INPUT_ATTR = 14
    CURRENT_OUTPUT_ATTR = 15


class TensorType(IntEnum):
    FLOAT32 = 0
    FLOAT16 = 1
    INT8 = 2
    UINT8 = 3
    INT16 = 4
    UINT16 = 5
    INT32 = 6
    UINT32 = 7
    INT64 = 8
    BOOL = 9
    INT4 = 10
    BFLOAT16 = 11


class TensorFormat(IntEnum):
    NCHW = 0
    NHWC = 1
    NC1HWC2 = 2
    UNDEFINED = 3


class QntType(IntEnum):
    NONE = 0
    DFP = 1
    AFFINE_ASYMMETRIC = 2


class CoreMask(IntEnum):
    AUTO = 0
    CORE_0 = 1
    CORE_1 = 2
    CORE_2 = 4
    CORE_0_1 = 3
    CORE_0_1_2 = 7
    ALL = 0xFFFF


class InitFlag(IntFlag):
    """rknn_init flags the backend uses."""

    NONE = 0
    SHARE_WEIGHT_MEM = 0x20


class MemSyncMode(IntEnum):
    """``rknn_mem_sync`` modes."""

    TO_DEVICE = 1
    FROM_DEVICE = 2
    BIDIRECTIONAL = 3


#: return code -> (name as in rknn_api.h, what it usually means)
ERRORS: dict[int, tuple[str, str]] = {
    0: ("RKNN_SUCC", "success"),
    -1: ("RKNN_ERR_FAIL", "execution failed or unsupported call"),
    -2: ("RKNN_ERR_TIMEOUT", "timed out"),
    -3: ("RKNN_ERR_DEVICE_UNAVAILABLE", "the NPU or its driver is unavailable"),
    -4: ("RKNN_ERR_MALLOC_FAIL", "memory allocation failed"),
    -5: ("RKNN_ERR_PARAM_INVALID", "invalid parameter"),
    -6: ("RKNN_ERR_MODEL_INVALID", "not an RKNN model, or a corrupt one"),
    -7: ("RKNN_ERR_CTX_INVALID", "invalid or destroyed context"),
    -8: ("RKNN_ERR_INPUT_INVALID", "invalid input"),
    -9: ("RKNN_ERR_OUTPUT_INVALID", "invalid output"),
    -10: ("RKNN_ERR_DEVICE_UNMATCH", "runtime and driver versions do not match; update both"),
    -11: ("RKNN_ERR_INCOMPATILE_PRE_COMPILE_MODEL", "pre-compiled model is incompatible"),
    -12: (
        "RKNN_ERR_INCOMPATILE_OPTIMIZATION_LEVEL_VERSION",
        "model optimization level is incompatible with this runtime",
    ),
    -13: (
        "RKNN_ERR_TARGET_PLATFORM_UNMATCH",
        "model built for another SoC, or an option this NPU does not support",
    ),
}


def error_name(code: int) -> str:
    """``RKNN_ERR_MODEL_INVALID`` for -6; codes outside the table read ``RKNN_ERR_UNKNOWN``."""
    return ERRORS.get(code, ("RKNN_ERR_UNKNOWN", ""))[0]
