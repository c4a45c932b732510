"""The HTTP/REST transport: a Starlette app of the protocol's endpoints, and ``/metrics``.

    GET  /v2/health/live, /v2/health/ready                     (open even with a token)
    GET  /v2                                                   server metadata
    GET  /v2/models/{model}[/versions/{version}]               model metadata
    GET  /v2/models/{model}[/versions/{version}]/ready         200 ready, 503 loading or broken
    POST /v2/models/{model}[/versions/{version}]/infer         JSON or binary tensors
    GET  /metrics                                              Prometheus text format

Errors are ``{"error": message}`` with the status of their ``ErrorKind``; a 503 carries
``Retry-After``. The body of an infer request is read up to the model's ``max_request_bytes``
and no further, and may be gzip or deflate compressed (limited after inflating too); all
bodies together stay within the server's ``BodyBudget`` (503 past it). Bodies
come from ``rest``, behaviour from the repository: nothing else here.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from typing import Any, Optional

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .body_budget import BodyBudget, BodyHold
from .metrics import CONTENT_TYPE, ServerMetrics
from .protocol import ErrorKind, ProtocolError, authorized, classify, server_metadata
from .repository import Repository, ServedModel
from .rest import HEADER_LENGTH, Body, error_body, parse_infer_body, render_infer_response

__all__ = ["build_app", "RETRY_AFTER_SECONDS"]

#: What a 503 tells clients to wait before retrying.
RETRY_AFTER_SECONDS = 1
_JSON = "application/json"
_OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})


def _json(document: Any, status: int = 200) -> Response:
    return Response(json.dumps(document).encode(), status, media_type=_JSON)


def _error(kind: ErrorKind, message: str) -> Response:
    headers = {}
    if kind is ErrorKind.UNAVAILABLE:
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    elif kind is ErrorKind.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = "Bearer"
    return Response(error_body(message), kind.http_status, headers, _JSON)


#: Content-Encoding -> zlib wbits (tritonclient's ``request_compression_algorithm``).
_DECOMPRESS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


async def _read_body(request: Request, model: ServedModel, hold: BodyHold) -> Body:
    """The body, refused as soon as it is known to exceed the model's limit (compressed or
    not: a small gzip body cannot inflate past it either) or the server's budget of bytes in
    bodies (``hold``: before reading it when Content-Length says so)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        model.check_size(int(declared))
        hold.grow_to(int(declared))
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding != "identity" and encoding not in _DECOMPRESS:
        raise ProtocolError(
            ErrorKind.INVALID,
            f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or identity",
        )
    body = bytearray()  # grown in place: a list of chunks joined at the end held it twice
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        model.check_size(size)
        hold.grow_to(size)
        body += chunk
    if encoding == "identity":
        return body
    data = _decompress(body, encoding, model)
    hold.add(len(data))
    return data


async def _read_body_until_stop(request: Request, model: ServedModel, hold: BodyHold) -> Body:
    """``_read_body``, but a body still arriving when uvicorn's stop grace ends (it cancels the
    request's task) gets 503 "stopping" rather than a traceback in the log and no answer."""
    try:
        return await _read_body(request, model, hold)
    except asyncio.CancelledError:
        raise ProtocolError(
            ErrorKind.UNAVAILABLE,
            "the server is stopping and the request body had not all arrived",
        ) from None


def _decompress(body: Body, encoding: str, model: ServedModel) -> bytes:
    inflater = zlib.decompressobj(_DECOMPRESS[encoding])
    limit = model.spec.max_request_bytes
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(ErrorKind.INVALID, f"the body is not valid {encoding}: {exc}") from None
    model.check_size(len(data))
    if not inflater.eof:
        raise ProtocolError(ErrorKind.INVALID, f"the {encoding} body is truncated")
    if inflater.unused_data:  # a second gzip member, or junk: it would be dropped unread
        raise ProtocolError(
            ErrorKind.INVALID,
            f"{len(inflater.unused_data)} bytes follow after the end of the {encoding} stream",
        )
    return data


def build_app(
    repository: Repository,
    metrics: ServerMetrics,
    budget: BodyBudget,
    token: Optional[str] = None,
) -> Starlette:
    """The ASGI app; ``budget``: the bytes all infer bodies may hold at once (shared with
    gRPC); ``token``: the bearer token every path but health needs."""

    def model_of(request: Request) -> ServedModel:
        params = request.path_params
        return repository.get(params["model"], params.get("version", ""))

    async def live(request: Request) -> Response:
        return _json({"live": True})

    async def ready(request: Request) -> Response:
        is_ready = repository.ready  # read once: it follows the sessions' states
        return _json({"ready": is_ready}, 200 if is_ready else 503)

    async def metadata(request: Request) -> Response:
        return _json(server_metadata())

    async def model_metadata(request: Request) -> Response:
        return _json(model_of(request).metadata)

    async def model_ready(request: Request) -> Response:
        params = request.path_params
        is_ready = repository.is_ready(params["model"], params.get("version", ""))
        return _json({"name": params["model"], "ready": is_ready}, 200 if is_ready else 503)

    async def infer(request: Request) -> Response:
        started = time.perf_counter()
        label = ""
        reason: Optional[str] = None
        try:
            with budget.hold() as hold:  # given back however the request ends
                model = model_of(request)
                label = model.name
                body = await _read_body_until_stop(request, model, hold)
                decoded = parse_infer_body(body, request.headers.get(HEADER_LENGTH))
                content, header_length = render_infer_response(await model.infer(decoded))
        except Exception as exc:
            kind, message = classify(exc)
            reason = kind.name.lower()
            return _error(kind, message)
        finally:
            metrics.finished(label, "http", reason, time.perf_counter() - started)
        if header_length is None:
            return Response(content, media_type=_JSON)
        return Response(
            content,
            headers={HEADER_LENGTH: str(header_length)},
            media_type="application/octet-stream",
        )

    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    model_paths = ("/v2/models/{model}", "/v2/models/{model}/versions/{version}")
    routes = [
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2", metadata, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]
    for base in model_paths:
        routes += [
            Route(base, model_metadata, methods=["GET"]),
            Route(base + "/ready", model_ready, methods=["GET"]),
            Route(base + "/infer", infer, methods=["POST"]),
        ]

    async def protocol_error(request: Request, exc: Exception) -> Response:
        return _error(*classify(exc))

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        message = f"{request.method} {request.url.path}: " + (
            "no such endpoint" if status == 404 else getattr(exc, "detail", "refused")
        )
        return Response(error_body(message), status, media_type=_JSON)

    return Starlette(
        routes=routes,
        middleware=[Middleware(_TokenGate, token=token)],
        exception_handlers={ProtocolError: protocol_error, 404: not_found, 405: not_found},
    )


class _TokenGate:
    """Plain ASGI middleware (no per-request task, unlike Starlette's ``BaseHTTPMiddleware``):
    every path but health needs ``Authorization: Bearer <token>`` when a token is set."""

    def __init__(self, app: ASGIApp, token: Optional[str]) -> None:
        self._app = app
        self._token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._token is None or scope["type"] != "http" or scope["path"] in _OPEN_PATHS:
            await self._app(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if authorized(None if header is None else header.decode("latin-1"), self._token):
            await self._app(scope, receive, send)
            return
        refusal = _error(ErrorKind.UNAUTHENTICATED, "missing or wrong bearer token")
        await refusal(scope, receive, send)
