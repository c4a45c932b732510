"""An adversarial audit of the engine's close deadline, BROKEN state and stats record (issue 9
§1), on function runners: each test is named after what it broke, or after what held."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest

from ez_rknn_async import SessionBrokenError, SessionClosedError, SubmitTimeoutError
from ez_rknn_async.engine.lifecycle import State

from fakes import Gate, make_engine, wait_for


def test_busy_time_of_a_slot_running_a_queued_task_is_that_tasks_time_not_the_uptime():
    """A worker thread that took a task from the queue never stamped ``since``: its running
    slot's ``busy_s`` was ``monotonic()`` itself (hours), then fell back once the task ended: a
    counter that jumps and goes down."""
    gate = Gate()
    engine, _ = make_engine(1, gate)
    before = time.monotonic()
    future = engine.submit([1], (0,))
    assert gate.wait_entered(1)
    running = engine.stats().slots[0]
    assert running.state == "running"
    assert 0 <= running.busy_s <= time.monotonic() - before
    gate.open()
    future.result(5)
    assert wait_for(lambda: engine.stats().slots[0].completed == 1)
    after = engine.stats().slots[0].busy_s
    assert running.busy_s <= after <= time.monotonic() - before  # a counter only grows
    assert engine.close(timeout=5) is True


@pytest.mark.parametrize("timeout", [float("inf"), 1e300, float("nan"), -0.5])
def test_an_unbounded_close_timeout_is_refused_before_anything_closes(timeout):
    """close(timeout=inf) (or any value past the platform's longest wait) raised OverflowError
    from inside the join, after the queue was failed: the engine stayed CLOSING forever, its
    runners never closed and its callback thread never ended."""
    engine, runners = make_engine(1)
    with pytest.raises(ValueError, match=r"close\(timeout=\)"):
        engine.close(timeout=timeout)
    assert engine.state is State.OPEN and engine.run_inline([2], (0,)) == [2]
    assert engine.close(timeout=5) is True
    assert engine.state is State.CLOSED and runners[0].closed == 1
    assert wait_for(lambda: not engine._callbacks.thread.is_alive())
