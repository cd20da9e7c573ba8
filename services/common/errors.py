"""Domain errors: the exceptions the service layer raises on purpose.

Pure Python (no grpc import). Each subclass stands for one gRPC status code; the single table that maps them
lives in :mod:`services.common.grpc_errors`. ``reason`` is a stable UPPER_SNAKE_CASE identifier clients can
switch on (it becomes ``google.rpc.ErrorInfo.reason``); ``message`` is a human-readable English sentence
safe to show to the caller; ``field_violations`` become ``google.rpc.BadRequest.FieldViolation`` entries;
``metadata`` becomes ``ErrorInfo.metadata``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Self

__all__ = [
    "Aborted",
    "AlreadyExists",
    "DomainError",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Violations",
    "booking_not_found",
    "event_not_found",
    "review_not_found",
    "user_not_found",
    "waitlist_entry_not_found",
]


class DomainError(Exception):
    """Base class of every error meant to reach the client with a stable ``reason``."""

    reason: str
    message: str
    field_violations: tuple[tuple[str, str], ...]
    metadata: dict[str, str]

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        field_violations: Sequence[tuple[str, str]] = (),
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(reason, message)
        self.reason = reason
        self.message = message
        self.field_violations = tuple((str(f), str(d)) for f, d in field_violations)
        self.metadata = {str(k): str(v) for k, v in (metadata or {}).items()}

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reason={self.reason!r}, message={self.message!r})"


class InvalidArgument(DomainError):
    """The request itself is wrong, whatever the state of the system (INVALID_ARGUMENT)."""

    @classmethod
    def field(cls, field: str, description: str, reason: str = "INVALID_ARGUMENT") -> Self:
        """One bad field: ``InvalidArgument.field("page_size", "must not be negative")``."""
        return cls(reason, f"{field}: {description}", field_violations=[(field, description)])


class NotFound(DomainError):
    """NOT_FOUND."""


class PermissionDenied(DomainError):
    """PERMISSION_DENIED: authenticated, but not allowed."""


class Unauthenticated(DomainError):
    """UNAUTHENTICATED: no or bad credentials."""


class AlreadyExists(DomainError):
    """ALREADY_EXISTS."""


class FailedPrecondition(DomainError):
    """FAILED_PRECONDITION: the system is not in the state the operation needs."""


class Aborted(DomainError):
    """ABORTED: concurrency conflict (stale etag, serialization failure); retry at a higher level."""


class ResourceExhausted(DomainError):
    """RESOURCE_EXHAUSTED: a quota or limit was hit."""


class Unavailable(DomainError):
    """UNAVAILABLE: a dependency is down; the call may be retried."""


class Violations:
    """Collects several field violations, then raises one :class:`InvalidArgument`.

    >>> v = Violations()
    >>> v.add("title", "must not be empty")
    >>> v.add("capacity", "must be between 1 and 100")
    >>> v.raise_if_any()  # raises InvalidArgument with both violations
    """

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: list[tuple[str, str]] = []

    def add(self, field: str, description: str) -> None:
        self._items.append((field, description))

    def check(self, condition: bool, field: str, description: str) -> None:
        """Add the violation when ``condition`` is false."""
        if not condition:
            self.add(field, description)

    @property
    def items(self) -> tuple[tuple[str, str], ...]:
        return tuple(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def raise_if_any(self, reason: str = "INVALID_ARGUMENT", message: str | None = None) -> None:
        if not self._items:
            return
        if message is None:
            message = "; ".join(f"{field}: {description}" for field, description in self._items)
        raise InvalidArgument(reason, message, field_violations=self._items)


# --------------------------------------------------------------------------- NOT_FOUND, one constructor per resource


def event_not_found(name: str) -> NotFound:
    """``name`` is the resource name (``names.event(id)``); the message never says more than that it is missing."""
    return NotFound("EVENT_NOT_FOUND", f"{name} does not exist")


def booking_not_found(name: str) -> NotFound:
    return NotFound("BOOKING_NOT_FOUND", f"{name} does not exist")


def review_not_found(name: str) -> NotFound:
    return NotFound("REVIEW_NOT_FOUND", f"{name} does not exist")


def user_not_found(name: str) -> NotFound:
    return NotFound("USER_NOT_FOUND", f"{name} does not exist")


def waitlist_entry_not_found(name: str) -> NotFound:
    return NotFound("WAITLIST_ENTRY_NOT_FOUND", f"{name} does not exist")
