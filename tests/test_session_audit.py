"""Sessions under the faults of issue 9 §1, audited on real backends (onnxruntime, the RKNN
emulator) and in real subprocesses: a SIGINT storm on the main thread, arun cancelled while the
session breaks, the pipeline after BROKEN, interpreter exit with a broken session."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from ez_rknn_async import (
    InferenceSession,
    SessionBrokenError,
    SessionClosedError,
    make_provider_options,
)
from ez_rknn_async.tensors import TensorSpec
from ez_rknn_async.testing import FakeBackend
from test_rknn_interrupts import (  # ctrl_c_raises: a fixture
    MODEL,
    SCHEDULE,
    assert_every_slot_works,
    check,
    ctrl_c_raises,  # noqa: F401
    frames,
)

from fakes import hold_runners, wait_for

pytest_plugins = ("rknn_fixtures",)

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"
ONES = np.ones((1, 4), np.float32)


def _sigint_storm(sess, run_once, iterations: int) -> int:
    """Run ``run_once()`` on the main thread ``iterations`` times while another thread sends it
    a real SIGINT during each (at a random point); returns how many were interrupted. Each
    round is a handshake (ready -> signal sent), so no signal lands outside its round."""
    run_once()  # first: lazy imports inside it must not be cut by a signal
    main = threading.get_ident()
    ready, sent, stop = threading.Event(), threading.Event(), threading.Event()
    rng = random.Random(9)

    def sender() -> None:
        while ready.wait(10) and not stop.is_set():
            ready.clear()
            for _ in range(rng.randrange(3000)):  # spread where in the run it lands
                pass
            signal.pthread_kill(main, signal.SIGINT)
            sent.set()

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    interrupted = 0
    try:
        for _ in range(iterations):
            try:
                sent.clear()
                ready.set()
                run_once()
                assert sent.wait(10)
                _landed()
            except KeyboardInterrupt:
                interrupted += 1
                assert sent.wait(10)
    finally:
        stop.set()
        ready.set()
        thread.join(10)
    stats = sess.stats()
    assert stats.state == "open" and stats.running == 0, stats
    assert all(slot.state == "idle" for slot in stats.slots), stats  # no slot lent forever
    return interrupted


def _landed() -> None:
    """A Python call: a pending KeyboardInterrupt is raised at the latest here."""


@pytest.mark.usefixtures("ctrl_c_raises")
def test_a_sigint_storm_on_the_main_thread_costs_onnxruntime_runs_only_themselves(add_mul_path):
    options = make_provider_options(schedule=[0, 1, 2], submit_timeout_ms=5000)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    with InferenceSession(add_mul_path, provider_options=options) as sess:

        def run_once():
            total, product = sess.run(None, {"a": x, "b": ONES})
            np.testing.assert_array_equal(total, x + 1)

        interrupted = _sigint_storm(sess, run_once, 150)
        assert interrupted > 0
        futures = [sess.submit(None, {"a": x * i, "b": ONES}) for i in range(30)]
        for i, future in enumerate(futures):
            np.testing.assert_array_equal(future.result(10)[1], x * i)
        for _ in range(3):
            run_once()


@pytest.mark.usefixtures("ctrl_c_raises")
def test_a_sigint_storm_on_the_main_thread_costs_rknn_runs_only_themselves(npu):
    npu.use(compute_us=200)  # a run long enough for signals to land inside rknn_run too
    inputs = frames(8)
    with InferenceSession(MODEL.data(), provider_options=SCHEDULE) as sess:
        counter = [0]

        def run_once():
            frame = inputs[counter[0] % len(inputs)]
            counter[0] += 1
            check(sess.run(None, [frame]), frame)

        interrupted = _sigint_storm(sess, run_once, 150)
        assert interrupted > 0
        assert npu.calls("rknn_outputs_get") == npu.calls("rknn_outputs_release")
        assert_every_slot_works(npu, sess)


def _broken_with_frames_in_flight(add_mul_path, monkeypatch):
    """A one-slot session whose runner waits for the returned gate."""
    gate = hold_runners(monkeypatch)
    options = make_provider_options(schedule=[0], max_queue_size=2, submit_timeout_ms=5000)
    return gate, InferenceSession(add_mul_path, provider_options=options)


def test_arun_cancelled_while_the_session_breaks_ends_once_and_others_get_clear_errors(
    add_mul_path, monkeypatch
):
    """One arun is inside a hung backend call, one queued, one waiting for queue space; the
    first is cancelled as close() abandons it: each ends exactly once, with CancelledError,
    SessionBrokenError or SessionClosedError, and the loop never hangs."""
    gate, sess = _broken_with_frames_in_flight(add_mul_path, monkeypatch)
    feed = {"a": ONES, "b": ONES}

    async def main():
        hung = asyncio.create_task(sess.arun(None, feed))
        assert await asyncio.to_thread(wait_for, lambda: sess.stats().running == 1)
        queued = [asyncio.create_task(sess.arun(None, feed)) for _ in range(3)]
        assert await asyncio.to_thread(wait_for, lambda: sess.stats().waiting_submitters == 1)
        closer = asyncio.create_task(asyncio.to_thread(sess.close, 0.2))
        hung.cancel()
        with pytest.warns(RuntimeWarning, match="did not finish within close"):
            await asyncio.wait_for(closer, 10)
        return await asyncio.wait_for(asyncio.gather(hung, *queued, return_exceptions=True), 10)

    outcomes = asyncio.run(main())
    assert isinstance(outcomes[0], (asyncio.CancelledError, SessionBrokenError))
    assert all(isinstance(o, SessionClosedError) for o in outcomes[1:]), outcomes
    assert sess.stats().state == "broken"
    with pytest.raises(SessionBrokenError):
        asyncio.run(sess.arun(None, feed))
    gate.set()


def test_run_pipeline_and_drain_after_the_session_breaks(add_mul_path, monkeypatch):
    """A run_pipeline caller waiting for a hung frame gets SessionBrokenError at the deadline;
    afterwards run_pipeline and drain_pipeline refuse at once."""
    gate, sess = _broken_with_frames_in_flight(add_mul_path, monkeypatch)
    feed = {"a": ONES, "b": ONES}
    assert sess.run_pipeline(feed, depth=1) is None
    assert wait_for(lambda: sess.stats().running == 1)
    errors: list[BaseException] = []

    def waiting_producer():
        try:
            sess.run_pipeline(feed, depth=1)  # waits for the hung first frame
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    producer = threading.Thread(target=waiting_producer)
    producer.start()
    assert wait_for(lambda: sess.stats().queued == 1)
    with pytest.warns(RuntimeWarning, match="did not finish within close"):
        sess.close(timeout=0.2)
    producer.join(10)
    assert not producer.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], SessionBrokenError), errors
    for call in (lambda: sess.run_pipeline(feed), sess.drain_pipeline):
        with pytest.raises(SessionBrokenError, match="did not finish within close"):
            call()
    gate.set()


def test_interpreter_exit_with_a_broken_session_and_a_stuck_callback_is_bounded():
    """A session already BROKEN (its worker hung) whose callback thread is stuck in a user
    callback forever: the process exits at once with code 0 (daemon threads, nothing to join)."""
    code = textwrap.dedent(
        """
        import threading, warnings
        from fakes import make_engine
        forever = threading.Event()
        entered = threading.Event()
        def hang(inputs, indices):
            forever.wait()
        def stuck(*args):
            entered.set()
            forever.wait()
        engine, _ = make_engine(2, hang, sequential_callbacks=False)
        engine.submit([0], (0,))
        engine._workers[1].runner.fn = lambda inputs, indices: [inputs[0]]
        engine.submit_callback([1], (0,), stuck, None)
        assert entered.wait(10)
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            engine.close(timeout=0.1)
        assert engine.stats().state == "broken"
        print("exiting", flush=True)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path[:0] = {[str(SRC), str(TESTS)]!r}\n" + code],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (proc.returncode, proc.stdout) == (0, "exiting\n"), proc.stderr


