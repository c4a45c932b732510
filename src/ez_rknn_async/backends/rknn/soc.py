"""Which SoC this is and which NPU cores it has; pure functions over the device tree and env.

Why it matters: the original binding never detected the SoC, so single-core boards failed on
``rknn_set_core_mask`` and bad schedules failed deep inside the runtime. Here the SoC decides the
default workers (one per core), which schedules are valid (ValueError naming the SoC), and whether
a core mask may be set at all (never on single-core NPUs).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

from . import kernel

__all__ = [
    "ENV_VAR",
    "COMPATIBLE_PATHS",
    "NPU_CORES",
    "Soc",
    "detect_soc",
    "parse_compatible",
]

ENV_VAR = "EZ_RKNN_SOC"
COMPATIBLE_PATHS = ("/proc/device-tree/compatible", "/sys/firmware/devicetree/base/compatible")
#: NPU cores per SoC (RKNN_ABI.md 1). Matched by prefix, so "rk3588s" is an rk3588.
NPU_CORES: dict[str, int] = {
    "rk3588": 3,
    "rk3576": 2,
    "rk3566": 1,
    "rk3568": 1,
    "rk3562": 1,
    "rv1126b": 1,
    "rv1103": 1,
    "rv1106": 1,
}
#: Valid rknn_set_core_mask values by core count (single-core NPUs accept none).
_MASKS = {3: (0, 1, 2, 4, 3, 7, 0xFFFF), 2: (0, 1, 2, 3, 0xFFFF)}
#: Masks that mean "the only core there is" and are simply not set on a single-core NPU.
_SINGLE_CORE_NOOP = (0, 1, 0xFFFF)


@dataclass(frozen=True)
class Soc:
    """A SoC as detected: ``name`` (None if unknown), where it came from, its NPU cores."""

    name: Optional[str]
    source: str  # "EZ_RKNN_SOC" | "device-tree" | "unknown"
    cores: tuple[int, ...]

    @property
    def label(self) -> str:
        return (self.name or "unknown SoC").upper()

    def _describe(self) -> str:
        cores = ", ".join(str(c) for c in self.cores)
        return f"{self.label} has NPU core{'s' if len(self.cores) > 1 else ''} {cores}"

    def check_cores(self, cores: Iterable[int]) -> None:
        """ValueError if a scheduled core does not exist on this SoC."""
        absent = sorted(set(cores) - set(self.cores))
        if absent:
            raise ValueError(
                f"schedule names NPU core {', '.join(str(c) for c in absent)}, but "
                f"{self._describe()} (detected from {self.source}; set {ENV_VAR} to override)"
            )

    def core_mask(self, mask: int) -> Optional[int]:
        """The mask to pass to ``rknn_set_core_mask``, or None to skip the call.

        Single-core NPUs reject the call even for AUTO, so masks meaning "core 0" are skipped
        there; masks naming other cores are a ValueError on every SoC that lacks them.
        """
        if len(self.cores) == 1 and mask in _SINGLE_CORE_NOOP:
            return None
        if mask not in _MASKS.get(len(self.cores), ()):
            named = [bit for bit in range(16) if mask >> bit & 1]
            raise ValueError(
                f"core mask {mask:#x} (cores {named}) is not valid here: {self._describe()}"
            )
        return mask


def _cores_of(name: str) -> tuple[int, ...]:
    for prefix, count in NPU_CORES.items():
        if name.startswith(prefix):
            return tuple(range(count))
    return (0,)


def parse_compatible(data: bytes) -> Optional[str]:
    """The SoC in a device-tree ``compatible`` list, e.g. b"radxa,rock-5b\\0rockchip,rk3588\\0"."""
    for entry in data.split(b"\0"):
        vendor, _, model = entry.decode("ascii", "replace").strip().partition(",")
        if vendor == "rockchip" and model.startswith(("rk35", "rv11")):
            return model
    return None


def detect_soc(
    environ: Optional[Mapping[str, str]] = None, paths: Optional[Sequence[str]] = None
) -> Soc:
    """``EZ_RKNN_SOC`` if set, else the device tree (under ``$EZ_RKNN_SYSFS_ROOT`` when set);
    unknown SoCs are taken as one core."""
    environ = os.environ if environ is None else environ
    override = environ.get(ENV_VAR, "").strip().lower()
    if override:
        return Soc(override, ENV_VAR, _cores_of(override))
    base = kernel.root(environ)
    for path in COMPATIBLE_PATHS if paths is None else paths:
        try:
            with open(kernel.path(path, base), "rb") as file:
                name = parse_compatible(file.read())
        except OSError:
            continue
        if name:
            return Soc(name, "device-tree", _cores_of(name))
    return Soc(None, "unknown", (0,))
