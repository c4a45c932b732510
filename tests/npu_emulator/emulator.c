/*
 * An emulated librknnrt: the ABI of rknn_emu_api.h, with the runtime's rules enforced.
 *
 * Why: the binding must be proven without a board. Every rule the real runtime has (and some it
 * only has implicitly, like "one thread per context") is checked here; a breach is a *violation*:
 * printed to stderr, counted, and read by the tests, which fail on any. Ordinary errors (bad model
 * bytes, injected failures) are returned like the runtime does, with an "E RKNN:" line.
 *
 * The NPU: one mutex per core of the configured SoC; a run holds its cores and sleeps compute_us,
 * so multi-core scaling is measurable. The "network" computes, in float64 on the model's original
 * (NCHW) element order:  out_j[k] = gain * sum_i (i + 1) * x_i[(k + j) mod n_i] + 0.5 * j
 * where x_i is input i after quantisation to its internal type, and out_j is then quantised to the
 * output's internal type (README.md documents the model format and this function).
 *
 * Dynamic-shape models (`shape` lines) keep a current shape per context: rknn_set_input_shapes
 * picks one of each input's allowed shapes, the outputs follow by a fixed rule (a 4-D output's H
 * and W are the first input's), and every copying call sizes its buffers by the current shapes.
 */
#define _GNU_SOURCE
#include "rknn_emu_api.h"

#define EMU_LOG_NAME "rknn-emu"
#define EMU_ERROR_PREFIX "E RKNN"
#include "emu_support.h"

#include <fcntl.h>

#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define EMU_MAX_IO 8
#define EMU_MAX_CORES 3
#define EMU_MAX_OPS 8
#define EMU_MAX_SHAPES 16

/* librknnrt embeds this line; `doctor` finds the version of a library without a model this way. */
__attribute__((used)) const char rknn_emu_version_banner[] = "librknnrt version: 2.4.2 (ez-rknn emulator)";

/* ---------------------------------------------------------------- bookkeeping */

static atomic_int g_live_contexts;
static atomic_int g_parallel;
static atomic_int g_max_parallel;
static atomic_int g_early_destroys; /* contexts destroyed while dups of them lived */
static atomic_int g_core_runs[EMU_MAX_CORES];

static char g_soc[32] = "rk3588";
static int g_cores = 3;
static int g_compute_us;
static char g_api_version[256] = "2.4.2 (emulated)";
static char g_drv_version[256] = "0.9.8";
static pthread_mutex_t g_core_mutex[EMU_MAX_CORES] = {
    PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER};
static atomic_uint g_auto_rr;

static const char* const k_apis[] = {
    "rknn_init", "rknn_dup_context", "rknn_destroy", "rknn_query", "rknn_inputs_set",
    "rknn_set_core_mask", "rknn_run", "rknn_outputs_get", "rknn_outputs_release",
    "rknn_register_custom_ops", "rknn_create_mem", "rknn_create_mem2", "rknn_create_mem_from_fd",
    "rknn_destroy_mem", "rknn_set_io_mem", "rknn_mem_sync", "rknn_set_input_shapes"};
enum { API_INIT, API_DUP, API_DESTROY, API_QUERY, API_INPUTS_SET, API_CORE_MASK, API_RUN,
       API_OUTPUTS_GET, API_OUTPUTS_RELEASE, API_REGISTER_OPS, API_CREATE_MEM, API_CREATE_MEM2,
       API_CREATE_MEM_FROM_FD, API_DESTROY_MEM, API_SET_IO_MEM, API_MEM_SYNC, API_SET_INPUT_SHAPES,
       API_COUNT };
static atomic_int g_calls[API_COUNT];
static int g_fail_code[API_COUNT];
static int g_fail_count[API_COUNT];
static int g_signal_no[API_COUNT];
static int g_signal_count[API_COUNT];

/* Failure modes of rknn_run for tests of hung inferences (g_lock): the next g_delay_count runs
 * take g_delay_us each; the next g_block_count runs stop inside (cores held) until released. */
static int g_delay_us, g_delay_count;
static int g_block_count, g_blocked;
static unsigned g_block_generation;
static pthread_cond_t g_block_cond = PTHREAD_COND_INITIALIZER;

/* Counts the call; returns the injected code (non-zero) if this call must fail. */
static int enter_api(int api) {
    int code = 0;
    atomic_fetch_add(&g_calls[api], 1);
    pthread_mutex_lock(&g_lock);
    if (g_fail_count[api] > 0) {
        g_fail_count[api]--;
        code = g_fail_code[api];
    }
    int signo = 0;
    if (g_signal_count[api] > 0) {
        g_signal_count[api]--;
        signo = g_signal_no[api];
    }
    pthread_mutex_unlock(&g_lock);
    if (code) runtime_error(code, "%s failed (injected %d)", k_apis[api], code);
    /* The signal is only flagged by a Python handler: the call still completes, and Python
     * raises right after it returns, the worst point for a binding. */
    if (signo) raise(signo);
    return code;
}

/* ---------------------------------------------------------------- models */

typedef struct {
    char name[RKNN_MAX_NAME_LEN];
    int type; /* internal rknn_tensor_type */
    int zp;
    float scale;
    uint32_t n_dims;
    uint32_t dims[RKNN_MAX_DIMS]; /* as INPUT_ATTR/OUTPUT_ATTR report them */
    uint32_t n_elems;
} emu_tensor;

typedef struct {
    char platform[32];
    char custom_string[1024];
    char custom_op[RKNN_MAX_NAME_LEN];
    int has_weights;
    double gain;
    int weight_id;
    int n_in, n_out;
    emu_tensor in[EMU_MAX_IO], out[EMU_MAX_IO]; /* in: the first allowed shape of each input */
    int dynamic; /* any `shape` line: rknn_set_input_shapes applies */
    uint32_t n_shapes[EMU_MAX_IO]; /* allowed shapes per input (the input line's is the first) */
    uint32_t shapes[EMU_MAX_IO][EMU_MAX_SHAPES][RKNN_MAX_DIMS];
} emu_model;

/* Sets t's dims (and n_elems) to `dims` (t->n_dims of them). */
static void set_dims(emu_tensor* t, const uint32_t* dims) {
    t->n_elems = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        t->dims[d] = dims[d];
        t->n_elems *= dims[d];
    }
}

/* The outputs' shapes for the inputs' current ones: on a dynamic model whose first input is 4-D
 * (NHWC), every 4-D output (NCHW) takes that input's H and W; everything else stays as declared. */
static void derive_outputs(const emu_model* m, const emu_tensor* in, emu_tensor* out) {
    for (int j = 0; j < m->n_out; j++) {
        out[j] = m->out[j];
        if (m->dynamic && in[0].n_dims == 4 && out[j].n_dims == 4) {
            uint32_t dims[RKNN_MAX_DIMS];
            memcpy(dims, out[j].dims, sizeof dims);
            dims[2] = in[0].dims[1];
            dims[3] = in[0].dims[2];
            set_dims(&out[j], dims);
        }
    }
}

static int type_from_name(const char* name) {
    if (!strcmp(name, "float32")) return RKNN_TENSOR_FLOAT32;
    if (!strcmp(name, "float16")) return RKNN_TENSOR_FLOAT16;
    if (!strcmp(name, "int8")) return RKNN_TENSOR_INT8;
    if (!strcmp(name, "uint8")) return RKNN_TENSOR_UINT8;
    return -1;
}

static int type_size(int type) {
    switch (type) {
        case RKNN_TENSOR_FLOAT32: return 4;
        case RKNN_TENSOR_FLOAT16: return 2;
        case RKNN_TENSOR_INT8:
        case RKNN_TENSOR_UINT8: return 1;
        default: return 0;
    }
}

static int parse_tensor(const char* rest, emu_tensor* t) {
    char type[32];
    int used = 0;
    if (sscanf(rest, "%255s %31s %d %f %u%n", t->name, type, &t->zp, &t->scale, &t->n_dims, &used) != 5)
        return -1;
    if (!strcmp(t->name, "_")) t->name[0] = 0; /* a tensor without a name */
    t->type = type_from_name(type);
    if (t->type < 0 || t->n_dims > 6 || t->scale <= 0) return -1;
    t->n_elems = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        int more = 0;
        rest += used;
        if (sscanf(rest, "%u%n", &t->dims[d], &more) != 1 || t->dims[d] == 0) return -1;
        used = more;
        t->n_elems *= t->dims[d];
    }
    return 0;
}

#define MODEL_MAGIC "RKNN EZEMU 1\n"
#define MODEL_MAGIC_LEN (sizeof MODEL_MAGIC - 1)

