"""``Completion``, the engine's own lighter Future (run_pipeline, run() on a busy engine): a
start and a cancel never both win, the outcome is set once and seen by every waiter, and an
error comes back as the error."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError

import pytest

from ez_rknn_async.engine.completion import Completion

from fakes import Gate, make_engine, wait_for


def test_a_started_task_cannot_be_cancelled_and_a_cancelled_one_cannot_start():
    started = Completion()
    assert started.set_running_or_notify_cancel()
    assert not started.cancel()
    assert not started.done()
    started.set_result([1])
    assert started.done() and started.result() == [1]

    cancelled = Completion()
    assert cancelled.cancel()
    assert cancelled.cancel()  # still cancelled: True, as a Future says
    assert not cancelled.set_running_or_notify_cancel()
    assert cancelled.done()
    with pytest.raises(CancelledError):
        cancelled.result()


def test_start_and_cancel_race_exactly_one_wins():
    for _ in range(200):
        completion = Completion()
        barrier = threading.Barrier(2, timeout=5)
        outcomes: dict[str, bool] = {}

        def start(c=completion, b=barrier, out=outcomes):
            b.wait()
            out["start"] = c.set_running_or_notify_cancel()

        thread = threading.Thread(target=start)
        thread.start()
        barrier.wait()
        outcomes["cancel"] = completion.cancel()
        thread.join(5)
        assert outcomes["start"] != outcomes["cancel"]


def test_every_waiter_gets_the_outcome_set_from_another_thread():
    completion = Completion()
    assert completion.set_running_or_notify_cancel()
    ready = threading.Barrier(4, timeout=5)
    got: list[object] = []

    def wait():
        ready.wait()
        got.append(completion.result())

    waiters = [threading.Thread(target=wait) for _ in range(3)]
    for thread in waiters:
        thread.start()
    ready.wait()
    completion.set_result("frame")
    for thread in waiters:
        thread.join(5)
    assert got == ["frame"] * 3
    assert completion.result() == "frame"  # and again, later


def test_an_error_is_raised_to_each_caller():
    completion = Completion()
    completion.set_running_or_notify_cancel()
    completion.set_exception(ValueError("bad frame"))
    for _ in range(2):
        with pytest.raises(ValueError, match="bad frame"):
            completion.result()


def test_a_run_on_a_busy_engine_waits_for_its_worker():
    """The path that uses a Completion for run(): every slot busy, so the task is queued."""
    gate = Gate()
    engine, _ = make_engine(1, gate, max_queue_size=2)
    try:
        first = engine.submit([1], (0,))
        assert gate.started.wait(5)
        result: list[object] = []
        caller = threading.Thread(target=lambda: result.append(engine.run_inline([2], (0,))))
        caller.start()
        assert wait_for(lambda: engine.stats().queued == 1)
        gate.open()
        caller.join(5)
        assert [int(v) for v in result[0]] == [2]
        assert int(first.result(5)[0]) == 1
    finally:
        gate.open()
        engine.close()
