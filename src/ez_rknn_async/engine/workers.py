"""Worker slots: one thread per slot, taking tasks from the queue and running them.

Each slot is IDLE (its thread parked on its own condition), WAKING (notified for a task), RUNNING
(its thread runs a task) or BORROWED (a ``run()`` caller runs a task on the slot inline). A submit
wakes one idle slot that may take the task, so there is no herd; and while a woken slot has not
yet taken its task, further tasks any slot may run wake nobody: that slot, once it takes one, wakes
the next idle slot if tasks are still queued. A burst thus wakes the workers it needs one after
another, and with tasks shorter than a thread switch (the GIL serialises their Python part anyway)
it wakes few: each wake-up costs a switch to a thread that may find nothing left to do.

A running task is also in its slot's ``inflight`` list, and whoever pops it publishes its outcome:
the worker when the runner returns, or ``close()`` when the worker is still inside the backend at
the close deadline (the task then gets ``SessionBrokenError`` and the worker's late outcome is
dropped). ``list.pop`` is atomic, so exactly one of them publishes, without a lock on the hot path.
"""

from __future__ import annotations

import enum
import threading
import time
from typing import TYPE_CHECKING, Optional

from ..backends.base import Runner, SlotSpec
from .lifecycle import State
from .tasks import Task

if TYPE_CHECKING:
    from .core import Engine

__all__ = ["Slot", "Worker", "worker_loop"]


class Slot(enum.Enum):
    IDLE = 0
    WAKING = 1
    RUNNING = 2
    BORROWED = 3


class Worker:
    """One slot: its runner, its thread, and its counters (read under the engine lock)."""

    __slots__ = (
        "spec",
        "runner",
        "state",
        "wake",
        "thread",
        "since",
        "inflight",
        "busy",
        "completed",
        "failed",
    )

    def __init__(self, spec: SlotSpec, runner: Runner, lock: threading.Lock) -> None:
        self.spec = spec
        self.runner = runner
        self.state = Slot.IDLE
        self.wake = threading.Condition(lock)
        self.thread: Optional[threading.Thread] = None
        self.since = 0.0  # monotonic() when the slot's current task started
        self.inflight: list[Task] = []  # the task its thread runs, until claimed (see module doc)
        self.busy = 0.0  # seconds spent running tasks (finished ones)
        self.completed = 0  # tasks whose runner returned
        self.failed = 0  # tasks whose runner raised

    @property
    def name(self) -> str:
        return self.thread.name if self.thread is not None else f"slot {self.spec.index}"


def worker_loop(engine: Engine, worker: Worker) -> None:
    """One slot's thread: take a task it may run, run it without the lock, repeat.

    It exits once the engine is no longer open and its slot is neither running nor lent to a
    ``run()`` caller, so ``close()`` never releases a runner still in use.
    """
    lock = engine._lock
    admission = engine._admission
    runner = worker.runner
    core = worker.spec.core
    inflight = worker.inflight
    claim = inflight.pop  # see the module doc: IndexError once close() took the task over
    queue = admission.queue
    if len(engine._workers) > 1 and engine._config.routes is None:
        # Another worker can always run what a callback waits for (ordering.py).
        engine._callbacks.allow_inline()
    with lock:
        while True:
            task = None
            if worker.state is Slot.WAKING:
                engine._waking -= 1
                worker.state = Slot.IDLE
            if worker.state is not Slot.BORROWED:
                task = admission.take(core)
            if task is None:
                if worker.state is not Slot.BORROWED:
                    worker.state = Slot.IDLE
                    if engine._state is not State.OPEN:
                        return
                worker.wake.wait()
                continue
            worker.state = Slot.RUNNING
            worker.since = start = time.monotonic()  # stats(): the running task's busy time
            if queue:
                engine._dispatch(queue[0].core)  # the next woken worker takes the rest
            inflight.append(task)
            woken = admission.grant() if admission.async_waiters else None
            lock.release()
            if woken:
                admission.wake_waiters(woken)
                del woken
            waited = start - task.queued_at
            ok = None
            try:
                ok = task.run(runner, claim)
            finally:
                elapsed = time.monotonic() - start
                del task
                lock.acquire()
                inflight.clear()  # a cancelled task was never claimed
                if ok is not None:  # (inline, not a method call: this is the hot path)
                    worker.busy += elapsed
                    if ok:
                        worker.completed += 1
                    else:
                        worker.failed += 1
                admission.ran(elapsed, waited)
