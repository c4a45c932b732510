"""Server-wide limits and strictness left open by the serve audit, one regression test each
(each failed before its fix), against the real server in a subprocess."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from ez_rknn_async.cli.main import main

from onnx_models import add_mul_model, save
from serve_process import ServerProcess, infer_input

MB = 1024 * 1024
PER_MODEL_MB = 6
TOTAL_MB = 10
ADD_MUL = {
    "inputs": [{"name": n, "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]} for n in "ab"]
}
INFER = "/v2/models/add_mul/infer"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("limits")
    model = save(folder, "add_mul.onnx", add_mul_model())
    args = [f"add_mul={model}", "--max-request-mb", str(PER_MODEL_MB)]
    with ServerProcess([*args, "--max-total-request-mb", str(TOTAL_MB)]) as process:
        yield process.start()
    assert not [line for line in process.log if "Traceback" in line], process.log


def padded(nbytes: int) -> bytes:
    """A valid ADD_MUL request of exactly ``nbytes`` (JSON allows trailing whitespace)."""
    document = json.dumps(ADD_MUL).encode()
    return document + b" " * (nbytes - len(document))


def head(length: int) -> bytes:
    return (
        f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def answer_of(client: socket.socket) -> bytes:
    """One whole response (its body ends the JSON object: the server's answers are small)."""
    answer = b""
    while not (b"\r\n\r\n" in answer and answer.rstrip().endswith(b"}")):
        chunk = client.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer


def test_bodies_together_stay_within_the_server_budget_and_are_given_back(server):
    """Each model limited one body, nothing limited them together: twelve 60 MB bodies took
    a server from 102 to 822 MB. Now past --max-total-request-mb a request gets 503 +
    Retry-After, before its body is read when Content-Length tells, while it streams
    otherwise; gRPC counts in the same budget; the bytes come back when a request ends."""
    held = padded(6 * MB)
    with socket.create_connection((server.host, server.http_port), timeout=30) as holder:
        holder.sendall(head(len(held)) + held[: MB // 2])  # 6 MB held while its body comes
        status, headers, body = server.request(  # after the holder's head: it holds already
            "POST", INFER, None, {"Content-Length": str(5 * MB)}
        )
        assert status == 503 and headers.get("retry-after") == "1", (status, body)
        assert b"--max-total-request-mb" in body, body  # refused with no body byte sent

        chunked = socket.create_connection((server.host, server.http_port), timeout=30)
        with chunked:
            chunked.sendall(
                f"POST {INFER} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            )
            for start in range(0, 5 * MB, MB):  # 5 MB: under the model's limit, not the budget's
                chunked.sendall(b"%x\r\n" % MB + padded(5 * MB)[start : start + MB] + b"\r\n")
            chunked.sendall(b"0\r\n\r\n")
            answer = answer_of(chunked)
        assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in answer, answer[:300]

        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            big = np.ones((160_000, 4), np.float32)  # 2 x 2.56 MB
            inputs = [infer_input(grpcclient, n, big, "FP32") for n in "ab"]
            with pytest.raises(grpcclient.InferenceServerException) as info:
                client.infer("add_mul", inputs)
            assert info.value.status() == "StatusCode.UNAVAILABLE", info.value
            assert "--max-total-request-mb" in info.value.message()

        holder.sendall(held[MB // 2 :])
        answer = answer_of(holder)
        assert answer.startswith(b"HTTP/1.1 200") and b'"data":[2.0,4.0,6.0,8.0]' in answer

    # everything was given back: two bodies at once fit again, one after the other
    for _ in range(2):
        status, _, body = server.request("POST", INFER, padded(9 * MB // 2))
        assert status == 200, body
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        assert client.infer("add_mul", inputs).as_numpy("sum")[0, 0] == 2.0


def test_a_total_budget_below_a_models_body_limit_is_refused(tmp_path, capsys):
    """That model's largest requests would get 503 for ever."""
    model = save(tmp_path, "add_mul.onnx", add_mul_model())
    args = ["serve", str(model), "--max-request-mb", "8", "--max-total-request-mb", "4"]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "--max-total-request-mb 4" in error and "'add_mul'" in error


def test_the_bearer_scheme_is_case_insensitive_and_the_token_is_not(tmp_path):
    """RFC 7235: the auth-scheme is case-insensitive; "bearer TOKEN" was refused with 401."""
    model = save(tmp_path, "add_mul.onnx", add_mul_model())
    token = "s3cret-Token"
    with ServerProcess([f"add_mul={model}", "--token", token]) as process:
        process.start()
        for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
            for value in (f"{scheme} {token}", f"{scheme}   {token}"):
                assert process.get("/v2", {"Authorization": value})[0] == 200, value
        for value in (f"Bearer {token.lower()}", f"Bearer {token}x", token, f"Basic {token}",
                      "Bearer", f"Bearer{token}", f"Bearer {token[:-1]}"):  # fmt: skip
            assert process.get("/v2", {"Authorization": value})[0] == 401, value
        with grpcclient.InferenceServerClient(process.grpc_url) as client:
            metadata = client.get_server_metadata(headers={"authorization": f"bearer {token}"})
            assert metadata.name == "ez-rknn-async"
            with pytest.raises(grpcclient.InferenceServerException) as info:
                client.get_server_metadata(headers={"authorization": f"bearer {token.upper()}"})
            assert "UNAUTHENTICATED" in info.value.status()


def test_an_output_asked_twice_gets_400_naming_it(server):
    """It was answered twice (the binary data extension sent its bytes twice)."""
    document = {**ADD_MUL, "outputs": [{"name": "sum"}, {"name": "prod"}, {"name": "sum"}]}
    status, _, body = server.request("POST", INFER, json.dumps(document).encode())
    assert status == 400 and json.loads(body)["error"] == "output 'sum' is asked twice", body
    feed = np.ones((1, 4), np.float32)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        inputs = [infer_input(grpcclient, n, feed, "FP32") for n in "ab"]
        outputs = [grpcclient.InferRequestedOutput(n) for n in ("prod", "prod")]
        with pytest.raises(grpcclient.InferenceServerException) as info:
            client.infer("add_mul", inputs, outputs=outputs)
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value
        assert "output 'prod' is asked twice" in info.value.message()


def test_nan_and_infinities_travel_in_json_as_triton_writes_them(server):
    """Strict JSON has no NaN or infinity; Triton reads and writes the literals NaN, Infinity
    and -Infinity (rapidjson's NanAndInf flags, triton-inference-server/server#3870), and so
    does this server, so tritonclient's JSON path gets the same floats back."""
    a = np.array([[np.nan, np.inf, -np.inf, 1.0]], np.float32)
    b = np.ones((1, 4), np.float32)
    body = (
        b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 4], '
        b'"data": [NaN, Infinity, -Infinity, 1]}, '
        b'{"name": "b", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]}]}'
    )
    status, _, answer = server.request("POST", INFER, body)
    assert status == 200, answer
    assert b'"data":[NaN,Infinity,-Infinity,2.0]' in answer, answer
    with httpclient.InferenceServerClient(server.http_url) as client:
        inputs = [
            infer_input(httpclient, n, x, "FP32", binary=False) for n, x in (("a", a), ("b", b))
        ]
        outputs = [httpclient.InferRequestedOutput("sum", binary_data=False)]
        result = client.infer("add_mul", inputs, outputs=outputs).as_numpy("sum")
    np.testing.assert_array_equal(result, a + b)  # NaN equals NaN here
