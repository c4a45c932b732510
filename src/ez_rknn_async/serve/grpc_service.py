"""The gRPC transport: ``inference.GRPCInferenceService`` on a ``grpc.aio`` server.

A thin layer: messages <-> the protocol module's requests and responses (``decode_request``,
``encode_response``), ``ProtocolError`` kinds -> status codes, and the bearer token checked on
every rpc but ServerLive/ServerReady. Outputs always travel as ``raw_output_contents`` (what
tritonclient reads); inputs may come raw or as typed contents.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any, Callable, Optional

import grpc
from google.protobuf.message import DecodeError

from .body_budget import BodyBudget
from .grpc_schema import METHODS, SERVICE, message
from .metrics import ServerMetrics
from .protocol import (
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
    dtype_of,
    encode_raw,
    refuse_extensions,
    server_metadata,
)
from .repository import Repository

__all__ = ["decode_request", "encode_response", "GrpcTransport"]

#: Which typed-contents field carries each datatype (FP16 has none: raw only).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
_OPEN_RPCS = frozenset({"ServerLive", "ServerReady"})
_InferResponse = message("ModelInferResponse")


def decode_request(request: Any) -> InferRequest:
    """A ``ModelInferRequest`` as the protocol's request; ProtocolError names what is wrong."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(
            ErrorKind.INVALID,
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs",
        )
    inputs = []
    for position, tensor in enumerate(request.inputs):
        refuse_extensions(tensor.parameters, "input", tensor.name)
        given = [descriptor.name for descriptor, _ in tensor.contents.ListFields()]
        if raw and given:  # one of the two would be ignored
            raise ProtocolError(
                ErrorKind.INVALID,
                f"input {tensor.name!r}: {given[0]} given together with raw_input_contents; "
                "send one or the other",
            )
        if raw:
            array = decode_raw(raw[position], tensor.datatype, list(tensor.shape), tensor.name)
        else:
            array = _decode_contents(tensor, given)
        inputs.append(InputTensor(tensor.name, array))
    for output in request.outputs:
        refuse_extensions(output.parameters, "output", output.name)
    outputs = [RequestedOutput(output.name) for output in request.outputs]
    return InferRequest(inputs, outputs, request.id)


def _decode_contents(tensor: Any, given: list[str]) -> Any:
    """An input's typed contents, from the one field its datatype uses (``given``: the
    non-empty fields; values in another would be ignored, so they are refused)."""
    dtype_of(tensor.datatype, tensor.name)  # unknown and refused datatypes first
    field = _CONTENTS_FIELD.get(tensor.datatype)
    if field is None:  # FP16
        raise ProtocolError(
            ErrorKind.INVALID,
            f"input {tensor.name!r}: {tensor.datatype} data must be sent in raw_input_contents",
        )
    stray = [name for name in given if name != field]
    if stray:
        raise ProtocolError(
            ErrorKind.INVALID,
            f"input {tensor.name!r}: {tensor.datatype} values go in {field}, "
            f"not {', '.join(stray)}",
        )
    values = list(getattr(tensor.contents, field))
    return decode_data(values, tensor.datatype, list(tensor.shape), tensor.name)


def encode_response(response: InferResponse) -> Any:
    message_ = _InferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    for output in response.outputs:
        message_.outputs.add(
            name=output.name, datatype=output.datatype, shape=list(output.array.shape)
        )
        message_.raw_output_contents.append(encode_raw(output.array))
    return message_


def _reply(rpc: str, **fields: Any) -> Any:
    """The response message of ``rpc`` with ``fields``."""
    return METHODS[rpc][1](**fields)


