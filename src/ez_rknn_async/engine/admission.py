"""Admission: the bounded task queue, pacing, and submitters waiting for space.

A task is queued only while fewer than ``max_queue_size`` tasks wait to start and fewer than
``CALLBACK_BACKLOG`` callback results wait for delivery (and, with pacing, once the pacing interval
has passed). Otherwise the submitter waits, up to ``submit_timeout_ms`` from one deadline, then
gets ``SubmitTimeoutError`` naming what stayed full. Nothing is dropped silently.

Async admission: an asyncio submitter never holds a thread while it waits for space. It registers
a ``SpaceWaiter`` whose ``wake`` is called (outside the lock) when admission may succeed again;
``aio.submit_async`` retries then. A freed queue place is *claimed* for the oldest async waiter
(others see it as taken) until that waiter retries, and claims alternate with blocking waiters, so
neither kind starves the other: threads parked on a condition would otherwise win every race
against an event loop hop.

``Admission`` shares the engine's lock: every method expects it held unless its docstring says
otherwise. It owns the queue and the callback stage (whose backlog it bounds); the engine owns
the workers that take from the queue and the lifecycle.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Callable, Optional

from ..errors import SubmitTimeoutError
from .ordering import CallbackStage
from .tasks import Task

if TYPE_CHECKING:
    from .core import EngineConfig

__all__ = ["Admission", "SpaceWaiter", "CALLBACK_BACKLOG"]

#: Completed run_async results that may wait for their callback before submitters block (as in
#: the original, whose limit is the same constant).
CALLBACK_BACKLOG = 8
_PACING_EMA = 0.05


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


class Admission:
    """The queue and its waiters. ``check_open`` raises unless the engine takes tasks;
    ``on_queued(core)`` wakes a worker for a task just queued (both called with the lock held)."""

    def __init__(
        self,
        lock: threading.Lock,
        config: EngineConfig,
        check_open: Callable[[], None],
        on_queued: Callable[[Optional[int]], None],
    ) -> None:
        self._config = config
        self._check_open = check_open
        self._on_queued = on_queued
        self.space = threading.Condition(lock)
        self.queue: deque[Task] = deque()
        self.waiting = 0  # blocking submitters parked on ``space``
        # Async waiters: FIFO of registered ones, the set holding a claim, and how many claims
        # (an int, so the admission check stays one addition).
        self.async_waiters: deque[SpaceWaiter] = deque()
        self.claimed: set[SpaceWaiter] = set()
        self._claims = 0
        self._async_last = False  # the last admission after a wait went to an async waiter
        self._route_counter = 0
        self.peak = 0
        self.submitted = 0
        self.waits = 0  # queued tasks that started, and their seconds in the queue
        self.wait_total = 0.0
        self.wait_peak = 0.0
        self._pace_ema = 0.0
        self._pace_next = 0.0
        self.callbacks = CallbackStage(
            lock, self._delivered, config.sequential_callbacks, self.wake_waiters
        )

    @property
    def waiters(self) -> int:
        """Submitters of both kinds waiting for space."""
        return self.waiting + len(self.async_waiters) + self._claims

    def next_route(self) -> Optional[int]:
        """The core the next task is bound to (weighted schedule), or None."""
        routes = self._config.routes
        if routes is None:
            return None
        core = routes[self._route_counter % len(routes)]
        self._route_counter += 1
        return core

    def admit(
        self,
        task: Task,
        api: str,
        *,
        blocking: bool = True,
        callback: bool = False,
        waiter: Optional[SpaceWaiter] = None,
        routed: bool = False,
    ) -> None:
        """Route ``task`` (unless ``routed``) and queue it (lock NOT held on entry), waiting for
        space up to the deadline; with a ``waiter``, register it and raise instead of waiting."""
        deadline = None
        woken: list[SpaceWaiter] = []
        full: Optional[str] = None
        with self.space:
            self._check_open()
            if not routed:
                task.core = self.next_route()
            while True:
                now = time.monotonic()
                claim = waiter is not None and waiter.claim
                full = self._full(callback, now, claim)
                if full is None:
                    break
                if waiter is not None:
                    self._park(waiter, claim, now)
                    raise self.timeout_error(api, full)
                first = deadline is None
                if deadline is None:
                    deadline = now + self._config.submit_timeout_ms / 1000.0
                remaining = deadline - now
                if not blocking or remaining <= 0:
                    if not first and self.async_waiters:
                        woken = self.grant()  # a blocking waiter leaves: its turn passes on
                    break
                if self._config.enable_pacing and now < self._pace_next:
                    remaining = min(remaining, self._pace_next - now)
                self.waiting += 1
                try:
                    self.space.wait(remaining)
                finally:
                    self.waiting -= 1
                self._check_open()
            if full is None:
                # Admission. Only submitters that waited (rare) do the fairness bookkeeping.
                if waiter is not None:
                    if claim:
                        self._release_claim(waiter)
                        self._async_last = True
                    elif waiter.registered:
                        waiter.registered = False
                        self.async_waiters.remove(waiter)
                elif deadline is not None:
                    self._async_last = False
                if callback:
                    task.seq = self.callbacks.take_seq()
                if self._config.enable_pacing and self._pace_ema > 0:
                    self._pace_next = now + self._pace_ema / self._config.pacing_cores
                task.queued_at = now
                self.queue.append(task)
                self.submitted += 1
                if len(self.queue) > self.peak:
                    self.peak = len(self.queue)
                self._on_queued(task.core)
                if deadline is None or not self.async_waiters:
                    return
                woken = self.grant()  # a blocking waiter got in: the next place may be theirs
        self.wake_waiters(woken)
        if full is not None:
            raise self.timeout_error(api, full)

    def timeout_error(self, api: str, full: Optional[str] = None) -> SubmitTimeoutError:
        """The error of a submit that found no space before its deadline (one message for the
        blocking and the async paths); ``full`` says what stayed full (default: what is full
        now, for a task that does not wait for a callback)."""
        if full is None:
            full = self._full(False, time.monotonic()) or "no space was free"
        return SubmitTimeoutError(
            f"{api} submit timed out after {self._config.submit_timeout_ms} ms: {full}"
        )

    def take(self, core: Optional[int]) -> Optional[Task]:
        """The oldest queued task a worker of ``core`` may run; wakes blocking submitters."""
        queue = self.queue
        if not queue:
            return None
        head = queue[0]
        if head.core is None or head.core == core:
            task = queue.popleft()
        else:
            for index, task in enumerate(queue):
                if task.core is None or task.core == core:
                    del queue[index]
                    break
            else:
                return None
        if self.waiting:
            self.space.notify_all()
        return task

    def forget(self, waiter: SpaceWaiter) -> None:
        """Drop ``waiter`` (lock NOT held; admitted, timed out, cancelled, closed): unregister it
        and pass its claim on, so a waiter that leaves never holds a queue place or a FIFO entry."""
        with self.space:
            if waiter.registered:
                waiter.registered = False
                self.async_waiters.remove(waiter)
            if not waiter.claim:
                return
            self._release_claim(waiter)
            if self.waiting:
                self.space.notify_all()
            woken = self.grant()
        self.wake_waiters(woken)

    def grant(self) -> list[SpaceWaiter]:
        """Claim free queue places for the oldest async waiters; returns them, to be woken
        without the lock. While blocking submitters wait too, one claim at a time and only when
        the last admitted waiter was a blocking one: the two kinds take turns."""
        granted: list[SpaceWaiter] = []
        waiters = self.async_waiters
        limit = self._config.max_queue_size
        while waiters and len(self.queue) + self._claims < limit:
            if self.waiting and (self._async_last or granted):
                break
            waiter = waiters.popleft()
            waiter.claim = True
            waiter.registered = False
            self.claimed.add(waiter)
            self._claims += 1
            granted.append(waiter)
        return granted

    def wake_waiters(self, waiters: Sequence[SpaceWaiter]) -> None:
        """Call each waiter's ``wake`` (lock NOT held). One that cannot be woken (its event loop
        is closed) is forgotten, so its claim passes on instead of holding a place forever."""
        for waiter in waiters:
            try:
                waiter.wake()
            except BaseException:  # noqa: BLE001 - never kill the engine thread that wakes
                self.forget(waiter)

    def ran(self, elapsed: float, waited: float) -> None:
        """A queued task ran for ``elapsed`` seconds after ``waited`` seconds in the queue."""
        self.waits += 1
        self.wait_total += waited
        if waited > self.wait_peak:
            self.wait_peak = waited
        self.pace_sample(elapsed)

    def pace_sample(self, elapsed: float) -> None:
        """One task's run time, for the pacing interval (an exponential moving average)."""
        if self._config.enable_pacing:
            ema = self._pace_ema
            self._pace_ema = (
                elapsed if ema == 0 else (1 - _PACING_EMA) * ema + _PACING_EMA * elapsed
            )

    def _delivered(self) -> list[SpaceWaiter]:
        """A callback was delivered: the callback backlog shrank. Returns the async waiters to
        wake once the lock is released."""
        if self.waiting:
            self.space.notify_all()
        return self.grant() if self.async_waiters else []

    def _release_claim(self, waiter: SpaceWaiter) -> None:
        waiter.claim = False
        self.claimed.discard(waiter)
        self._claims -= 1

    def _full(self, callback: bool, now: float, claim: bool = False) -> Optional[str]:
        """None when a task may be queued now, else what keeps it out (for the timeout error)."""
        config = self._config
        # Places claimed for async waiters count as taken, except for the claimant itself.
        if len(self.queue) + self._claims - claim >= config.max_queue_size:
            return f"the task queue is full (max_queue_size={config.max_queue_size})"
        # A callback submitting from the thread that delivers it must not wait for itself.
        if (
            callback
            and self.callbacks.backlog >= CALLBACK_BACKLOG
            and not self.callbacks.on_thread()
        ):
            return (
                f"the callback backlog is full ({CALLBACK_BACKLOG} run_async results wait for "
                "their callback; the callbacks are slower than the inferences)"
            )
        if config.enable_pacing and now < self._pace_next:
            return "pacing (enable_pacing) holds submissions back"
        return None

    def _park(self, waiter: SpaceWaiter, claim: bool, now: float) -> None:
        """A waiter's attempt failed: keep its claim or queue it (FIFO), and tell it how long
        pacing alone keeps it out, for its own timer."""
        waiter.pace_delay = None
        if (
            self._config.enable_pacing
            and now < self._pace_next
            and len(self.queue) + self._claims - claim < self._config.max_queue_size
        ):
            waiter.pace_delay = self._pace_next - now  # else a freed place wakes it, no polling
        if not claim and not waiter.registered:
            waiter.registered = True
            self.async_waiters.append(waiter)
