"""The librknn3_api C ABI as data: two struct tables (ABI 1.0 and 1.1), constants, error names.

Facts from shared/RKNN3_ABI.md (sections 2-3). The two SDK versions are not binary-compatible:
``rknn3_tensor_attr`` grows from 512 to 584 bytes, and query commands 8/9 flip from NATIVE to
ORIGIN. Each version is an ``Abi`` record built from one table, so the backend never hard-codes a
layout: it asks ``ABIS[version]``. ``STRUCT_FIELDS`` keeps each C declaration above its table.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from enum import IntEnum

from .. import native

__all__ = [
    "CONTEXT_TYPE",
    "STRUCT_FIELDS",
    "Abi",
    "ABIS",
    "SUPPORTED",
    "Query",
    "TensorType",
    "Layout",
    "ERRORS",
    "TIMEOUT",
    "error_name",
]

#: typedef uint64_t rknn3_context;  (uint32_t on 32-bit ARM)
CONTEXT_TYPE = ctypes.c_uint64 if ctypes.sizeof(ctypes.c_void_p) == 8 else ctypes.c_uint32

_ATTR_HEAD = (
    ("index", "u32"),
    ("name", "char[256]"),
    ("n_dims", "u32"),
    ("shape", "u32[16]"),
    ("aligned_size", "u64"),
    ("n_stride", "u32"),
    ("stride", "u64[17]"),
    ("n_elems", "u32"),
    ("dtype", "enum"),
    ("layout", "enum"),
    ("qnt_type", "enum"),
    ("qnt_info", "rknn3_quant_info"),
)

_COMMON: dict[str, tuple[tuple[str, str], ...]] = {
    # typedef struct { uint32_t n_input; uint32_t n_output; } rknn3_input_output_num;
    "rknn3_input_output_num": (("n_input", "u32"), ("n_output", "u32")),
    # typedef struct { float scale; int32_t zero_point; } rknn3_quant_info;
    "rknn3_quant_info": (("scale", "f32"), ("zero_point", "i32")),
    # typedef struct { void* virt_addr; uint64_t phys_addr; int32_t fd; uint64_t buffer_id;
    #   uint64_t offset; uint64_t size; uint64_t flags; int32_t core_id; void* priv_data;
    #   rknn3_mem_type mem_type; } rknn3_tensor_mem;
    "rknn3_tensor_mem": (
        ("virt_addr", "ptr"),
        ("phys_addr", "u64"),
        ("fd", "i32"),
        ("buffer_id", "u64"),
        ("offset", "u64"),
        ("size", "u64"),
        ("flags", "u64"),
        ("core_id", "i32"),
        ("priv_data", "ptr"),
        ("mem_type", "enum"),
    ),
    # typedef struct { rknn3_tensor_mem* mem; rknn3_tensor_attr* attr; } rknn3_tensor;
    "rknn3_tensor": (("mem", "ptr"), ("attr", "ptr")),
    # typedef struct { int32_t priority; uint32_t run_timeout; uint32_t run_core_mask;
    #   uint8_t user_mem_weight; uint8_t user_mem_internal; uint8_t user_sram;
    #   uint8_t reserved[128]; } rknn3_config;
    "rknn3_config": (
        ("priority", "i32"),
        ("run_timeout", "u32"),
        ("run_core_mask", "u32"),
        ("user_mem_weight", "u8"),
        ("user_mem_internal", "u8"),
        ("user_sram", "u8"),
        ("reserved", "u8[128]"),
    ),
    # typedef struct { char* device_id; uint8_t reserved[128]; } rknn3_init_extend;
    "rknn3_init_extend": (("device_id", "ptr"), ("reserved", "u8[128]")),
    # typedef struct { char api_version[256]; char drv_version[256]; } rknn3_sdk_version;
    "rknn3_sdk_version": (("api_version", "char[256]"), ("drv_version", "char[256]")),
    # typedef struct { char string[1024]; } rknn3_custom_string;
    "rknn3_custom_string": (("string", "char[1024]"),),
    # typedef struct { uint64_t total; uint64_t free; } rknn3_node_mem_info;
    "rknn3_node_mem_info": (("total", "u64"), ("free", "u64")),
    # typedef struct { uint32_t node_num; uint64_t sys_total; uint64_t sys_free;
    #   rknn3_node_mem_info node_mem_info[128]; } rknn3_dev_mem_info;
    "rknn3_dev_mem_info": (
        ("node_num", "u32"),
        ("sys_total", "u64"),
        ("sys_free", "u64"),
        ("node_mem_info", "rknn3_node_mem_info[128]"),
    ),
    # typedef struct { char id[64]; char type[64]; rknn3_dev_mem_info mem_info; } rknn3_device;
    "rknn3_device": (("id", "char[64]"), ("type", "char[64]"), ("mem_info", "rknn3_dev_mem_info")),
    # typedef struct { uint32_t n_devices; rknn3_device devices[64]; } rknn3_devices;
    "rknn3_devices": (("n_devices", "u32"), ("devices", "rknn3_device[64]")),
    # typedef struct { uint32_t n_shapes; int32_t current_shape_id; } rknn3_shape_config;
    "rknn3_shape_config": (("n_shapes", "u32"), ("current_shape_id", "i32")),
    # typedef struct { int32_t shape_id; uint32_t n_inputs; rknn3_tensor_attr* input_attrs;
    #   uint32_t n_outputs; rknn3_tensor_attr* output_attrs; uint8_t is_default;
    #   uint8_t reserved[31]; } rknn3_shape_info;
    "rknn3_shape_info": (
        ("shape_id", "i32"),
        ("n_inputs", "u32"),
        ("input_attrs", "ptr"),
        ("n_outputs", "u32"),
        ("output_attrs", "ptr"),
        ("is_default", "u8"),
        ("reserved", "u8[31]"),
    ),
    # typedef struct { int32_t core_id; uint64_t weight_size; uint64_t internal_size;
    #   uint8_t reserved[32]; } rknn3_core_mem_size;
    "rknn3_core_mem_size": (
        ("core_id", "i32"),
        ("weight_size", "u64"),
        ("internal_size", "u64"),
        ("reserved", "u8[32]"),
    ),
}

#: ABI version -> struct -> ((field, C type), ...); only rknn3_tensor_attr differs.
STRUCT_FIELDS: dict[str, dict[str, tuple[tuple[str, str], ...]]] = {
    # typedef struct { uint32_t index; char name[256]; uint32_t n_dims; uint32_t shape[16];
    #   uint64_t aligned_size; uint32_t n_stride; uint64_t stride[17]; uint32_t n_elems;
    #   rknn3_tensor_type dtype; rknn3_tensor_layout layout; rknn3_tensor_qnt_type qnt_type;
    #   rknn3_quant_info qnt_info; int32_t core_id; } rknn3_tensor_attr;   (1.0: 512 bytes)
    "1.0": {**_COMMON, "rknn3_tensor_attr": (*_ATTR_HEAD, ("core_id", "i32"))},
    # 1.1 (584 bytes) inserts before core_id: uint32_t n_orig_dims; uint32_t orig_shape[16];
    #   rknn3_tensor_layout orig_layout;
    "1.1": {
        **_COMMON,
        "rknn3_tensor_attr": (
            *_ATTR_HEAD,
            ("n_orig_dims", "u32"),
            ("orig_shape", "u32[16]"),
            ("orig_layout", "enum"),
            ("core_id", "i32"),
        ),
    },
}


class Query(IntEnum):
    """rknn3_query_cmd values the backend issues (8/9 mean different things per version)."""

    IN_OUT_NUM = 0
    INPUT_ATTR = 1
    OUTPUT_ATTR = 2
    SDK_VERSION = 5
    CUSTOM_STRING = 7
    SWAPPED_INPUT_ATTR = 8  # 1.0: NATIVE_INPUT_ATTR; 1.1: ORIGIN_INPUT_ATTR
    SWAPPED_OUTPUT_ATTR = 9
    DEVICE_MEM_INFO = 12
    CORE_NUMBER = 13
    DYNAMIC_SHAPE_CONFIG = 15


@dataclass(frozen=True)
class Abi:
    """One ABI version: its ctypes classes and which query gives the native attrs.

    ``marker`` is a symbol only this version's library exports (how ``library`` tells them
    apart before any context exists).
    """

    version: str
    structs: dict[str, type[ctypes.Structure]]
    native_input: Query
    native_output: Query
    marker: str

    def struct(self, name: str) -> type[ctypes.Structure]:
        return self.structs[name]

    @property
    def origin_input(self) -> Query:
        """The query of the original-layout input attrs (the one ``native_input`` is not)."""
        swapped = self.native_input == Query.SWAPPED_INPUT_ATTR
        return Query.INPUT_ATTR if swapped else Query.SWAPPED_INPUT_ATTR

    @property
    def origin_output(self) -> Query:
        swapped = self.native_output == Query.SWAPPED_OUTPUT_ATTR
        return Query.OUTPUT_ATTR if swapped else Query.SWAPPED_OUTPUT_ATTR


def _abi(version: str, native_input: Query, native_output: Query, marker: str) -> Abi:
    structs = native.build_structs(STRUCT_FIELDS[version], ctypes.c_void_p, CONTEXT_TYPE)
    return Abi(version, structs, native_input, native_output, marker)


#: 1.0 answers INPUT_ATTR with the original layout and NATIVE_INPUT_ATTR (8) with the native one;
#: 1.1 renamed 8 to ORIGIN_INPUT_ATTR with the opposite meaning, so INPUT_ATTR is native there.
ABIS: dict[str, Abi] = {
    "1.0": _abi("1.0", Query.SWAPPED_INPUT_ATTR, Query.SWAPPED_OUTPUT_ATTR, "rknn3_dup_context"),
    "1.1": _abi("1.1", Query.INPUT_ATTR, Query.OUTPUT_ATTR, "rknn3_mem_sync_range"),
}
SUPPORTED = tuple(ABIS)


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
    UINT64 = 9
    BOOL = 10
    INT4 = 11


class Layout(IntEnum):
    UNDEFINED = 0
    NCHW = 1
    NHWC = 2
    NC1HWC2 = 3


TIMEOUT = -7

#: return code -> (name as in rknn3_api.h, what it usually means)
ERRORS: dict[int, tuple[str, str]] = {
    0: ("RKNN3_SUCCESS", "success"),
    -1: ("RKNN3_ERR_FAIL", "execution failed"),
    -2: ("RKNN3_ERR_ARGUMENT_INVALID", "invalid argument"),
    -3: ("RKNN3_ERR_MODEL_INVALID", "not an RKNN3 model, or .rknn and .weight of other exports"),
    -4: ("RKNN3_ERR_CTX_INVALID", "invalid or destroyed context"),
    -5: ("RKNN3_ERR_RUN_TASK_FAILED", "the task failed on the NPU"),
    -6: ("RKNN3_ERR_OUT_OF_MEMORY", "out of memory"),
    TIMEOUT: ("RKNN3_ERR_TIMEOUT", "timed out (run_timeout_ms)"),
    -8: ("RKNN3_ERR_INPUT_INVALID", "invalid input"),
    -9: ("RKNN3_ERR_OUTPUT_INVALID", "invalid output"),
    -10: ("RKNN3_ERR_DEVICE_UNAVAILABLE", "device unavailable (is rknn3_transfer_proxy running?)"),
    -11: ("RKNN3_ERR_DEVICE_UNMATCH", "several devices attached: a device id is required"),
    -12: ("RKNN3_ERR_TARGET_PLATFORM_UNMATCH", "model exported for another target"),
    -13: ("RKNN3_ERR_COMMUNICATION", "no answer from the proxy/device"),
    -14: ("RKNN3_ERR_MEM_SYNC_FAILED", "memory sync failed"),
    -15: ("RKNN3_ERR_KEY_INVALID", "invalid decryption key"),
    -16: ("RKNN3_ERR_DECRYPT_FAILED", "decryption failed"),
    -17: ("RKNN3_ERR_WEIGHT_LOAD_NOT_PREPARED", "weight chunk sent before model_init"),
    -18: (
        "RKNN3_ERR_INCOMPATIBLE_VERSION",
        "librknn3_api, rknn3_transfer_proxy and the firmware are not one version",
    ),
}


def error_name(code: int) -> str:
    """``RKNN3_ERR_TIMEOUT`` for -7; codes outside the table read ``RKNN3_ERR_UNKNOWN``."""
    return ERRORS.get(code, ("RKNN3_ERR_UNKNOWN", ""))[0]
