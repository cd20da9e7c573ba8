"""The reminder messages (the worker builds them when a reminder comes due).

The domains build their own messages (``services/event/notifications.py``: event_changed, event_cancelled,
event_invitation; ``services/booking/notifications.py``: booking_confirmed, booking_new_guest,
booking_cancelled). Reminders take :class:`EventFacts`, a plain snapshot of what a mail says about an event, and
carry the same common parameters (``event_params``), as :mod:`services.notification.templates` requires.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from services.common import names
from services.common.vocabulary import ReminderKind, local_time
from services.notification.outbox import Message

__all__ = [
    "EventFacts",
    "event_params",
    "reminder",
    "reminder_dedupe_key",
]


@dataclass(frozen=True, slots=True)
class EventFacts:
    """What a mail tells about an event (start in UTC; ``time_zone`` is the place's IANA zone)."""

    id: UUID
    title: str
    film_title: str
    start_time: datetime
    time_zone: str
    place_name: str
    place_address: str
    place_city: str
    host_name: str

    @property
    def name(self) -> str:
        return names.event(self.id)


def event_params(event: EventFacts, link: str, *, with_address: bool) -> dict[str, Any]:
    """The common event parameters; ``place_address`` only for recipients allowed to see it."""
    params: dict[str, Any] = {
        "event": event.name,
        "event_title": event.title,
        "film_title": event.film_title,
        "start_local": local_time(event.start_time, event.time_zone),
        "start_time": event.start_time.isoformat(),
        "time_zone": event.time_zone,
        "place_name": event.place_name,
        "place_city": event.place_city,
        "link": link,
        "host_name": event.host_name,
    }
    if with_address:
        params["place_address"] = event.place_address
    return params


def reminder_dedupe_key(event_id: UUID, kind: str, recipient_id: str, due_time: datetime) -> str:
    """One key per reminder *and schedule*: the due time (UTC, to the second) is part of it, so a reminder re-armed
    after the start moved is a new message, while every retry of one schedule's reminder repeats the same key."""
    due = due_time.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"reminder/{event_id}/{kind}/{recipient_id}/{due}"


def reminder(
    event: EventFacts, kind: str, recipient_id: str, *, is_host: bool, seats: int, link: str, due_time: datetime
) -> Message:
    """The 24 h / 1 h reminder to one recipient (host or confirmed guest: both see the address)."""
    params = event_params(event, link, with_address=True)
    params.update(kind=kind, hours_before=ReminderKind(kind).hours, role="HOST" if is_host else "GUEST")
    if not is_host:
        params["seats"] = seats
    return Message(
        dedupe_key=reminder_dedupe_key(event.id, kind, recipient_id, due_time),
        template_id=ReminderKind(kind).template_id,
        recipients=[recipient_id],
        params=params,
    )
