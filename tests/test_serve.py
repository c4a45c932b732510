"""``ez-rknn serve`` end to end: the real server in a subprocess, the real tritonclient (HTTP and
gRPC) and raw HTTP for what a client library would never send.

One server per module serves onnxruntime models and an RKNN model on the emulated NPU side by
side; the token and the lifecycle (busy model, SIGTERM with requests in flight) get their own.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import re
import signal
import socket
import sys
import threading
import time

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from ez_rknn_async.cli.main import TOKEN_ENV, main, serve_token

from fake_board import FakeBoard
from onnx_models import (
    add_mul_model,
    broadcast_model,
    mixed_types_model,
    save,
    small_types_model,
)
from rknn_emu import IMAGE_CLASSIFIER, EmuModel, EmuTensor, reference
from serve_process import ServerProcess, infer_input

pytest_plugins = ("rknn_fixtures",)

EMU = IMAGE_CLASSIFIER
TOKEN = "s3cret-token"
BODY_LIMIT = 4096
ZERO_FRAME = np.zeros((1, 3, 8, 8), np.uint8)
ZERO_DOCUMENT = {
    "inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 3, 8, 8], "data": [0] * 192}]
}


def emu_env(emulator) -> dict:
    return {"EZ_RKNN_RUNTIME_LIB": str(emulator.library), "EZ_RKNN_SOC": "rk3588"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    paths = {
        "add_mul": save(folder, "add_mul.onnx", add_mul_model()),
        "mixed": save(folder, "mixed.onnx", mixed_types_model()),
        "types": save(folder, "types.onnx", small_types_model()),
        "broadcast": save(folder, "broadcast.onnx", broadcast_model()),
        "emu": str(EMU.write(folder / "emu.rknn")),
    }
    config = folder / "serve.json"
    config.write_text(
        json.dumps(
            {"models": {"add_mul": {"path": paths["add_mul"], "max_request_bytes": BODY_LIMIT}}}
        )
    )
    paths["config"] = str(config)
    return paths


@pytest.fixture(scope="module")
def board(tmp_path_factory) -> FakeBoard:
    """The rknpu driver's debugfs files, for the per-core load in /metrics."""
    fake = FakeBoard(tmp_path_factory.mktemp("board"))
    fake.rknpu()
    return fake


@pytest.fixture(scope="module")
def server(models, emulator, board):
    """onnxruntime and RKNN (emulated) models in one server, started as a user would."""
    args = ["--config", models["config"]] + [
        f"{name}={models[name]}" for name in ("mixed", "types", "broadcast", "emu")
    ]
    env = {**emu_env(emulator), "EZ_RKNN_SYSFS_ROOT": str(board.root)}
    process = ServerProcess(args, env=env)
    try:
        process.start()
        yield process
    finally:
        code = process.stop(signal.SIGINT)  # Ctrl-C stops it as SIGTERM does
    assert code == 0, process.log
    assert "stop: SIGINT" in process.log[-1], process.log
    assert not [line for line in process.log if "VIOLATION" in line], process.log


