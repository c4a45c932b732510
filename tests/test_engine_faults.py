"""Faults a deployed board meets, on the engine with function runners: a hung inference or
callback at close(), a Ctrl-C anywhere in a ``run()``, and which limit a submit timeout names."""

from __future__ import annotations

import linecache
import sys
import threading
import time

import pytest

from ez_rknn_async import SessionBrokenError, SessionClosedError, SubmitTimeoutError
from ez_rknn_async.engine import core, tasks
from ez_rknn_async.engine.admission import CALLBACK_BACKLOG

from fakes import Gate, make_engine, wait_for

_ENGINE_FILES = {core.__file__, tasks.__file__}


def _interrupt_at_line(engine, nth: int) -> bool:
    """Call ``engine.run_inline`` with a KeyboardInterrupt raised at the ``nth`` line executed in
    the engine's own code (run_inline and the helpers it calls); True if it fired.

    Not at a ``try:`` or ``with lock:`` line: a tracer sees ``try:`` on a NOP outside the block
    it opens and ``with`` again just before ``__exit__``, where an exception skips the handler or
    the release. A real signal cannot land there: CPython runs signal handlers only at calls and
    backward jumps, not at a NOP or between the loads before the C ``__exit__`` call."""
    seen = [0]
    fired = []

    def tracer(frame, event, arg):
        return local if frame.f_code.co_filename in _ENGINE_FILES else None

    def local(frame, event, arg):
        line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
        if event == "line" and not line.startswith(("with ", "try:")):
            seen[0] += 1
            if seen[0] == nth and not fired:
                fired.append((frame.f_code.co_name, line))
                raise KeyboardInterrupt
        return local

    sys.settrace(tracer)
    try:
        assert engine.run_inline([nth], (0,)) == [nth]
    except KeyboardInterrupt:
        assert fired  # only the injected interrupt may surface
    finally:
        sys.settrace(None)
    return bool(fired)


def test_a_keyboard_interrupt_at_any_line_of_run_inline_never_leaks_the_slot():
    """A Ctrl-C lands between two lines anywhere in ``run()`` (its ``finally`` included): it
    costs that one call; the slot is always given back and the engine goes on."""
    engine, runners = make_engine(1, max_queue_size=2, submit_timeout_ms=2000)
    worker = engine._workers[0]
    places = set()
    nth = 1
    while _interrupt_at_line(engine, nth):
        assert wait_for(lambda: worker.state.name != "BORROWED", 2), f"slot leaked at line {nth}"
        places.add(nth)
        assert engine.submit([-1], (0,)).result(5) == [-1]  # the worker thread serves it
        assert engine.run_inline([-2], (0,)) == [-2]  # and the slot is lent again
        nth += 1
    assert len(places) > 10  # every line of the borrow, the run and both give-backs
    assert runners[0].violations == 0
    engine.close()
    assert runners[0].closed == 1


def test_a_timeout_says_the_task_queue_is_full():
    gate = Gate()
    engine, _ = make_engine(1, gate, max_queue_size=1, submit_timeout_ms=50)
    engine.submit([0], (0,))
    assert gate.started.wait(5)
    engine.submit([1], (0,))  # the one queue place
    with pytest.raises(SubmitTimeoutError, match=r"task queue is full \(max_queue_size=1\)"):
        engine.submit([2], (0,))
    gate.open()
    engine.close()


def test_a_timeout_says_the_callback_backlog_is_full_when_the_queue_is_empty():
    """The callbacks are the bottleneck, not the queue: the message must say so (it used to
    blame the queue, which was empty)."""
    release = threading.Event()
    entered = threading.Event()
    engine, _ = make_engine(2, max_queue_size=3, submit_timeout_ms=50)

    def slow(results, user_data, err):
        entered.set()
        release.wait(10)

    for i in range(CALLBACK_BACKLOG):
        engine.submit_callback([i], (0,), slow, i)
    assert entered.wait(5)
    assert wait_for(lambda: engine.stats().callback_backlog == CALLBACK_BACKLOG)
    assert engine.stats().queued == 0
    with pytest.raises(SubmitTimeoutError, match="callback backlog is full") as info:
        engine.submit_callback([99], (0,), slow, 99)
    assert "max_queue_size" not in str(info.value)
    release.set()
    engine.close()


# -- a hung inference, a callback that never returns: one close() deadline -------------------


