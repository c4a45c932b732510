"""The engine with function runners: ordering, exactly-once, backpressure, timeouts, errors,
callbacks, shutdown. Waits use events and barriers, not sleeps, wherever a race is the point."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from ez_rknn_async import SessionClosedError, SubmitTimeoutError
from ez_rknn_async.engine.core import CALLBACK_BACKLOG

import fakes
from fakes import Gate, make_engine, wait_for


def jitter(inputs, indices):
    """Completes out of order: task k sleeps a pseudo-random 0-300 us."""
    time.sleep(((int(inputs[0]) * 7919) % 4) * 0.0001)
    return [inputs[0] for _ in indices]


@pytest.mark.parametrize("sequential", [True, False])
def test_thousands_of_callbacks_from_many_threads_exactly_once(sequential):
    engine, runners = make_engine(
        4, jitter, sequential_callbacks=sequential, max_queue_size=16, submit_timeout_ms=30000
    )
    delivered: list[tuple[int, int]] = []
    on_callback_thread = []
    active, overlaps = [0], []
    done = threading.Event()
    threads, per_thread = 6, 400

    def callback(results, user_data, err):
        active[0] += 1
        if active[0] != 1:
            overlaps.append(user_data)  # two callbacks at once
        assert err == ""
        on_callback_thread.append(threading.current_thread().name)
        delivered.append((user_data, int(results[0])))
        if len(delivered) == threads * per_thread:
            done.set()
        active[0] -= 1

    submit_order: list[int] = []
    order_lock = threading.Lock()

    def producer(t):
        for i in range(per_thread):
            value = t * per_thread + i
            with order_lock:  # record the order in which the engine accepted tasks
                engine.submit_callback([value], (0,), callback, value)
                submit_order.append(value)

    workers = [threading.Thread(target=producer, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert done.wait(60)
    engine.close()
    assert all(user == value for user, value in delivered)
    assert sorted(u for u, _ in delivered) == list(range(threads * per_thread))  # exactly once
    # One at a time, on the callback thread or on a worker that delivers while callbacks are
    # quick (engine/ordering.py), never on a submitter's thread.
    assert overlaps == []
    assert set(on_callback_thread) <= {"EzRknn_Callback"} | {f"EzRknn_W{i}_C{i}" for i in range(4)}
    if sequential:
        assert [u for u, _ in delivered] == submit_order
    assert sum(len(r.threads) for r in runners) == threads * per_thread
    assert all(r.violations == 0 and r.closed == 1 for r in runners)
    assert len({name for r in runners for name in r.threads}) == 4  # every worker took part


def test_futures_from_many_threads_each_get_their_own_result():
    engine, runners = make_engine(3, jitter, max_queue_size=8)
    results = {}

    def producer(t):
        futures = [(v, engine.submit([v], (0, 0))) for v in range(t * 300, t * 300 + 300)]
        for value, future in futures:
            results[value] = future.result(timeout=30)

    threads = [threading.Thread(target=producer, args=(t,)) for t in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.close()
    assert len(results) == 1500
    assert all(int(r[0]) == v and int(r[1]) == v for v, r in results.items())
    assert all(r.violations == 0 for r in runners)


def test_sync_run_uses_the_calling_thread_when_a_slot_is_idle():
    engine, runners = make_engine(2)
    assert int(engine.run_inline([5], (0,))[0]) == 5
    assert runners[0].threads == [threading.current_thread().name]
    assert engine.stats().inline_runs == 1
    engine.close()


def test_sync_run_queues_when_every_slot_is_busy():
    gate = Gate()
    engine, runners = make_engine(2, gate)
    futures = [engine.submit(["block"], (0,)) for _ in range(2)]
    assert wait_for(lambda: engine.stats().running == 2)
    result = []
    caller = threading.Thread(target=lambda: result.append(engine.run_inline(["x"], (0,))))
    caller.start()
    assert wait_for(lambda: engine.stats().queued == 1)  # queued, not run on a busy slot
    gate.open()
    caller.join(10)
    assert result == [["x"]] and all(f.result(10) == ["block"] for f in futures)
    assert engine.stats().inline_runs == 0
    engine.close()


def test_full_queue_times_out_with_a_clear_error():
    gate = Gate()
    engine, _ = make_engine(1, gate, max_queue_size=2, submit_timeout_ms=200)
    engine.submit([0], (0,))
    assert wait_for(lambda: engine.stats().running == 1)
    queued = [engine.submit([i], (0,)) for i in (1, 2)]
    assert engine.stats().queued == 2
    start = time.monotonic()
    with pytest.raises(SubmitTimeoutError, match="submit timed out after 200 ms.*max_queue_size=2"):
        engine.submit([3], (0,))
    assert 0.15 < time.monotonic() - start < 5
    with pytest.raises(TimeoutError):  # SubmitTimeoutError is a TimeoutError too
        engine.submit([3], (0,), blocking=False)
    gate.open()
    assert [int(f.result(10)[0]) for f in queued] == [1, 2]
    assert engine.stats().peak_queued == 2
    engine.close()


def test_blocked_submitter_proceeds_as_soon_as_space_frees_up():
    gate = Gate()
    engine, _ = make_engine(1, gate, max_queue_size=2)
    first = [engine.submit([i], (0,)) for i in range(3)]  # one running, two queued
    assert wait_for(lambda: engine.stats().queued == 2)
    late = []
    blocked = threading.Thread(target=lambda: late.append(engine.submit([3], (0,))))
    blocked.start()
    assert wait_for(lambda: engine.stats().waiting_submitters == 1)
    assert not late
    gate.open()
    blocked.join(10)
    assert [int(f.result(10)[0]) for f in [*first, *late]] == [0, 1, 2, 3]
    engine.close()


def test_task_errors_reach_futures_and_callbacks_and_the_engine_goes_on():
    def flaky(inputs, indices):
        if inputs[0] % 3 == 0:
            raise RuntimeError(f"bad frame {inputs[0]}")
        return [inputs[0]]

    engine, _ = make_engine(2, flaky)
    with pytest.raises(RuntimeError, match="bad frame 0"):
        engine.run_inline([0], (0,))
    with pytest.raises(RuntimeError, match="bad frame 3"):
        engine.submit([3], (0,)).result(10)
    outcomes = {}
    done = threading.Event()

    def callback(results, user_data, err):
        outcomes[user_data] = (results, err)
        if len(outcomes) == 6:
            done.set()

    for v in range(6):
        engine.submit_callback([v], (0,), callback, v)
    assert done.wait(10)
    for v, (results, err) in outcomes.items():
        if v % 3 == 0:
            assert results is None and err == f"bad frame {v}"
        else:
            assert err == "" and results == [v]
    engine.close()


def test_callback_exceptions_are_unraisable_and_the_session_goes_on(monkeypatch):
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda args: reported.append(args))
    engine, _ = make_engine(2)
    seen = []
    done = threading.Event()

    def callback(results, user_data, err):
        seen.append(user_data)
        if user_data == 9:
            done.set()
        if user_data % 2:
            raise ValueError(f"user bug {user_data}")

    for v in range(10):
        engine.submit_callback([v], (0,), callback, v)
    assert done.wait(10)
    engine.close()
    assert seen == list(range(10))
    assert [str(r.exc_value) for r in reported] == [f"user bug {v}" for v in range(1, 10, 2)]
    assert all("run_async callback" in r.err_msg for r in reported)


@pytest.mark.parametrize("slots", [1, 2])
def test_run_and_run_async_inside_a_callback_do_not_deadlock(slots):
    """One slot: callbacks come on the callback thread; two: on a worker (while quick), and
    the other worker serves what the callback waits for (engine/ordering.py)."""
    engine, _ = make_engine(slots, submit_timeout_ms=2000, max_queue_size=1)
    inner = []
    threads = []
    done = threading.Event()

    def callback(results, user_data, err):
        if user_data == "outer":
            threads.append(threading.current_thread().name)
            inner.append(engine.run_inline([7], (0,)))  # the original deadlocks here
            inner.append(engine.submit([8], (0,)).result(5))
            for i in range(CALLBACK_BACKLOG + 4):  # more than the backlog allows
                engine.submit_callback([i], (0,), callback, i)
        elif user_data == CALLBACK_BACKLOG + 3:
            done.set()

    engine.submit_callback([1], (0,), callback, "outer")
    assert done.wait(10)
    assert inner == [[7], [8]]
    assert threads == ["EzRknn_Callback" if slots == 1 else "EzRknn_W0_C0"]
    engine.close()


def test_slow_callbacks_bound_the_backlog():
    release = threading.Event()
    engine, _ = make_engine(2, max_queue_size=2, submit_timeout_ms=300)
    for v in range(CALLBACK_BACKLOG):  # the first blocks the callback thread, 7 more wait
        engine.submit_callback([v], (0,), lambda r, u, e: release.wait(10), v)
    assert wait_for(lambda: engine.stats().callback_backlog == CALLBACK_BACKLOG)
    with pytest.raises(SubmitTimeoutError, match="run_async submit timed out"):
        engine.submit_callback([99], (0,), lambda *a: None, None)
    assert engine.submit([1], (0,)).result(5) == [1]  # futures do not wait for callbacks
    release.set()
    engine.close()


def test_close_fails_queued_tasks_finishes_running_ones_and_delivers_every_callback():
    gate = Gate()
    engine, runners = make_engine(1, gate, max_queue_size=10)
    running = engine.submit([0], (0,))
    assert gate.started.wait(5)
    queued = [engine.submit([i], (0,)) for i in range(1, 4)]
    errors = []
    engine.submit_callback([4], (0,), lambda r, u, e: errors.append((r, e)), None)
    closer = threading.Thread(target=engine.close)
    closer.start()
    for future in queued:
        with pytest.raises(SessionClosedError, match="session closed before the task started"):
            future.result(5)
    gate.open()
    closer.join(10)
    assert not closer.is_alive()
    assert running.result(5) == [0]
    assert errors == [(None, "session closed before the task started")]
    assert runners[0].closed == 1
    with pytest.raises(SessionClosedError):
        engine.submit([9], (0,))


def test_close_wakes_a_blocked_submitter():
    gate = Gate()
    engine, _ = make_engine(1, gate, max_queue_size=1)
    engine.submit([0], (0,))
    engine.submit([1], (0,))
    assert wait_for(lambda: engine.stats().queued == 1)
    outcome = []

    def blocked():
        try:
            engine.submit([2], (0,))
        except SessionClosedError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=blocked)
    thread.start()
    assert wait_for(lambda: engine.stats().waiting_submitters == 1)
    closer = threading.Thread(target=engine.close)
    closer.start()
    thread.join(5)
    assert len(outcome) == 1
    gate.open()
    closer.join(10)


def test_close_from_inside_a_callback():
    engine, _ = make_engine(2)
    done = threading.Event()

    def callback(results, user_data, err):
        engine.close()
        done.set()

    engine.submit_callback([1], (0,), callback, None)
    assert done.wait(10)
    assert wait_for(lambda: engine.stats().state == "closed")


def test_close_waits_for_a_run_on_a_borrowed_slot():
    gate = Gate()
    engine, runners = make_engine(1, gate)
    result = []
    caller = threading.Thread(target=lambda: result.append(engine.run_inline([3], (0,))))
    caller.start()
    assert gate.started.wait(5)
    closer = threading.Thread(target=engine.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive() and runners[0].closed == 0  # never released while in use
    gate.open()
    closer.join(10)
    caller.join(10)
    assert result == [[3]] and runners[0].closed == 1


def test_weighted_schedule_binds_tasks_to_cores():
    from ez_rknn_async.engine.layout import plan_slots, task_routes
    from ez_rknn_async.options import parse_provider_options

    options = parse_provider_options({"schedule": [0, 0, 1]})
    assert task_routes(options) == (0, 0, 1)
    assert task_routes(parse_provider_options({"schedule": [1, 0]})) is None
    assert [(s.core, s.core_mask) for s in plan_slots(options, [0])] == [(0, 1), (1, 2)]
    engine, runners = make_engine(2, jitter, cores=[0, 1], routes=(0, 0, 1), max_queue_size=6)
    futures = [engine.submit([v], (0,)) for v in range(300)]
    assert [int(f.result(10)[0]) for f in futures] == list(range(300))
    engine.close()
    counts = collections.Counter(len(r.threads) for r in runners)
    assert [len(r.threads) for r in runners] == [200, 100], counts


def test_tp_mode_and_threads_per_core_layouts():
    from ez_rknn_async.engine.layout import plan_slots
    from ez_rknn_async.options import parse_provider_options

    tp = plan_slots(parse_provider_options({"tp_mode": "0,1", "threads_per_core": 2}), [0, 1, 2])
    assert [(s.core, s.core_mask, s.intra_op_threads) for s in tp] == [(None, 3, 2)] * 2
    default = plan_slots(parse_provider_options({"threads_per_core": 2}), [0, 1, 2])
    assert [s.core for s in default] == [0, 1, 2, 0, 1, 2]


def test_pacing_spaces_submissions_by_the_measured_run_time():
    engine, _ = make_engine(
        1, lambda i, o: (time.sleep(0.02), [i[0]])[1], enable_pacing=True, max_queue_size=10
    )
    engine.run_inline([0], (0,))  # first sample: ~20 ms
    start = time.monotonic()
    futures = [engine.submit([i], (0,)) for i in range(5)]
    elapsed = time.monotonic() - start
    assert elapsed >= 4 * 0.018  # four intervals between five submissions
    assert [int(f.result(5)[0]) for f in futures] == list(range(5))
    engine.close()


def test_interpreter_exit_with_work_in_flight_does_not_hang(tmp_path):
    script = tmp_path / "exit.py"
    script.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "from fakes import Gate, make_engine, wait_for\n"
        "engine, runners = make_engine(2, lambda i, o: (time.sleep(0.05), [i[0]])[1],"
        " max_queue_size=20)\n"
        "for v in range(20):\n"
        "    engine.submit_callback([v], (0,), lambda r, u, e: print(u, e or 'ok'), v)\n"
        "print('exiting')\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[0] == "exiting"
    delivered = [line for line in lines[1:] if line]
    # interpreter exit closes the engine: running tasks finish, queued ones fail, all delivered
    assert len(delivered) == 20 and {int(x.split()[0]) for x in delivered} == set(range(20))


def test_no_thread_or_memory_growth_over_many_runs():
    import tracemalloc

    engine, _ = make_engine(2, lambda i, o: [i[0] + 1])
    x = np.zeros(16, np.float32)
    for _ in range(2000):  # warm up caches and free lists
        engine.run_inline([x], (0,))
        engine.submit([x], (0,)).result(5)
    threads = threading.active_count()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(5000):
        engine.run_inline([x], (0,))
        engine.submit([x], (0,)).result(5)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    # the fake runner's own record of calls grows by design; everything else must not
    ignore = [tracemalloc.Filter(False, fakes.__file__)]
    growth = sum(
        stat.size_diff
        for stat in after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "filename")
    )
    assert growth < 64 * 1024, growth
    assert threading.active_count() == threads
    engine.close()