/* Parses the text format of README.md; 0 on success. */
static int parse_model(const char* bytes, uint32_t size, emu_model* m) {
    char* text = malloc(size + 1);
    if (!text) return -1;
    memcpy(text, bytes, size);
    text[size] = 0;
    /* Real model files start with the magic "RKNN" (and bindings check it); ours follow it with
     * the emulator's text format. */
    int ok = strncmp(text, MODEL_MAGIC, MODEL_MAGIC_LEN) == 0 && memchr(bytes, 0, size) == NULL;
    int ended = 0;
    char* save = NULL;
    for (char* line = ok ? strtok_r(text + MODEL_MAGIC_LEN, "\n", &save) : NULL; ok && line && !ended;
         line = strtok_r(NULL, "\n", &save)) {
        if (!strncmp(line, "platform ", 9)) {
            ok = sscanf(line + 9, "%31s", m->platform) == 1;
        } else if (!strncmp(line, "custom_string ", 14)) {
            snprintf(m->custom_string, sizeof m->custom_string, "%s", line + 14);
        } else if (!strncmp(line, "custom_op ", 10)) {
            ok = sscanf(line + 10, "%255s", m->custom_op) == 1;
        } else if (!strncmp(line, "weights shared ", 15)) {
            ok = sscanf(line + 15, "%d", &m->weight_id) == 1;
        } else if (!strncmp(line, "weights ", 8)) {
            ok = sscanf(line + 8, "%lf %d", &m->gain, &m->weight_id) == 2;
            m->has_weights = 1;
        } else if (!strncmp(line, "input ", 6)) {
            ok = m->n_in < EMU_MAX_IO && parse_tensor(line + 6, &m->in[m->n_in++]) == 0;
            if (ok) {
                m->n_shapes[m->n_in - 1] = 1;
                memcpy(m->shapes[m->n_in - 1][0], m->in[m->n_in - 1].dims, sizeof m->shapes[0][0]);
            }
        } else if (!strncmp(line, "shape ", 6)) { /* one more allowed shape of the last input */
            int i = m->n_in - 1, used = 0;
            ok = i >= 0 && m->n_shapes[i] < EMU_MAX_SHAPES;
            uint32_t* dims = ok ? m->shapes[i][m->n_shapes[i]] : NULL;
            const char* rest = line + 6;
            for (uint32_t d = 0; ok && d < m->in[i].n_dims; d++, rest += used)
                ok = sscanf(rest, "%u%n", &dims[d], &used) == 1 && dims[d] > 0;
            if (ok) {
                m->n_shapes[i]++;
                m->dynamic = 1;
            }
        } else if (!strncmp(line, "output ", 7)) {
            ok = m->n_out < EMU_MAX_IO && parse_tensor(line + 7, &m->out[m->n_out++]) == 0;
        } else if (!strcmp(line, "end")) {
            ended = 1;
        } else {
            ok = 0;
        }
    }
    free(text);
    if (ok && m->dynamic && m->n_in > 0) { /* declared outputs follow the first shapes */
        emu_tensor out[EMU_MAX_IO];
        derive_outputs(m, m->in, out);
        memcpy(m->out, out, sizeof out);
    }
    return ok && ended && m->n_in > 0 && m->n_out > 0 ? 0 : -1;
}

/* ---------------------------------------------------------------- contexts */

typedef struct emu_shared {
    int refs; /* contexts using this model (guarded by g_lock) */
    emu_model model;
} emu_shared;

typedef struct emu_ctx {
    rknn_context handle;
    struct emu_ctx* next;
    emu_shared* shared;
    struct emu_ctx* parent; /* dup origin (NULL once destroyed) or weight owner (must outlive it) */
    int children;
    double gain;
    int core_mask; /* -1 until rknn_set_core_mask */
    atomic_int busy;
    char ops[EMU_MAX_OPS][RKNN_MAX_NAME_LEN];
    int n_ops;
    double* in_vals[EMU_MAX_IO]; /* NCHW order, after quantisation to the internal type */
    int inputs_set;
    double* out_vals[EMU_MAX_IO]; /* after quantisation to the internal type */
    int have_run;
    int outstanding; /* outputs got and not released yet */
    void* runtime_bufs[EMU_MAX_IO];
    int mode; /* MODE_COPY after rknn_inputs_set, MODE_ZERO_COPY after rknn_set_io_mem */
    struct emu_mem* io_mem[2][EMU_MAX_IO]; /* [0] inputs, [1] outputs, as rknn_set_io_mem set them */
    rknn_tensor_attr io_attr[2][EMU_MAX_IO];
    emu_tensor cur_in[EMU_MAX_IO], cur_out[EMU_MAX_IO]; /* current shapes (rknn_set_input_shapes) */
} emu_ctx;

enum { MODE_NONE, MODE_COPY, MODE_ZERO_COPY };

/* A tensor mem: `pub` is what the caller holds (the pointer handed out is &pub). Live mems are kept
 * in a list and every pointer the caller passes is looked up there first, so a destroyed or forged
 * mem is reported, never dereferenced. */
typedef struct emu_mem {
    rknn_tensor_mem pub;
    struct emu_mem* next;
    emu_ctx* ctx;          /* created on: destroy it with this context, before the context */
    void* map;             /* the emulator's own mapping (NULL: the caller's virt_addr) */
    size_t map_len;
    int own_fd;            /* rknn_create_mem's memfd, closed on destroy (-1 for imports) */
    int users;             /* runs using it right now (g_lock) */
} emu_mem;

static emu_mem* g_mems;
static atomic_int g_live_mems;
static emu_ctx* g_contexts;
static rknn_context g_next_handle = 1;

static rknn_context new_handle(void) {
    /* Above 2^32 on 64-bit targets, so a binding that truncates rknn_context is caught. */
    rknn_context h = g_next_handle++;
    if (sizeof(rknn_context) == 8) h |= (rknn_context)0xE5 << 32;
    return h;
}

/* Finds a live context and marks it in use by this thread; NULL (and a violation) otherwise. */
static emu_ctx* acquire(rknn_context handle, const char* api) {
    pthread_mutex_lock(&g_lock);
    emu_ctx* c = g_contexts;
    while (c && c->handle != handle) c = c->next;
    pthread_mutex_unlock(&g_lock);
    if (!c) {
        violation("%s: invalid or destroyed context 0x%llx", api, (unsigned long long)handle);
        return NULL;
    }
    if (atomic_exchange(&c->busy, 1)) {
        violation("%s: context 0x%llx used by two threads at once", api, (unsigned long long)handle);
        return NULL;
    }
    return c;
}

static void release(emu_ctx* c) { atomic_store(&c->busy, 0); }

static emu_ctx* new_context(emu_shared* shared, emu_ctx* parent, double gain) {
    emu_ctx* c = emu_calloc(1, sizeof *c);
    if (!c) return NULL;
    c->shared = shared;
    c->parent = parent;
    c->gain = gain;
    c->core_mask = -1;
    memcpy(c->cur_in, shared->model.in, sizeof c->cur_in);
    memcpy(c->cur_out, shared->model.out, sizeof c->cur_out);
    pthread_mutex_lock(&g_lock);
    shared->refs++;
    if (parent) parent->children++;
    c->handle = new_handle();
    c->next = g_contexts;
    g_contexts = c;
    pthread_mutex_unlock(&g_lock);
    atomic_fetch_add(&g_live_contexts, 1);
    return c;
}

static int soc_matches(const char* platform) {
    /* rk3588s models run on rk3588 and back; the prefix decides, as for the device tree. */
    return !platform[0] || !strncmp(platform, g_soc, 6);
}

int rknn_init(rknn_context* context, void* model, uint32_t size, uint32_t flag, rknn_init_extend* extend) {
    int injected = enter_api(API_INIT);
    if (injected) return injected;
    if (!context || !model) {
        violation("rknn_init: NULL context or model pointer");
        return RKNN_ERR_PARAM_INVALID;
    }
    if (size == 0) {
        violation("rknn_init: size 0 (model path); the binding must pass the model bytes");
        return RKNN_ERR_PARAM_INVALID;
    }
    emu_shared* shared = emu_calloc(1, sizeof *shared);
    if (!shared) return RKNN_ERR_MALLOC_FAIL;
    if (parse_model(model, size, &shared->model) != 0) {
        emu_free(shared);
        return runtime_error(RKNN_ERR_MODEL_INVALID, "rknn_init: invalid RKNN model (%u bytes)", size);
    }
    if (!soc_matches(shared->model.platform)) {
        char platform[32];
        snprintf(platform, sizeof platform, "%s", shared->model.platform);
        emu_free(shared);
        return runtime_error(RKNN_ERR_TARGET_PLATFORM_UNMATCH,
                             "rknn_init: model built for %s, this is %s", platform, g_soc);
    }
    emu_ctx* owner = NULL;
    double gain = shared->model.gain;
    if (flag & RKNN_FLAG_SHARE_WEIGHT_MEM) {
        if (!extend) {
            emu_free(shared);
            violation("rknn_init: RKNN_FLAG_SHARE_WEIGHT_MEM without rknn_init_extend");
            return RKNN_ERR_PARAM_INVALID;
        }
        pthread_mutex_lock(&g_lock);
        for (owner = g_contexts; owner && owner->handle != extend->ctx; owner = owner->next) {
        }
        pthread_mutex_unlock(&g_lock);
        if (!owner) {
            emu_free(shared);
            violation("rknn_init: share-weight owner context 0x%llx is not alive",
                      (unsigned long long)extend->ctx);
            return RKNN_ERR_CTX_INVALID;
        }
        if (owner->shared->model.weight_id != shared->model.weight_id) {
            emu_free(shared);
            return runtime_error(RKNN_ERR_MODEL_INVALID, "rknn_init: weights of another network");
        }
        gain = owner->gain;
    } else if (!shared->model.has_weights) {
        emu_free(shared);
        return runtime_error(RKNN_ERR_MODEL_INVALID,
                             "rknn_init: model has no weights (remove_weight); init it with SHARE_WEIGHT_MEM");
    }
    emu_ctx* c = new_context(shared, owner, gain);
    if (!c) {
        emu_free(shared);
        return RKNN_ERR_MALLOC_FAIL;
    }
    *context = c->handle;
    return RKNN_SUCC;
}

