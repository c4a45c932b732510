"""Native call sequences that a Ctrl-C cannot cut in half.

Why: CPython raises KeyboardInterrupt on the main thread between bytecodes, for instance right
after ``rknn_outputs_get`` returns and before ``rknn_outputs_release`` is called; the context then
holds outputs nobody releases and every later run on it fails. Python looks at pending signals
only while it runs bytecode, so a sequence of ctypes calls driven by C-level iteration alone
(``map`` over ``functools.partial`` objects, ``filter`` and ``next``: no Python frame between the
calls) runs to its end or to its first failing call, and a pending KeyboardInterrupt is raised
right after the whole sequence. Masking SIGINT with ``pthread_sigmask`` would not do: the kernel
then hands the signal to another thread, whose handler still flags the main thread; and it costs
two system calls per run. The steps must be ctypes functions (argument conversion in C). (A
garbage collection started by an allocation inside the sequence may run a Python ``__del__``,
where a pending Ctrl-C would be reported as ignored rather than raised; the calls still complete.)
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from functools import partial
from itertools import count
from typing import Any, Callable

from .library import check

__all__ = ["NativeSequence"]

#: Calls its argument; ``operator.call`` from Python 3.11, the same in C before.
_call: Callable[[Callable[[], int]], int] = getattr(
    operator, "call", operator.methodcaller("__call__")
)
_code = operator.itemgetter(1)


class NativeSequence:
    """Calls that run back to back, stopping at the first non-zero return code.

    ``steps`` are ``(api name, ctypes function, arguments)``; the arguments are bound once, so
    mutable ones (ctypes arrays) are filled in before each ``run``.
    """

    __slots__ = ("_names", "_calls")

    def __init__(self, steps: Sequence[tuple[str, Callable[..., int], tuple[Any, ...]]]) -> None:
        self._names = [name for name, _, _ in steps]
        self._calls = [partial(function, *args) for _, function, args in steps]

    def run(self) -> None:
        """Every step, or up to the first that fails; RKNNError naming that one."""
        failed = next(filter(_code, zip(count(), map(_call, self._calls))), None)
        if failed is not None:
            check(self._names[failed[0]], failed[1])
