"""``stats()``: the frozen snapshot ``ez-rknn top`` and a server's metrics read."""

from __future__ import annotations

import contextlib
import dataclasses
import threading

import numpy as np
import pytest

from ez_rknn_async import InferenceSession, SessionStats, SlotStats, make_provider_options

from fakes import Gate, make_engine, wait_for


def picky(inputs, indices):
    """Fails odd inputs, echoes even ones."""
    if int(inputs[0]) % 2:
        raise ValueError(f"odd input {inputs[0]}")
    return [inputs[0] for _ in indices]


def test_counts_per_slot_and_in_total_every_mode():
    engine, _ = make_engine(2, picky, max_queue_size=8)
    for value in range(4):  # inline: 2 complete, 2 fail
        with contextlib.suppress(ValueError):
            engine.run_inline([value], (0,))
    futures = [engine.submit([value], (0,)) for value in range(6)]
    delivered = threading.Semaphore(0)
    for value in range(4):
        engine.submit_callback([value], (0,), lambda *args: delivered.release(), None)
    for future in futures:
        future.exception(5)
    for _ in range(4):
        assert delivered.acquire(timeout=5)
    # A worker counts a task right after publishing its outcome.
    assert wait_for(lambda: engine.stats().completed + engine.stats().failed == 14)
    assert wait_for(lambda: engine.stats().running == 0)
    stats = engine.stats()
    assert isinstance(stats, SessionStats) and all(isinstance(s, SlotStats) for s in stats.slots)
    assert (stats.inline_runs, stats.submitted) == (4, 10)
    assert (stats.completed, stats.failed) == (7, 7)
    assert sum(s.completed for s in stats.slots) == 7 and sum(s.failed for s in stats.slots) == 7
    assert [(s.index, s.core, s.core_mask) for s in stats.slots] == [(0, 0, 1), (1, 1, 2)]
    assert all(
        s.state == "idle" and (s.busy_s > 0) == (s.completed + s.failed > 0) for s in stats.slots
    )
    assert stats.queue_waits == 10 and stats.state == "open"
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.queued = 1  # type: ignore[misc]
    engine.close()
    closed = engine.stats()
    assert closed.state == "closed" and closed.completed == 7  # readable after close


def test_gauges_and_queue_waits_while_a_worker_is_held():
    gate = Gate()
    engine, _ = make_engine(1, gate, max_queue_size=4)
    first = engine.submit([0], (0,))
    assert gate.wait_entered(1)
    queued = [engine.submit([i], (0,)) for i in (1, 2)]
    held = engine.stats()
    assert (held.running, held.queued, held.peak_queued) == (1, 2, 2)
    assert held.slots[0].state == "running" and held.slots[0].completed == 0
    later = engine.stats()
    assert later.slots[0].busy_s >= held.slots[0].busy_s > 0  # the running task counts
    gate.open()
    for future in [first, *queued]:
        future.result(5)
    assert wait_for(lambda: engine.stats().completed == 3)  # counted just after publishing
    done = engine.stats()
    assert (done.running, done.queued, done.completed, done.queue_waits) == (0, 0, 3, 3)
    # The two queued tasks waited at least until the first was released.
    assert 0 < done.queue_wait_peak_s <= done.queue_wait_s
    engine.close()


def test_an_inline_run_shows_as_inline_and_does_not_count_as_a_queue_wait():
    gate = Gate()
    engine, _ = make_engine(1, gate)
    caller = threading.Thread(target=engine.run_inline, args=([5], (0,)))
    caller.start()
    assert gate.wait_entered(1)
    stats = engine.stats()
    assert stats.slots[0].state == "inline" and stats.running == 1
    gate.open()
    caller.join(5)
    assert wait_for(lambda: engine.stats().slots[0].state == "idle")
    stats = engine.stats()
    assert (stats.completed, stats.queue_waits, stats.inline_runs) == (1, 0, 1)
    engine.close()


def test_a_session_reports_its_slots(add_mul_path):
    options = make_provider_options(schedule=[0, 1])
    a = np.ones((1, 4), np.float32)
    with InferenceSession(add_mul_path, provider_options=options) as sess:
        for _ in range(3):
            sess.run(None, [a, a])
        sess.submit(None, [a, a]).result(5)
        assert wait_for(lambda: sess.stats().completed == 4)
        stats = sess.stats()
        assert len(stats.slots) == len(sess.worker_slots) == 2
        assert stats.completed == 4 and stats.failed == 0
    assert sess.stats().state == "closed"
