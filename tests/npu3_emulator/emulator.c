/*
 * An emulated librknn3_api (RKNPU3: RK1820/RK1828 co-processors): the ABI of rknn3_emu_api.h, built
 * once per ABI version (RKNN3_EMU_ABI 10 or 11), with the runtime's documented rules enforced.
 *
 * Why: the RKNPU3 binding must be proven without a card. Each rule of shared/RKNN3_ABI.md that a
 * binding can break is checked; a breach is a *violation*: printed to stderr, counted, and read by
 * the tests, which fail on any. Ordinary errors (bad model bytes, injected failures, timeouts) are
 * returned as the runtime does, with an "E RKNN3:" line. README.md lists the rules.
 *
 * The hardware: g_devices devices ("0000:0N:00.0", PCIE) with g_cores NPU cores each, one mutex per
 * core; a run holds the cores of its context's run_core_mask and sleeps compute_us. Each tensor mem
 * has a host side (virt_addr) and a device side: mem_sync TO_DEVICE / FROM_DEVICE copy between them
 * and rknn3_run reads and writes only the device side, so a forgotten sync gives stale data.
 *
 * The network (the same function as the RKNPU2 emulator's, so tests share the numpy reference), in
 * float64 on the original NCHW element order:
 *     out_j[k] = gain * sum_i (i + 1) * x_i[(k + j) mod n_i] + 0.5 * j
 * where x_i is input i as held in its internal type (dequantised) and out_j is stored in the
 * output's internal type. `gain` comes from the .weight file.
 */
#define _GNU_SOURCE
#include "rknn3_emu_api.h"

#define EMU_LOG_NAME "rknn3-emu"
#define EMU_ERROR_PREFIX "E RKNN3"
#include "emu_support.h" /* in ../npu_emulator, shared with the RKNPU2 emulator */

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define EMU_MAX_IO 8
#define EMU_MAX_DEVICES 4
#define EMU_MAX_CORES 16
#define EMU_MAX_SHAPES 8

#if RKNN3_EMU_ABI >= 11
#define EMU_VERSION "1.1.0"
#else
#define EMU_VERSION "1.0.0"
#endif

/* The real binaries embed this line; `doctor` reads a library's version without loading it. */
__attribute__((used)) const char rknn3_emu_version_banner[] =
    "librknn3_api version: " EMU_VERSION " (ez-rknn emulator)";

/* ---------------------------------------------------------------- bookkeeping */

static pthread_cond_t g_hang_cond = PTHREAD_COND_INITIALIZER;
static atomic_int g_live_contexts;
static atomic_int g_live_mems;
static atomic_int g_parallel;
static atomic_int g_max_parallel;
static atomic_int g_core_runs[EMU_MAX_DEVICES][EMU_MAX_CORES];

static int g_devices = 2;
static int g_cores = 8;
static atomic_int g_compute_us;
static int g_hang_released;
static char g_firmware_version[64] = EMU_VERSION;
static pthread_mutex_t g_core_mutex[EMU_MAX_DEVICES][EMU_MAX_CORES];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static const char* const k_apis[] = {
    "rknn3_find_devices", "rknn3_init", "rknn3_destroy", "rknn3_load_model_from_data",
    "rknn3_model_init", "rknn3_query", "rknn3_run", "rknn3_create_mem", "rknn3_destroy_mem",
    "rknn3_mem_sync", "rknn3_set_shape"};
enum { API_FIND, API_INIT, API_DESTROY, API_LOAD, API_MODEL_INIT, API_QUERY, API_RUN,
       API_CREATE_MEM, API_DESTROY_MEM, API_MEM_SYNC, API_SET_SHAPE, API_COUNT };
static atomic_int g_calls[API_COUNT];
static int g_fail_code[API_COUNT];
static int g_fail_count[API_COUNT];
static int g_fail_skip[API_COUNT];

/* Once per process. The hardware and the proxy/firmware live outside the process, so a child
 * process (doctor's probe) learns them from the environment: RKNN3_EMU_DEVICES, RKNN3_EMU_CORES,
 * RKNN3_EMU_FIRMWARE_VERSION; rknn3_emu_configure overrides them. */
static void startup(void) {
    for (int d = 0; d < EMU_MAX_DEVICES; d++)
        for (int k = 0; k < EMU_MAX_CORES; k++) pthread_mutex_init(&g_core_mutex[d][k], NULL);
    const char* value;
    if ((value = getenv("RKNN3_EMU_DEVICES")) && atoi(value) >= 0 && atoi(value) <= EMU_MAX_DEVICES)
        g_devices = atoi(value);
    if ((value = getenv("RKNN3_EMU_CORES")) && atoi(value) >= 1 && atoi(value) <= EMU_MAX_CORES)
        g_cores = atoi(value);
    if ((value = getenv("RKNN3_EMU_FIRMWARE_VERSION")))
        snprintf(g_firmware_version, sizeof g_firmware_version, "%s", value);
}

/* Counts the call; returns the injected code (non-zero) if this call must fail. */
static int enter_api(int api) {
    int code = 0;
    pthread_once(&g_once, startup);
    atomic_fetch_add(&g_calls[api], 1);
    pthread_mutex_lock(&g_lock);
    if (g_fail_skip[api] > 0) {
        g_fail_skip[api]--;
    } else if (g_fail_count[api] > 0) {
        g_fail_count[api]--;
        code = g_fail_code[api];
    }
    pthread_mutex_unlock(&g_lock);
    if (code) runtime_error(code, "%s failed (injected %d)", k_apis[api], code);
    return code;
}

/* ---------------------------------------------------------------- models */

typedef struct {
    char name[RKNN3_MAX_NAME_LEN];
    int type;
    int zp;
    float scale;
    uint32_t n_dims;
    uint32_t dims[RKNN3_MAX_DIMS]; /* original layout: NCHW for 4-D */
    uint32_t n_elems;
} emu_tensor;

