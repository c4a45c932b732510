"""SoC detection and the core rules it implies (pure functions, no library needed)."""

from __future__ import annotations

import pytest

from ez_rknn_async.backends.rknn.soc import Soc, detect_soc, parse_compatible


def test_compatible_list_from_the_device_tree():
    assert parse_compatible(b"radxa,rock-5b\0rockchip,rk3588\0") == "rk3588"
    assert parse_compatible(b"friendlyarm,nanopi\0rockchip,rk3588s\0") == "rk3588s"
    assert parse_compatible(b"pine64,quartz64\0rockchip,rk3566\0") == "rk3566"
    assert parse_compatible(b"luckfox,pico\0rockchip,rv1106\0") == "rv1106"
    assert parse_compatible(b"raspberrypi,5-model-b\0brcm,bcm2712\0") is None


@pytest.mark.parametrize(
    ("name", "cores"),
    [
        ("rk3588", (0, 1, 2)),
        ("rk3588s", (0, 1, 2)),
        ("rk3576", (0, 1)),
        ("rk3566", (0,)),
        ("rv1106", (0,)),
    ],
)
def test_device_tree_decides_the_cores(tmp_path, name, cores):
    compatible = tmp_path / "compatible"
    compatible.write_bytes(b"vendor,board\0rockchip," + name.encode() + b"\0")
    soc = detect_soc({}, paths=[str(tmp_path / "missing"), str(compatible)])
    assert soc == Soc(name, "device-tree", cores)


def test_env_overrides_the_device_tree(tmp_path):
    compatible = tmp_path / "compatible"
    compatible.write_bytes(b"rockchip,rk3566\0")
    assert detect_soc({"EZ_RKNN_SOC": " RK3576 "}, paths=[str(compatible)]) == Soc(
        "rk3576", "EZ_RKNN_SOC", (0, 1)
    )


def test_unknown_machine_is_one_core(tmp_path):
    assert detect_soc({}, paths=[str(tmp_path / "none")]) == Soc(None, "unknown", (0,))
    assert detect_soc({"EZ_RKNN_SOC": "rk9999"}).cores == (0,)


def test_schedule_naming_absent_cores_names_the_soc_and_its_cores():
    soc = Soc("rk3576", "EZ_RKNN_SOC", (0, 1))
    soc.check_cores([0, 1])
    with pytest.raises(ValueError, match=r"core 2, but RK3576 has NPU cores 0, 1 .*EZ_RKNN_SOC"):
        soc.check_cores([0, 2])
    with pytest.raises(ValueError, match=r"core 1, 2, but RK3566 has NPU core 0 "):
        Soc("rk3566", "device-tree", (0,)).check_cores([2, 1, 0])


@pytest.mark.parametrize(
    ("cores", "mask", "expected"),
    [
        ((0, 1, 2), 0, 0),
        ((0, 1, 2), 4, 4),
        ((0, 1, 2), 7, 7),
        ((0, 1, 2), 0xFFFF, 0xFFFF),
        ((0, 1), 3, 3),
        ((0, 1), 0xFFFF, 0xFFFF),
        ((0,), 0, None),  # single-core NPUs reject rknn_set_core_mask even for AUTO: skip it
        ((0,), 1, None),
        ((0,), 0xFFFF, None),
    ],
)
def test_core_masks_per_soc(cores, mask, expected):
    assert Soc("x", "EZ_RKNN_SOC", cores).core_mask(mask) == expected


@pytest.mark.parametrize(
    ("cores", "mask"), [((0, 1), 4), ((0, 1), 7), ((0,), 2), ((0,), 3), ((0, 1, 2), 5)]
)
def test_masks_naming_absent_cores_are_value_errors(cores, mask):
    with pytest.raises(ValueError, match="is not valid here: X has NPU core"):
        Soc("x", "EZ_RKNN_SOC", cores).core_mask(mask)
