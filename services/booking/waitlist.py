"""Waitlist domain: a guest's place in an event's queue for seats, the offers made to it, and their rules.

Pure Python, like :mod:`services.booking.domain`. Seats are never decided here: the offer statement
(``waitlist_repository.OFFER_NEXT``) and the seat statement decide them under the event row's lock; these
functions only say who may act and when an offer closes.

Fairness: whenever seats come free they go, in join order (``seq``), to the first waiting entry whose seats fit
in what is bookable now (``capacity - seats_taken - seats_held``); the seats are *held* for that entry until the
offer's deadline. Held seats count against capacity in the same conditional seat statement as booked ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from uuid import UUID

from services.common import errors, names
from services.common.errors import AlreadyExists, FailedPrecondition, PermissionDenied
from services.common.identity import User
from services.common.vocabulary import Rating, Reliability

DEFAULT_CLAIM_WINDOW = timedelta(hours=2)


class EntryState(StrEnum):
    WAITING = "WAITING"
    OFFERED = "OFFERED"
    CLAIMED = "CLAIMED"
    DECLINED = "DECLINED"
    EXPIRED = "EXPIRED"
    LEFT = "LEFT"
    CLOSED = "CLOSED"

    @property
    def is_open(self) -> bool:
        return self in (EntryState.WAITING, EntryState.OFFERED)


@dataclass(frozen=True, slots=True)
class WaitlistEntry:
    id: UUID
    event_id: UUID
    host_id: str
    guest_id: str
    guest_display_name: str
    seats: int
    state: EntryState
    position: int
    create_time: datetime
    update_time: datetime
    offer_time: datetime | None = None
    offer_expire_time: datetime | None = None
    booking_id: UUID | None = None
    guest_rating: Rating | None = None
    guest_reliability: Reliability | None = None
    seq: int = 0

    @property
    def name(self) -> str:
        return names.waitlist_entry(self.event_id, self.id)

    def visible_to(self, user: User) -> bool:
        return user.id in (self.guest_id, self.host_id)


@dataclass(frozen=True, slots=True)
class Offer:
    """Seats offered to an entry (and held for it) until ``expire_time``."""

    entry_id: UUID
    guest_id: str
    seats: int
    expire_time: datetime


@dataclass(frozen=True, slots=True)
class Ended:
    """An entry that ended without a booking (its offer expired, or the waitlist closed)."""

    entry_id: UUID
    guest_id: str
    seats: int


@dataclass(frozen=True, slots=True)
class OfferWarning:
    """An open offer entering the last quarter of its window."""

    entry_id: UUID
    event_id: UUID
    guest_id: str
    seats: int
    expire_time: datetime


def offer_deadline(now: datetime, start_time: datetime, window: timedelta) -> datetime:
    """The claim window, never past the start: an offer made 30 minutes before the start lasts 30 minutes."""
    return min(now + window, start_time)


def warn_time(offer_time: datetime, deadline: datetime) -> datetime:
    """When the "your offer closes soon" mail goes: the last quarter of the window (30 min of a 2 h window)."""
    return deadline - (deadline - offer_time) / 4


# --------------------------------------------------------------------------- rules


def ensure_can_join(seats: int, seats_available: int, open_entry: WaitlistEntry | None) -> None:
    """After the booking rules (visible, not the host, open, not booked): one open entry, and no seats to book."""
    if open_entry is not None:
        raise AlreadyExists(
            "ALREADY_WAITLISTED",
            "you are already on this event's waitlist",
            metadata={"waitlist_entry": open_entry.name},
        )
    if seats <= seats_available:
        raise FailedPrecondition(
            "SEATS_AVAILABLE",
            f"{seats_available} seats can be booked now: book them instead of joining the waitlist",
            metadata={"seats_available": str(seats_available)},
        )


def ensure_visible(entry: WaitlistEntry | None, event_id: UUID, entry_id: UUID, user: User) -> WaitlistEntry:
    """An entry exists only for its guest and the event's host."""
    if entry is None or entry.event_id != event_id or not entry.visible_to(user):
        raise errors.waitlist_entry_not_found(names.waitlist_entry(event_id, entry_id))
    return entry


def ensure_guest(entry: WaitlistEntry | None, event_id: UUID, entry_id: UUID, user: User) -> WaitlistEntry:
    visible = ensure_visible(entry, event_id, entry_id, user)
    if visible.guest_id != user.id:
        raise PermissionDenied("NOT_WAITLIST_GUEST", "only the guest who joined can change a waitlist entry")
    return visible


def ensure_open_offer(entry: WaitlistEntry, now: datetime) -> None:
    """The entry holds seats whose window has not passed (the sweep may not have expired it yet)."""
    if entry.state is not EntryState.OFFERED or (entry.offer_expire_time and now >= entry.offer_expire_time):
        state = EntryState.EXPIRED if entry.state is EntryState.OFFERED else entry.state
        raise FailedPrecondition(
            "NO_OPEN_OFFER",
            f"this waitlist entry has no open offer (it is {state.value.lower()})",
            metadata={"state": state.value},
        )
