"""The domain events other domains may subscribe to: facts with plain payloads (ids, times), so a subscriber
never imports the domain that emitted them.

A domain's own, richer events subclass these (``booking.domain_events.BookingMade`` is a :class:`SeatsChanged`
carrying the booking): the dispatcher (:class:`services.common.uow.Handlers`) calls the handlers of an event's
class and of every base class, so the event domain's cache hears about every seat change without knowing
bookings. Who emits what, and who acts on it, is in docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from services.common.uow import DomainEvent

__all__ = [
    "EventChanged",
    "EventCompleted",
    "EventCreated",
    "ReviewPosted",
    "SeatsChanged",
    "UserRenamed",
]


@dataclass(frozen=True)
class EventChanged(DomainEvent):
    """An event's row changed (details, state, invite token): its cached copies are stale."""

    event_id: UUID
    listed: bool
    """Whether the change can show on a list page (public events; private ones are on no list)."""


@dataclass(frozen=True)
class SeatsChanged(EventChanged):
    """Seats were taken or given back (a booking made or cancelled, every booking of a cancelled event)."""


@dataclass(frozen=True)
class EventCreated(DomainEvent):
    event_id: UUID
    host_id: str
    start_time: datetime
    listed: bool
    at: datetime


@dataclass(frozen=True)
class EventCompleted(EventChanged):
    """The host marked the event held: it counts on their profile, and it can be reviewed."""

    host_id: str


@dataclass(frozen=True)
class UserRenamed(DomainEvent):
    """A user's display name changed (it comes with their token and is snapshotted on any write of theirs): it
    shows on each event they host and on their host profile."""

    user_id: str


@dataclass(frozen=True)
class ReviewPosted(DomainEvent):
    """A review was written or its rating edited: the ratings it counts in changed."""

    review_id: UUID
    event_id: UUID
    about: str
    """``EVENT``, ``HOST`` or ``GUEST``."""
    subject_user_id: str | None
    host_id: str
