"""Booking domain: a guest's seats at an event, and the rules for taking and giving them back.

Pure Python: no gRPC, no protobuf, no SQL. The service layer reads what it needs of the event
(:class:`BookableEvent`), asks these functions whether an action is allowed (they raise
:mod:`services.common.errors` exceptions with stable reasons) and persists the result. The seat count itself is
never decided here: the database's conditional UPDATE is the authority (see ``repository.TAKE_SEATS``); the
checks below only refuse early what that statement would refuse anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from uuid import UUID

from services.common import errors, links, names
from services.common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
)
from services.common.identity import User

DEFAULT_MAX_SEATS = 4
# The schema's CHECK on booking.bookings.seats; a configured maximum above it could never be stored.
SEATS_CEILING = 100


class State(StrEnum):
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"


class Attendance(StrEnum):
    ATTENDED = "ATTENDED"
    NO_SHOW = "NO_SHOW"


DEFAULT_ATTENDANCE_PERIOD = timedelta(days=7)


class TimeFilter(StrEnum):
    """ListBookings' time filter, by the event's end: UPCOMING = not ended yet, PAST = ended."""

    ANY = "ANY"
    UPCOMING = "UPCOMING"
    PAST = "PAST"


@dataclass(frozen=True, slots=True)
class BookableEvent:
    """What booking needs to know about an event (read from event.events, never written here except seats)."""

    id: UUID
    host_id: str
    host_display_name: str
    title: str
    film_title: str
    start_time: datetime
    end_time: datetime
    time_zone: str
    place_name: str
    place_address: str
    place_city: str
    capacity: int
    seats_taken: int
    private: bool
    scheduled: bool
    invite_token: str
    seats_held: int = 0
    """Seats held for open waitlist offers: nobody else can book them."""

    @property
    def name(self) -> str:
        return names.event(self.id)

    @property
    def seats_available(self) -> int:
        """Bookable now: neither booked nor held for an offer."""
        return max(self.capacity - self.seats_taken - self.seats_held, 0)

    def is_open(self, now: datetime) -> bool:
        """Scheduled and not started: the only state in which seats can be taken."""
        return self.scheduled and now < self.start_time


@dataclass(frozen=True, slots=True)
class Booking:
    id: UUID
    event_id: UUID
    guest_id: str
    seats: int
    state: State
    event_title: str
    event_start_time: datetime
    event_end_time: datetime
    create_time: datetime
    cancel_time: datetime | None = None
    attendance: Attendance | None = None

    @property
    def name(self) -> str:
        return booking_name(self.id)


@dataclass(frozen=True, slots=True)
class BookingAccess:
    """A booking together with who may see it: its guest and the event's host."""

    booking: Booking
    host_id: str

    def visible_to(self, user: User) -> bool:
        return user.id in (self.booking.guest_id, self.host_id)


# --------------------------------------------------------------------------- names


booking_name = names.booking
parse_booking_name = names.parse_booking


# --------------------------------------------------------------------------- input


def resolve_seats(requested: int, maximum: int, field_name: str = "booking.seats") -> int:
    """0 means 1; otherwise 1..``maximum``."""
    if requested == 0:
        return 1
    if not 1 <= requested <= maximum:
        raise InvalidArgument.field(field_name, f"must be between 1 and {maximum}")
    return requested


# --------------------------------------------------------------------------- create


def ensure_can_book(
    event: BookableEvent | None,
    event_id: UUID,
    user: User,
    *,
    invite_token: str,
    already_booked: bool,
    seats: int,
    now: datetime,
) -> BookableEvent:
    """Every rule that a read of the event can decide, in the order a caller learns them.

    First whether the event exists for the caller (:func:`ensure_event_visible`); then the host learns that hosts can't
    book; then the event must be open, the caller not already booked, and enough seats free at the time of the
    read. The overlap rule and the final seat count are decided by the database (:func:`overlap` and
    :func:`seats_refusal`).
    """
    event = ensure_event_visible(event, event_id, user, invite_token=invite_token, already_booked=already_booked)
    if user.id == event.host_id:
        raise host_cannot_book()
    if not event.is_open(now):
        raise not_bookable(event, now)
    if already_booked:
        raise already_booked_error(event)
    if seats > event.seats_available:
        raise sold_out(event.seats_available)
    return event


def ensure_event_visible(
    event: BookableEvent | None, event_id: UUID, user: User, *, invite_token: str, already_booked: bool
) -> BookableEvent:
    """The event, if it exists for the caller; the same NOT_FOUND as an unknown id otherwise (as every RPC answers).

    A private event exists for its host, a guest who holds a booking there and anyone presenting its current invite
    token. Every call that acts on an event by name for a guest (booking, and a waitlist when there is one) starts
    here, before revealing anything else about the event.
    """
    if event is None:
        raise errors.event_not_found(names.event(event_id))
    if event.private and user.id != event.host_id and not already_booked and not _valid_invite(event, invite_token):
        raise errors.event_not_found(names.event(event_id))  # the same answer as an unknown id
    return event


