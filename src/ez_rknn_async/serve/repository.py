"""The models a server holds: one ``InferenceSession`` each, an in-flight limit, metadata.

``ServedModel.infer`` is the one inference path of every transport: admission (at most
``max_inflight`` requests at once; a request waits for a place up to the session's
``submit_timeout_ms``, then UNAVAILABLE), then ``await session.arun(...)``, which waits for
engine queue space on the event loop without holding a thread. Loading (``Repository.load``)
is blocking and runs in a thread while the transports already answer health probes.

A model is ready while its session is open: one whose session is closed or BROKEN (a worker
abandoned inside the backend, see ``InferenceSession.close``) answers not-ready and UNAVAILABLE
with that reason, and so does the server's readiness, while the other models keep serving.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Optional

import numpy as np

from ..engine.stats import SessionStats
from ..errors import SessionBrokenError, SessionClosedError
from ..options import parse_provider_options
from ..session import InferenceSession
from ..tensors import ONNX_TYPE_TO_DTYPE, NodeArg
from .config import ModelSpec
from .metrics import ModelMetrics, ServerMetrics
from .protocol import (
    ErrorKind,
    InferRequest,
    InferResponse,
    ProtocolError,
    metadata_shape,
    onnx_datatype,
)

__all__ = [
    "MODEL_VERSION",
    "WarmupError",
    "InflightLimit",
    "ServedModel",
    "Repository",
    "warmup_feed",
]

#: Each model has one version, "1" (a request naming another version gets NOT_FOUND).
MODEL_VERSION = "1"


class WarmupError(RuntimeError):
    """A model's warm-up inference failed (its error chained); ``hint`` says how to give it
    shapes (the CLI prints it)."""

    hint = 'give the shapes of its dynamic inputs: "warmup_shapes" in --config'


class InflightLimit:
    """At most ``limit`` holders; others wait in FIFO order, each up to its own timeout.

    Written out rather than ``asyncio.wait_for(semaphore.acquire())``, whose cancellation can
    lose a permit on older Pythons: here a place handed to a waiter that was cancelled at the
    same moment is given back.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    async def acquire(self, timeout: float) -> bool:
        """True once a place is held; False if none came free within ``timeout`` seconds."""
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return True
        loop = asyncio.get_running_loop()
        granted = loop.create_future()
        self._waiters.append(granted)
        timer = loop.call_later(timeout, _expire, granted)
        try:
            return await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled() and granted.result():
                self.release()  # handed over just as the caller was cancelled
            raise
        finally:
            timer.cancel()
            if granted in self._waiters:
                self._waiters.remove(granted)

    def release(self) -> None:
        """Give the place to the oldest live waiter, or free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)  # the place passes on: ``active`` is unchanged
                return
        self.active -= 1


def _expire(granted: asyncio.Future) -> None:
    if not granted.done():
        granted.set_result(False)


def warmup_feed(
    inputs: Sequence[NodeArg], shapes: Optional[dict[str, tuple[int, ...]]] = None
) -> dict[str, np.ndarray]:
    """Zeros for every input: the given shape, else the model's with dynamic dims set to 1."""
    shapes = shapes or {}
    feed = {}
    for node in inputs:
        dtype = ONNX_TYPE_TO_DTYPE.get(node.type, np.dtype(np.float32))
        shape = shapes.get(node.name) or tuple(
            d if isinstance(d, int) and d >= 0 else 1 for d in node.shape
        )
        feed[node.name] = np.zeros(shape, dtype)
    return feed


