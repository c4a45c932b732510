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
* Async admission: an asyncio submitter never holds a thread while it waits for space. It
  registers a ``SpaceWaiter`` whose ``wake`` the engine calls (outside its lock) when admission
  may succeed again; ``aio.submit_async`` retries then. A freed queue place is *claimed* for the
  oldest async waiter (others see it as taken) until that waiter retries, and claims alternate
  with blocking waiters, so neither kind starves the other: threads parked on a condition would
  otherwise win every race against an event loop hop.
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

__all__ = ["Engine", "EngineConfig", "EngineStats", "SpaceWaiter", "State", "CALLBACK_BACKLOG"]

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


class SpaceWaiter:
    """One async submitter waiting for admission (see ``aio.submit_async``).

    ``wake()`` is called from an engine thread, without the engine lock, when admission may
    succeed: it must be quick and thread-safe (``loop.call_soon_threadsafe``), and idempotent. The
    other fields belong to the engine (read and written under its lock), except ``pace_delay``,
    which a failed attempt sets for its caller: seconds until the pacing interval elapses (the
    engine has no timer for it, the caller's event loop has), or None.
    """

    __slots__ = ("wake", "registered", "claim", "pace_delay")

    def __init__(self, wake: Callable[[], None]) -> None:
        self.wake = wake
        self.registered = False  # in the engine's FIFO of waiters
        self.claim = False  # a queue place is held for it until it retries or leaves
        self.pace_delay: Optional[float] = None


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
        # Async waiters: FIFO of registered ones, the set holding a claim, and how many claims
        # (an int, so the admission check stays one addition).
        self._async_waiters: deque[SpaceWaiter] = deque()
        self._claimed: set[SpaceWaiter] = set()
        self._claims = 0
        self._async_last = False  # the last admission after a wait went to an async waiter
        self._peak = 0
        self._submitted = 0
        self._inline = 0
        self._pace_ema = 0.0
        self._pace_next = 0.0
        self._callbacks = CallbackStage(
            self._lock, self._delivered, config.sequential_callbacks, self._wake_waiters
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
        waiter: Optional[SpaceWaiter] = None,
    ) -> Future:
        """Queue a task; its future gets the results. ``blocking=False`` raises
        ``SubmitTimeoutError`` at once instead of waiting for space; so does a ``waiter``, after
        registering it to be woken when space may be free (see ``aio.submit_async``)."""
        future: Future = Future()
        task = Task(inputs, output_indices, future=future, method=method)
        with self._lock:
            self._check_open()
            core = self._next_route()
        self._admit(task, core, "submit", blocking=blocking and waiter is None, waiter=waiter)
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
                waiting_submitters=self._waiting + len(self._async_waiters) + self._claims,
            )

    def timeout_error(self, api: str) -> SubmitTimeoutError:
        """The error of a submit that found no space before its deadline (one message for the
        blocking and the async paths)."""
        return SubmitTimeoutError(
            f"{api} submit timed out after {self._config.submit_timeout_ms} ms: "
            "async queue/callback pipeline is saturated "
            f"(max_queue_size={self._config.max_queue_size})"
        )

    @property
    def submit_timeout_ms(self) -> int:
        return self._config.submit_timeout_ms

    def forget(self, waiter: SpaceWaiter) -> None:
        """Drop ``waiter`` (admitted, timed out, cancelled, closed): unregister it and pass its
        claim on, so a waiter that leaves never holds a queue place or a FIFO entry."""
        with self._lock:
            if waiter.registered:
                waiter.registered = False
                self._async_waiters.remove(waiter)
            if not waiter.claim:
                return
            self._release_claim(waiter)
            if self._waiting:
                self._space.notify_all()
            woken = self._grant()
        self._wake_waiters(woken)

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
                # Every async waiter retries and gets SessionClosedError; they forget() later.
                woken = list(self._async_waiters) + list(self._claimed)
        if closing:
            self._wake_waiters(woken)
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

    def _delivered(self) -> list[SpaceWaiter]:
        """A callback was delivered (lock held): the callback backlog shrank. Returns the async
        waiters to wake once the lock is released."""
        if self._waiting:
            self._space.notify_all()
        return self._grant() if self._async_waiters else []

    def _grant(self) -> list[SpaceWaiter]:
        """Claim free queue places for the oldest async waiters (lock held); returns them, to be
        woken without the lock. While blocking submitters wait too, one claim at a time and only
        when the last admitted waiter was a blocking one: the two kinds take turns."""
        granted: list[SpaceWaiter] = []
        waiters = self._async_waiters
        limit = self._config.max_queue_size
        while waiters and len(self._queue) + self._claims < limit:
            if self._waiting and (self._async_last or granted):
                break
            waiter = waiters.popleft()
            waiter.claim = True
            waiter.registered = False
            self._claimed.add(waiter)
            self._claims += 1
            granted.append(waiter)
        return granted

    def _release_claim(self, waiter: SpaceWaiter) -> None:
        waiter.claim = False
        self._claimed.discard(waiter)
        self._claims -= 1

    def _wake_waiters(self, waiters: Sequence[SpaceWaiter]) -> None:
        """Call each waiter's ``wake`` (lock NOT held). One that cannot be woken (its event loop
        is closed) is forgotten, so its claim passes on instead of holding a place forever."""
        for waiter in waiters:
            try:
                waiter.wake()
            except BaseException:  # noqa: BLE001 - never kill the engine thread that wakes
                self.forget(waiter)

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

    def _has_space(self, callback: bool, now: float, claim: bool = False) -> bool:
        # Places claimed for async waiters count as taken, except for the claimant itself.
        if len(self._queue) + self._claims - claim >= self._config.max_queue_size:
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
        waiter: Optional[SpaceWaiter] = None,
    ) -> None:
        """Queue ``task`` (not holding the lock on entry), waiting for space up to the deadline;
        with a ``waiter``, register it and raise instead of waiting."""
        task.core = core
        deadline = None
        woken: list[SpaceWaiter] = []
        timed_out = False
        with self._lock:
            while True:
                self._check_open()
                now = time.monotonic()
                claim = waiter is not None and waiter.claim
                if self._has_space(callback, now, claim):
                    break
                if waiter is not None:
                    self._park(waiter, claim, now)
                    raise self.timeout_error(api)
                first = deadline is None
                if deadline is None:
                    deadline = now + self._config.submit_timeout_ms / 1000.0
                remaining = deadline - now
                if not blocking or remaining <= 0:
                    if not first and self._async_waiters:
                        woken = self._grant()  # a blocking waiter leaves: its turn passes on
                    timed_out = True
                    break
                if self._config.enable_pacing and now < self._pace_next:
                    remaining = min(remaining, self._pace_next - now)
                self._waiting += 1
                try:
                    self._space.wait(remaining)
                finally:
                    self._waiting -= 1
            if not timed_out:
                # Admission. Only submitters that waited (rare) do the fairness bookkeeping.
                if waiter is not None:
                    if claim:
                        self._release_claim(waiter)
                        self._async_last = True
                    elif waiter.registered:
                        waiter.registered = False
                        self._async_waiters.remove(waiter)
                elif deadline is not None:
                    self._async_last = False
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
                if deadline is None or not self._async_waiters:
                    return
                woken = self._grant()  # a blocking waiter got in: the next place may be theirs
        self._wake_waiters(woken)
        if timed_out:
            raise self.timeout_error(api)

    def _park(self, waiter: SpaceWaiter, claim: bool, now: float) -> None:
        """A waiter's attempt failed: keep its claim or queue it (FIFO), and tell it how long
        pacing alone keeps it out, for its own timer."""
        waiter.pace_delay = None
        if (
            self._config.enable_pacing
            and now < self._pace_next
            and len(self._queue) + self._claims - claim < self._config.max_queue_size
        ):
            waiter.pace_delay = self._pace_next - now  # else a freed place wakes it, no polling
        if not claim and not waiter.registered:
            waiter.registered = True
            self._async_waiters.append(waiter)

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
            woken = engine._grant() if engine._async_waiters else None
            lock.release()
            if woken:
                engine._wake_waiters(woken)
                del woken
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
