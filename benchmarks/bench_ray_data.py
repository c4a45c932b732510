"""Issue 14 figures (offline half): Ray Data's ``map_batches(Predictor)`` on 1 board vs 2.

    .venv/bin/python benchmarks/bench_ray_data.py [--frames 1500] [--batch-size 64]
                                                  [--rounds 2]

A local cluster (``start_boards`` of ``tests/ray_fixtures.py``, the tests' cluster): a head
without NPU and two boards, each advertising ``{"rknpu": 1}`` and running the emulated librknnrt
of an RK3588 (3 cores, 20 ms per inference: at most 150 frames/s per board). The same dataset of
``--frames`` frames goes through ``map_batches(Predictor, compute=ActorPoolStrategy(size=N),
resources={"rknpu": 1})`` with N = 1 and N = 2, alternating for ``--rounds`` rounds. Reported per
run: the wall time of the whole run (actors' start, the session's creation included) and the
steady rate (frames/s from the first batch out to the last), each as a fraction of the boards'
limit; then the 2-board / 1-board ratios of the best runs. Every run checks that each frame came
back once and in order.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ez_rknn_async.ray import Predictor  # noqa: E402

from ray_fixtures import BOARDS, Boards, start_boards  # noqa: E402
from rknn_emu import EmuModel, EmuTensor  # noqa: E402

MODEL = EmuModel(
    inputs=[EmuTensor("image", "uint8", (1, 32, 32, 3), scale=1 / 255)],
    outputs=[EmuTensor("scores", "int8", (1, 10), zp=-5, scale=0.02)],
)
BOARD_LIMIT = 150.0  # 3 cores / 20 ms


def connect(boards: Boards) -> None:
    ray.init(address=boards.address, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False


def one_run(images: np.ndarray, model: str, boards: int, batch_size: int) -> tuple[float, float]:
    """(wall seconds, steady frames/s) of one pass over ``images`` on ``boards`` boards."""
    ds = ray.data.from_items(
        [{"id": i, "image": image} for i, image in enumerate(images)],
        override_num_blocks=max(1, len(images) // batch_size),
    ).map_batches(
        Predictor,
        fn_constructor_kwargs={"model": model},
        compute=ray.data.ActorPoolStrategy(size=boards),
        resources={"rknpu": 1},
        batch_size=batch_size,
    )
    ids, arrivals = [], []
    start = time.perf_counter()
    for batch in ds.iter_batches(batch_size=None):
        arrivals.append((time.perf_counter(), len(batch["id"])))
        ids.append(batch["id"])
    wall = time.perf_counter() - start
    got = np.concatenate(ids)
    if not np.array_equal(got, np.arange(len(images))):
        raise SystemExit(f"frames lost, repeated or out of order on {boards} board(s)")
    first, last = arrivals[0][0], arrivals[-1][0]
    steady = sum(n for _, n in arrivals[1:]) / (last - first)
    return wall, steady


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    images = np.random.default_rng(0).integers(0, 256, (args.frames, 3, 32, 32), np.uint8)
    boards = start_boards(BOARDS)
    best: dict[int, tuple[float, float]] = {}
    try:
        connect(boards)
        with tempfile.TemporaryDirectory() as tmp:
            model = str(MODEL.write(Path(tmp) / "model.rknn"))
            print(f"{args.frames} frames, batch_size {args.batch_size}, limit 150 frames/s/board")
            print("boards | wall s | frames/s (wall) | steady frames/s | steady / limit")
            for _ in range(args.rounds):
                for count in (1, BOARDS):
                    wall, steady = one_run(images, model, count, args.batch_size)
                    limit = BOARD_LIMIT * count
                    print(
                        f"{count:6d} | {wall:6.2f} | {args.frames / wall:15.1f} | "
                        f"{steady:15.1f} | {steady / limit:14.0%}"
                    )
                    w, s = best.get(count, (float("inf"), 0.0))
                    best[count] = (min(w, wall), max(s, steady))
    finally:
        ray.shutdown()
        boards.shutdown()
    (w1, s1), (w2, s2) = best[1], best[BOARDS]
    print(f"2 boards / 1 board: steady rate x{s2 / s1:.2f}, wall time x{w1 / w2:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
