"""Wake-ups and callback delivery under the fast paths of issue 11: a queued task never waits
while a worker that may run it sleeps, and callbacks delivered by workers (while they are quick)
keep order, exactly-once, one-at-a-time and the close semantics, and never deadlock a callback
that waits for engine work. Races are forced with barriers and gates, not sleeps."""

from __future__ import annotations

import threading

import pytest

from ez_rknn_async import SessionClosedError
from ez_rknn_async.engine.core import CALLBACK_BACKLOG
from ez_rknn_async.engine.ordering import INLINE_BELOW_S

from fakes import make_engine, wait_for

ROUNDS = 30


def meeting(parties: int):
    """A runner function every call of which waits until ``parties`` calls run at once: a
    task queued behind a sleeping worker breaks the barrier (BrokenBarrierError)."""
    barrier = threading.Barrier(parties, timeout=5)

    def run(inputs, indices):
        barrier.wait()
        return [inputs[0] for _ in indices]

    return run


@pytest.mark.parametrize("routes", [None, (0, 1, 2)], ids=["any worker", "bound to cores"])
def test_a_burst_of_tasks_wakes_every_worker_it_needs(routes):
    engine, runners = make_engine(3, meeting(3), max_queue_size=3, routes=routes)
    try:
        for round_ in range(ROUNDS):
            futures = [engine.submit([round_ * 3 + k], (0,)) for k in range(3)]
            assert [int(f.result(10)[0]) for f in futures] == [round_ * 3 + k for k in range(3)]
    finally:
        engine.close()
    assert all(len(r.threads) == ROUNDS and r.violations == 0 for r in runners)


def test_a_burst_with_a_run_on_the_calling_thread_still_meets():
    """Two queued tasks and one ``run`` on the caller's thread: the caller borrows an idle slot,
    the other two slots' threads must both be woken."""
    engine, _ = make_engine(3, meeting(3), max_queue_size=3)
    try:
        for _ in range(ROUNDS):
            futures = [engine.submit([k], (0,)) for k in range(2)]
            assert int(engine.run_inline([2], (0,))[0]) == 2
            assert [int(f.result(10)[0]) for f in futures] == [0, 1]
    finally:
        engine.close()


def test_tasks_queued_while_a_worker_is_waking_are_all_taken():
    """Many more tasks than workers, each needing two workers at once: with fewer wake-ups in
    flight than queued tasks, woken workers must wake the next one."""
    engine, _ = make_engine(2, meeting(2), max_queue_size=8)
    try:
        futures = [engine.submit([k], (0,)) for k in range(2 * ROUNDS)]
        assert [int(f.result(10)[0]) for f in futures] == list(range(2 * ROUNDS))
    finally:
        engine.close()


def test_batched_callbacks_keep_order_exactly_once_through_errors_and_a_close(monkeypatch):
    """Completions pile up while the first callback blocks, so its deliverer then calls them
    in one go; one callback raises and a later one closes the engine: every task still gets
    exactly one callback, in submission order, and queued ones get SessionClosedError."""
    reported = []
    monkeypatch.setattr("sys.unraisablehook", reported.append)
    engine, _ = make_engine(2, max_queue_size=4, submit_timeout_ms=5000)
    first = CALLBACK_BACKLOG - 1  # tasks that complete while callback 0 blocks
    delivered: list[tuple[int, str]] = []
    total = first + 1 + 3

    def callback(results, user_data, err):
        delivered.append((user_data, err))
        if user_data == 0:
            assert wait_for(lambda: engine.stats().callback_backlog >= first + 1)
        if user_data == 2:
            raise RuntimeError("user bug")
        if user_data == 4:
            engine.close()  # from the callback thread, mid-batch

    for value in range(first + 1):
        engine.submit_callback([value], (0,), callback, value)
    # Three more, admitted only as callbacks drain the backlog; close() from callback 4 may
    # refuse them or catch them queued or done: each admitted one is delivered once, in order.
    extra = []
    for value in range(first + 1, total):
        try:
            engine.submit_callback([value], (0,), callback, value)
        except SessionClosedError:
            break
        extra.append(value)
    engine.close()  # returns once the close begun by callback 4 has delivered everything
    values = [v for v, _ in delivered]
    assert values == list(range(first + 1 + len(extra)))
    assert all(err == "" for v, err in delivered if v <= first)
    assert all(err in ("", "session closed before the task started") for _, err in delivered)
    assert [str(r.exc_value) for r in reported] == ["user bug"]


def _threads_of_callbacks(engine, count, work=None):
    """Submit ``count`` run_async tasks; returns the thread name of each callback, in order."""
    names: list[str] = []
    done = threading.Event()

    def callback(results, user_data, err):
        if work is not None:
            work(user_data)
        names.append(threading.current_thread().name)
        if len(names) == count:
            done.set()

    for value in range(count):
        engine.submit_callback([value], (0,), callback, value)
    assert done.wait(10)
    return names


def test_quick_callbacks_run_on_workers_slow_ones_go_back_to_the_callback_thread():
    engine, _ = make_engine(2, max_queue_size=4)
    try:
        quick = _threads_of_callbacks(engine, 200)
        assert any(name.startswith("EzRknn_W") for name in quick)
        slow_once = threading.Event()
        # 20x the threshold: the average stays above it for the next callbacks
        names = _threads_of_callbacks(
            engine, 6, lambda v: v == 0 and slow_once.wait(20 * INLINE_BELOW_S)
        )
        assert names[2:] == ["EzRknn_Callback"] * 4
    finally:
        engine.close()


@pytest.mark.parametrize(
    "layout",
    [{"n": 1}, {"n": 3, "cores": [0, 1, 2], "routes": (0, 0, 1, 2)}],
    ids=["one slot", "weighted"],
)
def test_callbacks_stay_on_the_callback_thread_when_no_other_worker_could_serve_them(layout):
    """One slot, or tasks bound to cores: a callback waiting for engine work could wait for its
    own worker, so workers never deliver."""
    engine, _ = make_engine(max_queue_size=4, **layout)
    try:
        assert set(_threads_of_callbacks(engine, 100)) == {"EzRknn_Callback"}
    finally:
        engine.close()
