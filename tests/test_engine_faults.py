"""Faults a deployed board meets, on the engine with function runners: a Ctrl-C anywhere in a
``run()``, and which limit a submit timeout names."""

from __future__ import annotations

import linecache
import sys
import threading

import pytest

from ez_rknn_async import SubmitTimeoutError
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
