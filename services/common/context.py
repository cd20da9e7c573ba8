"""Per-RPC request context held in contextvars.

The server interceptor binds these inside each RPC's own task, so they are visible to the servicer and
everything it calls (and to tasks it spawns, which copy the context), and never leak between RPCs. Pure
Python (no grpc import).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar, Token
from typing import TypeVar

from services.common.errors import Unauthenticated
from services.common.identity import User

__all__ = [
    "bind",
    "current_user",
    "request_id",
    "require_user",
    "reset_request_id",
    "reset_user",
    "set_request_id",
    "set_user",
]

_T = TypeVar("_T")

_user: ContextVar[User | None] = ContextVar("cowatch_user", default=None)
_request_id: ContextVar[str] = ContextVar("cowatch_request_id", default="")


def current_user() -> User | None:
    """The authenticated caller, or ``None`` for an anonymous call."""
    return _user.get()


def require_user() -> User:
    """The authenticated caller; raises :class:`Unauthenticated` (``UNAUTHENTICATED``) when anonymous."""
    user = _user.get()
    if user is None:
        raise Unauthenticated("UNAUTHENTICATED", "this method requires an authenticated caller")
    return user


def request_id() -> str:
    """The current request id (``x-request-id``), or ``""`` outside of an RPC."""
    return _request_id.get()


def set_user(user: User | None) -> Token[User | None]:
    return _user.set(user)


def reset_user(token: Token[User | None]) -> None:
    _safe_reset(_user, token)


def set_request_id(value: str) -> Token[str]:
    return _request_id.set(value)


def reset_request_id(token: Token[str]) -> None:
    _safe_reset(_request_id, token)


@contextmanager
def bind(*, request_id: str, user: User | None = None) -> Iterator[None]:
    """Bind request id and user for the duration of the block (tests, workers, background jobs)."""
    rid_token = _request_id.set(request_id)
    user_token = _user.set(user)
    try:
        yield
    finally:
        _safe_reset(_user, user_token)
        _safe_reset(_request_id, rid_token)


def _safe_reset(var: ContextVar[_T], token: Token[_T]) -> None:
    # An async generator finalised from another context (e.g. the loop's asyncgen finaliser after the client
    # went away) cannot reset a token created in the RPC's context; that context dies with its task anyway.
    with suppress(ValueError):
        var.reset(token)
