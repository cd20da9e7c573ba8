"""The bookings side of event actions, run inside the EventService's transaction (the event → booking port).

Cancelling an event cancels its bookings and gives their seats back; the host's guest list; who the confirmed
guests are (they get the event's change and cancellation mails; they may see a private event); when an event
moves, which of its guests' other bookings it now overlaps (:func:`lock_guests_for_move`, :func:`overlaps`).
Everything the event domain reads from or writes to booking.bookings and event.events.seats_taken goes through
here, so the booking domain stays the one writer of both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

from services.booking import notifications, waitlist
from services.booking import repository as bookings
from services.booking import waitlist_repository as entries
from services.booking.domain_events import WaitlistChanged
from services.booking.eligibility import has_confirmed_booking
from services.common.dbtypes import Conn
from services.common.vocabulary import Rating, Reliability
from services.notification import outbox

__all__ = [
    "GuestRow",
    "Overlap",
    "after_event_update",
    "cancel_all_for_event",
    "confirmed_guest_ids",
    "has_confirmed_booking",
    "list_guests",
    "lock_guests_for_move",
    "overlaps",
]

CONFIRMED_GUEST_IDS = """
SELECT guest_id FROM booking.bookings WHERE event_id = $1 AND state = 'CONFIRMED' ORDER BY create_time, id
"""


async def confirmed_guest_ids(conn: Conn, event_id: UUID) -> list[str]:
    return [r["guest_id"] for r in await conn.fetch(CONFIRMED_GUEST_IDS, event_id)]


# The booking lock of every confirmed guest (the one CreateBooking takes before its overlap check), in one fixed
# order (so two moves sharing guests can't deadlock). Until the move's transaction ends, none of them can book
# anything: a booking racing the move either sees the new time (and is refused as an overlap) or committed first
# (and the move sees it in overlaps()).
GUEST_LOCK_CLASS = bookings.GUEST_LOCK_CLASS  # "booking: one guest's bookings" (the repository's LOCK_GUEST)
LOCK_GUESTS = f"""
SELECT count(pg_advisory_xact_lock({GUEST_LOCK_CLASS}, k))
FROM (
    SELECT DISTINCT hashtext(guest_id) AS k FROM booking.bookings WHERE event_id = $1 AND state = 'CONFIRMED'
    ORDER BY k
) AS guests
"""

# For each confirmed guest of the (already moved) event: their confirmed bookings of other scheduled events that
# now overlap it (half-open intervals, as in the booking's own overlap check).
OVERLAPS = """
SELECT b.guest_id, o.id AS booking_id, e.id AS event_id, e.title, e.start_time, e.end_time
FROM booking.bookings b
JOIN event.events moved ON moved.id = b.event_id
JOIN booking.bookings o ON o.guest_id = b.guest_id AND o.state = 'CONFIRMED' AND o.event_id <> b.event_id
JOIN event.events e ON e.id = o.event_id
WHERE b.event_id = $1 AND b.state = 'CONFIRMED'
  AND e.state = 'SCHEDULED' AND e.start_time < moved.end_time AND e.end_time > moved.start_time
ORDER BY b.guest_id, e.start_time, o.id
"""


@dataclass(frozen=True, slots=True)
class Overlap:
    """A guest's other booking that a moved event now overlaps."""

    guest_id: str
    booking_id: UUID
    event_id: UUID
    event_title: str
    start_time: datetime
    end_time: datetime


async def lock_guests_for_move(conn: Conn, event_id: UUID) -> None:
    """Before an event's time changes: no confirmed guest of it can book anything until this transaction ends."""
    await conn.fetchval(LOCK_GUESTS, event_id)


async def overlaps(conn: Conn, event_id: UUID) -> list[Overlap]:
    """After an event's time changed (guests locked first): the guests' bookings it now overlaps."""
    return [
        Overlap(r["guest_id"], r["booking_id"], r["event_id"], r["title"], r["start_time"], r["end_time"])
        for r in await conn.fetch(OVERLAPS, event_id)
    ]


