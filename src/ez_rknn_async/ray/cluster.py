"""The running Ray cluster a fleet is deployed on: connecting to it, and its boards.

A board is a node that advertises the custom resource ``rknpu`` (``ray start --address HEAD:6379
--resources='{"rknpu": 1}'``, the line ``ez-rknn doctor`` prints on a board). Connecting fails
with a ``FleetError`` naming the address rather than waiting: ``ray.init`` given an address where
nothing listens retries for minutes, so the port is tried first with a short timeout.
"""

from __future__ import annotations

import logging
import socket

import ray

__all__ = ["RESOURCE", "FleetError", "connect", "board_nodes"]

#: The custom resource each board advertises, one unit per board.
RESOURCE = "rknpu"
#: How long a connection to the head's port may take before "no cluster there".
CONNECT_TIMEOUT_S = 5.0
_START_HINT = (
    "start the head with `ray start --head`, and each board with "
    "`ray start --address HEAD:6379 --resources='{\"rknpu\": 1}'`"
)


class FleetError(RuntimeError):
    """The cluster cannot take (or does not have) the deployment; ``hint`` says what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def _probe_port(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise FleetError(
            f"--ray {address!r}: expected HOST:PORT of the cluster's head (or auto)",
            hint="the head prints its address when `ray start --head` starts it (port 6379)",
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise FleetError(
            f"no Ray cluster at {address}: {exc.strerror or exc}", hint=_START_HINT
        ) from None


def connect(address: str) -> None:
    """Join the cluster at ``address`` (``HOST:PORT`` or ``auto``) as a driver; a no-op when this
    process is connected already."""
    if ray.is_initialized():
        return
    if address != "auto":
        _probe_port(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except ConnectionError as exc:
        raise FleetError(f"no Ray cluster at {address}: {exc}", hint=_START_HINT) from None


def board_nodes() -> list[str]:
    """The node ids of the live boards (nodes with at least one ``rknpu``)."""
    return [
        node["NodeID"]
        for node in ray.nodes()
        if node.get("Alive") and node.get("Resources", {}).get(RESOURCE, 0) >= 1
    ]
