"""An adversarial audit of the engine's close deadline, BROKEN state and stats record (issue 9
§1), on function runners: each test is named after what it broke, or after what held."""

from __future__ import annotations

import contextlib
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


class _Outcomes:
    """Counts how often each Future and each run_async callback is resolved."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.futures: list[Future] = []
        self.callbacks: dict[object, int] = {}
        self.submitted: list[object] = []

    def callback(self, results, user_data, err) -> None:
        with self.lock:
            self.callbacks[user_data] = self.callbacks.get(user_data, 0) + 1


def test_close_with_timeout_zero_races_every_call_mode_while_a_run_hangs():
    """Eight threads submit in every mode while one worker hangs and close(timeout=0) lands:
    close returns at once (BROKEN), every Future is resolved, every callback called exactly
    once, every later call refuses with SessionBrokenError, and nothing is freed under the
    hung run."""
    gate = Gate()
    engine, runners = make_engine(2, gate, max_queue_size=4, submit_timeout_ms=2000)
    seen = _Outcomes()
    hung = engine.submit([0], (0,))
    assert gate.wait_entered(1)
    gate_two = threading.Barrier(9)
    errors: list[BaseException] = []

    def client(n: int) -> None:
        gate_two.wait(5)
        for i in range(50):
            key = (n, i)
            try:
                if i % 3 == 0:
                    future = engine.submit([key], (0,))
                    with seen.lock:
                        seen.futures.append(future)
                elif i % 3 == 1:
                    engine.submit_callback([key], (0,), seen.callback, key)
                    with seen.lock:
                        seen.submitted.append(key)
                else:
                    engine.run_inline([key], (0,))
            except (SessionBrokenError, SessionClosedError, SubmitTimeoutError):
                pass
            except BaseException as exc:  # noqa: BLE001 - fails the test below
                errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    gate_two.wait(5)
    start = time.monotonic()
    with pytest.warns(RuntimeWarning, match="did not finish within close"):
        assert engine.close(timeout=0) is True
    assert time.monotonic() - start < 2.0
    for thread in threads:
        thread.join(10)
    assert not errors and not any(thread.is_alive() for thread in threads)
    assert engine.state is State.BROKEN
    with pytest.raises(SessionBrokenError, match="abandoned"):
        hung.result(0)
    for future in seen.futures:
        assert future.done()  # resolved: results, closed or broken
    assert wait_for(lambda: len(seen.callbacks) == len(seen.submitted))
    assert set(seen.callbacks.values()) <= {1}
    with pytest.raises(SessionBrokenError):
        engine.run_inline([1], (0,))
    assert [r.closed for r in runners] == [0, 0]
    gate.open()
    assert wait_for(lambda: not any(w.thread.is_alive() for w in engine._workers))
    assert sum(seen.callbacks.values()) == len(seen.submitted)  # no late second call
    assert all(r.violations == 0 for r in runners)


def test_a_stuck_callback_and_a_stuck_inference_are_both_named_and_nothing_is_lost():
    gate = Gate()
    release = threading.Event()
    entered = threading.Event()
    engine, runners = make_engine(2, gate, max_queue_size=4)
    calls: list[tuple[object, str]] = []

    def callback(results, user_data, err):
        calls.append((user_data, err))
        if user_data == "stuck callback":
            entered.set()
            release.wait(10)

    gate_first = engine.submit([0], (0,))
    assert gate.wait_entered(1)
    gate.open()  # lets "stuck callback"'s inference through, then closes the gate again
    gate_first.result(5)
    engine.submit_callback([1], (0,), callback, "stuck callback")
    assert entered.wait(5)
    gate._open.clear()
    engine.submit_callback([2], (0,), callback, "stuck inference")
    assert gate.wait_entered(3)
    with pytest.warns(RuntimeWarning) as warned:
        assert engine.close(timeout=0.2) is True
    message = str(warned[0].message)
    assert "EzRknn_W" in message and "run_async callback" in message
    release.set()
    assert wait_for(lambda: len(calls) == 2)
    assert calls[0] == ("stuck callback", "")
    assert calls[1][0] == "stuck inference" and "abandoned" in calls[1][1]
    gate.open()
    assert wait_for(lambda: not engine._callbacks.thread.is_alive())
    assert len(calls) == 2 and [r.closed for r in runners] == [0, 0]


def test_a_hung_inference_alone_does_not_blame_a_callback():
    """Only the worker is stuck: the warning names it, not the callback thread that has yet
    to deliver the abandoned task's error."""
    gate = Gate()
    engine, _ = make_engine(1, gate)
    delivered = threading.Event()
    engine.submit_callback([1], (0,), lambda *args: delivered.set(), None)
    assert gate.wait_entered(1)
    with pytest.warns(RuntimeWarning) as warned:
        engine.close(timeout=0.1)
    assert "EzRknn_W0" in str(warned[0].message)
    assert "callback" not in str(warned[0].message)
    assert delivered.wait(5)
    gate.open()