#ifndef EMU_ZERO_COPY_ONLY
int rknn_dup_context(rknn_context* context_in, rknn_context* context_out) {
    int injected = enter_api(API_DUP);
    if (injected) return injected;
    if (!context_in || !context_out) {
        violation("rknn_dup_context: both contexts are passed by pointer");
        return RKNN_ERR_PARAM_INVALID;
    }
    emu_ctx* origin = acquire(*context_in, "rknn_dup_context");
    if (!origin) return RKNN_ERR_CTX_INVALID;
    emu_ctx* c = new_context(origin->shared, origin, origin->gain);
    if (c) {
        memcpy(c->ops, origin->ops, sizeof c->ops);
        c->n_ops = origin->n_ops;
        *context_out = c->handle;
    }
    release(origin);
    return c ? RKNN_SUCC : RKNN_ERR_MALLOC_FAIL;
}
#endif

int rknn_destroy(rknn_context context) {
    int injected = enter_api(API_DESTROY);
    if (injected) return injected;
    emu_ctx* c = acquire(context, "rknn_destroy");
    if (!c) return RKNN_ERR_CTX_INVALID;
    if (c->outstanding) violation("rknn_destroy: outputs of context 0x%llx not released", (unsigned long long)context);
    pthread_mutex_lock(&g_lock);
    int mems = 0;
    for (emu_mem* m = g_mems; m; m = m->next) mems += m->ctx == c;
    if (mems) {
        pthread_mutex_unlock(&g_lock);
        release(c);
        violation("rknn_destroy: context 0x%llx still has %d tensor mems (rknn_destroy_mem them first)",
                  (unsigned long long)context, mems);
        return RKNN_ERR_CTX_INVALID;
    }
    /* A weight sharer runs on its owner's weights: the owner must outlive it. A dup shares the
     * model itself (reference counted): destroying its origin first works on boards (README). */
    int sharers = 0;
    for (emu_ctx* o = g_contexts; o; o = o->next) sharers += o->parent == c && o->shared != c->shared;
    if (sharers) {
        pthread_mutex_unlock(&g_lock);
        release(c);
        violation("rknn_destroy: context 0x%llx still has %d weight-sharer contexts", (unsigned long long)context,
                  sharers);
        return RKNN_ERR_CTX_INVALID;
    }
    if (c->children) {
        atomic_fetch_add(&g_early_destroys, 1);
        for (emu_ctx* o = g_contexts; o; o = o->next)
            if (o->parent == c) o->parent = NULL;
    }
    emu_ctx** link = &g_contexts;
    while (*link != c) link = &(*link)->next;
    *link = c->next;
    if (c->parent) c->parent->children--;
    int last = --c->shared->refs == 0;
    pthread_mutex_unlock(&g_lock);
    if (last) emu_free(c->shared);
    for (int i = 0; i < EMU_MAX_IO; i++) {
        emu_free(c->in_vals[i]);
        emu_free(c->out_vals[i]);
        emu_free(c->runtime_bufs[i]);
    }
    atomic_fetch_sub(&g_live_contexts, 1);
    emu_free(c);
    return RKNN_SUCC;
}

/* ---------------------------------------------------------------- queries */

static uint32_t c2_of(int type) { return type == RKNN_TENSOR_FLOAT16 ? 8 : type == RKNN_TENSOR_FLOAT32 ? 4 : 16; }

/* Native NHWC inputs pad each row to a multiple of 16 pixels (w_stride). */
static uint32_t w_stride_of(uint32_t width) { return (width + 15) / 16 * 16; }

static int is_native(int cmd) {
    return cmd == RKNN_QUERY_NATIVE_INPUT_ATTR || cmd == RKNN_QUERY_NATIVE_OUTPUT_ATTR ||
           cmd == RKNN_QUERY_NATIVE_NHWC_INPUT_ATTR || cmd == RKNN_QUERY_NATIVE_NHWC_OUTPUT_ATTR;
}

static int is_input_query(int cmd) {
    return cmd == RKNN_QUERY_INPUT_ATTR || cmd == RKNN_QUERY_CURRENT_INPUT_ATTR || cmd == RKNN_QUERY_NATIVE_INPUT_ATTR || cmd == RKNN_QUERY_NATIVE_NHWC_INPUT_ATTR;
}

/* The attr `cmd` reports for tensor t. Native layouts (4-D tensors only): inputs with up to 4
 * channels are NHWC with padded rows, wider ones NC1HWC2 (the NHWC query gives padded NHWC for
 * all); outputs are NC1HWC2 (the NHWC query gives plain NHWC). */
static void fill_attr(rknn_tensor_attr* a, const emu_tensor* t, int cmd) {
    int is_input = is_input_query(cmd);
    uint32_t index = a->index;
    memset(a, 0, sizeof *a);
    a->index = index;
    snprintf(a->name, sizeof a->name, "%s", t->name);
    a->type = t->type;
    a->qnt_type = t->type == RKNN_TENSOR_INT8 || t->type == RKNN_TENSOR_UINT8 ? RKNN_TENSOR_QNT_AFFINE_ASYMMETRIC
                                                                              : RKNN_TENSOR_QNT_NONE;
    a->zp = t->zp;
    a->scale = t->scale;
    a->n_dims = t->n_dims;
    memcpy(a->dims, t->dims, sizeof a->dims);
    a->fmt = t->n_dims == 4 ? (is_input ? RKNN_TENSOR_NHWC : RKNN_TENSOR_NCHW) : RKNN_TENSOR_UNDEFINED;
    a->n_elems = t->n_elems;
    uint32_t n = t->dims[0], c = is_input ? t->dims[3] : t->dims[1], h = is_input ? t->dims[1] : t->dims[2],
             w = is_input ? t->dims[2] : t->dims[3];
    uint32_t padded_rows = 0;
    if (t->n_dims == 4 && is_native(cmd)) {
        int nc1hwc2 = cmd == RKNN_QUERY_NATIVE_OUTPUT_ATTR || (cmd == RKNN_QUERY_NATIVE_INPUT_ATTR && c > 4);
        if (nc1hwc2) {
            uint32_t c2 = c2_of(t->type);
            a->fmt = RKNN_TENSOR_NC1HWC2;
            a->n_dims = 5;
            a->dims[0] = n;
            a->dims[1] = (c + c2 - 1) / c2;
            a->dims[2] = h;
            a->dims[3] = w;
            a->dims[4] = c2;
            a->n_elems = n * a->dims[1] * h * w * c2;
        } else {
            a->fmt = RKNN_TENSOR_NHWC;
            a->dims[0] = n;
            a->dims[1] = h;
            a->dims[2] = w;
            a->dims[3] = c;
            padded_rows = is_input;
        }
    }
    a->size = a->n_elems * type_size(t->type);
    a->w_stride = a->fmt == RKNN_TENSOR_NHWC ? (padded_rows ? w_stride_of(w) : w) : 0;
    a->size_with_stride = a->fmt == RKNN_TENSOR_NHWC ? n * h * a->w_stride * c * type_size(t->type) : a->size;
}

static uint32_t query_size(int cmd) {
    switch (cmd) {
        case RKNN_QUERY_IN_OUT_NUM: return sizeof(rknn_input_output_num);
        case RKNN_QUERY_INPUT_ATTR:
        case RKNN_QUERY_OUTPUT_ATTR:
        case RKNN_QUERY_NATIVE_INPUT_ATTR:
        case RKNN_QUERY_NATIVE_OUTPUT_ATTR:
        case RKNN_QUERY_NATIVE_NHWC_INPUT_ATTR:
        case RKNN_QUERY_NATIVE_NHWC_OUTPUT_ATTR:
        case RKNN_QUERY_CURRENT_INPUT_ATTR:
        case RKNN_QUERY_CURRENT_OUTPUT_ATTR: return sizeof(rknn_tensor_attr);
        case RKNN_QUERY_INPUT_DYNAMIC_RANGE: return sizeof(rknn_input_range);
        case RKNN_QUERY_SDK_VERSION: return sizeof(rknn_sdk_version);
        case RKNN_QUERY_CUSTOM_STRING: return sizeof(rknn_custom_string);
        default: return 0;
    }
}