def _closes_within(engine, timeout: float) -> float:
    start = time.monotonic()
    with pytest.warns(RuntimeWarning, match="did not finish within close"):
        assert engine.close(timeout=timeout) is True
    return time.monotonic() - start


def test_a_hung_inference_breaks_the_session_at_the_close_deadline_and_nothing_is_lost():
    gate = Gate()
    engine, runners = make_engine(2, gate, max_queue_size=4)
    called = []
    delivered = threading.Event()

    def callback(results, user_data, err):
        called.append((user_data, err))
        delivered.set()

    running = engine.submit([0], (0,))
    engine.submit_callback([1], (0,), callback, "stuck")  # the second worker hangs on this one
    assert gate.wait_entered(2)
    queued = engine.submit([2], (0,))

    elapsed = _closes_within(engine, 0.3)
    assert elapsed < 0.3 + 2.0  # the deadline, not the 10 s the gate would take
    assert engine.state.value == "broken" and engine.stats().state == "broken"
    with pytest.raises(SessionBrokenError, match="abandoned"):
        running.result(0)
    with pytest.raises(SessionClosedError):
        queued.result(0)  # never started: closed, not broken
    assert delivered.wait(5)  # the stuck inference's callback is called, with the error
    assert called == [("stuck", called[0][1])] and "abandoned" in called[0][1]
    assert [r.closed for r in runners] == [0, 0]  # never freed under a running inference

    for call in (
        lambda: engine.submit([3], (0,)),
        lambda: engine.run_inline([3], (0,)),
        lambda: engine.submit_callback([3], (0,), callback, 3),
    ):
        with pytest.raises(SessionBrokenError, match="did not finish within close"):
            call()
    assert engine.close() is False  # idempotent, no second warning

    gate.open()  # the hung runs return: their late outcomes are dropped, the threads end
    assert wait_for(lambda: not any(w.thread.is_alive() for w in engine._workers))
    assert len(called) == 1 and [r.closed for r in runners] == [0, 0]
    assert all(r.violations == 0 for r in runners)


def test_a_hung_inline_run_breaks_the_session_and_its_caller_still_gets_its_result():
    gate = Gate()
    engine, runners = make_engine(1, gate)
    result = []
    caller = threading.Thread(target=lambda: result.append(engine.run_inline([7], (0,))))
    caller.start()
    assert gate.wait_entered(1)
    _closes_within(engine, 0.2)
    gate.open()
    caller.join(5)
    assert result == [[7]] and runners[0].closed == 0


def test_a_callback_that_never_returns_is_abandoned_at_the_close_deadline():
    release = threading.Event()
    entered = threading.Event()
    engine, runners = make_engine(1)
    calls = []

    def stuck(results, user_data, err):
        calls.append(user_data)
        entered.set()
        release.wait(10)

    engine.submit_callback([0], (0,), stuck, 0)
    engine.submit_callback([1], (0,), stuck, 1)
    assert entered.wait(5)
    elapsed = _closes_within(engine, 0.3)
    assert elapsed < 0.3 + 2.0
    assert engine.stats().state == "broken" and runners[0].closed == 0
    with pytest.raises(SessionBrokenError, match="run_async callback"):
        engine.submit([2], (0,))
    release.set()  # it returns: the callback thread delivers what was left, in order, and ends
    assert wait_for(lambda: not engine._callbacks.thread.is_alive())
    assert calls == [0, 1]


def test_close_in_time_is_clean_and_a_bad_timeout_is_refused():
    engine, runners = make_engine(1)
    with pytest.raises(TypeError, match="timeout"):
        engine.close(timeout="1")
    with pytest.raises(ValueError, match="timeout"):
        engine.close(timeout=-1)
    assert engine.state.value == "open"
    assert engine.run_inline([1], (0,)) == [1]
    assert engine.close(timeout=5) is True
    assert engine.state.value == "closed" and runners[0].closed == 1


def test_one_stuck_engine_does_not_hold_another_engines_close():
    gate = Gate()
    stuck, _ = make_engine(1, gate)
    other, others = make_engine(1)
    stuck.submit([0], (0,))
    assert gate.wait_entered(1)
    closer = threading.Thread(target=stuck.close, kwargs={"timeout": 5})
    closer.start()
    assert wait_for(lambda: stuck.state.value == "closing")
    start = time.monotonic()
    assert other.close(timeout=5) is True  # not behind the stuck one
    assert time.monotonic() - start < 2.0 and others[0].closed == 1
    gate.open()
    closer.join(10)
    assert stuck.state.value == "closed"
