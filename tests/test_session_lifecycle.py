"""Session lifecycle faults on a real backend (onnxruntime) and in real subprocesses: a hung
inference at close(), interpreter exit with a stuck worker or callback, fork(), pickling."""

from __future__ import annotations

import asyncio
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ez_rknn_async import InferenceSession, SessionBrokenError, make_provider_options

from fakes import hold_runners, wait_for
from rknn_emu import EmuModel, EmuTensor

pytest_plugins = ("rknn_fixtures",)

A = np.ones((1, 4), np.float32)
TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"


def _every_call(sess, feed=(A, A)):
    """One thunk per public calling mode."""
    binding = None

    def iobinding():
        nonlocal binding
        binding = sess.io_binding()

    return {
        "run": lambda: sess.run(None, list(feed)),
        "run_async": lambda: sess.run_async(None, list(feed), lambda *args: None),
        "submit": lambda: sess.submit(None, list(feed)),
        "run_pipeline": lambda: sess.run_pipeline(list(feed)),
        "drain_pipeline": sess.drain_pipeline,
        "arun": lambda: asyncio.run(sess.arun(None, list(feed))),
        "io_binding": iobinding,
    }


def test_a_hung_inference_breaks_the_session_leaks_the_backend_and_refuses_every_call(
    add_mul_path, monkeypatch
):
    gate = hold_runners(monkeypatch)
    sess = InferenceSession(add_mul_path, provider_options=make_provider_options(schedule=[0]))
    backend_closes = []
    monkeypatch.setattr(sess._backend, "close", lambda: backend_closes.append(1))
    outcome = []
    done = threading.Event()

    def callback(results, user_data, err):
        outcome.append(err)
        done.set()

    sess.run_async(None, [A, A], callback)
    assert wait_for(lambda: sess.stats().running == 1)  # taken by its worker, held at the gate
    with pytest.warns(RuntimeWarning, match="leaked on purpose"):
        sess.close(timeout=0.3)
    assert done.wait(5) and "abandoned" in outcome[0]
    assert sess.stats().state == "broken" and "broken" in repr(sess)
    assert backend_closes == []  # the hung run may still be inside it
    for call in _every_call(sess).values():
        with pytest.raises(SessionBrokenError, match="did not finish within close"):
            call()
    sess.close()  # idempotent, silent
    gate.set()
    engine = sess._engine
    assert wait_for(lambda: not any(w.thread.is_alive() for w in engine._workers))
    assert wait_for(lambda: not engine._callbacks.thread.is_alive())
    assert len(outcome) == 1  # the late result was dropped, not a second callback


def test_a_session_cannot_be_pickled(add_mul_path):
    with (
        InferenceSession(add_mul_path) as sess,
        pytest.raises(TypeError, match="'InferenceSession'"),
    ):
        pickle.dumps(sess)


