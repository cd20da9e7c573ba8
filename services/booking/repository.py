"""SQL of the booking transaction over booking.bookings, and the only writer of event.events.seats_taken (with
:mod:`services.booking.cascades`, which the EventService calls inside its own transactions).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from services.booking.domain import Attendance, AttendanceTarget, BookableEvent, Booking, BookingAccess, State
from services.common.dbtypes import Conn

# --------------------------------------------------------------------------- BookingService
#
# CreateBooking (services/booking/service.py):
#   EVENT_FOR_BOOKING, on its own (autocommit, no lock): everything a read can refuse is refused here, in one
#   round trip and without touching the event row's lock — in particular a sold-out event. A request arriving
#   while a write of its event is in flight skips it: it queues for the event's next batch, whose requests are read
#   together (EVENTS_FOR_BOOKING, one statement) just before their write.
#   Then CREATE_BOOKINGS: the whole write of one request or of a batch of one event's requests, one statement that
#   is its own transaction (the function booking.create_bookings). It takes the event row's lock near its end, so
#   the lock is held for server time and the commit only, once per batch. A hot event's throughput is bounded by
#   that hold time divided by the batch size.
#   A request-id retry goes statement by statement in a unit of work instead: idempotency claim → LOCK_GUEST →
#   users.remember → INSERT_BOOKING (refuses an overlap in the same statement) → outbox + reminders → idempotency
#   record → TAKE_SEATS (last, for the same reason) → COMMIT.

_EVENT_COLUMNS = """
    e.id, e.host_id, u.display_name AS host_display_name, e.title, e.film_title, e.start_time, e.end_time,
    e.time_zone, e.place_name, e.place_address, e.place_city, e.capacity, e.seats_taken, e.seats_held, e.visibility,
    e.state, e.invite_token
"""


# The event, whether the guest already holds a confirmed booking of it, and whether this caller already sent
# this request id to CreateBooking (then the request is a retry: it must go to idempotency.claim to be replayed,
# never be refused from this read). A plain MVCC read: never waits for the event row's lock.
def _guest_columns(guest: str, request_id: str) -> str:
    return f"""
    EXISTS (
        SELECT 1 FROM booking.bookings b WHERE b.event_id = e.id AND b.guest_id = {guest} AND b.state = 'CONFIRMED'
    ) AS already_booked,
    {request_id} IS NOT NULL AND EXISTS (
        SELECT 1 FROM idem.requests r
        WHERE r.caller_id = {guest} AND r.method = 'CreateBooking' AND r.request_id = {request_id}
    ) AS seen_request,
    (SELECT g.display_name FROM account.users g WHERE g.id = {guest}) AS guest_name"""


EVENT_FOR_BOOKING = f"""
SELECT {_EVENT_COLUMNS}, {_guest_columns("$2", "$3::uuid")}
FROM event.events e
JOIN account.users u ON u.id = e.host_id
WHERE e.id = $1
"""

# The same read for several requests of one event (a hot event's queued requests: one statement for the batch),
# one row per (guest, request id) pair in the order given; no row when the event doesn't exist.
EVENTS_FOR_BOOKING = f"""
SELECT {_EVENT_COLUMNS}, {_guest_columns("q.guest_id", "q.request_id")}
FROM unnest($2::text[], $3::uuid[]) WITH ORDINALITY AS q(guest_id, request_id, pos)
CROSS JOIN event.events e
JOIN account.users u ON u.id = e.host_id
WHERE e.id = $1
ORDER BY q.pos
"""

# Serialises one guest's bookings until the transaction ends, so that INSERT_BOOKING's overlap check (a later
# statement, hence a later snapshot) sees every other booking of the guest that could overlap. The first key
# names the lock's purpose so it can't collide with other advisory locks (a move of an event takes it too:
# cascades.LOCK_GUESTS).
GUEST_LOCK_CLASS = 0x0B00C  # "booking: one guest's bookings" (cascades' lock_guests_for_move takes it too)
LOCK_GUEST = f"SELECT pg_advisory_xact_lock({GUEST_LOCK_CLASS}, hashtext($1))"

EVENT_STATE = f"""
SELECT {_EVENT_COLUMNS}
FROM event.events e
JOIN account.users u ON u.id = e.host_id
WHERE e.id = $1
"""

# The booking row, unless the guest holds a confirmed booking of another scheduled event overlapping this one
# in time (half-open intervals: one ending at 20:00 doesn't overlap one starting at 20:00). No row returned →
# overlap. A second active booking of the same event hits bookings_one_active_per_guest instead.
# The overlap rule as a condition on ($2 event id, $3 guest id, $6 start, $7 end): also the waitlist's.
NO_OVERLAPPING_BOOKING = """NOT EXISTS (
    SELECT 1
    FROM booking.bookings b
    JOIN event.events e ON e.id = b.event_id
    WHERE b.guest_id = $3 AND b.state = 'CONFIRMED' AND b.event_id <> $2
      AND e.state = 'SCHEDULED' AND e.start_time < $7 AND e.end_time > $6
)"""

INSERT_BOOKING = f"""
INSERT INTO booking.bookings (id, event_id, guest_id, seats, state, create_time)
SELECT $1, $2, $3, $4, 'CONFIRMED', $5
WHERE {NO_OVERLAPPING_BOOKING}
RETURNING create_time
"""

OVERLAPPING_BOOKING = """
SELECT b.id
FROM booking.bookings b
JOIN event.events e ON e.id = b.event_id
WHERE b.guest_id = $1 AND b.state = 'CONFIRMED' AND b.event_id <> $2
  AND e.state = 'SCHEDULED' AND e.start_time < $4 AND e.end_time > $3
