"""Provider options: ``make_provider_options`` and the one normaliser every dict goes through.

Pure functions, no I/O. ``make_provider_options`` validates at call time (the original only
checked ``schedule`` against ``tp_mode``); a hand-written dict is validated by the same code when
the session is created, so the two paths cannot drift apart.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Optional, TypedDict, Union, cast

__all__ = [
    "ProviderOptions",
    "Rknpu2ProviderOptions",
    "RknnProviderOptions",
    "RKNPU2_PROVIDER",
    "RKNN_PROVIDER_NAMES",
    "make_provider_options",
    "make_rknpu2_provider_options",
    "make_rknpu3_provider_options",
    "Rknpu3ProviderOptions",
    "parse_provider_options",
    "parse_bool",
    "TP_MODE_MASKS",
    "SUPPORTED_KEYS",
]

#: What ``get_providers()`` names the librknnrt backend (as the original 0.11 does).
RKNPU2_PROVIDER = "RKNPU2ExecutionProvider"
#: Names ``providers=[...]`` accepts for it (the second is the original's older name).
RKNN_PROVIDER_NAMES = (RKNPU2_PROVIDER, "RKNNExecutionProvider")

#: tp_mode strings and the core mask each stands for (SPEC.md 3.2).
TP_MODE_MASKS: dict[str, int] = {
    "auto": 0,
    "all": 0xFFFF,
    "0": 1,
    "1": 2,
    "2": 4,
    "0,1": 3,
    "0,1,2": 7,
}
_LAYOUTS = {
    "nchw": "nchw",
    "original": "nchw",
    "nchw_software": "nchw_software",
    "original_software": "nchw_software",
    "nhwc": "nhwc",
    "any": "any",
}
_ZERO_COPY_LAYOUTS = ("nhwc", "native")
_BACKENDS = ("rknn", "rknn3", "onnxruntime", "openvino")
_PRECISIONS = ("f32", "f16", "bf16")
#: Keys for which None means "not set".
_OPTIONAL = (
    "schedule",
    "tp_mode",
    "custom_op_paths",
    "backend",
    "precision",
    "runtime_library",
    "device_id",
    "weight_path",
)
_TRUE = {"1", "true", "on", "yes"}
_FALSE = {"0", "false", "off", "no"}
#: Accepted spellings of a key -> canonical key.
_ALIASES = {
    "custom_op_path": "custom_op_paths",
    "load_custom_ops_from_default_path": "custom_op_default_path",
}


@dataclass(frozen=True)
class ProviderOptions:
    """Validated, canonical provider options (what the session and backends read)."""

    layout: str = "nchw"
    zero_copy_layout: str = "nhwc"
    max_queue_size: int = 3
    threads_per_core: int = 1
    submit_timeout_ms: int = 10000
    sequential_callbacks: bool = True
    schedule: Optional[tuple[int, ...]] = None
    tp_mode: Optional[str] = None
    enable_pacing: bool = False
    disable_dup_context: bool = False
    custom_op_paths: tuple[str, ...] = ()
    custom_op_default_path: bool = False
    backend: Optional[str] = None
    precision: Optional[str] = None
    # RKNPU3 (librknn3_api), see make_rknpu3_provider_options
    runtime_library: Optional[str] = None
    device_id: Optional[tuple[str, ...]] = None
    weight_path: Optional[str] = None
    priority: int = 0
    run_timeout_ms: int = 0
    run_core_mask: Union[str, int] = "auto"

    @property
    def tp_mask(self) -> Optional[int]:
        """The core mask of ``tp_mode`` (None when tp_mode is not set)."""
        return None if self.tp_mode is None else TP_MODE_MASKS[self.tp_mode]

    def as_dict(self, *, rknpu3: bool = False) -> dict[str, Any]:
        """Plain values (lists, not tuples) for ``get_provider_options()``; unset keys left out,
        and the RKNPU3 keys unless ``rknpu3`` (they mean nothing to other backends)."""
        plain = {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(self).items()}
        return {
            key: v
            for key, v in plain.items()
            if (v is not None or key not in _OPTIONAL) and (rknpu3 or key not in _RKNPU3_KEYS)
        }


class Rknpu2ProviderOptions(TypedDict, total=False):
    """The dict ``make_provider_options`` returns, for type checkers (the original 0.11's name;
    ``backend`` and ``precision`` are ours)."""

    layout: str
    max_queue_size: int
    threads_per_core: int
    submit_timeout_ms: int
    sequential_callbacks: bool
    schedule: list[int]
    tp_mode: str
    enable_pacing: bool
    disable_dup_context: bool
    custom_op_paths: list[str]
    custom_op_default_path: bool
    zero_copy_layout: str
    backend: str
    precision: str


#: The original 0.11's other name for the same dict.
RknnProviderOptions = Rknpu2ProviderOptions


_RKNPU3_KEYS = (
    "runtime_library",
    "device_id",
    "weight_path",
    "priority",
    "run_timeout_ms",
    "run_core_mask",
)
SUPPORTED_KEYS: tuple[str, ...] = tuple(ProviderOptions.__dataclass_fields__) + tuple(_ALIASES)


def parse_bool(key: str, value: Any) -> bool:
    """bool, int (non-zero is True) or a string such as ``"yes"``/``"off"`` (SPEC.md 3.2)."""
    if isinstance(value, (bool, int)):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ValueError(f"provider option {key!r} must be a boolean, got {value!r}")


def _parse_int(key: str, value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("+-").isdigit():
            return int(text)
    raise ValueError(f"provider option {key!r} must be an integer, got {value!r}")


def _parse_positive(key: str, value: Any) -> int:
    number = _parse_int(key, value)
    if number <= 0:
        raise ValueError(f"provider option {key!r} must be > 0, got {number}")
    return number


def _parse_schedule(value: Any) -> tuple[int, ...]:
    key = "schedule"
    if isinstance(value, str):
        parts = value.replace("[", " ").replace("]", " ").replace(",", " ").split()
        items: list[Any] = parts
    elif isinstance(value, (bool, int)):
        items = [value]
    elif isinstance(value, (list, tuple, range)):
        items = list(value)
    else:
        raise ValueError(
            f"provider option {key!r} must be an integer, string, or sequence, got {value!r}"
        )
    if not items:
        raise ValueError(f"provider option {key!r} must not be empty")
    cores = tuple(_parse_int(key, item) for item in items)
    if any(core < 0 for core in cores):
        raise ValueError(f"provider option {key!r} values must be >= 0, got {list(cores)}")
    return cores


def _parse_tp_mode(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"provider option 'tp_mode' must be a string, got {value!r}")
    mode = value.strip().lower()
    if mode not in TP_MODE_MASKS:
        raise ValueError(f"invalid tp_mode: {value!r}, expected one of: {', '.join(TP_MODE_MASKS)}")
    return mode


def _parse_choice(key: str, value: Any, table: Mapping[str, str]) -> str:
    if isinstance(value, str) and value.strip().lower() in table:
        return table[value.strip().lower()]
    expected = ", ".join(repr(v) for v in dict.fromkeys(table))
    raise ValueError(f"provider option {key!r} must be one of {expected}, got {value!r}")


def _parse_paths(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, (str, bytes, os.PathLike)):
        value = [value]
    try:
        return tuple(os.fsdecode(os.fspath(item)) for item in value)
    except TypeError:
        raise ValueError(f"provider option {key!r} must be a path or a list of paths") from None


def _parse_path(key: str, value: Any) -> str:
    try:
        return os.fsdecode(os.fspath(value))
    except TypeError:
        raise ValueError(f"provider option {key!r} must be a path, got {value!r}") from None


def _parse_device_ids(value: Any) -> tuple[str, ...]:
    """One id, ids joined by ``#`` (as in the RKNN3 multicard demo), or a list of ids."""
    items = value.split("#") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise ValueError(
            f"provider option 'device_id' must be a string or a list of strings, got {value!r}"
        )
    ids = tuple(item.strip() for item in items if item.strip())
    if not ids:
        raise ValueError("provider option 'device_id' must name at least one device")
    return ids


