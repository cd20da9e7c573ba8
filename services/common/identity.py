"""Who is calling. Pure Python (no grpc import)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["User"]


@dataclass(frozen=True, slots=True)
class User:
    """An authenticated caller.

    ``id`` is the token's ``sub``; ``display_name`` its ``name`` or ``preferred_username`` (else the ``sub``).
    """

    id: str
    display_name: str
