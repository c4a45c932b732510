"""How many requests a replica takes at once: Serve's ``max_ongoing_requests``, from the board.

A session keeps its board busy with ``slots`` inferences running (one per NPU core, times
``threads_per_core``) and ``max_queue_size`` more waiting in its queue: its pipeline's depth.
A replica must hold several pipelines' worth of requests, because the ones Serve's proxy holds
back are not handed over the moment a place frees: its router retries a full replica after
25 ms, doubling up to 500 ms. Measured on two emulated RK3588 boards (3 cores, 20 ms; depth 6)
with 48 clients, one board answered 5% of its 150/s holding 1 pipeline, 23% holding 4, 91%
holding 10. So each replica takes, summed over its models::

    max_ongoing_requests = sum(min(max_inflight, FILL * (slots + max_queue_size)))  FILL = 10

(an RK3588 with the default options: 10 x (3 + 3) = 60 per model; ``max_inflight``, the
single-board server's own admission limit, caps it). Inside the replica the requests wait in
order for the session's queue (``ServedModel.infer``), never busy. Past that the proxy holds at
most ``max_queued_requests`` (default: as many as all replicas take at once) and then answers
503 with Retry-After. Backpressure thus holds from the NPU's queue to the client.

The slots are only known on a board (its SoC decides the cores), so ``probe`` opens each model
once there, in a Ray task that asks for a sliver of ``rknpu`` (it lands on a board and does not
keep it): a model that does not load on the boards fails here, with the session's own message,
instead of in Serve's replica constructor retries. While every board's ``rknpu`` is held
(another application, a Ray Data job) no board can take the probe, nor a replica: the probe
says so at its deadline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import ray

from ..options import parse_provider_options
from ..serve.config import ModelSpec
from ..session import InferenceSession
from .cluster import RESOURCE, FleetError

__all__ = ["FILL", "ModelDepth", "probe", "max_ongoing_requests"]

#: The pipelines' worth of requests a replica holds (module docstring).
FILL = 10


@dataclass(frozen=True)
class ModelDepth:
    """One model's pipeline on a board: inferences running at once, queued behind them, and
    the requests its server admits at once (``max_inflight``)."""

    name: str
    slots: int
    max_queue_size: int
    max_inflight: int

    @property
    def depth(self) -> int:
        return self.slots + self.max_queue_size

    @property
    def ongoing(self) -> int:
        """What a replica takes for this model (module docstring)."""
        return min(self.max_inflight, FILL * self.depth)


def _open_each(specs: Sequence[ModelSpec]) -> list[ModelDepth]:
    depths = []
    for spec in specs:
        try:
            with InferenceSession(spec.path, provider_options=spec.provider_options) as session:
                slots = len(session.worker_slots)
        except Exception as exc:
            raise RuntimeError(
                f"model {spec.name!r} ({spec.path}) does not load on board {_node()}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        queue = parse_provider_options(spec.provider_options).max_queue_size
        depths.append(ModelDepth(spec.name, slots, queue, spec.max_inflight))
    return depths


def _node() -> str:
    return ray.get_runtime_context().get_node_id()


#: A sliver of a board: placed on one, leaving its unit to the replica that follows.
_probe_task = ray.remote(num_cpus=0, resources={RESOURCE: 0.001}, max_retries=0)(_open_each)


def probe(specs: Sequence[ModelSpec], timeout: float) -> list[ModelDepth]:
    """Each model's pipeline, measured by opening it on one board; a ``FleetError`` naming the
    model and board when it does not load, or when no board ran the probe within ``timeout``."""
    ref = _probe_task.remote(list(specs))
    try:
        return ray.get(ref, timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        raise FleetError(
            f"no board opened the models within {timeout:g} s",
            hint=f"are the boards' `{RESOURCE}` units all held by other work? (`ray status`)",
        ) from None
    except ray.exceptions.RayTaskError as exc:
        raise FleetError(
            str(exc.cause), hint="every board loads MODEL from the same path: copy it there"
        ) from None


def max_ongoing_requests(depths: Sequence[ModelDepth]) -> int:
    """Serve's ``max_ongoing_requests`` per replica (module docstring)."""
    return sum(depth.ongoing for depth in depths)
