"""What the event use cases emit. The shared facts (:mod:`services.common.domain_events`) are what other domains
subscribe to; the classes here add what the event domain's own messages need."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from services.booking.cascades import Overlap
from services.common.domain_events import EventChanged, SeatsChanged
from services.common.uow import DomainEvent
from services.event.domain import Event, FieldChange


@dataclass(frozen=True)
class EventUpdated(EventChanged):
    """The host edited the event: confirmed guests get the changes, old → new; those whose other bookings the
    event now overlaps (it moved) also get which ones."""

    event: Event
    changes: Sequence[FieldChange]
    guest_ids: Sequence[str]
    overlaps: Sequence[Overlap] = ()


@dataclass(frozen=True)
class EventRescheduled(DomainEvent):
    """The start time moved: every reminder of the event follows it."""

    event_id: UUID
    start_time: datetime
    at: datetime


@dataclass(frozen=True)
class EventCancelled(SeatsChanged):
    """The host cancelled the event (every booking with it): guests are told why, reminders are dropped."""

    event: Event
    guest_ids: Sequence[str]
    reason: str


@dataclass(frozen=True)
class InvitationsSent(DomainEvent):
    event: Event
    user_ids: Sequence[str]
    note: str
    batch: str
    """Dedupe scope of the mails: the request id, so a retried request never mails twice."""
