"""The ``run_pipeline`` window: a FIFO of the frames in flight, and its drain."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable, Optional

from .completion import Completion

__all__ = ["Pipeline"]


class Pipeline:
    """Sliding window of ``depth`` frames.

    Each ``push`` submits a frame; once more than ``depth`` are in flight it waits for the oldest
    and returns its results, so results come back in submission order, ``depth`` calls late.
    Starting, ``reset=True`` or a new ``depth`` discards the frames in flight (cancelled if they
    have not started; results of running ones are dropped), as in the original. ``drain`` returns
    what is still in flight, oldest first. A lock makes concurrent producers safe: each push is
    submitted and enqueued atomically, so the FIFO order is the submission order.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: deque[Completion] = deque()
        self._depth: Optional[int] = None

    def push(
        self, submit: Callable[[], Completion], depth: int, reset: bool
    ) -> Optional[list[Any]]:
        with self._lock:
            future = submit()  # errors here leave the pipeline as it was
            if reset or depth != self._depth:
                self._discard()
                self._depth = depth
            self._pending.append(future)
            if len(self._pending) <= depth:
                return None
            oldest = self._pending.popleft()
        return oldest.result()

    def drain(self) -> list[list[Any]]:
        """Wait for every frame in flight; the pipeline is empty afterwards.

        If frames failed, the first failure is raised once all were collected (the successful
        ones are on the exception as ``.results``), so one bad frame does not hide the rest.
        """
        with self._lock:
            pending = list(self._pending)
            self._pending.clear()
        results: list[list[Any]] = []
        first_error: Optional[BaseException] = None
        for future in pending:
            try:
                results.append(future.result())
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                first_error = first_error or exc
        if first_error is not None:
            first_error.results = results  # type: ignore[attr-defined]
            raise first_error
        return results

    def discard(self) -> None:
        with self._lock:
            self._discard()

    def __len__(self) -> int:
        return len(self._pending)

    def _discard(self) -> None:
        while self._pending:
            self._pending.popleft().cancel()
