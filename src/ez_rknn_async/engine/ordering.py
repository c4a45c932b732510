"""The callback stage: puts ``run_async`` outcomes in order and calls the user, one at a time.

Workers hand outcomes to ``CallbackStage.complete``; with ``sequential`` the stage holds a result
until every earlier sequence number has arrived, so callbacks see submission order. Never two
callbacks at once: whoever calls the user holds the *baton* (``_deliverer``). That is the
``EzRknn_Callback`` thread, or, while callbacks are quick (under ``INLINE_BELOW_S`` on average),
a worker whose outcome completes the ready sequence: it calls the ready callbacks itself (at most
``INLINE_BATCH``) instead of waking the callback thread, which saves a thread switch per task (a
third of a task's cost at 0.2 ms per inference). Only workers the engine allows do so (it allows
them when another worker can always run what a callback waits for: two or more slots, no task
bound to a core). A slow callback is then measured once on a worker and goes back to the thread.
``backlog`` (results done but not yet delivered) is what the engine's admission bounds, so a slow
callback slows submitters down instead of letting results pile up.

Only ``run_async`` goes through here: ``run``, ``submit`` and the pipeline complete their futures
directly on the worker, so calling ``run()`` from inside a callback cannot deadlock (the
original's known gap).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Callable, Optional

__all__ = ["CallbackStage", "report_unraisable"]

Delivery = tuple[Callable[..., Any], Any, Any, Any]

#: Workers deliver callbacks themselves while callbacks take less than this on average (s).
INLINE_BELOW_S = 100e-6
#: At most this many callbacks per worker delivery, then the callback thread takes over.
INLINE_BATCH = 8
_COST_EMA = 0.1


class CallbackStage:
    def __init__(
        self,
        lock: threading.Lock,
        on_delivered: Callable[[], Sequence[Any]],
        sequential: bool,
        wake: Callable[[Sequence[Any]], None],
    ):
        self._lock = lock
        self._wakeup = threading.Condition(lock)
        # Called with the lock held after each delivery; what it returns goes to ``wake``
        # once the lock is released (the engine's async space waiters).
        self._on_delivered = on_delivered
        self._wake = wake
        self._sequential = sequential
        self._held: dict[int, Delivery] = {}  # out-of-order outcomes, sequential mode
        self._ready: deque[Delivery] = deque()
        self._next_seq = 0  # next sequence number to hand out
        self._expected = 0  # next sequence number to deliver
        self._closing = False
        self._sleeping = False  # the thread waits for work: only then is a notify needed
        self._deliverer: Optional[int] = None  # the thread calling a callback now (the baton)
        self._inline_threads: set[int] = set()  # worker threads allowed to deliver
        self._cost = 0.0  # moving average of a callback's duration, seconds
        self.backlog = 0
        self.calling_since: Optional[float] = None  # monotonic() when the running callback began
        self.thread = threading.Thread(target=self._loop, name="EzRknn_Callback", daemon=True)
        self.thread.start()

    def take_seq(self) -> int:
        """A sequence number for a new task (lock held by the caller)."""
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def allow_inline(self) -> None:
        """Let the calling (worker) thread deliver callbacks itself (see the module docstring)."""
        with self._lock:
            self._inline_threads.add(threading.get_ident())

    def complete(self, seq: int, delivery: Delivery) -> None:
        """Called from any thread when a task's outcome is known."""
        me = threading.get_ident()
        with self._lock:
            self.backlog += 1
            if not self._sequential:
                self._ready.append(delivery)
            elif seq != self._expected:
                self._held[seq] = delivery
            else:
                self._ready.append(delivery)
                self._expected += 1
                while self._expected in self._held:
                    self._ready.append(self._held.pop(self._expected))
                    self._expected += 1
            inline = (
                self._ready
                and self._deliverer is None
                and self._cost < INLINE_BELOW_S
                and me in self._inline_threads
            )
            if inline:
                self._deliverer = me
                self._deliver_here()
            elif self._sleeping and self._ready:  # a held outcome wakes nobody
                self._wakeup.notify()

    def close(self) -> None:
        """Let the thread finish: it delivers everything already complete, then exits."""
        with self._lock:
            self._closing = True
            self._inline_threads.clear()  # the rest is the callback thread's
            self._wakeup.notify()

    def stuck(self, deadline: float, errors: int = 0) -> bool:
        """Whether, after ``close()``'s deadline, deliveries are left and the one running (if
        any) began before the deadline (lock held). Results still waiting may be views of
        backend memory, so the caller must not free the backend then; the ``errors`` of tasks
        abandoned at the deadline, and a delivery that began after it, are not stuck callbacks."""
        if self.backlog == 0 or not self.thread.is_alive():
            return False
        since = self.calling_since
        if since is None:
            return self.backlog > errors
        return since < deadline

    def on_thread(self) -> bool:
        """Whether the calling thread is delivering a callback (calls from inside one)."""
        return self._deliverer == threading.get_ident()

    def _deliver_here(self) -> None:
        """A worker holding the baton calls the ready callbacks (lock held, baton taken)."""
        for _ in range(INLINE_BATCH):
            if not self._ready or self._cost >= INLINE_BELOW_S:
                break
            self._call(self._ready.popleft())
        self._deliverer = None
        if self._sleeping and (self._ready or self._closing):  # the callback thread's now
            self._wakeup.notify()

    def _call(self, delivery: Delivery) -> None:
        """Call one callback without the lock (held on entry and on return), then account
        for it: the backlog shrinks, its duration feeds the average, waiters are woken."""
        lock = self._lock
        self.calling_since = start = time.monotonic()
        lock.release()
        try:
            _call_user(*delivery)
            elapsed = time.monotonic() - start
        finally:
            del delivery  # not kept alive until the next delivery
            lock.acquire()
            self.calling_since = None
        self._cost += _COST_EMA * (elapsed - self._cost)
        self.backlog -= 1
        woken = self._on_delivered()
        if woken:
            lock.release()
            try:
                self._wake(woken)
            finally:
                del woken
                lock.acquire()

    def _loop(self) -> None:
        """The callback thread: take the baton whenever outcomes are ready and no worker
        delivers, call one, give the baton back."""
        me = threading.get_ident()
        with self._lock:
            while True:
                while not self._ready or self._deliverer is not None:
                    if (
                        self._closing
                        and not self._held
                        and self.backlog == 0
                        and self._deliverer is None
                    ):
                        return
                    self._sleeping = True
                    try:
                        self._wakeup.wait()
                    finally:
                        self._sleeping = False
                self._deliverer = me
                try:
                    self._call(self._ready.popleft())
                finally:
                    self._deliverer = None


def _call_user(callback: Callable[..., Any], results: Any, user_data: Any, err: str) -> None:
    try:
        callback(results, user_data, err)
    except BaseException as exc:  # noqa: BLE001 - reported, the session goes on
        report_unraisable(exc, f"Exception ignored in run_async callback {callback!r}")


def report_unraisable(exc: BaseException, message: str) -> None:
    """Report an exception no caller can receive through ``sys.unraisablehook``."""
    sys.unraisablehook(_UnraisableArgs(exc, message))  # type: ignore[arg-type]  # duck-typed


class _UnraisableArgs:
    """The argument ``sys.unraisablehook`` expects (its type is not constructible everywhere)."""

    __slots__ = ("exc_type", "exc_value", "exc_traceback", "err_msg", "object")

    def __init__(self, exc: BaseException, message: str) -> None:
        self.exc_type: Optional[type] = type(exc)
        self.exc_value: Optional[BaseException] = exc
        self.exc_traceback = exc.__traceback__
        self.err_msg = message
        self.object = None
