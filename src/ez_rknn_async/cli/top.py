"""``ez-rknn top``: the NPU's per-core load, frequency, voltage and SRAM, sampled every interval.

The readers are ``backends.rknn.kernel`` (which documents every file); this module only samples,
draws a table (redrawn in place on a terminal) or writes one JSON line per sample.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict
from typing import Any, Callable, Optional, TextIO

from ..backends.rknn import kernel
from ..backends.rknn.kernel import NpuStatus

__all__ = ["FILES_HELP", "status_json", "render", "run_top", "JSON_SCHEMA"]

JSON_SCHEMA = "ez-rknn-top/1"
_BAR = 30
_CLEAR = "\x1b[H\x1b[2J"

#: The files ``top`` reads, for ``--help`` and the README.
FILES_HELP = f"""\
files read (under ${kernel.ROOT_ENV} when set, for a fake tree):
  /sys/kernel/debug/rknpu/load      per-core load, e.g. "NPU load:  Core0: 63%, Core1: 65%, ..."
                                    (debugfs: root only; /proc/rknpu/ on procfs builds; rknpu
                                    driver 0.7.2 or newer)
  /sys/kernel/debug/rknpu/version   driver version ("RKNPU driver: v0.9.8")
  /sys/kernel/debug/rknpu/freq      NPU clock in Hz; .../volt (uV), .../power (on/off)
  /sys/kernel/debug/rknpu/mm        NPU SRAM use in bytes (kernels with CONFIG_ROCKCHIP_RKNPU_SRAM);
                                    the vendor driver does not report DRAM use
  /sys/class/devfreq/*.npu/         cur_freq, min_freq, max_freq (Hz) and governor (any user)
The mainline 'rocket' driver (Linux 6.18+, /dev/accel/accel*) reports no load."""


def status_json(status: NpuStatus) -> dict[str, Any]:
    """One sample as plain data (one line of ``--json``)."""
    return {
        "schema": JSON_SCHEMA,
        "time": status.time,
        "driver": status.driver,
        "driver_version": status.driver_version,
        "cores": [{"core": core, "load": load} for core, load in sorted(status.loads.items())],
        "freq_hz": status.freq_hz,
        "devfreq": asdict(status.devfreq) if status.devfreq else None,
        "voltage_uv": status.voltage_uv,
        "power": status.power,
        "sram": asdict(status.sram) if status.sram else None,
        "unavailable": dict(status.unavailable),
    }


def _mhz(hz: Optional[int]) -> str:
    return "-" if hz is None else f"{hz / 1e6:.0f} MHz"


def render(status: NpuStatus) -> str:
    """The human view: a header line, one bar per core, then frequency and SRAM lines."""
    when = time.strftime("%H:%M:%S", time.localtime(status.time))
    lines = [
        f"NPU {status.driver or '-'} driver {status.driver_version or '-'}, "
        f"power {status.power or '-'}  ({when})",
        "",
        "core  load",
    ]
    for core, load in sorted(status.loads.items()):
        filled = round(load / 100 * _BAR)
        lines.append(f"{core:>4}  {load:>3}%  [{'#' * filled}{'.' * (_BAR - filled)}]")
    lines.append("")
    devfreq = status.devfreq
    if devfreq is not None:
        lines.append(
            f"devfreq  {devfreq.device}: {_mhz(devfreq.cur_hz)} "
            f"(range {_mhz(devfreq.min_hz)} - {_mhz(devfreq.max_hz)}, "
            f"governor {devfreq.governor or '-'})"
        )
    if status.freq_hz is not None or status.voltage_uv is not None:
        volts = "-" if status.voltage_uv is None else f"{status.voltage_uv / 1e6:.3f} V"
        lines.append(f"clock    {_mhz(status.freq_hz)}, {volts}")
    if status.sram is not None:
        sram = status.sram
        lines.append(
            f"SRAM     {sram.used / 1024:.0f} KiB used of {sram.total / 1024:.0f} KiB "
            f"({sram.free / 1024:.0f} KiB free)"
        )
    lines += [f"({what}: {why})" for what, why in sorted(status.unavailable.items())]
    return "\n".join(lines)


def _sample() -> NpuStatus:
    """A sample with per-core load; ``NpuFileError`` (with its hint) when load cannot be read."""
    status = kernel.read_status()
    if not status.loads:
        kernel.read_core_loads()  # raises the readable error: not a board, not root, rocket
    return status


def _wait(seconds: float) -> None:
    time.sleep(seconds)


def run_top(
    out: TextIO,
    interval: float = 1.0,
    count: Optional[int] = None,
    as_json: bool = False,
    wait: Optional[Callable[[float], None]] = None,
) -> None:
    """Print ``count`` samples (forever when None; Ctrl-C ends it) ``interval`` seconds apart."""
    wait = wait or _wait
    redraw = not as_json and getattr(out, "isatty", lambda: False)()
    try:
        for index in itertools.count():
            if count is not None and index >= count:
                return
            if index:
                wait(interval)
            status = _sample()
            if as_json:
                out.write(json.dumps(status_json(status)) + "\n")
            else:
                out.write((_CLEAR if redraw else "\n" if index else "") + render(status) + "\n")
            out.flush()
    except KeyboardInterrupt:
        return
