"""What one model server is made of, whoever hosts it: the models, their metrics, the body
budget, and the HTTP app over them.

``ez-rknn serve`` (``server.serve``: uvicorn and gRPC on one loop) and a Ray Serve replica
(``ez_rknn_async.ray.deployment``: Serve's proxy in front) build the same parts here, so a
request meets the same limits, errors and metrics on one board and on a fleet.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from starlette.applications import Starlette

from .body_budget import BodyBudget
from .config import ModelSpec
from .http import build_app
from .metrics import NpuLoadSource, ServerMetrics
from .repository import Repository

__all__ = ["ServerParts", "drain_and_close"]


@dataclass(frozen=True)
class ServerParts:
    """The repository (not loaded yet: ``repository.load`` blocks, run it in a thread), the
    metrics watching its engines, and the budget of bytes all request bodies may hold."""

    repository: Repository
    metrics: ServerMetrics
    budget: BodyBudget

    @classmethod
    def build(
        cls,
        specs: Sequence[ModelSpec],
        max_total_request_bytes: int,
        npu_load: Optional[NpuLoadSource] = None,
    ) -> ServerParts:
        metrics = ServerMetrics(npu_load)
        repository = Repository(specs, metrics)
        metrics.watch_engines(repository.engine_stats)
        return cls(repository, metrics, BodyBudget(max_total_request_bytes))

    def http_app(self, token: Optional[str] = None) -> Starlette:
        """The HTTP/REST app of the protocol over these parts (``http.build_app``)."""
        return build_app(self.repository, self.metrics, self.budget, token)


async def drain_and_close(repository: Repository, deadline: float) -> list[str]:
    """Let the requests in flight finish until ``deadline`` (``time.monotonic()``), then close
    the sessions with what is left of it, in a thread (the loop goes on answering). A request
    still queued then gets 503 (session closed), one still running 503 (session broken),
    rather than a cancellation. Returns the abandoned models (``Repository.close``)."""
    while repository.inflight() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # polled: a stop happens once
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, repository.close, deadline)