def test_a_ctrl_c_while_close_waits_still_releases_the_backend():
    """A Ctrl-C while close() waited for the workers (here a KeyboardInterrupt at its first join)
    left the backend unreleased: the engine finished closing and re-raised, the session returned
    before its own teardown, and every later close() was a no-op. Now the backend is released
    before the interrupt goes on."""
    specs = [TensorSpec("x", (2,), np.float32)]
    backend = FakeBackend(lambda xs: [xs[0]], specs, specs)
    sess = backend.session()
    sess.run(None, [np.ones(2, np.float32)])
    workers = {worker.thread for worker in sess._engine._workers}
    real_join = threading.Thread.join

    def interrupted_join(thread, timeout=None):
        if thread in workers:
            workers.clear()  # one interrupt, at the first worker joined
            raise KeyboardInterrupt
        return real_join(thread, timeout)

    threading.Thread.join = interrupted_join  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            sess.close()
    finally:
        threading.Thread.join = real_join  # type: ignore[method-assign]
    assert sess.stats().state == "closed"
    assert backend.closed == 1 and all(runner.closed for runner in backend.runners)
    sess.close()  # idempotent afterwards
    assert backend.closed == 1
    with pytest.raises(SessionClosedError):
        sess.run(None, [np.ones(2, np.float32)])