def _python(script: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env_path = f"{SRC}:{TESTS}"
    code = f"import sys; sys.path[:0] = {env_path.split(':')!r}\n" + textwrap.dedent(script)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("stuck", ["inference", "callback"])
def test_interpreter_exit_is_bounded_by_the_close_deadline(stuck):
    """A worker or a callback that never returns: the atexit close abandons it at its deadline
    (here lowered to 0.5 s) and the process exits normally, saying once that it leaked."""
    proc = _python(
        f"""
        import threading
        from ez_rknn_async.engine import lifecycle
        from fakes import make_engine
        lifecycle.DEFAULT_CLOSE_TIMEOUT_S = 0.5
        forever = threading.Event()
        def hang(*args):
            forever.wait()
            return [args[0][0]]
        if {stuck!r} == "inference":
            engine, _ = make_engine(1, hang)
            engine.submit([1], (0,))
        else:
            engine, _ = make_engine(1)
            engine.submit_callback([1], (0,), hang, None)
        idle, _ = make_engine(1)  # another session, closed normally in the same deadline
        print("exiting", flush=True)
        """,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "exiting\n"
    assert proc.stderr.count("leaked on purpose") == 1


FORK_MODEL = EmuModel(
    inputs=[EmuTensor("x", "float32", (1, 4))], outputs=[EmuTensor("y", "float32", (1, 4))]
)


def test_a_forked_child_refuses_inherited_sessions_and_makes_its_own(npu, tmp_path):
    """The parent is busy (a run inside the NPU, one queued) when it forks: the child's
    inherited session raises at once for every call, a session made in the child works, and the
    child exits normally (nothing inherited is closed or freed there: it is the parent's).

    On the emulated NPU: onnxruntime itself cannot run in a forked child of a process that used
    it (its C++ static destructors hang at the child's exit, with or without this library)."""
    path = FORK_MODEL.write(tmp_path / "m.rknn")
    proc = _python(
        f"""
        import os, threading
        import numpy as np
        from ez_rknn_async import InferenceSession, SessionBrokenError, make_provider_options
        from ez_rknn_async.backends.rknn.backend import RknnBackend
        import test_session_lifecycle as t

        path = {str(path)!r}
        gate = threading.Event()
        entered = threading.Event()
        opened = RknnBackend.open_runner

        class Held:
            def __init__(self, runner):
                self.runner = runner
            def run(self, inputs, indices):
                entered.set()
                gate.wait(30)
                return self.runner.run(inputs, indices)
            def close(self):
                self.runner.close()

        RknnBackend.open_runner = lambda self, slot: Held(opened(self, slot))
        sess = InferenceSession(path, provider_options=make_provider_options(schedule=[0]))
        RknnBackend.open_runner = opened
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        busy = sess.submit(None, [x])
        assert entered.wait(10)
        queued = sess.submit(None, [x])
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            failures = []
            for name, call in t._every_call(sess, [x]).items():
                try:
                    call()
                    failures.append(name + " did not raise")
                except SessionBrokenError as exc:
                    if f"created in process {{parent}}" not in str(exc):
                        failures.append(name + ": " + str(exc))
            try:
                sess.stats()
                failures.append("stats did not raise")
            except SessionBrokenError:
                pass
            sess.close()  # a no-op in the child
            with InferenceSession(path) as mine:
                assert mine.run(None, [x])[0].shape == (1, 4)
            print("child:", failures or "ok", flush=True)
            raise SystemExit(0)
        status = os.waitpid(pid, 0)[1]
        gate.set()
        assert busy.result(10)[0].shape == queued.result(10)[0].shape == (1, 4)
        sess.close()
        print("parent:", os.waitstatus_to_exitcode(status), flush=True)
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["child: ok", "parent: 0"], proc.stderr


def test_a_run_stuck_inside_the_npu_breaks_the_session_at_the_deadline(npu, tmp_path):
    """rknn_run never returns on one core: close() returns at its deadline, the stuck run's
    callback gets the error, its context is leaked (not destroyed under the run), the other cores'
    results are all there, and the emulator sees no rule violation."""
    path = FORK_MODEL.write(tmp_path / "m.rknn")
    sess = InferenceSession(path, provider_options=make_provider_options(schedule=[0, 1, 2]))
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    calls = []
    delivered = threading.Event()

    def callback(results, user_data, err):
        calls.append((user_data, err))
        delivered.set()

    npu.block_runs(1)
    sess.run_async(None, [x], callback, "stuck")
    assert npu.wait_blocked(1) == 1
    others = [sess.submit(None, [x]) for _ in range(4)]  # the two other cores serve these
    assert all(future.result(10)[0].shape == (1, 4) for future in others)
    contexts = npu.live_contexts
    start = time.monotonic()
    with pytest.warns(RuntimeWarning, match="leaked on purpose"):
        sess.close(timeout=0.5)
    assert time.monotonic() - start < 0.5 + 2.0
    assert delivered.wait(5) and calls[0][0] == "stuck" and "abandoned" in calls[0][1]
    assert npu.live_contexts == contexts  # nothing destroyed while a run is inside
    with pytest.raises(SessionBrokenError):
        sess.run(None, [x])

    assert npu.release_runs() == 1
    engine = sess._engine
    assert wait_for(lambda: not any(w.thread.is_alive() for w in engine._workers))
    assert len(calls) == 1  # the late outcome was dropped
    # What close() leaked on purpose, released by hand now that no run is inside, so that the
    # fixture can check the emulator for leaks too.
    for worker in engine._workers:
        worker.runner.close()
    sess._backend.close()


def test_interpreter_exit_with_a_long_npu_run_is_bounded(npu, tmp_path):
    """An rknn_run that takes 20 s: the process exits after the atexit deadline (0.5 s here),
    not after the run, and says once that it leaked the session."""
    path = FORK_MODEL.write(tmp_path / "m.rknn")
    proc = _python(
        f"""
        import os
        import numpy as np
        from ez_rknn_async import InferenceSession
        from ez_rknn_async.engine import lifecycle
        from fakes import wait_for
        from rknn_emu import Npu, emulator_build
        lifecycle.DEFAULT_CLOSE_TIMEOUT_S = 0.5
        npu = Npu(emulator_build.build(), os.environ.__setitem__)
        sess = InferenceSession({str(path)!r})
        npu.set_run_delay(20.0)
        sess.submit(None, [np.zeros((1, 4), np.float32)])
        assert wait_for(lambda: npu.max_parallel == 1)  # the run is inside rknn_run
        print("exiting", flush=True)
        """,
        timeout=15,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "exiting\n"
    assert proc.stderr.count("leaked on purpose") == 1


def test_a_session_waiting_for_its_npu_run_does_not_hold_another_sessions_close(npu, tmp_path):
    path = FORK_MODEL.write(tmp_path / "m.rknn")
    x = np.zeros((1, 4), np.float32)
    waiting = InferenceSession(path, provider_options=make_provider_options(schedule=[0]))
    other = InferenceSession(path, provider_options=make_provider_options(schedule=[1]))
    other.run(None, [x])
    npu.block_runs(1)
    future = waiting.submit(None, [x])
    assert npu.wait_blocked(1) == 1
    closer = threading.Thread(target=waiting.close, kwargs={"timeout": 10})
    closer.start()
    assert wait_for(lambda: waiting.stats().state == "closing")
    start = time.monotonic()
    other.close()  # no class-wide lock makes it wait for the other session's run
    assert time.monotonic() - start < 2.0
    assert closer.is_alive()
    assert npu.release_runs() == 1
    closer.join(10)
    assert future.result(0)[0].shape == (1, 4) and waiting.stats().state == "closed"
