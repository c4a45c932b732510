"""``arun`` waits for queue space on the event loop, holding no thread: many waiters, the executor
left free, timeout, close and cancellation while waiting, fairness with blocking submitters, and
the engine's space-waiter bookkeeping (claims pass on, nothing leaks)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from ez_rknn_async import InferenceSession, SessionClosedError, make_provider_options
from ez_rknn_async.engine.admission import SpaceWaiter
from ez_rknn_async.engine.aio import submit_async
from ez_rknn_async.errors import SubmitTimeoutError

from fakes import Gate, echo, hold_runners, make_engine, wait_for

A = np.ones((1, 4), np.float32)


def one_slot(max_queue_size: int = 1, submit_timeout_ms: int = 10000):
    return make_provider_options(
        schedule=[0], max_queue_size=max_queue_size, submit_timeout_ms=submit_timeout_ms
    )


async def until(predicate, timeout: float = 5.0) -> None:
    """Poll on the loop (``asyncio.to_thread`` would use the executor these tests restrict)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


def test_200_concurrent_arun_wait_without_threads_and_leave_the_executor_free(
    add_mul_path, monkeypatch
):
    gate = hold_runners(monkeypatch)

    async def main(sess):
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(1)
        loop.set_default_executor(executor)
        await loop.run_in_executor(None, lambda: None)  # its one thread exists from now on
        threads = threading.active_count()
        tasks = [asyncio.ensure_future(sess.arun(None, [i * A, A])) for i in range(200)]
        # one running (held), one queued, 198 waiting on the loop
        await until(lambda: sess.stats().waiting_submitters == 198)
        assert sess.stats().running == 1 and sess.stats().queued == 1
        # the executor is not starved: another user's job runs while they all wait
        assert await asyncio.wait_for(loop.run_in_executor(None, lambda: 42), 2) == 42
        assert threading.active_count() <= threads
        gate.set()
        results = await asyncio.gather(*tasks)
        assert threading.active_count() <= threads
        return results

    with InferenceSession(add_mul_path, provider_options=one_slot()) as sess:
        results = asyncio.run(asyncio.wait_for(main(sess), 10))
        assert [float(r[0][0, 0]) for r in results] == [i + 1.0 for i in range(200)]
        assert gate.runs == 200
        assert sess.stats().waiting_submitters == 0


def test_arun_times_out_after_submit_timeout_ms_with_the_blocking_message(
    add_mul_path, monkeypatch
):
    gate = hold_runners(monkeypatch)

    async def main(sess):
        first = sess.submit(None, [A, A])
        await until(lambda: sess.stats().running == 1)
        second = sess.submit(None, [A, A])
        start = time.monotonic()
        with pytest.raises(
            SubmitTimeoutError, match=r"arun submit timed out after 200 ms.*max_queue_size=1"
        ):
            await sess.arun(None, [A, A])
        elapsed = time.monotonic() - start
        assert 0.19 <= elapsed < 2.0
        assert sess.stats().waiting_submitters == 0
        gate.set()
        await asyncio.wrap_future(first)
        await asyncio.wrap_future(second)

    with InferenceSession(add_mul_path, provider_options=one_slot(submit_timeout_ms=200)) as sess:
        asyncio.run(asyncio.wait_for(main(sess), 10))
        assert gate.runs == 2


def test_close_fails_arun_waiters_at_once(add_mul_path, monkeypatch):
    gate = hold_runners(monkeypatch)
    sess = InferenceSession(add_mul_path, provider_options=one_slot(submit_timeout_ms=30000))

    async def main():
        tasks = [asyncio.ensure_future(sess.arun(None, [A, A])) for _ in range(5)]
        await until(lambda: sess.stats().waiting_submitters == 3)
        closer = threading.Thread(target=sess.close)  # waits for the held task to finish
        closer.start()
        start = time.monotonic()
        outcomes = await asyncio.gather(*tasks[1:], return_exceptions=True)
        assert time.monotonic() - start < 2.0  # at once, not after 30 s
        assert all(isinstance(o, SessionClosedError) for o in outcomes)  # queued one too
        gate.set()
        await tasks[0]  # the running one finishes
        return closer

    closer = asyncio.run(asyncio.wait_for(main(), 10))
    closer.join(10)
    assert not closer.is_alive()
    assert gate.runs == 1


def test_cancelled_arun_waiters_never_run_and_leave_nothing_registered(add_mul_path, monkeypatch):
    gate = hold_runners(monkeypatch)

    async def main(sess):
        tasks = [asyncio.ensure_future(sess.arun(None, [i * A, A])) for i in range(20)]
        await until(lambda: sess.stats().waiting_submitters == 18)
        for task in tasks[2::2]:  # every other waiter
            task.cancel()
        await asyncio.sleep(0)
        await until(lambda: sess.stats().waiting_submitters == 9)
        gate.set()
        kept = [tasks[0], tasks[1], *tasks[3::2]]
        results = await asyncio.gather(*kept)
        for task in tasks[2::2]:
            assert task.cancelled()
        return [float(r[0][0, 0]) for r in results]

    with InferenceSession(add_mul_path, provider_options=one_slot()) as sess:
        got = asyncio.run(asyncio.wait_for(main(sess), 10))
        assert got == [1.0, 2.0] + [i + 1.0 for i in range(3, 20, 2)]
        stats = sess.stats()
        assert stats.submitted == 11 and stats.waiting_submitters == 0
        sess.run(None, [A, A])  # a marker after the engine drained
        assert gate.runs == 12  # 11 kept arun and the marker: no cancelled one ran


