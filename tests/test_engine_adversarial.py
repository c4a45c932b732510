"""Adversarial tests of the engine and the session's concurrency: races with close(), cancellation
at every stage, ordering under failures, bounds, lost wake-ups, leaks. Each test that exposed a
bug is named after it; the others pin down risks the main suites did not cover."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
import threading
import time
import weakref

import numpy as np
import pytest

from ez_rknn_async import (
    InferenceSession,
    SessionClosedError,
    SubmitTimeoutError,
    make_provider_options,
)

from fakes import Gate, hold_runners, make_engine, wait_for


class _Payload:
    """A weak-referenceable stand-in for a large frame or user object."""


# -- bugs ---------------------------------------------------------------------------------------


def test_concurrent_session_close_does_not_close_the_backend_under_a_running_task(
    add_mul_path, monkeypatch
):
    """Two threads closing at once: the one that lost the engine's close must not go on to
    close the backend (free the buffers, drop the contexts) while the other still waits for a
    running task."""
    gate = hold_runners(monkeypatch)
    opts = make_provider_options(schedule=[0])
    sess = InferenceSession(add_mul_path, provider_options=opts)
    a = np.ones((1, 4), np.float32)
    future = sess.submit(None, [a, a])
    assert wait_for(lambda: sess.stats().running == 1)
    backend_closed_while_running = []
    backend_close = sess._backend.close

    def checked_close():
        backend_closed_while_running.append(gate.runs == 0)
        backend_close()

    monkeypatch.setattr(sess._backend, "close", checked_close)
    both_checked = threading.Barrier(2)
    memory_close = sess._zero_copy.close

    def rendezvous():  # both closers are past the "still open?" check
        both_checked.wait(5)
        memory_close()

    monkeypatch.setattr(sess._zero_copy, "close", rendezvous)
    engine_close = sess._engine.close
    in_engine_close = threading.Semaphore(0)

    def entered_engine_close(*args):
        in_engine_close.release()
        return engine_close(*args)

    monkeypatch.setattr(sess._engine, "close", entered_engine_close)
    closers = [threading.Thread(target=sess.close) for _ in range(2)]
    for closer in closers:
        closer.start()
    for _ in closers:  # both closers are in engine.close, where they must wait for the task
        assert in_engine_close.acquire(timeout=10)
    for closer in closers:
        closer.join(0.05)  # neither may return (nor free the backend) while the task runs
        assert closer.is_alive()
    gate.set()
    for closer in closers:
        closer.join(10)
    assert not any(closer.is_alive() for closer in closers)
    np.testing.assert_array_equal(future.result(5)[0], 2 * a)
    assert backend_closed_while_running == [False]  # closed once, after the task finished


def test_a_second_close_returns_only_once_the_engine_is_closed():
    """close() from another thread while a close is under way must not return early: its
    caller may free what the running tasks still use."""
    gate = Gate()
    engine, runners = make_engine(1, gate)
    engine.submit([0], (0,))
    assert gate.started.wait(5)
    first = threading.Thread(target=engine.close)
    first.start()
    assert wait_for(lambda: engine.stats().state == "closing")
    second = threading.Thread(target=engine.close)
    second.start()
    second.join(0.2)
    assert second.is_alive() and runners[0].closed == 0
    gate.open()
    second.join(10)
    first.join(10)
    assert runners[0].closed == 1 and engine.stats().state == "closed"


def test_arun_cancelled_while_waiting_for_queue_space_never_runs(add_mul_path, monkeypatch):
    """Cancelling an ``arun`` that waits for a full queue must still cancel the inference, as
    documented; it used to be queued later and run for nobody. (It now waits on the event loop,
    not in the executor, so it is never admitted at all and leaves no waiter registered.)"""
    gate = hold_runners(monkeypatch)
    opts = make_provider_options(schedule=[0], max_queue_size=1, submit_timeout_ms=5000)
    a = np.ones((1, 4), np.float32)

    async def main(sess):
        first = sess.submit(None, [a, a])  # runs (held by the gate)
        assert await asyncio.to_thread(wait_for, lambda: sess.stats().running == 1)
        second = sess.submit(None, [a, a])  # queued: the queue is full
        waiting = asyncio.ensure_future(sess.arun(None, [3 * a, a]))
        while sess.stats().waiting_submitters != 1:
            await asyncio.sleep(0.001)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert sess.stats().waiting_submitters == 0
        gate.set()  # space frees: nothing may take it for the cancelled arun
        await asyncio.wrap_future(first)
        await asyncio.wrap_future(second)
        assert sess.stats().submitted == 2
        assert await asyncio.to_thread(wait_for, lambda: sess.stats().queued == 0)

    with InferenceSession(add_mul_path, provider_options=opts) as sess:
        asyncio.run(asyncio.wait_for(main(sess), 10))
        sess.run(None, [a, a])  # a marker after the engine drained
        assert gate.runs == 3  # first, second and the marker: the cancelled arun never ran


def test_callback_thread_does_not_keep_the_last_callback_and_user_data_alive():
    engine, _ = make_engine(1)
    delivered = threading.Event()
    payload = _Payload()
    ref = weakref.ref(payload)

    def callback(results, user_data, err):
        delivered.set()

    callback_ref = weakref.ref(callback)
    engine.submit_callback([1], (0,), callback, payload)
    del payload, callback
    assert delivered.wait(5)
    assert wait_for(lambda: (gc.collect(), ref() is None and callback_ref() is None)[1], 2)
    engine.close()


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise ValueError("no message for you")


def test_a_task_error_without_a_printable_message_does_not_kill_the_worker():
    """A runner exception whose ``str()`` raises used to escape ``Task.run`` on the run_async
    path, killing the worker thread and leaving its sequence number undelivered forever (every
    later callback held, close() hanging)."""

    def fn(inputs, indices):
        if inputs[0] == 0:
            raise _Unprintable()
        return [inputs[0]]

    engine, _ = make_engine(1, fn, max_queue_size=4)
    seen = []
    done = threading.Event()

    def callback(results, user_data, err):
        seen.append((user_data, err))
        if user_data == 2:
            done.set()

    for v in range(3):
        engine.submit_callback([v], (0,), callback, v)
    assert done.wait(5)
    assert [u for u, _ in seen] == [0, 1, 2]
    assert seen[0][1] and seen[1][1] == "" and seen[2][1] == ""
    assert engine.submit([5], (0,)).result(5) == [5]  # the worker is still alive
    closer = threading.Thread(target=engine.close)
    closer.start()
    closer.join(5)
    assert not closer.is_alive()


def test_a_done_callback_raising_a_base_exception_does_not_kill_the_worker(monkeypatch):
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda args: reported.append(args))
    engine, _ = make_engine(1)
    future = engine.submit([1], (0,))
    future.result(5)
    hook = threading.Event()

    def bad(f):
        hook.set()
        raise SystemExit("user code in a done-callback")

    second = engine.submit([2], (0,))
    second.add_done_callback(bad)  # may run here (done already) or on the worker
    assert engine.submit([3], (0,)).result(5) == [3]
    closer = threading.Thread(target=engine.close)
    closer.start()
    closer.join(5)
    assert not closer.is_alive()


def test_interrupt_between_borrowing_a_slot_and_running_does_not_leak_the_slot():
    """An asynchronous exception (KeyboardInterrupt) between taking an idle slot and the
    ``try`` that gives it back used to leave the slot BORROWED forever: no task ever ran on it
    again and close() waited a minute for its thread."""
    engine, runners = make_engine(1, max_queue_size=2, submit_timeout_ms=2000)
    run_inline = engine.run_inline.__code__

    def tracer(frame, event, arg):
        if frame.f_code is run_inline:
            return local
        return None

    fired = []

    def local(frame, event, arg):
        # the first line of run_inline after the lock is released with the slot borrowed
        borrowed = any(w.state.name == "BORROWED" for w in engine._workers)
        if event == "line" and not fired and borrowed and not engine._lock.locked():
            fired.append(frame.f_lineno)
            raise KeyboardInterrupt
        return local

    sys.settrace(tracer)
    try:
        with pytest.raises(KeyboardInterrupt):
            engine.run_inline([1], (0,))
    finally:
        sys.settrace(None)
    assert fired and runners[0].threads == []  # interrupted before the runner was called
    assert engine.submit([2], (0,)).result(5) == [2]
    assert engine.run_inline([3], (0,)) == [3]
    closer = threading.Thread(target=engine.close)
    closer.start()
    closer.join(5)
    assert not closer.is_alive() and runners[0].closed == 1


# -- risks that held ----------------------------------------------------------------------------


def test_close_from_a_done_callback_during_another_close_does_not_deadlock():
    """A close() that waits for a concurrent one must not wait from a thread the first close()
    joins (a worker running a done-callback) or is (a flushed future's callback)."""

    def one_round() -> None:
        gate = Gate()
        engine, runners = make_engine(2, gate, max_queue_size=4)
        running = [engine.submit([i], (0,)) for i in range(2)]
        queued = [engine.submit([i], (0,)) for i in range(2, 4)]
        for future in running + queued:
            future.add_done_callback(lambda f: engine.close())
        assert wait_for(lambda: engine.stats().running == 2)
        closer = threading.Thread(target=engine.close)
        closer.start()
        assert wait_for(lambda: engine.stats().state != "open")
        gate.open()
        closer.join(5)
        assert not closer.is_alive()
        assert all(r.closed == 1 for r in runners)

    for _ in range(20):
        one_round()


def test_keyboard_interrupt_while_run_waits_in_the_queue_cancels_the_task():
    gate = Gate()
    engine, runners = make_engine(1, gate, max_queue_size=2)
    engine.submit([0], (0,))
    assert gate.started.wait(5)
    main = threading.get_ident()

    def interrupt():
        assert wait_for(lambda: engine.stats().queued == 1)
        signal.pthread_kill(main, signal.SIGINT)

    interrupter = threading.Thread(target=interrupt)
    interrupter.start()
    with pytest.raises(KeyboardInterrupt):
        engine.run_inline([1], (0,))
    interrupter.join(5)
    gate.open()
    assert engine.submit([2], (0,)).result(5) == [2]
    engine.close()
    assert len(runners[0].threads) == 2  # the interrupted run was cancelled, never ran


def test_close_races_every_call_from_many_threads():
    """Close while producers use every entry point: every call either completes or raises
    SessionClosedError at once; every future resolves, every callback arrives exactly once,
    runners are closed exactly once and never while in use, no thread is left."""

    def one_round(round_: int) -> None:
        engine, runners = make_engine(
            3, lambda i, o: [i[0]], max_queue_size=4, submit_timeout_ms=3000
        )
        start = threading.Barrier(5)
        futures, delivered, accepted, errors = [], [], [], []
        lock = threading.Lock()

        def callback(results, user_data, err):
            with lock:
                delivered.append(user_data)

        def producer(kind):
            start.wait(5)
            for i in range(200):
                try:
                    if kind == 0:
                        engine.run_inline([i], (0,))
                    elif kind == 1:
                        futures.append(engine.submit([i], (0,)))
                    else:
                        key = (kind, i)
                        engine.submit_callback([i], (0,), callback, key)
                        with lock:
                            accepted.append(key)
                except SessionClosedError:
                    return
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=producer, args=(k,)) for k in (0, 1, 2, 3)]
        for t in threads:
            t.start()
        start.wait(5)
        time.sleep(0.0005 * (round_ % 5))
        engine.close()
        for t in threads:
            t.join(5)
        assert not any(t.is_alive() for t in threads) and not errors
        for future in futures:
            with contextlib.suppress(SessionClosedError):
                future.result(0)
        assert sorted(delivered) == sorted(accepted)
        assert all(r.closed == 1 and r.violations == 0 for r in runners)
        assert engine.stats().state == "closed"

    for round_ in range(15):
        one_round(round_)


