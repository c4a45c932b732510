"""The callback stage: puts ``run_async`` outcomes in order and calls the user on one thread.

Workers hand outcomes to ``CallbackStage.complete``; with ``sequential`` the stage holds a result
until every earlier sequence number has arrived, so callbacks see submission order. One thread
(``EzRknn_Callback``) calls the user, never two callbacks at once. ``backlog`` (results done but
not yet delivered) is what the engine's admission bounds, so a slow callback slows submitters down
instead of letting results pile up.

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
        self.backlog = 0
        self.calling_since: Optional[float] = None  # monotonic() when the running callback began
        self.thread = threading.Thread(target=self._loop, name="EzRknn_Callback", daemon=True)
        self.thread.start()

    def take_seq(self) -> int:
        """A sequence number for a new task (lock held by the caller)."""
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def complete(self, seq: int, delivery: Delivery) -> None:
        """Called from any thread when a task's outcome is known."""
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
            self._wakeup.notify()

    def close(self) -> None:
        """Let the thread finish: it delivers everything already complete, then exits."""
        with self._lock:
            self._closing = True
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
        return threading.current_thread() is self.thread

    def _loop(self) -> None:
        lock = self._lock
        while True:
            with lock:
                while not self._ready:
                    if self._closing and not self._held and self.backlog == 0:
                        return
                    self._wakeup.wait()
                callback, results, user_data, err = self._ready.popleft()
                self.calling_since = time.monotonic()
            _call_user(callback, results, user_data, err)
            del callback, results, user_data, err  # not kept alive until the next delivery
            with lock:
                self.calling_since = None
                self.backlog -= 1
                woken = self._on_delivered()
            if woken:
                self._wake(woken)
                del woken


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
