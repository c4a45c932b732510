"""Issue 13 figures: the RKNPU3 backend on the emulated librknn3_api (tests/npu3_emulator).

    .venv/bin/python benchmarks/bench_rknn3_emulator.py [--frames 160] [--rounds 3] [--abi 1.1]

Multi-core, multi-device scaling: 2 emulated devices x 8 NPU cores, a model exported for 1 core,
20 ms per inference; ``run_pipeline`` frames/s on one core (``device_id`` of the first device,
``schedule=[0]``), on the 8 cores of one device, and on both devices (the default: every core
group of every device). Rounds interleave the contenders; the median is reported. Exits non-zero
if the emulator saw a rule violation or anything was left alive.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from rknn3_emu import Model3, Npu3, Tensor3, emulator3_build  # noqa: E402

MODEL = Model3(
    inputs=[Tensor3("image", "uint8", (1, 3, 16, 16), scale=1 / 255)],
    outputs=[Tensor3("scores", "int8", (1, 10), zp=-5, scale=0.02)],
    core_num=1,
)
FIRST = "0000:01:00.0"
CONTENDERS = {
    "1 core": {"device_id": FIRST, "schedule": [0]},
    "1 device x 8 cores": {"device_id": FIRST},
    "2 devices x 8 cores": {},
}


def pipeline_fps(session, frame: np.ndarray, frames: int, depth: int) -> float:
    start = time.perf_counter()
    for _ in range(frames):
        session.run_pipeline([frame], depth=depth)
    session.drain_pipeline()
    return frames / (time.perf_counter() - start)


def scaling(folder: Path, frames: int, rounds: int) -> dict[str, tuple[int, float]]:
    from ez_rknn_async import InferenceSession

    path = str(MODEL.write(folder))
    frame = np.zeros((1, 3, 16, 16), np.uint8)
    sessions = {}
    for name, options in CONTENDERS.items():
        engine = {key: options[key] for key in ("schedule",) if key in options}
        device = {"device_id": options["device_id"]} if "device_id" in options else {}
        sessions[name] = InferenceSession(
            path, provider_options={"max_queue_size": 32, **engine, **device}
        )
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            depth = 2 * len(session.worker_slots)
            samples[name].append(pipeline_fps(session, frame, frames, depth))
    result = {
        name: (len(session.worker_slots), statistics.median(samples[name]))
        for name, session in sessions.items()
    }
    for session in sessions.values():
        session.close()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--abi", choices=sorted(emulator3_build.ABI_VERSIONS), default="1.1")
    args = parser.parse_args(argv)
    library = emulator3_build.build().library(args.abi)
    npu = Npu3(library, os.environ.__setitem__)
    npu.use(devices=2, cores=8, compute_us=20_000)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        fps = scaling(Path(folder), args.frames, args.rounds)
    base = fps["1 core"][1]
    print(
        f"librknn3_api ABI {args.abi} emulated, 2 devices x 8 cores, 20 ms/inference, "
        f"run_pipeline depth 2 x slots, {args.frames} frames, median of {args.rounds} rounds"
    )
    print(f"{'contender':22} {'slots':>5} {'frames/s':>9} {'vs one core':>12}")
    for name, (slots, value) in fps.items():
        print(f"{name:22} {slots:5d} {value:9.1f} {value / base:11.2f}x")
    violations, contexts, mems = npu.violations, npu.live_contexts, npu.live_mems
    print(f"\nemulator: {violations} violations, {contexts} contexts, {mems} mems left")
    return 1 if violations or contexts or mems or npu.live_allocations else 0


if __name__ == "__main__":
    sys.exit(main())
