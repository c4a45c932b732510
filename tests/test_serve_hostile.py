"""Hostile and careless requests to the protocol's decoders, one regression test per bug the
serve audit found (each failed before its fix), and a property-based test of the decoders:
whatever a client sends, the answer is an array or a ProtocolError (INVALID), never another
exception (which a transport reports as a 500 or an UNKNOWN).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import signal
import socket
import string
from typing import Optional

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ez_rknn_async.serve import grpc_schema
from ez_rknn_async.serve.grpc_service import decode_request
from ez_rknn_async.serve.http_protocol import MAX_HEAD_BYTES
from ez_rknn_async.serve.protocol import (
    DATATYPES,
    ErrorKind,
    ProtocolError,
    decode_data,
    decode_raw,
)
from ez_rknn_async.serve.rest import parse_infer_body

from onnx_models import add_mul_model, save
from serve_process import ServerProcess


def refusal(call, *args) -> str:
    """The message of the INVALID ProtocolError ``call(*args)`` raises."""
    with pytest.raises(ProtocolError) as info:
        call(*args)
    assert info.value.kind is ErrorKind.INVALID, info.value
    return str(info.value)


def test_deeply_nested_json_is_invalid_json_not_an_internal_error():
    """json.loads raises RecursionError (not ValueError) past ~1000 levels: it was a 500."""
    body = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert "nested too deeply" in refusal(parse_infer_body, body)


@pytest.mark.parametrize(
    ("values", "datatype"),
    [([1e300, 1.0], "FP32"), ([70000, 1], "FP16"), ([-1e39, 0.5], "FP32"), ([65520.0, 0], "FP16")],
)
def test_finite_values_a_float_type_cannot_hold_are_refused(values, datatype):
    """They became +-inf silently (and numpy warned in the server's log)."""
    message = refusal(decode_data, values, datatype, [2], "x")
    assert "'x'" in message and f"out of the range of {datatype}" in message


def test_infinities_and_nan_given_as_such_still_pass():
    array = decode_data([float("inf"), float("nan"), 65504.0], "FP16", [3], "x")
    assert np.isinf(array[0]) and np.isnan(array[1]) and array[2] == 65504


@pytest.mark.parametrize("shape", [[2**70, 0], [2**63, 0], [2**62, 2**62, 0], [1] * 100], ids=str)
def test_a_shape_numpy_cannot_hold_names_the_input(shape):
    """Zero elements pass the size check, and numpy's reshape refused the shape in words that
    named no input ("Maximum allowed dimension exceeded")."""
    data = [] if 0 in shape else [1.0]
    for message in (
        refusal(decode_data, data, "FP32", shape, "x"),
        refusal(decode_raw, np.zeros(len(data), np.float32).tobytes(), "FP32", shape, "x"),
    ):
        assert "input 'x'" in message and "shape" in message


def _request(*tensors):
    message = grpc_schema.message("ModelInferRequest")()
    for name, field, values in tensors:
        tensor = message.inputs.add(name=name, datatype="FP32", shape=[len(values)])
        getattr(tensor.contents, field).extend(values)
    return message


def test_grpc_contents_next_to_raw_input_contents_are_refused():
    """The typed contents were silently ignored when raw_input_contents was set."""
    message = _request(("a", "fp32_contents", [9.0]))
    message.raw_input_contents.append(np.ones(1, np.float32).tobytes())
    message = refusal(decode_request, message)
    assert "'a'" in message and "raw_input_contents" in message and "fp32_contents" in message


def test_grpc_contents_in_a_field_not_of_the_datatype_are_refused():
    """FP32 values in int_contents were ignored (and fp32_contents read instead)."""
    message = refusal(decode_request, _request(("a", "int_contents", [1, 2])))
    assert "'a'" in message and "int_contents" in message and "fp32_contents" in message
    both = _request(("a", "fp32_contents", [1.0, 2.0]))
    both.inputs[0].contents.int_contents.extend([7, 7])
    assert "int_contents" in refusal(decode_request, both)


# --- property-based: any document, any framing --------------------------------------------

_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(string.printable, max_size=4),
)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=12,
)
_dims = st.integers(min_value=-2, max_value=2**64)
_shape = st.one_of(st.lists(_dims, max_size=4), st.lists(st.integers(0, 3), max_size=3), _json)
_datatype = st.one_of(st.sampled_from([*DATATYPES, "BYTES", "BF16", ""]), _json)


def _tensor(draw) -> dict:
    entry = {"name": draw(st.sampled_from(["a", "b", 3])), "datatype": draw(_datatype)}
    entry["shape"] = draw(_shape)
    if draw(st.booleans()):
        entry["parameters"] = {"binary_data_size": draw(st.integers(-4, 64) | _json)}
    else:
        entry["data"] = draw(_json)
    return entry


@st.composite
def _bodies(draw) -> tuple[bytes, Optional[str]]:
    document = {"inputs": [_tensor(draw) for _ in range(draw(st.integers(0, 3)))]}
    if draw(st.booleans()):
        document["outputs"] = draw(_json)
    header = json.dumps(document).encode()
    tail = draw(st.binary(max_size=64))
    length = draw(st.sampled_from([None, str(len(header)), draw(st.text(max_size=6))]))
    return header + tail, length


FAST = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


@FAST
@given(_bodies())
def test_any_body_decodes_or_is_refused_as_invalid(case):
    body, length = case
    try:
        request = parse_infer_body(body, length)
    except ProtocolError as exc:
        assert exc.kind is ErrorKind.INVALID and str(exc)
        return
    for tensor in request.inputs:
        assert isinstance(tensor.array, np.ndarray)