class GrpcTransport:
    """The servicer, and the ``grpc.aio`` server that runs it."""

    def __init__(
        self,
        repository: Repository,
        metrics: ServerMetrics,
        budget: BodyBudget,
        token: Optional[str] = None,
    ) -> None:
        self._repository = repository
        self._metrics = metrics
        self._budget = budget
        self._token = token
        self._draining = False
        self.server: Optional[grpc.aio.Server] = None

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: any free port); return the port, 0 if it is taken."""
        # grpc holds a whole message before any handler runs: the largest a model takes, plus
        # headroom for the request's fields, and never more than all bodies may hold at once
        limit = min(self._repository.max_request_bytes + 1024 * 1024, self._budget.limit)
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),
            ]
        )
        server.add_generic_rpc_handlers((self._handler(),))
        try:
            bound = server.add_insecure_port(f"{host}:{port}")
        except RuntimeError:  # grpcio >= 1.5x raises where older ones returned 0
            return 0
        if bound == 0:
            return 0
        await server.start()
        self.server = server
        return bound

    def drain(self) -> None:
        """From now on answer new rpcs UNAVAILABLE (ServerReady: not ready), while the server
        keeps running. ``grpc.aio``'s ``stop`` would refuse them instead, but a call that
        arrives once it is called and has not reached a handler ends CANCELLED
        (grpc/grpc#41785), which a client does not retry; so ``stop`` comes after the drain."""
        self._draining = True

    async def stop(self, grace: float) -> None:
        """Refuse new rpcs, let running ones finish for up to ``grace`` seconds."""
        if self.server is not None:
            await self.server.stop(grace)

    def _handler(self) -> grpc.GenericRpcHandler:
        handlers = {}
        for name, (request_class, response_class) in METHODS.items():
            handlers[name] = grpc.unary_unary_rpc_method_handler(  # parsed in the guard
                self._guard(name, request_class, getattr(self, f"_{name}")),
                response_serializer=response_class.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def _guard(
        self, name: str, request_class: Any, method: Callable[[Any, Any], Awaitable[Any]]
    ) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]:
        """``method`` behind the token check, given the parsed request: parsed here rather
        than by grpc, whose failed deserializer answers UNKNOWN, not INVALID_ARGUMENT."""

        async def call(data: bytes, context: grpc.aio.ServicerContext) -> Any:
            if name not in _OPEN_RPCS:
                metadata = dict(context.invocation_metadata() or ())
                if not authorized(metadata.get("authorization"), self._token):
                    await context.abort(
                        grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token"
                    )
            if self._draining and name not in _OPEN_RPCS:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, "the server is stopping: retry on another"
                )
            try:
                request = request_class.FromString(data)
            except DecodeError as exc:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the request is not a valid {request_class.DESCRIPTOR.name}: {exc}",
                )
            try:
                with self._budget.hold() as hold:  # the message's bytes, until it is answered
                    hold.grow_to(len(data))
                    return await method(request, context)
            except ProtocolError as exc:
                await context.abort(grpc.StatusCode[exc.kind.grpc_code], str(exc))

        return call

    async def _ServerLive(self, request: Any, context: Any) -> Any:
        return _reply("ServerLive", live=True)

    async def _ServerReady(self, request: Any, context: Any) -> Any:
        return _reply("ServerReady", ready=self._repository.ready and not self._draining)

    async def _ModelReady(self, request: Any, context: Any) -> Any:
        return _reply("ModelReady", ready=self._repository.is_ready(request.name, request.version))

    async def _ServerMetadata(self, request: Any, context: Any) -> Any:
        return _reply("ServerMetadata", **server_metadata())

    async def _ModelMetadata(self, request: Any, context: Any) -> Any:
        return _reply(
            "ModelMetadata", **self._repository.get(request.name, request.version).metadata
        )

    async def _ModelInfer(self, request: Any, context: Any) -> Any:
        started = time.perf_counter()
        label = ""
        reason: Optional[str] = None
        try:
            model = self._repository.get(request.model_name, request.model_version)
            label = model.name
            model.check_size(request.ByteSize())
            response = await model.infer(decode_request(request))
            return encode_response(response)
        except Exception as exc:
            kind, text = classify(exc)
            reason = kind.name.lower()
            raise ProtocolError(kind, text) from exc
        finally:
            self._metrics.finished(label, "grpc", reason, time.perf_counter() - started)
