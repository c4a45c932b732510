/*
 * The librknn3_api C ABI as the emulator implements it, written from shared/RKNN3_ABI.md (sections
 * 2 and 3). Only the types and functions the ez-rknn RKNPU3 backend (and its layout tests) use are
 * declared. RKNN3_EMU_ABI selects the ABI: 10 (SDK V1.0.0) or 11 (SDK V1.1.0, the default); the
 * two are not binary-compatible (rknn3_tensor_attr is 512 vs 584 bytes).
 */
#ifndef RKNN3_EMU_API_H
#define RKNN3_EMU_API_H

#include <stdbool.h>
#include <stdint.h>

#ifndef RKNN3_EMU_ABI
#define RKNN3_EMU_ABI 11
#endif

#define RKNN3_MAX_DIMS 16
#define RKNN3_MAX_STRIDE_DIMS 17
#define RKNN3_MAX_NAME_LEN 256
#define RKNN3_MAX_DEVS 64
#define RKNN3_MAX_DEV_LEN 64
#define RKNN3_MAX_NPU_NODE_NUM 128

typedef uint64_t rknn3_context;

enum {
    RKNN3_SUCCESS = 0,
    RKNN3_ERR_FAIL = -1,
    RKNN3_ERR_ARGUMENT_INVALID = -2,
    RKNN3_ERR_MODEL_INVALID = -3,
    RKNN3_ERR_CTX_INVALID = -4,
    RKNN3_ERR_RUN_TASK_FAILED = -5,
    RKNN3_ERR_OUT_OF_MEMORY = -6,
    RKNN3_ERR_TIMEOUT = -7,
    RKNN3_ERR_INPUT_INVALID = -8,
    RKNN3_ERR_OUTPUT_INVALID = -9,
    RKNN3_ERR_DEVICE_UNAVAILABLE = -10,
    RKNN3_ERR_DEVICE_UNMATCH = -11,
    RKNN3_ERR_COMMUNICATION = -13,
    RKNN3_ERR_MEM_SYNC_FAILED = -14,
    RKNN3_ERR_INCOMPATIBLE_VERSION = -18, /* 1.1 */
};

typedef enum {
    RKNN3_QUERY_IN_OUT_NUM = 0,
    RKNN3_QUERY_INPUT_ATTR = 1,
    RKNN3_QUERY_OUTPUT_ATTR = 2,
    RKNN3_QUERY_SDK_VERSION = 5,
    RKNN3_QUERY_CORE_MEM_SIZE = 6,
    RKNN3_QUERY_CUSTOM_STRING = 7,
    /* 1.0: RKNN3_QUERY_NATIVE_INPUT_ATTR / _OUTPUT_ATTR; 1.1: RKNN3_QUERY_ORIGIN_* (flipped) */
    RKNN3_QUERY_NATIVE_OR_ORIGIN_INPUT_ATTR = 8,
    RKNN3_QUERY_NATIVE_OR_ORIGIN_OUTPUT_ATTR = 9,
    RKNN3_QUERY_DEVICE_MEM_INFO = 12,
    RKNN3_QUERY_CORE_NUMBER = 13,
    RKNN3_QUERY_DYNAMIC_SHAPE_CONFIG = 15,
} rknn3_query_cmd;

typedef enum {
    RKNN3_TENSOR_FLOAT32 = 0,
    RKNN3_TENSOR_FLOAT16 = 1,
    RKNN3_TENSOR_INT8 = 2,
    RKNN3_TENSOR_UINT8 = 3,
} rknn3_tensor_type;

typedef enum {
    RKNN3_TENSOR_QNT_NONE = 0,
    RKNN3_TENSOR_QNT_PER_LAYER_ASYMMETRIC = 2,
} rknn3_tensor_qnt_type;

typedef enum {
    RKNN3_TENSOR_UNDEFINED = 0,
    RKNN3_TENSOR_NCHW = 1,
    RKNN3_TENSOR_NHWC = 2,
    RKNN3_TENSOR_NC1HWC2 = 3,
} rknn3_tensor_layout;

typedef enum {
    RKNN3_MEM_FLAGS_DEFAULT = 0,
    RKNN3_MEM_FLAGS_CACHEABLE = 1,
    RKNN3_MEM_FLAGS_NON_CACHEABLE = 2,
} rknn3_mem_alloc_flags;

typedef enum {
    RKNN3_MEM_SYNC_TO_DEVICE = 1,
    RKNN3_MEM_SYNC_FROM_DEVICE = 2,
    RKNN3_MEM_SYNC_BIDIRECTIONAL = 3,
} rknn3_mem_sync_mode;

typedef enum { RKNN3_MEM_TYPE_NPU_DRAM = 0, RKNN3_MEM_TYPE_EXT_DDR = 1 } rknn3_mem_type;