# One statement: the bookings and the seats they held go together (the event row is already locked by the caller).
CANCEL_ALL_FOR_EVENT = """
WITH cancelled AS (
    UPDATE booking.bookings SET state = 'CANCELLED', cancel_time = $2
    WHERE event_id = $1 AND state = 'CONFIRMED'
    RETURNING guest_id
), freed AS (
    UPDATE event.events SET seats_taken = 0 WHERE id = $1 AND seats_taken <> 0
)
SELECT guest_id FROM cancelled
"""


async def cancel_all_for_event(
    conn: Conn, event_id: UUID, now: datetime, *, public_base_url: str = "", trace_id: str = ""
) -> list[str]:
    """Cancel every confirmed booking of an event being cancelled and free its seats; returns the guests' ids.

    Its waitlist ends too: every open entry is closed, held seats go back, and each waiting guest is mailed.
    """
    guests = [r["guest_id"] for r in await conn.fetch(CANCEL_ALL_FOR_EVENT, event_id, now)]
    closed = await entries.close_all(conn, event_id, now)
    if closed:
        event = await bookings.event_state(conn, event_id)
        assert event is not None
        change = WaitlistChanged(event_id, True, event, closed=tuple(closed), close_reason="the event was cancelled")
        await _mail(conn, change, public_base_url, trace_id)
    return guests


async def after_event_update(
    conn: Conn,
    event_id: UUID,
    now: datetime,
    *,
    public_base_url: str = "",
    trace_id: str = "",
    claim_window: timedelta = waitlist.DEFAULT_CLAIM_WINDOW,
) -> None:
    """After the host edited an event (its row locked): open offers never outlive a moved start (an offer's
    deadline is pulled in to the new start, never pushed out), and seats a raised capacity freed are offered to
    the waitlist, mailed."""
    event = await bookings.event_state(conn, event_id)
    assert event is not None
    await entries.retime_offers(conn, event_id, event.start_time, now)
    offers = await entries.offer_free_seats(conn, event_id, now, claim_window)
    if offers:
        await _mail(conn, WaitlistChanged(event_id, True, event, offers=tuple(offers)), public_base_url, trace_id)


async def _mail(conn: Conn, change: WaitlistChanged, public_base_url: str, trace_id: str) -> None:
    await outbox.enqueue_many(conn, notifications.waitlist_messages(change, public_base_url), request_id=trace_id)


@dataclass(frozen=True, slots=True)
class GuestRow:
    booking_id: UUID
    guest_id: str
    display_name: str
    seats: int
    book_time: datetime
    rating: Rating
    """The guest's rating as a guest."""
    reliability: Reliability = field(default_factory=Reliability)
    """How reliably the guest comes (hosts' attendance marks)."""


LIST_GUESTS = f"""
SELECT b.id, b.guest_id, u.display_name, b.seats, b.create_time,
       coalesce(r.rating_sum, 0) AS rating_sum, coalesce(r.rating_count, 0) AS rating_count,
       {entries.RELIABILITY_COLUMNS.format(g="b.guest_id")}
FROM booking.bookings b
JOIN account.users u ON u.id = b.guest_id
LEFT JOIN review.user_ratings r ON r.user_id = b.guest_id AND r.role = 'GUEST'
WHERE b.event_id = $1 AND b.state = 'CONFIRMED'
  AND ($2::timestamptz IS NULL OR (b.create_time, b.id) > ($2, $3::uuid))
ORDER BY b.create_time, b.id
LIMIT $4
"""


async def list_guests(conn: Conn, event_id: UUID, after: tuple[datetime, UUID] | None, limit: int) -> list[GuestRow]:
    after_time, after_id = after if after else (None, None)
    rows = await conn.fetch(LIST_GUESTS, event_id, after_time, after_id, limit)
    return [
        GuestRow(
            booking_id=r["id"],
            guest_id=r["guest_id"],
            display_name=r["display_name"],
            seats=r["seats"],
            book_time=r["create_time"],
            rating=Rating.of(r["rating_sum"], r["rating_count"]),
            reliability=Reliability(r["attended"], r["no_show"]),
        )
        for r in rows
    ]
