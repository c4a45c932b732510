"""The engine: worker slots, one thread each, and the session lifecycle.

All threads and all waits of a session live in ``engine/``; backends are plain synchronous
runners. Admission (the bounded queue, pacing, async waiters) is ``admission.py``; callback
ordering ``ordering.py``; this module owns the workers and shutdown.

* Dispatch: each slot is IDLE (its thread parked on its own condition), WAKING (notified for a
  task), RUNNING (its thread runs a task) or BORROWED (a ``run()`` caller runs a task on the slot
  inline). A submit wakes one idle slot that may take the task, so there is no herd; and while a
  woken slot has not yet taken its task, further tasks any slot may run wake nobody: that slot,
  once it takes one, wakes the next idle slot if tasks are still queued. A burst thus wakes the
  workers it needs one after another, and with tasks shorter than a thread switch (the GIL
  serialises their Python part anyway) it wakes few: each wake-up costs a switch to a thread
  that may find nothing left to do.
* Fast path: a synchronous ``run()`` that finds an idle slot runs its task on the calling thread
  with that slot's runner, through the same ``Task.run`` as the workers: no thread hand-off (which
  costs 100+ microseconds on a small board). The slot is given back even if a KeyboardInterrupt
  lands anywhere in the call.
* Shutdown is a state machine: OPEN -> CLOSING (no new tasks; queued ones fail with
  ``SessionClosedError``; running ones finish) -> CLOSED (threads joined, runners closed).
"""

from __future__ import annotations

import atexit
import enum
import threading
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..backends.base import Runner, SlotSpec
from ..errors import SessionClosedError, SubmitTimeoutError
from .admission import CALLBACK_BACKLOG, Admission, SpaceWaiter
from .tasks import Task

__all__ = ["Engine", "EngineConfig", "EngineStats", "State", "CALLBACK_BACKLOG"]

#: How long close() waits for a running task before giving up on its thread (it is a daemon).
_JOIN_TIMEOUT_S = 60.0


class State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class _Slot(enum.Enum):
    IDLE = 0
    WAKING = 1
    RUNNING = 2
    BORROWED = 3


@dataclass(frozen=True)
class EngineConfig:
    max_queue_size: int = 3
    submit_timeout_ms: int = 10000
    sequential_callbacks: bool = True
    enable_pacing: bool = False
    #: Core sequence tasks are bound to (weighted schedule), or None: any worker takes any task.
    routes: Optional[tuple[int, ...]] = None
    #: Distinct cores, for the pacing interval (EMA / cores).
    pacing_cores: int = 1


@dataclass(frozen=True)
class EngineStats:
    """A snapshot for benchmarks and tests, so the hot path needs no logging."""

    state: str
    queued: int
    peak_queued: int
    running: int
    callback_backlog: int
    submitted: int
    inline_runs: int
    waiting_submitters: int


class _Worker:
    __slots__ = ("spec", "runner", "state", "wake", "thread", "since")

    def __init__(self, spec: SlotSpec, runner: Runner, lock: threading.Lock) -> None:
        self.spec = spec
        self.runner = runner
        self.state = _Slot.IDLE
        self.wake = threading.Condition(lock)
        self.thread: Optional[threading.Thread] = None
        self.since = 0.0  # monotonic() when the slot's current task started