int rknn_query(rknn_context context, rknn_query_cmd cmd, void* info, uint32_t size) {
    int injected = enter_api(API_QUERY);
    if (injected) return injected;
    emu_ctx* c = acquire(context, "rknn_query");
    if (!c) return RKNN_ERR_CTX_INVALID;
    const emu_model* m = &c->shared->model;
    uint32_t want = query_size(cmd);
    int rc = RKNN_SUCC;
    if (!want) {
        rc = runtime_error(RKNN_ERR_FAIL, "rknn_query: command %d not emulated", cmd);
    } else if (size != want || !info) {
        violation("rknn_query(cmd=%d): info_len(%u) != sizeof(struct)(%u)", cmd, size, want);
        rc = RKNN_ERR_PARAM_INVALID;
    } else if (cmd == RKNN_QUERY_IN_OUT_NUM) {
        rknn_input_output_num* n = info;
        n->n_input = m->n_in;
        n->n_output = m->n_out;
    } else if (cmd == RKNN_QUERY_SDK_VERSION) {
        rknn_sdk_version* v = info;
        snprintf(v->api_version, sizeof v->api_version, "%s", g_api_version);
        snprintf(v->drv_version, sizeof v->drv_version, "%s", g_drv_version);
    } else if (cmd == RKNN_QUERY_CUSTOM_STRING) {
        snprintf(((rknn_custom_string*)info)->string, 1024, "%s", m->custom_string);
    } else if (cmd == RKNN_QUERY_INPUT_DYNAMIC_RANGE) {
        rknn_input_range* r = info;
        uint32_t index = r->index;
        if (index >= (uint32_t)m->n_in) {
            violation("rknn_query(cmd=%d): index %u out of range (%d inputs)", cmd, index, m->n_in);
            rc = RKNN_ERR_PARAM_INVALID;
        } else { /* a static model answers no shapes (shape_number 0), as boards do */
            const emu_tensor* t = &m->in[index];
            memset(r, 0, sizeof *r);
            r->index = index;
            r->shape_number = m->dynamic ? m->n_shapes[index] : 0;
            r->fmt = t->n_dims == 4 ? RKNN_TENSOR_NHWC : RKNN_TENSOR_UNDEFINED;
            snprintf(r->name, sizeof r->name, "%s", t->name);
            r->n_dims = t->n_dims;
            for (uint32_t s = 0; s < r->shape_number; s++)
                memcpy(r->dyn_range[s], m->shapes[index][s], sizeof r->dyn_range[s]);
        }
    } else {
        rknn_tensor_attr* a = info;
        int is_input = is_input_query(cmd);
        int count = is_input ? m->n_in : m->n_out;
        if (a->index >= (uint32_t)count) {
            violation("rknn_query(cmd=%d): index %u out of range (%d tensors)", cmd, a->index, count);
            rc = RKNN_ERR_PARAM_INVALID;
        } else {
            int current = cmd == RKNN_QUERY_CURRENT_INPUT_ATTR || cmd == RKNN_QUERY_CURRENT_OUTPUT_ATTR;
            const emu_tensor* ins = current ? c->cur_in : m->in;
            const emu_tensor* outs = current ? c->cur_out : m->out;
            fill_attr(a, is_input ? &ins[a->index] : &outs[a->index], cmd);
        }
    }
    release(c);
    return rc;
}

/* ---------------------------------------------------------------- numbers */

/* The value a tensor of internal type `t` holds for `real` (quantise, then read back). */
static double quantize(const emu_tensor* t, double real) {
    if (t->type == RKNN_TENSOR_FLOAT32) return (float)real;
    if (t->type == RKNN_TENSOR_FLOAT16) return (double)(_Float16)(float)real;
    double lo = t->type == RKNN_TENSOR_INT8 ? -128 : 0, hi = t->type == RKNN_TENSOR_INT8 ? 127 : 255;
    double q = nearbyint(real / t->scale) + t->zp;
    q = q < lo ? lo : q > hi ? hi : q;
    return (q - t->zp) * (double)t->scale;
}

/* ---------------------------------------------------------------- inference */

#ifndef EMU_ZERO_COPY_ONLY
int rknn_inputs_set(rknn_context context, uint32_t n_inputs, rknn_input inputs[]) {
    int injected = enter_api(API_INPUTS_SET);
    if (injected) return injected;
    emu_ctx* c = acquire(context, "rknn_inputs_set");
    if (!c) return RKNN_ERR_CTX_INVALID;
    const emu_model* m = &c->shared->model;
    int rc = RKNN_SUCC, seen = 0;
    if (c->mode == MODE_ZERO_COPY) {
        violation("rknn_inputs_set: context 0x%llx runs zero copy (rknn_set_io_mem); a context serves one kind of run",
                  (unsigned long long)context);
        rc = RKNN_ERR_CTX_INVALID;
    } else if (n_inputs != (uint32_t)m->n_in || !inputs) {
        violation("rknn_inputs_set: %u inputs given, the model has %d", n_inputs, m->n_in);
        rc = RKNN_ERR_PARAM_INVALID;
    }
    for (uint32_t k = 0; rc == RKNN_SUCC && k < n_inputs; k++) {
        const rknn_input* in = &inputs[k];
        const emu_tensor* t = in->index < (uint32_t)m->n_in ? &c->cur_in[in->index] : NULL;
        int esize = type_size(in->type);
        if (!t || (seen & (1 << in->index))) {
            violation("rknn_inputs_set: bad or repeated input index %u", in->index);
            rc = RKNN_ERR_PARAM_INVALID;
        } else if (in->pass_through) {
            violation("rknn_inputs_set: pass_through is not emulated");
            rc = RKNN_ERR_PARAM_INVALID;
        } else if (!esize) {
            violation("rknn_inputs_set: input %u: buffer type %d is not one librknnrt converts", in->index, in->type);
            rc = RKNN_ERR_PARAM_INVALID;
        } else if (in->size != t->n_elems * (uint32_t)esize || !in->buf) {
            violation("rknn_inputs_set, param input size(%u) != model input size(%u) for input %u (type %d)",
                      in->size, t->n_elems * esize, in->index, in->type);
            rc = RKNN_ERR_PARAM_INVALID;
        } else if (t->n_dims == 4 ? in->fmt != RKNN_TENSOR_NCHW && in->fmt != RKNN_TENSOR_NHWC
                                  : in->fmt != RKNN_TENSOR_UNDEFINED) {
            violation("rknn_inputs_set: input %u (%u-D) has fmt %d", in->index, t->n_dims, in->fmt);
            rc = RKNN_ERR_PARAM_INVALID;
        }
        if (rc != RKNN_SUCC) break;
        seen |= 1 << in->index;
        if (!c->in_vals[in->index]) c->in_vals[in->index] = emu_calloc(t->n_elems, sizeof(double));
        double* dst = c->in_vals[in->index];
        /* Model dims are NHWC; dst is in the original NCHW order. */
        uint32_t h = t->dims[1], w = t->dims[2], ch = t->dims[3];
        for (uint32_t i = 0; i < t->n_elems; i++) {
            size_t src = i;
            if (t->n_dims == 4 && in->fmt == RKNN_TENSOR_NHWC) {
                uint32_t x = i % w, y = i / w % h, cc = i / (w * h) % ch, b = i / (w * h * ch);
                src = (((size_t)b * h + y) * w + x) * ch + cc;
            }
            dst[i] = quantize(t, read_value(in->buf, in->type, src));
        }
    }
    if (rc == RKNN_SUCC) {
        c->inputs_set |= seen;
        c->mode = MODE_COPY;
    }
    release(c);
    return rc;
}
#endif

int rknn_set_core_mask(rknn_context context, rknn_core_mask core_mask) {
    int injected = enter_api(API_CORE_MASK);
    if (injected) return injected;
    emu_ctx* c = acquire(context, "rknn_set_core_mask");
    if (!c) return RKNN_ERR_CTX_INVALID;
    int rc = RKNN_SUCC;
    int valid3 = core_mask == 0 || core_mask == 1 || core_mask == 2 || core_mask == 4 || core_mask == 3 ||
                 core_mask == 7 || core_mask == 0xffff;
    int valid2 = core_mask == 0 || core_mask == 1 || core_mask == 2 || core_mask == 3 || core_mask == 0xffff;
    if (g_cores == 1) {
        violation("rknn_set_core_mask(%d) on single-core %s", core_mask, g_soc);
        rc = RKNN_ERR_TARGET_PLATFORM_UNMATCH;
    } else if (g_cores == 3 ? !valid3 : !valid2) {
        violation("rknn_set_core_mask: mask %d is not valid on %s", core_mask, g_soc);
        rc = RKNN_ERR_PARAM_INVALID;
    } else {
        c->core_mask = core_mask;
    }
    release(c);
    return rc;
}

