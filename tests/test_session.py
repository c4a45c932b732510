"""Session-level behaviour: the pipeline window, runtime errors inside tasks, concurrency and
lifecycle, on real onnxruntime models."""

from __future__ import annotations

import asyncio
import gc
import threading

import numpy as np
import pytest

from ez_rknn_async import (
    InferenceError,
    InferenceSession,
    SessionClosedError,
    make_provider_options,
)

from fakes import hold_runners, wait_for
from onnx_models import broadcast_model, save


@pytest.fixture
def broadcast_path(tmp_path):
    return save(tmp_path, "broadcast.onnx", broadcast_model())


def frame(value: float, n: int = 3) -> list[np.ndarray]:
    return [np.full(n, value, np.float32), np.zeros(n, np.float32)]


def values(results) -> list[float]:
    return [float(r[0][0]) for r in results]


def test_pipeline_returns_frames_depth_calls_late_in_order(broadcast_path):
    with InferenceSession(broadcast_path) as sess:
        out = [sess.run_pipeline(frame(i), depth=3) for i in range(10)]
        assert out[:3] == [None] * 3
        assert values(out[3:]) == list(range(7))
        assert values(sess.drain_pipeline()) == [7, 8, 9]
        assert sess.drain_pipeline() == []
        assert sess.run_pipeline(frame(42), depth=3) is None  # refills after a drain


def test_pipeline_depth_change_and_reset_discard_frames_in_flight(broadcast_path):
    with InferenceSession(broadcast_path) as sess:
        for i in range(3):
            assert sess.run_pipeline(frame(i), depth=3) is None
        assert values([sess.run_pipeline(frame(3), depth=3)]) == [0]
        # a new depth discards 1, 2, 3 and starts filling again
        assert sess.run_pipeline(frame(4), depth=2) is None
        assert sess.run_pipeline(frame(5), depth=2) is None
        assert values([sess.run_pipeline(frame(6), depth=2)]) == [4]
        # reset=True discards too, keeping the depth
        assert sess.run_pipeline(frame(7), depth=2, reset=True) is None
        assert sess.run_pipeline(frame(8), depth=2) is None
        assert values([sess.run_pipeline(frame(9), depth=2)]) == [7]
        assert values(sess.drain_pipeline()) == [8, 9]


def test_errors_inside_tasks_reach_every_mode_and_the_session_goes_on(broadcast_path):
    bad = [np.ones(3, np.float32), np.ones(4, np.float32)]
    with InferenceSession(broadcast_path) as sess:
        with pytest.raises(InferenceError, match="(?i)broadcast"):
            sess.run(None, bad)
        with pytest.raises(InferenceError, match="(?i)broadcast"):
            sess.submit(None, bad).result(10)
        outcome = []
        done = threading.Event()
        sess.run_async(None, bad, lambda r, u, e: (outcome.append((r, u, e)), done.set()), "u")
        assert done.wait(10)
        results, user_data, err = outcome[0]
        assert results is None and user_data == "u" and err
        # a failed pipeline frame raises at its turn; the frames around it are intact
        assert sess.run_pipeline(frame(1), depth=1) is None
        assert sess.run_pipeline(bad, depth=1) is not None
        with pytest.raises(InferenceError, match="(?i)broadcast"):
            sess.run_pipeline(frame(2), depth=1)
        assert values([sess.run_pipeline(frame(3), depth=1)]) == [2]
        sess.run_pipeline(bad, depth=1)
        with pytest.raises(InferenceError, match="(?i)broadcast") as info:
            sess.drain_pipeline()
        assert info.value.results == []
        assert values([sess.run(None, frame(5))]) == [5]


def test_drain_raises_the_first_failure_after_collecting_the_rest(broadcast_path):
    bad = [np.ones(3, np.float32), np.ones(4, np.float32)]
    with InferenceSession(broadcast_path) as sess:
        for feed in (frame(1), bad, frame(2)):
            sess.run_pipeline(feed, depth=5)
        with pytest.raises(InferenceError, match="(?i)broadcast") as info:
            sess.drain_pipeline()
        assert values(info.value.results) == [1, 2]
        assert len(sess._pipeline) == 0


def test_concurrent_callers_in_every_mode(add_mul_path):
    opts = make_provider_options(max_queue_size=4, sequential_callbacks=True)
    with InferenceSession(add_mul_path, provider_options=opts) as sess:
        errors, got = [], {}
        lock = threading.Lock()

        def caller(t):
            try:
                for i in range(150):
                    v = np.full((1, 4), t * 1000 + i, np.float32)
                    mode = i % 3
                    if mode == 0:
                        (s,) = sess.run(["sum"], [v, v])
                    elif mode == 1:
                        (s,) = sess.submit(["sum"], [v, v]).result(10)
                    else:
                        s = sess.run(["sum", "prod"], {"a": v, "b": v})[0]
                    with lock:
                        got[(t, i)] = float(s[0, 0])
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=caller, args=(t,)) for t in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        assert got == {(t, i): 2.0 * (t * 1000 + i) for t in range(6) for i in range(150)}