def test_a_claim_passes_on_when_its_waiter_leaves_and_close_wakes_every_waiter():
    """Engine level: a freed place is claimed for the oldest async waiter and counts as taken for
    everyone else; when that waiter leaves without using it, the next one gets it."""
    gate = Gate()
    engine, _ = make_engine(1, gate, max_queue_size=1)
    woke: list[str] = []
    first, second = (
        SpaceWaiter(lambda: woke.append("first")),
        SpaceWaiter(lambda: woke.append("second")),
    )
    engine.submit([0], (0,))
    assert gate.started.wait(5)
    engine.submit([1], (0,))  # queued: full
    for waiter in (first, second):
        with pytest.raises(SubmitTimeoutError):
            engine.submit([9], (0,), waiter=waiter)
    assert woke == [] and engine.stats().waiting_submitters == 2
    gate.open()  # the worker takes [1]: a place frees and is claimed for ``first``
    assert wait_for(lambda: woke == ["first"])
    assert first.claim and not second.claim
    with pytest.raises(SubmitTimeoutError):
        engine.submit([9], (0,), blocking=False)  # the claimed place is not free for others
    engine.forget(first)  # leaves (cancelled): its claim passes to ``second``
    assert woke == ["first", "second"] and second.claim
    assert engine.submit([2], (0,), waiter=second).result(5) == [2]
    engine.forget(second)
    assert engine.stats().waiting_submitters == 0
    # close wakes a registered waiter, which then gets SessionClosedError
    third = SpaceWaiter(lambda: woke.append("third"))
    blocker = Gate()
    engine2, _ = make_engine(1, blocker, max_queue_size=1)
    engine2.submit([0], (0,))
    assert blocker.started.wait(5)
    engine2.submit([1], (0,))
    with pytest.raises(SubmitTimeoutError):
        engine2.submit([9], (0,), waiter=third)
    closer = threading.Thread(target=engine2.close)
    closer.start()
    assert wait_for(lambda: "third" in woke)
    with pytest.raises(SessionClosedError):
        engine2.submit([9], (0,), waiter=third)
    engine2.forget(third)
    blocker.open()
    closer.join(10)
    engine.close()


def test_a_waiter_whose_loop_is_gone_does_not_keep_its_claim():
    gate = Gate()
    engine, _ = make_engine(1, gate, max_queue_size=1)

    def dead() -> None:
        raise RuntimeError("Event loop is closed")

    engine.submit([0], (0,))
    assert gate.started.wait(5)
    engine.submit([1], (0,))
    with pytest.raises(SubmitTimeoutError):
        engine.submit([9], (0,), waiter=SpaceWaiter(dead))
    gate.open()
    assert wait_for(lambda: engine.stats().queued == 0)
    assert engine.stats().waiting_submitters == 0
    assert engine.submit([2], (0,), blocking=False).result(5) == [2]  # the place is free
    engine.close()


def test_blocking_and_async_submitters_both_progress_under_sustained_load():
    """Threads parked on the engine's condition wake faster than a loop hop; without claims taking
    turns with them, async waiters would get nothing until the threads ran out of work."""
    order: list[str] = []

    def run(inputs, output_indices):
        time.sleep(0.0005)
        order.append(inputs[0])
        return echo(inputs, output_indices)

    engine, _ = make_engine(1, run, max_queue_size=1)
    per_producer = 60

    def blocking_producer() -> None:
        for _ in range(per_producer):
            engine.submit(["thread"], (0,))

    async def async_producer() -> None:
        for _ in range(per_producer):
            await submit_async(
                engine,
                lambda waiter: engine.submit(["async"], (0,), blocking=False, waiter=waiter),
                "arun",
            )

    async def main() -> None:
        threads = [threading.Thread(target=blocking_producer) for _ in range(2)]
        for thread in threads:
            thread.start()
        await asyncio.gather(async_producer(), async_producer())
        for thread in threads:
            thread.join(10)

    asyncio.run(asyncio.wait_for(main(), 10))
    assert wait_for(lambda: len(order) == 4 * per_producer)
    # while both kinds had work, each got a fair share of the places
    head = order[: 2 * per_producer]
    assert head.count("async") >= per_producer // 2, head
    assert head.count("thread") >= per_producer // 2, head
    assert engine.stats().waiting_submitters == 0
    engine.close()


def test_arun_with_pacing_waits_on_a_loop_timer():
    engine, _ = make_engine(1, delay=0.005, max_queue_size=4, enable_pacing=True)
    engine.submit([0], (0,)).result(5)  # a pacing sample: ~5 ms between admissions

    async def main():
        futures = [
            await submit_async(
                engine,
                lambda waiter, i=i: engine.submit([i], (0,), blocking=False, waiter=waiter),
                "arun",
            )
            for i in range(1, 6)
        ]
        return [(await asyncio.wrap_future(f))[0] for f in futures]

    start = time.monotonic()
    assert asyncio.run(asyncio.wait_for(main(), 5)) == [1, 2, 3, 4, 5]
    assert time.monotonic() - start >= 0.015  # paced, not admitted at once
    assert engine.stats().waiting_submitters == 0
    engine.close()