def _parse_core_mask(value: Any) -> Union[str, int]:
    """ "auto" (groups of the model's core count), or a mask as an int or a string ("0xff")."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        mask = int(value, 0) if isinstance(value, str) else _parse_int("run_core_mask", value)
    except ValueError:
        mask = -1
    if not 0 < mask <= 0xFFFFFFFF:
        raise ValueError(
            "provider option 'run_core_mask' must be 'auto' or a non-zero 32-bit core mask "
            f"(RKNPU3 rejects AUTO = 0), got {value!r}"
        )
    return mask


def _parse_non_negative(key: str, value: Any) -> int:
    number = _parse_int(key, value)
    if not 0 <= number <= 0xFFFFFFFF:
        raise ValueError(f"provider option {key!r} must be >= 0, got {number}")
    return number


def _choices(names: tuple[str, ...]) -> dict[str, str]:
    return {name: name for name in names}


_PARSERS = {
    "layout": lambda v: _parse_choice("layout", v, _LAYOUTS),
    "zero_copy_layout": lambda v: _parse_choice(
        "zero_copy_layout", v, _choices(_ZERO_COPY_LAYOUTS)
    ),
    "max_queue_size": lambda v: _parse_positive("max_queue_size", v),
    "threads_per_core": lambda v: _parse_positive("threads_per_core", v),
    "submit_timeout_ms": lambda v: _parse_positive("submit_timeout_ms", v),
    "sequential_callbacks": lambda v: parse_bool("sequential_callbacks", v),
    "schedule": _parse_schedule,
    "tp_mode": _parse_tp_mode,
    "enable_pacing": lambda v: parse_bool("enable_pacing", v),
    "disable_dup_context": lambda v: parse_bool("disable_dup_context", v),
    "custom_op_paths": lambda v: _parse_paths("custom_op_paths", v),
    "custom_op_default_path": lambda v: parse_bool("custom_op_default_path", v),
    "backend": lambda v: _parse_choice("backend", v, _choices(_BACKENDS)),
    "precision": lambda v: _parse_choice("precision", v, _choices(_PRECISIONS)),
    "runtime_library": lambda v: _parse_path("runtime_library", v),
    "device_id": _parse_device_ids,
    "weight_path": lambda v: _parse_path("weight_path", v),
    "priority": lambda v: _parse_int("priority", v),
    "run_timeout_ms": lambda v: _parse_non_negative("run_timeout_ms", v),
    "run_core_mask": _parse_core_mask,
}


def parse_provider_options(options: Any = None) -> ProviderOptions:
    """Normalise ``provider_options`` as a session receives it into a ``ProviderOptions``.

    Accepts None, a dict, or a sequence whose first element is a dict (onnxruntime passes one
    dict per provider). Raises ValueError naming the offending key.
    """
    if options is None:
        return ProviderOptions()
    if isinstance(options, ProviderOptions):
        return options
    if isinstance(options, (list, tuple)):
        if not options:
            return ProviderOptions()
        options = options[0]
    if not isinstance(options, Mapping):
        raise TypeError(
            "provider_options must be a dict or a sequence whose first element is a dict, "
            f"got {type(options).__name__}"
        )
    values: dict[str, Any] = {}
    for raw_key, raw_value in options.items():
        key = _ALIASES.get(raw_key, raw_key)
        if key not in _PARSERS:
            raise ValueError(
                f"Unknown provider_options key: {raw_key!r}. Supported keys: "
                + ", ".join(SUPPORTED_KEYS)
            )
        if raw_value is None and key in _OPTIONAL:
            continue
        value = _PARSERS[key](raw_value)
        if key == "custom_op_paths":
            value = values.get(key, ()) + value  # both spellings append, as in the original
        values[key] = value
    if values.get("schedule") is not None and values.get("tp_mode") is not None:
        raise ValueError("provider options 'tp_mode' conflicts with 'schedule'; set only one.")
    return ProviderOptions(**values)


def make_provider_options(
    *,
    layout: str = "original",
    max_queue_size: int = 3,
    threads_per_core: int = 1,
    submit_timeout_ms: int = 10000,
    sequential_callbacks: bool = True,
    schedule: Any = None,
    tp_mode: Optional[str] = None,
    enable_pacing: bool = False,
    disable_dup_context: bool = False,
    custom_op_paths: Any = None,
    custom_op_default_path: bool = False,
    zero_copy_layout: str = "nhwc",
    backend: Optional[str] = None,
    precision: Optional[str] = None,
    **unknown: Any,
) -> Rknpu2ProviderOptions:
    """Build the ``provider_options`` dict for ``InferenceSession``, validating every value now.

    Unknown keywords and bad values raise ValueError naming the key. Keys whose value is None
    (``schedule``, ``tp_mode``, ``custom_op_paths``, ``backend``, ``precision``) are left out, as in
    the original, so the dict stays minimal and readable.
    """
    if unknown:
        raise ValueError(
            f"Unknown provider_options key: {sorted(unknown)[0]!r}. Supported keys: "
            + ", ".join(k for k in SUPPORTED_KEYS if k not in _ALIASES and k not in _RKNPU3_KEYS)
        )
    raw: dict[str, Any] = {
        "layout": layout,
        "max_queue_size": max_queue_size,
        "threads_per_core": threads_per_core,
        "submit_timeout_ms": submit_timeout_ms,
        "sequential_callbacks": sequential_callbacks,
        "schedule": schedule,
        "tp_mode": tp_mode,
        "enable_pacing": enable_pacing,
        "disable_dup_context": disable_dup_context,
        "custom_op_paths": custom_op_paths,
        "custom_op_default_path": custom_op_default_path,
        "zero_copy_layout": zero_copy_layout,
        "backend": backend,
        "precision": precision,
    }
    raw = {key: value for key, value in raw.items() if value is not None or key not in _OPTIONAL}
    parsed = parse_provider_options(raw)
    result = {key: getattr(parsed, key) for key in raw}
    if "schedule" in result:
        result["schedule"] = list(result["schedule"])
    if "custom_op_paths" in result:
        result["custom_op_paths"] = list(result["custom_op_paths"])
    return cast(Rknpu2ProviderOptions, result)


#: The original 0.11's name for ``make_provider_options`` (RKNPU2 is librknnrt's NPU family).
make_rknpu2_provider_options = make_provider_options


def provider_options_of(
    providers: Sequence[str], options: ProviderOptions, *, rknpu3: bool = False
) -> dict[str, Any]:
    """onnxruntime's ``get_provider_options()`` shape: ``{provider: {option: value}}``; the
    engine's options belong to the provider that runs (the first)."""
    plain = options.as_dict(rknpu3=rknpu3)
    return {name: plain if i == 0 else {} for i, name in enumerate(providers)}


