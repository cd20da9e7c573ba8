"""Words every domain uses the same way, so no domain needs another's ``domain`` module to speak them.

The event's lifecycle and visibility (booking and review decide by them), reminder kinds (events and bookings
schedule them, the worker sends them), :class:`Rating` (reviews write it, events and guest lists show it) and the
local-time format every message and change description uses. Pure Python.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

__all__ = ["EventState", "Rating", "ReminderKind", "Visibility", "local_time"]


class EventState(StrEnum):
    SCHEDULED = "SCHEDULED"
    CANCELLED = "CANCELLED"
    COMPLETED = "COMPLETED"


class Visibility(StrEnum):
    PUBLIC = "PUBLIC"
    PRIVATE = "PRIVATE"


class ReminderKind(StrEnum):
    """A reminder before an event's start; the value is what ``notify.reminders.kind`` stores."""

    H24 = "24H"
    H1 = "1H"

    @property
    def before_start(self) -> timedelta:
        return timedelta(hours=self.hours)

    @property
    def hours(self) -> int:
        return 24 if self is ReminderKind.H24 else 1

    @property
    def template_id(self) -> str:
        return f"reminder_{self.value.lower()}"


@dataclass(frozen=True, slots=True)
class Rating:
    """An aggregate of 1–5 star ratings: the average is rounded to two decimals, 0 when nobody rated."""

    average: float = 0.0
    count: int = 0

    @classmethod
    def of(cls, total: int, count: int) -> Rating:
        """The one average formula: ``total / count`` rounded to two decimals."""
        return cls(average=round(total / count, 2) if count else 0.0, count=count)


@dataclass(frozen=True, slots=True)
class Reliability:
    """How reliably a guest comes: attended ÷ (attended + no-show). No marks = no history, never 0 %."""

    attended: int = 0
    no_show: int = 0

    @property
    def has_history(self) -> bool:
        return self.attended + self.no_show > 0

    @property
    def ratio(self) -> float:
        total = self.attended + self.no_show
        return round(self.attended / total, 2) if total else 0.0


def local_time(instant: datetime, time_zone: str) -> str:
    """``instant`` as people at the place read it, e.g. ``Fri 4 Dec 2026, 20:00 CET (Europe/Berlin)``."""
    local = instant.astimezone(zoneinfo.ZoneInfo(time_zone))
    return f"{local:%a} {local.day} {local:%b %Y, %H:%M} {local.tzname()} ({time_zone})"