typedef struct {
    uint32_t core_num;
    int weight_id;
    double gain;
    char custom_string[1024];
    int n_in, n_out;
    emu_tensor in[EMU_MAX_IO], out[EMU_MAX_IO]; /* as declared: shape 0 */
    int n_shapes; /* > 1: a dynamic-shape model (`shape` lines) */
    int input_shapes[EMU_MAX_IO]; /* shapes listed for each input (1: static input) */
    uint32_t shapes[EMU_MAX_IO][EMU_MAX_SHAPES][RKNN3_MAX_DIMS];
} emu_model;

static void set_dims(emu_tensor* t, const uint32_t* dims) {
    t->n_elems = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) t->n_elems *= (t->dims[d] = dims[d]);
}

/* The tensors of shape `id`: each dynamic input at its id-th shape; a 4-D output takes the first
 * input's H and W (NCHW) when the model is dynamic, everything else stays as declared. */
static void shape_tensors(const emu_model* m, int id, emu_tensor* in, emu_tensor* out) {
    for (int i = 0; i < m->n_in; i++) {
        in[i] = m->in[i];
        if (m->input_shapes[i] > 1) set_dims(&in[i], m->shapes[i][id]);
    }
    for (int j = 0; j < m->n_out; j++) {
        out[j] = m->out[j];
        if (m->n_shapes > 1 && in[0].n_dims == 4 && out[j].n_dims == 4) {
            uint32_t dims[RKNN3_MAX_DIMS];
            memcpy(dims, out[j].dims, sizeof dims);
            dims[2] = in[0].dims[2];
            dims[3] = in[0].dims[3];
            set_dims(&out[j], dims);
        }
    }
}

static int type_size(int type) {
    return type == RKNN3_TENSOR_FLOAT32 ? 4 : type == RKNN3_TENSOR_FLOAT16 ? 2 : 1;
}

static int parse_tensor(const char* rest, emu_tensor* t) {
    char type[32];
    int used = 0;
    if (sscanf(rest, "%255s %31s %d %f %u%n", t->name, type, &t->zp, &t->scale, &t->n_dims, &used) != 5)
        return -1;
    if (!strcmp(type, "float32")) t->type = RKNN3_TENSOR_FLOAT32;
    else if (!strcmp(type, "float16")) t->type = RKNN3_TENSOR_FLOAT16;
    else if (!strcmp(type, "int8")) t->type = RKNN3_TENSOR_INT8;
    else if (!strcmp(type, "uint8")) t->type = RKNN3_TENSOR_UINT8;
    else return -1;
    if (t->n_dims == 0 || t->n_dims > 8) return -1;
    rest += used;
    t->n_elems = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        if (sscanf(rest, "%u%n", &t->dims[d], &used) != 1 || t->dims[d] == 0) return -1;
        rest += used;
        t->n_elems *= t->dims[d];
    }
    return 0;
}

/* "RKNX EZEMU 1\n" then directives (README.md), "end". Returns 0 or MODEL_INVALID. */
static int parse_model(const char* data, uint64_t size, emu_model* m) {
    static const char magic[] = "RKNX EZEMU 1\n";
    if (!data || size < sizeof magic - 1 || memcmp(data, magic, sizeof magic - 1)) return -1;
    char* text = emu_calloc(1, size + 1);
    if (!text) return -1;
    memcpy(text, data, size);
    memset(m, 0, sizeof *m);
    m->core_num = 1;
    int ended = 0, bad = 0;
    for (char* save = NULL, *line = strtok_r(text + sizeof magic - 1, "\n", &save); line && !bad;
         line = strtok_r(NULL, "\n", &save)) {
        if (!strncmp(line, "core_num ", 9)) {
            bad = sscanf(line + 9, "%u", &m->core_num) != 1 || m->core_num == 0 || m->core_num > EMU_MAX_CORES;
        } else if (!strncmp(line, "weight_id ", 10)) {
            bad = sscanf(line + 10, "%d", &m->weight_id) != 1;
        } else if (!strncmp(line, "custom_string ", 14)) {
            snprintf(m->custom_string, sizeof m->custom_string, "%s", line + 14);
        } else if (!strncmp(line, "shape ", 6)) {
            int i = m->n_in - 1, k = i < 0 ? 0 : m->input_shapes[i];
            bad = i < 0 || k == EMU_MAX_SHAPES;
            const char* rest = line + 6;
            int used = 0;
            for (uint32_t d = 0; !bad && d < m->in[i].n_dims; d++, rest += used)
                bad = sscanf(rest, "%u%n", &m->shapes[i][k][d], &used) != 1 || !m->shapes[i][k][d];
            if (!bad) m->input_shapes[i]++;
        } else if (!strncmp(line, "input ", 6)) {
            bad = m->n_in == EMU_MAX_IO || parse_tensor(line + 6, &m->in[m->n_in]);
            if (!bad) {
                memcpy(m->shapes[m->n_in][0], m->in[m->n_in].dims, sizeof m->in[0].dims);
                m->input_shapes[m->n_in++] = 1;
            }
        } else if (!strncmp(line, "output ", 7)) {
            bad = m->n_out == EMU_MAX_IO || parse_tensor(line + 7, &m->out[m->n_out++]);
        } else if (!strcmp(line, "end")) {
            ended = 1;
            break;
        } else {
            bad = 1;
        }
    }
    emu_free(text);
    m->n_shapes = 1;
    for (int i = 0; i < m->n_in; i++) {
        if (m->input_shapes[i] > 1 && m->n_shapes > 1 && m->input_shapes[i] != m->n_shapes) bad = 1;
        if (m->input_shapes[i] > 1) m->n_shapes = m->input_shapes[i];
    }
    return (bad || !ended || !m->n_in || !m->n_out) ? -1 : 0;
}

