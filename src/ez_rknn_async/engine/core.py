"""The engine: the session's worker slots, its calling modes and its lifecycle.

All threads and all waits of a session live in ``engine/``; backends are plain synchronous
runners. Admission (the bounded queue, pacing, async waiters) is ``admission.py``, the worker
threads ``workers.py``, callback ordering ``ordering.py``, states, exit and fork
``lifecycle.py``; this module ties them together.

* Fast path: a synchronous ``run()`` that finds an idle slot runs its task on the calling thread
  with that slot's runner, through the same ``Task.run`` as the workers: no thread hand-off (which
  costs 100+ microseconds on a small board). The slot is given back even if a KeyboardInterrupt
  lands anywhere in the call: a Ctrl-C costs that call, never a slot.
* ``close(timeout)`` has one ``monotonic()`` deadline for everything (default
  ``DEFAULT_CLOSE_TIMEOUT_S``): queued tasks fail with ``SessionClosedError``, running ones may
  finish, callbacks are delivered. A thread still inside the backend or a user callback at the
  deadline is abandoned, never freed under: its runner (and the session's backend) are leaked on
  purpose, its task gets ``SessionBrokenError`` (a ``run_async`` callback too: nothing is lost),
  the engine becomes BROKEN (one warning; ``stats().state``) and every later call raises.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..backends.base import Runner, SlotSpec
from ..errors import SessionBrokenError, SessionClosedError, SubmitTimeoutError
from . import lifecycle
from .admission import CALLBACK_BACKLOG, Admission, SpaceWaiter
from .completion import Completion
from .lifecycle import DEFAULT_CLOSE_TIMEOUT_S, State, close_timeout, join_until
from .stats import SessionStats, snapshot
from .tasks import Task
from .workers import Slot, Worker, worker_loop

__all__ = [
    "Engine",
    "EngineConfig",
    "State",
    "CALLBACK_BACKLOG",
    "DEFAULT_CLOSE_TIMEOUT_S",
]


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


class Engine:
    """``slots``: each worker's spec and runner. ``retain``: objects the engine keeps alive as
    long as it lives (the backend the runners came from: a forked child leaks an inherited
    engine with everything it holds, never freeing the parent's native state)."""

    def __init__(
        self,
        slots: Sequence[tuple[SlotSpec, Runner]],
        config: EngineConfig,
        retain: Sequence[Any] = (),
    ) -> None:
        if not slots:
            raise ValueError("an engine needs at least one worker slot")
        self._config = config
        self._retain = tuple(retain)
        self._lock = threading.Lock()
        self._workers = [Worker(spec, runner, self._lock) for spec, runner in slots]
        self._admission = Admission(self._lock, config, self._check_open, self._dispatch)
        self._callbacks = self._admission.callbacks
        self._state = State.OPEN
        self._pid = os.getpid()
        self._refusal: Optional[str] = None  # why a BROKEN engine refuses calls
        self._inherited = False  # a forked child's copy: never touch a lock or a runner
        self._closer: Optional[threading.Thread] = None  # the thread that runs close()
        self._flushed: list[Task] = []  # queued tasks close() fails
        self._closed_event = threading.Event()
        self._inline = 0
        self._waking = 0  # slots notified that have not taken a task yet
        for worker in self._workers:
            core = "auto" if worker.spec.core is None else worker.spec.core
            worker.thread = threading.Thread(
                target=worker_loop,
                args=(self, worker),
                name=f"EzRknn_W{worker.spec.index}_C{core}",
                daemon=True,
            )
            worker.thread.start()
        lifecycle.register(self)

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

    def check_open(self) -> None:
        """Raise unless the engine takes tasks: ``SessionBrokenError`` (abandoned workers, or a
        forked child's inherited copy) or ``SessionClosedError``. Takes no lock."""
        state = self._state
        if state is State.OPEN:
            return
        if state is State.BROKEN:
            raise SessionBrokenError(self._refusal)
        raise SessionClosedError("the session is closed")

    def run_inline(
        self, inputs: Any, output_indices: Sequence[int], *, method: str = "run"
    ) -> list[Any]:
        """Run a task and return its results; on the calling thread when a slot is idle."""
        task = Task(inputs, output_indices, method)
        try:
            worker = self._borrow(task)
            if worker is None:
                return self._run_queued(task)
            try:
                task.run(worker.runner)
            finally:
                self._give_back(task)
            if task.error is None:
                return task.results  # type: ignore[return-value]  # run() set them
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
        task = Task(inputs, output_indices, method, future=future)
        self._admission.admit(task, "submit", blocking=blocking and waiter is None, waiter=waiter)
        return future

    def enqueue(self, inputs: Any, output_indices: Sequence[int], api: str) -> Completion:
        """Queue a task whose outcome only the caller waits for (``run_pipeline``): a
        ``Completion``, a Future without the machinery nobody uses there (completion.py).
        ``api`` names the call in a timeout error."""
        completion = Completion()
        self._admission.admit(Task(inputs, output_indices, future=completion), api)
        return completion

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

        task = Task(inputs, output_indices, method, deliver=deliver)
        self._admission.admit(task, "run_async", callback=True)

    def stats(self) -> SessionStats:
        """One consistent snapshot (see ``stats.py``)."""
        if self._inherited:
            self.check_open()  # a parent thread may have held the lock at fork()
        with self._lock:
            return snapshot(
                self._state.value, self._admission, self._workers, self._inline, time.monotonic()
            )

    def timeout_error(self, api: str) -> SubmitTimeoutError:
        """The error of an async submit that found no space before its deadline."""
        with self._lock:
            return self._admission.timeout_error(api)

    def forget(self, waiter: SpaceWaiter) -> None:
        """Drop an async space waiter that leaves (see ``Admission.forget``)."""
        self._admission.forget(waiter)

    def close(self, timeout: Optional[float] = None) -> bool:
        """Stop accepting tasks, fail the queued ones, let running ones finish until one
        deadline ``timeout`` seconds from now (default ``DEFAULT_CLOSE_TIMEOUT_S``), deliver the
        callbacks, close the runners; or, past the deadline, abandon what is still running
        (BROKEN, see the module doc). Idempotent; safe from a callback.

        Returns True for the call that closed the engine. A call from another thread while a
        close is under way returns once that close is over (its caller may then free what the
        running tasks use); from an engine thread or the closing thread itself, at once.
        """
        deadline = time.monotonic() + close_timeout(timeout)
        if self._inherited:
            return False
        if self.begin_close():
            self.finish_close(deadline)
            return True
        current = threading.current_thread()
        if current is not self._closer and not self._on_engine_thread(current):
            self._closed_event.wait(max(0.0, deadline - time.monotonic()))
        return False

    def closed_by_current_thread(self) -> bool:
        """Whether this thread's ``close()`` took the engine out of OPEN and saw it to CLOSED or
        BROKEN (so its caller owns what follows, even when that close() raised an interrupt)."""
        return self._closer is threading.current_thread() and self._state in (
            State.CLOSED,
            State.BROKEN,
        )

    # -- lifecycle (lifecycle.py calls these too) -------------------------------------------

    def begin_close(self) -> bool:
        """OPEN -> CLOSING: take the queue, wake every worker and waiter. False if not open."""
        admission = self._admission
        with self._lock:
            if self._state is not State.OPEN:
                return False
            self._state = State.CLOSING
            self._closer = threading.current_thread()
            self._flushed = list(admission.queue)
            admission.queue.clear()
            for worker in self._workers:
                worker.wake.notify()
            admission.space.notify_all()
            # Every async waiter retries and gets SessionClosedError; they forget() later.
            woken = list(admission.async_waiters) + list(admission.claimed)
        admission.wake_waiters(woken)
        return True

    def finish_close(self, deadline: float) -> None:
        """CLOSING -> CLOSED, or BROKEN if a thread is still busy at ``deadline``."""
        current = threading.current_thread()
        interrupt: list[BaseException] = []

        def wait(thread: threading.Thread) -> None:
            # A Ctrl-C while waiting makes the deadline now: the close goes on without waiting
            # (never left CLOSING, with futures unresolved) and the interrupt is raised after.
            nonlocal deadline
            try:
                join_until(thread, deadline)
            except BaseException as exc:  # noqa: BLE001 - re-raised once the close is done
                interrupt.append(exc)
                deadline = time.monotonic()

        try:
            flushed, self._flushed = self._flushed, []
            closed = SessionClosedError("session closed before the task started")
            for task in flushed:
                task.fail(closed)
            for worker in self._workers:
                if worker.thread is not None and worker.thread is not current:
                    wait(worker.thread)
            # Stuck: still inside its runner (or lent to a run() caller). A thread that is only
            # on its way out is not waited for: it never touches its runner again.
            with self._lock:
                stuck = [
                    worker
                    for worker in self._workers
                    if worker.state in (Slot.RUNNING, Slot.BORROWED)
                    and worker.thread is not current
                ]
            errors = self._abandon(stuck) if stuck else 0
            self._callbacks.close()
            thread = self._callbacks.thread
            callback_stuck = False
            # Not from inside a callback, on that thread or on a worker delivering it: the
            # callback thread ends once that callback has returned.
            if not self._callbacks.on_thread():
                wait(thread)
                with self._lock:
                    callback_stuck = self._callbacks.stuck(deadline, errors)
            if stuck or callback_stuck:
                self._break(stuck, callback_stuck)
            else:
                for worker in self._workers:
                    worker.runner.close()
                with self._lock:
                    self._state = State.CLOSED
            if interrupt:
                raise interrupt[0]
        finally:
            self._closed_event.set()
            lifecycle.unregister(self)

    def inherited(self) -> None:
        """Called in a forked child: this engine's threads exist only in the parent."""
        self._inherited = True
        self._refusal = (
            f"this session was created in process {self._pid}; this forked child "
            f"(process {os.getpid()}) cannot use it, its worker threads exist only in the "
            "parent: create sessions after fork"
        )
        self._state = State.BROKEN

    # -- internals (called with the lock held unless said otherwise) ------------------------

    def _abandon(self, stuck: list[Worker]) -> int:
        """Fail the tasks of workers still inside their runner at the deadline (lock NOT held).
        Each task is claimed from its worker first, so the worker's late outcome is dropped.
        Returns how many of them were ``run_async`` tasks (each adds an error to deliver)."""
        errors = 0
        for worker in stuck:
            try:
                task = worker.inflight.pop()
            except IndexError:
                continue  # an inline run on a borrowed slot (its caller gets its outcome), or
                # the worker claimed its task just now and publishes it itself
            task.abandon(
                SessionBrokenError(
                    f"the inference was still running on {worker.name} at close()'s deadline; "
                    "its worker was abandoned (the session leaked it rather than free what it "
                    "is inside)"
                )
            )
            errors += task.deliver is not None
        return errors

    def _break(self, stuck: list[Worker], callback_stuck: bool) -> None:
        """CLOSING -> BROKEN: leak the runners (and, in the session, the backend); warn once."""
        busy = [worker.name for worker in stuck]
        if callback_stuck:
            busy.append(f"{self._callbacks.thread.name} (a run_async callback)")
        self._refusal = (
            f"the session is broken: {', '.join(busy)} did not finish within close()'s deadline "
            "and was abandoned; its runner and the backend were leaked on purpose"
        )
        with self._lock:
            self._state = State.BROKEN
        warnings.warn(self._refusal, RuntimeWarning, stacklevel=5)  # session.close's caller

    def _check_open(self) -> None:
        if self._state is not State.OPEN:
            self.check_open()

    def _borrow(self, task: Task) -> Optional[Worker]:
        """Lend an idle slot that may run ``task`` to the calling thread (lock NOT held), or
        None (the task is then routed for the queue)."""
        with self._lock:
            if self._state is not State.OPEN:
                self.check_open()
            routes = self._config.routes  # (inline: this is the hot path of run())
            task.core = core = None if routes is None else self._admission.next_route()
            for worker in self._workers:
                if worker.state is Slot.IDLE and (core is None or worker.spec.core == core):
                    # One line: the slot is lent and the task knows it, or neither.
                    worker.state, task.slot, worker.since = Slot.BORROWED, worker, time.monotonic()
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
            worker.state, task.slot = Slot.IDLE, None
            elapsed = time.monotonic() - worker.since
            if task.error is not None:
                worker.failed += 1
            elif task.results is not None:
                worker.completed += 1
            worker.busy += elapsed
            if self._config.enable_pacing:
                self._admission.pace_sample(elapsed)
            if self._admission.queue or self._state is not State.OPEN:
                self._wake(worker)

    def _run_queued(self, task: Task) -> list[Any]:
        """No idle slot: queue the task for a worker and wait for it (lock NOT held)."""
        completion = task.future = Completion()
        self._admission.admit(task, "run", routed=True)  # _borrow routed it
        try:
            return completion.result()  # type: ignore[no-any-return]
        except BaseException:
            completion.cancel()  # interrupted (KeyboardInterrupt): it must not run later
            raise

    def _dispatch(self, core: Optional[int]) -> None:
        """A task for ``core`` was queued: wake one idle worker that may take it, unless the task
        may run anywhere and a woken worker is on its way (it wakes the next: workers.py)."""
        if core is None and self._waking:
            return
        for worker in self._workers:
            if worker.state is Slot.IDLE and (core is None or worker.spec.core == core):
                self._wake(worker)
                return

    def _wake(self, worker: Worker) -> None:
        if worker.state is not Slot.WAKING:
            self._waking += 1  # the worker's thread counts it down (workers.py)
        worker.state = Slot.WAKING
        worker.wake.notify()

    def _on_engine_thread(self, thread: threading.Thread) -> bool:
        """Whether ``thread`` is one that ``close()`` joins (a worker or the callback thread)."""
        return thread is self._callbacks.thread or any(w.thread is thread for w in self._workers)


def _message(exc: BaseException) -> str:
    try:
        text = str(exc)
    except BaseException:  # noqa: BLE001 - a broken __str__ must not lose the outcome
        text = ""
    return text if text else type(exc).__name__
