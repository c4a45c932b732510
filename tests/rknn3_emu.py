"""Helpers for the RKNPU3 backend tests: emulator models and weights, the reference, the control
API of the emulated librknn3_api (tests/npu3_emulator/README.md).

The emulated network is the RKNPU2 emulator's, so the numpy reference is ``rknn_emu.reference``
on an equivalent RKNPU2 model description.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import rknn_emu

sys.path.insert(0, str(Path(__file__).resolve().parent / "npu3_emulator"))
import build3 as emulator3_build  # noqa: E402

__all__ = ["Tensor3", "Model3", "Npu3", "emulator3_build"]


@dataclass(frozen=True)
class Tensor3:
    """A tensor of an emulator model; ``dims`` in the original layout (NCHW for 4-D)."""

    name: str
    type: str  # float32 | float16 | int8 | uint8
    dims: tuple[int, ...]
    zp: int = 0
    scale: float = 1.0
    shapes: tuple[tuple[int, ...], ...] = ()  # further shapes of a dynamic input

    def line(self, kind: str) -> str:
        dims = " ".join(str(d) for d in self.dims)
        text = f"{kind} {self.name} {self.type} {self.zp} {self.scale!r} {len(self.dims)} {dims}"
        return "\n".join([text] + ["shape " + " ".join(map(str, s)) for s in self.shapes])

    def as_rknpu2(self, is_input: bool) -> rknn_emu.EmuTensor:
        """The same tensor as the RKNPU2 emulator describes it (4-D inputs NHWC)."""

        def runtime_dims(dims: tuple[int, ...]) -> tuple[int, ...]:
            return tuple(rknn_emu.to_nhwc(dims) if is_input and len(dims) == 4 else dims)

        shapes = tuple(runtime_dims(s) for s in self.shapes)
        return rknn_emu.EmuTensor(
            self.name, self.type, runtime_dims(self.dims), self.zp, self.scale, shapes
        )


@dataclass(frozen=True)
class Model3:
    """An RKNPU3 model in the emulator's format and its .weight (same export: ``weight_id``)."""

    inputs: Sequence[Tensor3]
    outputs: Sequence[Tensor3]
    core_num: int = 1
    gain: float = 1.0
    weight_id: int = 1
    custom_string: str = ""

    def data(self) -> bytes:
        lines = ["RKNX EZEMU 1", f"core_num {self.core_num}", f"weight_id {self.weight_id}"]
        if self.custom_string:
            lines.append(f"custom_string {self.custom_string}")
        lines += [t.line("input") for t in self.inputs] + [t.line("output") for t in self.outputs]
        return ("\n".join(lines) + "\nend\n").encode()

    def weight(self, weight_id: int = 0) -> bytes:
        return f"EZEMU-WEIGHT {weight_id or self.weight_id} {self.gain!r}\n".encode()

    def write(self, folder: Path, name: str = "model") -> Path:
        """``folder/name.rknn`` and its companion ``folder/name.weight``; returns the model path."""
        (folder / f"{name}.weight").write_bytes(self.weight())
        path = folder / f"{name}.rknn"
        path.write_bytes(self.data())
        return path

    def reference(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        as2 = rknn_emu.EmuModel(
            [t.as_rknpu2(True) for t in self.inputs],
            [t.as_rknpu2(False) for t in self.outputs],
            gain=self.gain,
        )
        return rknn_emu.reference(as2, feeds)

    def feeds(self, seed: int, shape: int = 0) -> list[np.ndarray]:
        """Random float32 inputs of shape ``shape`` (0: the declared dims)."""
        rng = np.random.default_rng(seed)
        return [
            rng.uniform(-2, 2, t.shapes[shape - 1] if shape and t.shapes else t.dims).astype(
                np.float32
            )
            for t in self.inputs
        ]


class Npu3:
    """The emulator's control API (same library handle as the backend's)."""

    def __init__(self, library: Path, setenv: Callable[[str, str], None]) -> None:
        self.library = library
        self._setenv = setenv
        self.lib = ctypes.CDLL(str(library))
        self.lib.rknn3_emu_last_violation.restype = ctypes.c_char_p
        self.expected_violations = 0

    @property
    def abi(self) -> str:
        return {10: "1.0", 11: "1.1"}[self.lib.rknn3_emu_abi()]

    def use(self, devices: int = 2, cores: int = 8, compute_us: int = 0) -> None:
        """Emulate ``devices`` x ``cores`` (counters reset) and point the backend at it."""
        self._setenv("EZ_RKNN3_RUNTIME_LIB", str(self.library))
        assert self.lib.rknn3_emu_configure(devices, cores, compute_us) == 0, "contexts alive"

    def set_compute_us(self, compute_us: int) -> None:
        self.lib.rknn3_emu_set_compute_us(compute_us)

    def inject(self, api: str, code: int, count: int = 1, skip: int = 0) -> None:
        """The ``count`` calls of ``api`` after the next ``skip`` ones return ``code``."""
        self.lib.rknn3_emu_inject_failure(api.encode(), code, count, skip)

    def set_firmware_version(self, version: str) -> None:
        self.lib.rknn3_emu_set_firmware_version(version.encode())

    def release_hang(self) -> None:
        self.lib.rknn3_emu_release_hang()

    def calls(self, api: str) -> int:
        return self.lib.rknn3_emu_calls(api.encode())

    def core_runs(self, device: int, core: int) -> int:
        return self.lib.rknn3_emu_core_runs(device, core)

    def contexts_on(self, device: int) -> int:
        return self.lib.rknn3_emu_contexts_on(device)

    def contexts_with_priority(self, priority: int) -> int:
        return self.lib.rknn3_emu_contexts_with_priority(priority)

    @property
    def violations(self) -> int:
        return self.lib.rknn3_emu_violations()

    @property
    def last_violation(self) -> str:
        return self.lib.rknn3_emu_last_violation().decode()

    @property
    def live_allocations(self) -> int:
        return self.lib.rknn3_emu_live_allocations()

    @property
    def live_contexts(self) -> int:
        return self.lib.rknn3_emu_live_contexts()

    @property
    def live_mems(self) -> int:
        return self.lib.rknn3_emu_live_mems()

    @property
    def max_parallel(self) -> int:
        return self.lib.rknn3_emu_max_parallel()
