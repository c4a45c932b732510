"""Builds the emulated librknn3_api with gcc, once per source change: one library per ABI version.

The compile helpers are the RKNPU2 emulator's (``tests/npu_emulator/build.py``): the same
content-hashed output folder, the same race-free publish, the same ``sizeof``/``offsetof`` probe.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "npu_emulator"))
import build as npu2_build  # noqa: E402

__all__ = ["Emulator3", "ABI_VERSIONS", "HEADER", "build", "abi_define"]

HEADER = HERE / "rknn3_emu_api.h"
#: Bookkeeping shared with the RKNPU2 emulator.
SUPPORT = npu2_build.HERE / "emu_support.h"
#: ABI version -> RKNN3_EMU_ABI value.
ABI_VERSIONS = {"1.0": 10, "1.1": 11}
_SOURCES = ("rknn3_emu_api.h", "emulator.c", "build3.py")
_CFLAGS = ("-O2", "-g", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared", "-pthread")


def abi_define(version: str) -> str:
    return f"-DRKNN3_EMU_ABI={ABI_VERSIONS[version]}"


@dataclass(frozen=True)
class Emulator3:
    """The build: ``library(version)`` is ``<folder>/v<version>/librknn3_api.so``."""

    root: Path

    def library(self, version: str) -> Path:
        return self.root / f"v{version}" / "librknn3_api.so"


def _digest() -> str:
    sha = hashlib.sha256()
    for name in _SOURCES:
        sha.update((HERE / name).read_bytes())
    sha.update(SUPPORT.read_bytes())
    return sha.hexdigest()[:16]


def build(out_root: Optional[Path] = None) -> Emulator3:
    """Compile both ABI versions into ``build/<hash>/`` unless that build exists."""
    final = (out_root or HERE / "build") / _digest()

    def make(staging: Path) -> None:
        for version in ABI_VERSIONS:
            folder = staging / f"v{version}"
            folder.mkdir()
            target = str(folder / "librknn3_api.so")
            flags = [*_CFLAGS, abi_define(version), "-I", str(SUPPORT.parent)]
            npu2_build.gcc([*flags, "-o", target, str(HERE / "emulator.c"), "-lm"], HERE)

    npu2_build.build_once(final, make)
    return Emulator3(final)


if __name__ == "__main__":
    print(build().root)
