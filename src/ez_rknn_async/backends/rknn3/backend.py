"""The RKNPU3 backend: librknn3_api contexts behind the Backend/Runner interface.

Every worker slot owns one context (``rknn3_init`` on its device, the model and its ``.weight``
loaded, ``rknn3_model_init`` with the slot's core group): the runtime wants one context per
device, the core count is fixed at export and each context's weights live on its own cores, and
1.1 has no ``rknn3_dup_context``. ``devices.plan_routes`` says which groups exist; the engine's
"cores" are indices into that list. A slot's calls are serialised by the engine and by the
context's lock (the runtime's rule).

The first context (made to read the model's description) becomes the first slot's. Split as
``backends/rknn/`` is: ``context.py`` opens contexts, ``describe.py`` reads the model's
description, ``zero_copy.py`` is the zero-copy capability, ``runner.py`` a slot's run; this
module ties them into the ``Backend``.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from typing import Any, Optional

from ...errors import BackendClosedError
from ...options import ProviderOptions
from ..base import Backend, BufferTracker, SlotSpec
from .abi import Abi
from .context import Context3, core_number, open_context
from .devices import Route, find_devices, plan_routes, select_devices
from .library import Library3, load_library
from .model import PROVIDER, read_weight
from .runner import Rknn3Runner
from .zero_copy import ZeroCopy3

__all__ = ["Rknn3Backend", "load"]


class Rknn3Backend(ZeroCopy3, Backend):
    """One RKNPU3 model on one or more devices; ``open_runner`` gives each slot a context."""

    name = "rknn3"
    device_type = "rknpu3"

    def __init__(
        self, lib: Library3, model: bytes, weight: bytes, options: ProviderOptions
    ) -> None:
        if options.tp_mode is not None:
            raise ValueError(
                "provider option 'tp_mode' does not apply to RKNPU3 models (their core count is "
                "fixed at export); use run_core_mask, schedule or threads_per_core"
            )
        self.providers = [PROVIDER]
        self.library_path = lib.path
        self.abi: Abi = lib.abi
        self._lib = lib
        self._model = model
        self._weight = weight
        self._options = options
        self._lock = threading.Lock()
        self._closed = False
        self.buffers = BufferTracker()
        self.devices = select_devices(find_devices(lib, self.abi), options.device_id)
        origin = open_context(lib, self.devices[0], model, weight)
        try:
            self.core_number = core_number(origin)
            self.routes = plan_routes(self.devices, self.core_number, options.run_core_mask)
            self._model_init(origin, self.routes[0])
            self._describe(origin)
        except BaseException:
            origin.destroy()
            raise
        self._origin: Optional[Context3] = origin

    # ------------------------------------------------------------------ contexts

    def _model_init(self, context: Context3, route: Route) -> None:
        config = self.abi.struct("rknn3_config")()
        config.priority = self._options.priority
        config.run_timeout = self._options.run_timeout_ms
        config.run_core_mask = route.mask
        context.call("rknn3_model_init", ctypes.byref(config))
        context.route = route

    # ------------------------------------------------------------------ slots

    def default_cores(self) -> list[int]:
        """One "core" per route: every core group of every selected device."""
        return list(range(len(self.routes)))

    def check_cores(self, cores: Sequence[int]) -> None:
        bad = [core for core in cores if core >= len(self.routes)]
        if bad:
            listing = ", ".join(f"{i}: {r.describe()}" for i, r in enumerate(self.routes))
            raise ValueError(
                f"schedule names core group(s) {bad}; this RKNPU3 session has {len(self.routes)} "
                f"({listing})"
            )

    def open_runner(self, slot: SlotSpec) -> Rknn3Runner:
        route = self.routes[(slot.core or 0) % len(self.routes)]
        with self._lock:
            if self._closed:
                raise BackendClosedError("the RKNPU3 backend is closed")
            context, self._origin = (
                (self._origin, None)
                if self._origin is not None and self._origin.route == route
                else (None, self._origin)
            )
        if context is None:
            context = open_context(self._lib, route.device, self._model, self._weight)
            try:
                self._model_init(context, route)
            except BaseException:
                context.destroy()
                raise
        try:
            return Rknn3Runner(self, context)
        except BaseException:
            context.destroy()
            raise

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            origin, self._origin = self._origin, None
        try:
            self.buffers.release_all()
        finally:
            if origin is not None:
                origin.destroy()


def load(
    source: Any,
    options: ProviderOptions,
    *,
    sess_options: Any = None,
    providers: Any = None,
    share_with: Optional[Backend] = None,
) -> Rknn3Backend:
    """Entry point of backends.load_backend: ``source`` is a ``ModelSource``. ``sess_options``
    and ``providers`` mean nothing to librknn3_api: ignored."""
    if share_with is not None:
        raise ValueError("use_weight_from is not supported for RKNPU3 models")
    weight = read_weight(source.path, options.weight_path)
    lib = load_library(options.runtime_library)
    return Rknn3Backend(lib, bytes(source.data), weight, options)