/* "EZEMU-WEIGHT <id> <gain>": the companion .weight of the export with that id. */
static int parse_weight(const char* data, uint64_t size, int* id, double* gain) {
    char text[128] = {0};
    if (!data || size == 0) return -1;
    memcpy(text, data, size < sizeof text - 1 ? size : sizeof text - 1);
    return sscanf(text, "EZEMU-WEIGHT %d %lf", id, gain) == 2 ? 0 : -1;
}

/* ---------------------------------------------------------------- contexts and mems */

typedef struct emu_ctx {
    rknn3_context handle;
    int device;
    atomic_int busy;
    int loaded;
    int initialised;
    emu_model model;
    uint32_t mask;
    uint32_t timeout_ms;
    int32_t priority;
    int first_core;
    int n_mems;
    int shape; /* the current shape of a dynamic model */
    emu_tensor in[EMU_MAX_IO], out[EMU_MAX_IO]; /* the model's tensors at that shape */
    struct emu_ctx* next;
} emu_ctx;

typedef struct emu_mem {
    rknn3_tensor_mem pub; /* first: the pointer handed out */
    rknn3_context owner;
    char* host;
    char* device;
    int to_device_pending; /* an input: synced TO_DEVICE since the last run? (0 = yes) */
    int from_device_pending; /* an output written by a run and not synced FROM_DEVICE yet */
    int synced_once;
    struct emu_mem* next;
} emu_mem;

static emu_ctx* g_contexts;
static emu_mem* g_mems;
static uint64_t g_next_handle = 0x100000000ull + 7; /* above 2^32: truncation shows */

static emu_ctx* acquire(rknn3_context handle, const char* api) {
    pthread_mutex_lock(&g_lock);
    emu_ctx* c = g_contexts;
    while (c && c->handle != handle) c = c->next;
    pthread_mutex_unlock(&g_lock);
    if (!c) {
        violation("%s: context 0x%llx is not alive", api, (unsigned long long)handle);
        return NULL;
    }
    if (atomic_exchange(&c->busy, 1)) {
        violation("%s: another thread is inside a call on context 0x%llx (calls on one context "
                  "must be serialised)", api, (unsigned long long)handle);
        return NULL;
    }
    return c;
}

static void release(emu_ctx* c) { atomic_store(&c->busy, 0); }

static emu_mem* find_mem(const rknn3_tensor_mem* pub) {
    emu_mem* m = g_mems;
    while (m && &m->pub != pub) m = m->next;
    return m;
}

/* ---------------------------------------------------------------- devices */

static void device_id(int d, char* out, size_t size) { snprintf(out, size, "0000:0%d:00.0", d + 1); }

int rknn3_find_devices(rknn3_devices* pdevs) {
    int injected = enter_api(API_FIND);
    if (injected) return injected;
    if (!pdevs) return RKNN3_ERR_ARGUMENT_INVALID;
    memset(pdevs, 0, sizeof *pdevs);
    pdevs->n_devices = g_devices;
    for (int d = 0; d < g_devices; d++) {
        rknn3_device* dev = &pdevs->devices[d];
        device_id(d, dev->id, sizeof dev->id);
        snprintf(dev->type, sizeof dev->type, "PCIE");
        dev->mem_info.node_num = g_cores;
        for (int k = 0; k < g_cores; k++) {
            dev->mem_info.node_mem_info[k].total = 1ull << 30;
            dev->mem_info.node_mem_info[k].free = 1ull << 29;
        }
    }
    return 0;
}

static int versions_match(void) {
    /* major.minor of library and proxy/firmware must agree */
    const char* a = EMU_VERSION;
    const char* b = g_firmware_version;
    const char* dot = strchr(a + 2, '.');
    size_t n = dot ? (size_t)(dot - a) : strlen(a);
    return !strncmp(a, b, n) && (b[n] == '.' || b[n] == 0);
}

int rknn3_init(rknn3_context* context, rknn3_init_extend* init_extend) {
    int injected = enter_api(API_INIT);
    if (injected) return injected;
    if (!context) return RKNN3_ERR_ARGUMENT_INVALID;
    int device = 0;
    if (!init_extend || !init_extend->device_id) {
        if (g_devices > 1) {
            violation("rknn3_init without init_extend.device_id while %d devices are attached", g_devices);
            return runtime_error(RKNN3_ERR_DEVICE_UNMATCH, "find %d devices, please specify init_extend!", g_devices);
        }
    } else {
        device = -1;
        for (int d = 0; d < g_devices; d++) {
            char id[RKNN3_MAX_DEV_LEN];
            device_id(d, id, sizeof id);
            if (!strcmp(id, init_extend->device_id)) device = d;
        }
        if (device < 0)
            return runtime_error(RKNN3_ERR_DEVICE_UNAVAILABLE, "device %s not found", init_extend->device_id);
    }
    if (g_devices == 0) return runtime_error(RKNN3_ERR_DEVICE_UNAVAILABLE, "no device found");
    if (!versions_match()) {
#if RKNN3_EMU_ABI >= 11
        return runtime_error(RKNN3_ERR_INCOMPATIBLE_VERSION, "librknn3_api %s does not match proxy/firmware %s",
                             EMU_VERSION, g_firmware_version);
#else
        /* 1.0 has no version check: the handshake never completes (RKNN3_ABI.md 1.2) */
        pthread_mutex_lock(&g_lock);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 120;
        while (!g_hang_released)
            if (pthread_cond_timedwait(&g_hang_cond, &g_lock, &until)) break;
        pthread_mutex_unlock(&g_lock);
        return runtime_error(RKNN3_ERR_COMMUNICATION, "recv(MsgInitAck) fail");
#endif
    }
    emu_ctx* c = emu_calloc(1, sizeof *c);
    if (!c) return RKNN3_ERR_OUT_OF_MEMORY;
    c->device = device;
    c->first_core = -1;
    pthread_mutex_lock(&g_lock);
    c->handle = g_next_handle;
    g_next_handle += 0x1000;
    c->next = g_contexts;
    g_contexts = c;
    pthread_mutex_unlock(&g_lock);
    atomic_fetch_add(&g_live_contexts, 1);
    *context = c->handle;
    return 0;
}

