"""One server process: both transports on one event loop, the models, the lifecycle.

Order of events (each logged as one line, none per request):

1. start: the HTTP socket and the gRPC port are bound (port 0 picks a free one; the line says
   which), health/live answers at once, health/ready says 503;
2. ready: every model is loaded (in a thread: loading blocks) and has run a warm-up inference;
3. stop: on SIGTERM or SIGINT HTTP stops accepting and gRPC answers new calls UNAVAILABLE
   (it stops after the drain: see ``GrpcTransport.drain``), every request in flight is
   answered, the sessions are closed, all within one deadline ``shutdown_timeout`` seconds
   after the signal: a session whose inference is still running then is abandoned (BROKEN,
   its worker leaked rather than freed under) and that request gets 503. ``serve`` returns
   the abandoned models; the process exits 0 when there are none, 1 otherwise, either way
   within about ``shutdown_timeout`` seconds (a hung NPU never keeps the process alive).

Readiness follows the sessions: a model whose session is broken or closed is not ready, and
neither is the server, while the other models keep answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Optional

import uvicorn

from .. import __version__
from .body_budget import DEFAULT_MAX_TOTAL_REQUEST_BYTES
from .config import ModelSpec
from .grpc_service import GrpcTransport
from .http_protocol import bounded_protocol
from .metrics import NpuLoadSource
from .parts import ServerParts, drain_and_close

__all__ = ["ServerOptions", "ListenError", "serve", "LOGGER"]

LOGGER = logging.getLogger("ez_rknn_async.serve")


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = 8001
    token: Optional[str] = None
    shutdown_timeout: float = 30.0
    #: a request head must arrive, and a body must not stall, within this (seconds)
    read_timeout: float = 30.0
    #: the bytes all request bodies (HTTP and gRPC) may hold at once; past it, 503
    max_total_request_bytes: int = DEFAULT_MAX_TOTAL_REQUEST_BYTES


class ListenError(OSError):
    """A port could not be bound; ``hint`` says what to do (the CLI prints it)."""

    hint = "another process may hold the port: choose --port / --grpc-port (0: any free port)"


class _Uvicorn(uvicorn.Server):
    """uvicorn without signal handlers of its own: ``serve`` owns SIGTERM/SIGINT, so one
    signal stops both transports (uvicorn would re-raise it after its shutdown)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    """The HTTP listening socket, bound here so that port 0 works and the log says the port.
    Made with ``IPPROTO_TCP`` explicitly: asyncio sets TCP_NODELAY only on sockets whose
    ``proto`` says TCP, and without it every response waits ~40 ms for a delayed ACK."""
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(address)
            listener.listen(1024)
        except BaseException:
            listener.close()
            raise
    except OSError as exc:
        raise ListenError(
            f"cannot listen for HTTP on {host}:{port}: {exc.strerror or exc}"
        ) from exc
    return listener


def _reserve(options: ServerOptions) -> float:
    """The end of a stop kept for the transports to send what closing the sessions answered
    (503s for requests the close failed or abandoned) before their own grace ends."""
    return min(1.0, options.shutdown_timeout / 4)


async def serve(
    specs: Sequence[ModelSpec],
    options: ServerOptions = ServerOptions(),
    npu_load: Optional[NpuLoadSource] = None,
) -> list[str]:
    """Serve ``specs`` until SIGTERM/SIGINT; raises if a model fails to load or a port is
    taken (after releasing whatever was started). Returns the models whose session had to be
    abandoned at the stop (one line each, with the reason; empty: all closed cleanly)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[str] = []
    deadline: list[float] = []  # the stop's one deadline, from the first signal

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        if not deadline:
            deadline.append(time.monotonic() + options.shutdown_timeout)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    parts = ServerParts.build(specs, options.max_total_request_bytes, npu_load)
    repository, metrics, budget = parts.repository, parts.metrics, parts.budget
    http_socket = _listen(options.host, options.port)
    http = _Uvicorn(
        uvicorn.Config(
            parts.http_app(options.token),
            log_level="error",  # no per-request lines (uvicorn warns on malformed HTTP)
            access_log=False,
            lifespan="off",
            http=bounded_protocol(options.read_timeout),
            timeout_graceful_shutdown=math.ceil(options.shutdown_timeout),
        )
    )
    grpc = GrpcTransport(repository, metrics, budget, options.token)
    http_task: Optional[asyncio.Task] = None
    try:
        grpc_port = await grpc.start(options.host, options.grpc_port)
        if grpc_port == 0:
            raise ListenError(f"cannot listen for gRPC on {options.host}:{options.grpc_port}")
        http_task = asyncio.create_task(http.serve(sockets=[http_socket]))
        LOGGER.info(
            "start: ez-rknn-async %s, HTTP on http://%s:%d, gRPC on %s:%d, loading %s",
            __version__,
            options.host,
            http_socket.getsockname()[1],
            options.host,
            grpc_port,
            ", ".join(f"{spec.name}={spec.path}" for spec in specs),
        )
        started = time.perf_counter()
        await loop.run_in_executor(None, repository.load)
        if not stop.is_set():
            served = [repository.get(name) for name in repository.names]
            LOGGER.info(
                "ready: %d model(s) loaded and warmed up in %.1f s: %s",
                len(served),
                time.perf_counter() - started,
                ", ".join(f"{model.name} ({model.metadata['platform']})" for model in served),
            )
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({stopping, http_task}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
        inflight = repository.inflight()
    finally:
        if not deadline:  # stopped by an error, not a signal
            deadline.append(time.monotonic() + options.shutdown_timeout)
        http.should_exit = True
        grpc.drain()  # gRPC goes on answering, new calls UNAVAILABLE, and stops after the drain
        abandoned = await drain_and_close(repository, deadline[0] - _reserve(options))
        await asyncio.gather(
            grpc.stop(max(0.0, deadline[0] - time.monotonic())),
            *(() if http_task is None else (http_task,)),
        )
        http_socket.close()
    cause = received[0] if received else "stopped"
    if abandoned:
        LOGGER.error(
            "stop: %s; %d request(s) were in flight; session(s) abandoned (exit 1): %s",
            cause,
            inflight,
            " | ".join(abandoned),
        )
    else:
        LOGGER.info(
            "stop: %s; %d request(s) in flight were answered, sessions closed", cause, inflight
        )
    return abandoned