def test_close_from_a_callback_while_an_inference_hangs_returns_at_its_deadline():
    """The callback thread closes the engine while a worker hangs: close() returns at its own
    deadline, the session is BROKEN, and the hung task's callback comes after, exactly once."""
    gate = Gate()
    engine, runners = make_engine(2, gate, max_queue_size=4, sequential_callbacks=False)
    calls: list[tuple[object, str]] = []
    closed = threading.Event()

    def callback(results, user_data, err):
        calls.append((user_data, err))
        if user_data == "closer":
            with pytest.warns(RuntimeWarning, match="did not finish within close"):
                assert engine.close(timeout=0.2) is True
            closed.set()

    engine.submit_callback([0], (0,), callback, "hung")
    assert gate.wait_entered(1)
    engine._workers[1].runner.fn = lambda inputs, indices: [inputs[0]]  # the other slot is free
    engine.submit_callback([1], (0,), callback, "closer")
    assert closed.wait(5)
    assert engine.state is State.BROKEN
    assert wait_for(lambda: len(calls) == 2)
    assert calls[1][0] == "hung" and "abandoned" in calls[1][1]
    gate.open()
    assert wait_for(lambda: not engine._callbacks.thread.is_alive())
    assert len(calls) == 2 and runners[0].closed == 0


def test_a_future_done_callback_that_closes_while_another_run_hangs():
    """A done-callback (on the worker that finished) closes the engine while the other worker
    hangs: close waits only for its deadline, and a concurrent close() from the test thread
    returns once that close is over."""
    gate = Gate()
    engine, runners = make_engine(2, gate, max_queue_size=4)
    hung = engine.submit([0], (0,))
    assert gate.wait_entered(1)
    engine._workers[1].runner.fn = lambda inputs, indices: [inputs[0]]
    done = threading.Event()
    outcome: list[object] = []

    def close_from_done_callback(future):
        with pytest.warns(RuntimeWarning):
            outcome.append(engine.close(timeout=0.2))
        done.set()

    engine.submit([1], (0,)).add_done_callback(close_from_done_callback)
    assert done.wait(5) and outcome == [True]
    assert engine.close(timeout=5) is False and engine.state is State.BROKEN
    with pytest.raises(SessionBrokenError):
        hung.result(0)
    gate.open()
    assert wait_for(lambda: not any(w.thread.is_alive() for w in engine._workers))
    assert [r.closed for r in runners] == [0, 0]


def test_stats_totals_agree_with_slots_and_every_task_is_counted_under_many_threads():
    engine, _ = make_engine(3, max_queue_size=3, submit_timeout_ms=10000)
    start = threading.Barrier(6)

    def fn(inputs, indices):
        if inputs[0] % 7 == 0:
            raise ValueError("bad frame")
        return [inputs[0]]

    for worker in engine._workers:
        worker.runner.fn = fn
    snapshots = []
    callbacks = threading.Semaphore(0)

    def client(n: int) -> None:
        start.wait(5)
        for i in range(60):
            value = n * 1000 + i
            if i % 3 == 0:
                engine.submit_callback([value], (0,), lambda *args: callbacks.release(), None)
            elif i % 3 == 1:
                with contextlib.suppress(ValueError):
                    engine.submit([value], (0,)).result(10)
            else:
                with contextlib.suppress(ValueError):
                    engine.run_inline([value], (0,))
            if i % 10 == 0:
                snapshots.append(engine.stats())

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for _ in range(6 * 20):
        assert callbacks.acquire(timeout=10)
    failures = sum(1 for n in range(6) for i in range(60) if (n * 1000 + i) % 7 == 0)
    calls = 6 * 60
    for snap in snapshots:
        assert snap.completed == sum(s.completed for s in snap.slots)
        assert snap.failed == sum(s.failed for s in snap.slots)
        assert snap.completed + snap.failed <= snap.submitted + snap.inline_runs
        assert snap.queued <= 3 and snap.running <= 3
    assert wait_for(lambda: engine.stats().completed + engine.stats().failed == calls)
    final = engine.stats()
    assert final.submitted + final.inline_runs == calls and final.failed == failures
    assert final.queue_waits == final.submitted
    assert all(slot.state == "idle" for slot in final.slots) and final.running == 0
    assert engine.close(timeout=5) is True


def test_a_ctrl_c_while_close_waits_finishes_the_close_without_waiting_and_reraises():
    """A Ctrl-C (here a KeyboardInterrupt from a tracer at the first join) while close() waits
    for a hung inference left the engine CLOSING forever: the task's Future never resolved, the
    callback thread never ended, and every later close() was a no-op. Now the deadline becomes
    that instant: the hung worker is abandoned (BROKEN), then the interrupt goes on up."""
    gate = Gate()
    engine, runners = make_engine(1, gate)
    hung = engine.submit([1], (0,))
    assert gate.wait_entered(1)
    real_join = threading.Thread.join

    def interrupted_join(thread, timeout=None):
        if thread is engine._workers[0].thread:
            raise KeyboardInterrupt
        return real_join(thread, timeout)

    threading.Thread.join = interrupted_join  # type: ignore[method-assign]
    try:
        with pytest.warns(RuntimeWarning, match="did not finish"), pytest.raises(KeyboardInterrupt):
            engine.close(timeout=5)
    finally:
        threading.Thread.join = real_join  # type: ignore[method-assign]
    assert engine.state is State.BROKEN
    with pytest.raises(SessionBrokenError, match="abandoned"):
        hung.result(0)
    assert wait_for(lambda: not engine._callbacks.thread.is_alive())
    gate.open()
    assert wait_for(lambda: not engine._workers[0].thread.is_alive())
    assert runners[0].closed == 0 and engine.close() is False
