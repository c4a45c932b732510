"""make_provider_options and the session's dict parsing: every key, every bad value."""

from __future__ import annotations

import pytest

from ez_rknn_async import make_provider_options
from ez_rknn_async.options import ProviderOptions, parse_provider_options


def test_defaults_match_the_original():
    assert make_provider_options() == {
        "layout": "nchw",
        "max_queue_size": 3,
        "threads_per_core": 1,
        "submit_timeout_ms": 10000,
        "sequential_callbacks": True,
        "enable_pacing": False,
        "disable_dup_context": False,
        "custom_op_default_path": False,
        "zero_copy_layout": "nhwc",
    }
    assert parse_provider_options(None) == ProviderOptions()
    assert parse_provider_options([]) == ProviderOptions()


@pytest.mark.parametrize(
    "value, expected",
    [
        (0, (0,)),
        ("0,1,2", (0, 1, 2)),
        ("[0, 1]", (0, 1)),
        ("0 1", (0, 1)),
        ([2, "1"], (2, 1)),
        ((0, 0, 1), (0, 0, 1)),
    ],
)
def test_schedule_forms(value, expected):
    assert parse_provider_options({"schedule": value}).schedule == expected
    assert make_provider_options(schedule=value)["schedule"] == list(expected)


@pytest.mark.parametrize(
    "mode, mask",
    [("auto", 0), ("ALL", 0xFFFF), (" 0 ", 1), ("1", 2), ("2", 4), ("0,1", 3), ("0,1,2", 7)],
)
def test_tp_modes(mode, mask):
    assert parse_provider_options({"tp_mode": mode}).tp_mask == mask


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("sequential_callbacks", "off", False),
        ("enable_pacing", "YES", True),
        ("disable_dup_context", 1, True),
        ("custom_op_default_path", " true ", True),
        ("load_custom_ops_from_default_path", 0, False),
    ],
)
def test_bool_like_values(flag, value, expected):
    parsed = parse_provider_options({flag: value})
    key = "custom_op_default_path" if flag.startswith("load_") else flag
    assert getattr(parsed, key) is expected


def test_layout_spellings_and_custom_op_aliases_append():
    assert parse_provider_options({"layout": "ORIGINAL"}).layout == "nchw"
    assert parse_provider_options({"layout": "original_software"}).layout == "nchw_software"
    parsed = parse_provider_options({"custom_op_path": "/a.so", "custom_op_paths": ["/b.so"]})
    assert parsed.custom_op_paths == ("/a.so", "/b.so")
    assert parse_provider_options({"max_queue_size": " 7 "}).max_queue_size == 7
    assert parse_provider_options([{"threads_per_core": 2}, {"ignored": 1}]).threads_per_core == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_queue_size": 0}, "'max_queue_size' must be > 0"),
        ({"max_queue_size": -3}, "'max_queue_size' must be > 0"),
        ({"threads_per_core": "two"}, "'threads_per_core' must be an integer"),
        ({"submit_timeout_ms": 1.5}, "'submit_timeout_ms' must be an integer"),
        ({"sequential_callbacks": "maybe"}, "'sequential_callbacks' must be a boolean"),
        ({"enable_pacing": None}, "'enable_pacing' must be a boolean"),
        ({"schedule": [0, -1]}, "'schedule' values must be >= 0"),
        ({"schedule": []}, "'schedule' must not be empty"),
        ({"schedule": "0,x"}, "'schedule' must be an integer"),
        ({"schedule": 1.0}, "'schedule' must be an integer, string, or sequence"),
        ({"tp_mode": 1}, "'tp_mode' must be a string"),
        ({"tp_mode": "0, 1"}, "invalid tp_mode: '0, 1'"),
        ({"schedule": [0], "tp_mode": "all"}, "'tp_mode' conflicts with 'schedule'"),
        ({"layout": "nchw2"}, "'layout' must be one of"),
        ({"zero_copy_layout": "nchw"}, "'zero_copy_layout' must be one of"),
        ({"backend": "tensorrt"}, "'backend' must be one of"),
        ({"precision": "int4"}, "'precision' must be one of"),
        ({"custom_op_paths": 5}, "'custom_op_paths' must be a path"),
        ({"use_weight_from": 1}, "Unknown provider_options key: 'use_weight_from'"),
        ({"max_queue": 3}, "Unknown provider_options key: 'max_queue'"),
    ],
)
def test_bad_values_are_value_errors_naming_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_provider_options(**kwargs)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_provider_options(dict(kwargs))


def test_unknown_key_lists_supported_keys():
    with pytest.raises(ValueError, match="Supported keys: layout, zero_copy_layout"):
        parse_provider_options({"bogus": 1})


def test_provider_options_must_be_a_dict():
    with pytest.raises(TypeError, match="provider_options must be a dict"):
        parse_provider_options("schedule=0")