/* Which cores a run of this context occupies (a bit set). */
static int take_cores(const emu_ctx* c) {
    int mask = c->core_mask <= 0 ? 0 : c->core_mask == 0xffff ? (1 << g_cores) - 1 : c->core_mask;
    if (mask == 0) { /* AUTO: an idle core if there is one, else wait for one in turn */
        for (int k = 0; k < g_cores; k++)
            if (pthread_mutex_trylock(&g_core_mutex[k]) == 0) return 1 << k;
        int k = (int)(atomic_fetch_add(&g_auto_rr, 1) % (unsigned)g_cores);
        pthread_mutex_lock(&g_core_mutex[k]);
        return 1 << k;
    }
    for (int k = 0; k < g_cores; k++)
        if (mask & (1 << k)) pthread_mutex_lock(&g_core_mutex[k]);
    return mask;
}

/* Channels, height and width of a 4-D tensor (inputs are reported NHWC, outputs NCHW). */
static void chw_of(const emu_tensor* t, int is_input, uint32_t* c, uint32_t* h, uint32_t* w) {
    *c = is_input ? t->dims[3] : t->dims[1];
    *h = is_input ? t->dims[1] : t->dims[2];
    *w = is_input ? t->dims[2] : t->dims[3];
}

/* Where element k (original NCHW order) of tensor t sits in a buffer laid out as `a`. */
static size_t native_offset(const emu_tensor* t, int is_input, const rknn_tensor_attr* a, size_t k) {
    if (a->fmt != RKNN_TENSOR_NHWC && a->fmt != RKNN_TENSOR_NC1HWC2) return k;
    uint32_t ch, h, w;
    chw_of(t, is_input, &ch, &h, &w);
    size_t x = k % w, y = k / w % h, cc = k / ((size_t)w * h) % ch, b = k / ((size_t)w * h * ch);
    if (a->fmt == RKNN_TENSOR_NHWC) return ((b * h + y) * a->w_stride + x) * ch + cc;
    size_t c1 = a->dims[1], c2 = a->dims[4];
    return (((b * c1 + cc / c2) * h + y) * w + x) * c2 + cc % c2;
}

static int is_quantized(int type) { return type == RKNN_TENSOR_INT8 || type == RKNN_TENSOR_UINT8; }

static char* mem_data(const emu_mem* mem) { return (char*)mem->pub.virt_addr + mem->pub.offset; }

/* x_i[k]: from rknn_inputs_set's copy, or read where the NPU would, in the io mem (no copy). */
static double input_at(const emu_ctx* c, int i, size_t k) {
    if (c->mode != MODE_ZERO_COPY) return c->in_vals[i][k];
    const emu_tensor* t = &c->cur_in[i];
    const rknn_tensor_attr* a = &c->io_attr[0][i];
    double v = read_value(mem_data(c->io_mem[0][i]), a->type, native_offset(t, 1, a, k));
    if (!a->pass_through) return quantize(t, v);
    return is_quantized(t->type) ? (v - t->zp) * (double)t->scale : v;
}

static void store_output(emu_ctx* c, int j, size_t k, double v) {
    if (c->mode != MODE_ZERO_COPY) {
        c->out_vals[j][k] = v;
        return;
    }
    const emu_tensor* t = &c->cur_out[j];
    const rknn_tensor_attr* a = &c->io_attr[1][j];
    write_value(mem_data(c->io_mem[1][j]), t->type, native_offset(t, 0, a, k),
                is_quantized(t->type) ? nearbyint(v / t->scale) + t->zp : v);
}

static void compute(emu_ctx* c) {
    const emu_model* m = &c->shared->model;
    for (int j = 0; j < m->n_out; j++) {
        const emu_tensor* t = &c->cur_out[j];
        if (c->mode != MODE_ZERO_COPY && !c->out_vals[j]) c->out_vals[j] = emu_calloc(t->n_elems, sizeof(double));
        if (c->mode == MODE_ZERO_COPY && c->io_attr[1][j].fmt == RKNN_TENSOR_NC1HWC2)
            memset(mem_data(c->io_mem[1][j]), 0xA5, c->io_attr[1][j].size); /* padding channels: garbage */
        for (uint32_t k = 0; k < t->n_elems; k++) {
            double sum = 0;
            for (int i = 0; i < m->n_in; i++) sum += (i + 1) * input_at(c, i, (k + j) % c->cur_in[i].n_elems);
            store_output(c, j, k, quantize(t, c->gain * sum + 0.5 * j));
        }
    }
}

static int has_op(const emu_ctx* c, const char* op) {
    for (int i = 0; i < c->n_ops; i++)
        if (!strcmp(c->ops[i], op)) return 1;
    return 0;
}

/* ---------------------------------------------------------------- tensor memory */

/* A destroyed mem still set on a context points here, so a later run reports the use after free
 * (and a new mem at the old address is never mistaken for it). */
static emu_mem g_destroyed_mem;

static emu_mem* find_mem(const rknn_tensor_mem* pub) { /* g_lock held */
    for (emu_mem* m = g_mems; m; m = m->next)
        if (&m->pub == pub) return m;
    return NULL;
}

static rknn_tensor_mem* link_mem(emu_ctx* c, emu_mem* mem) {
    mem->ctx = c;
    pthread_mutex_lock(&g_lock);
    mem->next = g_mems;
    g_mems = mem;
    pthread_mutex_unlock(&g_lock);
    atomic_fetch_add(&g_live_mems, 1);
    return &mem->pub;
}

/* Zero-copy runs: every tensor needs a live mem, held in use (not destroyable) for the run. */
static int claim_mems(emu_ctx* c) {
    const emu_model* m = &c->shared->model;
    int missing = -1, dead = -1;
    pthread_mutex_lock(&g_lock);
    for (int io = 0; io < 2 && missing < 0 && dead < 0; io++)
        for (int i = 0; i < (io ? m->n_out : m->n_in) && missing < 0 && dead < 0; i++) {
            emu_mem* mem = c->io_mem[io][i];
            if (!mem) missing = io * EMU_MAX_IO + i;
            else if (mem == &g_destroyed_mem) dead = io * EMU_MAX_IO + i;
        }
    for (int io = 0; io < 2 && missing < 0 && dead < 0; io++)
        for (int i = 0; i < (io ? m->n_out : m->n_in); i++) c->io_mem[io][i]->users++;
    pthread_mutex_unlock(&g_lock);
    int bad = missing >= 0 ? missing : dead;
    if (bad < 0) return RKNN_SUCC;
    const char* kind = bad >= EMU_MAX_IO ? "output" : "input";
    if (missing >= 0)
        violation("rknn_run: zero copy, but no io mem was set for %s %d", kind, bad % EMU_MAX_IO);
    else
        violation("rknn_run: the io mem of %s %d was destroyed (use after free)", kind, bad % EMU_MAX_IO);
    return bad >= EMU_MAX_IO ? RKNN_ERR_OUTPUT_INVALID : RKNN_ERR_INPUT_INVALID;
}

static void unclaim_mems(emu_ctx* c) {
    const emu_model* m = &c->shared->model;
    pthread_mutex_lock(&g_lock);
    for (int io = 0; io < 2; io++)
        for (int i = 0; i < (io ? m->n_out : m->n_in); i++) c->io_mem[io][i]->users--;
    pthread_mutex_unlock(&g_lock);
}

static rknn_tensor_mem* create_mem(int api, rknn_context context, uint64_t size, uint64_t alloc_flags) {
    if (enter_api(api)) return NULL;
    emu_ctx* c = acquire(context, k_apis[api]);
    if (!c) return NULL;
    rknn_tensor_mem* result = NULL;
    if (size == 0 || size > UINT32_MAX) {
        runtime_error(RKNN_ERR_PARAM_INVALID, "%s: invalid size %llu", k_apis[api], (unsigned long long)size);
    } else if ((alloc_flags & 3) == 3 || (alloc_flags & ~(uint64_t)7)) {
        violation("%s: alloc flags 0x%llx are not CACHEABLE/NON_CACHEABLE/TRY_ALLOC_SRAM", k_apis[api],
                  (unsigned long long)alloc_flags);
    } else {
        /* A memfd plays the dma-buf: the mem has a real fd, as the runtime's do. */
        int fd = memfd_create("rknn-emu-mem", MFD_CLOEXEC);
        void* map = fd >= 0 && ftruncate(fd, (off_t)size) == 0
                        ? mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
                        : MAP_FAILED;
        emu_mem* mem = map != MAP_FAILED ? calloc(1, sizeof *mem) : NULL;
        if (!mem) {
            if (map != MAP_FAILED) munmap(map, size);
            if (fd >= 0) close(fd);
            runtime_error(RKNN_ERR_MALLOC_FAIL, "%s: cannot allocate %llu bytes", k_apis[api], (unsigned long long)size);
        } else {
            static atomic_ullong next_phys = 0x10000000;
            mem->pub.virt_addr = map;
            mem->pub.phys_addr = atomic_fetch_add(&next_phys, (size + 4095) / 4096 * 4096);
            mem->pub.fd = fd;
            mem->pub.size = (uint32_t)size;
            mem->pub.flags = 1; /* RKNN_TENSOR_MEMORY_FLAGS_ALLOC_INSIDE */
            mem->map = map;
            mem->map_len = size;
            mem->own_fd = fd;
            result = link_mem(c, mem);
        }
    }
    release(c);
    return result;
}

