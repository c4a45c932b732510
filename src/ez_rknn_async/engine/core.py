"""The engine: bounded admission, one thread per worker slot, orderly shutdown.

All threads and all waits of a session live here; backends are plain synchronous runners.

* Admission: a task is queued only while fewer than ``max_queue_size`` tasks wait to start and
  fewer than ``CALLBACK_BACKLOG`` callback results wait for delivery (and, with pacing, once the
  pacing interval has passed). Otherwise the submitter waits, up to ``submit_timeout_ms`` from one
  deadline, then gets ``SubmitTimeoutError``. Nothing is dropped silently.
* Dispatch: each slot is IDLE (its thread parked on its own condition), WAKING (notified for a
  task), RUNNING (its thread runs a task) or BORROWED (a ``run()`` caller runs a task on the slot
  inline). A submit wakes exactly one idle slot that may take the task, so there is no herd.
* Fast path: a synchronous ``run()`` that finds an idle slot runs the task on the calling thread
  with that slot's runner: no thread hand-off (which costs 100+ microseconds on a small board).
* Shutdown is a state machine: OPEN -> CLOSING (no new tasks; queued ones fail with
  ``SessionClosedError``; running ones finish) -> CLOSED (threads joined, runners closed).
"""

from __future__ import annotations

import atexit
import enum
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..backends.base import Runner, SlotSpec
from ..errors import SessionClosedError, SubmitTimeoutError
from .ordering import CallbackStage
from .tasks import Task

__all__ = ["Engine", "EngineConfig", "EngineStats", "State", "CALLBACK_BACKLOG"]

#: Completed run_async results that may wait for their callback before submitters block (as in
#: the original, whose limit is the same constant).
CALLBACK_BACKLOG = 8
#: How long close() waits for a running task before giving up on its thread (it is a daemon).
_JOIN_TIMEOUT_S = 60.0
_PACING_EMA = 0.05


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
    __slots__ = ("spec", "runner", "state", "wake", "thread")

    def __init__(self, spec: SlotSpec, runner: Runner, lock: threading.Lock) -> None:
        self.spec = spec
        self.runner = runner
        self.state = _Slot.IDLE
        self.wake = threading.Condition(lock)
        self.thread: Optional[threading.Thread] = None


