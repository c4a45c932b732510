"""``InferenceSession.stats()``: a frozen snapshot of the engine, for ``ez-rknn top``, a server's
metrics and tests, so the hot path needs no logging (as trio's ``MemoryChannelStatistics``).

The counters only grow while the session lives (Prometheus counters: export them as ``_total``
and let the scraper take rates); the gauges are the state at the instant of the snapshot. One
snapshot is taken under the engine's lock, so its numbers agree with each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from .workers import Slot

if TYPE_CHECKING:
    from .admission import Admission
    from .workers import Worker

__all__ = ["SessionStats", "SlotStats", "snapshot"]


@dataclass(frozen=True)
class SlotStats:
    """One worker slot (a core, or a thread of a tensor-parallel group)."""

    #: The slot's index, the NPU core it is pinned to (None: not pinned) and the core mask it
    #: binds (None: the runtime's default).
    index: int
    core: Optional[int]
    core_mask: Optional[int]
    #: ``"idle"``, ``"running"`` (its worker thread runs a task) or ``"inline"`` (a ``run()``
    #: caller runs a task on it, on the caller's thread).
    state: str
    #: Seconds this slot spent running tasks, the running one included: its utilisation over an
    #: interval is the difference of two snapshots divided by the interval.
    busy_s: float
    #: Tasks whose backend call returned results, and those whose backend call raised (counted
    #: just after the outcome is published: a snapshot taken as a Future completes may lag by one).
    completed: int
    failed: int


@dataclass(frozen=True)
class SessionStats:
    """A snapshot of a session's engine. Gauges: ``state``, ``queued``, ``running``,
    ``callback_backlog``, ``waiting_submitters``, ``slots[i].state``. Counters: the rest."""

    #: ``"open"``, ``"closing"``, ``"closed"`` or ``"broken"`` (a worker or callback did not
    #: finish within close()'s deadline and was abandoned; or a session inherited across fork).
    state: str
    #: Tasks waiting in the queue for a worker (at most ``max_queue_size``), and its peak.
    queued: int
    peak_queued: int
    #: Slots running a task now (worker threads and inline ``run()`` callers).
    running: int
    #: ``run_async`` results waiting for their callback (bounded: past 8, submitters wait).
    callback_backlog: int
    #: Submitters (threads and asyncio tasks) waiting for space in the queue.
    waiting_submitters: int
    #: Tasks admitted to the queue (``run_async``, ``submit``, ``arun``, ``run_pipeline``, and a
    #: ``run()`` that found no idle slot), and ``run()`` calls run inline on the caller's thread.
    #: Every task handed to the engine is one of the two.
    submitted: int
    inline_runs: int
    #: Backend calls that returned results, and those that raised, over all slots. Tasks
    #: cancelled or failed by close() before they started are in neither.
    completed: int
    failed: int
    #: Time queued tasks waited between admission and their start: sum, count and the longest
    #: (a summary metric: mean = sum / count). Inline runs do not queue and are not counted.
    queue_wait_s: float
    queue_waits: int
    queue_wait_peak_s: float
    #: Per slot, in slot order.
    slots: tuple[SlotStats, ...]


_SLOT_STATES = {Slot.RUNNING: "running", Slot.BORROWED: "inline"}


def snapshot(
    state: str, admission: Admission, workers: Sequence[Worker], inline_runs: int, now: float
) -> SessionStats:
    """The record of an engine (its lock held by the caller)."""
    slots = tuple(_slot(worker, now) for worker in workers)
    return SessionStats(
        state=state,
        queued=len(admission.queue),
        peak_queued=admission.peak,
        running=sum(slot.state != "idle" for slot in slots),
        callback_backlog=admission.callbacks.backlog,
        waiting_submitters=admission.waiters,
        submitted=admission.submitted,
        inline_runs=inline_runs,
        completed=sum(slot.completed for slot in slots),
        failed=sum(slot.failed for slot in slots),
        queue_wait_s=admission.wait_total,
        queue_waits=admission.waits,
        queue_wait_peak_s=admission.wait_peak,
        slots=slots,
    )


def _slot(worker: Worker, now: float) -> SlotStats:
    state = _SLOT_STATES.get(worker.state, "idle")
    spec = worker.spec
    return SlotStats(
        index=spec.index,
        core=spec.core,
        core_mask=spec.core_mask,
        state=state,
        busy_s=worker.busy + (now - worker.since if state != "idle" else 0.0),
        completed=worker.completed,
        failed=worker.failed,
    )