ORDER BY e.start_time, b.id
LIMIT 1
"""

# THE seat statement (docs/architecture.md, "Seats"): never more seats than capacity, whatever the concurrency;
# seats held for waitlist offers count as taken.
# Concurrent bookings of one event queue on its row lock and re-check the WHERE clause against the latest version; the
# CHECK (seats_taken BETWEEN 0 AND capacity) is the backstop. Returns the event's times as of the update: the
# service compares them with the ones its overlap check and reminders used (a concurrent reschedule aborts).
TAKE_SEATS = """
UPDATE event.events SET seats_taken = seats_taken + $2
WHERE id = $1 AND state = 'SCHEDULED' AND start_time > $3 AND seats_taken + seats_held + $2 <= capacity
RETURNING start_time, end_time
"""

_BOOKING_COLUMNS = """
    b.id, b.event_id, b.guest_id, b.seats, b.state, b.create_time, b.cancel_time, b.attendance,
    e.title AS event_title, e.start_time AS event_start_time, e.end_time AS event_end_time, e.host_id
"""

GET_BOOKING = f"""
SELECT {_BOOKING_COLUMNS}
FROM booking.bookings b
JOIN event.events e ON e.id = b.event_id
WHERE b.id = $1
"""

# CancelBooking locks the event row before touching its bookings and reminders, as EventService does.
LOCK_EVENT = f"""
SELECT {_EVENT_COLUMNS}
FROM event.events e
JOIN account.users u ON u.id = e.host_id
WHERE e.id = $1
FOR NO KEY UPDATE OF e
"""

MARK_CANCELLED = """
UPDATE booking.bookings SET state = 'CANCELLED', cancel_time = $2
WHERE id = $1 AND state = 'CONFIRMED'
RETURNING seats
"""

RELEASE_SEATS = """
UPDATE event.events SET seats_taken = seats_taken - $2
WHERE id = $1 AND state = 'SCHEDULED'
"""

# The caller's bookings ordered by the event's start, then booking id (keyset). Optional filters are NULL when
# unused; a guest has few bookings, so one static statement over bookings_by_guest is enough.
LIST_BOOKINGS = f"""
SELECT {_BOOKING_COLUMNS}
FROM booking.bookings b
JOIN event.events e ON e.id = b.event_id
WHERE b.guest_id = $1
  AND ($2::text IS NULL OR b.state = $2)
  AND ($3::boolean IS NULL OR (e.end_time > $4::timestamptz) = $3)
  AND ($5::timestamptz IS NULL OR (e.start_time, b.id) > ($5, $6::uuid))
ORDER BY e.start_time, b.id
LIMIT $7
"""


# The whole booking write of one or several requests for one event, in one statement and one round trip (run
# outside a transaction it is its own): migrations/20261202161000_create_bookings_function.sql says what it does
# and why it is a function. Requests are given in arrival order, one per guest.
CREATE_BOOKINGS = """
SELECT i, outcome, other_booking, seats_available, renamed
FROM booking.create_bookings($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12, $13)
"""


@dataclass(frozen=True, slots=True)
class NewBooking:
    """One request of a :func:`create_bookings` call."""

    booking_id: UUID
    guest_id: str
    guest_name: str
    seats: int
    request_id: UUID | None
    request_hash: bytes | None
    outbox: list[dict[str, object]]
    """Its outbox rows, keyed like notify.outbox's columns."""


