"""Issue 10 figures: ``ez-rknn serve`` over loopback, next to the NPU's limit and in-process runs.

    .venv/bin/python benchmarks/bench_serve.py [--seconds 10] [--clients 48] [--frames 2000]
                                               [--sections 1,2,3]

1. NPU limit: the server runs an emulated RK3588 (3 cores, 20 ms per inference: at most 150
   inferences/s), started as a user starts it (``tests/serve_process.py``); ``--clients``
   tritonclient clients, each on its own thread and connection, send requests back to back for
   ``--seconds``, over HTTP (binary tensors) and then over gRPC. Reported: inferences/s, their
   fraction of 150, errors, and the emulator's rule violations (exit code).
2. CPU, small tensor: the added latency of the server. ``add_mul`` (1x4 float32, onnxruntime):
   ``sess.run`` in this process vs one tritonclient client (HTTP binary, HTTP JSON, gRPC)
   sending sequential requests to the server; p50 and p99 over ``--frames`` requests each.
3. CPU, YOLOv8n 320: throughput with 4 callers, in-process (4 threads calling ``sess.run``) vs
   4 server clients (HTTP binary), so the cost of moving 1.2 MB in and 0.7 MB out shows.

Client and server share this machine's cores, so the server's figures include the clients' CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ez_rknn_async import InferenceSession  # noqa: E402

from onnx_models import add_mul_model, save, yolo_path  # noqa: E402
from rknn_emu import EmuModel, EmuTensor, emulator_build  # noqa: E402
from serve_process import ServerProcess, infer_input  # noqa: E402

NPU_MODEL = EmuModel(
    inputs=[EmuTensor("image", "uint8", (1, 16, 16, 3), scale=1 / 255)],
    outputs=[EmuTensor("scores", "int8", (1, 10), zp=-5, scale=0.02)],
)
NPU_LIMIT = 150.0  # 3 cores / 20 ms
SHAPE = [1, 3, 320, 320]


def make_inputs(module, feed: dict[str, np.ndarray], datatype: str, binary: bool = True) -> list:
    return [infer_input(module, name, array, datatype, binary) for name, array in feed.items()]


def closed_loop(
    count: int, seconds: float, make_call: Callable[[int], Callable[[], None]]
) -> tuple[float, int]:
    """``count`` threads each call their ``make_call(i)()`` back to back; after a 1 s warm-up,
    completions in ``seconds`` -> (per second, errors)."""
    calls = [make_call(i) for i in range(count)]
    start = threading.Barrier(count + 1)
    window = {"open": False, "stop": False}
    done = [0] * count
    errors = [0] * count

    def loop(i: int) -> None:
        start.wait()
        while not window["stop"]:
            try:
                calls[i]()
            except Exception as exc:  # counted and reported
                errors[i] += 1
                if errors[i] == 1:
                    print(f"  client {i}: {exc}", file=sys.stderr)
                continue
            if window["open"]:
                done[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    start.wait()
    time.sleep(1.0)  # warm-up: connections made, queues filled
    window["open"] = True
    opened = time.perf_counter()
    time.sleep(seconds)
    window["open"] = False
    elapsed = time.perf_counter() - opened
    window["stop"] = True
    for thread in threads:
        thread.join(60)
    return sum(done) / elapsed, sum(errors)


def npu_limit(seconds: float, clients: int, folder: Path) -> int:
    emulator = emulator_build.build()
    model = str(NPU_MODEL.write(folder / "npu.rknn"))
    env = {"EZ_RKNN_RUNTIME_LIB": str(emulator.library), "EZ_RKNN_SOC": "rk3588"}
    frame = np.zeros((1, 3, 16, 16), np.uint8)
    print(
        f"\n1. emulated RK3588, 3 cores x 20 ms = {NPU_LIMIT:g}/s; {clients} clients, {seconds:g} s"
    )
    print(f"   {'transport':<14} {'inferences/s':>12} {'of limit':>9} {'errors':>7}")
    server = ServerProcess([f"npu={model}"], env=env, emulated=("rk3588", 20_000))
    with server:
        server.start()
        for label, module, url in (
            ("HTTP binary", thttp, server.http_url),
            ("gRPC", tgrpc, server.grpc_url),
        ):

            def make_call(i: int, module=module, url=url) -> Callable[[], None]:
                client = module.InferenceServerClient(url)
                inputs = make_inputs(module, {"image": frame}, "UINT8")
                return lambda: client.infer("npu", inputs)

            rate, errors = closed_loop(clients, seconds, make_call)
            print(f"   {label:<14} {rate:>12.1f} {rate / NPU_LIMIT:>8.3f}x {errors:>7}")
    code = server.process.returncode
    print(f"   server exit code {code} (70 would mean an emulator rule violation or leak)")
    return code


def percentiles(fn: Callable[[], object], frames: int) -> tuple[float, float]:
    for _ in range(min(200, frames)):
        fn()
    samples = []
    for _ in range(frames):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    p50, p99 = np.percentile(np.array(samples) * 1e6, [50, 99])
    return float(p50), float(p99)


def small_tensor_latency(frames: int, folder: Path) -> None:
    path = save(folder, "add_mul.onnx", add_mul_model())
    feed = {"a": np.arange(4, dtype=np.float32).reshape(1, 4), "b": np.ones((1, 4), np.float32)}
    print(f"\n2. added latency, add_mul 1x4 float32 (onnxruntime), {frames} sequential requests")
    print(f"   {'path':<30} {'p50 µs':>9} {'p99 µs':>9} {'added p50':>10} {'added p99':>10}")
    with InferenceSession(path) as session:
        base = percentiles(lambda: session.run(None, feed), frames)
    print(f"   {'in-process sess.run':<30} {base[0]:>9.1f} {base[1]:>9.1f}")
    with ServerProcess([path]) as server:
        server.start()
        http = thttp.InferenceServerClient(server.http_url)
        grpc = tgrpc.InferenceServerClient(server.grpc_url)
        paths = {
            "server, HTTP binary": (http, make_inputs(thttp, feed, "FP32"), "http"),
            "server, HTTP JSON": (http, make_inputs(thttp, feed, "FP32", binary=False), "http"),
            "server, gRPC": (grpc, make_inputs(tgrpc, feed, "FP32"), "grpc"),
        }
        inside = {}
        for label, (client, inputs, protocol) in paths.items():
            before = server_seconds(server, "add_mul", "request_duration", protocol)
            p50, p99 = percentiles(lambda c=client, i=inputs: c.infer("add_mul", i), frames)
            after = server_seconds(server, "add_mul", "request_duration", protocol)
            inside[label] = (after[0] - before[0]) / (after[1] - before[1]) * 1e6
            print(
                f"   {label:<30} {p50:>9.1f} {p99:>9.1f} {p50 - base[0]:>10.1f} "
                f"{p99 - base[1]:>10.1f}"
            )
    print("   of which inside the server's request handler (mean, from /metrics):")
    for label, micros in inside.items():
        print(f"   {label:<30} {micros:>9.1f}")


def server_seconds(
    server: ServerProcess, model: str, histogram: str, protocol: str = ""
) -> tuple[float, float]:
    """(sum, count) of one of the server's time histograms (``ez_rknn_<histogram>_seconds``)."""
    labels = f'model="{model}"' + (f',protocol="{protocol}"' if protocol else "")
    name = f"ez_rknn_{histogram}_seconds"
    return (
        server.metric(f"{name}_sum{{{labels}}}"),
        server.metric(f"{name}_count{{{labels}}}"),
    )


