"""Time source. Services take a :class:`Clock` so tests can control "now". Pure Python (no grpc import)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "FixedClock", "ManualClock", "SystemClock", "utc"]


@runtime_checkable
class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware, in UTC."""
        ...


def utc(value: datetime) -> datetime:
    """``value`` converted to UTC; rejects naive datetimes (ambiguous instants are bugs)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: a timezone-aware datetime is required")
    return value.astimezone(UTC)


class SystemClock:
    """The real wall clock."""

    __slots__ = ()

    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that only moves when told to: ``set()`` or ``advance()``."""

    __slots__ = ("_now",)

    def __init__(self, start: datetime | None = None) -> None:
        self._now = utc(start) if start is not None else datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def set(self, value: datetime) -> None:
        self._now = utc(value)

    def advance(self, delta: timedelta | float = 0.0, /, **kwargs: float) -> datetime:
        """Move forward by ``delta`` (a timedelta or seconds) plus timedelta kwargs; returns the new now.

        ``clock.advance(90)``, ``clock.advance(timedelta(hours=1))``, ``clock.advance(hours=24)``.
        """
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        step += timedelta(**kwargs)
        self._now += step
        return self._now


FixedClock = ManualClock
"""A :class:`ManualClock` that nobody advances is a fixed clock; the alias reads better in tests."""
