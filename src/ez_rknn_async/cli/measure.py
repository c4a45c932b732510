"""The measurement loop and its drivers: how ``ez-rknn bench`` issues frames and times them.

A *driver* issues frames one at a time and reports each completion; the loop in ``measure`` owns
the clock. Three drivers cover everything: ``RunDriver`` (sequential ``run``), ``AsyncDriver``
(``run_async`` with a window of ``depth`` frames in flight) and ``PipelineDriver``
(``run_pipeline``), plus ``OpenVinoDriver`` for OpenVINO's ``AsyncInferQueue``. Our session and
plain onnxruntime share the first two, because onnxruntime's ``run`` and ``run_async`` have the
signatures ours copies, so the comparison runs literally the same loop.

Latency of a frame = its completion instant minus its submission instant, as the caller sees it
(for the pipeline: until ``run_pipeline`` hands the result back). Duration = first submission to
last completion; fps = frames / duration (OpenVINO ``benchmark_app``'s definitions).
"""

from __future__ import annotations

import collections
import math
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..errors import InferenceError

__all__ = [
    "Budget",
    "Timeline",
    "Progress",
    "Driver",
    "RunDriver",
    "AsyncDriver",
    "PipelineDriver",
    "OpenVinoDriver",
    "measure",
]

Done = Callable[[int], None]


@dataclass(frozen=True)
class Budget:
    """When a measurement stops: after ``frames`` frames or ``seconds`` seconds, whichever first."""

    frames: Optional[int] = None
    seconds: Optional[float] = None

    def __post_init__(self) -> None:
        if self.frames is None and self.seconds is None:
            raise ValueError("a budget needs frames or seconds")

    def reached(self, frames: int, elapsed: float) -> bool:
        return (self.frames is not None and frames >= self.frames) or (
            self.seconds is not None and elapsed >= self.seconds
        )

    def split(self, parts: int) -> Budget:
        """The budget of one of ``parts`` interleaved rounds."""
        frames = None if self.frames is None else max(1, math.ceil(self.frames / parts))
        seconds = None if self.seconds is None else self.seconds / parts
        return Budget(frames, seconds)


@dataclass
class Timeline:
    """Submission and completion instants (``perf_counter`` seconds) of each frame."""

    submitted: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.submitted)

    @property
    def duration(self) -> float:
        return max(self.done) - self.submitted[0] if self.submitted else 0.0

    @property
    def latencies(self) -> list[float]:
        return [end - start for start, end in zip(self.submitted, self.done)]


class Progress(ABC):
    """Where the loop reports how far it is (a tqdm bar in human mode, nothing otherwise)."""

    @abstractmethod
    def start(self, title: str, budget: Budget) -> None: ...

    @abstractmethod
    def update(self, frames: int, elapsed: float) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...


class Driver(ABC):
    """Issues frames to one runtime in one mode."""

    def begin(self, done: Done) -> None:
        """Called before the first ``issue`` of a measurement with the completion recorder."""
        self._done = done

    @abstractmethod
    def issue(self, index: int) -> None:
        """Submit frame ``index``; ``self._done(index)`` must be called once it completes."""

    def finish(self) -> None:  # noqa: B027 - synchronous drivers have nothing in flight
        """Wait until every issued frame completed; raise the first failure."""


class RunDriver(Driver):
    """``sess.run(None, feed)`` in a loop: ours or onnxruntime's, same call."""

    def __init__(self, session: Any, feed: dict[str, Any]) -> None:
        self._session, self._feed = session, feed

    def issue(self, index: int) -> None:
        self._session.run(None, self._feed)
        self._done(index)


class AsyncDriver(Driver):
    """``sess.run_async`` with at most ``depth`` frames in flight (ours or onnxruntime's >= 1.16).

    The window is what OpenVINO's ``-nireq`` is: without it, latency would measure queueing.
    """

    def __init__(self, session: Any, feed: dict[str, Any], depth: int) -> None:
        self._session, self._feed, self._depth = session, feed, depth
        self._slots = threading.Semaphore(depth)
        self._error = ""

    def _callback(self, results: Any, index: int, err: str) -> None:
        if err and not self._error:
            self._error = err
        self._done(index)
        self._slots.release()

    def _raise_error(self) -> None:
        if self._error:
            error, self._error = self._error, ""
            raise InferenceError(f"run_async failed: {error}")  # a callback has only the text

    def issue(self, index: int) -> None:
        self._slots.acquire()
        self._raise_error()
        self._session.run_async(None, self._feed, self._callback, index)

    def finish(self) -> None:
        for _ in range(self._depth):
            self._slots.acquire()
        for _ in range(self._depth):
            self._slots.release()
        self._raise_error()


class PipelineDriver(Driver):
    """``sess.run_pipeline(feed, depth)``: each call returns the frame ``depth`` calls older."""

    def __init__(self, session: Any, feed: dict[str, Any], depth: int) -> None:
        self._session, self._feed, self._depth = session, feed, depth
        self._pending: collections.deque[int] = collections.deque()

    def issue(self, index: int) -> None:
        self._pending.append(index)
        if self._session.run_pipeline(self._feed, self._depth) is not None:
            self._done(self._pending.popleft())

    def finish(self) -> None:
        for _ in self._session.drain_pipeline():
            self._done(self._pending.popleft())
        if self._pending:
            raise RuntimeError(f"drain_pipeline left {len(self._pending)} frames unaccounted")


class OpenVinoDriver(Driver):
    """OpenVINO's ``AsyncInferQueue`` with ``depth`` infer requests (``benchmark_app -nireq``)."""

    def __init__(self, compiled: Any, feed: dict[str, Any], depth: int) -> None:
        import openvino

        self._feed = feed
        self._queue = openvino.AsyncInferQueue(compiled, depth)
        self._queue.set_callback(lambda request, index: self._done(index))

    def issue(self, index: int) -> None:
        self._queue.start_async(self._feed, index)

    def finish(self) -> None:
        self._queue.wait_all()


def measure(
    driver: Driver, budget: Budget, progress: Optional[Progress] = None, title: str = ""
) -> Timeline:
    """Issue frames until ``budget`` is reached, then wait for all of them. The only loop."""
    timeline = Timeline()
    submitted, done = timeline.submitted, timeline.done
    clock = time.perf_counter

    def complete(index: int) -> None:
        done[index] = clock()

    driver.begin(complete)
    if progress is not None:
        progress.start(title, budget)
    start = clock()
    frames = 0
    try:
        while not budget.reached(frames, clock() - start):
            submitted.append(clock())
            done.append(math.nan)
            driver.issue(frames)
            frames += 1
            if progress is not None:
                progress.update(frames, clock() - start)
        driver.finish()
    finally:
        if progress is not None:
            progress.stop()
    return timeline