def _valid_invite(event: BookableEvent, token: str) -> bool:
    return links.invite_matches(token, event.invite_token)


def host_cannot_book() -> FailedPrecondition:
    return FailedPrecondition("HOST_CANNOT_BOOK", "hosts can't book seats at their own event")


def not_bookable(event: BookableEvent, now: datetime) -> FailedPrecondition:
    why = "has started" if event.scheduled and now >= event.start_time else "is no longer scheduled"
    return FailedPrecondition("EVENT_NOT_BOOKABLE", f"{event.name} {why} and can't be booked")


def already_booked_error(event: BookableEvent) -> AlreadyExists:
    return AlreadyExists("ALREADY_BOOKED", f"you already hold a booking for {event.name}")


def sold_out(seats_available: int) -> FailedPrecondition:
    """A business refusal, not overload: FAILED_PRECONDITION (HTTP 400), which no client or proxy retries."""
    return FailedPrecondition(
        "EVENT_SOLD_OUT",
        f"not enough free seats ({seats_available} left)" if seats_available else "the event is sold out",
        metadata={"seats_available": str(max(seats_available, 0))},
    )


def overlap(other_booking: UUID | None) -> FailedPrecondition:
    metadata = {"overlapping_booking": booking_name(other_booking)} if other_booking else {}
    return FailedPrecondition(
        "BOOKING_OVERLAP",
        "this event overlaps another event you have booked",
        metadata=metadata,
    )


def seats_refusal(event: BookableEvent | None, event_id: UUID, now: datetime) -> Exception:
    """Why the conditional seat UPDATE matched no row, from a fresh read of the event."""
    if event is None:
        return errors.event_not_found(names.event(event_id))
    if not event.is_open(now):
        return not_bookable(event, now)
    return sold_out(event.seats_available)


# --------------------------------------------------------------------------- read / cancel


def ensure_visible(access: BookingAccess | None, booking_id: UUID, user: User) -> BookingAccess:
    """A booking exists only for its guest and the event's host."""
    if access is None or not access.visible_to(user):
        raise errors.booking_not_found(names.booking(booking_id))
    return access


def ensure_can_cancel(access: BookingAccess | None, booking_id: UUID, user: User, now: datetime) -> bool:
    """``True`` when the booking must be cancelled now; ``False`` when it already is (cancel is idempotent)."""
    visible = ensure_visible(access, booking_id, user)
    booking = visible.booking
    if booking.guest_id != user.id:
        raise PermissionDenied("NOT_BOOKING_GUEST", "only the guest who booked can cancel a booking")
    if booking.state is State.CANCELLED:
        return False
    if now >= booking.event_start_time:
        raise already_started(booking.event_start_time)
    return True


def ensure_not_started(event: BookableEvent, now: datetime) -> None:
    if now >= event.start_time:
        raise already_started(event.start_time)


def already_started(start_time: datetime) -> FailedPrecondition:
    return FailedPrecondition(
        "EVENT_ALREADY_STARTED",
        "the event has started; bookings can only be cancelled before the start",
        metadata={"event_start_time": start_time.isoformat()},
    )


def event_moved(event: BookableEvent) -> Aborted:
    """The host changed the event's time while it was being booked (overlap and reminders used the old one)."""
    return Aborted("CONCURRENT_MODIFICATION", f"{event.name} changed while it was being booked; retry")


# --------------------------------------------------------------------------- attendance


@dataclass(frozen=True, slots=True)
class AttendanceTarget:
    """A booking as MarkAttendance sees it: with its event's state and the time it was held."""

    access: BookingAccess
    event_held: bool
    complete_time: datetime | None


def ensure_can_mark_attendance(
    target: AttendanceTarget | None, booking_id: UUID, user: User, now: datetime, period: timedelta
) -> None:
    """Only the host; only a held event; only a confirmed booking; until ``period`` after the event was held."""
    if target is None:
        raise errors.booking_not_found(names.booking(booking_id))
    visible = ensure_visible(target.access, booking_id, user)
    if user.id != visible.host_id:
        raise PermissionDenied("NOT_EVENT_HOST", "only the event's host can mark attendance")
    if not target.event_held or target.complete_time is None:
        raise FailedPrecondition("EVENT_NOT_HELD", "attendance can be marked once the host has marked the event held")
    if visible.booking.state is not State.CONFIRMED:
        raise FailedPrecondition("BOOKING_NOT_CONFIRMED", "only confirmed guests' attendance can be marked")
    closes = target.complete_time + period
    if now >= closes:
        raise FailedPrecondition(
            "ATTENDANCE_PERIOD_OVER",
            "attendance can no longer be changed for this event",
            metadata={"attendance_close_time": closes.isoformat()},
        )
