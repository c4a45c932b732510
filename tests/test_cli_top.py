"""``ez-rknn top`` on fake board trees (EZ_RKNN_SYSFS_ROOT), in-process through ``main``."""

from __future__ import annotations

import io
import json

import pytest

from ez_rknn_async.backends.rknn import kernel
from ez_rknn_async.cli import top
from ez_rknn_async.cli.errors import ExitCode
from ez_rknn_async.cli.main import main

from fake_board import SRAM_MM_512K, FakeBoard


@pytest.fixture
def board(tmp_path, monkeypatch) -> FakeBoard:
    monkeypatch.setenv(kernel.ROOT_ENV, str(tmp_path))
    return FakeBoard(tmp_path)


@pytest.fixture
def waits(monkeypatch, board):
    """Replaces the pause between samples: records it and makes the NPU busier each time."""
    calls = []

    def wait(seconds):
        calls.append(seconds)
        board.write(
            "/sys/kernel/debug/rknpu/load", "NPU load:  Core0: 5%, Core1: 99%, Core2:100%,\n"
        )

    monkeypatch.setattr(top, "_wait", wait)
    return calls


def test_json_lines_follow_the_board(board, waits, capsys):
    board.rknpu(mm=SRAM_MM_512K)
    board.devfreq()
    code = main(["top", "--json", "--count", "2", "--interval", "0.25"])
    out, err = capsys.readouterr()
    assert code == ExitCode.OK, err
    first, second = (json.loads(line) for line in out.splitlines())
    assert first["schema"] == top.JSON_SCHEMA
    assert first["cores"] == [
        {"core": 0, "load": 63},
        {"core": 1, "load": 65},
        {"core": 2, "load": 0},
    ]
    assert [c["load"] for c in second["cores"]] == [5, 99, 100]
    assert waits == [0.25]  # one pause, between the two samples
    assert first["driver"] == "rknpu" and first["driver_version"] == "0.9.8"
    assert first["freq_hz"] == 1_000_000_000 and first["voltage_uv"] == 850000
    assert first["sram"] == {"total": 978944, "used": 524288, "free": 454656}
    assert (
        first["devfreq"]["device"] == "fdab0000.npu" and first["devfreq"]["governor"] == "userspace"
    )
    assert first["unavailable"] == {} and second["time"] >= first["time"]


def test_table_for_people(board, waits, capsys):
    board.rknpu(version="0.9.6", load="NPU load: 45%\n", mm=SRAM_MM_512K)
    board.devfreq(device="fde40000.npu", cur_hz=900_000_000)
    assert main(["top", "--count", "1"]) == ExitCode.OK
    out = capsys.readouterr().out
    assert "\x1b[" not in out  # not a terminal: no redraw escapes
    lines = out.splitlines()
    assert lines[0].startswith("NPU rknpu driver 0.9.6, power on")
    assert lines[2:4] == ["core  load", f"   0   45%  [{'#' * 14}{'.' * 16}]"]
    assert "devfreq  fde40000.npu: 900 MHz (range 300 MHz - 1000 MHz, governor userspace)" in out
    assert "clock    1000 MHz, 0.850 V" in out
    assert "SRAM     512 KiB used of 956 KiB (444 KiB free)" in out
    assert waits == []


def test_redraws_in_place_on_a_terminal(board):
    board.rknpu()

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    top.run_top(screen, interval=0, count=2, wait=lambda _s: None)
    assert screen.getvalue().count("\x1b[H\x1b[2J") == 2
    assert screen.getvalue().count("core  load") == 2


def test_ctrl_c_between_samples_ends_quietly(board, monkeypatch, capsys):
    board.rknpu()

    def interrupted(_seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(top, "_wait", interrupted)
    assert main(["top", "--json"]) == ExitCode.OK
    assert len(capsys.readouterr().out.splitlines()) == 1


@pytest.mark.parametrize(
    ("build", "message", "hint"),
    [
        (lambda b: None, "no Rockchip NPU found", "rknpu driver"),
        (lambda b: b.rocket(), "mainline 'rocket' driver", "ez-rknn doctor"),
        (lambda b: b.rknpu(version="0.4.2", load=None), "older than 0.7.2", "update"),
    ],
    ids=["not-a-board", "rocket", "old-driver"],
)
def test_readable_errors(board, capsys, build, message, hint):
    build(board)
    code = main(["top", "--count", "1"])
    out, err = capsys.readouterr()
    assert code == ExitCode.NO_NPU and out == ""
    first, second = err.splitlines()[:2]
    assert first.startswith("error: ") and message in first
    assert second.startswith("hint: ") and hint in second


def test_not_root(board, monkeypatch, capsys):
    board.mkdir("/sys/bus/platform/drivers/RKNPU")
    board.mkdir("/sys/kernel/debug/dri")
    monkeypatch.setattr(kernel.os, "access", lambda *_args: False)
    assert main(["top", "--count", "1"]) == ExitCode.NO_NPU
    err = capsys.readouterr().err
    assert "readable by root only" in err and "hint: run as root, e.g. sudo ez-rknn top" in err


def test_bad_interval_is_a_usage_error(capsys):
    assert main(["top", "--interval", "0"]) == ExitCode.USAGE
    assert "must be > 0" in capsys.readouterr().err
