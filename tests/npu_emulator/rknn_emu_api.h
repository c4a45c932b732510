/*
 * The librknnrt C ABI as the emulator implements it, written from shared/RKNN_ABI.md (not from
 * Rockchip's header). Only the types and functions the emulator serves are declared, plus the
 * emulator's own control API (rknn_emu_*), which tests reach through ctypes on the same handle.
 */
#ifndef RKNN_EMU_API_H
#define RKNN_EMU_API_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__arm__) || (defined(__i386__) && !defined(__x86_64__))
typedef uint32_t rknn_context; /* 32-bit targets (armhf) */
#else
typedef uint64_t rknn_context;
#endif

#define RKNN_MAX_DIMS 16
#define RKNN_MAX_NAME_LEN 256

/* return codes */
#define RKNN_SUCC 0
#define RKNN_ERR_FAIL -1
#define RKNN_ERR_TIMEOUT -2
#define RKNN_ERR_DEVICE_UNAVAILABLE -3
#define RKNN_ERR_MALLOC_FAIL -4
#define RKNN_ERR_PARAM_INVALID -5
#define RKNN_ERR_MODEL_INVALID -6
#define RKNN_ERR_CTX_INVALID -7
#define RKNN_ERR_INPUT_INVALID -8
#define RKNN_ERR_OUTPUT_INVALID -9
#define RKNN_ERR_DEVICE_UNMATCH -10
#define RKNN_ERR_INCOMPATILE_PRE_COMPILE_MODEL -11
#define RKNN_ERR_INCOMPATILE_OPTIMIZATION_LEVEL_VERSION -12
#define RKNN_ERR_TARGET_PLATFORM_UNMATCH -13

/* rknn_init flags used by the emulator */
#define RKNN_FLAG_SHARE_WEIGHT_MEM 0x20

typedef enum {
    RKNN_QUERY_IN_OUT_NUM = 0,
    RKNN_QUERY_INPUT_ATTR = 1,
    RKNN_QUERY_OUTPUT_ATTR = 2,
    RKNN_QUERY_PERF_DETAIL = 3,
    RKNN_QUERY_PERF_RUN = 4,
    RKNN_QUERY_SDK_VERSION = 5,
    RKNN_QUERY_MEM_SIZE = 6,
    RKNN_QUERY_CUSTOM_STRING = 7,
    RKNN_QUERY_NATIVE_INPUT_ATTR = 8,
    RKNN_QUERY_NATIVE_OUTPUT_ATTR = 9,
    RKNN_QUERY_NATIVE_NHWC_INPUT_ATTR = 10,
    RKNN_QUERY_NATIVE_NHWC_OUTPUT_ATTR = 11,
    RKNN_QUERY_DEVICE_MEM_INFO = 12,
    RKNN_QUERY_INPUT_DYNAMIC_RANGE = 13,
    RKNN_QUERY_CURRENT_INPUT_ATTR = 14,
    RKNN_QUERY_CURRENT_OUTPUT_ATTR = 15,
    RKNN_QUERY_CURRENT_NATIVE_INPUT_ATTR = 16,
    RKNN_QUERY_CURRENT_NATIVE_OUTPUT_ATTR = 17,
    RKNN_QUERY_CMD_MAX
} rknn_query_cmd;

typedef enum {
    RKNN_TENSOR_FLOAT32 = 0,
    RKNN_TENSOR_FLOAT16,
    RKNN_TENSOR_INT8,
    RKNN_TENSOR_UINT8,
    RKNN_TENSOR_INT16,
    RKNN_TENSOR_UINT16,
    RKNN_TENSOR_INT32,
    RKNN_TENSOR_UINT32,
    RKNN_TENSOR_INT64,
    RKNN_TENSOR_BOOL,
    RKNN_TENSOR_INT4,
    RKNN_TENSOR_BFLOAT16,
    RKNN_TENSOR_TYPE_MAX
} rknn_tensor_type;

typedef enum {
    RKNN_TENSOR_QNT_NONE = 0,
    RKNN_TENSOR_QNT_DFP,
    RKNN_TENSOR_QNT_AFFINE_ASYMMETRIC,
    RKNN_TENSOR_QNT_MAX
} rknn_tensor_qnt_type;