@pytest.fixture(scope="module")
def http(server):
    client = thttp.InferenceServerClient(server.http_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(server):
    client = tgrpc.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


def add_mul_feed(seed: float) -> dict:
    a = (np.arange(8, dtype=np.float32).reshape(2, 4) + seed).astype(np.float32)
    return {"a": a, "b": np.full((2, 4), 0.5, np.float32)}


def add_mul_inputs(module, feed: dict, binary: bool = True) -> list:
    return [infer_input(module, name, array, "FP32", binary) for name, array in feed.items()]


# --- health and metadata --------------------------------------------------------------------


def test_health_and_metadata_over_http(server, http):
    assert http.is_server_live() and http.is_server_ready()
    metadata = http.get_server_metadata()
    assert metadata["name"] == "ez-rknn-async"
    assert "binary_tensor_data" in metadata["extensions"]
    for name in ("add_mul", "mixed", "types", "broadcast", "emu"):
        assert http.is_model_ready(name)
        assert http.is_model_ready(name, "1")
    assert http.get_model_metadata("mixed") == {
        "name": "mixed",
        "versions": ["1"],
        "platform": "onnxruntime",
        "inputs": [
            {"name": "ids", "datatype": "INT64", "shape": [-1, 3]},
            {"name": "h", "datatype": "FP16", "shape": [-1, 3]},
        ],
        "outputs": [
            {"name": "ids2", "datatype": "INT64", "shape": [-1, 3]},
            {"name": "h2", "datatype": "FP16", "shape": [-1, 3]},
            {"name": "hf", "datatype": "FP32", "shape": [-1, 3]},
        ],
    }
    emu = http.get_model_metadata("emu")
    assert emu["platform"] == "rknn"
    assert emu["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [1, 3, 8, 8]}]
    assert server.get("/v2/models/nope/ready")[0] == 404
    assert server.get("/v2/models/emu/versions/2/ready")[0] == 404
    status, body = server.get("/v2/models/nope")
    assert status == 404 and "unknown model 'nope'" in json.loads(body)["error"]


def test_health_and_metadata_over_grpc(grpc_client):
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    assert "binary_tensor_data" in grpc_client.get_server_metadata().extensions
    assert grpc_client.is_model_ready("emu")
    metadata = grpc_client.get_model_metadata("add_mul", as_json=True)
    assert metadata["inputs"] == [
        {"name": "a", "datatype": "FP32", "shape": ["-1", "4"]},
        {"name": "b", "datatype": "FP32", "shape": ["-1", "4"]},
    ]
    with pytest.raises(InferenceServerException) as info:
        grpc_client.get_model_metadata("nope")
    assert "NOT_FOUND" in info.value.status() and "'nope'" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        grpc_client.is_model_ready("add_mul", "7")
    assert "NOT_FOUND" in info.value.status()


# --- inference -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ort_reference(models):
    return {name: ort.InferenceSession(models[name]) for name in ("add_mul", "mixed", "types")}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_http_json_and_binary_with_output_selection(http, ort_reference, binary):
    feed = add_mul_feed(3.0)
    outputs = [thttp.InferRequestedOutput("prod", binary_data=binary)]
    result = http.infer(
        "add_mul", add_mul_inputs(thttp, feed, binary), outputs=outputs, request_id="req-42"
    )
    response = result.get_response()
    assert response["id"] == "req-42" and response["model_name"] == "add_mul"
    assert [o["name"] for o in response["outputs"]] == ["prod"]
    assert ("data" in response["outputs"][0]) != binary
    want = ort_reference["add_mul"].run(["prod"], feed)[0]
    np.testing.assert_array_equal(result.as_numpy("prod"), want)
    everything = http.infer("add_mul", add_mul_inputs(thttp, feed, binary))
    for name, want in zip(("sum", "prod"), ort_reference["add_mul"].run(None, feed)):
        np.testing.assert_array_equal(everything.as_numpy(name), want)


@pytest.mark.parametrize("transport", ["http-binary", "http-json", "grpc"])
def test_every_datatype(server, http, grpc_client, ort_reference, transport):
    module, client = (tgrpc, grpc_client) if transport == "grpc" else (thttp, http)
    binary = transport != "http-json"
    cases = {
        "mixed": {
            "ids": (np.array([[1, -2, 3], [4, 5, -6]], np.int64), "INT64"),
            "h": (np.array([[0.5, -1.25, 2], [3, 4.5, -8]], np.float16), "FP16"),
        },
        "types": {
            "flag": (np.array([True, False, True]), "BOOL"),
            "i8": (np.array([-128, 0, 127], np.int8), "INT8"),
            "u8": (np.array([0, 7, 255], np.uint8), "UINT8"),
            "i32": (np.array([-5, 0, 1 << 20], np.int32), "INT32"),
        },
    }
    for model, feed in cases.items():
        inputs = [infer_input(module, n, a, d, binary) for n, (a, d) in feed.items()]
        result = client.infer(model, inputs)
        session = ort_reference[model]
        arrays = {name: array for name, (array, _) in feed.items()}
        for node, want in zip(session.get_outputs(), session.run(None, arrays)):
            got = result.as_numpy(node.name)
            assert got.dtype == want.dtype, (model, node.name)
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_rknn_model_on_the_emulated_npu(http, grpc_client, transport):
    module, client = (tgrpc, grpc_client) if transport == "grpc" else (thttp, http)
    frame = np.random.default_rng(5).integers(0, 256, (1, 3, 8, 8), dtype=np.uint8)
    result = client.infer("emu", [infer_input(module, "image", frame, "UINT8")])
    np.testing.assert_array_equal(result.as_numpy("scores"), reference(EMU, [frame])[0])


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(server, ort_reference, algorithm):
    client = thttp.InferenceServerClient(server.http_url)
    feed = add_mul_feed(7.0)
    result = client.infer(
        "add_mul", add_mul_inputs(thttp, feed), request_compression_algorithm=algorithm
    )
    for name, want in zip(("sum", "prod"), ort_reference["add_mul"].run(None, feed)):
        np.testing.assert_array_equal(result.as_numpy(name), want)
    client.close()
    bomb = gzip.compress(b" " * (BODY_LIMIT * 4))  # small on the wire, over the limit inflated
    status, _, message = post_infer(server, "add_mul", bomb, headers={"Content-Encoding": "gzip"})
    assert status == 400 and f"limit of {BODY_LIMIT}" in message
    status, _, message = post_infer(server, "add_mul", b"xx", headers={"Content-Encoding": "br"})
    assert status == 400 and "'br' is not supported" in message
    status, _, message = post_infer(server, "add_mul", b"xx", headers={"Content-Encoding": "gzip"})
    assert status == 400 and "not valid gzip" in message


def test_versioned_paths(server, http):
    feed = add_mul_feed(1.0)
    result = http.infer("add_mul", add_mul_inputs(thttp, feed), model_version="1")
    np.testing.assert_array_equal(result.as_numpy("sum"), feed["a"] + feed["b"])
    with pytest.raises(InferenceServerException) as info:
        http.infer("add_mul", add_mul_inputs(thttp, feed), model_version="2")
    assert info.value.status() == "404" and "no version '2'" in info.value.message()


def test_curl_style_json_request(server):
    body = {
        "id": "curl-1",
        "inputs": [
            {"name": "a", "shape": [1, 4], "datatype": "FP32", "data": [[1, 2, 3, 4]]},
            {"name": "b", "shape": [1, 4], "datatype": "FP32", "data": [10, 20, 30, 40]},
        ],
        "outputs": [{"name": "sum"}],
    }
    status, headers, raw = server.request(
        "POST", "/v2/models/add_mul/infer", json.dumps(body).encode()
    )
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(raw) == {
        "model_name": "add_mul",
        "model_version": "1",
        "id": "curl-1",
        "outputs": [{"name": "sum", "datatype": "FP32", "shape": [1, 4], "data": [11, 22, 33, 44]}],
    }


# --- errors ---------------------------------------------------------------------------------


def post_infer(server, model: str, document, extra=b"", header_length=None, headers=None):
    text = document if isinstance(document, bytes) else json.dumps(document).encode()
    headers = dict(headers or {})
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = header_length
    status, response_headers, body = server.request(
        "POST", f"/v2/models/{model}/infer", text + extra, headers
    )
    return status, response_headers, json.loads(body)["error"] if status != 200 else body


def tensor(name, data, shape=(1, 4), datatype="FP32"):
    return {"name": name, "datatype": datatype, "shape": list(shape), "data": data}


GOOD_B = tensor("b", [1, 2, 3, 4])


@pytest.mark.parametrize(
    ("model", "document", "words"),
    [
        ("add_mul", b"{oops", ["not valid JSON"]),
        ("add_mul", {"inputs": [tensor("a", [1, 2, 3]), GOOD_B]}, ["'a'", "3 values"]),
        ("add_mul", {"inputs": [tensor("a", [1, 2, 3, 4], (4, 1)), GOOD_B]}, ["'a'", "shape"]),
        ("add_mul", {"inputs": [tensor("a", [1, 2, 3, 4], (1, 4), "INT32"), GOOD_B]},
         ["'a'", "int32", "float32"]),
        ("add_mul", {"inputs": [tensor("a", ["x"] * 4), GOOD_B]}, ["'a'", "non-numeric"]),
        ("add_mul", {"inputs": [GOOD_B]}, ["missing", "'a'"]),
        ("add_mul", {"inputs": [tensor("a", [1] * 4), GOOD_B, tensor("zz", [1] * 4)]},
         ["unknown input", "'zz'"]),
        ("add_mul", {"inputs": [tensor("a", [1] * 4), GOOD_B], "outputs": [{"name": "nope"}]},
         ["nope"]),
        ("add_mul", {"inputs": [tensor("s", ["a"], (1,), "BYTES")]}, ["'s'", "BYTES"]),
        ("emu", {"inputs": [tensor("image", [0] * 12, (1, 3, 2, 2), "UINT8")]},
         ["'image'", "shape"]),
    ],
)  # fmt: skip
def test_bad_requests_get_400_naming_the_problem(server, model, document, words):
    status, _, message = post_infer(server, model, document)
    assert status == 400, message
    for word in words:
        assert word in message, (word, message)


def test_binary_framing_errors_get_400(server):
    header = json.dumps(
        {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 4],
                     "parameters": {"binary_data_size": 16}}, GOOD_B]}
    ).encode()  # fmt: skip
    status, _, message = post_infer(server, "add_mul", header, b"\0" * 8, str(len(header)))
    assert status == 400 and "'a'" in message and "binary_data_size 16" in message
    status, _, message = post_infer(server, "add_mul", header, b"\0" * 16, "nan")
    assert status == 400 and "Inference-Header-Content-Length" in message
    status, _, message = post_infer(server, "add_mul", header, b"\0" * 20, str(len(header)))
    assert status == 400 and "4 bytes of binary data follow" in message


