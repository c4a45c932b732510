"""The ctypes binding against the ABI: struct layouts (emulator header, RKNN_ABI.md table, a
32-bit compile standing in for armhf), error names, and how the library is found and bound."""

from __future__ import annotations

import ctypes

import pytest

from ez_rknn_async import RKNNError
from ez_rknn_async.backends.rknn import abi, library

from rknn_emu import emulator_build

pytest_plugins = ("rknn_fixtures",)

#: RKNN_ABI.md 3: struct -> ((size LP64, size armhf), {field: (offset LP64, offset armhf)}).
TABLE = {
    "rknn_input_output_num": ((8, 8), {"n_input": (0, 0), "n_output": (4, 4)}),
    "rknn_tensor_attr": (
        (376, 376),
        {
            "index": (0, 0),
            "n_dims": (4, 4),
            "dims": (8, 8),
            "name": (72, 72),
            "n_elems": (328, 328),
            "size": (332, 332),
            "fmt": (336, 336),
            "type": (340, 340),
            "qnt_type": (344, 344),
            "fl": (348, 348),
            "zp": (352, 352),
            "scale": (356, 356),
            "w_stride": (360, 360),
            "size_with_stride": (364, 364),
            "pass_through": (368, 368),
            "h_stride": (372, 372),
        },
    ),
    "rknn_input": (
        (32, 24),
        {
            "index": (0, 0),
            "buf": (8, 4),
            "size": (16, 8),
            "pass_through": (20, 12),
            "type": (24, 16),
            "fmt": (28, 20),
        },
    ),
    "rknn_output": (
        (24, 16),
        {
            "want_float": (0, 0),
            "is_prealloc": (1, 1),
            "index": (4, 4),
            "buf": (8, 8),
            "size": (16, 12),
        },
    ),
    "rknn_tensor_mem": (
        (40, 40),
        {
            "virt_addr": (0, 0),
            "phys_addr": (8, 8),
            "fd": (16, 16),
            "offset": (20, 20),
            "size": (24, 24),
            "flags": (28, 28),
            "priv_data": (32, 32),
        },
    ),
    "rknn_init_extend": (
        (136, 132),
        {
            "ctx": (0, 0),
            "real_model_offset": (8, 4),
            "real_model_size": (12, 8),
            "model_buffer_fd": (16, 12),
            "model_buffer_flags": (20, 16),
            "reserved": (24, 20),
        },
    ),
    "rknn_run_extend": (
        (24, 24),
        {"frame_id": (0, 0), "non_block": (8, 8), "timeout_ms": (12, 12), "fence_fd": (16, 16)},
    ),
    "rknn_output_extend": ((8, 8), {"frame_id": (0, 0)}),
    "rknn_sdk_version": ((512, 512), {"api_version": (0, 0), "drv_version": (256, 256)}),
    "rknn_custom_string": ((1024, 1024), {"string": (0, 0)}),
    "rknn_mem_size": (
        (64, 64),
        {
            "total_weight_size": (0, 0),
            "total_internal_size": (4, 4),
            "total_dma_allocated_size": (8, 8),
            "total_sram_size": (16, 16),
            "free_sram_size": (20, 20),
            "reserved": (24, 24),
        },
    ),
    "rknn_perf_run": ((8, 8), {"run_duration": (0, 0)}),
    "rknn_perf_detail": ((16, 16), {"perf_data": (0, 0), "data_len": (8, 8)}),
    "rknn_input_range": (
        (33040, 33040),
        {
            "index": (0, 0),
            "shape_number": (4, 4),
            "fmt": (8, 8),
            "name": (12, 12),
            "dyn_range": (268, 268),
            "n_dims": (33036, 33036),
        },
    ),
}
FIELD_NAMES = {name: [f for f, _ in fields] for name, fields in abi.STRUCT_FIELDS.items()}
ARMHF = abi.build_structs(pointer=ctypes.c_uint32, context=ctypes.c_uint32)


def ctypes_layout(structs):
    return {
        name: (ctypes.sizeof(cls), {f: getattr(cls, f).offset for f in FIELD_NAMES[name]})
        for name, cls in structs.items()
    }


