"""Who is calling. Pure Python (no grpc import)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_USER_ID_LENGTH", "User", "valid_user_id"]

MAX_USER_ID_LENGTH = 128
"""The ``account.users.id`` column's limit."""


def valid_user_id(value: str) -> bool:
    """Whether ``value`` can be a user id, i.e. name ``users/{value}``: 1–128 printable characters, no ``/``."""
    return 0 < len(value) <= MAX_USER_ID_LENGTH and "/" not in value and value.isprintable() and bool(value.strip())


@dataclass(frozen=True, slots=True)
class User:
    """An authenticated caller.

    ``id`` is the token's ``sub``; ``display_name`` its ``name`` or ``preferred_username`` (else the ``sub``).
    """

    id: str
    display_name: str