typedef enum {
    RKNN_TENSOR_NCHW = 0,
    RKNN_TENSOR_NHWC,
    RKNN_TENSOR_NC1HWC2,
    RKNN_TENSOR_UNDEFINED,
    RKNN_TENSOR_FORMAT_MAX
} rknn_tensor_format;

typedef enum {
    RKNN_NPU_CORE_AUTO = 0,
    RKNN_NPU_CORE_0 = 1,
    RKNN_NPU_CORE_1 = 2,
    RKNN_NPU_CORE_2 = 4,
    RKNN_NPU_CORE_0_1 = 3,
    RKNN_NPU_CORE_0_1_2 = 7,
    RKNN_NPU_CORE_ALL = 0xffff,
    RKNN_NPU_CORE_UNDEFINED = 0x10000
} rknn_core_mask;

typedef struct {
    uint32_t n_input;
    uint32_t n_output;
} rknn_input_output_num;

typedef struct {
    uint32_t index;
    uint32_t n_dims;
    uint32_t dims[RKNN_MAX_DIMS];
    char name[RKNN_MAX_NAME_LEN];
    uint32_t n_elems;
    uint32_t size;
    rknn_tensor_format fmt;
    rknn_tensor_type type;
    rknn_tensor_qnt_type qnt_type;
    int8_t fl;
    int32_t zp;
    float scale;
    uint32_t w_stride;
    uint32_t size_with_stride;
    uint8_t pass_through;
    uint32_t h_stride;
} rknn_tensor_attr;

typedef struct {
    uint32_t index;
    void* buf;
    uint32_t size;
    uint8_t pass_through;
    rknn_tensor_type type;
    rknn_tensor_format fmt;
} rknn_input;

typedef struct {
    uint8_t want_float;
    uint8_t is_prealloc;
    uint32_t index;
    void* buf;
    uint32_t size;
} rknn_output;

typedef struct {
    void* virt_addr;
    uint64_t phys_addr;
    int32_t fd;
    int32_t offset;
    uint32_t size;
    uint32_t flags;
    void* priv_data;
} rknn_tensor_mem;

typedef struct {
    rknn_context ctx;
    int32_t real_model_offset;
    uint32_t real_model_size;
    int32_t model_buffer_fd;
    uint32_t model_buffer_flags;
    uint8_t reserved[112];
} rknn_init_extend;

typedef struct {
    uint64_t frame_id;
    int32_t non_block;
    int32_t timeout_ms;
    int32_t fence_fd;
} rknn_run_extend;

typedef struct {
    uint64_t frame_id;
} rknn_output_extend;

typedef struct {
    char api_version[256];
    char drv_version[256];
} rknn_sdk_version;

typedef struct {
    char string[1024];
} rknn_custom_string;

typedef struct {
    uint32_t total_weight_size;
    uint32_t total_internal_size;
    uint64_t total_dma_allocated_size;
    uint32_t total_sram_size;
    uint32_t free_sram_size;
    uint32_t reserved[10];
} rknn_mem_size;

typedef struct {
    int64_t run_duration;
} rknn_perf_run;

typedef struct {
    char* perf_data;
    uint64_t data_len;
} rknn_perf_detail;

typedef struct {
    uint32_t index;
    uint32_t shape_number;
    rknn_tensor_format fmt;
    char name[RKNN_MAX_NAME_LEN];
    uint32_t dyn_range[512][RKNN_MAX_DIMS];
    uint32_t n_dims;
} rknn_input_range;

/* The head of rknn_custom_op (rknn_custom_op.h): plugins own the whole struct; the runtime reads
 * these fields first. The kernel fields and callbacks that follow are not emulated. */
typedef struct {
    uint32_t version;
    int32_t target; /* rknn_target_type: 1 CPU, 2 GPU */
    char op_type[RKNN_MAX_NAME_LEN];
} rknn_custom_op;

