"""fork() under load, audited (issue 9 §1): a child never deadlocks on a lock a parent thread
held at fork(), its own sessions work, inherited ones refuse at once, and it exits normally.

Each scenario runs in a real subprocess whose children are bounded by ``faulthandler`` (a hung
child dumps its threads and exits 1), so a deadlock fails the test instead of hanging it."""

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
import faulthandler, os, sys, threading
import numpy as np
from ez_rknn_async import InferenceSession, SessionBrokenError, SessionClosedError
from ez_rknn_async.backends.rknn.context import Context
x = np.arange(4, dtype=np.float32).reshape(1, 4)

def fork(child):
    '''Run child() in a forked child bounded to 10 s; its exit code.'''
    pid = os.fork()
    if pid == 0:
        faulthandler.dump_traceback_later(10, exit=True)
        try:
            child()
        except BaseException as exc:
            print("child failed:", repr(exc), flush=True)
            os._exit(1)
        os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

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