def test_sequential_callbacks_stay_in_order_with_failures_and_a_close_flush():
    gate = Gate()

    def fn(inputs, indices):
        if inputs[0] == "hold":
            return gate(inputs, indices)
        if inputs[0] % 2:
            raise RuntimeError(f"odd {inputs[0]}")
        time.sleep(((inputs[0] * 7919) % 3) * 0.0002)
        return [inputs[0]]

    engine, _ = make_engine(3, fn, max_queue_size=6)
    order = []
    engine.submit_callback(["hold"], (0,), lambda r, u, e: order.append(u), "hold")
    assert gate.started.wait(5)
    for v in range(8):  # complete out of order on two workers, fail or not, some flushed
        engine.submit_callback([v], (0,), lambda r, u, e: order.append((u, e)), v)
    closer = threading.Thread(target=engine.close)
    closer.start()
    assert wait_for(lambda: engine.stats().state == "closing")
    gate.open()
    closer.join(5)
    assert order[0] == "hold"
    assert [u for u, _ in order[1:]] == list(range(8))
    for v, err in order[1:]:
        assert err in ("", f"odd {v}", "session closed before the task started")


def test_callbacks_that_block_and_submit_more_work_keep_order_and_terminate():
    engine, _ = make_engine(2, max_queue_size=2, submit_timeout_ms=3000)
    seen = []
    done = threading.Event()

    def callback(results, user_data, err):
        seen.append(user_data)
        if user_data < 40:
            engine.submit_callback([user_data + 100], (0,), callback, user_data + 1)
            engine.submit([0], (0,)).result(2)  # a blocking wait inside the callback
        else:
            done.set()

    engine.submit_callback([0], (0,), callback, 0)
    assert done.wait(5)
    assert seen == list(range(41))
    engine.close()


