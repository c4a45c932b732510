"""A backend runner made of a plain function, for engine tests (like httpx's MockTransport)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Callable, Optional

import numpy as np

from ez_rknn_async.backends.base import Runner, SlotSpec
from ez_rknn_async.engine.core import Engine, EngineConfig

__all__ = ["FunctionRunner", "Gate", "make_engine", "echo", "wait_for", "hold_runners"]


def echo(inputs: Sequence[np.ndarray], output_indices: Sequence[int]) -> list[np.ndarray]:
    """Returns the first input, once per requested output."""
    return [np.asarray(inputs[0]) for _ in output_indices]


class FunctionRunner(Runner):
    """Runs ``fn``; records which thread ran each call and catches concurrent use of the slot."""

    def __init__(self, fn: Callable = echo, delay: float = 0.0) -> None:
        self.fn = fn
        self.delay = delay
        self.threads: list[str] = []
        self.closed = 0
        self.violations = 0
        self._busy = threading.Lock()

    def run(self, inputs, output_indices):
        if not self._busy.acquire(blocking=False):
            self.violations += 1  # two threads on one runner: the engine broke its promise
            raise AssertionError("runner used by two threads at once")
        try:
            self.threads.append(threading.current_thread().name)
            if self.delay:
                time.sleep(self.delay)
            return self.fn(inputs, output_indices)
        finally:
            self._busy.release()

    def close(self) -> None:
        self.closed += 1


def make_engine(
    n: int = 2,
    fn: Callable = echo,
    delay: float = 0.0,
    cores: Optional[Sequence[int]] = None,
    **config,
) -> tuple[Engine, list[FunctionRunner]]:
    runners = [FunctionRunner(fn, delay) for _ in range(n)]
    cores = list(cores) if cores is not None else list(range(n))
    slots = [(SlotSpec(i, cores[i], 1 << cores[i]), runner) for i, runner in enumerate(runners)]
    return Engine(slots, EngineConfig(**config)), runners


class Gate:
    """A runner function that blocks until ``open()``: lets a test hold workers busy (a hung
    inference, when the test closes the engine before opening the gate)."""

    def __init__(self, limit: float = 10.0) -> None:
        self.started = threading.Event()
        self._open = threading.Event()
        self._entered = threading.Condition()
        self.entered = 0  # calls that reached the gate
        self.limit = limit  # the longest a call waits (a test that forgets to open ends anyway)

    def __call__(self, inputs, output_indices):
        with self._entered:
            self.entered += 1
            self._entered.notify_all()
        self.started.set()
        self._open.wait(self.limit)
        return [inputs[0] for _ in output_indices]

    def wait_entered(self, n: int, timeout: float = 5.0) -> bool:
        """Wait until ``n`` calls are blocked at (or went through) the gate."""
        with self._entered:
            return self._entered.wait_for(lambda: self.entered >= n, timeout)

    def open(self) -> None:
        self._open.set()


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it holds (for engine states no event announces)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


class _Held(Runner):
    """Wraps a backend's runner so every task first waits for the gate."""

    def __init__(self, runner: Runner, gate: threading.Event) -> None:
        self._runner, self._gate = runner, gate

    def run(self, inputs, output_indices):
        self._gate.wait(10)
        self._gate.runs += 1  # type: ignore[attr-defined]
        return self._runner.run(inputs, output_indices)

    def close(self) -> None:
        self._runner.close()


def hold_runners(monkeypatch) -> threading.Event:
    """Make every onnxruntime runner opened from now on wait for the returned event before each
    task; ``event.runs`` counts the tasks that ran."""
    from ez_rknn_async.backends.onnxruntime import OnnxRuntimeBackend

    gate = threading.Event()
    gate.runs = 0  # type: ignore[attr-defined]
    open_runner = OnnxRuntimeBackend.open_runner
    monkeypatch.setattr(
        OnnxRuntimeBackend, "open_runner", lambda self, slot: _Held(open_runner(self, slot), gate)
    )
    return gate
