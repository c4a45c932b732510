"""The librknn3_api binding against both ABI versions: struct layouts (emulator header compiled
by gcc, RKNN3_ABI.md's offsets), ABI detection, error names, and how the library is found."""

from __future__ import annotations

import ctypes

import pytest

from ez_rknn_async import (
    RKNNError,
    RuntimeNotFoundError,
    RunTimeoutError,
    UnsupportedRuntimeError,
)
from ez_rknn_async.backends.rknn3 import abi, library

from rknn3_emu import emulator3_build

pytest_plugins = ("rknn3_fixtures", "rknn_fixtures")

#: RKNN3_ABI.md 3.3: struct -> (size, {field: offset}) per ABI version (only the attr differs).
_COMMON = {
    "rknn3_tensor_mem": (
        80,
        {"virt_addr": 0, "fd": 16, "buffer_id": 24, "core_id": 56, "mem_type": 72},
    ),
    "rknn3_config": (144, {"priority": 0, "run_timeout": 4, "run_core_mask": 8, "reserved": 15}),
    "rknn3_init_extend": (136, {"device_id": 0, "reserved": 8}),
    "rknn3_sdk_version": (512, {"api_version": 0, "drv_version": 256}),
    "rknn3_dev_mem_info": (2072, {"node_num": 0, "sys_total": 8, "node_mem_info": 24}),
    "rknn3_device": (2200, {"id": 0, "type": 64, "mem_info": 128}),
    "rknn3_devices": (140808, {"n_devices": 0, "devices": 8}),
    "rknn3_shape_info": (64, {"input_attrs": 8, "output_attrs": 24, "is_default": 32}),
    "rknn3_core_mem_size": (56, {"weight_size": 8, "reserved": 24}),
}
_ATTR = {"name": 4, "n_dims": 260, "shape": 264, "aligned_size": 328, "stride": 344}
_ATTR |= {"n_elems": 480, "dtype": 484, "qnt_info": 496}
DOCUMENTED = {
    "1.0": {**_COMMON, "rknn3_tensor_attr": (512, {**_ATTR, "core_id": 504})},
    "1.1": {
        **_COMMON,
        "rknn3_tensor_attr": (
            584,
            {**_ATTR, "n_orig_dims": 504, "orig_shape": 508, "orig_layout": 572, "core_id": 576},
        ),
    },
}
VERSIONS = sorted(abi.ABIS)


def fields(version):
    return {name: [f for f, _ in table] for name, table in abi.STRUCT_FIELDS[version].items()}


def ctypes_layout(version):
    structs = abi.ABIS[version].structs
    return {
        name: (ctypes.sizeof(structs[name]), {f: getattr(structs[name], f).offset for f in names})
        for name, names in fields(version).items()
    }


@pytest.mark.parametrize("version", VERSIONS)
def test_layout_equals_the_emulator_header_compiled_by_gcc(version):
    assert ctypes.sizeof(ctypes.c_void_p) == 8, "these tests assume a 64-bit host"
    probed = emulator3_build.npu2_build.probe_layout(
        fields(version),
        header=emulator3_build.HEADER,
        defines=[emulator3_build.abi_define(version)],
    )
    assert ctypes_layout(version) == probed


@pytest.mark.parametrize("version", VERSIONS)
def test_layout_equals_the_documented_offsets(version):
    layout = ctypes_layout(version)
    for name, (size, offsets) in DOCUMENTED[version].items():
        assert layout[name][0] == size, name
        assert {f: layout[name][1][f] for f in offsets} == offsets, name


def test_the_versions_differ_where_the_abi_broke():
    assert abi.ABIS["1.0"].native_input == abi.Query.SWAPPED_INPUT_ATTR
    assert abi.ABIS["1.0"].origin_input == abi.Query.INPUT_ATTR
    assert abi.ABIS["1.1"].native_output == abi.Query.OUTPUT_ATTR
    assert abi.ABIS["1.1"].origin_output == abi.Query.SWAPPED_OUTPUT_ATTR


@pytest.mark.parametrize("code", sorted(c for c in abi.ERRORS if c))
def test_every_error_code_has_its_name(code):
    name = abi.error_name(code)
    expected = RunTimeoutError if code == abi.TIMEOUT else RKNNError
    with pytest.raises(expected) as caught:
        library.check("rknn3_run", code)
    assert type(caught.value) is expected
    assert caught.value.code == code and caught.value.name == name
    assert str(caught.value).startswith(f"rknn3_run failed: {name} ({code}): ")
    assert isinstance(caught.value, TimeoutError) == (code == abi.TIMEOUT)


def test_the_loaded_library_shows_its_abi_and_stubs_the_other_versions_functions(npu3):
    lib = library.load_library()
    assert lib.path == str(npu3.library) and lib.abi.version == npu3.abi
    other = "rknn3_mem_sync_range" if npu3.abi == "1.0" else "rknn3_dup_context"
    assert not lib.has(other)
    with pytest.raises(RKNNError, match=f"{other} is not available in .*librknn3_api.so"):
        getattr(lib, other)(0, None)
    assert library.load_library() is lib


def test_a_library_without_a_known_abi_is_refused_naming_the_supported_versions(npu):
    """The RKNPU2 emulator exports no librknn3_api symbols at all."""
    with pytest.raises(UnsupportedRuntimeError) as caught:
        library.load_library(str(npu.paths.library))
    assert "supported librknn3_api ABI versions: 1.0, 1.1" in str(caught.value)
    assert "exports none of the version markers" in str(caught.value)


def test_detect_abi_refuses_a_library_with_both_markers():
    with pytest.raises(UnsupportedRuntimeError, match="exports all of"):
        library.detect_abi(lambda name: True, "/x/librknn3_api.so")
    assert library.version_of("1.1.0 (af2989a1)") == "1.1"
    assert library.version_of("unknown") is None


def test_missing_library_says_how_to_fix_it(tmp_path):
    environ = {library.ENV_VAR: str(tmp_path / "nowhere" / "librknn3_api.so")}
    with pytest.raises(RuntimeNotFoundError) as caught:
        library.load_library(environ=environ)
    message = str(caught.value)
    assert "EZ_RKNN3_RUNTIME_LIB=" in message and "no such file" in message
    assert "Fix: install librknn3_api.so" in message
    assert library.candidates({}) == list(library.SYSTEM_CANDIDATES)
