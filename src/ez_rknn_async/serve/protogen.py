"""Regenerates ``_v2_descriptor.py`` from ``grpc_predict_v2.proto`` (developers only).

    python -m ez_rknn_async.serve.protogen

Why a serialized descriptor and not protoc's ``_pb2`` modules: generated ``_pb2`` code checks the
protobuf runtime against the protoc that made it and registers its messages in protobuf's
default pool, so it would pin the protobuf version of every user and clash with tritonclient's
own ``inference.*`` messages in the same process. The serialized ``FileDescriptorProto`` is
plain data that any protobuf >= 4.22 loads into a private pool (``grpc_schema``). Needs
grpcio-tools (the test extra has it), which bundles protoc.
"""

from __future__ import annotations

import base64
import os
import sys
import tempfile
from pathlib import Path

__all__ = ["PROTO", "TARGET", "compile_descriptor", "write_module"]

HERE = Path(__file__).resolve().parent
PROTO = HERE / "grpc_predict_v2.proto"
TARGET = HERE / "_v2_descriptor.py"
_HEADER = '''"""The serialized FileDescriptorProto of grpc_predict_v2.proto: generated, do not edit.

Regenerate with ``python -m ez_rknn_async.serve.protogen`` after changing the .proto.
"""

import base64

SERIALIZED = base64.b64decode(
'''


def compile_descriptor(proto: Path = PROTO) -> bytes:
    """The .proto compiled by grpcio-tools' protoc, as deterministic FileDescriptorProto bytes."""
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "set.pb")
        status = protoc.main(
            ["protoc", f"-I{proto.parent}", f"--descriptor_set_out={out}", proto.name]
        )
        if status != 0:
            raise RuntimeError(f"protoc failed on {proto} (exit {status})")
        files = descriptor_pb2.FileDescriptorSet.FromString(Path(out).read_bytes())
    return files.file[0].SerializeToString(deterministic=True)


def write_module(data: bytes, target: Path = TARGET) -> None:
    text = base64.b64encode(data).decode()
    lines = [f'    "{text[i : i + 88]}"\n' for i in range(0, len(text), 88)]
    target.write_text(_HEADER + "".join(lines) + ")\n", encoding="utf-8")


if __name__ == "__main__":
    write_module(compile_descriptor())
    print(f"wrote {TARGET}", file=sys.stderr)
