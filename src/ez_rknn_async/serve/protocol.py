"""The Open Inference Protocol (KServe v2) without a transport: tensors, requests, errors.

Everything here is pure (no sockets, no event loop, no protobuf), so the HTTP and gRPC
transports, and a Ray Serve deployment, share one mapping and one set of error messages:

* datatypes: the protocol's names (``FP32``, ``UINT8``...) <-> numpy dtypes; ``BYTES`` and
  ``BF16`` are refused with a message saying why;
* tensors: ``decode_raw`` (little-endian bytes: the binary extension and gRPC's
  ``raw_input_contents``), ``decode_data`` (JSON / typed contents), ``encode_raw``/``encode_data``;
* requests: ``InferRequest`` (named input arrays, requested outputs, the echoed ``id``),
  ``InferResponse``;
* errors: ``ProtocolError`` carries an ``ErrorKind``, and ``classify`` maps any exception of the
  session to one: a bad feed is ``INVALID`` (HTTP 400, gRPC INVALID_ARGUMENT), a full queue
  ``UNAVAILABLE`` (503 + Retry-After, UNAVAILABLE), a failed inference ``INTERNAL`` (500).
"""

from __future__ import annotations

import enum
import hmac
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .. import __version__
from ..errors import SessionClosedError, SubmitTimeoutError
from ..tensors import ONNX_TYPE_TO_DTYPE, Dim

__all__ = [
    "server_metadata",
    "authorized",
    "DATATYPES",
    "ErrorKind",
    "ProtocolError",
    "classify",
    "datatype_of",
    "dtype_of",
    "refuse_extensions",
    "onnx_datatype",
    "metadata_shape",
    "decode_raw",
    "decode_data",
    "encode_raw",
    "encode_data",
    "InputTensor",
    "RequestedOutput",
    "InferRequest",
    "OutputTensor",
    "InferResponse",
]

#: The protocol's tensor datatypes that numpy (and so a session) can hold.
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_DTYPE_TO_DATATYPE = {dtype: name for name, dtype in DATATYPES.items()}
_REFUSED = {
    "BYTES": "BYTES (string) tensors are not supported: the models served here take numeric "
    "tensors",
    "BF16": "BF16 tensors are not supported: numpy has no bfloat16; send FP32 or FP16",
}


def server_metadata() -> dict[str, Any]:
    """The server metadata of both transports (Triton clients read ``extensions``)."""
    return {"name": "ez-rknn-async", "version": __version__, "extensions": ["binary_tensor_data"]}


def authorized(header: Optional[str], token: Optional[str]) -> bool:
    """Whether an ``Authorization`` header carries the bearer ``token`` (always, without one).
    The scheme is case-insensitive (RFC 7235 2.1: ``bearer`` and ``BEARER`` are ``Bearer``),
    the token is not, and is compared as bytes in constant time."""
    if token is None:
        return True
    if header is None:
        return False
    scheme, _, credentials = header.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        credentials.lstrip(" ").encode("utf-8", "surrogateescape"), token.encode()
    )


class ErrorKind(enum.Enum):
    """What went wrong, as each transport reports it: (HTTP status, gRPC status code name)."""

    INVALID = (400, "INVALID_ARGUMENT")
    UNAUTHENTICATED = (401, "UNAUTHENTICATED")
    NOT_FOUND = (404, "NOT_FOUND")
    INTERNAL = (500, "INTERNAL")
    UNAVAILABLE = (503, "UNAVAILABLE")

    @property
    def http_status(self) -> int:
        return self.value[0]

    @property
    def grpc_code(self) -> str:
        """The name of the ``grpc.StatusCode`` member (grpc itself is not imported here)."""
        return self.value[1]


