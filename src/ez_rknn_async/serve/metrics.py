"""Prometheus metrics of the server (``/metrics``), in a registry of its own.

What the server measures itself, per model:

    ez_rknn_request_success_total{model,protocol}          answered requests
    ez_rknn_request_failure_total{model,protocol,reason}   reason: invalid, not_found,
                                                           unavailable, internal
    ez_rknn_request_duration_seconds{model,protocol}       whole request: decode .. encode
    ez_rknn_queue_duration_seconds{model}                  waiting for the model's in-flight limit
    ez_rknn_compute_duration_seconds{model}                inside ``session.arun``: the wait in
                                                           the engine's queue plus the inference
    ez_rknn_inflight_requests{model}                       admitted and not answered yet

The engine's own numbers (``engine_metrics``: ``ez_rknn_engine_*``, read from ``session.stats()``
at each scrape) split the compute time in aggregate: ``ez_rknn_engine_queue_wait_seconds`` is
the engine-queue part, ``ez_rknn_engine_slot_busy_seconds_total`` the time the slots ran tasks;
a per-request split would need the engine to time each task for the caller, which it does not.

Per-NPU-core load comes from outside the server (the board's debugfs): pass a ``NpuLoadSource``
to ``ServerMetrics`` and ``ez_rknn_npu_core_load_percent{core}`` is read from it at each scrape
(``ez-rknn serve`` passes ``backends.rknn.kernel.read_core_loads``; where it raises, off a board
or not as root, the family is left out).
A request for a model the server does not have is counted under ``model=""``, so clients cannot
grow the label set.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Callable, Optional

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .engine_metrics import EngineCollector, EngineStatsSource

__all__ = ["NpuLoadSource", "ModelMetrics", "ServerMetrics", "CONTENT_TYPE"]

#: The hook for per-core NPU load: core id -> load in percent, read at every scrape.
NpuLoadSource = Callable[[], Mapping[int, float]]
CONTENT_TYPE = CONTENT_TYPE_LATEST
_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip


@dataclass(frozen=True)
class ModelMetrics:
    """The children one model updates on its hot path (no label lookups per request)."""

    queue_seconds: Histogram
    compute_seconds: Histogram
    inflight: Gauge


class ServerMetrics:
    """Every metric of one server; ``render()`` is the body of ``/metrics``."""

    def __init__(self, npu_load: Optional[NpuLoadSource] = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self._success = Counter(
            "ez_rknn_request_success",
            "Inference requests answered",
            ["model", "protocol"],
            registry=registry,
        )
        self._failure = Counter(
            "ez_rknn_request_failure",
            "Inference requests refused or failed, by reason",
            ["model", "protocol", "reason"],
            registry=registry,
        )
        self._request = Histogram(
            "ez_rknn_request_duration_seconds",
            "Whole inference request in the server, decoding to encoding",
            ["model", "protocol"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self._queue = Histogram(
            "ez_rknn_queue_duration_seconds",
            "Time a request waited for the model's in-flight limit",
            ["model"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self._compute = Histogram(
            "ez_rknn_compute_duration_seconds",
            "Time inside session.arun: the wait in the engine's queue plus the inference",
            ["model"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self._inflight = Gauge(
            "ez_rknn_inflight_requests",
            "Requests admitted and not answered yet",
            ["model"],
            registry=registry,
        )
        if npu_load is not None:
            registry.register(_NpuLoadCollector(npu_load))

    def watch_engines(self, source: EngineStatsSource) -> None:
        """Export the engines' ``stats()`` (``engine_metrics``), read from ``source`` at each
        scrape."""
        self.registry.register(EngineCollector(source))

    def model(self, name: str) -> ModelMetrics:
        """The per-model children (created now, so a model shows 0 before its first request)."""
        for protocol in ("http", "grpc"):
            self._success.labels(name, protocol)
        return ModelMetrics(
            self._queue.labels(name), self._compute.labels(name), self._inflight.labels(name)
        )

    def finished(self, model: str, protocol: str, reason: Optional[str], seconds: float) -> None:
        """Count one inference request; ``reason`` is None on success."""
        if reason is None:
            self._success.labels(model, protocol).inc()
        else:
            self._failure.labels(model, protocol, reason).inc()
        self._request.labels(model, protocol).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _NpuLoadCollector(Collector):
    def __init__(self, source: NpuLoadSource) -> None:
        self._source = source

    def describe(self) -> list[Metric]:
        return []  # registering must not read the source; the family is built per scrape

    def collect(self) -> Iterator[Metric]:
        try:
            loads = self._source()
        except OSError:  # debugfs went away or is not readable: no sample, /metrics still works
            return
        family = GaugeMetricFamily(
            "ez_rknn_npu_core_load_percent",
            "NPU load per core, as the driver reports it",
            labels=["core"],
        )
        for core, load in sorted(loads.items()):
            family.add_metric([str(core)], float(load))
        yield family