def yolo_throughput(seconds: float, folder: Path, callers: int = 4) -> None:
    path = yolo_path()
    config = folder / "yolo.json"  # its height and width are dynamic: warm up at 320x320
    config.write_text(
        json.dumps({"models": {"yolo": {"path": path, "warmup_shapes": {"images": SHAPE}}}})
    )
    frame = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    print(f"\n3. YOLOv8n 320 (onnxruntime), {callers} callers, {seconds:g} s, median of 3 rounds")
    rates: dict[str, list[float]] = {"in-process sess.run": [], "server, HTTP binary": []}
    with InferenceSession(path) as session, ServerProcess(["--config", str(config)]) as server:
        server.start()
        for _ in range(3):
            rate, _ = closed_loop(
                callers, seconds, lambda i: lambda: session.run(None, {"images": frame})
            )
            rates["in-process sess.run"].append(rate)

            def make_call(i: int) -> Callable[[], None]:
                client = thttp.InferenceServerClient(server.http_url)
                inputs = make_inputs(thttp, {"images": frame}, "FP32")
                return lambda: client.infer("yolo", inputs)

            rate, errors = closed_loop(callers, seconds, make_call)
            assert errors == 0
            rates["server, HTTP binary"].append(rate)
        request = server_seconds(server, "yolo", "request_duration", "http")
        compute = server_seconds(server, "yolo", "compute_duration")
    base = statistics.median(rates["in-process sess.run"])
    for label, values in rates.items():
        rate = statistics.median(values)
        print(f"   {label:<22} {rate:>7.1f} frames/s  {rate / base:>6.3f}x")
    outside = (request[0] / request[1] - compute[0] / compute[1]) * 1e3
    print(
        f"   the server's own work per frame (request - compute time, /metrics): {outside:.2f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=48)
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--sections", default="1,2,3", help="which parts to run, e.g. 2")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    code = 0
    with tempfile.TemporaryDirectory() as folder:
        if "1" in sections:
            code = npu_limit(args.seconds, args.clients, Path(folder))
        if "2" in sections:
            small_tensor_latency(args.frames, Path(folder))
        if "3" in sections:
            yolo_throughput(args.seconds / 2, Path(folder))
    return code


if __name__ == "__main__":
    sys.exit(main())
