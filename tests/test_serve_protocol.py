"""The server's pure parts: the protocol mapping, REST bodies, gRPC messages, config, limits.

Round trips go through the real tritonclient's own encoders and decoders, so "compatible"
means what its users will see, not what we think the protocol says.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import numpy as np
import pytest
from tritonclient.grpc import InferResult as GrpcInferResult
from tritonclient.grpc import service_pb2
from tritonclient.http import InferInput, InferRequestedOutput
from tritonclient.http import InferResult as HttpInferResult
from tritonclient.http._utils import _get_inference_request

from ez_rknn_async.errors import SessionClosedError, SubmitTimeoutError
from ez_rknn_async.serve import grpc_schema, protogen
from ez_rknn_async.serve._v2_descriptor import SERIALIZED
from ez_rknn_async.serve.config import ConfigError, model_specs, parse_model_arg
from ez_rknn_async.serve.grpc_service import decode_request, encode_response
from ez_rknn_async.serve.metrics import ServerMetrics
from ez_rknn_async.serve.protocol import (
    DATATYPES,
    ErrorKind,
    InferRequest,
    InferResponse,
    InputTensor,
    ProtocolError,
    RequestedOutput,
    authorized,
    classify,
    decode_data,
    decode_raw,
    encode_raw,
    metadata_shape,
    onnx_datatype,
)
from ez_rknn_async.serve.repository import InflightLimit, warmup_feed
from ez_rknn_async.serve.rest import parse_infer_body, render_infer_response
from ez_rknn_async.tensors import NodeArg

SERVED = ["BOOL", "UINT8", "INT8", "INT32", "INT64", "FP16", "FP32"]


def sample(datatype: str, shape=(2, 3)) -> np.ndarray:
    dtype = DATATYPES[datatype]
    values = np.arange(int(np.prod(shape))).reshape(shape)
    if dtype.kind == "b":
        return values % 3 == 0
    if dtype.kind == "f":
        return (values * 0.25 - 1).astype(dtype)
    if dtype.kind == "i":
        return (values - 3).astype(dtype)
    return values.astype(dtype)


@contextlib.contextmanager
def refused(kind: ErrorKind, *words: str):
    """Expect a ProtocolError of ``kind`` whose message has every one of ``words``."""
    with pytest.raises(ProtocolError) as info:
        yield
    assert info.value.kind is kind, info.value
    for word in words:
        assert word in str(info.value), (word, str(info.value))


# --- tensors ------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_raw_round_trip_every_datatype(datatype):
    array = sample(datatype)
    decoded = decode_raw(encode_raw(array), datatype, [2, 3], "x")
    assert decoded.dtype == DATATYPES[datatype]
    np.testing.assert_array_equal(decoded, array)


def test_raw_bool_is_one_byte_per_element_and_nonzero_is_true():
    assert encode_raw(np.array([True, False, True])) == b"\x01\x00\x01"
    np.testing.assert_array_equal(decode_raw(b"\x00\x07", "BOOL", [2], "m"), [False, True])


def test_raw_is_little_endian():
    assert encode_raw(np.array([1], dtype=">i4")) == b"\x01\x00\x00\x00"
    assert decode_raw(b"\x01\x00\x00\x00", "INT32", [1], "x")[0] == 1


def test_raw_size_mismatch_names_the_input_and_the_sizes():
    with refused(ErrorKind.INVALID, "'images'", "10 bytes", "FP32 [2, 3]", "24"):
        decode_raw(b"\x00" * 10, "FP32", [2, 3], "images")


@pytest.mark.parametrize(
    ("datatype", "words"),
    [("BYTES", ["BYTES", "not supported", "numeric"]), ("BF16", ["BF16"]), ("FP8", ["FP8"])],
)
def test_unsupported_datatypes_are_refused_clearly(datatype, words):
    with refused(ErrorKind.INVALID, "'text'", *words):
        decode_raw(b"", datatype, [0], "text")
    with refused(ErrorKind.INVALID, "'text'", *words):
        decode_data([], datatype, [0], "text")


@pytest.mark.parametrize("shape", [[2, -1], "2x3", [2.0, 3], [True], None])
def test_bad_shapes_are_refused(shape):
    with refused(ErrorKind.INVALID, "'x'", "shape"):
        decode_raw(b"", "FP32", shape, "x")


@pytest.mark.parametrize("datatype", SERVED)
def test_data_nested_or_flat(datatype):
    array = sample(datatype)
    for values in (array.tolist(), array.reshape(-1).tolist()):
        decoded = decode_data(values, datatype, [2, 3], "x")
        assert decoded.dtype == DATATYPES[datatype]
        np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize(
    ("values", "datatype", "words"),
    [
        ([1.5, 2], "INT32", ["floating-point", "INT32"]),
        ([0, 300], "UINT8", ["0 to 300", "UINT8"]),
        ([-1, 2], "UINT8", ["-1 to 2"]),
        ([1, 0], "BOOL", ["integers", "BOOL"]),
        (["a", "b"], "FP32", ["non-numeric"]),
        ([1, 2, 3], "FP32", ["3 values", "[2]"]),
        ([[1, 2], [3]], "FP32", ["rectangular"]),
    ],
)
def test_data_that_would_change_meaning_is_refused(values, datatype, words):
    shape = [2] if len(values) == 2 else [len(values)] if values != [1, 2, 3] else [2]
    with refused(ErrorKind.INVALID, "'v'", *words):
        decode_data(values, datatype, shape, "v")


def test_metadata_helpers():
    assert metadata_shape([None, 3, "H", 0]) == [-1, 3, -1, 0]
    assert onnx_datatype("tensor(float16)") == "FP16"
    assert onnx_datatype("tensor(bool)") == "BOOL"
    assert onnx_datatype("tensor(string)") == "BYTES"


# --- errors, auth ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "kind", "status", "code"),
    [
        (
            ValueError("input 'a': expected shape [1, 4]"),
            ErrorKind.INVALID,
            400,
            "INVALID_ARGUMENT",
        ),
        (
            TypeError("input 'a': expected dtype float32"),
            ErrorKind.INVALID,
            400,
            "INVALID_ARGUMENT",
        ),
        (SubmitTimeoutError("queue full"), ErrorKind.UNAVAILABLE, 503, "UNAVAILABLE"),
        (SessionClosedError("closed"), ErrorKind.UNAVAILABLE, 503, "UNAVAILABLE"),
        (RuntimeError("rknn_run failed"), ErrorKind.INTERNAL, 500, "INTERNAL"),
        (ProtocolError(ErrorKind.NOT_FOUND, "no model"), ErrorKind.NOT_FOUND, 404, "NOT_FOUND"),
    ],
)
def test_classify(exc, kind, status, code):
    got, message = classify(exc)
    assert got is kind and got.http_status == status and got.grpc_code == code
    assert str(exc) in message


def test_authorized():
    assert authorized(None, None)
    assert authorized("anything", None)
    assert authorized("Bearer s3cret", "s3cret")
    assert not authorized("Bearer wrong", "s3cret")
    assert not authorized("s3cret", "s3cret")
    assert not authorized(None, "s3cret")


# --- REST bodies, through tritonclient's own encoder and decoder -----------------------------


def client_body(arrays: dict, binary: bool, outputs=None, request_id: str = ""):
    inputs = []
    for name, array in arrays.items():
        tensor = InferInput(name, list(array.shape), _datatype(array))
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    body, json_size = _get_inference_request(
        inputs, request_id, outputs, 0, False, False, 0, None, None
    )
    return body, None if json_size is None else str(json_size)


def _datatype(array: np.ndarray) -> str:
    return next(name for name, dtype in DATATYPES.items() if dtype == array.dtype)


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_request_body_decodes(binary):
    arrays = {f"in_{d}": sample(d) for d in SERVED}
    body, header_length = client_body(arrays, binary, request_id="req-7")
    request = parse_infer_body(body, header_length)
    assert request.id == "req-7"
    assert request.binary_outputs  # tritonclient asks for binary outputs when it names none
    assert [t.name for t in request.inputs] == list(arrays)
    for tensor in request.inputs:
        assert tensor.array.dtype == arrays[tensor.name].dtype
        np.testing.assert_array_equal(tensor.array, arrays[tensor.name])


def test_json_and_binary_inputs_mix_in_one_body():
    header = {
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}},
            {"name": "b", "datatype": "INT64", "shape": [1], "data": [5]},
            {"name": "c", "datatype": "UINT8", "shape": [3], "parameters": {"binary_data_size": 3}},
        ]
    }
    text = json.dumps(header).encode()
    body = text + np.array([1.5, -2], np.float32).tobytes() + b"\x01\x02\x03"
    request = parse_infer_body(body, str(len(text)))
    feed = request.feed()
    np.testing.assert_array_equal(feed["a"], [1.5, -2])
    np.testing.assert_array_equal(feed["b"], [5])
    np.testing.assert_array_equal(feed["c"], [1, 2, 3])


@pytest.mark.parametrize(
    ("body", "header_length", "words"),
    [
        (b"{not json", None, ["not valid JSON"]),
        (b"[1, 2]", None, ["JSON object"]),
        (b'{"inputs": 3}', None, ["'inputs'"]),
        (b'{"id": 5, "inputs": []}', None, ["'id'"]),
        (b'{"inputs": [{"datatype": "FP32"}]}', None, ["inputs[0]", "'name'"]),
        (b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1]}]}', None, ["'a'", "data"]),
        (b'{"inputs": []}', "x", ["Inference-Header-Content-Length", "'x'"]),
        (b'{"inputs": []}', "99", ["99", "14 bytes"]),
        (b'{"inputs": []}xyz', "14", ["3 bytes", "follow the last input"]),
        (b'{"inputs": [], "outputs": {}}', None, ["'outputs'"]),
        (b'{"inputs": [], "outputs": [{"name": "o", "parameters": {"binary_data": 1}}]}', None,
         ["'o'", "binary_data", "true or false"]),
        (b'{"inputs": [], "outputs": [{"name": "o", "parameters": {"classification": 2}}]}', None,
         ["'o'", "classification"]),
        (b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], '
         b'"parameters": {"shared_memory_region": "r"}}]}', None, ["'a'", "shared-memory"]),
        (b'{"inputs": [], "parameters": {"binary_data_output": "yes"}}', None,
         ["binary_data_output"]),
    ],
)  # fmt: skip
def test_malformed_bodies_are_invalid_and_say_why(body, header_length, words):
    with refused(ErrorKind.INVALID, *words):
        parse_infer_body(body, header_length)


def test_binary_size_running_past_the_body_names_the_input():
    header = json.dumps(
        {"inputs": [{"name": "img", "datatype": "UINT8", "shape": [4],
                     "parameters": {"binary_data_size": 4}}]}
    ).encode()  # fmt: skip
    with refused(ErrorKind.INVALID, "'img'", "binary_data_size 4", "2 bytes left"):
        parse_infer_body(header + b"\x00\x00", str(len(header)))


def test_an_input_given_twice_is_refused():
    request = InferRequest([InputTensor("a", np.zeros(1)), InputTensor("a", np.ones(1))])
    with refused(ErrorKind.INVALID, "'a'", "twice"):
        request.feed()


def test_output_selection_and_binary_flags():
    outputs = [InferRequestedOutput("p", binary_data=False), InferRequestedOutput("q")]
    body, header_length = client_body({"a": sample("FP32")}, False, outputs)
    request = parse_infer_body(body, header_length)
    assert request.output_names() == ["p", "q"]
    assert [o.binary for o in request.outputs] == [False, True]
    assert not request.binary_outputs


@pytest.mark.parametrize("binary", [False, True])
def test_response_decodes_in_tritonclient(binary):
    arrays = {d: sample(d) for d in SERVED}
    request = InferRequest([], [RequestedOutput(name, binary) for name in arrays], id="abc")
    response = InferResponse.build(request, "m", "1", list(arrays), list(arrays.values()))
    body, header_length = render_infer_response(response)
    assert (header_length is not None) == binary
    result = HttpInferResult.from_response_body(body, False, header_length)
    assert result.get_response()["id"] == "abc"
    assert result.get_response()["model_name"] == "m"
    for name, array in arrays.items():
        got = result.as_numpy(name)
        assert got.dtype == array.dtype, name
        np.testing.assert_array_equal(got, array)


def test_request_default_binary_and_per_output_override():
    request = InferRequest([], [RequestedOutput("a", False)], binary_outputs=True)
    arrays = [sample("FP32"), sample("INT8")]
    response = InferResponse.build(request, "m", "1", ["a", "b"], arrays)
    assert [o.binary for o in response.outputs] == [False, True]
    body, header_length = render_infer_response(response)
    document = json.loads(body[:header_length])
    assert "data" in document["outputs"][0]
    assert document["outputs"][1]["parameters"] == {"binary_data_size": 6}
    assert "id" not in document  # no id asked, none echoed


# --- gRPC messages ----------------------------------------------------------------------------


def test_committed_descriptor_is_the_proto_compiled():
    assert protogen.compile_descriptor() == SERIALIZED


def test_every_rpc_matches_tritonclients_service_on_the_wire():
    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for name, (request_class, response_class) in grpc_schema.METHODS.items():
        theirs = service.methods_by_name[name]
        for ours, their in (
            (request_class.DESCRIPTOR, theirs.input_type),
            (response_class.DESCRIPTOR, theirs.output_type),
        ):
            assert ours.full_name == their.full_name
            _same_fields(ours, their)


def _same_fields(ours, theirs):
    for field in ours.fields:
        other = theirs.fields_by_name[field.name]
        assert (field.number, field.type) == (other.number, other.type), field.full_name
        if field.message_type is not None:
            _same_fields(field.message_type, other.message_type)


def test_tritonclient_grpc_request_decodes_raw_and_typed():
    message = service_pb2.ModelInferRequest(model_name="m", id="g-1")
    arrays = {d: sample(d) for d in SERVED}
    for name, array in arrays.items():
        message.inputs.add(name=name, datatype=_datatype(array), shape=list(array.shape))
        message.raw_input_contents.append(array.tobytes())
    message.outputs.add(name="o")
    ours = grpc_schema.message("ModelInferRequest").FromString(message.SerializeToString())
    request = decode_request(ours)
    assert request.id == "g-1" and request.output_names() == ["o"]
    for tensor in request.inputs:
        np.testing.assert_array_equal(tensor.array, arrays[tensor.name])
    typed = service_pb2.ModelInferRequest(model_name="m")
    tensor = typed.inputs.add(name="ids", datatype="INT64", shape=[3])
    tensor.contents.int64_contents.extend([4, -5, 6])
    ours = grpc_schema.message("ModelInferRequest").FromString(typed.SerializeToString())
    np.testing.assert_array_equal(decode_request(ours).inputs[0].array, [4, -5, 6])


def _shared_memory_input(message) -> None:
    tensor = message.inputs.add(name="r", datatype="FP32", shape=[1])
    tensor.parameters["shared_memory_region"].string_param = "region0"


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda m: (m.inputs.add(name="h", datatype="FP16", shape=[1])), ["'h'", "raw"]),
        (lambda m: (m.inputs.add(name="s", datatype="BYTES", shape=[1])), ["'s'", "BYTES"]),
        (
            _shared_memory_input,
            ["'r'", "shared-memory"],
        ),
        (
            lambda m: (m.inputs.add(name="a", datatype="FP32", shape=[1]),
                       m.inputs.add(name="b", datatype="FP32", shape=[1]),
                       m.raw_input_contents.append(b"\x00" * 4)),
            ["1 entries for 2 inputs"],
        ),
    ],
)  # fmt: skip
def test_bad_grpc_requests_are_invalid(build, words):
    message = grpc_schema.message("ModelInferRequest")()
    build(message)
    with refused(ErrorKind.INVALID, *words):
        decode_request(message)


def test_grpc_response_decodes_in_tritonclient():
    arrays = {d: sample(d) for d in SERVED}
    request = InferRequest([], id="x")
    response = InferResponse.build(request, "m", "1", list(arrays), list(arrays.values()))
    wire = encode_response(response).SerializeToString()
    result = GrpcInferResult(service_pb2.ModelInferResponse.FromString(wire))
    assert result.get_response().id == "x"
    for name, array in arrays.items():
        got = result.as_numpy(name)
        assert got.dtype == array.dtype, name
        np.testing.assert_array_equal(got, array)


# --- config -----------------------------------------------------------------------------------


def test_model_args():
    assert parse_model_arg("det=/m/yolo.rknn") == ("det", "/m/yolo.rknn")
    assert parse_model_arg("/m/yolov8n.onnx") == ("yolov8n", "/m/yolov8n.onnx")
    for bad in ("=x.onnx", "a=", "a/b=x.onnx"):
        with pytest.raises(ConfigError):
            parse_model_arg(bad)


def test_config_file_options_and_relative_paths(tmp_path):
    config = tmp_path / "models.json"
    config.write_text(
        json.dumps(
            {"models": {
                "det": {"path": "det.rknn", "schedule": [0, 1], "max_inflight": 5,
                        "warmup_shapes": {"images": [1, 3, 8, 8]}},
                "cls": {"max_queue_size": 7},
            }}
        )
    )  # fmt: skip
    specs = {s.name: s for s in model_specs(["cls=/x/cls.onnx", "e.onnx"], str(config))}
    assert specs["det"].path == str(tmp_path / "det.rknn")
    assert specs["det"].provider_options["schedule"] == [0, 1]
    assert specs["det"].max_inflight == 5
    assert specs["det"].warmup_shapes == {"images": (1, 3, 8, 8)}
    assert specs["cls"].path == "/x/cls.onnx"
    assert specs["cls"].provider_options["max_queue_size"] == 7
    assert specs["e"].max_inflight == 64


@pytest.mark.parametrize(
    ("document", "args", "words"),
    [
        ({"models": {"a": {"path": "a.onnx", "max_queue_size": 0}}}, [], ["'a'", "max_queue_size"]),
        ({"models": {"a": {"path": "a.onnx", "bogus": 1}}}, [], ["'a'", "bogus"]),
        ({"models": {"a": {"path": "a.onnx", "max_inflight": 0}}}, [], ["max_inflight"]),
        ({"models": {"a": {"path": "a", "warmup_shapes": {"x": [0]}}}}, [], ["warmup_shapes"]),
        ({"models": {"a": {}}}, [], ["'a'", "no 'path'"]),
        ({"models": {}, "port": 1}, [], ["'port'"]),
        ({"models": {}}, ["a.onnx", "x/a.onnx"], ["'a'", "twice"]),
        ({"models": {}}, [], ["no model"]),
    ],
)
def test_config_errors_name_the_model_and_key(tmp_path, document, args, words):
    config = tmp_path / "c.json"
    config.write_text(json.dumps(document))
    with pytest.raises(ConfigError) as info:
        model_specs(args, str(config))
    for word in words:
        assert word in str(info.value)


def test_warmup_feed_sets_dynamic_dims_to_one_unless_given():
    inputs = [NodeArg("a", ["N", 4], "tensor(float)"), NodeArg("ids", [None, 2], "tensor(int64)")]
    feed = warmup_feed(inputs, {"ids": (3, 2)})
    assert feed["a"].shape == (1, 4) and feed["a"].dtype == np.float32
    assert feed["ids"].shape == (3, 2) and feed["ids"].dtype == np.int64


# --- in-flight limit, metrics ------------------------------------------------------------------


def test_inflight_limit_fifo_timeout_and_cancel_never_leak():
    async def scenario():
        limit = InflightLimit(2)
        assert await limit.acquire(1) and await limit.acquire(1)
        assert not await limit.acquire(0.01)  # full: times out
        order = []

        async def waiter(tag):
            assert await limit.acquire(5)
            order.append(tag)

        first = asyncio.ensure_future(waiter("first"))
        second = asyncio.ensure_future(waiter("second"))
        doomed = asyncio.ensure_future(limit.acquire(5))
        await asyncio.sleep(0)
        limit.release()  # hands the place to "first"
        await first
        doomed.cancel()  # a cancelled waiter gives up its turn
        limit.release()  # so "second" gets it
        await second
        assert order == ["first", "second"]
        assert doomed.cancelled()
        assert limit.active == 2
        limit.release()
        limit.release()
        assert limit.active == 0 and not limit._waiters

    asyncio.run(scenario())


def test_inflight_place_handed_to_a_cancelled_waiter_is_given_back():
    async def scenario():
        limit = InflightLimit(1)
        assert await limit.acquire(1)
        task = asyncio.ensure_future(limit.acquire(5))
        await asyncio.sleep(0)
        limit.release()  # granted ...
        task.cancel()  # ... and cancelled before it could run
        with pytest.raises(asyncio.CancelledError):
            await task
        assert limit.active == 0
        assert await limit.acquire(0.01)

    asyncio.run(scenario())


def test_npu_load_hook_is_exported_and_a_failing_source_is_skipped():
    loads = {0: 12.5, 2: 80.0}
    text = ServerMetrics(lambda: loads).render().decode()
    assert 'ez_rknn_npu_core_load_percent{core="0"} 12.5' in text
    assert 'ez_rknn_npu_core_load_percent{core="2"} 80.0' in text

    def gone():
        raise FileNotFoundError("/sys/kernel/debug/rknpu/load")

    text = ServerMetrics(gone).render().decode()
    assert "ez_rknn_npu_core_load_percent{" not in text
    assert "ez_rknn_inflight_requests" in text


def test_http_connections_get_tcp_nodelay():
    """asyncio sets TCP_NODELAY only on sockets made with IPPROTO_TCP; without it each response
    waits for the client's delayed ACK (~40 ms per request on Linux)."""
    import socket

    from ez_rknn_async.serve.server import _listen

    async def scenario():
        flags = []

        async def accepted(reader, writer):
            sock = writer.get_extra_info("socket")
            flags.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        listener = _listen("127.0.0.1", 0)
        server = await asyncio.start_server(accepted, sock=listener)
        reader, writer = await asyncio.open_connection(*listener.getsockname())
        await reader.read()  # the server closed it: the callback has run
        writer.close()
        server.close()
        await server.wait_closed()
        return flags

    assert asyncio.run(scenario()) == [1]