@dataclass(frozen=True, slots=True)
class BookingOutcome:
    outcome: str  # BOOKED, REPLAY, ALREADY_BOOKED, OVERLAP, NO_SEATS, CLOSED, MOVED
    other_booking: UUID | None
    seats_available: int | None
    renamed: bool


def create_bookings_args(
    event: BookableEvent, now: datetime, batch: list[NewBooking], reminders: dict[str, float]
) -> tuple[object, ...]:
    """The arguments of CREATE_BOOKINGS (also the B4 benchmark's, which sends the same statement)."""
    outbox_rows = [{**row, "i": pos} for pos, b in enumerate(batch, 1) for row in b.outbox]
    return (
        event.id,
        now,
        event.start_time,
        event.end_time,
        [b.booking_id for b in batch],
        [b.guest_id for b in batch],
        [b.guest_name for b in batch],
        [b.seats for b in batch],
        [b.request_id for b in batch],
        [b.request_hash for b in batch],
        json.dumps(outbox_rows, sort_keys=True, default=str),
        list(reminders),
        list(reminders.values()),
    )


async def create_bookings(
    conn: Conn, event: BookableEvent, now: datetime, batch: list[NewBooking], reminders: dict[str, float]
) -> list[BookingOutcome]:
    """One outcome per request, in the order given."""
    rows = await conn.fetch(CREATE_BOOKINGS, *create_bookings_args(event, now, batch, reminders))
    return [BookingOutcome(r["outcome"], r["other_booking"], r["seats_available"], r["renamed"]) for r in rows]


def to_bookable_event(r: asyncpg.Record) -> BookableEvent:
    return BookableEvent(
        id=r["id"],
        host_id=r["host_id"],
        host_display_name=r["host_display_name"],
        title=r["title"],
        film_title=r["film_title"],
        start_time=r["start_time"],
        end_time=r["end_time"],
        time_zone=r["time_zone"],
        place_name=r["place_name"],
        place_address=r["place_address"],
        place_city=r["place_city"],
        capacity=r["capacity"],
        seats_taken=r["seats_taken"],
        seats_held=r["seats_held"],
        private=r["visibility"] == "PRIVATE",
        scheduled=r["state"] == "SCHEDULED",
        invite_token=r["invite_token"],
    )


def to_booking_access(r: asyncpg.Record) -> BookingAccess:
    booking = Booking(
        id=r["id"],
        event_id=r["event_id"],
        guest_id=r["guest_id"],
        seats=r["seats"],
        state=State(r["state"]),
        event_title=r["event_title"],
        event_start_time=r["event_start_time"],
        event_end_time=r["event_end_time"],
        create_time=r["create_time"],
        cancel_time=r["cancel_time"],
        attendance=Attendance(r["attendance"]) if r["attendance"] else None,
    )
    return BookingAccess(booking=booking, host_id=r["host_id"])


@dataclass(frozen=True, slots=True)
class EventForBooking:
    event: BookableEvent
    already_booked: bool  # the guest holds a confirmed booking of it
    seen_request: bool  # the caller already sent this request id to CreateBooking
    guest_name: str | None = None  # the caller's display name as cowatch last saw it (None: never seen)


async def event_for_booking(
    conn: Conn, event_id: UUID, guest_id: str, request_id: UUID | None
) -> EventForBooking | None:
    row = await conn.fetchrow(EVENT_FOR_BOOKING, event_id, guest_id, request_id)
    return _event_for_booking(row) if row is not None else None


async def events_for_booking(
    conn: Conn, event_id: UUID, requests: Sequence[tuple[str, UUID | None]]
) -> list[EventForBooking | None]:
    """:func:`event_for_booking` for several (guest, request id) pairs of one event, in one statement."""
    rows = await conn.fetch(
        EVENTS_FOR_BOOKING, event_id, [guest for guest, _ in requests], [request for _, request in requests]
    )
    if not rows:  # no such event
        return [None for _ in requests]
    return [_event_for_booking(row) for row in rows]


def _event_for_booking(row: asyncpg.Record) -> EventForBooking:
    return EventForBooking(
        to_bookable_event(row), bool(row["already_booked"]), bool(row["seen_request"]), row["guest_name"]
    )


