"""The work item: one inference, and where its outcome goes."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any, Callable, Optional, Union

import numpy as np

from ..backends.base import Runner
from .completion import Completion
from .ordering import report_unraisable

__all__ = ["Task"]


class Task:
    """One inference request.

    ``inputs`` is what the runner method takes: a list of arrays, or an I/O binding's buffers.

    Its outcome goes to exactly one place: a ``Future`` (``submit``) or a ``Completion``
    (``run`` on a busy engine, ``run_pipeline``), a
    ``deliver(task, results, exc)`` hook (``run_async``: the ordering stage), or, with neither,
    the task itself, for ``outcome()`` (a ``run()`` on the caller's thread). ``method`` names the
    runner method that takes ``(inputs, output_indices)``: ``run``, or another entry point such as
    an I/O-binding run, which then gets the same queueing and exclusivity. ``seq`` is the
    callback sequence number, ``core`` the core the task is bound to (None: any worker), ``slot``
    the engine's worker slot the task has borrowed to run on the caller's thread (or None).
    """

    __slots__ = (
        "inputs",
        "output_indices",
        "method",
        "future",
        "deliver",
        "core",
        "seq",
        "slot",
        "queued_at",
        "results",
        "error",
    )

    def __init__(
        self,
        inputs: Any,
        output_indices: Sequence[int],
        method: str = "run",
        *,
        future: Optional[Union[Future, Completion]] = None,
        deliver: Optional[Callable[[Task, Any, Any], None]] = None,
    ) -> None:
        self.inputs = inputs
        self.output_indices = output_indices
        self.method = method
        self.future = future
        self.deliver = deliver
        self.core: Optional[int] = None
        self.seq = -1
        self.slot: Any = None
        self.queued_at = 0.0  # monotonic() when admitted to the queue
        self.results: Optional[list[np.ndarray]] = None
        self.error: Optional[BaseException] = None

    def run(self, runner: Runner, claim: Optional[Callable[[], Any]] = None) -> Optional[bool]:
        """Claim the task (skip it if cancelled), run it, publish the outcome. Never raises.

        Returns whether the runner succeeded, or None if the task was cancelled. A worker passes
        ``claim``: the outcome is published only if ``claim()`` does not raise ``IndexError``
        (raised once ``close()`` gave up on this run at its deadline and failed the task)."""
        if self.future is not None and not self.future.set_running_or_notify_cancel():
            return None
        error: Optional[BaseException] = None
        try:
            results = getattr(runner, self.method)(self.inputs, self.output_indices)
        except BaseException as exc:  # noqa: BLE001 - every failure belongs to the caller
            results, error = None, exc
        ok = error is None
        if claim is not None:
            try:
                claim()
            except IndexError:  # close() gave up on this run and failed the task already
                return ok
        self.finish(results, error)
        error = None  # no exception -> traceback -> this frame -> exception cycle
        return ok

    def finish(self, results: Optional[list[np.ndarray]], exc: Optional[BaseException]) -> None:
        self.inputs = ()  # drop the input arrays as soon as they are no longer needed
        if self.future is None and self.deliver is None:
            self.results, self.error = results, exc  # no user code: nothing to guard
            return
        try:
            if self.future is not None:
                if exc is None:
                    self.future.set_result(results)
                else:
                    self.future.set_exception(exc)
            else:
                self.deliver(self, results, exc)  # type: ignore[misc]  # not None here
        except BaseException as error:  # noqa: BLE001 - user code (a future's done-callback)
            # must not kill the worker thread; the outcome itself is already published
            report_unraisable(error, f"Exception ignored while publishing the outcome of {self!r}")

    def outcome(self) -> list[np.ndarray]:
        """The results of a task that kept its outcome (no future, no hook), or its error."""
        error = self.error
        if error is None:
            return self.results  # type: ignore[return-value]  # set by finish()
        self.error = None  # no task -> traceback -> frame -> task cycle
        try:
            raise error
        finally:
            del error

    def abandon(self, exc: BaseException) -> None:
        """Fail a task whose worker ``close()`` gave up on (the task was claimed from it)."""
        if self.future is None or not self.future.done():  # not a cancelled one
            self.finish(None, exc)

    def fail(self, exc: BaseException) -> None:
        """Fail a task that never ran (queue flushed by ``close()``)."""
        if self.future is not None and not self.future.set_running_or_notify_cancel():
            return
        self.finish(None, exc)