#if RKNN3_EMU_ABI < 11
int rknn3_dup_context(rknn3_context context_in, rknn3_context* context_out) {
    (void)context_in;
    (void)context_out;
    return runtime_error(RKNN3_ERR_FAIL, "rknn3_dup_context is not emulated");
}
#endif

int rknn3_destroy(rknn3_context context) {
    int injected = enter_api(API_DESTROY);
    if (injected) return injected;
    emu_ctx* c = acquire(context, "rknn3_destroy");
    if (!c) return RKNN3_ERR_CTX_INVALID;
    pthread_mutex_lock(&g_lock);
    int mems = c->n_mems;
    if (!mems) {
        emu_ctx** link = &g_contexts;
        while (*link != c) link = &(*link)->next;
        *link = c->next;
    }
    pthread_mutex_unlock(&g_lock);
    if (mems) {
        violation("rknn3_destroy: context 0x%llx still has %d tensor mems", (unsigned long long)context, mems);
        release(c);
        return RKNN3_ERR_FAIL;
    }
    atomic_fetch_sub(&g_live_contexts, 1);
    emu_free(c);
    return 0;
}

int rknn3_load_model_from_data(rknn3_context context, const void* model_data, uint64_t model_size,
                               const void* weight_data, uint64_t weight_size) {
    int injected = enter_api(API_LOAD);
    if (injected) return injected;
    emu_ctx* c = acquire(context, "rknn3_load_model_from_data");
    if (!c) return RKNN3_ERR_CTX_INVALID;
    int rc = 0, weight_id = 0;
    double gain = 0;
    if (c->loaded) {
        violation("rknn3_load_model_from_data: context 0x%llx already has a model", (unsigned long long)context);
        rc = RKNN3_ERR_FAIL;
    } else if (parse_model(model_data, model_size, &c->model)) {
        rc = runtime_error(RKNN3_ERR_MODEL_INVALID, "invalid model data (%llu bytes)", (unsigned long long)model_size);
    } else if (!weight_data || !weight_size) {
        rc = runtime_error(RKNN3_ERR_ARGUMENT_INVALID, "weight data is required (streaming load is not emulated)");
    } else if (parse_weight(weight_data, weight_size, &weight_id, &gain) || weight_id != c->model.weight_id) {
        violation("rknn3_load_model_from_data: the .weight (id %d) is not the model's own (id %d)", weight_id,
                  c->model.weight_id);
        rc = runtime_error(RKNN3_ERR_MODEL_INVALID, "weight does not match the model");
    } else {
        c->model.gain = gain;
        c->loaded = 1;
        shape_tensors(&c->model, 0, c->in, c->out);
    }
    release(c);
    return rc;
}

int rknn3_load_model_from_path(rknn3_context context, const char* model_path, const char* weight_path) {
    (void)context;
    (void)model_path;
    (void)weight_path;
    violation("rknn3_load_model_from_path: the binding must pass bytes (load_model_from_data)");
    return RKNN3_ERR_FAIL;
}

static int popcount32(uint32_t v) { return __builtin_popcount(v); }

int rknn3_model_init(rknn3_context context, rknn3_config* config) {
    int injected = enter_api(API_MODEL_INIT);
    if (injected) return injected;
    emu_ctx* c = acquire(context, "rknn3_model_init");
    if (!c) return RKNN3_ERR_CTX_INVALID;
    int rc = 0;
    if (!config) {
        violation("rknn3_model_init: config must not be NULL");
        rc = RKNN3_ERR_ARGUMENT_INVALID;
    } else if (!c->loaded || c->initialised) {
        violation("rknn3_model_init: %s", c->loaded ? "called twice" : "no model loaded");
        rc = RKNN3_ERR_CTX_INVALID;
    } else if (popcount32(config->run_core_mask) != (int)c->model.core_num) {
        violation("rknn3_model_init: core_mask 0x%x is not match with npu core number %u", config->run_core_mask,
                  c->model.core_num);
        rc = runtime_error(RKNN3_ERR_FAIL, "core_mask %u is not match with npu core number %u",
                           config->run_core_mask, c->model.core_num);
    } else if (config->run_core_mask >> g_cores) {
        rc = runtime_error(RKNN3_ERR_ARGUMENT_INVALID, "core_mask 0x%x names cores the device lacks (%d)",
                           config->run_core_mask, g_cores);
    } else {
        c->mask = config->run_core_mask;
        c->timeout_ms = config->run_timeout;
        c->priority = config->priority;
        c->first_core = __builtin_ctz(c->mask);
        c->initialised = 1;
    }
    release(c);
    return rc;
}

/* ---------------------------------------------------------------- attrs */

/* NC1HWC2 lanes: 16 bytes of channels */
static uint32_t c2_of(int type) { return 16 / type_size(type); }

static int native_dims(const emu_tensor* t, uint32_t* dims) {
    if (t->n_dims != 4) {
        memcpy(dims, t->dims, sizeof t->dims);
        return (int)t->n_dims;
    }
    uint32_t c2 = c2_of(t->type);
    dims[0] = t->dims[0];
    dims[1] = (t->dims[1] + c2 - 1) / c2;
    dims[2] = t->dims[2];
    dims[3] = t->dims[3];
    dims[4] = c2;
    return 5;
}