class Engine:
    def __init__(self, slots: Sequence[tuple[SlotSpec, Runner]], config: EngineConfig) -> None:
        if not slots:
            raise ValueError("an engine needs at least one worker slot")
        self._config = config
        self._lock = threading.Lock()
        self._workers = [_Worker(spec, runner, self._lock) for spec, runner in slots]
        self._admission = Admission(self._lock, config, self._check_open, self._dispatch)
        self._callbacks = self._admission.callbacks
        self._state = State.OPEN
        self._closer: Optional[threading.Thread] = None  # the thread that runs close()
        self._closed_event = threading.Event()
        self._inline = 0
        self._waking = 0  # slots notified that have not taken a task yet
        for worker in self._workers:
            core = "auto" if worker.spec.core is None else worker.spec.core
            worker.thread = threading.Thread(
                target=_worker_loop,
                args=(self, worker),
                name=f"EzRknn_W{worker.spec.index}_C{core}",
                daemon=True,
            )
            worker.thread.start()
        _LIVE_ENGINES.add(self)

    # -- public API -------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def slot_specs(self) -> list[SlotSpec]:
        return [worker.spec for worker in self._workers]

    @property
    def submit_timeout_ms(self) -> int:
        return self._config.submit_timeout_ms

    def run_inline(
        self, inputs: Any, output_indices: Sequence[int], *, method: str = "run"
    ) -> list[Any]:
        """Run a task and return its results; on the calling thread when a slot is idle."""
        task = Task(inputs, output_indices, method=method)
        try:
            worker = self._borrow(task)
            if worker is None:
                return self._run_queued(task)
            try:
                task.run(worker.runner)
            finally:
                self._give_back(task)
            return task.outcome()
        finally:
            # A KeyboardInterrupt between the borrow and the give-back above (or inside it)
            # must not leave the slot BORROWED forever: give it back here then.
            if task.slot is not None:
                self._give_back(task)

    def submit(
        self,
        inputs: Any,
        output_indices: Sequence[int],
        *,
        blocking: bool = True,
        method: str = "run",
        waiter: Optional[SpaceWaiter] = None,
    ) -> Future:
        """Queue a task; its future gets the results. ``blocking=False`` raises
        ``SubmitTimeoutError`` at once instead of waiting for space; so does a ``waiter``, after
        registering it to be woken when space may be free (see ``aio.submit_async``)."""
        future: Future = Future()
        task = Task(inputs, output_indices, future=future, method=method)
        self._route(task)
        self._admission.admit(task, "submit", blocking=blocking and waiter is None, waiter=waiter)
        return future

    def submit_callback(
        self,
        inputs: Any,
        output_indices: Sequence[int],
        callback: Callable[..., Any],
        user_data: Any,
        *,
        method: str = "run",
    ) -> None:
        """Queue a ``run_async`` task: ``callback(results, user_data, err)`` on the callback
        thread later, in submission order with ``sequential_callbacks``."""
        complete = self._callbacks.complete

        def deliver(task: Task, results: Any, exc: Optional[BaseException]) -> None:
            err = "" if exc is None else _message(exc)
            complete(task.seq, (callback, results, user_data, err))

        task = Task(inputs, output_indices, deliver=deliver, method=method)
        self._route(task)
        self._admission.admit(task, "run_async", callback=True)

    def stats(self) -> EngineStats:
        with self._lock:
            admission = self._admission
            return EngineStats(
                state=self._state.value,
                queued=len(admission.queue),
                peak_queued=admission.peak,
                running=sum(w.state in (_Slot.RUNNING, _Slot.BORROWED) for w in self._workers),
                callback_backlog=self._callbacks.backlog,
                submitted=admission.submitted,
                inline_runs=self._inline,
                waiting_submitters=admission.waiters,
            )

    def timeout_error(self, api: str) -> SubmitTimeoutError:
        """The error of an async submit that found no space before its deadline."""
        with self._lock:
            return self._admission.timeout_error(api)

    def forget(self, waiter: SpaceWaiter) -> None:
        """Drop an async space waiter that leaves (see ``Admission.forget``)."""
        self._admission.forget(waiter)

    def close(self) -> bool:
        """Stop accepting tasks, fail the queued ones, let running ones finish, join threads,
        deliver every callback, close the runners. Idempotent; safe from a callback.

        Returns True for the call that closed the engine. A call from another thread while a
        close is under way returns once the engine is closed (its caller may then free what the
        running tasks use); from an engine thread or the closing thread itself, at once.
        """
        current = threading.current_thread()
        admission = self._admission
        with self._lock:
            closing = self._state is State.OPEN
            if closing:
                self._state = State.CLOSING
                self._closer = current
                flushed = list(admission.queue)
                admission.queue.clear()
                for worker in self._workers:
                    worker.wake.notify()
                admission.space.notify_all()
                # Every async waiter retries and gets SessionClosedError; they forget() later.
                woken = list(admission.async_waiters) + list(admission.claimed)
        if closing:
            admission.wake_waiters(woken)
        if not closing:
            if current is not self._closer and not self._on_engine_thread(current):
                self._closed_event.wait()
            return False
        try:
            closed = SessionClosedError("session closed before the task started")
            for task in flushed:
                task.fail(closed)
            for worker in self._workers:
                if worker.thread is not None and worker.thread is not current:
                    worker.thread.join(_JOIN_TIMEOUT_S)
            self._callbacks.close()
            if not self._callbacks.on_thread():
                self._callbacks.thread.join(_JOIN_TIMEOUT_S)
            for worker in self._workers:
                worker.runner.close()
            with self._lock:
                self._state = State.CLOSED
        finally:
            self._closed_event.set()
        _LIVE_ENGINES.discard(self)
        return True

    # -- internals (called with the lock held unless said otherwise) ------------------------

    def _check_open(self) -> None:
        if self._state is not State.OPEN:
            raise SessionClosedError("the session is closed")

    def _route(self, task: Task) -> None:
        """Bind ``task`` to the next core of a weighted schedule (lock NOT held)."""
        with self._lock:
            self._check_open()
            task.core = self._admission.next_route()

    def _borrow(self, task: Task) -> Optional[_Worker]:
        """Lend an idle slot that may run ``task`` to the calling thread (lock NOT held), or
        None (the task is then routed for the queue)."""
        with self._lock:
            self._check_open()
            task.core = core = self._admission.next_route()
            for worker in self._workers:
                if worker.state is _Slot.IDLE and (core is None or worker.spec.core == core):
                    # One line: the slot is lent and the task knows it, or neither.
                    worker.state, task.slot, worker.since = _Slot.BORROWED, worker, time.monotonic()
                    self._inline += 1
                    return worker
        return None

    def _give_back(self, task: Task) -> None:
        """Return the slot ``task`` borrowed (lock NOT held). Idempotent, so a second attempt
        after an interrupted one is harmless."""
        with self._lock:
            worker = task.slot
            if worker is None:
                return
            worker.state, task.slot = _Slot.IDLE, None
            self._admission.pace_sample(time.monotonic() - worker.since)
            if self._admission.queue or self._state is not State.OPEN:
                self._wake(worker)

    def _run_queued(self, task: Task) -> list[Any]:
        """No idle slot: queue the task for a worker and wait for it (lock NOT held)."""
        future: Future = Future()
        task.future = future
        self._admission.admit(task, "run")
        try:
            return future.result()
        except BaseException:
            future.cancel()  # interrupted (KeyboardInterrupt): it must not run later
            raise

    def _dispatch(self, core: Optional[int]) -> None:
        """A task for ``core`` was queued: wake one idle worker that may take it, unless the task
        may run anywhere and a woken worker is on its way (it wakes the next, see the module
        docstring)."""
        if core is None and self._waking:
            return
        for worker in self._workers:
            if worker.state is _Slot.IDLE and (core is None or worker.spec.core == core):
                self._wake(worker)
                return

    def _wake(self, worker: _Worker) -> None:
        if worker.state is not _Slot.WAKING:
            self._waking += 1
            worker.state = _Slot.WAKING
        worker.wake.notify()

    def _on_engine_thread(self, thread: threading.Thread) -> bool:
        """Whether ``thread`` is one that ``close()`` joins (a worker or the callback thread)."""
        return thread is self._callbacks.thread or any(w.thread is thread for w in self._workers)