class ProtocolError(Exception):
    """A request the server refuses; ``kind`` decides the status code."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def classify(exc: BaseException) -> tuple[ErrorKind, str]:
    """(kind, message) for an exception raised while serving a request.

    The session words bad feeds as ``run`` does (ValueError/TypeError naming the input); those
    are the client's fault. A full queue or a session closing for shutdown means "try again".
    Anything else is the inference failing: the backend's message goes back with a 500.
    """
    message = str(exc) or type(exc).__name__
    if isinstance(exc, ProtocolError):
        return exc.kind, message
    if isinstance(exc, (SubmitTimeoutError, SessionClosedError)):
        return ErrorKind.UNAVAILABLE, message
    if isinstance(exc, (ValueError, TypeError)):
        return ErrorKind.INVALID, message
    return ErrorKind.INTERNAL, f"inference failed: {message}"


#: Tensor parameters of protocol extensions this server does not implement.
_UNSUPPORTED_PARAMETERS = {
    "shared_memory_region": "the shared-memory extension",
    "classification": "the classification extension",
}


def refuse_extensions(parameters: Iterable[str], role: str, tensor: str) -> None:
    """Refuse a tensor whose parameters ask for an extension this server lacks, rather than
    misread it (a shared-memory input carries no data of its own)."""
    for key in parameters:
        if key in _UNSUPPORTED_PARAMETERS:
            raise ProtocolError(
                ErrorKind.INVALID,
                f"{role} {tensor!r}: {_UNSUPPORTED_PARAMETERS[key]} ({key!r}) is not supported",
            )


def dtype_of(datatype: Any, tensor: str) -> np.dtype:
    """The numpy dtype of a protocol datatype, or a ProtocolError naming the tensor."""
    if not isinstance(datatype, str):
        raise ProtocolError(
            ErrorKind.INVALID, f"input {tensor!r}: 'datatype' must be a string, got {datatype!r}"
        )
    try:
        return DATATYPES[datatype]
    except KeyError:
        pass
    reason = _REFUSED.get(datatype, f"unknown datatype {datatype!r}")
    raise ProtocolError(
        ErrorKind.INVALID, f"input {tensor!r}: {reason} (supported: {', '.join(DATATYPES)})"
    )


def datatype_of(dtype: np.dtype) -> str:
    """The protocol datatype of an output array."""
    try:
        return _DTYPE_TO_DATATYPE[np.dtype(dtype)]
    except KeyError:
        raise ProtocolError(
            ErrorKind.INTERNAL, f"the model returned a {dtype} tensor, which the protocol lacks"
        ) from None


def onnx_datatype(type_string: str) -> str:
    """The protocol datatype of an onnxruntime type string (``tensor(float)`` -> ``FP32``);
    ``BYTES`` for strings, as Triton reports them, and the raw string for anything else."""
    dtype = ONNX_TYPE_TO_DTYPE.get(type_string)
    if dtype is not None:
        return _DTYPE_TO_DATATYPE[dtype]
    return "BYTES" if type_string == "tensor(string)" else type_string


def metadata_shape(shape: Sequence[Dim]) -> list[int]:
    """A model shape for metadata: a dynamic dimension is -1, as the protocol says."""
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


def _checked_shape(shape: Any, tensor: str) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ProtocolError(
            ErrorKind.INVALID,
            f"input {tensor!r}: 'shape' must be a list of non-negative integers, got {shape!r}",
        )
    return tuple(shape)


def decode_raw(data: Any, datatype: Any, shape: Any, tensor: str) -> np.ndarray:
    """An array from raw little-endian, row-major bytes (a bytes-like ``data``; no copy)."""
    dtype = dtype_of(datatype, tensor)
    dims = _checked_shape(shape, tensor)
    count = math.prod(dims)
    expected = count * dtype.itemsize
    if len(data) != expected:
        raise ProtocolError(
            ErrorKind.INVALID,
            f"input {tensor!r}: {len(data)} bytes of data, but {datatype} {list(dims)} needs "
            f"{expected}",
        )
    if dtype.kind == "b":  # one byte per element; anything but 0 is true
        return _reshaped(np.frombuffer(data, dtype=np.uint8).astype(np.bool_), dims, tensor)
    return _reshaped(np.frombuffer(data, dtype=dtype.newbyteorder("<")), dims, tensor)


def _reshaped(array: np.ndarray, dims: tuple[int, ...], tensor: str) -> np.ndarray:
    """``array`` in ``dims``; a shape of zero elements passes the size checks yet may be one
    numpy cannot hold (a dim past 2**63, more dims than numpy's maximum)."""
    try:
        return array.reshape(dims)
    except ValueError as exc:
        raise ProtocolError(
            ErrorKind.INVALID, f"input {tensor!r}: shape {list(dims)} cannot be held: {exc}"
        ) from None


def decode_data(values: Any, datatype: Any, shape: Any, tensor: str) -> np.ndarray:
    """An array from typed values (JSON ``data``, nested or flat, or gRPC typed contents),
    refusing what would change meaning on conversion: floats or out-of-range numbers for an
    integer type, anything but booleans for BOOL, strings anywhere."""
    dtype = dtype_of(datatype, tensor)
    dims = _checked_shape(shape, tensor)
    try:
        parsed = np.asarray(values)
    except ValueError:  # ragged nesting
        raise ProtocolError(
            ErrorKind.INVALID, f"input {tensor!r}: 'data' is not a rectangular list"
        ) from None
    if parsed.size != math.prod(dims):
        raise ProtocolError(
            ErrorKind.INVALID,
            f"input {tensor!r}: {parsed.size} values in 'data', but shape {list(dims)} needs "
            f"{math.prod(dims)}",
        )
    if parsed.size and not _fits(parsed, dtype):
        raise ProtocolError(
            ErrorKind.INVALID,
            f"input {tensor!r}: 'data' holds {_describe(parsed)}, which is not {datatype}",
        )
    with np.errstate(over="ignore"):  # an overflow is refused below, not warned about
        array = parsed.astype(dtype)
    if dtype.kind == "f" and parsed.dtype.kind in "iuf" and _overflowed(parsed, array):
        raise ProtocolError(
            ErrorKind.INVALID,
            f"input {tensor!r}: 'data' holds values out of the range of {datatype} "
            f"(largest magnitude {np.finfo(dtype).max})",
        )
    return _reshaped(array, dims, tensor)


def _overflowed(parsed: np.ndarray, cast: np.ndarray) -> bool:
    """Whether a finite value became an infinity in ``cast`` (given infinities stay)."""
    infinite = np.isinf(cast)
    return bool(infinite.any()) and bool((infinite & ~np.isinf(parsed)).any())


def _fits(parsed: np.ndarray, dtype: np.dtype) -> bool:
    kind = parsed.dtype.kind
    if dtype.kind == "b":
        return kind == "b"
    if dtype.kind == "f":
        return kind in "biuf"
    if kind not in "iu":
        return False
    info = np.iinfo(dtype)
    return int(parsed.min()) >= info.min and int(parsed.max()) <= info.max


def _describe(parsed: np.ndarray) -> str:
    kind = parsed.dtype.kind
    if kind in "iu":
        return f"integers from {parsed.min()} to {parsed.max()}"
    return {"b": "booleans", "f": "floating-point numbers"}.get(kind, "non-numeric values")


def encode_raw(array: np.ndarray) -> bytes:
    """Little-endian, row-major bytes of an output (BOOL: one byte per element)."""
    if array.dtype.kind == "b":
        return np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def encode_data(array: np.ndarray) -> list:
    """An output as a flat list of Python numbers (JSON ``data``, gRPC typed contents)."""
    return array.reshape(-1).tolist()


@dataclass(frozen=True)
class InputTensor:
    name: str
    array: np.ndarray


@dataclass(frozen=True)
class RequestedOutput:
    """An output the client asked for; ``binary``: return it as raw bytes (HTTP's binary data
    extension), None: as the request's ``binary_data_output`` says."""

    name: str
    binary: Optional[bool] = None


@dataclass(frozen=True)
class InferRequest:
    """One decoded inference request. ``outputs`` empty means every output of the model;
    ``binary_outputs`` is the request-level default of the binary data extension."""

    inputs: Sequence[InputTensor]
    outputs: Sequence[RequestedOutput] = ()
    id: str = ""
    binary_outputs: bool = False

    def feed(self) -> dict[str, np.ndarray]:
        """The inputs as a session feed, refusing a name given twice."""
        feed: dict[str, np.ndarray] = {}
        for tensor in self.inputs:
            if tensor.name in feed:
                raise ProtocolError(ErrorKind.INVALID, f"input {tensor.name!r} is given twice")
            feed[tensor.name] = tensor.array
        return feed

    def output_names(self) -> Optional[list[str]]:
        """The session's ``output_names`` (None for all), refusing a name asked twice: the
        response would carry two tensors of one name, and the binary data extension would
        send the data twice."""
        names: list[str] = []
        for output in self.outputs:
            if output.name in names:
                raise ProtocolError(ErrorKind.INVALID, f"output {output.name!r} is asked twice")
            names.append(output.name)
        return names or None


@dataclass(frozen=True)
class OutputTensor:
    name: str
    array: np.ndarray
    binary: bool = False

    @property
    def datatype(self) -> str:
        return datatype_of(self.array.dtype)


@dataclass(frozen=True)
class InferResponse:
    model_name: str
    model_version: str
    outputs: Sequence[OutputTensor]
    id: str = ""

    @classmethod
    def build(
        cls,
        request: InferRequest,
        model_name: str,
        model_version: str,
        names: Sequence[str],
        arrays: Sequence[np.ndarray],
    ) -> InferResponse:
        """The response to ``request``: ``names``/``arrays`` are the outputs in the order
        returned, each binary as its request (or the request-level default) asks."""
        chosen = {output.name: output.binary for output in request.outputs}
        outputs = []
        for name, array in zip(names, arrays):
            binary = chosen.get(name)
            outputs.append(
                OutputTensor(name, array, request.binary_outputs if binary is None else binary)
            )
        return cls(model_name, model_version, outputs, request.id)