class Rknpu3ProviderOptions(TypedDict, total=False):
    """The RKNPU3 keys of ``provider_options`` (``make_rknpu3_provider_options``)."""

    runtime_library: str
    device_id: Union[str, list[str]]
    weight_path: str
    priority: int
    run_timeout_ms: int
    run_core_mask: Union[str, int]


def make_rknpu3_provider_options(
    *,
    runtime_library: Optional[str] = None,
    device_id: Union[str, Sequence[str], None] = None,
    weight_path: Optional[str] = None,
    priority: int = 0,
    run_timeout_ms: int = 0,
    run_core_mask: Union[str, int] = "auto",
) -> Rknpu3ProviderOptions:
    """Provider options for RKNPU3 models (librknn3_api), validated now; None values are left
    out. Merge with ``make_provider_options(...)`` for the engine's keys.

    ``runtime_library``: librknn3_api path (else ``EZ_RKNN3_RUNTIME_LIB``, else the system's).
    ``device_id``: one device id, a list, or ids joined by ``#``; None: every device found.
    ``weight_path``: the ``.weight`` file (default: the model path's, same basename; required
    for a model given as bytes). ``run_timeout_ms``: 0 = none; a run past it raises
    ``RunTimeoutError``. ``run_core_mask``: "auto" (every group of the model's exported core
    count on each device) or a mask with exactly that many bits.
    """
    raw = {
        "runtime_library": runtime_library,
        "device_id": device_id,
        "weight_path": weight_path,
        "priority": priority,
        "run_timeout_ms": run_timeout_ms,
        "run_core_mask": run_core_mask,
    }
    raw = {key: value for key, value in raw.items() if value is not None}
    parsed = parse_provider_options(raw)
    result: dict[str, Any] = {key: getattr(parsed, key) for key in raw}
    if "device_id" in result:
        result["device_id"] = list(result["device_id"])
    return Rknpu3ProviderOptions(**result)  # type: ignore[typeddict-item]
