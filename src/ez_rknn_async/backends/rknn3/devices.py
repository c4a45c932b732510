"""RKNPU3 devices (RK1820/RK1828 cards, RK3572's NPU) and how worker slots are laid over them.

``rknn3_find_devices`` lists the attached devices; its ``mem_info.node_num`` (one memory node per
NPU core) is taken as the device's core count [DERIVED: RKNN3_ABI.md 3.3 only documents the
nodes]. A model runs on exactly the number of cores it was exported for (``CORE_NUMBER``), so a
device of ``c`` cores holds ``c // n`` disjoint core groups for an ``n``-core model; each group is
one *route* a worker slot (one context) can take. Routes alternate between devices, so
``schedule=[0, 1]`` already spreads over two cards.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

from ...errors import RKNNError
from .abi import Abi
from .library import check

__all__ = ["Device", "Route", "find_devices", "select_devices", "plan_routes", "mask_text"]


@dataclass(frozen=True)
class Device:
    """One attached device: ``id`` (PCIe BDF or USB id), ``type`` and NPU ``cores``."""

    id: str
    type: str
    cores: int


@dataclass(frozen=True)
class Route:
    """A core group of one device: what one context's ``run_core_mask`` selects."""

    device: Device
    mask: int

    def describe(self) -> str:
        return f"{self.device.id} cores {mask_text(self.mask)}"


def mask_text(mask: int) -> str:
    return f"0x{mask:x}"


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def find_devices(lib: Any, abi: Abi) -> list[Device]:
    """Every device ``rknn3_find_devices`` reports (a code of 0 with none found is success)."""
    devices = abi.struct("rknn3_devices")()
    check("rknn3_find_devices", lib.rknn3_find_devices(ctypes.byref(devices)))
    count = min(int(devices.n_devices), len(devices.devices))
    return [
        Device(_text(d.id), _text(d.type), int(d.mem_info.node_num))
        for d in devices.devices[:count]
    ]


def select_devices(found: Sequence[Device], wanted: Optional[Sequence[str]]) -> list[Device]:
    """The devices ``device_id`` names (all found when it is None), in its order."""
    if not found:
        raise RKNNError(
            "no RKNPU3 device found (rknn3_find_devices listed none): check the card, its "
            "driver and that rknn3_transfer_proxy (or rknn3-server on RK3572) is running",
            -10,
            "RKNN3_ERR_DEVICE_UNAVAILABLE",
        )
    if wanted is None:
        return list(found)
    by_id = {device.id: device for device in found}
    unknown = [name for name in wanted if name not in by_id]
    if unknown:
        raise ValueError(
            f"provider option 'device_id' names {unknown}, but the devices found are "
            f"{sorted(by_id)}"
        )
    return [by_id[name] for name in dict.fromkeys(wanted)]


def plan_routes(
    devices: Sequence[Device], core_number: int, core_mask: Union[str, int]
) -> list[Route]:
    """The core groups of every device for a model exported for ``core_number`` cores.

    ``core_mask`` "auto": disjoint groups of ``core_number`` consecutive cores, as many as fit
    (the official demos' ``(1 << n) - 1`` is the first). An int: that mask on every device, once;
    it must set exactly ``core_number`` bits (the runtime fails model_init otherwise).
    """
    if isinstance(core_mask, int):
        bits = bin(core_mask).count("1")
        if bits != core_number:
            raise ValueError(
                f"provider option 'run_core_mask' {mask_text(core_mask)} selects {bits} NPU "
                f"core(s), but the model was exported for {core_number} (core_num at "
                f"conversion); RKNPU3 needs a mask of exactly {core_number} bits, e.g. "
                f"{mask_text((1 << core_number) - 1)}, or 'auto'"
            )
    per_device: list[list[Route]] = []
    for device in devices:
        cores = device.cores or core_number  # a runtime that reports no nodes: one group
        if isinstance(core_mask, int):
            if core_mask >> cores:
                raise ValueError(
                    f"provider option 'run_core_mask' {mask_text(core_mask)} names cores that "
                    f"device {device.id} lacks (it has {cores})"
                )
            per_device.append([Route(device, core_mask)])
            continue
        if cores < core_number:
            raise ValueError(
                f"the model was exported for {core_number} NPU cores, device {device.id} has "
                f"{cores}"
            )
        group = (1 << core_number) - 1
        per_device.append(
            [Route(device, group << (core_number * g)) for g in range(cores // core_number)]
        )
    routes: list[Route] = []
    for rank in range(max(len(groups) for groups in per_device)):
        routes.extend(groups[rank] for groups in per_device if rank < len(groups))
    return routes
