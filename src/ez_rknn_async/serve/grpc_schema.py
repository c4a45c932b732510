"""The protocol's gRPC messages, built at import from ``_v2_descriptor`` in a private pool.

A private ``DescriptorPool`` (not protobuf's default one) lets this module live in the same
process as tritonclient, whose generated code registers messages of the same ``inference``
package. ``protogen`` explains why there are no ``_pb2`` modules.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from ._v2_descriptor import SERIALIZED

__all__ = ["SERVICE", "METHODS", "message"]

#: The full service name clients call.
SERVICE = "inference.GRPCInferenceService"

_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(descriptor_pb2.FileDescriptorProto.FromString(SERIALIZED))
_SERVICE = _POOL.FindServiceByName(SERVICE)

#: rpc name -> (request class, response class), for every rpc of the service.
METHODS: dict[str, tuple[Any, Any]] = {
    method.name: (
        message_factory.GetMessageClass(method.input_type),
        message_factory.GetMessageClass(method.output_type),
    )
    for method in _SERVICE.methods
}


def message(name: str) -> Any:
    """The class of message ``inference.<name>`` (nested ones as ``Outer.Inner``)."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"inference.{name}"))