def table_layout(column: int):
    return {
        name: (sizes[column], {f: offsets[column] for f, offsets in fields.items()})
        for name, (sizes, fields) in TABLE.items()
    }


def test_every_documented_struct_is_bound_with_all_its_fields():
    for name, (_, fields) in TABLE.items():
        assert FIELD_NAMES[name] == list(fields), name


def test_native_layout_equals_the_emulator_header_compiled_by_gcc():
    assert ctypes.sizeof(ctypes.c_void_p) == 8, "these tests assume a 64-bit host"
    assert ctypes_layout(abi.STRUCTS) == emulator_build.probe_layout(FIELD_NAMES)


def test_native_layout_equals_the_documented_table():
    layout = ctypes_layout(abi.STRUCTS)
    assert {name: layout[name] for name in TABLE} == table_layout(0)


def test_armhf_layout_equals_the_documented_table():
    layout = ctypes_layout(ARMHF)
    assert {name: layout[name] for name in TABLE} == table_layout(1)


def test_armhf_layout_equals_a_32bit_compile_of_the_emulator_header():
    probed = emulator_build.probe_layout(FIELD_NAMES, bits32=True)
    if probed is None:
        pytest.skip("gcc cannot compile for 32-bit here; compared with the table only")
    assert ctypes_layout(ARMHF) == probed


def test_context_is_64_bit_on_64_bit_hosts():
    assert ctypes.sizeof(abi.CONTEXT_TYPE) == 8


@pytest.mark.parametrize("code", sorted(abi.ERRORS))
def test_every_error_code_has_its_name(code):
    name = abi.error_name(code)
    assert name.startswith("RKNN_")
    if code:
        with pytest.raises(RKNNError) as caught:
            library.check("rknn_run", code)
        assert caught.value.code == code and caught.value.name == name
        assert str(caught.value).startswith(f"rknn_run failed: {name} ({code}): ")


def test_unknown_error_code():
    with pytest.raises(RKNNError, match=r"RKNN_ERR_UNKNOWN \(-99\)"):
        library.check("rknn_init", -99)
    library.check("rknn_init", 0)


def test_functions_missing_from_the_library_become_stubs_that_raise_when_called(npu):
    lib = library.load_library()
    assert lib.path == str(npu.paths.library)
    assert lib.has("rknn_run") and lib.has("rknn_dup_context")
    assert not lib.has("rknn_wait")  # exported by no runtime that supports it; not emulated
    with pytest.raises(RKNNError, match="rknn_wait is not available in .*librknnrt.so"):
        lib.rknn_wait(0, None)
    with pytest.raises(AttributeError):
        lib.rknn_not_a_function  # noqa: B018


def test_library_is_loaded_once_per_path(npu):
    assert library.load_library() is library.load_library()


def test_missing_library_says_how_to_fix_it(tmp_path):
    environ = {"EZ_RKNN_RUNTIME_LIB": str(tmp_path / "nowhere" / "librknnrt.so")}
    with pytest.raises(library.RuntimeNotFoundError) as caught:
        library.load_library(environ)
    message = str(caught.value)
    assert "EZ_RKNN_RUNTIME_LIB=" in message and "nowhere" in message and "no such file" in message
    assert "Fix: install the board's librknnrt.so" in message
    assert caught.value.name == "RKNN_ERR_DEVICE_UNAVAILABLE"


def test_a_file_that_is_not_a_library_is_reported(tmp_path):
    bogus = tmp_path / "librknnrt.so"
    bogus.write_text("not an ELF file")
    with pytest.raises(library.RuntimeNotFoundError, match="librknnrt.so: .*"):
        library.load_library({"EZ_RKNN_RUNTIME_LIB": str(bogus)})


def test_without_the_env_var_the_system_places_are_searched():
    assert library.candidates({}) == list(library.SYSTEM_CANDIDATES)
    assert library.candidates({"EZ_RKNN_RUNTIME_LIB": " /x/librknnrt.so "}) == ["/x/librknnrt.so"]
