"""uvicorn's httptools protocol with bounds on what a client can hold: the request head's size
and the time a request may take to arrive.

httptools (the C parser ``serve`` uses for speed) keeps every byte of a head it has not finished
parsing, with no limit of its own: one client sending an endless header line grew the server
by hundreds of megabytes (h11, uvicorn's pure-Python parser, stops at 16 KiB). And uvicorn
has no read timeout: a client that sent half a head or half a body (slowloris) held its socket
forever, so a few hundred of them used up the process's file descriptors. Here:

* the bytes of a head still incomplete after each read are counted; past ``MAX_HEAD_BYTES`` the
  connection gets a 400 saying so and is closed;
* a head must be complete within ``read_timeout`` seconds of the connection (or of the previous
  response), and a body must not stall for ``read_timeout`` seconds between two reads; else
  400 saying which, and the connection is closed.

One timer per request, re-armed only when it fires: nothing is added per read but a clock read.
"""

from __future__ import annotations

import asyncio
from typing import Optional

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["MAX_HEAD_BYTES", "BoundedHeadProtocol", "bounded_protocol"]

#: The most a request head may take (tritonclient's heads are a few hundred bytes; nginx's
#: default buffers allow 32 KiB). One read past it may still land before the refusal.
MAX_HEAD_BYTES = 64 * 1024

_HEAD, _BODY, _IDLE = "head", "body", "idle"


class BoundedHeadProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` refusing a request head over ``MAX_HEAD_BYTES`` and a request that
    does not arrive in time (``read_timeout``, set by ``bounded_protocol``)."""

    read_timeout = 30.0
    _phase = _HEAD
    _head_bytes = 0
    _last_read = 0.0
    _timer: Optional[asyncio.TimerHandle] = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._enter(_HEAD)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._enter(_IDLE)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._enter(_HEAD)

    def on_headers_complete(self) -> None:
        self._enter(_BODY)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._enter(_IDLE)  # between requests uvicorn's keep-alive timeout applies
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        self._last_read = asyncio.get_running_loop().time()
        super().data_received(data)
        if self._phase != _HEAD or self.transport.is_closing():
            return
        self._head_bytes += len(data)  # the whole read: its head part is not told apart
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(f"the request line and headers are over {MAX_HEAD_BYTES} bytes")

    def _enter(self, phase: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._phase = phase
        if phase == _HEAD:
            self._head_bytes = 0
        if phase != _IDLE:
            loop = asyncio.get_running_loop()
            self._last_read = loop.time()
            self._timer = loop.call_later(self.read_timeout, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._phase == _HEAD:
            self._refuse(f"the request line and headers did not arrive in {self.read_timeout:g} s")
            return
        loop = asyncio.get_running_loop()
        idle = loop.time() - self._last_read
        if idle < self.read_timeout:  # bytes came since the timer was armed
            self._timer = loop.call_later(self.read_timeout - idle, self._expire)
            return
        self._refuse(f"no request body bytes arrived for {self.read_timeout:g} s")

    def _refuse(self, message: str) -> None:
        self._enter(_IDLE)
        self.send_400_response(message)


def bounded_protocol(read_timeout: float) -> type[BoundedHeadProtocol]:
    """The protocol class for uvicorn's ``http=`` with ``read_timeout`` seconds."""
    return type("BoundedHeadProtocol", (BoundedHeadProtocol,), {"read_timeout": read_timeout})