def _worker_loop(engine: Engine, worker: _Worker) -> None:
    """One slot's thread: take a task it may run, run it without the lock, repeat.

    It exits once the engine is closing and its slot is neither running nor lent to a ``run()``
    caller, so ``close()`` never releases a runner still in use.
    """
    lock = engine._lock
    admission = engine._admission
    queue = admission.queue
    runner = worker.runner
    core = worker.spec.core
    timed = engine._config.enable_pacing  # the run time only feeds pacing
    if len(engine._workers) > 1 and engine._config.routes is None:
        # Another worker can always run what a callback waits for (ordering.py).
        engine._callbacks.allow_inline()
    with lock:
        while True:
            task = None
            if worker.state is _Slot.WAKING:
                engine._waking -= 1
                worker.state = _Slot.IDLE
            if worker.state is not _Slot.BORROWED:
                task = admission.take(core)
            if task is None:
                if worker.state is not _Slot.BORROWED:
                    if engine._state is not State.OPEN:
                        return
                    worker.state = _Slot.IDLE
                worker.wake.wait()
                continue
            worker.state = _Slot.RUNNING
            if queue:
                engine._dispatch(queue[0].core)  # the next woken worker takes the rest
            woken = admission.grant() if admission.async_waiters else None
            lock.release()
            if woken:
                admission.wake_waiters(woken)
                del woken
            start = time.monotonic() if timed else 0.0
            try:
                task.run(runner)
            finally:
                del task
                lock.acquire()
                if timed:
                    admission.pace_sample(time.monotonic() - start)


def _message(exc: BaseException) -> str:
    try:
        text = str(exc)
    except BaseException:  # noqa: BLE001 - a broken __str__ must not lose the outcome
        text = ""
    return text if text else type(exc).__name__


_LIVE_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _close_live_engines() -> None:
    """Interpreter exit: let running native calls finish before daemon threads are frozen."""
    for engine in list(_LIVE_ENGINES):
        engine.close()