async def lock_guest(conn: Conn, guest_id: str) -> None:
    await conn.execute(LOCK_GUEST, guest_id)


async def event_state(conn: Conn, event_id: UUID) -> BookableEvent | None:
    row = await conn.fetchrow(EVENT_STATE, event_id)
    return to_bookable_event(row) if row else None


class DuplicateBooking(Exception):
    """bookings_one_active_per_guest refused the row: the guest already holds a confirmed booking."""


async def insert_booking(
    conn: Conn, booking_id: UUID, event: BookableEvent, guest_id: str, seats: int, now: datetime
) -> datetime | None:
    """Insert a confirmed booking; ``None`` when it overlaps another of the guest's bookings.

    Raises :class:`DuplicateBooking` on a second active booking of the same event (the transaction is then
    aborted and must be rolled back).
    """
    try:
        created: datetime | None = await conn.fetchval(
            INSERT_BOOKING, booking_id, event.id, guest_id, seats, now, event.start_time, event.end_time
        )
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "bookings_one_active_per_guest":
            raise DuplicateBooking from None
        raise
    return created


async def overlapping_booking(conn: Conn, guest_id: str, event: BookableEvent) -> UUID | None:
    found: UUID | None = await conn.fetchval(OVERLAPPING_BOOKING, guest_id, event.id, event.start_time, event.end_time)
    return found


async def take_seats(conn: Conn, event_id: UUID, seats: int, now: datetime) -> tuple[datetime, datetime] | None:
    """The conditional UPDATE: the event's (start, end) as of the update, or ``None`` when it matched no row
    (full, or no longer open)."""
    row = await conn.fetchrow(TAKE_SEATS, event_id, seats, now)
    return (row["start_time"], row["end_time"]) if row else None


async def get_booking(conn: Conn, booking_id: UUID) -> BookingAccess | None:
    row = await conn.fetchrow(GET_BOOKING, booking_id)
    return to_booking_access(row) if row else None


async def lock_event(conn: Conn, event_id: UUID) -> BookableEvent | None:
    """The event, its row locked until the transaction ends."""
    row = await conn.fetchrow(LOCK_EVENT, event_id)
    return to_bookable_event(row) if row else None


async def mark_cancelled(conn: Conn, booking_id: UUID, now: datetime) -> int | None:
    """Confirmed → cancelled; the seats to give back, or ``None`` if it was not confirmed any more."""
    seats: int | None = await conn.fetchval(MARK_CANCELLED, booking_id, now)
    return seats


async def release_seats(conn: Conn, event_id: UUID, seats: int) -> None:
    await conn.execute(RELEASE_SEATS, event_id, seats)


@dataclass(frozen=True, slots=True)
class BookingQuery:
    guest_id: str
    state: State | None
    upcoming: bool | None  # True: event not ended at ``now``; False: ended; None: both
    now: datetime
    after: tuple[datetime, UUID] | None
    limit: int


async def list_bookings(conn: Conn, q: BookingQuery) -> list[BookingAccess]:
    after_time, after_id = q.after if q.after else (None, None)
    rows = await conn.fetch(
        LIST_BOOKINGS,
        q.guest_id,
        q.state.value if q.state else None,
        q.upcoming,
        q.now,
        after_time,
        after_id,
        q.limit,
    )
    return [to_booking_access(r) for r in rows]


# MarkAttendance: the booking with its event's state and completion time; the mark is a plain idempotent UPDATE.
ATTENDANCE_TARGET = f"""
SELECT {_BOOKING_COLUMNS}, e.state AS event_state, e.complete_time
FROM booking.bookings b
JOIN event.events e ON e.id = b.event_id
WHERE b.id = $1
"""

MARK_ATTENDANCE = """
UPDATE booking.bookings SET attendance = $2, attendance_time = $3
WHERE id = $1 AND state = 'CONFIRMED'
"""


async def attendance_target(conn: Conn, booking_id: UUID) -> AttendanceTarget | None:
    row = await conn.fetchrow(ATTENDANCE_TARGET, booking_id)
    if row is None:
        return None
    return AttendanceTarget(to_booking_access(row), row["event_state"] == "COMPLETED", row["complete_time"])


async def mark_attendance(conn: Conn, booking_id: UUID, attendance: Attendance, now: datetime) -> None:
    await conn.execute(MARK_ATTENDANCE, booking_id, attendance.value, now)
