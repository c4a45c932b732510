"""The RKNN context tree: who depends on which ``rknn_context``, and the order they are destroyed.

A dup or a weight sharer must go before the context it came from, and a tensor mem before the
context that made it. Each ``Context`` counts what hangs under it and is destroyed only once it
is closed and that count is zero, so closing in any order destroys in the runtime's order.
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Optional

from .library import Library

__all__ = ["Context"]


class Context:
    """One rknn_context and what depends on it: its dups and weight sharers, and the tensor mems
    made on it (``hold``/``drop``).

    ``lock`` makes "one thread per context" a guarantee of the backend, not only of the engine.
    ``close`` destroys the context once nothing depends on it, then retries its parent. ``family``
    is the context of the ``rknn_init`` it comes from (itself unless it is a dup): a tensor mem
    may be bound on every context of its family.
    """

    # Reentrant locks: a tensor mem whose value the garbage collector frees while this thread
    # holds one (any allocation may start a collection) destroys the mem and drops its context.
    _tree_lock = threading.RLock()

    def __init__(
        self, lib: Library, handle: int, parent: Optional[Context], *, dup: bool = False
    ) -> None:
        self.lib = lib
        self.handle = handle
        self.parent = parent
        self.family: Context = parent.family if dup and parent is not None else self
        self.lock = threading.RLock()
        self.children = 0
        self.closed = False
        self.destroyed = False
        if parent is not None:
            parent.hold()

    def hold(self) -> None:
        """One more thing that must be gone before this context is destroyed."""
        with Context._tree_lock:
            self.children += 1

    def drop(self) -> None:
        """Undo one ``hold``: destroys the context if it was closed and this was the last."""
        with Context._tree_lock:
            self.children -= 1
            self._destroy_unused()

    def close(self) -> None:
        with Context._tree_lock:
            if self.closed:
                return
            self.closed = True
            self._destroy_unused()

    def _destroy_unused(self) -> None:
        """Destroy this context and then its ancestors while each is closed and unused."""
        node: Optional[Context] = self
        while node is not None and node.closed and not node.children and not node.destroyed:
            with node.lock:
                code = node.lib.rknn_destroy(node.handle)
            node.destroyed = True
            if code:
                warnings.warn(f"rknn_destroy failed with code {code}", RuntimeWarning, stacklevel=3)
            if node.parent is not None:
                node.parent.children -= 1
            node = node.parent


def _new_tree_lock_in_child() -> None:
    """A forked child: a parent thread may have held the class-wide tree lock at fork() (closing
    a session, freeing a tensor mem) and never releases it here. The child's own contexts get a
    lock nobody holds; the inherited ones are the parent's and are never touched (lifecycle.py)."""
    Context._tree_lock = threading.RLock()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork()
    os.register_at_fork(after_in_child=_new_tree_lock_in_child)
