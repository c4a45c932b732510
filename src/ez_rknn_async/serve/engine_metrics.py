"""The engine's own numbers on ``/metrics``: each model's ``session.stats()``, read at scrape time.

A custom Prometheus collector, so serving a request costs nothing extra: the engine counts
anyway (``engine/stats.py``) and a scrape takes one snapshot per model. Per model (label
``model``; per slot also ``slot``, its index, and ``core``, the NPU core it is pinned to or
``"auto"``)::

    ez_rknn_engine_state{model,state}               1 for the session's state (open, closing,
                                                    closed, broken), 0 for the others
    ez_rknn_engine_queued{model}                    tasks waiting in the engine's queue
    ez_rknn_engine_running{model}                   slots running a task now
    ez_rknn_engine_waiting_submitters{model}        submitters waiting for queue space
    ez_rknn_engine_submitted_total{model}           tasks admitted to the queue
    ez_rknn_engine_queue_wait_seconds{model}        summary (_sum, _count): admission -> start
    ez_rknn_engine_queue_wait_peak_seconds{model}   the longest such wait so far
    ez_rknn_engine_slot_busy_seconds_total{model,slot,core}       time running tasks
    ez_rknn_engine_slot_completed_total{model,slot,core}          backend calls that returned
    ez_rknn_engine_slot_failed_total{model,slot,core}             backend calls that raised

Counters include the warm-up inference of each model (it runs inline, so it is in a slot's
``completed`` but not in ``submitted`` or the queue wait).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Callable

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from ..engine.lifecycle import State
from ..engine.stats import SessionStats

__all__ = ["EngineStatsSource", "EngineCollector"]

#: The models' snapshots, (model name, stats), read at every scrape.
EngineStatsSource = Callable[[], Iterable[tuple[str, SessionStats]]]

_PREFIX = "ez_rknn_engine_"
_STATES = [state.value for state in State]
#: Gauges of a session as a whole: (metric name, SessionStats field, help).
_GAUGES = (
    ("queued", "queued", "Tasks waiting in the engine's queue for a worker"),
    ("running", "running", "Worker slots running a task now"),
    ("waiting_submitters", "waiting_submitters", "Submitters waiting for engine queue space"),
)
#: Counters per slot: (metric name, SlotStats field, help).
_SLOT_COUNTERS = (
    ("slot_busy_seconds", "busy_s", "Seconds the slot spent running tasks (backend calls)"),
    ("slot_completed", "completed", "Backend calls on the slot that returned results"),
    ("slot_failed", "failed", "Backend calls on the slot that raised"),
)


class EngineCollector(Collector):
    """Builds the ``ez_rknn_engine_*`` families from ``source`` at each scrape."""

    def __init__(self, source: EngineStatsSource) -> None:
        self._source = source

    def describe(self) -> list[Metric]:
        return []  # registering must not read the sessions; the families are built per scrape

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            _PREFIX + "state",
            "The session's state: 1 for the current one",
            labels=["model", "state"],
        )
        gauges = {
            field: GaugeMetricFamily(_PREFIX + name, text, labels=["model"])
            for name, field, text in _GAUGES
        }
        submitted = CounterMetricFamily(
            _PREFIX + "submitted", "Tasks admitted to the engine's queue", labels=["model"]
        )
        wait = SummaryMetricFamily(
            _PREFIX + "queue_wait_seconds",
            "Time tasks waited in the engine's queue, admission to start",
            labels=["model"],
        )
        peak = GaugeMetricFamily(
            _PREFIX + "queue_wait_peak_seconds",
            "The longest wait of a task in the engine's queue",
            labels=["model"],
        )
        slots = {
            field: CounterMetricFamily(_PREFIX + name, text, labels=["model", "slot", "core"])
            for name, field, text in _SLOT_COUNTERS
        }
        for model, stats in self._source():
            for value in _STATES:
                state.add_metric([model, value], float(stats.state == value))
            for field, family in gauges.items():
                family.add_metric([model], float(getattr(stats, field)))
            submitted.add_metric([model], float(stats.submitted))
            wait.add_metric([model], count_value=stats.queue_waits, sum_value=stats.queue_wait_s)
            peak.add_metric([model], stats.queue_wait_peak_s)
            for slot in stats.slots:
                labels = [model, str(slot.index), "auto" if slot.core is None else str(slot.core)]
                for field, counter in slots.items():
                    counter.add_metric(labels, float(getattr(slot, field)))
        yield state
        yield from gauges.values()
        yield submitted
        yield wait
        yield peak
        yield from slots.values()