static void fill_attr(const emu_ctx* c, const emu_tensor* t, uint32_t index, int native, rknn3_tensor_attr* a) {
    memset(a, 0, sizeof *a);
    a->index = index;
    snprintf(a->name, sizeof a->name, "%s", t->name);
    uint32_t dims[RKNN3_MAX_DIMS] = {0};
    int n = native ? native_dims(t, dims) : (int)t->n_dims;
    if (!native) memcpy(dims, t->dims, sizeof dims);
    a->n_dims = n;
    memcpy(a->shape, dims, sizeof a->shape);
    a->n_stride = n;
    uint64_t stride = 1;
    for (int d = n - 1; d >= 0; d--) {
        a->stride[d] = stride; /* in elements */
        stride *= dims[d];
    }
    a->aligned_size = stride * type_size(t->type);
    a->n_elems = t->n_elems;
    a->dtype = t->type;
    a->layout = native && t->n_dims == 4 ? RKNN3_TENSOR_NC1HWC2 : t->n_dims == 4 ? RKNN3_TENSOR_NCHW : RKNN3_TENSOR_UNDEFINED;
    int quant = t->type == RKNN3_TENSOR_INT8 || t->type == RKNN3_TENSOR_UINT8;
    a->qnt_type = quant ? RKNN3_TENSOR_QNT_PER_LAYER_ASYMMETRIC : RKNN3_TENSOR_QNT_NONE;
    a->qnt_info.scale = quant ? t->scale : 1.0f;
    a->qnt_info.zero_point = quant ? t->zp : 0;
#if RKNN3_EMU_ABI >= 11
    a->n_orig_dims = t->n_dims;
    memcpy(a->orig_shape, t->dims, sizeof a->orig_shape);
    a->orig_layout = t->n_dims == 4 ? RKNN3_TENSOR_NCHW : RKNN3_TENSOR_UNDEFINED;
#endif
    a->core_id = c->first_core;
}

/* 1.0: INPUT_ATTR is the original layout, 8/9 the native one; 1.1 flips both (RKNN3_ABI.md 3.1). */
static int is_native_query(int cmd) {
    int flipped = cmd == RKNN3_QUERY_NATIVE_OR_ORIGIN_INPUT_ATTR || cmd == RKNN3_QUERY_NATIVE_OR_ORIGIN_OUTPUT_ATTR;
#if RKNN3_EMU_ABI >= 11
    return !flipped;
#else
    return flipped;
#endif
}

int rknn3_query(rknn3_context context, rknn3_query_cmd cmd, void* info, uint64_t size) {
    int injected = enter_api(API_QUERY);
    if (injected) return injected;
    emu_ctx* c = acquire(context, "rknn3_query");
    if (!c) return RKNN3_ERR_CTX_INVALID;
    const emu_model* m = &c->model;
    uint64_t want = 0;
    switch (cmd) {
        case RKNN3_QUERY_IN_OUT_NUM: want = sizeof(rknn3_input_output_num); break;
        case RKNN3_QUERY_INPUT_ATTR:
        case RKNN3_QUERY_OUTPUT_ATTR:
        case RKNN3_QUERY_NATIVE_OR_ORIGIN_INPUT_ATTR:
        case RKNN3_QUERY_NATIVE_OR_ORIGIN_OUTPUT_ATTR: want = sizeof(rknn3_tensor_attr); break;
        case RKNN3_QUERY_SDK_VERSION: want = sizeof(rknn3_sdk_version); break;
        case RKNN3_QUERY_CUSTOM_STRING: want = sizeof(rknn3_custom_string); break;
        case RKNN3_QUERY_CORE_NUMBER: want = sizeof(uint32_t); break;
        case RKNN3_QUERY_DEVICE_MEM_INFO: want = sizeof(rknn3_dev_mem_info); break;
        case RKNN3_QUERY_DYNAMIC_SHAPE_CONFIG: want = sizeof(rknn3_shape_config); break;
        default: release(c); return runtime_error(RKNN3_ERR_ARGUMENT_INVALID, "query %d is not emulated", cmd);
    }
    int rc = 0;
    if (!info || size != want) {
        violation("rknn3_query(%d): size %llu, the struct is %llu bytes", cmd, (unsigned long long)size,
                  (unsigned long long)want);
        rc = RKNN3_ERR_ARGUMENT_INVALID;
    } else if (!c->loaded && cmd != RKNN3_QUERY_SDK_VERSION && cmd != RKNN3_QUERY_DEVICE_MEM_INFO) {
        rc = runtime_error(RKNN3_ERR_CTX_INVALID, "query %d before a model is loaded", cmd);
    } else if (cmd == RKNN3_QUERY_IN_OUT_NUM) {
        rknn3_input_output_num* n = info;
        n->n_input = m->n_in;
        n->n_output = m->n_out;
    } else if (cmd == RKNN3_QUERY_SDK_VERSION) {
        rknn3_sdk_version* v = info;
        snprintf(v->api_version, sizeof v->api_version, "%s (emulated)", EMU_VERSION);
        snprintf(v->drv_version, sizeof v->drv_version, "%s", g_firmware_version);
    } else if (cmd == RKNN3_QUERY_CUSTOM_STRING) {
        snprintf(((rknn3_custom_string*)info)->string, 1024, "%s", m->custom_string);
    } else if (cmd == RKNN3_QUERY_CORE_NUMBER) {
        *(uint32_t*)info = m->core_num;
    } else if (cmd == RKNN3_QUERY_DYNAMIC_SHAPE_CONFIG) {
        rknn3_shape_config* config = info;
        config->n_shapes = m->n_shapes > 1 ? m->n_shapes : 0;
        config->current_shape_id = m->n_shapes > 1 ? c->shape : -1;
    } else if (cmd == RKNN3_QUERY_DEVICE_MEM_INFO) {
        rknn3_dev_mem_info* d = info;
        memset(d, 0, sizeof *d);
        d->node_num = g_cores;
    } else {
        rknn3_tensor_attr* a = info;
        int is_input = cmd == RKNN3_QUERY_INPUT_ATTR || cmd == RKNN3_QUERY_NATIVE_OR_ORIGIN_INPUT_ATTR;
        uint32_t index = a->index;
        if (index >= (uint32_t)(is_input ? m->n_in : m->n_out))
            rc = runtime_error(RKNN3_ERR_ARGUMENT_INVALID, "tensor index %u out of range", index);
        else
            fill_attr(c, is_input ? &c->in[index] : &c->out[index], index, is_native_query(cmd), a);
    }
    release(c);
    return rc;
}

