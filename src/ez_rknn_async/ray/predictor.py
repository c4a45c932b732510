"""``Predictor``: a callable class for ``ray.data.Dataset.map_batches``, one session per actor.

    ds.map_batches(Predictor, fn_constructor_kwargs={"model": PATH, **provider_options},
                   compute=ActorPoolStrategy(size=BOARDS), resources={"rknpu": 1},
                   batch_size=64)

(``concurrency=BOARDS`` before Ray 2.51.) Ray Data starts that many actors, each on a node that
advertises an ``rknpu`` (one per board); each actor builds one ``InferenceSession`` over every
NPU core of its board and feeds it batch after batch. How rows map to the model's tensors is in
``columns.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..options import make_provider_options
from ..session import InferenceSession
from .columns import input_rows, output_column

__all__ = ["Predictor"]


class Predictor:
    """Runs each batch of a Ray Dataset through one ``InferenceSession`` (all NPU cores).

    ``model``: the model's path on every node (or its bytes); the other keyword arguments are
    ``make_provider_options`` keys (``schedule``, ``max_queue_size``...), validated here, so a
    wrong key fails the actor's construction with a message naming it. ``output_names``: the
    outputs to compute (default all). ``keep_inputs``: keep the model's input columns in the
    result (default: dropped, they are the large tensors).

    Columns: one per model input, named after it, one sample per row (``columns.py``: a row of
    an input [1, 3, H, W] holds [3, H, W] or [1, 3, H, W]); the result has one column per output,
    named after it, one row per input row and in the same order ([1, 1000] -> rows of [1000]).
    Every other column (an id, a path, a timestamp) is passed through unchanged, so results can
    be joined to their frames; an output named like one of them is refused rather than
    overwriting it. Dtypes follow the session's policy: arrays of a dtype the model does not
    take are refused, not cast. Errors name the column, the model input, and expected vs got.

    Batches: ``batch_format="numpy"`` (Ray's default: a dict of arrays) or ``"pandas"``. Every
    row of a batch is submitted at once: the session's bounded queue keeps all cores busy and
    holds the submitter back, results come back in row order. The cores idle briefly at the
    end of each batch, so larger ``batch_size`` (64 or more) runs closer to full speed. Across
    batches Ray Data keeps the dataset's order when ``DataContext.execution_options.
    preserve_order`` is set.

    Faults: for actors Ray Data sets ``max_restarts=-1`` and ``max_task_retries=-1`` unless
    ``map_batches`` is given other values: a board that dies mid-stream takes its actor with it,
    the actor restarts on a board that still has an ``rknpu`` free, and the batches it held are
    run again there (keep those defaults; ``max_restarts=0`` turns this off). An inference error
    or a bad input is not retried: it fails the dataset with this class's message in the chain.

    Teardown: Ray Data deletes the actor's instance when the pool shuts down (``__del__``);
    ``close()`` does the same explicitly and is idempotent.
    """

    def __init__(
        self,
        model: Any,
        *,
        output_names: Optional[Sequence[str]] = None,
        keep_inputs: bool = False,
        **provider_options: Any,
    ) -> None:
        self._session: Optional[InferenceSession] = None
        options = make_provider_options(**provider_options)
        if isinstance(output_names, str):
            raise TypeError(
                f"output_names must be a list of output names, not a string ({output_names!r})"
            )
        self._label = (
            f"Predictor({Path(model).name if isinstance(model, (str, Path)) else 'bytes'})"
        )
        self._session = InferenceSession(model, provider_options=options)
        self._inputs = self._session.get_inputs()
        outputs = {arg.name: arg for arg in self._session.get_outputs()}
        names = list(output_names) if output_names else list(outputs)
        unknown = [name for name in names if name not in outputs]
        if unknown:
            self.close()
            raise ValueError(
                f"{self._label}: unknown output name(s) {unknown}; the model's outputs are "
                f"{list(outputs)}"
            )
        self._outputs = [outputs[name] for name in names]
        self._keep_inputs = bool(keep_inputs)

    def __call__(self, batch: Any) -> Any:
        """One batch in, the same batch format out (see the class docstring)."""
        if isinstance(batch, Mapping):
            return self._predict(batch, dict(batch))
        frame_type = _pandas_frame()
        if frame_type is not None and isinstance(batch, frame_type):
            columns = {name: batch[name].to_numpy() for name in batch.columns}
            result = self._predict(columns, {name: batch[name] for name in batch.columns})
            return frame_type({name: _pandas_values(col) for name, col in result.items()})
        raise TypeError(
            f"{self._label} takes batches of batch_format='numpy' (a dict of arrays, Ray's "
            f"default) or 'pandas', got a {type(batch).__module__}.{type(batch).__name__}"
        )

    def _predict(self, columns: Mapping[str, Any], passed: dict[str, Any]) -> dict[str, Any]:
        """The output columns after the passed-through ones (``passed`` in the batch's own
        format); every check is made before the first row is queued."""
        missing = [arg.name for arg in self._inputs if arg.name not in columns]
        if missing:
            raise ValueError(
                f"{self._label}: the batch has no column for model input(s) {missing}; its "
                f"columns are {list(columns)}; the model's inputs are "
                f"{[arg.name for arg in self._inputs]}"
            )
        if not self._keep_inputs:
            for arg in self._inputs:
                del passed[arg.name]
        clash = [arg.name for arg in self._outputs if arg.name in passed]
        if clash:
            raise ValueError(
                f"{self._label}: model output(s) {clash} would overwrite the batch's column(s) "
                "of the same name; rename them first (Dataset.rename_columns) or choose "
                "output_names"
            )
        feeds = list(zip(*(input_rows(arg, columns[arg.name]) for arg in self._inputs)))
        results = self._run(feeds)
        for k, arg in enumerate(self._outputs):
            passed[arg.name] = output_column(arg, [outputs[k] for outputs in results])
        return passed

    def _run(self, feeds: Sequence[Sequence[Any]]) -> list[list[np.ndarray]]:
        """Every row through the session, results in row order. A row the session refuses
        fails the batch with the row's index; the rows already queued are cancelled or, if
        running, waited for."""
        session = self._open_session()
        names = [arg.name for arg in self._outputs]
        futures: list[Future] = []
        try:
            for i, feed in enumerate(feeds):
                try:
                    futures.append(session.submit(names, list(feed)))
                except (TypeError, ValueError) as exc:
                    kind = TypeError if isinstance(exc, TypeError) else ValueError
                    raise kind(f"{self._label}: row {i} of the batch: {exc}") from exc
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            wait(futures)
            raise

    def _open_session(self) -> InferenceSession:
        if self._session is None:
            raise RuntimeError(f"{self._label} is closed")
        return self._session

    def close(self) -> None:
        """Close the session (idempotent); later batches raise."""
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def __del__(self) -> None:
        if getattr(self, "_session", None) is not None:
            self.close()

    def __repr__(self) -> str:
        return f"<{self._label} {'closed' if self._session is None else 'open'}>"


def _pandas_frame() -> Any:
    """``pandas.DataFrame`` if pandas is importable (Ray Data needs it; this module does not)."""
    try:
        import pandas
    except ImportError:
        return None
    return pandas.DataFrame


def _pandas_values(column: Any) -> Any:
    """A column for a DataFrame: a tensor column as a list of row arrays (Ray turns it back
    into a tensor column), anything else as it is."""
    if isinstance(column, np.ndarray) and column.ndim > 1:
        return list(column)
    return column