def test_a_body_over_the_limit_gets_400(server):
    big = {"inputs": [tensor("a", [0.0] * 2048, (512, 4)), tensor("b", [0.0] * 2048, (512, 4))]}
    status, _, message = post_infer(server, "add_mul", big)
    assert status == 400 and f"limit of {BODY_LIMIT}" in message and "add_mul" in message


def test_unknown_model_and_endpoint_get_404(server):
    status, _, message = post_infer(server, "nope", {"inputs": []})
    assert status == 404 and "unknown model 'nope'" in message
    status, body = server.get("/v2/repository/index")
    assert status == 404 and "no such endpoint" in json.loads(body)["error"]
    status, body = server.get("/v2/models/add_mul/infer")
    assert status == 405 and "Method Not Allowed" in json.loads(body)["error"]


def test_a_failed_inference_gets_500_with_the_backends_message(server, grpc_client):
    """a[2] + b[3] passes every check of the feed and fails inside onnxruntime's run."""
    document = {"inputs": [tensor("a", [1.0, 2.0], (2,)), tensor("b", [1.0, 2.0, 3.0], (3,))]}
    status, _, message = post_infer(server, "broadcast", document)
    assert status == 500 and "inference failed" in message and "broadcast" in message
    inputs = [
        infer_input(tgrpc, "a", np.ones(2, np.float32), "FP32"),
        infer_input(tgrpc, "b", np.ones(3, np.float32), "FP32"),
    ]
    with pytest.raises(InferenceServerException) as info:
        grpc_client.infer("broadcast", inputs)
    assert "INTERNAL" in info.value.status() and "broadcast" in info.value.message()
    # and the model keeps working
    inputs[1] = infer_input(tgrpc, "b", np.full(2, 3, np.float32), "FP32")
    np.testing.assert_array_equal(grpc_client.infer("broadcast", inputs).as_numpy("y"), [4, 4])


