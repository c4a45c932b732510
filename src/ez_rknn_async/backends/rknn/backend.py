"""The RKNN backend: librknnrt contexts behind the Backend/Runner interface.

The model file's bytes go to ``rknn_init`` unchanged; everything known about the model comes from
``rknn_query`` (``describe.py``). Each worker slot gets its own context (``rknn_dup_context`` of
the first one, or a fresh ``rknn_init`` when dup is disabled, custom ops are loaded or weights
are shared), bound to its cores with ``rknn_set_core_mask`` where the SoC has more than one, and
runs there (``runner.py``). With dups the first context stays idle: tensor mems for zero copy
(``zero_copy.py``) are made on it, so users' threads never wait behind an inference. Contexts
form a small tree (``context.py``: dups and weight sharers under the context they came from) and
each is destroyed only once it is closed and nothing hangs under it, which gives the runtime's
destroy order for free.
"""

from __future__ import annotations

import ctypes
import threading
import warnings
from collections.abc import Sequence
from typing import Any, Optional

from ...errors import BackendClosedError
from ...options import RKNPU2_PROVIDER, ProviderOptions
from ..base import Backend, BufferTracker, SlotSpec
from .abi import CONTEXT_TYPE, InitFlag, RknnInitExtend
from .context import Context
from .custom_ops import CustomOp, load_custom_ops
from .library import Library, check, load_library
from .runner import RknnRunner
from .soc import Soc, detect_soc
from .zero_copy import ZeroCopy

__all__ = ["RknnBackend", "RknnRunner", "load"]


class RknnBackend(ZeroCopy, Backend):
    """One model loaded into librknnrt; ``open_runner`` gives each worker slot its own context."""

    name = "rknn"
    device_type = "rknpu2"

    def __init__(
        self,
        lib: Library,
        soc: Soc,
        model: bytes,
        options: ProviderOptions,
        share_with: Optional[RknnBackend] = None,
    ) -> None:
        self.providers = [RKNPU2_PROVIDER]
        self.soc = soc
        self.library_path = lib.path
        self._lib = lib
        self._model = model
        self._options = options
        self._owner = share_with
        self._lock = threading.Lock()
        self._origin_taken = False
        self._closed = False
        self.buffers = BufferTracker()
        self.dynamic = None
        wants_ops = bool(options.custom_op_paths) or options.custom_op_default_path
        if share_with is not None and wants_ops:
            raise ValueError("use_weight_from cannot be combined with custom-op loading")
        if share_with is not None and share_with._closed:
            raise ValueError("use_weight_from names a session that is already closed")
        if wants_ops:
            warnings.warn(
                "custom op libraries requested: rknn_dup_context is disabled for stability, "
                "every worker context gets its own rknn_init",
                UserWarning,
                stacklevel=3,
            )
        self._ops: list[CustomOp] = load_custom_ops(
            options.custom_op_paths, options.custom_op_default_path
        )
        self._fresh_contexts = (
            options.disable_dup_context
            or wants_ops
            or share_with is not None
            or not lib.has("rknn_dup_context")
        )
        # A zero-copy-only runtime (RV1103/RV1106) has no copying runs to keep apart from binding
        # runs: workers bind on their own contexts and mems live on the first one.
        self._zero_copy_only = not lib.has("rknn_inputs_set")
        self._origin = self._init_context()
        try:
            self._describe()
            self._describe_zero_copy()
        except BaseException:
            self._origin.close()
            raise

    # ------------------------------------------------------------------ contexts

    def _init_context(self) -> Context:
        """A fresh rknn_init of the model bytes (sharing the owner's weights if asked)."""
        handle = CONTEXT_TYPE()
        owner = self._owner._origin if self._owner is not None else None
        extend = None
        if owner is not None:
            extend = RknnInitExtend()
            extend.ctx = owner.handle
        flags = InitFlag.SHARE_WEIGHT_MEM if owner is not None else InitFlag.NONE
        code = self._lib.rknn_init(
            ctypes.byref(handle),
            self._model,
            len(self._model),
            flags,
            None if extend is None else ctypes.byref(extend),
        )
        check("rknn_init", code)
        context = Context(self._lib, handle.value, owner)
        try:
            for op in self._ops:
                check(
                    "rknn_register_custom_ops",
                    self._lib.rknn_register_custom_ops(context.handle, op.pointer, 1),
                )
        except BaseException:
            context.close()
            raise
        return context

    def _dup_context(self) -> Context:
        origin = self._origin
        source, handle = CONTEXT_TYPE(origin.handle), CONTEXT_TYPE()
        with origin.lock:
            code = self._lib.rknn_dup_context(ctypes.byref(source), ctypes.byref(handle))
        check("rknn_dup_context", code)
        return Context(self._lib, handle.value, origin, dup=True)

    def default_cores(self) -> list[int]:
        return list(self.soc.cores)

    def check_cores(self, cores: Sequence[int]) -> None:
        self.soc.check_cores(cores)

    def open_runner(self, slot: SlotSpec) -> RknnRunner:
        """Each runner gets a dup of the first context, which stays idle: tensor mems are made
        on it, and dups for binding are taken from it, without waiting behind an inference.
        Without dups (fresh contexts, RV1106) the first runner uses the first context."""
        mask = None if slot.core_mask is None else self.soc.core_mask(slot.core_mask)
        with self._lock:
            if self._closed:
                raise BackendClosedError("the RKNN backend is closed")
            reuse_origin = not self._origin_taken and (self._fresh_contexts or self._zero_copy_only)
            self._origin_taken = True
        if reuse_origin:
            context = self._origin
        else:
            context = self._init_context() if self._fresh_contexts else self._dup_context()
        try:
            self._bind_cores(context, mask)
        except BaseException:
            if not reuse_origin:
                context.close()
            raise
        return RknnRunner(self, context, owns_context=not reuse_origin, mask=mask)

    def _bind_cores(self, context: Context, mask: Optional[int]) -> None:
        if mask is not None:
            with context.lock:
                code = self._lib.rknn_set_core_mask(context.handle, mask)
            check("rknn_set_core_mask", code)

    def close(self) -> None:
        """Frees the buffers users still hold, then destroys the first context once every
        runner's, every sharer's context and every tensor mem are gone."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self.buffers.release_all()
        finally:
            self._origin.close()  # destroyed once the last mem (one still pinned) is gone


def load(
    source: Any,
    options: ProviderOptions,
    *,
    sess_options: Any = None,
    providers: Any = None,
    share_with: Optional[Backend] = None,
) -> RknnBackend:
    """Entry point of backends.load_backend: ``source`` is a ``ModelSource`` (bytes + path).
    ``sess_options`` and ``providers`` mean nothing to librknnrt: ignored, as in the original.
    """
    if share_with is not None and not isinstance(share_with, RknnBackend):
        raise ValueError("use_weight_from must be a session running on the RKNN backend")
    return RknnBackend(load_library(), detect_soc(), bytes(source.data), options, share_with)
