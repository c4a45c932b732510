"""Session lifecycle faults on a real backend (onnxruntime) and in real subprocesses: a hung
inference at close(), interpreter exit with a stuck worker or callback, fork(), pickling."""

from __future__ import annotations

import asyncio
import pickle
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from ez_rknn_async import InferenceSession, SessionBrokenError, make_provider_options

from fakes import hold_runners, wait_for

A = np.ones((1, 4), np.float32)
TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"


def _every_call(sess):
    """One thunk per public calling mode."""
    binding = None

    def iobinding():
        nonlocal binding
        binding = sess.io_binding()

    return {
        "run": lambda: sess.run(None, [A, A]),
        "run_async": lambda: sess.run_async(None, [A, A], lambda *args: None),
        "submit": lambda: sess.submit(None, [A, A]),
        "run_pipeline": lambda: sess.run_pipeline([A, A]),
        "drain_pipeline": sess.drain_pipeline,
        "arun": lambda: asyncio.run(sess.arun(None, [A, A])),
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
    assert outcome == [outcome[0]]  # the late result is dropped, not a second callback


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


def test_a_forked_child_refuses_inherited_sessions_and_makes_its_own(add_mul_path):
    """The parent is busy (a run in flight, one queued) when it forks: the child's inherited
    session raises at once for every call, a session made in the child works, and the child
    exits normally (no atexit wait on the inherited engine)."""
    proc = _python(
        f"""
        import os, threading, asyncio
        import numpy as np
        from ez_rknn_async import InferenceSession, SessionBrokenError, make_provider_options
        from fakes import Gate
        from ez_rknn_async.backends.onnxruntime import OnnxRuntimeBackend
        import test_session_lifecycle as t

        path = {add_mul_path!r}
        gate = threading.Event()
        entered = threading.Event()
        opened = OnnxRuntimeBackend.open_runner

        class Held:
            def __init__(self, runner):
                self.runner = runner
            def run(self, inputs, indices):
                entered.set()
                gate.wait(30)
                return self.runner.run(inputs, indices)
            def close(self):
                self.runner.close()

        OnnxRuntimeBackend.open_runner = lambda self, slot: Held(opened(self, slot))
        sess = InferenceSession(path, provider_options=make_provider_options(schedule=[0]))
        OnnxRuntimeBackend.open_runner = opened
        busy = sess.submit(None, [t.A, t.A])
        assert entered.wait(10)
        queued = sess.submit(None, [t.A, t.A])
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            failures = []
            for name, call in t._every_call(sess).items():
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
                out = mine.run(None, [t.A, t.A])
                assert np.array_equal(out[0], 2 * t.A)
            print("child:", failures or "ok", flush=True)
            raise SystemExit(0)
        status = os.waitpid(pid, 0)[1]
        gate.set()
        assert busy.result(10)[0].tolist() == (2 * t.A).tolist()
        assert queued.result(10)[0].tolist() == (2 * t.A).tolist()
        sess.close()
        print("parent:", os.waitstatus_to_exitcode(status), flush=True)
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["child: ok", "parent: 0"], proc.stderr