rknn_tensor_mem* rknn_create_mem(rknn_context ctx, uint32_t size) { return create_mem(API_CREATE_MEM, ctx, size, 0); }

rknn_tensor_mem* rknn_create_mem2(rknn_context ctx, uint64_t size, uint64_t alloc_flags) {
    return create_mem(API_CREATE_MEM2, ctx, size, alloc_flags);
}

rknn_tensor_mem* rknn_create_mem_from_fd(rknn_context context, int32_t fd, void* virt_addr, uint32_t size, int32_t offset) {
    if (enter_api(API_CREATE_MEM_FROM_FD)) return NULL;
    emu_ctx* c = acquire(context, "rknn_create_mem_from_fd");
    if (!c) return NULL;
    rknn_tensor_mem* result = NULL;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        violation("rknn_create_mem_from_fd: fd %d is not open", fd);
    } else if (offset < 0 || size == 0 || (uint64_t)offset + size > (uint64_t)st.st_size) {
        runtime_error(RKNN_ERR_PARAM_INVALID, "rknn_create_mem_from_fd: offset %d + size %u past the %lld bytes of fd %d",
                      offset, size, (long long)st.st_size, fd);
    } else {
        size_t len = (size_t)offset + size;
        void* map = virt_addr ? NULL : mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        emu_mem* mem = map != MAP_FAILED ? calloc(1, sizeof *mem) : NULL;
        if (!mem) {
            if (map && map != MAP_FAILED) munmap(map, len);
            runtime_error(RKNN_ERR_MALLOC_FAIL, "rknn_create_mem_from_fd: cannot map fd %d", fd);
        } else {
            mem->pub.virt_addr = virt_addr ? virt_addr : map;
            mem->pub.fd = fd;
            mem->pub.offset = offset;
            mem->pub.size = size;
            mem->pub.flags = 2; /* RKNN_TENSOR_MEMORY_FLAGS_FROM_FD */
            mem->map = map;
            mem->map_len = len;
            mem->own_fd = -1;
            result = link_mem(c, mem);
        }
    }
    release(c);
    return result;
}

int rknn_destroy_mem(rknn_context context, rknn_tensor_mem* pub) {
    int injected = enter_api(API_DESTROY_MEM);
    if (injected) return injected;
    emu_ctx* c = acquire(context, "rknn_destroy_mem");
    if (!c) return RKNN_ERR_CTX_INVALID;
    pthread_mutex_lock(&g_lock);
    emu_mem* mem = find_mem(pub);
    const char* problem = !mem ? "is not a live tensor mem (freed twice, or never created)"
                          : mem->ctx != c ? "was created on another context; destroy it with that one"
                          : mem->users ? "is in use by a running rknn_run"
                                       : NULL;
    if (!problem) {
        emu_mem** link = &g_mems;
        while (*link != mem) link = &(*link)->next;
        *link = mem->next;
        for (emu_ctx* other = g_contexts; other; other = other->next)
            for (int io = 0; io < 2; io++)
                for (int i = 0; i < EMU_MAX_IO; i++)
                    if (other->io_mem[io][i] == mem) other->io_mem[io][i] = &g_destroyed_mem;
    }
    pthread_mutex_unlock(&g_lock);
    release(c);
    if (problem) {
        violation("rknn_destroy_mem: mem %p %s", (void*)pub, problem);
        return RKNN_ERR_PARAM_INVALID;
    }
    if (mem->map) munmap(mem->map, mem->map_len);
    if (mem->own_fd >= 0) close(mem->own_fd);
    free(mem);
    atomic_fetch_sub(&g_live_mems, 1);
    return RKNN_SUCC;
}

/* The tensor an io attr names: index and name select it; 1 input, 2 output, 0 none/ambiguous. */
static int io_tensor_of(const emu_model* m, const rknn_tensor_attr* a) {
    int in = a->index < (uint32_t)m->n_in && !strncmp(m->in[a->index].name, a->name, RKNN_MAX_NAME_LEN);
    int out = a->index < (uint32_t)m->n_out && !strncmp(m->out[a->index].name, a->name, RKNN_MAX_NAME_LEN);
    return in && out ? 0 : in ? 1 : out ? 2 : 0;
}

/* Checks `a` against the layouts the emulated runtime reads or writes for tensor t (README.md);
 * the needed bytes go to *need. NULL if fine, else what is wrong. */
static const char* check_io_attr(const emu_tensor* t, int is_input, const rknn_tensor_attr* a, uint64_t* need) {
    rknn_tensor_attr want = {.index = a->index};
    int cmd = is_input ? (a->fmt == RKNN_TENSOR_NHWC ? RKNN_QUERY_NATIVE_NHWC_INPUT_ATTR
                          : a->fmt == RKNN_TENSOR_NC1HWC2 ? RKNN_QUERY_NATIVE_INPUT_ATTR
                                                          : RKNN_QUERY_INPUT_ATTR)
                       : (a->fmt == RKNN_TENSOR_NHWC ? RKNN_QUERY_NATIVE_NHWC_OUTPUT_ATTR
                          : a->fmt == RKNN_TENSOR_NC1HWC2 ? RKNN_QUERY_NATIVE_OUTPUT_ATTR
                                                          : RKNN_QUERY_OUTPUT_ATTR);
    fill_attr(&want, t, cmd);
    if (want.fmt != a->fmt || (t->n_dims == 4 && want.fmt != RKNN_TENSOR_NHWC && want.fmt != RKNN_TENSOR_NC1HWC2))
        return "fmt is not a native layout of this tensor";
    if (want.n_dims != a->n_dims || memcmp(want.dims, a->dims, sizeof want.dims) || want.w_stride != a->w_stride)
        return "dims or w_stride differ from the native attr";
    int converts = is_input && !a->pass_through;
    if (converts ? !type_size(a->type) : (int)a->type != t->type)
        return converts ? "type is not one the runtime converts" : "type is not the tensor's own type";
    if (converts && a->fmt == RKNN_TENSOR_NC1HWC2) return "NC1HWC2 inputs need pass_through";
    *need = (uint64_t)want.size_with_stride / type_size(t->type) * type_size(a->type);
    return NULL;
}

int rknn_set_io_mem(rknn_context context, rknn_tensor_mem* pub, rknn_tensor_attr* attr) {
    int injected = enter_api(API_SET_IO_MEM);
    if (injected) return injected;
    emu_ctx* c = acquire(context, "rknn_set_io_mem");
    if (!c) return RKNN_ERR_CTX_INVALID;
    const emu_model* m = &c->shared->model;
    int kind = attr ? io_tensor_of(m, attr) : 0;
    pthread_mutex_lock(&g_lock);
    emu_mem* mem = find_mem(pub);
    int same_model = mem && mem->ctx->shared == c->shared;
    uint32_t mem_size = mem ? mem->pub.size : 0;
    pthread_mutex_unlock(&g_lock);
    uint64_t need = 0;
    const char* wrong = kind ? check_io_attr(kind == 1 ? &m->in[attr->index] : &m->out[attr->index], kind == 1, attr, &need)
                             : NULL;
    int rc = RKNN_ERR_PARAM_INVALID;
    if (!mem) {
        violation("rknn_set_io_mem: mem %p is not a live tensor mem (destroyed, or never created)", (void*)pub);
    } else if (!same_model) {
        violation("rknn_set_io_mem: mem %p was created on a context of another rknn_init; only the context "
                  "it was made on and the dups of the same model may use it", (void*)pub);
    } else if (!kind) {
        violation("rknn_set_io_mem: attr (index %u, name '%s') names no tensor", attr ? attr->index : 0,
                  attr ? attr->name : "");
    } else if (wrong) {
        violation("rknn_set_io_mem: %s %u: %s", kind == 1 ? "input" : "output", attr->index, wrong);
    } else if (mem_size < need) {
        violation("rknn_set_io_mem: mem size(%u) < size_with_stride(%llu) of %s %u", mem_size,
                  (unsigned long long)need, kind == 1 ? "input" : "output", attr->index);
    } else if (c->mode == MODE_COPY) {
        violation("rknn_set_io_mem: context 0x%llx ran with rknn_inputs_set; a context serves one kind of run",
                  (unsigned long long)context);
        rc = RKNN_ERR_CTX_INVALID;
    } else {
        pthread_mutex_lock(&g_lock);
        c->io_mem[kind - 1][attr->index] = mem;
        pthread_mutex_unlock(&g_lock);
        c->io_attr[kind - 1][attr->index] = *attr;
        c->mode = MODE_ZERO_COPY;
        rc = RKNN_SUCC;
    }
    release(c);
    return rc;
}

