"""uvicorn's httptools protocol with a bound on the request head (request line and headers).

httptools (the C parser ``serve`` uses for speed) keeps every byte of a head it has not finished
parsing, with no limit of its own: one client sending an endless header line grew the server
by hundreds of megabytes (h11, uvicorn's pure-Python parser, stops at 16 KiB). Here the bytes
of a head still incomplete after each read are counted, and past ``MAX_HEAD_BYTES`` the
connection gets a 400 saying so and is closed, before the body limit (``max_request_bytes``)
could ever apply.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["MAX_HEAD_BYTES", "BoundedHeadProtocol"]

#: The most a request head may take (tritonclient's heads are a few hundred bytes; nginx's
#: default buffers allow 32 KiB). One read past it may still land before the refusal.
MAX_HEAD_BYTES = 64 * 1024


class BoundedHeadProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` refusing a request head over ``MAX_HEAD_BYTES``."""

    _head_bytes = 0
    _in_head = True  # a connection starts with a head

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        self._head_bytes += len(data)  # the whole read: its head part is not told apart
        if self._head_bytes > MAX_HEAD_BYTES:
            self._in_head = False
            self.send_400_response(f"the request line and headers are over {MAX_HEAD_BYTES} bytes")