@FAST
@given(_json, _datatype, _shape)
def test_any_tensor_decodes_or_is_refused_as_invalid(values, datatype, shape):
    for call, data in ((decode_data, values), (decode_raw, json.dumps(values).encode())):
        try:
            array = call(data, datatype, shape, "t")
        except ProtocolError as exc:
            assert exc.kind is ErrorKind.INVALID and "'t'" in str(exc)
        else:
            assert array.dtype == DATATYPES[datatype] and list(array.shape) == shape


# --- the real server ----------------------------------------------------------------------

ADD_MUL = {
    "inputs": [{"name": n, "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]} for n in "ab"]
}


READ_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    model = save(folder, "add_mul.onnx", add_mul_model())
    with ServerProcess([f"add_mul={model}", "--read-timeout", str(READ_TIMEOUT)]) as process:
        yield process.start()
    assert not [line for line in process.log if "Traceback" in line], process.log


def still_serving(server) -> None:
    status, _, body = server.request("POST", "/v2/models/add_mul/infer", json.dumps(ADD_MUL))
    assert status == 200, body
    assert json.loads(body)["outputs"][0]["data"] == [2, 4, 6, 8]


def test_an_endless_request_head_is_refused_before_it_is_held(server):
    """httptools buffered a head without limit: a 300 MB header line grew the server by as
    much. Now the refusal comes after MAX_HEAD_BYTES (plus one read), long before 8 MiB."""
    with socket.create_connection((server.host, server.http_port), timeout=30) as client:
        client.sendall(b"POST /v2/models/add_mul/infer HTTP/1.1\r\nHost: x\r\nX-Long: ")
        sent, answer = 0, b""
        with contextlib.suppress(ConnectionError):  # the server closes while we still send
            while sent < 8 << 20:
                sent += client.send(b"a" * 65536)
        with contextlib.suppress(ConnectionError):
            while not answer.endswith(b"bytes"):
                chunk = client.recv(4096)
                if not chunk:
                    break
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert f"over {MAX_HEAD_BYTES} bytes".encode() in answer, answer
    assert sent < 8 << 20, "the whole head was taken in"
    still_serving(server)


def refusal_after_stalling(server, sent: bytes) -> bytes:
    """What the server answers a connection that sent ``sent`` and then nothing."""
    answer = b""
    with socket.create_connection((server.host, server.http_port), timeout=30) as client:
        client.sendall(sent)
        with contextlib.suppress(ConnectionError):
            while True:
                chunk = client.recv(4096)
                if not chunk:
                    return answer
                answer += chunk


@pytest.mark.parametrize(
    ("sent", "words"),
    [
        (b"", "headers did not arrive in 1 s"),
        (b"POST /v2/models/add_mul/infer HTTP/1.1\r\nHost: x\r\n", "did not arrive in 1 s"),
        (
            b"POST /v2/models/add_mul/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 99\r\n\r\n{",
            "no request body bytes arrived for 1 s",
        ),
    ],
    ids=["silent", "half a head", "half a body"],
)
def test_a_stalled_request_is_refused_and_its_connection_closed(server, sent, words):
    """uvicorn has no read timeout: a connection that sent half a request (or nothing) was
    held open for ever, so a few hundred of them used up the server's file descriptors."""
    answer = refusal_after_stalling(server, sent)
    assert answer.startswith(b"HTTP/1.1 400") and words.encode() in answer, answer
    still_serving(server)


def test_a_long_but_bounded_head_still_works(server):
    headers = {f"X-Header-{i}": "v" * 100 for i in range(200)}  # ~23 KB
    status, _, body = server.request(
        "POST", "/v2/models/add_mul/infer", json.dumps(ADD_MUL), headers
    )
    assert status == 200, body


def test_gzip_data_after_the_compressed_stream_is_refused(server):
    """What followed the first gzip member was dropped without a word."""
    body = gzip.compress(json.dumps(ADD_MUL).encode())
    status, _, answer = server.request(
        "POST", "/v2/models/add_mul/infer", body + body, {"Content-Encoding": "gzip"}
    )
    assert status == 400 and "after the end of the gzip stream" in json.loads(answer)["error"]
    still_serving(server)


def test_grpc_bytes_that_are_no_infer_request_are_invalid_argument(server):
    """A body protobuf cannot parse failed in grpc's deserializer: status UNKNOWN."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for garbage in (b"\xff\xff\xff\xff\x0f", b"\x0a" + b"\xff" * 20):
            with pytest.raises(grpc.RpcError) as info:
                infer(garbage, timeout=30)
            assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT, info.value
            assert "ModelInferRequest" in info.value.details()
    still_serving(server)


def test_a_body_still_arriving_at_the_stop_deadline_gets_503_without_a_traceback(tmp_path):
    """uvicorn cancels a request still reading its body when the stop's grace ends; the
    cancellation went up as "Exception in ASGI application" with a traceback in the log (the
    stop is meant to log one line) and the client got nothing."""
    model = save(tmp_path, "add_mul.onnx", add_mul_model())
    process = ServerProcess([f"add_mul={model}", "--shutdown-timeout", "1"]).start()
    try:
        with socket.create_connection((process.host, process.http_port), timeout=30) as stalled:
            stalled.sendall(
                b"POST /v2/models/add_mul/infer HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 1000\r\n\r\n" + b'{"inputs": ['
            )
            still_serving(process)  # the stalled request's head was read before this one
            process.send(signal.SIGTERM)
            answer = b""
            with contextlib.suppress(ConnectionError):
                while b"stopping" not in answer:
                    chunk = stalled.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
        assert process.stop() == 0, process.log
    finally:
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait(10)
    assert answer.startswith(b"HTTP/1.1 503") and b"stopping" in answer, answer
    assert not [line for line in process.log if "Traceback" in line], process.log