int rknn_mem_sync(rknn_context context, rknn_tensor_mem* pub, int mode) {
    int injected = enter_api(API_MEM_SYNC);
    if (injected) return injected;
    emu_ctx* c = acquire(context, "rknn_mem_sync");
    if (!c) return RKNN_ERR_CTX_INVALID;
    pthread_mutex_lock(&g_lock);
    emu_mem* mem = find_mem(pub);
    int same_model = mem && mem->ctx->shared == c->shared;
    pthread_mutex_unlock(&g_lock);
    int rc = RKNN_ERR_PARAM_INVALID;
    if (!mem)
        violation("rknn_mem_sync: mem %p is not a live tensor mem", (void*)pub);
    else if (!same_model)
        violation("rknn_mem_sync: mem %p belongs to another model's context", (void*)pub);
    else if (mode < 1 || mode > 3)
        violation("rknn_mem_sync: mode %d is not TO_DEVICE (1), FROM_DEVICE (2) or BIDIRECTIONAL (3)", mode);
    else
        rc = RKNN_SUCC; /* the emulated NPU shares the CPU's caches */
    release(c);
    return rc;
}

/* Blocks a run (inside rknn_run, its cores held) until rknn_emu_release_runs; a test that never
 * releases it gets a violation after EMU_HOLD_LIMIT_S instead of a hang. */
#define EMU_HOLD_LIMIT_S 30
static void hold_run(void) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += EMU_HOLD_LIMIT_S;
    pthread_mutex_lock(&g_lock);
    unsigned generation = g_block_generation;
    int rc = 0;
    g_blocked++;
    pthread_cond_broadcast(&g_block_cond);
    while (generation == g_block_generation && rc == 0)
        rc = pthread_cond_timedwait(&g_block_cond, &g_lock, &deadline);
    g_blocked--;
    pthread_cond_broadcast(&g_block_cond);
    pthread_mutex_unlock(&g_lock);
    if (rc) violation("rknn_run: blocked for %d s and never released (rknn_emu_release_runs)", EMU_HOLD_LIMIT_S);
}

int rknn_run(rknn_context context, rknn_run_extend* extend) {
    int injected = enter_api(API_RUN);
    if (injected) return injected;
    emu_ctx* c = acquire(context, "rknn_run");
    if (!c) return RKNN_ERR_CTX_INVALID;
    const emu_model* m = &c->shared->model;
    int rc = RKNN_SUCC;
    if (extend) violation("rknn_run: pass NULL as rknn_run_extend");
    int claimed = 0;
    if (c->mode == MODE_ZERO_COPY) {
        rc = claim_mems(c);
        claimed = rc == RKNN_SUCC;
    } else if (c->inputs_set != (1 << m->n_in) - 1) {
        violation("rknn_run: not every input was set");
        rc = RKNN_ERR_INPUT_INVALID;
    }
    if (rc == RKNN_SUCC && m->custom_op[0] && !has_op(c, m->custom_op)) {
        rc = runtime_error(RKNN_ERR_FAIL, "rknn_run: op type '%s' is not registered", m->custom_op);
    } else if (rc == RKNN_SUCC) {
        int cores = take_cores(c), busy = 0;
        for (int k = 0; k < g_cores; k++) busy += (cores >> k) & 1;
        int now = atomic_fetch_add(&g_parallel, busy) + busy, seen = atomic_load(&g_max_parallel);
        while (now > seen && !atomic_compare_exchange_weak(&g_max_parallel, &seen, now)) {
        }
        compute(c);
        /* Tensor parallel over k cores: well below linear, (k + 1) / 2k of the time. */
        long sleep_us = g_compute_us > 0 ? (long)g_compute_us * (busy + 1) / (2 * busy) : 0;
        int block = 0;
        pthread_mutex_lock(&g_lock);
        if (g_delay_count > 0) {
            g_delay_count--;
            sleep_us = g_delay_us;
        }
        if (g_block_count > 0) {
            g_block_count--;
            block = 1;
        }
        pthread_mutex_unlock(&g_lock);
        if (sleep_us > 0) usleep((useconds_t)sleep_us);
        if (block) hold_run();
        atomic_fetch_sub(&g_parallel, busy);
        for (int k = 0; k < g_cores; k++)
            if (cores & (1 << k)) {
                atomic_fetch_add(&g_core_runs[k], 1);
                pthread_mutex_unlock(&g_core_mutex[k]);
            }
        c->have_run = 1;
    }
    if (claimed) unclaim_mems(c);
    release(c);
    return rc;
}

#ifndef EMU_ZERO_COPY_ONLY
int rknn_outputs_get(rknn_context context, uint32_t n_outputs, rknn_output outputs[], rknn_output_extend* extend) {
    int injected = enter_api(API_OUTPUTS_GET);
    if (injected) return injected;
    emu_ctx* c = acquire(context, "rknn_outputs_get");
    if (!c) return RKNN_ERR_CTX_INVALID;
    const emu_model* m = &c->shared->model;
    int rc = RKNN_SUCC, seen = 0;
    if (extend) violation("rknn_outputs_get: pass NULL as rknn_output_extend");
    if (c->mode == MODE_ZERO_COPY) {
        violation("rknn_outputs_get: context 0x%llx runs zero copy; its outputs are in the io mems",
                  (unsigned long long)context);
        rc = RKNN_ERR_CTX_INVALID;
    } else if (c->outstanding) {
        violation("rknn_outputs_get: the previous outputs were not released");
        rc = RKNN_ERR_FAIL;
    } else if (!c->have_run) {
        rc = runtime_error(RKNN_ERR_FAIL, "rknn_outputs_get: nothing was run on this context");
    } else if (n_outputs == 0 || n_outputs > (uint32_t)m->n_out || !outputs) {
        violation("rknn_outputs_get: %u outputs asked, the model has %d", n_outputs, m->n_out);
        rc = RKNN_ERR_PARAM_INVALID;
    }
    for (uint32_t k = 0; rc == RKNN_SUCC && k < n_outputs; k++) {
        rknn_output* o = &outputs[k];
        const emu_tensor* t = o->index < (uint32_t)m->n_out ? &c->cur_out[o->index] : NULL;
        if (!t || (seen & (1 << o->index))) {
            violation("rknn_outputs_get: bad or repeated output index %u", o->index);
            rc = RKNN_ERR_PARAM_INVALID;
            break;
        }
        seen |= 1 << o->index;
        int type = o->want_float ? RKNN_TENSOR_FLOAT32 : t->type;
        uint32_t need = t->n_elems * type_size(type);
        if (o->is_prealloc) {
            if (!o->buf || o->size < need) {
                violation("rknn_outputs_get: preallocated output %u has %u bytes, needs %u", o->index, o->size, need);
                rc = RKNN_ERR_PARAM_INVALID;
                break;
            }
        } else {
            o->buf = c->runtime_bufs[k] = emu_calloc(need, 1);
            o->size = need;
        }
        for (uint32_t i = 0; i < t->n_elems; i++) {
            double v = c->out_vals[o->index][i];
            int quantised = !o->want_float && (t->type == RKNN_TENSOR_INT8 || t->type == RKNN_TENSOR_UINT8);
            write_value(o->buf, type, i, quantised ? nearbyint(v / t->scale) + t->zp : v);
        }
    }
    if (rc == RKNN_SUCC) {
        c->outstanding = (int)n_outputs;
    } else {
        for (int i = 0; i < EMU_MAX_IO; i++) {
            emu_free(c->runtime_bufs[i]);
            c->runtime_bufs[i] = NULL;
        }
    }
    release(c);
    return rc;
}

int rknn_outputs_release(rknn_context context, uint32_t n_outputs, rknn_output outputs[]) {
    int injected = enter_api(API_OUTPUTS_RELEASE);
    if (injected) return injected;
    emu_ctx* c = acquire(context, "rknn_outputs_release");
    if (!c) return RKNN_ERR_CTX_INVALID;
    int rc = RKNN_SUCC;
    if (!c->outstanding || n_outputs != (uint32_t)c->outstanding || !outputs) {
        violation("rknn_outputs_release: %u outputs released, %d outstanding", n_outputs, c->outstanding);
        rc = RKNN_ERR_PARAM_INVALID;
    }
    if (rc == RKNN_SUCC) {
        for (int i = 0; i < EMU_MAX_IO; i++) {
            emu_free(c->runtime_bufs[i]);
            c->runtime_bufs[i] = NULL;
        }
        c->outstanding = 0;
    }
    release(c);
    return rc;
}
#endif

/* Whether attr `a` (n_dims, dims, fmt) is one of input i's allowed shapes. */
static int shape_allowed(const emu_model* m, int i, const rknn_tensor_attr* a) {
    const emu_tensor* t = &m->in[i];
    int fmt = t->n_dims == 4 ? RKNN_TENSOR_NHWC : RKNN_TENSOR_UNDEFINED;
    if (a->n_dims != t->n_dims || (int)a->fmt != fmt) return 0;
    for (uint32_t s = 0; s < m->n_shapes[i]; s++)
        if (!memcmp(a->dims, m->shapes[i][s], t->n_dims * sizeof(uint32_t))) return 1;
    return 0;
}