def test_grpc_invalid_argument_and_not_found(grpc_client):
    wrong_shape = [
        infer_input(tgrpc, "a", np.zeros((4, 1), np.float32), "FP32"),
        infer_input(tgrpc, "b", np.zeros((1, 4), np.float32), "FP32"),
    ]
    with pytest.raises(InferenceServerException) as info:
        grpc_client.infer("add_mul", wrong_shape)
    assert "INVALID_ARGUMENT" in info.value.status() and "'a'" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        grpc_client.infer("nope", wrong_shape)
    assert "NOT_FOUND" in info.value.status()
    big = [infer_input(tgrpc, n, np.zeros((512, 4), np.float32), "FP32") for n in ("a", "b")]
    with pytest.raises(InferenceServerException) as info:
        grpc_client.infer("add_mul", big)
    assert "INVALID_ARGUMENT" in info.value.status()
    assert f"limit of {BODY_LIMIT}" in info.value.message()


# --- concurrency and metrics --------------------------------------------------------------


def test_concurrent_clients_get_exactly_their_own_answers(server):
    """16 clients (8 HTTP, 8 gRPC) x 12 requests, each with inputs no other request has."""
    per_client, errors, answered = 12, [], []
    before = {
        protocol: server.metric(
            f'ez_rknn_request_success_total{{model="add_mul",protocol="{protocol}"}}'
        )
        for protocol in ("http", "grpc")
    }
    barrier = threading.Barrier(16)

    def client(index: int) -> None:
        module = tgrpc if index % 2 else thttp
        connection = module.InferenceServerClient(
            server.grpc_url if module is tgrpc else server.http_url
        )
        try:
            barrier.wait(30)
            for k in range(per_client):
                feed = add_mul_feed(index * 1000.0 + k)
                result = connection.infer(
                    "add_mul", add_mul_inputs(module, feed), request_id=f"{index}-{k}"
                )
                response = result.get_response()
                request_id = response.id if module is tgrpc else response["id"]
                assert request_id == f"{index}-{k}"
                np.testing.assert_array_equal(result.as_numpy("sum"), feed["a"] + feed["b"])
                np.testing.assert_array_equal(result.as_numpy("prod"), feed["a"] * feed["b"])
                answered.append((index, k))
        except BaseException as exc:  # the test fails on it below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert sorted(answered) == [(i, k) for i in range(16) for k in range(per_client)]
    for protocol in ("http", "grpc"):
        count = server.metric(
            f'ez_rknn_request_success_total{{model="add_mul",protocol="{protocol}"}}'
        )
        assert count - before[protocol] == 8 * per_client
    assert server.metric('ez_rknn_inflight_requests{model="add_mul"}') == 0


