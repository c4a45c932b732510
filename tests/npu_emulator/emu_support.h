/*
 * What the emulated librknnrt (npu_emulator/) and librknn3_api (npu3_emulator/) share: counting
 * violations and live allocations, the runtime's error lines, and element access by tensor type.
 * Include once, after defining EMU_LOG_NAME ("rknn-emu") and EMU_ERROR_PREFIX ("E RKNN").
 */
#ifndef EMU_SUPPORT_H
#define EMU_SUPPORT_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* Both runtimes number these four types alike. */
enum { EMU_T_FLOAT32 = 0, EMU_T_FLOAT16 = 1, EMU_T_INT8 = 2, EMU_T_UINT8 = 3 };

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int g_violations;
static char g_last_violation[512];
static atomic_int g_live_allocs;

/* A broken rule: printed, counted, remembered for the tests. */
__attribute__((format(printf, 1, 2))) static void violation(const char* fmt, ...) {
    char text[512];
    va_list args;
    va_start(args, fmt);
    vsnprintf(text, sizeof text, fmt, args);
    va_end(args);
    pthread_mutex_lock(&g_lock);
    snprintf(g_last_violation, sizeof g_last_violation, "%s", text);
    pthread_mutex_unlock(&g_lock);
    atomic_fetch_add(&g_violations, 1);
    fprintf(stderr, EMU_LOG_NAME " VIOLATION: %s\n", text);
}

/* An ordinary error, logged like the runtime does; returns `code`. */
__attribute__((format(printf, 2, 3))) static int runtime_error(int code, const char* fmt, ...) {
    char text[512];
    va_list args;
    va_start(args, fmt);
    vsnprintf(text, sizeof text, fmt, args);
    va_end(args);
    fprintf(stderr, EMU_ERROR_PREFIX ": [emu] %s\n", text);
    return code;
}

static void* emu_calloc(size_t n, size_t size) {
    void* p = calloc(n, size);
    if (p) atomic_fetch_add(&g_live_allocs, 1);
    return p;
}

static void emu_free(void* p) {
    if (!p) return;
    atomic_fetch_sub(&g_live_allocs, 1);
    free(p);
}

static double read_value(const void* buf, int type, size_t i) {
    switch (type) {
        case EMU_T_FLOAT32: return ((const float*)buf)[i];
        case EMU_T_FLOAT16: return (double)((const _Float16*)buf)[i];
        case EMU_T_INT8: return ((const int8_t*)buf)[i];
        default: return ((const uint8_t*)buf)[i];
    }
}

static void write_value(void* buf, int type, size_t i, double v) {
    switch (type) {
        case EMU_T_FLOAT32: ((float*)buf)[i] = (float)v; break;
        case EMU_T_FLOAT16: ((_Float16*)buf)[i] = (_Float16)(float)v; break;
        case EMU_T_INT8: ((int8_t*)buf)[i] = (int8_t)v; break;
        default: ((uint8_t*)buf)[i] = (uint8_t)v; break;
    }
}

#endif
