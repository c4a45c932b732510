"""Issue 14 figures: the fleet on Ray Serve, two emulated boards against one, in one run.

    .venv/bin/python benchmarks/bench_ray_serve.py [--seconds 10] [--clients 48] [--rounds 2]

A local Ray cluster as ``tests/ray_fixtures.py`` builds it (``start_boards``): a
head without an NPU (Serve's controller and HTTP proxy) and two boards, each advertising
``{"rknpu": 1}`` and running the emulated librknnrt of an RK3588 (3 cores, ``--compute-ms`` per
inference: 150 inferences/s per board at 20 ms). ``ez_rknn_async.ray.deploy`` serves the model
on 1 replica, then on 2 (the application replaced in between), alternating ``--rounds`` times;
each time ``--clients`` threads, each with its own keep-alive HTTP connection, send infer
requests with binary tensors to Serve's proxy back to back for ``--seconds`` after a 1 s warm-up
(``bench_serve.closed_loop``).
Reported: answers/s per round, errors (any status but 200: none expected, the clients never
exceed what the replicas and the proxy queue take: ``max_queued_requests`` is set to
``--clients``), how the answers split over the boards
(the ``EZ-RKNN-Node`` header; warm-up included), and the ratio 2 boards / 1 board of the medians.

Clients, proxy, replicas and the emulated NPUs all share this machine's cores.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import ray  # noqa: E402
from bench_serve import closed_loop  # noqa: E402

from ez_rknn_async.ray.deployment import NODE_HEADER, FleetOptions, deploy, undeploy  # noqa: E402
from ez_rknn_async.serve.config import model_specs  # noqa: E402

from ray_fixtures import start_boards  # noqa: E402
from rknn_emu import EmuModel, EmuTensor  # noqa: E402
from serve_process import binary_infer_request  # noqa: E402

MODEL = EmuModel(
    inputs=[EmuTensor("image", "uint8", (1, 16, 16, 3), scale=1 / 255)],
    outputs=[EmuTensor("scores", "int8", (1, 10), zp=-5, scale=0.02)],
)
PORT = 18777


def infer_call(port: int, nodes: Counter) -> Callable[[], None]:
    """One client: its own keep-alive connection; each call one request, its board counted."""
    image = np.random.default_rng(port).integers(0, 256, (1, 3, 16, 16), dtype=np.uint8)
    body, headers = binary_infer_request("image", image, "UINT8", binary_output=True)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call() -> None:
        try:
            connection.request("POST", "/v2/models/npu/infer", body, headers)
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            connection.close()  # reconnects on the next request
            raise
        if response.status != 200:
            raise RuntimeError(f"status {response.status}")
        nodes[response.getheader(NODE_HEADER, "?")] += 1

    return call


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--compute-ms", type=float, default=20.0)
    args = parser.parse_args()
    limit = 3 / (args.compute_ms / 1000)
    boards = start_boards(2, compute_us=int(args.compute_ms * 1000))
    rates: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as folder:
        try:
            ray.init(address=boards.address, log_to_driver=False)
            specs = model_specs([f"npu={MODEL.write(Path(folder) / 'npu.rknn')}"])
            print(
                f"emulated RK3588 boards, 3 cores x {args.compute_ms:g} ms = {limit:g}/s each; "
                f"{args.clients} clients, {args.seconds:g} s per round, cpus: {os.cpu_count()}"
            )
            print(
                f"{'round':>5} {'boards':>6} {'answers/s':>10} {'of limit':>9} {'errors':>7}  split"
            )
            for round_ in range(args.rounds):
                for replicas in (1, 2):
                    # the proxy may hold every client's request: no 503 in a closed loop
                    options = FleetOptions(
                        replicas=replicas, port=PORT, max_queued_requests=args.clients
                    )
                    fleet = deploy(boards.address, specs, options)
                    nodes: Counter = Counter()
                    rate, errors = closed_loop(
                        args.clients, args.seconds, lambda _, nodes=nodes: infer_call(PORT, nodes)
                    )
                    rates[replicas].append(rate)
                    split = "/".join(str(n) for n in sorted(nodes.values(), reverse=True))
                    print(
                        f"{round_ + 1:>5} {replicas:>6} {rate:>10.1f} "
                        f"{rate / (replicas * limit):>8.3f}x {errors:>7}  {split}"
                        f"  (max_ongoing {fleet.max_ongoing_requests}/replica)"
                    )
            one, two = statistics.median(rates[1]), statistics.median(rates[2])
            print(f"\nmedian: 1 board {one:.1f}/s, 2 boards {two:.1f}/s: {two / one:.2f}x")
        finally:
            undeploy(boards.address)
            ray.shutdown()
            boards.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
