"""What the booking use cases emit: seat changes (:class:`SeatsChanged`, which the event domain's cache hears)
carrying what the booking domain's own messages and reminders need."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.booking.domain import BookableEvent, Booking
from services.booking.waitlist import Ended, Offer
from services.common.domain_events import SeatsChanged
from services.common.identity import User


@dataclass(frozen=True)
class BookingMade(SeatsChanged):
    """Confirmation to the guest, "new guest" to the host, the guest's 24 h / 1 h reminders."""

    event: BookableEvent
    booking: Booking
    guest: User
    at: datetime


@dataclass(frozen=True)
class BookingCancelled(SeatsChanged):
    """The guest gave their seats back: the host is told, the guest's reminders are dropped."""

    event: BookableEvent
    booking: Booking
    guest: User


@dataclass(frozen=True)
class WaitlistChanged(SeatsChanged):
    """The waitlist or its held seats changed: offers made (mailed), offers expired (mailed), entries closed by the
    event's start or cancellation (mailed), or an entry joined / left (the event's ``waitlist_size``)."""

    event: BookableEvent
    offers: tuple[Offer, ...] = ()
    expired: tuple[Ended, ...] = ()
    closed: tuple[Ended, ...] = ()
    close_reason: str = ""
