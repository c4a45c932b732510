"""Every exception ez-rknn-async raises on purpose, in one place.

    RuntimeError
     +-- RKNNError                     the runtime (librknnrt, librknn3_api) returned an error
     |    |                            code: ``.code``, ``.name``
     |    +-- RuntimeNotFoundError     no loadable runtime: ``.what`` was tried, ``.fix`` says how
     |    +-- UnsupportedRuntimeError  a runtime library of an ABI version we do not know
     |    +-- RunTimeoutError          an RKNPU3 run exceeded ``run_timeout_ms`` (a TimeoutError)
     +-- InferenceError                onnxruntime / OpenVINO failed an inference (its message,
     |                                 the runtime's exception chained as ``__cause__``)
     +-- SessionClosedError            *you* closed the session; every later call raises at once
     |    +-- BackendClosedError       a backend call raced the session's close()
     +-- SessionBrokenError            a worker could not be stopped within close()'s deadline:
     |                                 leaked on purpose, the session refuses every call (also:
     |                                 a session a forked child inherited)
     +-- SubmitTimeoutError            the queue stayed full for ``submit_timeout_ms``
     |                                 (a TimeoutError too)
     +-- IOBindingError                zero copy: a binding or value in a state the call cannot use
          +-- BindingInFlightError     the IOBinding's run has not finished
          +-- BindingClosedError       the IOBinding was closed
          +-- ValueReleasedError       the OrtValue (or one bound) was released: its buffer is gone
          +-- ZeroCopyUnavailableError this session's configuration cannot bind device memory

Bad arguments raise the builtin ``ValueError`` / ``TypeError`` with a message that names the input,
option key or argument that was wrong (each backend translates its runtime's invalid-argument
errors to ``ValueError`` at one place). Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "RKNNError",
    "RuntimeNotFoundError",
    "RunTimeoutError",
    "UnsupportedRuntimeError",
    "InferenceError",
    "SessionClosedError",
    "BackendClosedError",
    "SessionBrokenError",
    "SubmitTimeoutError",
    "IOBindingError",
    "BindingInFlightError",
    "BindingClosedError",
    "ValueReleasedError",
    "ZeroCopyUnavailableError",
]


class RKNNError(RuntimeError):
    """A librknnrt call failed. ``str(err)`` reads like ``rknn_run failed: RKNN_ERR_FAIL (-1)``."""

    def __init__(self, message: str, code: int = -1, name: str = "RKNN_ERR_FAIL") -> None:
        super().__init__(message)
        self.code = code
        self.name = name


class RuntimeNotFoundError(RKNNError):
    """No loadable runtime library (librknnrt, librknn3_api): ``what`` was tried, ``fix`` says
    what to do; ``code``/``name`` are that runtime's "device unavailable"."""

    def __init__(
        self, what: str, fix: str, code: int = -3, name: str = "RKNN_ERR_DEVICE_UNAVAILABLE"
    ) -> None:
        super().__init__(f"{what}. Fix: {fix}.", code, name)
        self.what = what
        self.fix = fix


class UnsupportedRuntimeError(RKNNError):
    """The library is the runtime, but of an ABI version this binding does not know."""


class RunTimeoutError(RKNNError, TimeoutError):
    """An RKNPU3 inference took longer than ``run_timeout_ms`` (``RKNN3_ERR_TIMEOUT``, -7); the
    session goes on."""

    def __str__(self) -> str:  # OSError's would read "[Errno ...]"
        return str(self.args[0]) if self.args else ""


class InferenceError(RuntimeError):
    """A CPU runtime (onnxruntime, OpenVINO) failed an inference that passed our checks; the
    message is the runtime's, and its own exception is ``__cause__``."""


class SessionClosedError(RuntimeError):
    """The session was closed (by ``close()`` or its context manager) before or during the call."""


class BackendClosedError(SessionClosedError):
    """A backend call (a buffer allocation, a runner) came after the backend was released."""


class SessionBrokenError(RuntimeError):
    """A worker could not be stopped within close()'s deadline (an inference or a callback that
    never returned): the session leaked it on purpose rather than free what it is inside, and
    every call raises this at once."""


class SubmitTimeoutError(RuntimeError, TimeoutError):
    """The task queue stayed saturated for ``submit_timeout_ms``; nothing was queued."""


class IOBindingError(RuntimeError):
    """A zero-copy call met a binding or value in a state that cannot serve it."""


class BindingInFlightError(IOBindingError):
    """The IOBinding is claimed by a run that has not finished (one binding per frame in flight)."""


class BindingClosedError(IOBindingError):
    """The IOBinding was closed; make a new one with ``session.io_binding()``."""


class ValueReleasedError(IOBindingError):
    """The OrtValue was released (or a binding holds one that was); its buffer is gone."""


class ZeroCopyUnavailableError(IOBindingError):
    """Device buffers cannot serve this session as configured (e.g. RKNN worker contexts from
    separate ``rknn_init`` calls cannot share tensor mems); the message says what to change."""


for _name in __all__:
    globals()[_name].__module__ = "ez_rknn_async"  # where users import them from
del _name