int rknn3_set_shape(rknn3_context context, int32_t shape_id) {
    int injected = enter_api(API_SET_SHAPE);
    if (injected) return injected;
    emu_ctx* c = acquire(context, "rknn3_set_shape");
    if (!c) return RKNN3_ERR_CTX_INVALID;
    int rc = 0;
    if (!c->loaded || c->model.n_shapes < 2) {
        violation("rknn3_set_shape: %s", c->loaded ? "not a dynamic-shape model" : "no model loaded");
        rc = RKNN3_ERR_CTX_INVALID;
    } else if (shape_id < 0 || shape_id >= c->model.n_shapes) {
        rc = runtime_error(RKNN3_ERR_ARGUMENT_INVALID, "shape id %d not in [0, %d)", shape_id, c->model.n_shapes);
    } else {
        c->shape = shape_id;
        shape_tensors(&c->model, shape_id, c->in, c->out);
    }
    release(c);
    return rc;
}

/* ---------------------------------------------------------------- memory */

rknn3_tensor_mem* rknn3_create_mem(rknn3_context context, uint64_t size, int32_t core_id, rknn3_mem_alloc_flags flags) {
    if (enter_api(API_CREATE_MEM)) return NULL;
    emu_ctx* c = acquire(context, "rknn3_create_mem");
    if (!c) return NULL;
    emu_mem* m = NULL;
    if (size == 0 || size > (1ull << 30) || core_id < 0 || core_id >= g_cores || flags > 2) {
        runtime_error(RKNN3_ERR_ARGUMENT_INVALID, "create_mem(size %llu, core %d, flags %d)",
                      (unsigned long long)size, core_id, flags);
    } else if ((m = emu_calloc(1, sizeof *m))) {
        m->host = emu_calloc(1, size);
        m->device = emu_calloc(1, size);
        if (!m->host || !m->device) {
            emu_free(m->host);
            emu_free(m->device);
            emu_free(m);
            m = NULL;
        } else {
            m->pub.virt_addr = m->host;
            m->pub.fd = -1;
            m->pub.size = size;
            m->pub.flags = flags;
            m->pub.core_id = core_id;
            m->owner = context;
            pthread_mutex_lock(&g_lock);
            m->next = g_mems;
            g_mems = m;
            c->n_mems++;
            pthread_mutex_unlock(&g_lock);
            atomic_fetch_add(&g_live_mems, 1);
        }
    }
    release(c);
    return m ? &m->pub : NULL;
}

int rknn3_destroy_mem(rknn3_context context, rknn3_tensor_mem* mem) {
    int injected = enter_api(API_DESTROY_MEM);
    if (injected) return injected;
    emu_ctx* c = acquire(context, "rknn3_destroy_mem");
    if (!c) return RKNN3_ERR_CTX_INVALID;
    pthread_mutex_lock(&g_lock);
    emu_mem* m = find_mem(mem);
    int ok = m && m->owner == context;
    if (ok) {
        emu_mem** link = &g_mems;
        while (*link != m) link = &(*link)->next;
        *link = m->next;
        c->n_mems--;
    }
    pthread_mutex_unlock(&g_lock);
    release(c);
    if (!ok) {
        violation("rknn3_destroy_mem: %p is not a live mem of context 0x%llx", (void*)mem, (unsigned long long)context);
        return RKNN3_ERR_ARGUMENT_INVALID;
    }
    if (m->from_device_pending) violation("rknn3_destroy_mem: an output was never synced FROM_DEVICE after its run");
    atomic_fetch_sub(&g_live_mems, 1);
    emu_free(m->host);
    emu_free(m->device);
    emu_free(m);
    return 0;
}

static int sync_range(rknn3_context context, rknn3_tensor_mem* mem, rknn3_mem_sync_mode mode,
                      uint64_t offset, uint64_t length, const char* api) {
    int injected = enter_api(API_MEM_SYNC);
    if (injected) return injected;
    emu_ctx* c = acquire(context, api);
    if (!c) return RKNN3_ERR_CTX_INVALID;
    pthread_mutex_lock(&g_lock);
    emu_mem* m = find_mem(mem);
    pthread_mutex_unlock(&g_lock);
    int rc = 0;
    if (!m || m->owner != context) {
        violation("%s: %p is not a live mem of context 0x%llx", api, (void*)mem, (unsigned long long)context);
        rc = RKNN3_ERR_ARGUMENT_INVALID;
    } else if (mode < 1 || mode > 3 || offset + length > m->pub.size) {
        violation("%s: mode %d, range %llu+%llu of %llu bytes", api, mode, (unsigned long long)offset,
                  (unsigned long long)length, (unsigned long long)m->pub.size);
        rc = RKNN3_ERR_ARGUMENT_INVALID;
    } else {
        if (mode & RKNN3_MEM_SYNC_TO_DEVICE) {
            memcpy(m->device + offset, m->host + offset, length);
            m->to_device_pending = 0;
            m->synced_once = 1;
        }
        if (mode & RKNN3_MEM_SYNC_FROM_DEVICE) {
            memcpy(m->host + offset, m->device + offset, length);
            m->from_device_pending = 0;
        }
    }
    release(c);
    return rc;
}

int rknn3_mem_sync(rknn3_context context, rknn3_tensor_mem* mem, rknn3_mem_sync_mode mode) {
    uint64_t size = 0;
    pthread_mutex_lock(&g_lock);
    emu_mem* m = find_mem(mem);
    if (m) size = m->pub.size;
    pthread_mutex_unlock(&g_lock);
    return sync_range(context, mem, mode, 0, size, "rknn3_mem_sync");
}

