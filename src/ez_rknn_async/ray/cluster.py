"""The running Ray cluster a fleet is deployed on: connecting to it, and its boards.

A board is a node that advertises the custom resource ``rknpu`` (``ray start --address HEAD:6379
--resources='{"rknpu": 1}'``, the line ``ez-rknn doctor`` prints on a board). Connecting fails
with a ``FleetError`` naming the address rather than waiting: ``ray.init`` given an address where
nothing listens retries for minutes, and so does one given a port where something else
listens (the dashboard's 8265, Serve's 8000): so the port is tried first, with a short timeout,
and must answer the way a gRPC server does (the head's GCS), with an HTTP/2 SETTINGS frame.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Optional

import ray

from . import BOARD_START, RESOURCE

__all__ = ["RESOURCE", "FleetError", "connect", "board_nodes"]

#: How long a connection to the head's port may take before "no cluster there".
CONNECT_TIMEOUT_S = 5.0
_START_HINT = f"start the head with `ray start --head`, and each board with `{BOARD_START}`"


class FleetError(RuntimeError):
    """The cluster cannot take (or does not have) the deployment; ``hint`` says what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


#: What an HTTP/2 client sends first: the connection preface, then its (empty) SETTINGS frame.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_H2_SETTINGS = 4
_HEAD_HINT = (
    "the head prints its address when `ray start --head` starts it (port 6379 by default; "
    "not the dashboard's 8265 nor Serve's 8000)"
)


def _split(address: str) -> tuple[str, int]:
    """``HOST:PORT`` as (host, port); a FleetError for anything else (a URL, no port)."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        raise FleetError(
            f"--ray {address!r}: expected HOST:PORT of the cluster's head (or auto), "
            "without a scheme",
            hint=_HEAD_HINT,
        )
    return host.strip("[]"), int(port)


def _probe_port(address: str) -> None:
    """A FleetError unless a gRPC server answers at ``address`` (TLS clusters: any server)."""
    host, port = _split(address)
    try:
        conn = socket.create_connection((host, port), CONNECT_TIMEOUT_S)
    except OSError as exc:
        raise FleetError(
            f"no Ray cluster at {address}: {exc.strerror or exc}", hint=_START_HINT
        ) from None
    with conn:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            return  # the handshake would be TLS's: ray.init says what is wrong
        frame = _first_frame(conn)
    if len(frame) < 9 or frame[3] != _H2_SETTINGS:
        raise FleetError(
            f"{address} is not a Ray cluster's head: something listens there, but not Ray's "
            "GCS (a gRPC server)",
            hint=_HEAD_HINT,
        )


def _first_frame(conn: socket.socket) -> bytes:
    """The first frame header a server sends an HTTP/2 client (shorter: it closed the
    connection, reset it, or said nothing in time: not a gRPC server)."""
    conn.settimeout(CONNECT_TIMEOUT_S)
    frame = b""
    try:
        conn.sendall(_H2_PREFACE)
        while len(frame) < 9:  # length (3 bytes), type, flags, stream id (4)
            chunk = conn.recv(9 - len(frame))
            if not chunk:
                break
            frame += chunk
    except OSError:
        pass
    return frame


def connect(address: str) -> None:
    """Join the cluster at ``address`` (``HOST:PORT`` or ``auto``) as a driver; a no-op when this
    process is connected already."""
    if address != "auto":
        _split(address)
    if ray.is_initialized():
        return
    named = _named_address(address)
    if named is not None:
        _probe_port(named)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except ConnectionError as exc:
        raise FleetError(f"no Ray cluster at {address}: {exc}", hint=_START_HINT) from None


def _named_address(address: str) -> Optional[str]:
    """The HOST:PORT to probe before ``ray.init``: ``address`` itself, or for ``auto`` the
    RAY_ADDRESS that Ray will take (None when unset or not HOST:PORT, e.g. ``ray://``: Ray
    finds or refuses those itself)."""
    if address != "auto":
        return address
    named = os.environ.get("RAY_ADDRESS", "").strip()
    if "://" in named or not named.rpartition(":")[2].isdigit():
        return None
    return named


def board_nodes() -> list[str]:
    """The node ids of the live boards (nodes with at least one ``rknpu``)."""
    return [
        node["NodeID"]
        for node in ray.nodes()
        if node.get("Alive") and node.get("Resources", {}).get(RESOURCE, 0) >= 1
    ]
