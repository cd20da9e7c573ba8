"""The current RPC's deadline, so code far from the servicer (pool waits) can stay inside it.

The interceptor sets it from ``context.time_remaining()`` inside the RPC's own task; contextvars carry it into
every coroutine the handler awaits (and into tasks it creates). Outside an RPC there is no deadline.

When the client's deadline passes, grpc.aio cancels the handler's task; asyncpg turns that cancellation into a
cancel request to the server, so the running statement stops too. What this module adds is the waits *before* a
statement (a connection from the pool) being bounded by the time that is left, so a dependency that is down
answers ``UNAVAILABLE`` before the deadline rather than ``DEADLINE_EXCEEDED`` at it.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Final

__all__ = ["bounded", "remaining", "reset", "set_from_time_remaining"]

MARGIN_SECONDS: Final = 0.05
"""Left for the error to travel back: a wait bounded by the deadline gives up this much earlier."""

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("cowatch_deadline", default=None)


def set_from_time_remaining(time_remaining: float | None) -> contextvars.Token[float | None]:
    """Record the deadline ``time_remaining`` seconds from now (``None``: the client set none)."""
    if time_remaining is None:
        return _deadline.set(None)
    return _deadline.set(asyncio.get_running_loop().time() + time_remaining)


def reset(token: contextvars.Token[float | None]) -> None:
    _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left before the current RPC's deadline (may be negative); ``None`` without a deadline."""
    deadline = _deadline.get()
    if deadline is None:
        return None
    return deadline - asyncio.get_running_loop().time()


def bounded(timeout: float) -> float:
    """``timeout``, shortened to what is left of the deadline minus :data:`MARGIN_SECONDS` (never below 0)."""
    left = remaining()
    if left is None:
        return timeout
    return max(0.0, min(timeout, left - MARGIN_SECONDS))