#if RKNN3_EMU_ABI >= 11
int rknn3_mem_sync_range(rknn3_context context, rknn3_tensor_mem* mem, rknn3_mem_sync_mode mode,
                         uint64_t offset, uint64_t length) {
    return sync_range(context, mem, mode, offset, length, "rknn3_mem_sync_range");
}
#endif

/* ---------------------------------------------------------------- inference */

/* Where element k (original NCHW order) of t sits in its native buffer. */
static size_t native_offset(const emu_tensor* t, size_t k) {
    if (t->n_dims != 4) return k;
    size_t ch = t->dims[1], h = t->dims[2], w = t->dims[3], c2 = c2_of(t->type), c1 = (ch + c2 - 1) / c2;
    size_t x = k % w, y = k / w % h, cc = k / (w * h) % ch, b = k / (w * h * ch);
    return (((b * c1 + cc / c2) * h + y) * w + x) * c2 + cc % c2;
}

static int is_quantized(int type) { return type == RKNN3_TENSOR_INT8 || type == RKNN3_TENSOR_UINT8; }

/* Checks one rknn3_tensor of a run; returns its mem or NULL after a violation. */
static emu_mem* check_tensor(const emu_ctx* c, const rknn3_tensor* t, uint32_t index, int is_input) {
    const char* kind = is_input ? "input" : "output";
    const emu_tensor* et = is_input ? &c->in[index] : &c->out[index];
    const rknn3_tensor_attr* a = t->attr;
    if (!a || a->index != index || strcmp(a->name, et->name)) {
        violation("rknn3_run: %s %u: attr missing or not the tensor's (index/name)", kind, index);
        return NULL;
    }
    if (a->layout != (et->n_dims == 4 ? RKNN3_TENSOR_NC1HWC2 : RKNN3_TENSOR_UNDEFINED) || (int)a->dtype != et->type) {
        violation("rknn3_run: %s %u: the attr must be the native one (layout %d, dtype %d)", kind, index, a->layout,
                  a->dtype);
        return NULL;
    }
    emu_mem* m = find_mem(t->mem);
    rknn3_tensor_attr native;
    fill_attr(c, et, index, 1, &native);
    if (!m || m->owner != c->handle) {
        violation("rknn3_run: %s %u: mem %p is not a live mem of this context", kind, index, (void*)t->mem);
        return NULL;
    }
    if (m->pub.size < native.aligned_size || m->pub.core_id != c->first_core) {
        violation("rknn3_run: %s %u: mem of %llu bytes on core %d, needs %llu bytes on core %d (attr.core_id)", kind,
                  index, (unsigned long long)m->pub.size, m->pub.core_id, (unsigned long long)native.aligned_size,
                  c->first_core);
        return NULL;
    }
    if (is_input && (m->to_device_pending || !m->synced_once)) {
        violation("rknn3_run: input %u was not synced TO_DEVICE since its last run", index);
        return NULL;
    }
    if (!is_input && m->from_device_pending) {
        violation("rknn3_run: output %u of the previous run was never synced FROM_DEVICE", index);
        return NULL;
    }
    return m;
}

static long elapsed_us(const struct timespec* since) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - since->tv_sec) * 1000000L + (now.tv_nsec - since->tv_nsec) / 1000;
}

int rknn3_run(rknn3_context context, const rknn3_tensor inputs[], uint32_t n_inputs, rknn3_tensor outputs[],
              uint32_t n_outputs) {
    int injected = enter_api(API_RUN);
    if (injected) return injected;
    emu_ctx* c = acquire(context, "rknn3_run");
    if (!c) return RKNN3_ERR_CTX_INVALID;
    const emu_model* model = &c->model;
    emu_mem* in[EMU_MAX_IO];
    emu_mem* out[EMU_MAX_IO];
    int ok = c->initialised && inputs && outputs && n_inputs == (uint32_t)model->n_in &&
             n_outputs == (uint32_t)model->n_out;
    if (!ok) violation("rknn3_run: needs model_init and %d inputs / %d outputs, got %u / %u", model->n_in,
                       model->n_out, n_inputs, n_outputs);
    pthread_mutex_lock(&g_lock);
    for (uint32_t i = 0; ok && i < n_inputs; i++) ok = (in[i] = check_tensor(c, &inputs[i], i, 1)) != NULL;
    for (uint32_t j = 0; ok && j < n_outputs; j++) ok = (out[j] = check_tensor(c, &outputs[j], j, 0)) != NULL;
    pthread_mutex_unlock(&g_lock);
    if (!ok) {
        release(c);
        return RKNN3_ERR_ARGUMENT_INVALID;
    }
    for (int k = 0; k < g_cores; k++)
        if (c->mask & (1u << k)) pthread_mutex_lock(&g_core_mutex[c->device][k]);
    int now = atomic_fetch_add(&g_parallel, 1) + 1;
    for (int seen = atomic_load(&g_max_parallel); now > seen && !atomic_compare_exchange_weak(&g_max_parallel, &seen, now);)
        ;
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    long budget = c->timeout_ms ? (long)c->timeout_ms * 1000L : -1;
    long compute_us = atomic_load(&g_compute_us);
    int timed_out = budget >= 0 && compute_us > budget;
    long sleep_us = timed_out ? budget : compute_us;
    if (sleep_us > 0) usleep(sleep_us);
    int rc = 0;
    if (timed_out) {
        rc = runtime_error(RKNN3_ERR_TIMEOUT, "rknn3_run timed out after %ld us (run_timeout %u ms)", elapsed_us(&start),
                           c->timeout_ms);
    } else {
        for (int j = 0; j < model->n_out; j++) {
            const emu_tensor* ot = &c->out[j];
            rknn3_tensor_attr native;
            fill_attr(c, ot, j, 1, &native);
            memset(out[j]->device, 0xA5, native.aligned_size); /* padding lanes hold garbage */
            for (size_t k = 0; k < ot->n_elems; k++) {
                double total = 0;
                for (int i = 0; i < model->n_in; i++) {
                    const emu_tensor* it = &c->in[i];
                    size_t at = native_offset(it, (k + j) % it->n_elems);
                    double x = read_value(in[i]->device, it->type, at);
                    if (is_quantized(it->type)) x = (x - it->zp) * (double)it->scale;
                    total += (i + 1) * x;
                }
                double v = model->gain * total + 0.5 * j;
                if (is_quantized(ot->type)) {
                    double lo = ot->type == RKNN3_TENSOR_INT8 ? -128 : 0, hi = ot->type == RKNN3_TENSOR_INT8 ? 127 : 255;
                    v = nearbyint(v / ot->scale) + ot->zp;
                    v = v < lo ? lo : v > hi ? hi : v;
                }
                write_value(out[j]->device, ot->type, native_offset(ot, k), v);
            }
            out[j]->from_device_pending = 1;
        }
        for (int i = 0; i < model->n_in; i++) in[i]->to_device_pending = 1;
        for (int k = 0; k < g_cores; k++)
            if (c->mask & (1u << k)) atomic_fetch_add(&g_core_runs[c->device][k], 1);
    }
    atomic_fetch_sub(&g_parallel, 1);
    for (int k = g_cores - 1; k >= 0; k--)
        if (c->mask & (1u << k)) pthread_mutex_unlock(&g_core_mutex[c->device][k]);
    release(c);
    return rc;
}

