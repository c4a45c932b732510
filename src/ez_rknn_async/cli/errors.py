"""Exit codes and the one table that turns known errors into a line plus a hint.

    Exception
     +-- CliError                   raised by the CLI itself
          +-- UsageError            a bad argument value (shape spec, input name, mode list)
          +-- MissingDependencyError an optional package is not installed; carries the pip command
          +-- RejectedInputError    the library refused the user's model, options or inputs

Known errors (the table below, most specific first) print ``error: ...`` and ``hint: ...`` on stderr
and exit with their code; ``EZ_RKNN_DEBUG=1`` adds the traceback. The table holds only typed errors
(the CLI's, the library's ``errors`` module, and the OS's file / import errors): a builtin
``ValueError`` or ``TypeError`` counts as the user's only where ``user_input()`` wraps the hand-over
of their model, options and feed; anywhere else it is a bug and keeps its traceback, as in the
``hf`` CLI.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Callable, Optional, Union

from ..backends.rknn.kernel import NpuFileError
from ..errors import (
    InferenceError,
    RKNNError,
    SessionBrokenError,
    SessionClosedError,
    SubmitTimeoutError,
)

__all__ = [
    "ExitCode",
    "CliError",
    "UsageError",
    "MissingDependencyError",
    "RejectedInputError",
    "user_input",
    "MODEL_HINT",
    "FEED_HINT",
    "KnownError",
    "explain",
    "EXIT_CODE_HELP",
]


class ExitCode(enum.IntEnum):
    """What scripts may rely on; ``ez-rknn --help`` prints this table."""

    OK = 0
    ERROR = 1  #: the model failed to load or run, or its inputs did not fit
    USAGE = 2  #: bad command line: unknown mode, bad --shape/--input spec (argparse uses 2 too)
    NOT_FOUND = 3  #: the model or an input file does not exist
    PROBLEMS = 4  #: ``ez-rknn doctor`` found problems
    MISSING_DEPENDENCY = 5  #: an optional package is needed; the pip command is printed
    MISMATCH = 6  #: ``ez-rknn compare``: an output's cosine similarity is below --min-cosine
    NO_NPU = 7  #: ``ez-rknn top``: the NPU's load cannot be read (not a board, not root)
    INTERRUPTED = 130  #: Ctrl-C, as shells report SIGINT


EXIT_CODE_HELP = "\n".join(
    f"  {code.value:>3}  {text}"
    for code, text in (
        (ExitCode.OK, "success"),
        (ExitCode.ERROR, "the model failed to load or run, or the inputs did not fit it"),
        (ExitCode.USAGE, "bad command line (unknown mode, bad --shape / --input spec)"),
        (ExitCode.NOT_FOUND, "the model or an input file does not exist"),
        (ExitCode.PROBLEMS, "doctor found problems (each printed with its fix)"),
        (ExitCode.MISSING_DEPENDENCY, "an optional package is missing (pip command printed)"),
        (ExitCode.MISMATCH, "compare: an output is below --min-cosine (or not comparable)"),
        (ExitCode.NO_NPU, "top: no NPU load to read (not a board, not root, rocket driver)"),
        (ExitCode.INTERRUPTED, "interrupted (Ctrl-C)"),
    )
)


class CliError(Exception):
    """An error the CLI raises itself, with the hint to print under it."""

    hint: str = ""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        if hint:
            self.hint = hint


class UsageError(CliError, ValueError):
    """A command-line value that cannot work (caught before any model runs)."""


class MissingDependencyError(CliError, ImportError):
    """An optional package is missing; ``hint`` is the exact pip command."""

    def __init__(self, what: str, pip: str) -> None:
        super().__init__(f"{what} is not installed", hint=f"install it with: {pip}")


class RejectedInputError(CliError):
    """The library refused what the user handed it (its ValueError / TypeError, chained)."""


#: What to check, by what was handed over (``user_input``'s argument).
MODEL_HINT = "check MODEL (.onnx/.rknn) and --schedule/--backend against `ez-rknn doctor`"
FEED_HINT = "compare --input / --shape with `ez-rknn info MODEL`"


@contextlib.contextmanager
def user_input(hint: str = FEED_HINT) -> Iterator[None]:
    """Wrap the call that hands the user's model, options or feed to the library: a ValueError
    or TypeError raised there is the user's, and becomes a ``RejectedInputError`` with ``hint``
    (``MODEL_HINT`` around loading, ``FEED_HINT`` around a run)."""
    try:
        yield
    except CliError:
        raise
    except (ValueError, TypeError) as exc:
        raise RejectedInputError(str(exc), hint=hint) from exc


@dataclass(frozen=True)
class KnownError:
    """One row of the table: what to match, the exit code, and the hint (from the error)."""

    kind: Union[type[BaseException], tuple[type[BaseException], ...]]
    code: ExitCode
    hint: Callable[[BaseException], str]


def _own_hint(default: str) -> Callable[[BaseException], str]:
    return lambda exc: getattr(exc, "hint", "") or default


#: Most specific first: the first row whose ``kind`` matches wins.
_TABLE: tuple[KnownError, ...] = (
    KnownError(UsageError, ExitCode.USAGE, _own_hint("see `ez-rknn bench --help`")),
    KnownError(MissingDependencyError, ExitCode.MISSING_DEPENDENCY, _own_hint("")),
    KnownError(RejectedInputError, ExitCode.ERROR, _own_hint("")),
    KnownError(NpuFileError, ExitCode.NO_NPU, _own_hint("run `ez-rknn doctor`")),
    KnownError(
        FileNotFoundError,
        ExitCode.NOT_FOUND,
        _own_hint("check the path; relative paths start from the current directory"),
    ),
    KnownError(OSError, ExitCode.ERROR, _own_hint("")),
    KnownError(
        ImportError,
        ExitCode.MISSING_DEPENDENCY,
        _own_hint("install the extra named above, e.g. pip install 'ez-rknn-async[onnxruntime]'"),
    ),
    KnownError(RKNNError, ExitCode.ERROR, _own_hint("run `ez-rknn doctor` to check the runtime")),
    KnownError(
        SubmitTimeoutError,
        ExitCode.ERROR,
        _own_hint("the workers did not keep up; lower --depth or raise the timeout"),
    ),
    KnownError(
        InferenceError,
        ExitCode.ERROR,
        _own_hint("the runtime failed on this model; EZ_RKNN_DEBUG=1 shows its error"),
    ),
    KnownError(
        SessionBrokenError,
        ExitCode.ERROR,
        _own_hint("an inference or callback never returned; the session was abandoned"),
    ),
    KnownError(SessionClosedError, ExitCode.ERROR, _own_hint("")),
)


def explain(exc: BaseException) -> Optional[tuple[ExitCode, str, str]]:
    """(exit code, message, hint) for a known error, None for an unknown one."""
    for row in _TABLE:
        if isinstance(exc, row.kind):
            message = str(exc) or type(exc).__name__
            return row.code, message, row.hint(exc)
    return None
