"""The other NPU runtimes ``ez-rknn bench --compare`` runs on the same .rknn model.

Why a module of its own: these are installed comparison targets, never dependencies. ``ztu`` is
the original C++ library (PyPI ``ztu-somemodelruntime-ez-rknn-async``, AGPL: only called, never
read); its ``run`` and ``run_async`` have the signatures ours copies, so the bench's own drivers
serve them, and only its pipeline (no ``drain_pipeline``) needs a driver here. ``rknnlite`` is
Rockchip's RKNNLite (rknn-toolkit-lite2, boards only): one context, one synchronous
``inference`` at a time.
"""

from __future__ import annotations

import collections
import importlib
import os
from typing import Any, Optional

import numpy as np

from .measure import Driver

__all__ = ["ZTU_MODULE", "ZTU_LIBRARY_VAR", "open_ztu", "open_rknnlite", "ZtuPipelineDriver"]

ZTU_MODULE = "ztu_somemodelruntime_ez_rknn_async"
#: Where the original looks for librknnrt; set to the library ours loaded unless the user set it.
ZTU_LIBRARY_VAR = "ZTU_RKNPU2_RUNTIME_LIBRARY"


def open_ztu(model: str, options: dict[str, Any]) -> Any:
    """The original's session on ``model`` with the provider options ours got, on the same
    librknnrt as ours (the variable is read when the module is imported)."""
    from ..backends.rknn.library import load_library

    os.environ.setdefault(ZTU_LIBRARY_VAR, load_library().path)
    ztu = importlib.import_module(ZTU_MODULE)
    return ztu.InferenceSession(model, provider_options=ztu.make_provider_options(**options))


class RknnLite:
    """RKNNLite behind ``run(None, feed)``, so the bench's ``RunDriver`` drives it. 4-D inputs
    are fed NCHW, as ours take them by default."""

    def __init__(self, model: str) -> None:
        from rknnlite.api import RKNNLite

        self._lite = RKNNLite(verbose=False)
        if self._lite.load_rknn(model) != 0:
            raise RuntimeError(f"RKNNLite.load_rknn({model!r}) failed")
        if self._lite.init_runtime(core_mask=RKNNLite.NPU_CORE_AUTO) != 0:
            raise RuntimeError("RKNNLite.init_runtime failed")

    def run(self, output_names: Optional[list[str]], feed: dict[str, np.ndarray]) -> Any:
        arrays = list(feed.values())
        formats = ["nchw" if a.ndim == 4 else "nhwc" for a in arrays]
        return self._lite.inference(inputs=arrays, data_format=formats)

    def close(self) -> None:
        self._lite.release()


def open_rknnlite(model: str) -> RknnLite:
    return RknnLite(model)


class ZtuPipelineDriver(Driver):
    """The original's ``run_pipeline``, which has no drain: ``finish`` pushes dummy frames (the
    same feed) until every real frame came back; results of dummies are dropped when they come
    out, in this measurement or the next."""

    def __init__(self, session: Any, feed: dict[str, Any], depth: int) -> None:
        self._session, self._feed, self._depth = session, feed, depth
        self._pending: collections.deque[Optional[int]] = collections.deque()

    def _push(self, index: Optional[int]) -> None:
        self._pending.append(index)
        if self._session.run_pipeline(self._feed, self._depth) is not None:
            finished = self._pending.popleft()
            if finished is not None:
                self._done(finished)

    def issue(self, index: int) -> None:
        self._push(index)

    def finish(self) -> None:
        while any(index is not None for index in self._pending):
            self._push(None)
