"""The rows ``ez-rknn bench`` can measure besides ours, and opening each runtime once.

``COMPARATORS`` is the table ``--compare`` chooses from (and ``bench --help`` prints); ``ROWS``
says which session and which driver (``measure.py``) each row runs on; ``Sessions`` opens each
runtime once per run and times its load; ``why_not`` is the note a comparator that cannot run
here gets instead of failing the whole run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from .errors import MODEL_HINT, user_input
from .measure import AsyncDriver, Driver, OpenVinoDriver, PipelineDriver, RunDriver

if TYPE_CHECKING:
    from .bench import Plan

__all__ = ["Comparator", "COMPARATORS", "ROWS", "Sessions", "make_driver", "why_not", "row_names"]


@dataclass(frozen=True)
class Comparator:
    """A plain-runtime row: what it is, what it needs, how its driver is made. ``model`` is the
    file kind it loads; ``per_mode`` comparators give one row per mode of ours (``ztu-run``...)."""

    label: str
    requires: str
    pip: str
    model: str = "onnx"
    per_mode: bool = False


COMPARATORS: dict[str, Comparator] = {
    "ort": Comparator(
        "onnxruntime run (default threads)", "onnxruntime", "pip install onnxruntime"
    ),
    "ort-1t": Comparator(
        "onnxruntime run (intra_op_num_threads=1)", "onnxruntime", "pip install onnxruntime"
    ),
    "ort-async": Comparator(
        "onnxruntime run_async (default threads)", "onnxruntime", "pip install onnxruntime"
    ),
    "openvino": Comparator(
        "OpenVINO AsyncInferQueue (CPU, THROUGHPUT hint)", "openvino", "pip install openvino"
    ),
    "ztu": Comparator(
        "the original C++ library (.rknn), one row per --mode",
        "ztu_somemodelruntime_ez_rknn_async",
        "pip install ztu-somemodelruntime-ez-rknn-async",
        model="rknn",
        per_mode=True,
    ),
    "rknnlite": Comparator(
        "Rockchip RKNNLite inference (.rknn, boards)",
        "rknnlite",
        "pip install rknn-toolkit-lite2 on the board",
        model="rknn",
    ),
}
_OUR_LABELS = {
    "run": "ez-rknn run",
    "async": "ez-rknn run_async",
    "pipeline": "ez-rknn run_pipeline",
}
_ZTU_LABELS = {mode: label.replace("ez-rknn", "original") for mode, label in _OUR_LABELS.items()}


#: Row -> (session it runs on, driver). Rows share sessions where the runtime allows it (our three
#: modes; ``ort`` and ``ort-async``), so a comparison loads each model once per runtime.
ROWS: dict[str, tuple[str, str]] = {
    "run": ("ours", "run"),
    "async": ("ours", "async"),
    "pipeline": ("ours", "pipeline"),
    "ort": ("ort", "run"),
    "ort-1t": ("ort-1t", "run"),
    "ort-async": ("ort", "async"),
    "openvino": ("openvino", "openvino"),
    "ztu-run": ("ztu", "run"),
    "ztu-async": ("ztu", "async"),
    "ztu-pipeline": ("ztu", "ztu-pipeline"),
    "rknnlite": ("rknnlite", "run"),
}


class Sessions:
    """Opens each runtime once, times the load, and closes everything at the end."""

    def __init__(self, plan: Plan, stack: contextlib.ExitStack) -> None:
        self._plan, self._stack = plan, stack
        self._cache: dict[str, tuple[Any, float]] = {}
        self._openers: dict[str, Callable[[], Any]] = {
            "ours": self._open_ours,
            "ort": lambda: self._open_ort(None),
            "ort-1t": lambda: self._open_ort(1),
            "openvino": self._open_openvino,
            "ztu": self._open_ztu,
            "rknnlite": self._open_rknnlite,
        }

    def get(self, key: str) -> tuple[Any, float]:
        """(session, seconds its load took) of ``ours``, ``ort``, ``ort-1t`` or ``openvino``."""
        if key not in self._cache:
            start = time.perf_counter()
            session = self._openers[key]()
            self._cache[key] = (session, time.perf_counter() - start)
        return self._cache[key]

    def _options(self) -> dict[str, Any]:
        """Provider options of ours and of the original: the plan's, and a queue for --depth."""
        depth = self._plan.depth
        queue: dict[str, Any] = {} if depth is None else {"max_queue_size": max(3, depth)}
        return {**queue, **self._plan.provider_options}

    def _open_ours(self) -> Any:
        from .. import InferenceSession, make_provider_options

        options = make_provider_options(**self._options())
        with user_input(MODEL_HINT):
            session = InferenceSession(self._plan.model, provider_options=options)
        self._stack.callback(session.close)
        return session

    def _open_ztu(self) -> Any:
        from .rivals import open_ztu

        return open_ztu(self._plan.model, self._options())  # freed with its last reference

    def _open_rknnlite(self) -> Any:
        from .rivals import open_rknnlite

        session = open_rknnlite(self._plan.model)
        self._stack.callback(session.close)
        return session

    def _open_ort(self, threads: Optional[int]) -> Any:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        return onnxruntime.InferenceSession(
            self._plan.model, options, providers=["CPUExecutionProvider"]
        )

    def _open_openvino(self) -> Any:
        import openvino

        return openvino.Core().compile_model(
            self._plan.model, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"}
        )


def make_driver(kind: str, session: Any, feed: dict[str, Any], depth: int) -> Driver:
    if kind == "run":
        return RunDriver(session, feed)
    if kind == "async":
        return AsyncDriver(session, feed, depth)
    if kind == "pipeline":
        return PipelineDriver(session, feed, depth)
    if kind == "ztu-pipeline":
        from .rivals import ZtuPipelineDriver

        return ZtuPipelineDriver(session, feed, depth)
    return OpenVinoDriver(session, feed, depth)


def why_not(name: str, backend: str) -> Optional[str]:
    """Why comparator ``name`` cannot run here, or None if it can."""
    comparator = COMPARATORS[name]
    if comparator.model == "onnx" and backend == "rknn":
        return "needs an ONNX model (this one is .rknn)"
    if comparator.model == "rknn" and backend != "rknn":
        return "needs an .rknn model on the RKNN backend"
    if importlib.util.find_spec(comparator.requires) is None:
        return f"{comparator.requires} is not installed ({comparator.pip})"
    if name == "ort-async":
        import onnxruntime

        if not hasattr(onnxruntime.InferenceSession, "run_async"):
            return f"onnxruntime {onnxruntime.__version__} has no run_async (needs >= 1.16)"
    return None


def row_names(plan: Plan) -> list[tuple[str, str, str]]:
    """(row, comparator or "" for ours, label) of every requested row, ours first; a per-mode
    comparator gives one row per mode of ours."""
    names = [(mode, "", _OUR_LABELS[mode]) for mode in plan.modes]
    for name in plan.compare:
        if COMPARATORS[name].per_mode:
            names += [(f"{name}-{mode}", name, _ZTU_LABELS[mode]) for mode in plan.modes]
        else:
            names.append((name, name, COMPARATORS[name].label))
    return names
