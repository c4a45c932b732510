"""``ez-rknn serve`` with a hung NPU: the real server in a subprocess on the emulated RK3588, one
of whose ``rknn_run`` calls never returns (the emulator's block control, reached through the
test-only signals of ``serve_process``), next to an onnxruntime model.

* A session that became BROKEN makes its model and the server not-ready, its requests get 503
  (gRPC UNAVAILABLE) saying the session is broken, and the other model keeps serving.
* SIGTERM with the hung inference in flight exits within the stop's deadline
  (``--shutdown-timeout``), with exit code 1 and a stop line naming the abandoned model.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from onnx_models import add_mul_model, save
from rknn_emu import IMAGE_CLASSIFIER
from serve_process import ServerProcess, infer_input

pytest_plugins = ("rknn_fixtures",)

EMU = IMAGE_CLASSIFIER
FRAME = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 3, 8, 8],
                     "data": [0] * 192}]}  # fmt: skip
SHUTDOWN_TIMEOUT = 1.0


@pytest.fixture
def hung_server(emulator, tmp_path):
    """``hung`` (RKNN, emulated, no compute time) and ``add_mul`` (onnxruntime)."""
    args = [
        f"hung={EMU.write(tmp_path / 'hung.rknn')}",
        f"add_mul={save(tmp_path, 'add_mul.onnx', add_mul_model())}",
        "--shutdown-timeout",
        str(SHUTDOWN_TIMEOUT),
    ]
    env = {"EZ_RKNN_RUNTIME_LIB": str(emulator.library), "EZ_RKNN_SOC": "rk3588"}
    process = ServerProcess(args, env=env, emulated=("rk3588", 0))
    try:
        yield process.start()
    finally:
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait(10)


def metric(server, line_start: str, value: float, timeout: float = 10.0) -> None:
    """Poll /metrics until the sample is ``value`` (bounded)."""
    deadline = time.monotonic() + timeout
    while server.metric(line_start) != value:
        assert time.monotonic() < deadline, f"{line_start} never {value}"
        time.sleep(0.01)


def ask_in_background(server, model: str) -> tuple[threading.Thread, list]:
    """One raw HTTP infer request on a thread; its (status, error or body) lands in the list."""
    answers: list = []

    def ask() -> None:
        try:
            status, _, body = server.request(
                "POST", f"/v2/models/{model}/infer", json.dumps(FRAME).encode()
            )
            answers.append((status, body.decode(errors="replace")))
        except OSError as exc:  # the server went away without answering
            answers.append((None, str(exc)))

    thread = threading.Thread(target=ask)
    thread.start()
    return thread, answers


def hang_one_inference(server) -> tuple[threading.Thread, list]:
    server.block_next_run()
    thread, answers = ask_in_background(server, "hung")
    metric(server, 'ez_rknn_engine_running{model="hung"}', 1)  # inside rknn_run now
    return thread, answers


def add_mul_works(client, module) -> None:
    a = np.arange(4, dtype=np.float32).reshape(1, 4)
    inputs = [infer_input(module, name, a, "FP32") for name in ("a", "b")]
    np.testing.assert_array_equal(client.infer("add_mul", inputs).as_numpy("sum"), a + a)


def test_a_broken_session_is_not_ready_and_503_while_other_models_serve(hung_server):
    server = hung_server
    thread, answers = hang_one_inference(server)
    assert server.get("/v2/health/ready")[0] == 200  # hung is not broken (yet)
    assert server.break_hung() == 1
    thread.join(10)
    assert answers[0][0] == 503 and "its session is broken" in json.loads(answers[0][1])["error"]
    assert "'hung'" in answers[0][1]

    assert server.get("/v2/health/ready")[0] == 503
    assert server.get("/v2/models/hung/ready")[0] == 503
    assert server.get("/v2/models/add_mul/ready")[0] == 200
    status, headers, body = server.request(
        "POST", "/v2/models/hung/infer", json.dumps(FRAME).encode()
    )
    assert status == 503 and headers["retry-after"] == "1"
    assert "'hung': its session is broken" in json.loads(body)["error"]
    metric(server, 'ez_rknn_engine_state{model="hung",state="broken"}', 1)
    metric(server, 'ez_rknn_engine_state{model="add_mul",state="open"}', 1)

    grpc_client = tgrpc.InferenceServerClient(server.grpc_url)
    assert grpc_client.is_server_live() and not grpc_client.is_server_ready()
    assert not grpc_client.is_model_ready("hung") and grpc_client.is_model_ready("add_mul")
    frame = np.zeros((1, 3, 8, 8), np.uint8)
    with pytest.raises(InferenceServerException) as info:
        grpc_client.infer("hung", [infer_input(tgrpc, "image", frame, "UINT8")])
    assert "UNAVAILABLE" in info.value.status() and "broken" in info.value.message()
    add_mul_works(grpc_client, tgrpc)
    grpc_client.close()
    http_client = thttp.InferenceServerClient(server.http_url)
    add_mul_works(http_client, thttp)
    http_client.close()

    assert server.stop(signal.SIGTERM, timeout=30) == 1, server.log  # a session was abandoned
    assert "abandoned (exit 1): model 'hung': its session was already broken" in server.log[-2]
    assert "rknn-emu: 0 violation(s)" in server.log[-1], server.log


def test_sigterm_with_a_hung_inference_exits_within_the_shutdown_timeout(hung_server):
    server = hung_server
    thread, answers = hang_one_inference(server)
    started = time.monotonic()
    code = server.stop(signal.SIGTERM, timeout=30)
    elapsed = time.monotonic() - started
    thread.join(10)
    assert code == 1, server.log
    # it waited for the hung request until the sessions' deadline (the stop's, less the last
    # quarter kept to send the 503s) and no longer: exit, plus slack for a loaded CI machine
    assert SHUTDOWN_TIMEOUT * 0.75 <= elapsed < SHUTDOWN_TIMEOUT + 5, (elapsed, server.log)
    stop = next(line for line in server.log if "stop: SIGTERM" in line)
    assert "1 request(s) were in flight" in stop, server.log
    assert "model 'hung': an inference was still running at the deadline" in stop, server.log
    warning = [line for line in server.log if "RuntimeWarning" in line]
    assert "did not finish within close()'s deadline" in warning[0], server.log
    assert "rknn-emu: 0 violation(s)" in server.log[-1], server.log
    # the hung request is answered: 503, its session broken (not a cancelled task's 500)
    assert answers[0][0] == 503 and "its session is broken" in answers[0][1], answers