class ServedModel:
    """One model behind the protocol."""

    def __init__(self, spec: ModelSpec, session: InferenceSession, metrics: ModelMetrics) -> None:
        self.spec = spec
        self.name = spec.name
        self.session = session
        self._metrics = metrics
        self._limit = InflightLimit(spec.max_inflight)
        self._timeout = parse_provider_options(spec.provider_options).submit_timeout_ms / 1000.0
        self._output_names = session.output_names
        self._input_names = session.input_names
        self.metadata: dict[str, Any] = {
            "name": spec.name,
            "versions": [MODEL_VERSION],
            "platform": session.backend_name,
            "inputs": [_tensor_metadata(node) for node in session.get_inputs()],
            "outputs": [_tensor_metadata(node) for node in session.get_outputs()],
        }

    @property
    def inflight(self) -> int:
        return self._limit.active

    @property
    def state(self) -> str:
        """The session's state: ``"open"`` (serving), ``"closing"``, ``"closed"``, ``"broken"``."""
        return self.session.stats().state

    async def infer(self, request: InferRequest) -> InferResponse:
        """Run ``request``: bad names or tensors raise as ``run`` words them."""
        feed = request.feed()
        unknown = [name for name in feed if name not in self._input_names]
        if unknown:  # a session ignores extra feed entries; a server tells the client
            raise ProtocolError(
                ErrorKind.INVALID,
                f"unknown input name(s) {unknown}; model {self.name!r} takes {self._input_names}",
            )
        names = request.output_names()
        queued = time.perf_counter()
        if not await self._limit.acquire(self._timeout):
            raise ProtocolError(
                ErrorKind.UNAVAILABLE,
                f"model {self.name!r} is busy: {self._limit.limit} requests in flight "
                f"(max_inflight) for {self._timeout:g} s",
            )
        started = time.perf_counter()
        self._metrics.queue_seconds.observe(started - queued)
        self._metrics.inflight.inc()
        try:
            arrays = await self.session.arun(names, feed)
        except SessionBrokenError as exc:
            raise ProtocolError(
                ErrorKind.UNAVAILABLE, f"model {self.name!r}: its session is broken: {exc}"
            ) from exc
        except SessionClosedError as exc:
            raise ProtocolError(
                ErrorKind.UNAVAILABLE, f"model {self.name!r}: its session is closed: {exc}"
            ) from exc
        finally:
            self._metrics.inflight.dec()
            self._limit.release()
            self._metrics.compute_seconds.observe(time.perf_counter() - started)
        return InferResponse.build(
            request, self.name, MODEL_VERSION, names or self._output_names, arrays
        )

    def check_version(self, version: str) -> None:
        if version not in ("", MODEL_VERSION):
            raise ProtocolError(
                ErrorKind.NOT_FOUND,
                f"model {self.name!r} has no version {version!r}; its versions are "
                f"[{MODEL_VERSION!r}]",
            )

    def check_size(self, nbytes: int) -> None:
        if nbytes > self.spec.max_request_bytes:
            raise ProtocolError(
                ErrorKind.INVALID,
                f"model {self.name!r}: the request has {nbytes} bytes, over the limit of "
                f"{self.spec.max_request_bytes} (max_request_bytes)",
            )


def _tensor_metadata(node: NodeArg) -> dict[str, Any]:
    return {
        "name": node.name,
        "datatype": onnx_datatype(node.type),
        "shape": metadata_shape(node.shape),
    }


class Repository:
    """Every model of the server, by name. Ready once all are loaded and warmed up."""

    def __init__(self, specs: Iterable[ModelSpec], metrics: ServerMetrics) -> None:
        self._specs = list(specs)
        self._metrics = metrics
        self._models: dict[str, ServedModel] = {}
        self._loaded = False

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self._specs]

    @property
    def max_request_bytes(self) -> int:
        return max(spec.max_request_bytes for spec in self._specs)

    def load(self) -> None:
        """Open every session and run one warm-up inference each (blocking: run it in a
        thread). On failure the sessions opened so far are closed and the error names the
        model."""
        try:
            for spec in self._specs:
                session = InferenceSession(spec.path, provider_options=spec.provider_options)
                self._models[spec.name] = ServedModel(spec, session, self._metrics.model(spec.name))
                _warm_up(spec, session)
        except BaseException:
            self.close()
            raise
        self._loaded = True

    @property
    def ready(self) -> bool:
        """Every model loaded, warmed up, and its session open."""
        return self._loaded and all(m.state == "open" for m in self._models.values())

    def engine_stats(self) -> Iterator[tuple[str, SessionStats]]:
        """(name, ``session.stats()``) of every loaded model: the source of the
        ``ez_rknn_engine_*`` metrics."""
        for name, model in list(self._models.items()):
            yield name, model.session.stats()

    def get(self, name: str, version: str = "") -> ServedModel:
        model = self._models.get(name) if self._loaded else None
        if model is None:
            if name in self.names:
                raise ProtocolError(ErrorKind.UNAVAILABLE, f"model {name!r} is not loaded yet")
            raise ProtocolError(
                ErrorKind.NOT_FOUND, f"unknown model {name!r}; this server has {self.names}"
            )
        model.check_version(version)
        return model

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            model = self.get(name, version)
        except ProtocolError as exc:
            if exc.kind is ErrorKind.UNAVAILABLE:
                return False
            raise
        return model.state == "open"

    def inflight(self) -> int:
        return sum(model.inflight for model in self._models.values())

    def close(self, deadline: Optional[float] = None) -> list[str]:
        """Close every session, each delivering what is still pending first, all within one
        ``time.monotonic()`` deadline (None: the session's default). A session still inside
        its backend then is abandoned (BROKEN: leaked, never freed under; the engine warns
        with the worker's name); returns one line per abandoned model."""
        self._loaded = False
        models, self._models = self._models, {}
        abandoned = []
        for model in models.values():
            why = "its session was already broken"
            if model.state != "broken":
                why = "an inference was still running at the deadline; its session was abandoned"
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                model.session.close(timeout)
            if model.state == "broken":
                abandoned.append(f"model {model.name!r}: {why}")
        return abandoned


def _warm_up(spec: ModelSpec, session: InferenceSession) -> None:
    """One inference on zeros. Dynamic dims default to 1, which a model may refuse (an RKNN
    model's allowed shapes) or fail on (a detector's feature maps): both name the model."""
    try:
        session.run(None, warmup_feed(session.get_inputs(), dict(spec.warmup_shapes)))
    except Exception as exc:
        raise WarmupError(f"model {spec.name!r}: the warm-up inference failed: {exc}") from exc