class Engine:
    def __init__(self, slots: Sequence[tuple[SlotSpec, Runner]], config: EngineConfig) -> None:
        if not slots:
            raise ValueError("an engine needs at least one worker slot")
        self._config = config
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._queue: deque[Task] = deque()
        self._workers = [_Worker(spec, runner, self._lock) for spec, runner in slots]
        self._state = State.OPEN
        self._closer: Optional[threading.Thread] = None  # the thread that runs close()
        self._closed_event = threading.Event()
        self._route_counter = 0
        self._waiting = 0
        self._peak = 0
        self._submitted = 0
        self._inline = 0
        self._pace_ema = 0.0
        self._pace_next = 0.0
        self._callbacks = CallbackStage(
            self._lock, self._space.notify_all, config.sequential_callbacks
        )
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

    def run_inline(
        self, inputs: Any, output_indices: Sequence[int], *, method: str = "run"
    ) -> list[Any]:
        """Run a task and return its results; on the calling thread when a slot is idle."""
        worker: Optional[_Worker] = None
        start: Optional[float] = None
        # One try from the borrow on: an interrupt (KeyboardInterrupt) anywhere after it must
        # give the slot back, or it stays BORROWED forever and close() waits for its thread.
        try:
            with self._lock:
                self._check_open()
                core = self._next_route()
                idle = self._idle_worker(core)
                if idle is not None:
                    idle.state = _Slot.BORROWED
                    worker = idle
                    self._inline += 1
            if worker is None:
                future: Future = Future()
                task = Task(inputs, output_indices, future=future, method=method)
                self._admit(task, core, "run")
                try:
                    return future.result()
                except BaseException:
                    future.cancel()  # interrupted (KeyboardInterrupt): it must not run later
                    raise
            start = time.monotonic()
            return getattr(worker.runner, method)(inputs, output_indices)
        finally:
            if worker is not None:
                elapsed = None if start is None else time.monotonic() - start
                with self._lock:
                    worker.state = _Slot.IDLE
                    if elapsed is not None:
                        self._pace_sample(elapsed)
                    if self._queue or self._state is not State.OPEN:
                        self._wake(worker)

    def submit(
        self,
        inputs: Any,
        output_indices: Sequence[int],
        *,
        blocking: bool = True,
        method: str = "run",
    ) -> Future:
        """Queue a task; its future gets the results. ``blocking=False`` raises
        ``SubmitTimeoutError`` at once instead of waiting for space."""
        future: Future = Future()
        task = Task(inputs, output_indices, future=future, method=method)
        with self._lock:
            self._check_open()
            core = self._next_route()
        self._admit(task, core, "submit", blocking=blocking)
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
        with self._lock:
            self._check_open()
            core = self._next_route()
        self._admit(task, core, "run_async", callback=True)

    def stats(self) -> EngineStats:
        with self._lock:
            return EngineStats(
                state=self._state.value,
                queued=len(self._queue),
                peak_queued=self._peak,
                running=sum(w.state in (_Slot.RUNNING, _Slot.BORROWED) for w in self._workers),
                callback_backlog=self._callbacks.backlog,
                submitted=self._submitted,
                inline_runs=self._inline,
                waiting_submitters=self._waiting,
            )

    def close(self) -> bool:
        """Stop accepting tasks, fail the queued ones, let running ones finish, join threads,
        deliver every callback, close the runners. Idempotent; safe from a callback.

        Returns True for the call that closed the engine. A call from another thread while a
        close is under way returns once the engine is closed (its caller may then free what the
        running tasks use); from an engine thread or the closing thread itself, at once.
        """
        current = threading.current_thread()
        with self._lock:
            closing = self._state is State.OPEN
            if closing:
                self._state = State.CLOSING
                self._closer = current
                flushed = list(self._queue)
                self._queue.clear()
                for worker in self._workers:
                    worker.wake.notify()
                self._space.notify_all()
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

    def _on_engine_thread(self, thread: threading.Thread) -> bool:
        """Whether ``thread`` is one that ``close()`` joins (a worker or the callback thread)."""
        return thread is self._callbacks.thread or any(w.thread is thread for w in self._workers)

    def _check_open(self) -> None:
        if self._state is not State.OPEN:
            raise SessionClosedError("the session is closed")

    def _next_route(self) -> Optional[int]:
        routes = self._config.routes
        if routes is None:
            return None
        core = routes[self._route_counter % len(routes)]
        self._route_counter += 1
        return core

    def _idle_worker(self, core: Optional[int]) -> Optional[_Worker]:
        for worker in self._workers:
            if worker.state is _Slot.IDLE and (core is None or worker.spec.core == core):
                return worker
        return None

    def _wake(self, worker: _Worker) -> None:
        worker.state = _Slot.WAKING
        worker.wake.notify()

    def _has_space(self, callback: bool, now: float) -> bool:
        if len(self._queue) >= self._config.max_queue_size:
            return False
        # A callback submitting from the callback thread must not wait for itself to deliver.
        if (
            callback
            and self._callbacks.backlog >= CALLBACK_BACKLOG
            and not self._callbacks.on_thread()
        ):
            return False
        return not (self._config.enable_pacing and now < self._pace_next)

    def _admit(
        self,
        task: Task,
        core: Optional[int],
        api: str,
        *,
        blocking: bool = True,
        callback: bool = False,
    ) -> None:
        """Queue ``task`` (not holding the lock on entry), waiting for space up to the deadline."""
        task.core = core
        deadline = None
        with self._lock:
            while True:
                self._check_open()
                now = time.monotonic()
                if self._has_space(callback, now):
                    break
                if deadline is None:
                    deadline = now + self._config.submit_timeout_ms / 1000.0
                remaining = deadline - now
                if not blocking or remaining <= 0:
                    raise SubmitTimeoutError(
                        f"{api} submit timed out after {self._config.submit_timeout_ms} ms: "
                        "async queue/callback pipeline is saturated "
                        f"(max_queue_size={self._config.max_queue_size})"
                    )
                if self._config.enable_pacing and now < self._pace_next:
                    remaining = min(remaining, self._pace_next - now)
                self._waiting += 1
                try:
                    self._space.wait(remaining)
                finally:
                    self._waiting -= 1
            if callback:
                task.seq = self._callbacks.take_seq()
            if self._config.enable_pacing and self._pace_ema > 0:
                self._pace_next = now + self._pace_ema / self._config.pacing_cores
            self._queue.append(task)
            self._submitted += 1
            if len(self._queue) > self._peak:
                self._peak = len(self._queue)
            worker = self._idle_worker(core)
            if worker is not None:
                self._wake(worker)

    def _take(self, worker: _Worker) -> Optional[Task]:
        """The oldest queued task this worker may run."""
        queue = self._queue
        if not queue:
            return None
        core = worker.spec.core
        head = queue[0]
        if head.core is None or head.core == core:
            return queue.popleft()
        for index, task in enumerate(queue):
            if task.core is None or task.core == core:
                del queue[index]
                return task
        return None

    def _pace_sample(self, elapsed: float) -> None:
        if self._config.enable_pacing:
            ema = self._pace_ema
            self._pace_ema = (
                elapsed if ema == 0 else (1 - _PACING_EMA) * ema + _PACING_EMA * elapsed
            )


def _worker_loop(engine: Engine, worker: _Worker) -> None:
    """One slot's thread: take a task it may run, run it without the lock, repeat.

    It exits once the engine is closing and its slot is neither running nor lent to a ``run()``
    caller, so ``close()`` never releases a runner still in use.
    """
    lock = engine._lock
    runner = worker.runner
    with lock:
        while True:
            task = None
            if worker.state is not _Slot.BORROWED:
                task = engine._take(worker)
            if task is None:
                if worker.state is not _Slot.BORROWED:
                    if engine._state is not State.OPEN:
                        return
                    worker.state = _Slot.IDLE
                worker.wake.wait()
                continue
            worker.state = _Slot.RUNNING
            if engine._waiting:
                engine._space.notify_all()
            lock.release()
            start = time.monotonic()
            try:
                task.run(runner)
            finally:
                elapsed = time.monotonic() - start
                del task
                lock.acquire()
                engine._pace_sample(elapsed)


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
