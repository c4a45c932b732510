"""Issue 11, point 3: our OpenVINO backend vs OpenVINO's own AsyncInferQueue, side by side.

    .venv/bin/python benchmarks/bench_openvino.py [--model det.onnx] [--frames 200] [--rounds 5]

PP-OCRv4 det (``ch_PP-OCRv4_det_infer.onnx``, shipped in the ``rapidocr-onnxruntime`` wheel; the
script fetches that wheel with ``pip download`` when ``--model`` is not given) on a 1x3x320x320
float32 frame. Contenders, interleaved round by round so machine noise hits them alike:

* ``openvino AsyncInferQueue``: OpenVINO's own best, the model reshaped to the static input shape,
  compiled with the THROUGHPUT hint, as many infer requests as OpenVINO recommends
  (``OPTIMAL_NUMBER_OF_INFER_REQUESTS``); the callback only counts.
* ``ours openvino run_pipeline``: ``backend="openvino"``, default options.
* ``ours onnxruntime run_pipeline``: the onnxruntime backend, default options.

Every contender runs ``--frames`` frames per round; the median frames/s over rounds is reported,
with the per-round ratios' range.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import openvino as ov

from ez_rknn_async import InferenceSession, make_provider_options

WHEEL = "rapidocr-onnxruntime==1.4.4"
MEMBER = "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"
SHAPE = (1, 3, 320, 320)


def fetch_model(cache: Path) -> Path:
    """The det model out of the rapidocr-onnxruntime wheel (downloaded once into ``cache``)."""
    target = cache / Path(MEMBER).name
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, WHEEL],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            target.write_bytes(archive.read(MEMBER))
    return target


def openvino_queue(path: Path, frame: np.ndarray) -> tuple[Callable[[int], None], int]:
    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape({model.inputs[0].get_any_name(): list(SHAPE)})
    compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
    requests = compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
    queue = ov.AsyncInferQueue(compiled, requests)
    queue.set_callback(lambda request, userdata: None)

    def run(frames: int) -> None:
        for _ in range(frames):
            queue.start_async({0: frame})
        queue.wait_all()

    return run, requests


def pipeline(session: InferenceSession, frame: np.ndarray, depth: int) -> Callable[[int], None]:
    def run(frames: int) -> None:
        for _ in range(frames):
            session.run_pipeline([frame], depth=depth)
        session.drain_pipeline()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="PP-OCR det ONNX (default: fetch it)")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "ez-rknn-ocr")
    args = parser.parse_args()
    path = args.model or fetch_model(args.cache)
    frame = np.random.default_rng(0).random(SHAPE, dtype=np.float32)

    ov_run, requests = openvino_queue(path, frame)
    ours_ov = InferenceSession(
        str(path), provider_options=make_provider_options(backend="openvino")
    )
    ours_ort = InferenceSession(str(path))
    slots = len(ours_ov.worker_slots)
    depth = 2 * max(slots, requests)
    contenders = {
        "openvino AsyncInferQueue": ov_run,
        "ours openvino run_pipeline": pipeline(ours_ov, frame, depth),
        "ours onnxruntime run_pipeline": pipeline(ours_ort, frame, depth),
    }
    for run in contenders.values():  # warm-up: first compiles, caches
        run(max(4, requests))
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, run in contenders.items():
            start = time.perf_counter()
            run(args.frames)
            samples[name].append(args.frames / (time.perf_counter() - start))
    ours_ov.close()
    ours_ort.close()

    base = samples["openvino AsyncInferQueue"]
    onnx = samples["ours onnxruntime run_pipeline"]
    print(
        f"{path.name}, {SHAPE}, {args.frames} frames x {args.rounds} rounds, "
        f"OpenVINO {ov.get_version()}, {requests} infer requests, {slots} of our slots, "
        f"depth {depth}"
    )
    print(f"{'contender':32s} {'fps':>7s} {'vs AsyncInferQueue':>22s} {'vs ours onnxruntime':>22s}")
    for name, values in samples.items():
        vs_ov = [v / b for v, b in zip(values, base)]
        vs_ort = [v / b for v, b in zip(values, onnx)]
        print(
            f"{name:32s} {statistics.median(values):7.1f} "
            f"{statistics.median(vs_ov):6.2f}x ({min(vs_ov):.2f}-{max(vs_ov):.2f}) "
            f"{statistics.median(vs_ort):6.2f}x ({min(vs_ort):.2f}-{max(vs_ort):.2f})"
        )


if __name__ == "__main__":
    main()