typedef struct {
    uint32_t n_input;
    uint32_t n_output;
} rknn3_input_output_num;

typedef struct {
    float scale;
    int32_t zero_point;
} rknn3_quant_info;

typedef struct {
    uint32_t index;
    char name[RKNN3_MAX_NAME_LEN];
    uint32_t n_dims;
    uint32_t shape[RKNN3_MAX_DIMS];
    uint64_t aligned_size;
    uint32_t n_stride;
    uint64_t stride[RKNN3_MAX_STRIDE_DIMS];
    uint32_t n_elems;
    rknn3_tensor_type dtype;
    rknn3_tensor_layout layout;
    rknn3_tensor_qnt_type qnt_type;
    rknn3_quant_info qnt_info;
#if RKNN3_EMU_ABI >= 11
    uint32_t n_orig_dims;
    uint32_t orig_shape[RKNN3_MAX_DIMS];
    rknn3_tensor_layout orig_layout;
#endif
    int32_t core_id;
} rknn3_tensor_attr;

typedef struct {
    void* virt_addr;
    uint64_t phys_addr;
    int32_t fd;
    uint64_t buffer_id;
    uint64_t offset;
    uint64_t size;
    uint64_t flags;
    int32_t core_id;
    void* priv_data;
    rknn3_mem_type mem_type;
} rknn3_tensor_mem;

typedef struct {
    rknn3_tensor_mem* mem;
    rknn3_tensor_attr* attr;
} rknn3_tensor;

typedef struct {
    int32_t priority;
    uint32_t run_timeout;
    uint32_t run_core_mask;
    uint8_t user_mem_weight;
    uint8_t user_mem_internal;
    uint8_t user_sram;
    uint8_t reserved[128];
} rknn3_config;

typedef struct {
    char* device_id;
    uint8_t reserved[128];
} rknn3_init_extend;

typedef struct {
    char api_version[256];
    char drv_version[256];
} rknn3_sdk_version;

typedef struct {
    char string[1024];
} rknn3_custom_string;

typedef struct {
    uint64_t total;
    uint64_t free;
} rknn3_node_mem_info;

typedef struct {
    uint32_t node_num;
    uint64_t sys_total;
    uint64_t sys_free;
    rknn3_node_mem_info node_mem_info[RKNN3_MAX_NPU_NODE_NUM];
} rknn3_dev_mem_info;

typedef struct {
    char id[RKNN3_MAX_DEV_LEN];
    char type[RKNN3_MAX_DEV_LEN];
    rknn3_dev_mem_info mem_info;
} rknn3_device;

typedef struct {
    uint32_t n_devices;
    rknn3_device devices[RKNN3_MAX_DEVS];
} rknn3_devices;

typedef struct {
    uint32_t n_shapes;
    int32_t current_shape_id;
} rknn3_shape_config;

typedef struct {
    int32_t shape_id;
    uint32_t n_inputs;
    rknn3_tensor_attr* input_attrs;
    uint32_t n_outputs;
    rknn3_tensor_attr* output_attrs;
    uint8_t is_default;
    uint8_t reserved[31];
} rknn3_shape_info;

typedef struct {
    int32_t core_id;
    uint64_t weight_size;
    uint64_t internal_size;
    uint8_t reserved[32];
} rknn3_core_mem_size;

int rknn3_find_devices(rknn3_devices* pdevs);
int rknn3_init(rknn3_context* context, rknn3_init_extend* init_extend);
int rknn3_destroy(rknn3_context context);
int rknn3_load_model_from_path(rknn3_context context, const char* model_path, const char* weight_path);
int rknn3_load_model_from_data(rknn3_context context, const void* model_data, uint64_t model_size,
                               const void* weight_data, uint64_t weight_size);
int rknn3_model_init(rknn3_context context, rknn3_config* config);
int rknn3_query(rknn3_context context, rknn3_query_cmd cmd, void* info, uint64_t size);
int rknn3_run(rknn3_context context, const rknn3_tensor inputs[], uint32_t n_inputs,
              rknn3_tensor outputs[], uint32_t n_outputs);
rknn3_tensor_mem* rknn3_create_mem(rknn3_context context, uint64_t size, int32_t core_id,
                                   rknn3_mem_alloc_flags flags);
int rknn3_destroy_mem(rknn3_context context, rknn3_tensor_mem* mem);
int rknn3_mem_sync(rknn3_context context, rknn3_tensor_mem* mem, rknn3_mem_sync_mode mode);
int rknn3_set_shape(rknn3_context context, int32_t shape_id);
#if RKNN3_EMU_ABI >= 11
int rknn3_mem_sync_range(rknn3_context context, rknn3_tensor_mem* mem, rknn3_mem_sync_mode mode,
                         uint64_t offset, uint64_t length);
#else
int rknn3_dup_context(rknn3_context context_in, rknn3_context* context_out);
#endif

#endif