def test_metrics_count_failures_by_reason_and_time_requests(server):
    def failures(reason: str, model: str = "add_mul") -> float:
        return server.metric(
            f'ez_rknn_request_failure_total{{model="{model}",protocol="http",reason="{reason}"}}'
        )

    invalid, missing = failures("invalid"), failures("not_found", "")
    post_infer(server, "add_mul", b"{oops")
    post_infer(server, "nope", {"inputs": []})
    assert failures("invalid") == invalid + 1
    assert failures("not_found", "") == missing + 1
    count = 'ez_rknn_compute_duration_seconds_count{model="emu"}'
    before = server.metric(count)
    status, _, _ = post_infer(
        server, "emu", {"inputs": [tensor("image", [0] * 192, (1, 3, 8, 8), "UINT8")]}
    )
    assert status == 200
    assert server.metric(count) == before + 1
    assert server.metric('ez_rknn_queue_duration_seconds_count{model="emu"}') >= 1
    assert server.metric('ez_rknn_request_duration_seconds_count{model="emu",protocol="http"}') >= 1


def engine_samples(server) -> dict:
    """Every ez_rknn_engine_* sample of /metrics, parsed by prometheus_client's own parser:
    {(sample name, frozenset of labels): value}."""
    status, text = server.get("/metrics")
    assert status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text.decode())
        if family.name.startswith("ez_rknn_engine_")
        for sample in family.samples
    }


def slot_sum(samples: dict, name: str, model: str) -> float:
    return sum(v for (n, labels), v in samples.items() if n == name and ("model", model) in labels)


def test_metrics_export_the_engines_own_numbers(server, http):
    """N requests to the emulated 3-core model: the engine's counters move by exactly N, split
    over its slots, each slot labelled with its core; the gauges come back to 0."""
    n = 9
    frame = np.zeros((1, 3, 8, 8), np.uint8)
    before = engine_samples(server)
    for _ in range(n):
        http.infer("emu", [infer_input(thttp, "image", frame, "UINT8")])

    def delta(name: str, model: str = "emu") -> float:
        return slot_sum(engine_samples(server), name, model) - slot_sum(before, name, model)

    deadline = time.monotonic() + 10  # a slot counts just after publishing its outcome
    while delta("ez_rknn_engine_slot_completed_total") != n:
        assert time.monotonic() < deadline, engine_samples(server)
        time.sleep(0.01)
    after = engine_samples(server)
    emu = frozenset({("model", "emu")})
    assert (
        after[("ez_rknn_engine_submitted_total", emu)]
        - before[("ez_rknn_engine_submitted_total", emu)]
        == n
    )  # arun always queues
    assert (
        after[("ez_rknn_engine_queue_wait_seconds_count", emu)]
        - before[("ez_rknn_engine_queue_wait_seconds_count", emu)]
        == n
    )
    waited = after[("ez_rknn_engine_queue_wait_seconds_sum", emu)]
    assert 0 <= after[("ez_rknn_engine_queue_wait_peak_seconds", emu)] <= waited < 10
    assert delta("ez_rknn_engine_slot_failed_total") == 0
    assert delta("ez_rknn_engine_slot_busy_seconds_total") > 0
    completed = [
        labels for (name, labels) in after if name == "ez_rknn_engine_slot_completed_total"
    ]
    cores = {dict(labels)["core"] for labels in completed if ("model", "emu") in labels}
    assert cores == {"0", "1", "2"}
    for gauge in ("queued", "running", "waiting_submitters"):
        assert after[(f"ez_rknn_engine_{gauge}", emu)] == 0
    for state in ("open", "closing", "closed", "broken"):
        key = ("ez_rknn_engine_state", frozenset({("model", "emu"), ("state", state)}))
        assert after[key] == (state == "open")
    # every model is exported, onnxruntime ones too (one slot, core "auto")
    assert slot_sum(after, "ez_rknn_engine_slot_completed_total", "add_mul") >= 1


