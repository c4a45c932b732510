"""The engine's life: its states, the one close deadline, interpreter exit and fork().

* OPEN -> CLOSING (no new tasks; queued ones fail with ``SessionClosedError``; running ones may
  finish) -> CLOSED (threads joined, runners closed) or BROKEN (a thread was still inside the
  backend or a callback at the deadline: it is abandoned, never freed under, and the session
  refuses every call with ``SessionBrokenError``).
* Interpreter exit closes every live engine with one shared deadline: all are told to close
  first, then each is waited for until the same instant. Engine threads are daemons, so a stuck
  one never keeps the process alive.
* fork(): a child inherits sessions whose threads exist only in the parent (and whose locks a
  parent thread may have held). ``os.register_at_fork`` marks every live engine inherited: each
  call then raises at once, without touching a lock, and nothing is closed or freed in the child
  (the parent still owns it). Sessions made in the child work normally.
"""

from __future__ import annotations

import atexit
import ctypes
import enum
import os
import threading
import time
import weakref
from typing import Any, Protocol

__all__ = [
    "State",
    "DEFAULT_CLOSE_TIMEOUT_S",
    "close_timeout",
    "join_until",
    "register",
    "unregister",
]

#: How long ``close()`` (and interpreter exit, for all sessions together) waits for running
#: inferences and callbacks before it abandons their threads and leaves the session BROKEN.
DEFAULT_CLOSE_TIMEOUT_S = 10.0


class State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
    BROKEN = "broken"


class _Closable(Protocol):
    def begin_close(self) -> bool: ...

    def finish_close(self, deadline: float) -> None: ...

    def inherited(self) -> None: ...


_LIVE: weakref.WeakSet[_Closable] = weakref.WeakSet()


def register(engine: _Closable) -> None:
    _LIVE.add(engine)


def unregister(engine: _Closable) -> None:
    _LIVE.discard(engine)


def close_timeout(timeout: Any) -> float:
    """``close(timeout=)`` checked, in seconds; None: ``DEFAULT_CLOSE_TIMEOUT_S`` (read now, so
    one setting serves close() and interpreter exit)."""
    if timeout is None:
        return DEFAULT_CLOSE_TIMEOUT_S
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(
            f"close(timeout=) must be a number of seconds, got {type(timeout).__name__}"
        )
    # Bounded: past threading.TIMEOUT_MAX (inf included) a join raises OverflowError halfway
    # through the close, leaving the engine CLOSING with its runners never closed.
    if not 0 <= timeout <= threading.TIMEOUT_MAX:
        raise ValueError(
            f"close(timeout=) must be between 0 and {threading.TIMEOUT_MAX:.0f} seconds, "
            f"got {timeout}"
        )
    return float(timeout)


def join_until(thread: threading.Thread, deadline: float) -> bool:
    """Wait for ``thread`` until the ``monotonic()`` deadline; True if it has ended."""
    remaining = deadline - time.monotonic()
    if remaining > 0:
        thread.join(remaining)
    return not thread.is_alive()


@atexit.register
def _close_live_engines() -> None:
    """Interpreter exit: let running native calls finish before daemon threads are frozen,
    within one deadline for every session together."""
    deadline = time.monotonic() + DEFAULT_CLOSE_TIMEOUT_S
    closing = [engine for engine in list(_LIVE) if engine.begin_close()]
    for engine in closing:
        engine.finish_close(deadline)


def _after_fork_in_child() -> None:
    """Mark every inherited engine, and leak it (with its runners and what it retains, the
    backend): freeing them here would destroy the parent's native state (an onnxruntime thread
    pool joining threads this process does not have aborts it; an RKNN context is the parent's)."""
    for engine in list(_LIVE):
        engine.inherited()
        _leak(engine)
    _LIVE.clear()


def _leak(obj: object) -> None:
    """One reference that is never dropped: ``obj`` outlives interpreter shutdown."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork()
    os.register_at_fork(after_in_child=_after_fork_in_child)
