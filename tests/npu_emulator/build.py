"""Builds the emulated librknnrt (and its custom-op plugins) with gcc, once per source change.

Why a content hash in the output folder: the tests and the benchmark run ``build()`` every time;
the hash makes that free when nothing changed, rebuilds when a source did, and never lets two
versions of the library be confused (a loaded .so is never overwritten). ``probe_layout`` compiles
a probe of the emulator's header to assembly and reads ``sizeof``/``offsetof`` back, which works
for a 32-bit target even where no 32-bit C library is installed (nothing is linked).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

__all__ = ["Emulator", "build", "build_once", "gcc", "probe_layout", "HERE"]

HERE = Path(__file__).resolve().parent
_SOURCES = ("rknn_emu_api.h", "emu_support.h", "emulator.c", "custom_op_plugin.c", "build.py")
_CFLAGS = ("-O2", "-g", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared", "-pthread")
#: Plugin file name -> extra gcc flags.
_PLUGINS = {
    "librkcst_emuop.so": ['-DEMU_OP_TYPE="EmuOp"'],
    "librkcst_emuop_again.so": ['-DEMU_OP_TYPE="EmuOp"'],
    "librkcst_other.so": ['-DEMU_OP_TYPE="OtherOp"'],
    "librkcst_noentry.so": ["-DEMU_NO_ENTRY"],
}


@dataclass(frozen=True)
class Emulator:
    """Paths of one build: the library, its RV1106-like variant and the custom-op plugins.

    ``zero_copy_only`` lacks rknn_dup_context, rknn_inputs_set and rknn_outputs_get/_release,
    like RV1103/RV1106's librknnmrt.
    """

    library: Path
    zero_copy_only: Path
    plugins: Path

    def plugin(self, name: str) -> Path:
        return self.plugins / name


def _digest() -> str:
    sha = hashlib.sha256()
    for name in _SOURCES:
        sha.update((HERE / name).read_bytes())
    return sha.hexdigest()[:16]


def gcc(args: Sequence[str], cwd: Path) -> None:
    result = subprocess.run(["gcc", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"gcc {' '.join(args)} failed:\n{result.stderr}")


def build_once(final: Path, make: Callable[[Path], None]) -> None:
    """Run ``make(staging)`` and move the folder to ``final`` unless ``final`` exists; safe to
    call from many processes (the first rename wins, a loaded library is never overwritten)."""
    if final.exists():
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="staging-", dir=final.parent))
    try:
        make(staging)
        with contextlib.suppress(OSError):  # another process finished first: same build
            os.rename(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build(out_root: Optional[Path] = None) -> Emulator:
    """Compile into ``build/<hash>/`` unless that build exists."""
    out_root = out_root or HERE / "build"
    final = out_root / _digest()

    def make(staging: Path) -> None:
        (staging / "plugins").mkdir()
        source = str(HERE / "emulator.c")
        gcc([*_CFLAGS, "-o", str(staging / "librknnrt.so"), source, "-lm"], HERE)
        variant = ["-DEMU_ZERO_COPY_ONLY", "-Wno-unused-function"]
        gcc([*_CFLAGS, *variant, "-o", str(staging / "librknnmrt.so"), source, "-lm"], HERE)
        for name, flags in _PLUGINS.items():
            target = str(staging / "plugins" / name)
            gcc([*_CFLAGS, *flags, "-o", target, str(HERE / "custom_op_plugin.c")], HERE)

    build_once(final, make)
    return Emulator(final / "librknnrt.so", final / "librknnmrt.so", final / "plugins")


def probe_layout(
    structs: Mapping[str, Sequence[str]],
    *,
    bits32: bool = False,
    header: Path = HERE / "rknn_emu_api.h",
    defines: Sequence[str] = (),
) -> Optional[dict[str, tuple[int, dict[str, int]]]]:
    """``{struct: (sizeof, {field: offsetof})}`` as gcc lays out ``header`` (the emulator's;
    ``defines`` such as ``-DRKNN3_EMU_ABI=10`` select a variant).

    ``bits32`` compiles for i386 with ``-malign-double``: 4-byte pointers and contexts, 8-byte
    aligned 64-bit integers, which is the armhf layout. Returns None when gcc cannot do that.
    """
    lines = ["#include <stddef.h>", f'#include "{header.name}"', "const unsigned int probe[] = {"]
    for struct, fields in structs.items():
        lines.append(f"  sizeof({struct}),")
        lines.extend(f"  offsetof({struct}, {field})," for field in fields)
    lines.append("};")
    flags = ["-m32", "-malign-double", "-ffreestanding"] if bits32 else []
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.c"
        probe.write_text("\n".join(lines) + "\n")
        args = [*flags, *defines, "-I", str(header.parent), "-S", "-o", "-", str(probe)]
        result = subprocess.run(["gcc", *args], capture_output=True, text=True)
    if result.returncode != 0:
        if bits32:
            return None
        raise RuntimeError(f"gcc probe failed:\n{result.stderr}")
    values = iter(int(v) for v in re.findall(r"^\s*\.long\s+(\d+)", result.stdout, re.M))
    layout = {}
    for struct, fields in structs.items():
        size = next(values)
        layout[struct] = (size, {field: next(values) for field in fields})
    return layout


if __name__ == "__main__":
    print(build().library)
