"""The server-wide budget of bytes held in request bodies being read, decoded or served.

Each model limits one body (``max_request_bytes``), but nothing limited how many of them a
server held at once: twelve clients each sending a 60 MB body took a server from 102 to 822 MB.
Every request now holds its body's bytes (as declared by ``Content-Length`` when given, else as
they arrive, plus what inflating a compressed body makes) against one budget; a request that
would take it past ``limit`` gets UNAVAILABLE (503 + Retry-After: the bytes free up as the
other requests end) before its body is read, or as soon as the streamed part passes it. A
request gives back all it held when it ends, however it ends (``BodyBudget.hold`` is a
context manager). Everything runs on the event loop: no lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .protocol import ErrorKind, ProtocolError

__all__ = ["BodyBudget", "BodyHold", "DEFAULT_MAX_TOTAL_REQUEST_BYTES"]

#: Four bodies of the default per-model limit (64 MiB) at once.
DEFAULT_MAX_TOTAL_REQUEST_BYTES = 256 * 1024 * 1024


class BodyBudget:
    """At most ``limit`` bytes held by all requests together."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    @contextmanager
    def hold(self) -> Iterator[BodyHold]:
        """One request's share, given back on exit."""
        share = BodyHold(self)
        try:
            yield share
        finally:
            self.held -= share.held
            share.held = 0


class BodyHold:
    """What one request holds of a ``BodyBudget``."""

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.held = 0

    def grow_to(self, nbytes: int) -> None:
        """Hold ``nbytes`` in all (no-op if already held); UNAVAILABLE past the budget."""
        extra = nbytes - self.held
        if extra <= 0:
            return
        budget = self._budget
        if budget.held + extra > budget.limit:
            raise ProtocolError(
                ErrorKind.UNAVAILABLE,
                f"the server holds {budget.held} bytes of request bodies; {extra} more would "
                f"pass its limit of {budget.limit} (--max-total-request-mb): retry later",
            )
        budget.held += extra
        self.held = nbytes

    def add(self, nbytes: int) -> None:
        """Hold ``nbytes`` more (an inflated body next to its compressed one)."""
        self.grow_to(self.held + nbytes)
