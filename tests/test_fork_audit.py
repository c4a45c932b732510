"""fork() under load, audited (issue 9 §1): a child never deadlocks on a lock a parent thread
held at fork(), its own sessions work, inherited ones refuse at once, and it exits normally.

Each scenario runs in a real subprocess whose children are bounded by ``signal.alarm`` (a hung
child is killed by SIGALRM), so a deadlock fails the test instead of hanging it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from rknn_emu import EmuModel, EmuTensor

pytest_plugins = ("rknn_fixtures",)

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"
MODEL = EmuModel(
    inputs=[EmuTensor("x", "float32", (1, 4))], outputs=[EmuTensor("y", "float32", (1, 4))]
)
PRELUDE = """
import os, signal, sys, threading
import numpy as np
from ez_rknn_async import InferenceSession, SessionBrokenError, SessionClosedError
from ez_rknn_async.backends.rknn.context import Context
x = np.arange(4, dtype=np.float32).reshape(1, 4)

def spawn(child):
    '''Run child() in a forked child killed by SIGALRM after 10 s (exit code -14); its pid.'''
    pid = os.fork()
    if pid == 0:
        signal.alarm(10)  # not faulthandler: its watchdog thread does not survive a 2nd fork
        try:
            child()
        except BaseException as exc:
            print("child failed:", repr(exc), flush=True)
            os._exit(1)
        os._exit(0)
    return pid

def reap(pid):
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

def fork(child):
    return reap(spawn(child))

def own_session():
    with InferenceSession(PATH) as mine:
        np.testing.assert_array_equal(mine.run(None, [x])[0].shape, (1, 4))
"""


def _run(path: Path, script: str, timeout: float = 60) -> str:
    code = (
        f"import sys; sys.path[:0] = {[str(SRC), str(TESTS)]!r}\nPATH = {str(path)!r}\n"
        + PRELUDE
        + textwrap.dedent(script)
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_a_child_forked_while_a_parent_thread_holds_the_context_tree_lock_makes_sessions(
    npu, tmp_path
):
    """The RKNN context tree lock is class-wide: a parent thread closing a session (or freeing a
    tensor mem) at fork() left it held forever in the child, whose first session then hung in
    ``Context.__init__``."""
    out = _run(
        MODEL.write(tmp_path / "m.rknn"),
        """
        held, release = threading.Event(), threading.Event()
        def holder():
            with Context._tree_lock:
                held.set()
                release.wait(30)
        thread = threading.Thread(target=holder)
        thread.start()
        assert held.wait(10)
        code = fork(own_session)
        release.set()
        thread.join(10)
        print("child", code)
        """,
    )
    assert out == "child 0\n"


def test_children_forked_many_times_under_heavy_session_load_never_deadlock(
    npu, tmp_path, add_mul_path
):
    """The parent's onnxruntime session is busy from four threads (workers inside the backend,
    the callback thread delivering under the engine lock, an inline run, submitters waiting for
    space) and a fifth takes the RKNN tree lock over and over, while it forks 20 times: in each
    child every call of the inherited session refuses at once (no inherited lock is touched),
    and the child's own RKNN session and engine work."""
    out = _run(
        MODEL.write(tmp_path / "m.rknn"),
        f"""
        from fakes import make_engine
        from test_session_lifecycle import _every_call
        busy = InferenceSession({add_mul_path!r}, sess_options=None)
        a = np.ones((1, 4), np.float32)
        stop = threading.Event()
        errors = []

        def load(kind):
            node = Context(None, 0, None)  # never closed: hold/drop only take the tree lock
            try:
                while not stop.is_set():
                    if kind == "callback":
                        busy.run_async(None, {{"a": a, "b": a}}, lambda *args: None)
                    elif kind == "submit":
                        busy.submit(None, {{"a": a, "b": a}}).result(10)
                    elif kind == "run":
                        busy.run(None, {{"a": a, "b": a}})
                    else:
                        node.hold()
                        node.drop()
            except BaseException as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=load, args=(kind,))
                   for kind in ("callback", "submit", "run", "run", "tree")]
        for thread in threads:
            thread.start()

        def child():
            for name, call in [*_every_call(busy, (a, a)).items(), ("stats", busy.stats)]:
                try:
                    call()
                    raise AssertionError(name + ": an inherited session answered")
                except SessionBrokenError:
                    pass
            busy.close()  # a no-op here: the parent's
            own_session()
            mine, _ = make_engine(2)
            assert mine.run_inline([5], (0,)) == [5] and mine.submit([6], (0,)).result(5) == [6]
            assert mine.close(timeout=5) is True

        codes = [fork(child) for _ in range(20)]
        stop.set()
        for thread in threads:
            thread.join(10)
        busy.close()
        print(codes == [0] * 20, errors, busy.stats().state)
        """,
    )
    assert out == "True [] closed\n"


def test_double_fork_and_a_session_closed_by_the_parent_after_fork(npu, tmp_path):
    """A child's own session is inherited again by a grandchild (refused there, working in the
    child afterwards); a session the parent closes right after fork() is still refused in the
    child with the fork message (the child's copy is the parent's, never closed or freed)."""
    out = _run(
        MODEL.write(tmp_path / "m.rknn"),
        """
        parents = InferenceSession(PATH)
        closed, go = os.pipe()

        def grandchild(mine):
            def run():
                try:
                    mine.run(None, [x])
                    raise AssertionError("the grandchild used its parent's session")
                except SessionBrokenError as exc:
                    assert f"created in process {os.getppid()}" in str(exc), exc
                own_session()
            return run

        def child():
            assert os.read(closed, 1) == b"c"  # the parent has closed its session by now
            try:
                parents.run(None, [x])
                raise AssertionError("the child used the parent's session")
            except SessionBrokenError as exc:
                assert "create sessions after fork" in str(exc), exc
            with InferenceSession(PATH) as mine:
                assert fork(grandchild(mine)) == 0
                assert mine.run(None, [x])[0].shape == (1, 4)  # still the child's

        pid = spawn(child)
        parents.close()  # after fork() returned: no emulator call of the parent races it
        os.write(go, b"c")
        pid_code = [reap(pid)]
        print(pid_code, parents.stats().state)
        """,
    )
    assert out == "[0] closed\n"
