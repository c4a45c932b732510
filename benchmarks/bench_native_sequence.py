"""What the Ctrl-C-safe native sequence costs a run (issue 9, point 1), side by side in one process.

    .venv/bin/python benchmarks/bench_native_sequence.py [--calls 20000] [--rounds 5]

A runner's copying run makes four ctypes calls (inputs_set, run, outputs_get, outputs_release).
``NativeSequence`` (backends/rknn/sequence.py) drives them from C (``map`` over bound partials)
so a KeyboardInterrupt cannot land between them; before, they were four Python-level calls each
followed by a return-code check. Both are timed on one runner's context of the emulated runtime
at 0 us of NPU time, rounds interleaved, best round kept; then a whole ``sess.run`` for scale.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from rknn_emu import EmuModel, EmuTensor, process_npu  # noqa: E402

MODEL = EmuModel([EmuTensor("x", "float32", (1, 16))], [EmuTensor("y", "float32", (1, 16))])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    npu = process_npu()
    npu.use("rk3588", compute_us=0)

    from ez_rknn_async import InferenceSession
    from ez_rknn_async.backends import ModelSource, SlotSpec
    from ez_rknn_async.backends.rknn.backend import load
    from ez_rknn_async.backends.rknn.library import check
    from ez_rknn_async.options import ProviderOptions

    backend = load(ModelSource(MODEL.data()), ProviderOptions())
    runner = backend.open_runner(SlotSpec(0, 0, 1))
    x = np.ones((1, 16), np.float32)
    runner.run([x], [0])  # fills the runner's rknn_input / rknn_output arrays
    lib, handle = runner._lib, runner._context.handle
    inputs, outputs = runner._inputs, runner._outputs
    sequence = runner._copying_sequence(1)

    def four_calls() -> None:
        check("rknn_inputs_set", lib.rknn_inputs_set(handle, 1, inputs))
        check("rknn_run", lib.rknn_run(handle, None))
        check("rknn_outputs_get", lib.rknn_outputs_get(handle, 1, outputs, None))
        check("rknn_outputs_release", lib.rknn_outputs_release(handle, 1, outputs))

    best = {"four Python-level calls": float("inf"), "NativeSequence.run": float("inf")}
    for _ in range(args.rounds):
        for name, fn in zip(best, (four_calls, sequence.run)):
            best[name] = min(best[name], timeit.timeit(fn, number=args.calls) / args.calls)
    runner.close()
    backend.close()
    with InferenceSession(MODEL.data(), provider_options={"schedule": [0]}) as sess:
        whole = min(
            timeit.timeit(lambda: sess.run(None, [x]), number=args.calls // 4) / (args.calls // 4)
            for _ in range(args.rounds)
        )
    base = best["four Python-level calls"]
    print(f"native calls of one copying run, 0 us compute, best of {args.rounds} x {args.calls}")
    for name, value in best.items():
        print(f"{name:26} {value * 1e6:7.2f} us  {value / base:5.2f}x")
    print(f"{'whole sess.run':26} {whole * 1e6:7.2f} us")
    return 1 if npu.violations else 0


if __name__ == "__main__":
    sys.exit(main())