int rknn_set_input_shapes(rknn_context context, uint32_t n_inputs, rknn_tensor_attr attrs[]) {
    int injected = enter_api(API_SET_INPUT_SHAPES);
    if (injected) return injected;
    emu_ctx* c = acquire(context, "rknn_set_input_shapes");
    if (!c) return RKNN_ERR_CTX_INVALID;
    const emu_model* m = &c->shared->model;
    int rc = RKNN_SUCC, seen = 0;
    if (!m->dynamic) {
        violation("rknn_set_input_shapes: the model has no dynamic input shapes");
        rc = RKNN_ERR_PARAM_INVALID;
    } else if (c->mode == MODE_ZERO_COPY) {
        rc = runtime_error(RKNN_ERR_FAIL, "rknn_set_input_shapes: not emulated on zero-copy contexts");
    } else if (c->outstanding) {
        violation("rknn_set_input_shapes: outputs of the previous run were not released");
        rc = RKNN_ERR_FAIL;
    } else if (n_inputs != (uint32_t)m->n_in || !attrs) {
        violation("rknn_set_input_shapes: %u attrs given, the model has %d inputs", n_inputs, m->n_in);
        rc = RKNN_ERR_PARAM_INVALID;
    }
    for (uint32_t k = 0; rc == RKNN_SUCC && k < n_inputs; k++) {
        const rknn_tensor_attr* a = &attrs[k];
        if (a->index >= (uint32_t)m->n_in || (seen & (1 << a->index)) ||
            strncmp(a->name, m->in[a->index].name, RKNN_MAX_NAME_LEN)) {
            violation("rknn_set_input_shapes: bad or repeated input index %u (name '%.64s')", a->index, a->name);
            rc = RKNN_ERR_PARAM_INVALID;
        } else if (!shape_allowed(m, (int)a->index, a)) {
            violation("rknn_set_input_shapes: input %u: n_dims %u, fmt %d and dims [%u %u %u %u ...] are not one "
                      "of its INPUT_DYNAMIC_RANGE", a->index, a->n_dims, a->fmt, a->dims[0], a->dims[1], a->dims[2],
                      a->dims[3]);
            rc = RKNN_ERR_PARAM_INVALID;
        }
        seen |= 1 << a->index;
    }
    if (rc == RKNN_SUCC) {
        for (uint32_t k = 0; k < n_inputs; k++) set_dims(&c->cur_in[attrs[k].index], attrs[k].dims);
        derive_outputs(m, c->cur_in, c->cur_out);
        for (int i = 0; i < EMU_MAX_IO; i++) { /* sized for the old shapes; set inputs again */
            emu_free(c->in_vals[i]);
            emu_free(c->out_vals[i]);
            c->in_vals[i] = c->out_vals[i] = NULL;
        }
        c->inputs_set = 0;
        c->have_run = 0;
    }
    release(c);
    return rc;
}

int rknn_register_custom_ops(rknn_context context, rknn_custom_op* op, uint32_t custom_op_num) {
    int injected = enter_api(API_REGISTER_OPS);
    if (injected) return injected;
    emu_ctx* c = acquire(context, "rknn_register_custom_ops");
    if (!c) return RKNN_ERR_CTX_INVALID;
    int rc = RKNN_SUCC;
    for (uint32_t i = 0; i < custom_op_num && rc == RKNN_SUCC; i++) {
        if (op[i].target != 1 && op[i].target != 2) {
            violation("rknn_register_custom_ops: op %u has target %d", i, op[i].target);
            rc = RKNN_ERR_PARAM_INVALID;
        } else if (has_op(c, op[i].op_type) || c->n_ops == EMU_MAX_OPS) {
            rc = runtime_error(RKNN_ERR_PARAM_INVALID, "rknn_register_custom_ops: '%s' already registered",
                               op[i].op_type);
        } else {
            snprintf(c->ops[c->n_ops++], RKNN_MAX_NAME_LEN, "%s", op[i].op_type);
        }
    }
    release(c);
    return rc;
}

/* ---------------------------------------------------------------- control API */

static int cores_of(const char* soc) {
    if (!strncmp(soc, "rk3588", 6)) return 3;
    if (!strncmp(soc, "rk3576", 6)) return 2;
    return 1;
}

int rknn_emu_configure(const char* soc, int compute_us) {
    if (atomic_load(&g_live_contexts)) {
        violation("rknn_emu_configure: %d contexts still alive", atomic_load(&g_live_contexts));
        return RKNN_ERR_PARAM_INVALID;
    }
    pthread_mutex_lock(&g_lock);
    snprintf(g_soc, sizeof g_soc, "%s", soc);
    g_cores = cores_of(soc);
    g_compute_us = compute_us;
    snprintf(g_api_version, sizeof g_api_version, "2.4.2 (emulated)");
    snprintf(g_drv_version, sizeof g_drv_version, "0.9.8");
    memset(g_fail_count, 0, sizeof g_fail_count);
    memset(g_signal_count, 0, sizeof g_signal_count);
    g_delay_count = 0;
    g_block_count = 0;
    g_last_violation[0] = 0;
    pthread_mutex_unlock(&g_lock);
    atomic_store(&g_violations, 0);
    atomic_store(&g_max_parallel, 0);
    atomic_store(&g_early_destroys, 0);
    for (int i = 0; i < API_COUNT; i++) atomic_store(&g_calls[i], 0);
    for (int i = 0; i < EMU_MAX_CORES; i++) atomic_store(&g_core_runs[i], 0);
    return RKNN_SUCC;
}

/* A process that cannot call rknn_emu_configure (a Ray worker, a server started by a tool) names
 * its emulated board in the environment: RKNN_EMU_SOC (default rk3588) and RKNN_EMU_COMPUTE_US
 * (default 0), read once when the library is loaded. */
__attribute__((constructor)) static void configure_from_environment(void) {
    const char* soc = getenv("RKNN_EMU_SOC");
    const char* compute = getenv("RKNN_EMU_COMPUTE_US");
    if (soc && *soc) {
        snprintf(g_soc, sizeof g_soc, "%s", soc);
        g_cores = cores_of(soc);
    }
    if (compute && *compute) g_compute_us = atoi(compute);
}

void rknn_emu_set_versions(const char* api_version, const char* drv_version) {
    pthread_mutex_lock(&g_lock);
    snprintf(g_api_version, sizeof g_api_version, "%s", api_version);
    snprintf(g_drv_version, sizeof g_drv_version, "%s", drv_version);
    pthread_mutex_unlock(&g_lock);
}

static int api_index(const char* api) {
    for (int i = 0; i < API_COUNT; i++)
        if (!strcmp(k_apis[i], api)) return i;
    return -1;
}

void rknn_emu_inject_failure(const char* api, int code, int count) {
    int i = api_index(api);
    if (i < 0) {
        violation("rknn_emu_inject_failure: unknown api %s", api);
        return;
    }
    pthread_mutex_lock(&g_lock);
    g_fail_code[i] = code;
    g_fail_count[i] = count;
    pthread_mutex_unlock(&g_lock);
}

int rknn_emu_violations(void) { return atomic_load(&g_violations); }
const char* rknn_emu_last_violation(void) { return g_last_violation; }
int rknn_emu_live_allocations(void) { return atomic_load(&g_live_allocs); }
int rknn_emu_live_contexts(void) { return atomic_load(&g_live_contexts); }
int rknn_emu_live_mems(void) { return atomic_load(&g_live_mems); }

int rknn_emu_calls(const char* api) {
    int i = api_index(api);
    return i < 0 ? -1 : atomic_load(&g_calls[i]);
}

int rknn_emu_core_runs(int core) {
    return core >= 0 && core < EMU_MAX_CORES ? atomic_load(&g_core_runs[core]) : -1;
}

int rknn_emu_max_parallel(void) { return atomic_load(&g_max_parallel); }

int rknn_emu_contexts_with_mask(int mask) {
    int count = 0;
    pthread_mutex_lock(&g_lock);
    for (emu_ctx* c = g_contexts; c; c = c->next) count += c->core_mask == mask;
    pthread_mutex_unlock(&g_lock);
    return count;
}

int rknn_emu_early_destroys(void) { return atomic_load(&g_early_destroys); }

void rknn_emu_raise_signal(const char* api, int signo, int count) {
    int i = api_index(api);
    if (i < 0) return;
    pthread_mutex_lock(&g_lock);
    g_signal_no[i] = signo;
    g_signal_count[i] = count;
    pthread_mutex_unlock(&g_lock);
}

void rknn_emu_set_run_delay(int us, int count) {
    pthread_mutex_lock(&g_lock);
    g_delay_us = us;
    g_delay_count = count;
    pthread_mutex_unlock(&g_lock);
}

void rknn_emu_block_runs(int count) {
    pthread_mutex_lock(&g_lock);
    g_block_count = count;
    pthread_mutex_unlock(&g_lock);
}

int rknn_emu_wait_blocked(int n, int timeout_ms) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&g_lock);
    int rc = 0;
    while (g_blocked < n && rc == 0) rc = pthread_cond_timedwait(&g_block_cond, &g_lock, &deadline);
    int blocked = g_blocked;
    pthread_mutex_unlock(&g_lock);
    return blocked;
}

int rknn_emu_release_runs(void) {
    pthread_mutex_lock(&g_lock);
    int released = g_blocked;
    g_block_count = 0;
    g_block_generation++;
    pthread_cond_broadcast(&g_block_cond);
    pthread_mutex_unlock(&g_lock);
    return released;
}
