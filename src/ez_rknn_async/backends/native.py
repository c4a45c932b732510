"""What the ctypes backends (librknnrt, librknn3_api) share: ABI tables and library loading.

Struct layouts are tables of ``(field, C type)`` turned into ctypes classes by ``build_structs``;
functions are ``Signature`` records bound in one loop by ``NativeLibrary``, where a symbol the
loaded library lacks becomes a stub that raises when *called*; ``LibraryFinder`` tries an
environment variable, then the usual system places, and loads each path once. Nothing is loaded
at import time.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

__all__ = [
    "SCALARS",
    "StructTable",
    "build_structs",
    "Signature",
    "NativeLibrary",
    "LibraryFinder",
]

SCALARS: dict[str, Any] = {
    "u8": ctypes.c_uint8,
    "i8": ctypes.c_int8,
    "u32": ctypes.c_uint32,
    "i32": ctypes.c_int32,
    "u64": ctypes.c_uint64,
    "i64": ctypes.c_int64,
    "f32": ctypes.c_float,
    "enum": ctypes.c_int,  # every enum of both runtimes is a 4-byte int
    "char": ctypes.c_char,
}

#: struct -> ((field, C type), ...): "ptr" any pointer, "context" the runtime's context handle,
#: "T[n]" an array, and the name of an earlier struct of the same table for a nested struct.
StructTable = Mapping[str, Sequence[tuple[str, str]]]


def build_structs(
    table: StructTable, pointer: type, context: type
) -> dict[str, type[ctypes.Structure]]:
    """ctypes classes for ``table`` (in order, so a struct may nest an earlier one)."""
    classes: dict[str, type[ctypes.Structure]] = {}

    def ctype(spec: str) -> Any:
        base, _, count = spec.partition("[")
        known = {"ptr": pointer, "context": context, **classes}
        scalar: Any = known.get(base) or SCALARS[base]
        return scalar * int(count[:-1]) if count else scalar

    for name, fields in table.items():
        classes[name] = type(
            name, (ctypes.Structure,), {"_fields_": [(f, ctype(spec)) for f, spec in fields]}
        )
    return classes


@dataclass(frozen=True)
class Signature:
    """One C function: argument and result ctypes, and where it is known to be missing."""

    name: str
    argtypes: tuple[Any, ...]
    restype: Any = ctypes.c_int
    missing_on: str = ""


class NativeLibrary:
    """A loaded shared library: each function of ``signatures`` is an attribute, or a stub that
    raises ``missing_error`` (the runtime's own error type) when called."""

    def __init__(self, path: str, signatures: Sequence[Signature]) -> None:
        self.path = path
        self.cdll = ctypes.CDLL(path)
        missing = set()
        for signature in signatures:
            try:
                function = getattr(self.cdll, signature.name)
            except AttributeError:
                missing.add(signature.name)
                setattr(self, signature.name, self.missing_stub(signature))
                continue
            function.argtypes = signature.argtypes
            function.restype = signature.restype
            setattr(self, signature.name, function)
        self.missing = frozenset(missing)

    def missing_stub(self, signature: Signature) -> Callable[..., Any]:
        """A stand-in for a function the library lacks: raises ``missing_error`` when called."""

        def missing(*_args: Any) -> Any:
            raise self.missing_error(signature)

        missing.__name__ = signature.name
        return missing

    def missing_error(self, signature: Signature) -> Exception:
        """The runtime's own error for calling a function the library lacks."""
        raise NotImplementedError

    def has(self, name: str) -> bool:
        return name not in self.missing

    def __getattr__(self, name: str) -> Any:  # only reached for names not bound above
        raise AttributeError(f"{os.path.basename(self.path)} binding has no function {name!r}")


@dataclass
class LibraryFinder:
    """Finds and loads a runtime library: ``env_var`` (alone, if set), else ``system`` paths;
    each path is loaded once per process."""

    env_var: str
    system: tuple[str, ...]
    _cache: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def candidates(self, environ: Optional[Mapping[str, str]] = None) -> list[str]:
        environ = os.environ if environ is None else environ
        chosen = environ.get(self.env_var, "").strip()
        return [chosen] if chosen else list(self.system)

    def load(
        self, factory: Callable[[str], Any], environ: Optional[Mapping[str, str]] = None
    ) -> tuple[Optional[Any], str]:
        """``(library, "")`` for the first candidate ``factory`` loads, else ``(None, why)``:
        what was tried and the env var's value, for the caller's not-found error."""
        environ = os.environ if environ is None else environ
        errors = []
        with self._lock:
            for path in self.candidates(environ):
                if path in self._cache:
                    return self._cache[path], ""
                if os.sep in path and not os.path.exists(path):
                    errors.append(f"{path}: no such file")
                    continue
                try:
                    library = self._cache[path] = factory(path)
                except OSError as exc:
                    errors.append(f"{path}: {exc}")
                    continue
                return library, ""
        where = f"{self.env_var} is not set"
        if environ.get(self.env_var, "").strip():
            where = f"{self.env_var}={environ[self.env_var]!r}"
        return None, f"{where}; tried: {'; '.join(errors)}"
