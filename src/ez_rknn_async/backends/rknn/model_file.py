"""What an ``.rknn`` file says about itself without loading it: the toolkit version that built it
and its target platforms, for ``ez-rknn doctor MODEL`` (the third corner of the version triangle).

rknn-toolkit2 writes ``b"RKNN"``, 4 zero bytes, the file-format version (u64, little endian), the
length of the model data (u64), padding up to a 64-byte header (24 bytes on some versions), the
data, then a JSON document's length (u64) and the JSON, whose ``"version"`` is the toolkit's (e.g.
``"1.6.2-source_code"``) and ``"target_platform"`` the SoCs (``["rk3588"]``). Files that do not end
that way (encrypted models, the test emulator's models) simply tell nothing.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Optional

__all__ = ["RknnFileInfo", "parse_model_file", "read_model_file"]

_MAGIC = b"RKNN"
_HEADER_SIZES = (64, 24)
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class RknnFileInfo:
    """The model file's own statement: format version, toolkit version, target platforms."""

    format_version: int
    toolkit_version: Optional[str]
    target_platforms: tuple[str, ...]


def parse_model_file(data: bytes) -> Optional[RknnFileInfo]:
    """The info in ``data`` (a whole ``.rknn`` file), or None when it does not tell."""
    if not data.startswith(_MAGIC) or len(data) < 24:
        return None
    (format_version,) = _U64.unpack_from(data, 8)
    (length,) = _U64.unpack_from(data, 16)
    for header in _HEADER_SIZES:
        end = header + length
        if end + _U64.size > len(data):
            continue
        (json_length,) = _U64.unpack_from(data, end)
        if end + _U64.size + json_length != len(data):
            continue
        try:
            document = json.loads(data[end + _U64.size :].decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            continue
        if not isinstance(document, dict):
            continue
        version = document.get("version")
        platforms = document.get("target_platform") or []
        return RknnFileInfo(
            format_version=int(format_version),
            toolkit_version=str(version) if version else None,
            target_platforms=tuple(str(p).lower() for p in platforms if isinstance(p, str)),
        )
    return None


def read_model_file(path: str) -> Optional[RknnFileInfo]:
    """``parse_model_file`` of the file at ``path`` (OSError if it cannot be read)."""
    with open(path, "rb") as file:
        return parse_model_file(file.read())