def test_async_inputs_are_copied_so_callers_may_reuse_buffers(add_mul_path):
    with InferenceSession(add_mul_path) as sess:
        buffer = np.zeros((1, 4), np.float32)
        futures = []
        for i in range(20):
            buffer[:] = i
            futures.append(sess.submit(["sum"], [buffer, buffer]))
        buffer[:] = -1
        assert [float(f.result(10)[0][0, 0]) for f in futures] == [2.0 * i for i in range(20)]


def test_close_with_pipeline_frames_in_flight_and_garbage_collection(add_mul_path):
    sess = InferenceSession(add_mul_path)
    a = np.ones((1, 4), np.float32)
    for _ in range(3):
        sess.run_pipeline([a, a], depth=3)
    sess.close()
    with pytest.raises(SessionClosedError):
        sess.run_pipeline([a, a])
    # an unreferenced session stops its threads when collected
    other = InferenceSession(add_mul_path)
    other.run(None, [a, a])
    del other
    gc.collect()
    assert not [t for t in threading.enumerate() if t.name.startswith("EzRknn")]


def test_worker_slots_follow_the_options(add_mul_path):
    layouts = {
        None: None,  # default: one slot per usable CPU, each one intra-op thread
        "schedule": make_provider_options(schedule=[0, 1, 2], threads_per_core=2),
        "tp_mode": make_provider_options(tp_mode="all"),
    }
    from ez_rknn_async.backends.base import usable_cpus

    for name, opts in layouts.items():
        with InferenceSession(add_mul_path, provider_options=opts) as sess:
            slots = sess.worker_slots
            names = sorted(t.name for t in threading.enumerate() if t.name.startswith("EzRknn_W"))
            if name is None:
                assert [s.core for s in slots] == list(range(usable_cpus()))
                assert {s.intra_op_threads for s in slots} == {1}
            elif name == "schedule":
                assert [s.core for s in slots] == [0, 1, 2, 0, 1, 2]
            else:
                assert [(s.core, s.intra_op_threads) for s in slots] == [(None, 0)]
            assert len(names) == len(slots)
            a = np.ones((2, 4), np.float32)
            np.testing.assert_array_equal(sess.run(["prod"], [a, 3 * a])[0], 3 * a)


def test_close_wakes_a_pipeline_producer_blocked_on_a_full_queue(add_mul_path, monkeypatch):
    gate = hold_runners(monkeypatch)
    opts = make_provider_options(schedule=[0], max_queue_size=1, submit_timeout_ms=30000)
    sess = InferenceSession(add_mul_path, provider_options=opts)
    a = np.ones((1, 4), np.float32)
    outcome = []

    def producer():
        try:
            for _ in range(10):  # one running, one queued, then blocked
                sess.run_pipeline([a, a], depth=8)
        except SessionClosedError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=producer)
    thread.start()
    # one task running (held by the gate), one queued, the producer waiting for space
    assert wait_for(lambda: sess.stats().running == 1 and sess.stats().waiting_submitters == 1)
    closer = threading.Thread(target=sess.close)
    closer.start()
    thread.join(5)
    assert not thread.is_alive() and len(outcome) == 1  # woken at once, not after 30 s
    gate.set()
    closer.join(10)
    assert not closer.is_alive()


def test_cancelling_arun_cancels_a_queued_inference(add_mul_path, monkeypatch):
    gate = hold_runners(monkeypatch)
    opts = make_provider_options(schedule=[0])
    a = np.ones((1, 4), np.float32)

    async def main(sess):
        first = asyncio.ensure_future(sess.arun(None, [a, a]))
        second = asyncio.ensure_future(sess.arun(None, [2 * a, a]))
        while sess.stats().queued != 1 or sess.stats().running != 1:
            await asyncio.sleep(0.001)
        second.cancel()
        while not second.done():  # the cancellation reaches the queued inference
            await asyncio.sleep(0)
        gate.set()
        result = await first
        with pytest.raises(asyncio.CancelledError):
            await second
        return result

    with InferenceSession(add_mul_path, provider_options=opts) as sess:
        result = asyncio.run(asyncio.wait_for(main(sess), 10))
        np.testing.assert_array_equal(result[0], 2 * a)
        assert sess.stats().submitted == 2 and gate.runs == 1  # the cancelled one never ran
