"""One librknn3_api context: its lock, and opening it on a device with the model loaded.

Why a module of its own: ``rknn3_init`` can hang (1.0.x runtimes facing a proxy or firmware of
another version), so it runs on a helper thread under a deadline; the backend (``backend.py``),
the model's description (``describe.py``) and the runners (``runner.py``) all just call through
a ``Context3``.
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Any, Optional

from ...errors import RKNNError
from .abi import CONTEXT_TYPE, Query
from .devices import Device, Route
from .library import Library3, check

__all__ = [
    "Context3",
    "INIT_TIMEOUT_ENV",
    "INIT_TIMEOUT_S",
    "init_timeout",
    "open_context",
    "core_number",
]


class Context3:
    """One rknn3_context; ``lock`` serialises every call on it."""

    def __init__(self, lib: Library3, handle: int, route: Optional[Route]) -> None:
        self.lib = lib
        self.handle = handle
        self.route = route
        self.lock = threading.RLock()
        self._destroyed = False

    def call(self, api: str, *args: Any) -> None:
        with self.lock:
            code = getattr(self.lib, api)(self.handle, *args)
        check(api, code)

    def query(self, command: Query, info: Any) -> Any:
        self.call("rknn3_query", int(command), ctypes.byref(info), ctypes.sizeof(info))
        return info

    def destroy(self) -> None:
        with self.lock:
            if self._destroyed:
                return
            self._destroyed = True
            code = self.lib.rknn3_destroy(self.handle)
        check("rknn3_destroy", code)


#: Seconds ``rknn3_init`` may take before the session gives up on it (1.0.x runtimes hang when
#: the proxy or firmware is of another version; 1.1 returns RKNN3_ERR_INCOMPATIBLE_VERSION).
INIT_TIMEOUT_ENV = "EZ_RKNN3_INIT_TIMEOUT_S"
INIT_TIMEOUT_S = 30.0


def init_timeout() -> float:
    text = os.environ.get(INIT_TIMEOUT_ENV, "").strip()
    try:
        return float(text) if text else INIT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"{INIT_TIMEOUT_ENV} must be a number of seconds, got {text!r}") from None


def _init(lib: Library3, device: Device) -> int:
    """``rknn3_init`` on ``device`` (by id: required with 2+ devices), on a helper thread so a
    hung init costs the caller ``init_timeout()`` seconds, not the process. The abandoned thread
    destroys the context itself if the call ever succeeds."""
    extend = lib.abi.struct("rknn3_init_extend")()
    device_id = ctypes.create_string_buffer(device.id.encode())
    extend.device_id = ctypes.addressof(device_id)
    handle = CONTEXT_TYPE()
    codes: list[int] = []
    lock = threading.Lock()
    returned = threading.Event()

    def call() -> None:
        code = lib.rknn3_init(ctypes.byref(handle), ctypes.byref(extend))
        with lock:
            codes.append(code)
            abandoned = returned.is_set()
            returned.set()
        if abandoned and code == 0:
            lib.rknn3_destroy(handle.value)

    thread = threading.Thread(target=call, name=f"EzRknn3Init-{device.id}", daemon=True)
    thread.start()
    timeout = init_timeout()
    returned.wait(timeout)
    with lock:
        finished = bool(codes)
        returned.set()  # from now on a late return is the thread's to clean up
    if not finished:
        raise RKNNError(
            f"rknn3_init on {device.id} did not return within {timeout:g} s "
            f"({INIT_TIMEOUT_ENV}): librknn3_api and rknn3_transfer_proxy/firmware are probably "
            "of different versions (1.0.x runtimes hang on that); run `ez-rknn doctor`",
            -13,
            "RKNN3_ERR_COMMUNICATION",
        )
    thread.join()
    check("rknn3_init", codes[0])
    return handle.value


def open_context(lib: Library3, device: Device, model: bytes, weight: bytes) -> Context3:
    """A context on ``device`` with the model and its weight loaded; destroyed again if loading
    fails."""
    context = Context3(lib, _init(lib, device), None)
    try:
        context.call("rknn3_load_model_from_data", model, len(model), weight, len(weight))
    except BaseException:
        context.destroy()
        raise
    return context


def core_number(context: Context3) -> int:
    """The core count the model was exported for (valid before model_init)."""
    return int(context.query(Query.CORE_NUMBER, ctypes.c_uint32()).value)
