"""Admission for asyncio callers without a thread.

``submit_async`` first tries a non-blocking submit. When the queue is full it registers a
``SpaceWaiter`` with the engine and awaits a future that the engine's threads resolve through
``loop.call_soon_threadsafe``; pacing and the deadline are ``loop.call_later`` timers. So any
number of coroutines may wait for space while holding no executor thread (the earlier design ran a
blocking submit in the default executor per waiting call, which starved other executor users and
delayed ``asyncio.run`` shutdown).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future
from typing import Callable, Optional

from ..errors import SubmitTimeoutError
from .admission import SpaceWaiter
from .core import Engine

__all__ = ["submit_async"]


async def submit_async(
    engine: Engine, attempt: Callable[[Optional[SpaceWaiter]], Future], api: str
) -> Future:
    """Queue one task with ``attempt(waiter)`` (a non-blocking submit that raises
    ``SubmitTimeoutError`` when there is no space), waiting for space on the event loop.

    Same contract as a blocking submit: one deadline, ``submit_timeout_ms`` after the first failed
    attempt, then ``SubmitTimeoutError``; ``SessionClosedError`` as soon as the engine closes.
    Cancelling the awaiting task leaves nothing queued and nothing registered.
    """
    try:
        return attempt(None)  # the common case: space now, no waiter object at all
    except SubmitTimeoutError:
        pass
    loop = asyncio.get_running_loop()
    wakeup = _Wakeup(loop)
    waiter = SpaceWaiter(wakeup.wake)
    deadline = time.monotonic() + engine.submit_timeout_ms / 1000.0
    try:
        while True:
            try:
                return attempt(waiter)
            except SubmitTimeoutError:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise engine.timeout_error(api) from None
            delay = remaining if waiter.pace_delay is None else min(remaining, waiter.pace_delay)
            await wakeup.wait(delay)
    finally:
        engine.forget(waiter)


class _Wakeup:
    """A level-triggered wake-up for one coroutine: ``wake()`` from any thread, ``wait(timeout)``
    on the loop. A wake that lands before ``wait`` is kept, so none is lost between a failed
    attempt (which registered the waiter) and the await."""

    __slots__ = ("_loop", "_pending", "_future")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending = False
        self._future: Optional[asyncio.Future] = None

    def wake(self) -> None:
        """Engine thread side (lock not held). Raises if the loop is closed: the engine then
        forgets the waiter."""
        self._loop.call_soon_threadsafe(self._fire)

    def _fire(self) -> None:
        future = self._future
        if future is None:
            self._pending = True
        elif not future.done():
            future.set_result(None)

    async def wait(self, timeout: float) -> None:
        if self._pending:
            self._pending = False
            return
        future = self._loop.create_future()
        self._future = future
        timer = self._loop.call_later(timeout, self._fire)
        try:
            await future
        finally:
            timer.cancel()
            self._future = None
            self._pending = False