def test_metrics_read_the_npu_core_load_at_each_scrape(server, board):
    assert server.metric('ez_rknn_npu_core_load_percent{core="0"}') == 63
    assert server.metric('ez_rknn_npu_core_load_percent{core="1"}') == 65
    board.rknpu(load="NPU load:  Core0: 7%, Core1: 100%, Core2: 42%,\n")
    assert server.metric('ez_rknn_npu_core_load_percent{core="1"}') == 100
    assert server.metric('ez_rknn_npu_core_load_percent{core="2"}') == 42


# --- the bearer token ------------------------------------------------------------------------


DYNAMIC = EmuModel(
    inputs=[EmuTensor("x", "float32", (1, 4, 4, 3), shapes=((1, 8, 8, 3),))],
    outputs=[EmuTensor("y", "float32", (1, 3, 4, 4))],
)


def test_bearer_token_guards_everything_but_health(models, emulator, tmp_path):
    """Also: a dynamic RKNN model starts with the warm-up shape its config gives."""
    config = tmp_path / "token.json"
    dynamic = {"path": str(DYNAMIC.write(tmp_path / "dyn.rknn")),
               "warmup_shapes": {"x": [1, 3, 8, 8]}}  # fmt: skip
    config.write_text(json.dumps({"models": {"dyn": dynamic}}))
    with ServerProcess(
        [f"add_mul={models['add_mul']}", "--config", str(config)],
        env={"EZ_RKNN_SERVE_TOKEN": TOKEN, **emu_env(emulator)},
    ) as server:
        server.start()
        good = {"Authorization": f"Bearer {TOKEN}"}
        metadata = json.loads(server.get("/v2/models/dyn", good)[1])
        assert metadata["inputs"][0]["shape"] == [1, 3, -1, -1]
        assert server.get("/v2/health/live")[0] == 200
        assert server.get("/v2/health/ready")[0] == 200
        for path in ("/v2", "/v2/models/add_mul", "/metrics"):
            status, body = server.get(path)
            assert status == 401 and "bearer token" in json.loads(body)["error"], path
            assert server.get(path, {"Authorization": "Bearer wrong"})[0] == 401
            assert server.get(path, good)[0] == 200
        status, headers, _ = server.request("POST", "/v2/models/add_mul/infer", b"{}")
        assert status == 401 and headers["www-authenticate"] == "Bearer"
        feed = add_mul_feed(2.0)
        http = thttp.InferenceServerClient(server.http_url)
        result = http.infer("add_mul", add_mul_inputs(thttp, feed), headers=good)
        np.testing.assert_array_equal(result.as_numpy("sum"), feed["a"] + feed["b"])
        http.close()
        client = tgrpc.InferenceServerClient(server.grpc_url)
        assert client.is_server_live() and client.is_server_ready()
        with pytest.raises(InferenceServerException) as info:
            client.get_model_metadata("add_mul")
        assert "UNAUTHENTICATED" in info.value.status()
        with pytest.raises(InferenceServerException) as info:
            client.infer("add_mul", add_mul_inputs(tgrpc, feed), headers={"authorization": "x"})
        assert "UNAUTHENTICATED" in info.value.status()
        metadata = {"authorization": f"Bearer {TOKEN}"}
        result = client.infer("add_mul", add_mul_inputs(tgrpc, feed), headers=metadata)
        np.testing.assert_array_equal(result.as_numpy("prod"), feed["a"] * feed["b"])
        client.close()
    assert server.process.returncode == 0


def test_token_option_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert serve_token("from-option") == "from-option"
    assert serve_token(None) == "from-env"
    monkeypatch.setenv(TOKEN_ENV, "")
    assert serve_token(None) is None
    monkeypatch.delenv(TOKEN_ENV)
    assert serve_token(None) is None


# --- lifecycle: backpressure, SIGTERM with requests in flight ----------------------------------


SLOW_US = 600_000  # each emulated inference: long enough to observe requests in flight