/* ---------------------------------------------------------------- control API (tests only) */

/* Emulate `devices` devices of `cores` NPU cores, `compute_us` per run; resets the counters.
 * Refused (-1) while contexts live. */
int rknn3_emu_configure(int devices, int cores, int compute_us) {
    pthread_once(&g_once, startup);
    if (devices < 0 || devices > EMU_MAX_DEVICES || cores < 1 || cores > EMU_MAX_CORES || compute_us < 0) return -2;
    if (atomic_load(&g_live_contexts)) return -1;
    pthread_mutex_lock(&g_lock);
    g_devices = devices;
    g_cores = cores;
    g_compute_us = compute_us;
    g_hang_released = 0;
    snprintf(g_firmware_version, sizeof g_firmware_version, "%s", EMU_VERSION);
    memset(g_fail_count, 0, sizeof g_fail_count);
    memset(g_fail_skip, 0, sizeof g_fail_skip);
    g_last_violation[0] = 0;
    pthread_mutex_unlock(&g_lock);
    atomic_store(&g_violations, 0);
    atomic_store(&g_max_parallel, 0);
    for (int a = 0; a < API_COUNT; a++) atomic_store(&g_calls[a], 0);
    for (int d = 0; d < EMU_MAX_DEVICES; d++)
        for (int k = 0; k < EMU_MAX_CORES; k++) atomic_store(&g_core_runs[d][k], 0);
    return 0;
}

/* The run time from now on (allowed while contexts live: a timed-out session can recover). */
void rknn3_emu_set_compute_us(int compute_us) { g_compute_us = compute_us < 0 ? 0 : compute_us; }

/* The proxy/firmware version the devices report (a mismatch with the library's breaks init). */
void rknn3_emu_set_firmware_version(const char* version) {
    pthread_mutex_lock(&g_lock);
    snprintf(g_firmware_version, sizeof g_firmware_version, "%s", version);
    pthread_mutex_unlock(&g_lock);
}

/* Lets every rknn3_init hung on a 1.0 version mismatch return (-13). */
void rknn3_emu_release_hang(void) {
    pthread_mutex_lock(&g_lock);
    g_hang_released = 1;
    pthread_cond_broadcast(&g_hang_cond);
    pthread_mutex_unlock(&g_lock);
}

/* The `count` calls of `api` after the next `skip` ones return `code`. */
void rknn3_emu_inject_failure(const char* api, int code, int count, int skip) {
    for (int a = 0; a < API_COUNT; a++) {
        if (!strcmp(api, k_apis[a])) {
            pthread_mutex_lock(&g_lock);
            g_fail_code[a] = code;
            g_fail_count[a] = count;
            g_fail_skip[a] = skip;
            pthread_mutex_unlock(&g_lock);
        }
    }
}

int rknn3_emu_abi(void) { return RKNN3_EMU_ABI; }
int rknn3_emu_violations(void) { return atomic_load(&g_violations); }
const char* rknn3_emu_last_violation(void) { return g_last_violation; }
int rknn3_emu_live_allocations(void) { return atomic_load(&g_live_allocs); }
int rknn3_emu_live_contexts(void) { return atomic_load(&g_live_contexts); }
int rknn3_emu_live_mems(void) { return atomic_load(&g_live_mems); }
int rknn3_emu_max_parallel(void) { return atomic_load(&g_max_parallel); }

int rknn3_emu_calls(const char* api) {
    for (int a = 0; a < API_COUNT; a++)
        if (!strcmp(api, k_apis[a])) return atomic_load(&g_calls[a]);
    return -1;
}

int rknn3_emu_core_runs(int device, int core) {
    if (device < 0 || device >= EMU_MAX_DEVICES || core < 0 || core >= EMU_MAX_CORES) return -1;
    return atomic_load(&g_core_runs[device][core]);
}

/* Live contexts initialised with `priority` (rknn3_config.priority; not otherwise emulated) */
int rknn3_emu_contexts_with_priority(int priority) {
    int n = 0;
    pthread_mutex_lock(&g_lock);
    for (emu_ctx* c = g_contexts; c; c = c->next) n += c->initialised && c->priority == priority;
    pthread_mutex_unlock(&g_lock);
    return n;
}

/* Live contexts on `device` (0-based) */
int rknn3_emu_contexts_on(int device) {
    int n = 0;
    pthread_mutex_lock(&g_lock);
    for (emu_ctx* c = g_contexts; c; c = c->next) n += c->device == device;
    pthread_mutex_unlock(&g_lock);
    return n;
}
