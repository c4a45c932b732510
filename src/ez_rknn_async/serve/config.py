"""What ``ez-rknn serve`` serves: model specs from the command line and the ``--config`` file.

The config file is JSON::

    {"models": {
        "detector": {"path": "yolov8n.rknn", "schedule": [0, 1, 2], "max_queue_size": 6,
                     "submit_timeout_ms": 2000, "max_inflight": 48},
        "embedder": {"path": "embed.onnx", "backend": "onnxruntime",
                     "warmup_shapes": {"tokens": [1, 128]}}
    }}

Per model: ``path`` (relative to the config file), any ``make_provider_options`` key (validated
there), and the server's own keys ``max_inflight`` (requests admitted at once; more wait up to
``submit_timeout_ms``, then 503), ``max_request_bytes`` and ``warmup_shapes`` (the shapes of the
warm-up inference, for inputs whose dims are dynamic). A ``NAME=MODEL`` on the command line
serves MODEL as NAME with the options of the config's entry of that name, if any.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from ..options import make_provider_options

__all__ = [
    "ConfigError",
    "ModelSpec",
    "DEFAULT_MAX_INFLIGHT",
    "DEFAULT_MAX_REQUEST_BYTES",
    "parse_model_arg",
    "model_specs",
]

DEFAULT_MAX_INFLIGHT = 64
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
_SERVER_KEYS = ("path", "max_inflight", "max_request_bytes", "warmup_shapes")


class ConfigError(ValueError):
    """A model spec or config file that cannot work; the message names the model and key."""


@dataclass(frozen=True)
class ModelSpec:
    """One model to serve. ``provider_options`` came out of ``make_provider_options``."""

    name: str
    path: str
    provider_options: Mapping[str, Any] = field(default_factory=dict)
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    warmup_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)


def parse_model_arg(text: str) -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` (the name is the file's stem) -> (name, path)."""
    name, sep, path = text.partition("=")
    if not sep:
        path = text
        name = os.path.splitext(os.path.basename(text))[0]
    if not name or not path:
        raise ConfigError(f"model {text!r}: expected [NAME=]MODEL, e.g. detector=yolov8n.rknn")
    if "/" in name:
        raise ConfigError(f"model name {name!r}: a name cannot contain '/'")
    return name, path


def _positive_int(model: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"model {model!r}: {key} must be an integer > 0, got {value!r}")
    return value


def _warmup_shapes(model: str, value: Any) -> dict[str, tuple[int, ...]]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"model {model!r}: warmup_shapes must be an object input -> dims")
    shapes = {}
    for name, dims in value.items():
        if not isinstance(dims, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims
        ):
            raise ConfigError(
                f"model {model!r}: warmup_shapes[{name!r}] must be a list of dims > 0, got {dims!r}"
            )
        shapes[name] = tuple(dims)
    return shapes


def _spec(name: str, path: str, entry: Mapping[str, Any], defaults: ModelSpec) -> ModelSpec:
    options = {key: value for key, value in entry.items() if key not in _SERVER_KEYS}
    try:
        provider_options = make_provider_options(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {name!r}: {exc}") from None
    return ModelSpec(
        name=name,
        path=path,
        provider_options=provider_options,
        max_inflight=_positive_int(
            name, "max_inflight", entry.get("max_inflight", defaults.max_inflight)
        ),
        max_request_bytes=_positive_int(
            name, "max_request_bytes", entry.get("max_request_bytes", defaults.max_request_bytes)
        ),
        warmup_shapes=_warmup_shapes(name, entry.get("warmup_shapes", {})),
    )


def _read_config(path: str) -> dict[str, Mapping[str, Any]]:
    try:
        with open(path, encoding="utf-8") as file:
            document = json.load(file)
    except FileNotFoundError:
        raise  # the CLI reports it as a missing file (exit 3)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"config {path}: {exc}") from None
    models = document.get("models", {}) if isinstance(document, Mapping) else None
    if not isinstance(models, Mapping) or not all(
        isinstance(entry, Mapping) for entry in models.values()
    ):
        raise ConfigError(f'config {path}: expected {{"models": {{NAME: {{...}}, ...}}}}')
    unknown = set(document) - {"models"}
    if unknown:
        raise ConfigError(f"config {path}: unknown key(s) {sorted(unknown)}; expected 'models'")
    return dict(models)


def model_specs(
    args: Sequence[str],
    config_path: Optional[str] = None,
    *,
    max_inflight: int = DEFAULT_MAX_INFLIGHT,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> list[ModelSpec]:
    """Every model to serve, from ``[NAME=]MODEL`` arguments and the config file (whose
    relative paths start from its folder). ``max_inflight``/``max_request_bytes`` are the
    defaults of models that do not set their own."""
    defaults = ModelSpec("", "", max_inflight=max_inflight, max_request_bytes=max_request_bytes)
    entries = _read_config(config_path) if config_path else {}
    base = os.path.dirname(os.path.abspath(config_path)) if config_path else ""
    paths: dict[str, str] = {}
    for name, entry in entries.items():
        if "path" in entry:
            paths[name] = os.path.join(base, str(entry["path"]))
    given: set[str] = set()
    for text in args:
        name, path = parse_model_arg(text)
        if name in given:
            raise ConfigError(f"model name {name!r} is given twice")
        given.add(name)
        paths[name] = path
    missing = sorted(set(entries) - set(paths))
    if missing:
        raise ConfigError(f"config: model(s) {missing} have no 'path' and no MODEL argument")
    if not paths:
        raise ConfigError("no model to serve: give [NAME=]MODEL arguments or a --config")
    return [_spec(name, path, entries.get(name, {}), defaults) for name, path in paths.items()]