@pytest.fixture(scope="module")
def slow_server(models, emulator, tmp_path_factory):
    """An emulated RK3588 at 0.6 s per inference: 'npu' on all 3 cores, 'single' on core 0 with
    one request admitted at once, 'tight' on core 1 with an engine queue of one; both time out
    after 100 ms. Before it is ready, it is live and answers 503."""
    config = tmp_path_factory.mktemp("slow") / "slow.json"
    config.write_text(
        json.dumps(
            {"models": {
                "npu": {"path": models["emu"], "max_queue_size": 3},
                "single": {"path": models["emu"], "schedule": [0], "max_inflight": 1,
                           "submit_timeout_ms": 100},
                "tight": {"path": models["emu"], "schedule": [1], "max_queue_size": 1,
                          "submit_timeout_ms": 100},
            }}
        )
    )  # fmt: skip
    process = ServerProcess(
        ["--config", str(config)], env=emu_env(emulator), emulated=("rk3588", SLOW_US)
    )
    with process:
        process.listening()
        # loading takes three warm-ups of 0.6 s: the server answers, and says it is not ready
        assert process.get("/v2/health/live")[0] == 200
        assert process.get("/v2/health/ready")[0] == 503
        assert process.get("/v2/models/npu/ready")[0] == 503
        status, headers, message = post_infer(process, "npu", ZERO_DOCUMENT)
        assert status == 503 and "not loaded yet" in message and headers["retry-after"] == "1"
        client = tgrpc.InferenceServerClient(process.grpc_url)
        assert client.is_server_live() and not client.is_server_ready()
        assert not client.is_model_ready("npu")
        client.close()
        process.start()
        yield process


def wait_inflight(server, model: str, count: int, timeout: float = 20.0) -> None:
    """Poll /metrics until ``count`` requests of ``model`` are in flight (bounded)."""
    deadline = time.monotonic() + timeout
    while server.metric(f'ez_rknn_inflight_requests{{model="{model}"}}') != count:
        assert time.monotonic() < deadline, f"{model}: never {count} in flight"
        time.sleep(0.01)


@contextlib.contextmanager
def in_flight(server, model: str, count: int):
    """``count`` HTTP requests of ``ZERO_FRAME`` to ``model``, all admitted while the block
    runs; then each must have been answered with the right scores."""
    answers: list = []

    def ask() -> None:  # raw HTTP: a gevent-based client must not be freed by another thread
        status, _, body = server.request(
            "POST", f"/v2/models/{model}/infer", json.dumps(ZERO_DOCUMENT).encode()
        )
        assert status == 200, body
        answers.append(json.loads(body)["outputs"][0]["data"])

    threads = [threading.Thread(target=ask) for _ in range(count)]
    for thread in threads:
        thread.start()
    wait_inflight(server, model, count)
    yield
    for thread in threads:
        thread.join(30)
    assert len(answers) == count
    for answer in answers:
        np.testing.assert_array_equal(answer, reference(EMU, [ZERO_FRAME])[0].reshape(-1))


def test_a_busy_model_gets_503_with_retry_after_and_unavailable(slow_server):
    with in_flight(slow_server, "single", 1):  # its max_inflight
        status, headers, message = post_infer(slow_server, "single", ZERO_DOCUMENT)
        assert status == 503 and headers["retry-after"] == "1"
        assert "busy" in message and "max_inflight" in message
        client = tgrpc.InferenceServerClient(slow_server.grpc_url)
        with pytest.raises(InferenceServerException) as info:
            client.infer("single", [infer_input(tgrpc, "image", ZERO_FRAME, "UINT8")])
        assert "UNAVAILABLE" in info.value.status()
        client.close()


def test_a_full_engine_queue_gets_503(slow_server):
    """Past the in-flight limit, the engine's own bound: one task runs, one waits in the queue,
    a third finds no space for submit_timeout_ms (SubmitTimeoutError) and gets 503."""
    with in_flight(slow_server, "tight", 2):
        status, headers, message = post_infer(slow_server, "tight", ZERO_DOCUMENT)
        assert status == 503 and headers["retry-after"] == "1"
        assert "submit timed out" in message and "max_queue_size=1" in message


def test_sigterm_answers_every_request_in_flight_and_exits_0(slow_server):
    """Six requests on three cores (two rounds of 0.6 s); SIGTERM once all six are admitted."""
    frames = [np.full((1, 3, 8, 8), 40 * i, np.uint8) for i in range(6)]
    results: dict = {}
    errors: list = []

    def ask(index: int) -> None:
        try:
            if index % 2:
                client = tgrpc.InferenceServerClient(slow_server.grpc_url)
                inputs = [infer_input(tgrpc, "image", frames[index], "UINT8")]
            else:
                client = thttp.InferenceServerClient(slow_server.http_url)
                inputs = [infer_input(thttp, "image", frames[index], "UINT8")]
            results[index] = client.infer("npu", inputs).as_numpy("scores")
            client.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    wait_inflight(slow_server, "npu", 6)
    assert slow_server.stop(signal.SIGTERM) == 0, slow_server.log
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    for index, frame in enumerate(frames):
        np.testing.assert_array_equal(results[index], reference(EMU, [frame])[0])
    kinds = [re.search(r"serve (start|ready|stop):", line) for line in slow_server.log]
    assert [k[1] for k in kinds if k] == ["start", "ready", "stop"], slow_server.log
    assert "SIGTERM; 6 request(s) in flight were answered" in slow_server.log[-1]
    with pytest.raises(grpc.FutureTimeoutError):  # nothing listens any more
        grpc.channel_ready_future(grpc.insecure_channel(slow_server.grpc_url)).result(1)


