"""Helpers for the RKNN backend tests: emulator models, the numpy reference, the control API.

The fixtures live in ``rknn_fixtures`` (load it with ``pytest_plugins = ("rknn_fixtures",)``).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "npu_emulator"))
import build as emulator_build  # noqa: E402

__all__ = [
    "EmuTensor",
    "EmuModel",
    "IMAGE_CLASSIFIER",
    "Npu",
    "emulator_build",
    "reference",
    "to_nchw",
    "to_nhwc",
]


@dataclass(frozen=True)
class EmuTensor:
    """A tensor of an emulator model; ``dims`` as the runtime reports them (inputs NHWC).

    ``shapes`` (inputs only) are further allowed shapes of a dynamic input, in the same NHWC
    order; ``dims`` is then the first allowed shape (the one INPUT_ATTR reports).
    """

    name: str
    type: str  # float32 | float16 | int8 | uint8
    dims: tuple[int, ...]
    zp: int = 0
    scale: float = 1.0
    shapes: tuple[tuple[int, ...], ...] = ()

    def line(self, kind: str) -> str:
        dims = " ".join(str(d) for d in self.dims)
        text = f"{kind} {self.name} {self.type} {self.zp} {self.scale!r} {len(self.dims)} {dims}"
        return "\n".join([text] + ["shape " + " ".join(map(str, s)) for s in self.shapes])

    @property
    def allowed(self) -> list[tuple[int, ...]]:
        """Every allowed shape, the first one first (one for a static input)."""
        return [tuple(self.dims)] + [tuple(s) for s in self.shapes]


@dataclass(frozen=True)
class EmuModel:
    """A model in the emulator's text format (tests/npu_emulator/README.md)."""

    inputs: Sequence[EmuTensor]
    outputs: Sequence[EmuTensor]
    gain: Optional[float] = 1.0  # None: weights removed (needs use_weight_from)
    weight_id: int = 1
    custom_string: str = ""
    platform: str = ""
    custom_op: str = ""

    def data(self) -> bytes:
        lines = ["RKNN EZEMU 1"]
        if self.platform:
            lines.append(f"platform {self.platform}")
        if self.custom_string:
            lines.append(f"custom_string {self.custom_string}")
        if self.custom_op:
            lines.append(f"custom_op {self.custom_op}")
        if self.gain is None:
            lines.append(f"weights shared {self.weight_id}")
        else:
            lines.append(f"weights {self.gain!r} {self.weight_id}")
        lines += [t.line("input") for t in self.inputs] + [t.line("output") for t in self.outputs]
        lines.append("end")
        return ("\n".join(lines) + "\n").encode()

    @property
    def dynamic(self) -> bool:
        return any(t.shapes for t in self.inputs)

    def output_dims(self, input_dims: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
        """The outputs' shapes for the inputs' current (NHWC) shapes: on a dynamic model whose
        first input is 4-D, a 4-D output takes its H and W (README.md, dynamic shapes)."""
        first = tuple(input_dims[0])
        result = []
        for tensor in self.outputs:
            dims = tuple(tensor.dims)
            if self.dynamic and len(first) == 4 and len(dims) == 4:
                dims = (dims[0], dims[1], first[1], first[2])
            result.append(dims)
        return result

    def write(self, path: Path) -> Path:
        path.write_bytes(self.data())
        return path


#: The small classifier the server tests serve (an 8x8 RGB uint8 image -> 10 int8 scores): one
#: model for ``ez-rknn serve`` on one board and on a Ray fleet.
IMAGE_CLASSIFIER = EmuModel(
    inputs=[EmuTensor("image", "uint8", (1, 8, 8, 3), scale=1 / 255)],
    outputs=[EmuTensor("scores", "int8", (1, 10), zp=-5, scale=0.02)],
)


def to_nchw(model_dims: Sequence[int]) -> tuple[int, ...]:
    """The NCHW shape of a 4-D input the runtime reports as NHWC."""
    n, h, w, c = model_dims
    return (n, c, h, w)


def _quantize(tensor: EmuTensor, real: np.ndarray) -> np.ndarray:
    if tensor.type == "float32":
        return real.astype(np.float32).astype(np.float64)
    if tensor.type == "float16":
        return real.astype(np.float32).astype(np.float16).astype(np.float64)
    lo, hi = (-128, 127) if tensor.type == "int8" else (0, 255)
    scale = np.float64(np.float32(tensor.scale))
    q = np.clip(np.rint(real / scale) + tensor.zp, lo, hi)
    return (q - tensor.zp) * scale


def to_nhwc(nchw: Sequence[int]) -> tuple[int, ...]:
    """The runtime's (NHWC) dims of a 4-D NCHW shape."""
    n, c, h, w = nchw
    return (n, h, w, c)


def reference(model: EmuModel, feeds: Sequence[np.ndarray], gain: Optional[float] = None) -> list:
    """What the emulated network returns (float32) for ``feeds`` in NCHW / model order; on a
    dynamic model the feeds' shapes are the current ones and decide the outputs' shapes."""
    gain = model.gain if gain is None else gain
    current = [
        to_nhwc(np.shape(f)) if len(t.dims) == 4 and np.ndim(f) == 4 else tuple(t.dims)
        for t, f in zip(model.inputs, feeds)
    ]
    out_dims = model.output_dims(current) if model.dynamic else [t.dims for t in model.outputs]
    xs = [
        _quantize(t, np.asarray(f).astype(np.float64).reshape(-1))
        for t, f in zip(model.inputs, feeds)
    ]
    results = []
    for j, (tensor, dims) in enumerate(zip(model.outputs, out_dims)):
        k = np.arange(prod(dims))
        total = np.zeros(k.size)
        for i, x in enumerate(xs):
            total = total + (i + 1) * x[(k + j) % x.size]
        results.append(_quantize(tensor, gain * total + 0.5 * j).astype(np.float32).reshape(dims))
    return results


class Npu:
    """The emulator's control API (same library handle as the backend's) plus the test's paths."""

    def __init__(
        self,
        paths: emulator_build.Emulator,
        setenv: Callable[[str, str], None],
        library: Optional[Path] = None,
    ) -> None:
        self.paths = paths
        self._setenv = setenv  # monkeypatch.setenv in tests
        self.lib = ctypes.CDLL(str(library or paths.library))
        self.lib.rknn_emu_last_violation.restype = ctypes.c_char_p
        self.expected_violations = 0
        #: Our binding destroys dups before their origin; the original library does not (a
        #: tolerated order, npu_emulator/README.md), so its tests set this.
        self.tolerate_early_destroys = False

    def use(self, soc: str = "rk3588", compute_us: int = 0) -> None:
        """Emulate ``soc`` (counters reset) and make the backend detect it through EZ_RKNN_SOC."""
        self._setenv("EZ_RKNN_SOC", soc)
        assert self.lib.rknn_emu_configure(soc.encode(), compute_us) == 0, self.last_violation

    def inject(self, api: str, code: int, count: int = 1) -> None:
        self.lib.rknn_emu_inject_failure(api.encode(), code, count)

    def raise_signal(self, api: str, signo: int, count: int = 1) -> None:
        """The next ``count`` calls of ``api`` raise ``signo`` on the calling thread."""
        self.lib.rknn_emu_raise_signal(api.encode(), signo, count)

    def set_run_delay(self, seconds: float, count: int = 1) -> None:
        """The next ``count`` rknn_run calls take ``seconds`` each."""
        self.lib.rknn_emu_set_run_delay(int(seconds * 1e6), count)

    def block_runs(self, count: int = 1) -> None:
        """The next ``count`` rknn_run calls stop inside until ``release_runs``."""
        self.lib.rknn_emu_block_runs(count)

    def wait_blocked(self, n: int = 1, timeout: float = 10.0) -> int:
        """Waits (GIL released) until ``n`` runs are stopped inside; how many are."""
        return self.lib.rknn_emu_wait_blocked(n, int(timeout * 1000))

    def release_runs(self) -> int:
        """Lets every stopped run finish (and cancels further blocks); how many were stopped."""
        return self.lib.rknn_emu_release_runs()

    def set_versions(self, api: str, driver: str) -> None:
        self.lib.rknn_emu_set_versions(api.encode(), driver.encode())

    def calls(self, api: str) -> int:
        return self.lib.rknn_emu_calls(api.encode())

    def core_runs(self, core: int) -> int:
        return self.lib.rknn_emu_core_runs(core)

    def contexts_with_mask(self, mask: int) -> int:
        """Live contexts bound to ``mask`` (-1: never bound)."""
        return self.lib.rknn_emu_contexts_with_mask(mask)

    @property
    def violations(self) -> int:
        return self.lib.rknn_emu_violations()

    @property
    def last_violation(self) -> str:
        return self.lib.rknn_emu_last_violation().decode()

    @property
    def early_destroys(self) -> int:
        """Contexts destroyed while dups of them were alive."""
        return self.lib.rknn_emu_early_destroys()

    @property
    def live_allocations(self) -> int:
        return self.lib.rknn_emu_live_allocations()

    @property
    def live_contexts(self) -> int:
        return self.lib.rknn_emu_live_contexts()

    @property
    def live_mems(self) -> int:
        """Tensor mems created and not destroyed yet."""
        return self.lib.rknn_emu_live_mems()

    @property
    def max_parallel(self) -> int:
        return self.lib.rknn_emu_max_parallel()


def process_npu() -> Npu:
    """The emulator, built and made this process's librknnrt (``EZ_RKNN_RUNTIME_LIB``): for
    scripts (the benchmarks) that have no pytest fixture to do it."""
    paths = emulator_build.build()
    os.environ["EZ_RKNN_RUNTIME_LIB"] = str(paths.library)
    return Npu(paths, os.environ.__setitem__)
