/*
 * A custom-op plugin as librknnrt loads them (librkcst_*.so exporting get_rknn_custom_op), built
 * in variants by build.py: EMU_OP_TYPE names the op; EMU_NO_ENTRY leaves the entry point out.
 */
#include "rknn_emu_api.h"

#ifndef EMU_NO_ENTRY
static rknn_custom_op g_op = {1, 1 /* RKNN_TARGET_TYPE_CPU */, EMU_OP_TYPE};

rknn_custom_op* get_rknn_custom_op(void) { return &g_op; }
#else
int rknn_emu_plugin_without_entry(void) { return 0; }
#endif