def test_grpc_calls_during_the_drain_get_unavailable_never_cancelled(models, emulator):
    """grpc.aio's stop() cancels calls that arrive once it is called (grpc/grpc#41785): a
    client retrying on UNAVAILABLE got CANCELLED, which it must not retry. Now the gRPC
    server keeps answering during the drain, new calls UNAVAILABLE, and stops after it."""
    process = ServerProcess(
        [f"npu={models['emu']}", "--max-inflight", "8"],
        env=emu_env(emulator),
        emulated=("rk3588", SLOW_US),
    )
    codes: list = []
    drained = threading.Event()

    def call_until_refused() -> None:
        client = tgrpc.InferenceServerClient(process.grpc_url)
        inputs = [infer_input(tgrpc, "image", ZERO_FRAME, "UINT8")]
        deadline = time.monotonic() + 30
        try:
            while not drained.is_set() and time.monotonic() < deadline:
                try:
                    client.infer("npu", inputs, client_timeout=30)
                    codes.append("OK")
                except InferenceServerException as exc:
                    codes.append(exc.status())
                    if "stopping" in (exc.message() or ""):
                        drained.set()
                    if exc.status() != "StatusCode.UNAVAILABLE":
                        return
        finally:
            client.close()

    with process:
        process.start()
        with in_flight(process, "npu", 3):  # three rounds of 0.6 s on one core: the drain
            process.send(signal.SIGTERM)
            callers = [threading.Thread(target=call_until_refused) for _ in range(4)]
            for caller in callers:
                caller.start()
            assert drained.wait(30), codes
            for caller in callers:
                caller.join(30)
        assert process.stop() == 0, process.log
    assert codes and set(codes) <= {"OK", "StatusCode.UNAVAILABLE"}, codes
    assert "SIGTERM; 3 request(s) in flight were answered" in process.log[-1], process.log


# --- the command line -----------------------------------------------------------------------


def test_serve_without_its_extra_prints_the_pip_command(monkeypatch, capsys, models):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if [serve] was not installed
    monkeypatch.delitem(sys.modules, "ez_rknn_async.serve.server", raising=False)
    assert main(["serve", models["add_mul"]]) == 5
    err = capsys.readouterr().err
    assert "uvicorn" in err and "pip install 'ez-rknn-async[serve]'" in err


def test_serve_help_lists_options_and_exit_codes(capsys):
    assert main(["serve", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--host", "--port", "--grpc-port", "--config", "--token", "--max-inflight"):
        assert option in text
    assert "--max-total-request-mb" in text and "503 + Retry-After" in text
    assert "EZ_RKNN_SERVE_TOKEN" in text and "exit codes:" in text and "warmup_shapes" in text
    assert "a session had to be abandoned" in text and "--shutdown-timeout" in text


def test_serve_refuses_a_missing_model_and_a_bad_config(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing.onnx")]) == 3
    assert "model not found" in capsys.readouterr().err
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"models": {"m": {"path": "m.onnx", "threads_per_core": 0}}}))
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "'m'" in err and "threads_per_core" in err


@pytest.mark.parametrize(
    ("option", "other"), [("--port", "--grpc-port"), ("--grpc-port", "--port")]
)
def test_serve_reports_a_taken_port(models, capsys, option, other):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code = main(["serve", models["add_mul"], option, str(port), other, "0"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "--grpc-port" in err  # the hint names both


def test_serve_refuses_a_model_it_cannot_load(tmp_path, capsys):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    assert main(["serve", str(broken), "--port", "0", "--grpc-port", "0"]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "hint: check MODEL" in err


def test_serve_refuses_a_model_whose_warm_up_fails(tmp_path, npu, capsys):
    path = str(DYNAMIC.write(tmp_path / "dyn.rknn"))
    assert main(["serve", path, "--port", "0", "--grpc-port", "0"]) == 1
    err = capsys.readouterr().err
    assert "'dyn'" in err and "warm-up inference failed" in err and "'x'" in err
    assert "warmup_shapes" in err  # the hint
