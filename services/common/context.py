"""Per-RPC request context held in contextvars.

The server interceptor binds these inside each RPC's own task, so they are visible to the servicer and
everything it calls (and to tasks it spawns, which copy the context), and never leak between RPCs. Pure
Python (no grpc import).
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any, TypeVar

from services.common.errors import Unauthenticated
from services.common.identity import User

__all__ = [
    "add_to_log",
    "bind",
    "current_user",
    "method",
    "request_id",
    "require_user",
    "reset_method",
    "reset_request_id",
    "reset_user",
    "set_method",
    "set_request_id",
    "set_user",
]

_T = TypeVar("_T")

_user: ContextVar[User | None] = ContextVar("cowatch_user", default=None)
_request_id: ContextVar[str] = ContextVar("cowatch_request_id", default="")
_method: ContextVar[str] = ContextVar("cowatch_method", default="")


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


def method() -> str:
    """The current RPC's full method name (``/pkg.Service/Method``), or ``""`` outside of an RPC."""
    return _method.get()


def set_method(value: str) -> Token[str]:
    return _method.set(value)


def reset_method(token: Token[str]) -> None:
    _safe_reset(_method, token)


def add_to_log(logger: object, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: the current RPC's ``request_id``, ``method`` and ``user_id`` on every log line.

    Read from these contextvars at log time rather than bound into structlog's own contextvars per RPC: binding
    costs a few allocations on every call, and structlog's merge copies the whole context on every line."""
    rid = _request_id.get()
    if rid:
        event_dict.setdefault("request_id", rid)
        rpc_method = _method.get()
        if rpc_method:
            event_dict.setdefault("method", rpc_method)
    user = _user.get()
    if user is not None:
        event_dict.setdefault("user_id", user.id)
    return event_dict


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
    try:  # (not contextlib.suppress: this runs a few times per RPC)
        var.reset(token)
    except ValueError:
        return
