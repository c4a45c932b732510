"""The protocol's HTTP/REST bodies, without HTTP: JSON tensors and the binary data extension.

A request body is a JSON object, optionally followed by raw tensors; the header
``Inference-Header-Content-Length`` gives the JSON's length, and each binary input says its size
in ``parameters.binary_data_size`` (in input order). A response puts the outputs the client
wants as binary (``parameters.binary_data_output`` on the request, ``binary_data`` per output)
after its JSON the same way. Pure functions: the HTTP transport and a Ray Serve ingress share
them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Optional, Union

from .protocol import (
    ErrorKind,
    InferRequest,
    InferResponse,
    InputTensor,
    ProtocolError,
    RequestedOutput,
    decode_data,
    decode_raw,
    encode_data,
    encode_raw,
    refuse_extensions,
)

__all__ = ["Body", "HEADER_LENGTH", "parse_infer_body", "render_infer_response", "error_body"]

#: A request body as read: grown in place, so possibly a bytearray.
Body = Union[bytes, bytearray]

#: The binary data extension's header: the length of the JSON part of a body.
HEADER_LENGTH = "Inference-Header-Content-Length"


def _invalid(message: str) -> ProtocolError:
    return ProtocolError(ErrorKind.INVALID, message)


def _split(body: Body, header_length: Optional[str]) -> tuple[Body, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        raise _invalid(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
    if not 0 < length <= len(body):
        raise _invalid(f"{HEADER_LENGTH} is {length}, but the body has {len(body)} bytes")
    return body[:length], memoryview(body)[length:]


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _invalid(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _parameters(entry: Mapping[str, Any], what: str) -> Mapping[str, Any]:
    return _object(entry.get("parameters", {}), f"{what} 'parameters'")


def _tensor_entry(
    raw: Any, kind: str, position: int
) -> tuple[Mapping[str, Any], str, Mapping[str, Any]]:
    """One entry of ``inputs`` or ``outputs``: the object, its name and its parameters, with the
    extensions we do not serve refused by name."""
    entry = _object(raw, f"{kind}s[{position}]")
    name = entry.get("name")
    if not isinstance(name, str):
        raise _invalid(f"{kind}s[{position}] needs a 'name' string")
    parameters = _parameters(entry, f"{kind} {name!r}")
    refuse_extensions(parameters, kind, name)
    return entry, name, parameters


def _flag(parameters: Mapping[str, Any], key: str, what: str) -> Optional[bool]:
    value = parameters.get(key)
    if value is not None and not isinstance(value, bool):
        raise _invalid(f"{what}: parameter {key!r} must be true or false, got {value!r}")
    return value


def parse_infer_body(body: Body, header_length: Optional[str] = None) -> InferRequest:
    """Decode an infer request body; ``header_length`` is the extension header's value, if
    any. Raises ProtocolError (INVALID) naming the input or field that is wrong."""
    header, binary = _split(body, header_length)
    try:
        document = json.loads(header)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _invalid(f"the request is not valid JSON: {exc}") from None
    except RecursionError:  # json's decoder recurses once per level of nesting
        raise _invalid("the request is not valid JSON: it is nested too deeply") from None
    document = _object(document, "the request")
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise _invalid(f"'id' must be a string, got {request_id!r}")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list):
        raise _invalid("the request needs 'inputs', a list of tensors")
    inputs = []
    offset = 0
    for position, raw in enumerate(raw_inputs):
        entry, name, parameters = _tensor_entry(raw, "input", position)
        size = parameters.get("binary_data_size")
        if size is None:
            if "data" not in entry:
                raise _invalid(f"input {name!r} has neither 'data' nor binary_data_size")
            array = decode_data(entry["data"], entry.get("datatype"), entry.get("shape"), name)
        else:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise _invalid(f"input {name!r}: binary_data_size must be an integer >= 0")
            if offset + size > len(binary):
                raise _invalid(
                    f"input {name!r}: binary_data_size {size} runs past the end of the body "
                    f"({len(binary) - offset} bytes left)"
                )
            chunk = binary[offset : offset + size]
            array = decode_raw(chunk, entry.get("datatype"), entry.get("shape"), name)
            offset += size
        inputs.append(InputTensor(name, array))
    if offset != len(binary):
        raise _invalid(f"{len(binary) - offset} bytes of binary data follow the last input")
    return InferRequest(
        inputs,
        _requested_outputs(document.get("outputs", [])),
        request_id,
        bool(_flag(_parameters(document, "the request"), "binary_data_output", "the request")),
    )


def _requested_outputs(raw_outputs: Any) -> list[RequestedOutput]:
    if not isinstance(raw_outputs, list):
        raise _invalid("'outputs' must be a list")
    outputs = []
    for position, raw in enumerate(raw_outputs):
        _, name, parameters = _tensor_entry(raw, "output", position)
        outputs.append(RequestedOutput(name, _flag(parameters, "binary_data", f"output {name!r}")))
    return outputs


def render_infer_response(response: InferResponse) -> tuple[bytes, Optional[int]]:
    """(body, JSON length): the length is set when binary outputs follow the JSON, and goes
    into the ``Inference-Header-Content-Length`` response header."""
    outputs = []
    chunks = []
    for output in response.outputs:
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.array.shape),
        }
        if output.binary:
            raw = encode_raw(output.array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = encode_data(output.array)
        outputs.append(entry)
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id:
        document["id"] = response.id
    # NaN and +-inf outputs are written NaN, Infinity, -Infinity (not strict JSON), as Triton
    # writes them (rapidjson's kWriteNanAndInfFlag) and as tritonclient's json.loads reads them
    header = json.dumps(document, separators=(",", ":"), allow_nan=True).encode()
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def error_body(message: str) -> bytes:
    """The protocol's error object, ``{"error": message}``."""
    return json.dumps({"error": message}).encode()
