"""Exceptions raised by ez-rknn-async.

    RuntimeError
     +-- RKNNError              the runtime (librknnrt) returned an error code: ``.code``, ``.name``
     |    +-- RunTimeoutError   an RKNPU3 run exceeded ``run_timeout_ms``; a TimeoutError too
     +-- SessionClosedError     *you* closed the session; every later call raises this at once
     +-- SubmitTimeoutError     the queue stayed full for ``submit_timeout_ms``; a TimeoutError too

Bad arguments raise the builtin ``ValueError`` / ``TypeError`` with a message that names the input,
option key or argument that was wrong.
"""

from __future__ import annotations

__all__ = ["RKNNError", "RunTimeoutError", "SessionClosedError", "SubmitTimeoutError"]


class RKNNError(RuntimeError):
    """A librknnrt call failed. ``str(err)`` reads like ``rknn_run failed: RKNN_ERR_FAIL (-1)``."""

    def __init__(self, message: str, code: int = -1, name: str = "RKNN_ERR_FAIL") -> None:
        super().__init__(message)
        self.code = code
        self.name = name


class RunTimeoutError(RKNNError, TimeoutError):
    """An RKNPU3 inference took longer than ``run_timeout_ms`` (``RKNN3_ERR_TIMEOUT``, -7); the
    session goes on."""

    def __str__(self) -> str:  # OSError's would read "[Errno ...]"
        return str(self.args[0]) if self.args else ""


class SessionClosedError(RuntimeError):
    """The session was closed (by ``close()`` or its context manager) before or during the call."""


class SubmitTimeoutError(RuntimeError, TimeoutError):
    """The task queue stayed saturated for ``submit_timeout_ms``; nothing was queued."""


for _cls in (RKNNError, RunTimeoutError, SessionClosedError, SubmitTimeoutError):
    _cls.__module__ = "ez_rknn_async"