int rknn_init(rknn_context* context, void* model, uint32_t size, uint32_t flag, rknn_init_extend* extend);
int rknn_dup_context(rknn_context* context_in, rknn_context* context_out);
int rknn_destroy(rknn_context context);
int rknn_query(rknn_context context, rknn_query_cmd cmd, void* info, uint32_t size);
int rknn_inputs_set(rknn_context context, uint32_t n_inputs, rknn_input inputs[]);
int rknn_set_core_mask(rknn_context context, rknn_core_mask core_mask);
int rknn_run(rknn_context context, rknn_run_extend* extend);
int rknn_outputs_get(rknn_context context, uint32_t n_outputs, rknn_output outputs[], rknn_output_extend* extend);
int rknn_outputs_release(rknn_context context, uint32_t n_ouputs, rknn_output outputs[]);
int rknn_register_custom_ops(rknn_context ctx, rknn_custom_op* op, uint32_t custom_op_num);
rknn_tensor_mem* rknn_create_mem(rknn_context ctx, uint32_t size);
rknn_tensor_mem* rknn_create_mem2(rknn_context ctx, uint64_t size, uint64_t alloc_flags);
rknn_tensor_mem* rknn_create_mem_from_fd(rknn_context ctx, int32_t fd, void* virt_addr, uint32_t size, int32_t offset);
int rknn_destroy_mem(rknn_context ctx, rknn_tensor_mem* mem);
int rknn_set_io_mem(rknn_context ctx, rknn_tensor_mem* mem, rknn_tensor_attr* attr);
int rknn_mem_sync(rknn_context ctx, rknn_tensor_mem* mem, int mode);
int rknn_set_input_shapes(rknn_context ctx, uint32_t n_inputs, rknn_tensor_attr attr[]);

/* ---- emulator control API (not part of librknnrt) ---- */

/* Emulate `soc` ("rk3588", "rk3576", "rk3566", ...; decides the cores) with `compute_us` of NPU
 * time per inference; resets every counter, injected failure and the version strings. Fails (-5)
 * while contexts are alive. */
int rknn_emu_configure(const char* soc, int compute_us);
/* Versions reported by RKNN_QUERY_SDK_VERSION. */
void rknn_emu_set_versions(const char* api_version, const char* drv_version);
/* The next `count` calls of `api` (e.g. "rknn_run") return `code` without doing anything. */
void rknn_emu_inject_failure(const char* api, int code, int count);
/* The next `count` calls of `api` raise signal `signo` on the calling thread (the call itself
 * completes; a Python handler makes Python raise right after it returns). */
void rknn_emu_raise_signal(const char* api, int signo, int count);
/* The next `count` rknn_run calls take `us` microseconds each (instead of compute_us). */
void rknn_emu_set_run_delay(int us, int count);
/* The next `count` rknn_run calls stop inside the call, cores held, until rknn_emu_release_runs;
 * rknn_emu_wait_blocked waits up to `timeout_ms` for `n` of them to be stopped and returns how
 * many are; rknn_emu_release_runs lets every stopped run finish, cancels the rest of `count`
 * and returns how many it released. */
void rknn_emu_block_runs(int count);
int rknn_emu_wait_blocked(int n, int timeout_ms);
int rknn_emu_release_runs(void);
/* Rule breaches by the caller (printed to stderr as they happen) and the last one's text. */
int rknn_emu_violations(void);
const char* rknn_emu_last_violation(void);
/* Emulator heap blocks (models, contexts, runtime-owned output buffers) and contexts alive. */
int rknn_emu_live_allocations(void);
int rknn_emu_live_contexts(void);
/* Tensor mems created (rknn_create_mem*) and not destroyed yet. */
int rknn_emu_live_mems(void);
/* How often `api` was called since configure, runs served by `core`, most cores busy at once. */
int rknn_emu_calls(const char* api);
int rknn_emu_core_runs(int core);
int rknn_emu_max_parallel(void);
/* Contexts destroyed while dups of them were alive (tolerated, as on boards; README). */
int rknn_emu_early_destroys(void);
/* Live contexts whose bound core mask is `mask` (-1: contexts never bound). */
int rknn_emu_contexts_with_mask(int mask);

#ifdef __cplusplus
}
#endif

#endif