def test_queue_never_exceeds_its_bound_and_timeouts_are_timely():
    engine, _ = make_engine(
        2, lambda i, o: (time.sleep(0.0005), [i[0]])[1], max_queue_size=3, submit_timeout_ms=5000
    )
    seen_max = []
    stop = threading.Event()

    def monitor():
        while not stop.is_set():
            seen_max.append(len(engine._admission.queue))
            time.sleep(0.0001)  # sample without starving the producers of the GIL

    watcher = threading.Thread(target=monitor)
    watcher.start()

    def producer():
        for i in range(100):
            engine.submit([i], (0,))
            engine.submit_callback([i], (0,), lambda *a: None, None)

    threads = [threading.Thread(target=producer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    stop.set()
    watcher.join(5)
    assert max(seen_max) <= 3 and engine.stats().peak_queued <= 3
    engine.close()

    gate = Gate()
    engine, _ = make_engine(1, gate, max_queue_size=1, submit_timeout_ms=150)
    engine.submit([0], (0,))
    engine.submit([1], (0,))
    for _ in range(3):
        start = time.monotonic()
        with pytest.raises(SubmitTimeoutError):
            engine.submit([2], (0,))
        assert 0.14 <= time.monotonic() - start < 1.0
    gate.open()
    engine.close()


def test_no_queued_task_is_left_without_a_worker():
    """Lost wake-up hunt: bursts of inline runs, submits and weighted routes on more slots than
    cores; every task must complete promptly (a stranded one would time out)."""

    def one_layout(routes, cores) -> None:
        engine, runners = make_engine(
            len(cores), lambda i, o: [i[0]], cores=cores, routes=routes, max_queue_size=2
        )
        results = []
        lock = threading.Lock()

        def producer(t):
            for i in range(300):
                v = t * 1000 + i
                if i % 3 == 0:
                    out = engine.run_inline([v], (0,))
                else:
                    out = engine.submit([v], (0,)).result(2)  # stranded -> TimeoutError
                with lock:
                    results.append(int(out[0]))

        threads = [threading.Thread(target=producer, args=(t,)) for t in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(results) == sorted(t * 1000 + i for t in range(5) for i in range(300))
        engine.close()
        assert all(r.violations == 0 for r in runners)
        if routes is not None:  # every third task is bound to core 1, wherever it ran
            assert sum(len(r.threads) for r, c in zip(runners, cores) if c == 1) == 500

    for routes, cores in [(None, [0, 1, 0, 1]), ((0, 0, 1), [0, 1, 0, 1]), ((0, 0, 1), [0, 1])]:
        one_layout(routes, cores)


def test_finished_tasks_do_not_keep_inputs_alive():
    engine, _ = make_engine(2, lambda i, o: [np.zeros(1)])
    refs = []
    futures = []
    for _ in range(10):
        arr = np.ones(1000)
        refs.append(weakref.ref(arr))
        futures.append(engine.submit([arr], (0,)))
        del arr
    for f in futures:
        f.result(5)
    delivered = threading.Event()
    arr = np.ones(1000)
    refs.append(weakref.ref(arr))
    engine.submit_callback([arr], (0,), lambda r, u, e: delivered.set(), None)
    del arr
    assert delivered.wait(5)
    assert wait_for(lambda: all(r() is None for r in refs), 2)  # futures still held
    engine.close()


def test_pipeline_many_producers_get_every_frame_exactly_once_in_submission_order(
    add_mul_path,
):
    opts = make_provider_options(max_queue_size=4)
    with InferenceSession(add_mul_path, provider_options=opts) as sess:
        returned = []
        lock = threading.Lock()
        order = []
        push = sess._pipeline.push

        def recording_push(submit, depth, reset):
            def submit_and_record():
                future = submit()
                order.append(future)
                return future

            return push(submit_and_record, depth, reset)

        sess._pipeline.push = recording_push  # type: ignore[method-assign]
        start = threading.Barrier(4)

        def producer(t):
            start.wait(5)
            for i in range(100):
                a = np.full((1, 4), t * 1000 + i, np.float32)
                out = sess.run_pipeline([a, np.zeros_like(a)], depth=5)
                if out is not None:
                    with lock:
                        returned.append(out)

        threads = [threading.Thread(target=producer, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        drained = sess.drain_pipeline()
        submitted = [float(f.result()[0][0, 0]) for f in order]
        got = [float(r[0][0, 0]) for r in returned] + [float(r[0][0, 0]) for r in drained]
        assert len(got) == 400 and len(drained) == 5
        assert sorted(got) == sorted(submitted)
        assert [float(r[0][0, 0]) for r in drained] == submitted[-5:]


def test_drain_concurrent_with_run_pipeline_loses_and_duplicates_nothing(add_mul_path):
    with InferenceSession(add_mul_path) as sess:
        got = []
        lock = threading.Lock()
        stop = threading.Event()

        def drainer():
            while not stop.is_set():
                out = sess.drain_pipeline()
                with lock:
                    got.extend(float(r[0][0, 0]) for r in out)

        thread = threading.Thread(target=drainer)
        thread.start()
        for i in range(300):
            a = np.full((1, 4), i, np.float32)
            out = sess.run_pipeline([a, np.zeros_like(a)], depth=2)
            if out is not None:
                with lock:
                    got.append(float(out[0][0, 0]))
        stop.set()
        thread.join(5)
        got.extend(float(r[0][0, 0]) for r in sess.drain_pipeline())
        assert sorted(got) == list(range(300))


def test_depth_changes_under_load_discard_only_in_flight_frames(add_mul_path):
    with InferenceSession(add_mul_path) as sess:
        for i in range(200):
            a = np.full((1, 4), i, np.float32)
            depth = 1 + (i // 7) % 4
            out = sess.run_pipeline([a, np.zeros_like(a)], depth=depth)
            if out is not None:
                assert float(out[0][0, 0]) == i - depth  # the frame depth calls earlier
        assert len(sess.drain_pipeline()) <= 4


def test_pacing_with_failing_tasks_keeps_pacing_and_delivers_errors():
    def fn(inputs, indices):
        time.sleep(0.005)
        if inputs[0] % 2:
            raise RuntimeError("bad")
        return [inputs[0]]

    engine, _ = make_engine(1, fn, enable_pacing=True, max_queue_size=10)
    with pytest.raises(RuntimeError):
        engine.run_inline([1], (0,))
    futures = [engine.submit([i], (0,)) for i in range(6)]
    for i, f in enumerate(futures):
        if i % 2:
            with pytest.raises(RuntimeError):
                f.result(5)
        else:
            assert f.result(5) == [i]
    engine.close()


def test_arun_full_queue_executor_path_returns_results_and_close_fails_the_waiters(
    add_mul_path, monkeypatch
):
    gate = hold_runners(monkeypatch)
    opts = make_provider_options(schedule=[0], max_queue_size=1, submit_timeout_ms=5000)
    a = np.ones((1, 4), np.float32)

    async def main(sess):
        tasks = [asyncio.ensure_future(sess.arun(None, [i * a, a])) for i in range(4)]
        while sess.stats().waiting_submitters < 2:
            await asyncio.sleep(0.001)
        gate.set()
        return await asyncio.gather(*tasks)

    with InferenceSession(add_mul_path, provider_options=opts) as sess:
        results = asyncio.run(asyncio.wait_for(main(sess), 10))
        assert [float(r[0][0, 0]) for r in results] == [1.0, 2.0, 3.0, 4.0]


def test_gc_of_a_session_from_a_worker_thread_closes_it_cleanly(add_mul_path):
    a = np.ones((1, 4), np.float32)

    def one_round() -> None:
        holder = [InferenceSession(add_mul_path)]
        done = threading.Event()
        future = holder[0].submit(None, [a, a])
        future.add_done_callback(lambda f: (holder.clear(), gc.collect(), done.set()))
        assert done.wait(5)
        np.testing.assert_array_equal(future.result(5)[0], 2 * a)

    for _ in range(5):
        one_round()
    # the autouse fixture checks that every engine thread is gone


def test_close_inside_a_run_async_callback_with_more_callbacks_pending():
    engine, runners = make_engine(2, max_queue_size=8)
    seen = []
    done = threading.Event()

    def callback(results, user_data, err):
        seen.append((user_data, err))
        if user_data == 0:
            engine.close()
        if len(seen) == 6:
            done.set()

    for v in range(6):
        engine.submit_callback([v], (0,), callback, v)
    assert done.wait(5)
    assert [u for u, _ in seen] == list(range(6))
    assert wait_for(lambda: engine.stats().state == "closed")
    assert all(r.closed == 1 for r in runners)


def test_no_engine_thread_survives_close():
    before = threading.active_count()
    for _ in range(10):
        engine, _ = make_engine(3, max_queue_size=4)
        for i in range(20):
            engine.submit([i], (0,))
        engine.close()
    assert wait_for(lambda: threading.active_count() <= before, 2)
    assert not [t for t in threading.enumerate() if t.name.startswith("EzRknn")]
