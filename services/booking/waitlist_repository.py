"""SQL of the waitlist (booking.waitlist) and of held seats (event.events.seats_held).

Every statement that changes seats_held runs with the event row locked (``repository.lock_event``), so offers,
claims, declines, expiries and cancellations of one event happen one after another, and each sees what the
previous one committed. The conditional statements below re-check the entry's state, so an offer is expired,
claimed or declined exactly once whoever tries.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

import asyncpg

from services.booking.repository import NO_OVERLAPPING_BOOKING
from services.booking.waitlist import Ended, EntryState, Offer, OfferWarning, WaitlistEntry
from services.common.dbtypes import Conn
from services.common.vocabulary import Rating, Reliability

_ENTRY_COLUMNS = """
    w.id, w.seq, w.event_id, e.host_id, w.guest_id, u.display_name AS guest_display_name, w.seats, w.state,
    w.create_time, w.update_time, w.offer_time, w.offer_expire_time, w.booking_id,
    CASE WHEN w.state IN ('WAITING', 'OFFERED') THEN (
        SELECT count(*) FROM booking.waitlist o
        WHERE o.event_id = w.event_id AND o.state IN ('WAITING', 'OFFERED') AND o.seq <= w.seq
    ) ELSE 0 END AS position
"""
_ENTRY_FROM = """
FROM booking.waitlist w
JOIN event.events e ON e.id = w.event_id
JOIN account.users u ON u.id = w.guest_id
"""

GET_ENTRY = f"SELECT {_ENTRY_COLUMNS} {_ENTRY_FROM} WHERE w.id = $1"

OPEN_ENTRY = f"""
SELECT {_ENTRY_COLUMNS} {_ENTRY_FROM}
WHERE w.event_id = $1 AND w.guest_id = $2 AND w.state IN ('WAITING', 'OFFERED')
"""

# The entry, unless the guest holds a confirmed booking of another scheduled event overlapping this one (the same
# rule as INSERT_BOOKING). No row → overlap; a second open entry hits waitlist_one_open_per_guest.
INSERT_ENTRY = f"""
INSERT INTO booking.waitlist (id, event_id, guest_id, seats, state, create_time, update_time)
SELECT $1, $2, $3, $4, 'WAITING', $5, $5
WHERE {NO_OVERLAPPING_BOOKING}
RETURNING id
"""

# Reliability of a guest from the hosts' attendance marks.
RELIABILITY_COLUMNS = """
(SELECT count(*) FILTER (WHERE a.attendance = 'ATTENDED') FROM booking.bookings a
 WHERE a.guest_id = {g} AND a.attendance IS NOT NULL) AS attended,
(SELECT count(*) FILTER (WHERE a.attendance = 'NO_SHOW') FROM booking.bookings a
 WHERE a.guest_id = {g} AND a.attendance IS NOT NULL) AS no_show
"""

LIST_ENTRIES = f"""
SELECT {_ENTRY_COLUMNS},
       coalesce(r.rating_sum, 0) AS rating_sum, coalesce(r.rating_count, 0) AS rating_count,
       {RELIABILITY_COLUMNS.format(g="w.guest_id")}
{_ENTRY_FROM}
LEFT JOIN review.user_ratings r ON r.user_id = w.guest_id AND r.role = 'GUEST'
WHERE w.event_id = $1 AND w.state IN ('WAITING', 'OFFERED') AND ($2::bigint IS NULL OR w.seq > $2)
ORDER BY w.seq
LIMIT $3
"""


# One offer: the first waiting entry (join order) whose seats fit in what is bookable now, its seats held in the
# same statement. The event row is locked by the caller; the CHECK on seats_taken + seats_held is the backstop.
OFFER_NEXT = """
WITH ev AS (
    SELECT capacity - seats_taken - seats_held AS free, start_time
    FROM event.events
    WHERE id = $1 AND state = 'SCHEDULED' AND start_time > $2 AND capacity - seats_taken - seats_held > 0
), pick AS (
    SELECT w.id FROM booking.waitlist w, ev
    WHERE w.event_id = $1 AND w.state = 'WAITING' AND w.seats <= ev.free
      AND NOT EXISTS (  -- a guest who booked meanwhile (CreateBooking) is not offered seats again
          SELECT 1 FROM booking.bookings b WHERE b.event_id = $1 AND b.guest_id = w.guest_id AND b.state = 'CONFIRMED'
      )
    ORDER BY w.seq
    LIMIT 1
), offered AS (
    UPDATE booking.waitlist w
    SET state = 'OFFERED', offer_time = $2, offer_expire_time = least($2 + $3::interval, ev.start_time),
        offer_warned = false, update_time = $2
    FROM pick, ev
    WHERE w.id = pick.id AND w.state = 'WAITING'
    RETURNING w.id, w.guest_id, w.seats, w.offer_expire_time
), held AS (
    UPDATE event.events e SET seats_held = e.seats_held + o.seats FROM offered o WHERE e.id = $1
)
SELECT o.id, o.guest_id, o.seats, o.offer_expire_time, ev.free - o.seats AS still_free FROM offered o, ev
"""

# An open offer ends (declined, left, expired): state change and seats back in one statement, exactly once.
END_OFFER = """
WITH ended AS (
    UPDATE booking.waitlist SET state = $3, update_time = $4
    WHERE id = $1 AND event_id = $2 AND state = 'OFFERED' AND ($5::boolean IS FALSE OR offer_expire_time <= $4)
    RETURNING id, guest_id, seats
), released AS (
    UPDATE event.events e SET seats_held = e.seats_held - (SELECT coalesce(sum(seats), 0) FROM ended)
    WHERE e.id = $2 AND EXISTS (SELECT 1 FROM ended)
)
SELECT id, guest_id, seats FROM ended
"""

# A guest who books the event directly stops waiting for it (an OFFERED entry keeps its seats until it is
# declined or expires: releasing them needs the event row's lock, which CreateBooking takes only last).
LEAVE_ON_BOOKING = """
UPDATE booking.waitlist SET state = 'LEFT', update_time = $3
WHERE event_id = $1 AND guest_id = $2 AND state = 'WAITING'
"""

LEAVE_WAITING = """
UPDATE booking.waitlist SET state = 'LEFT', update_time = $2
WHERE id = $1 AND state = 'WAITING'
RETURNING id
"""

# A claimed offer: held seats become taken seats, the entry points at its booking.
CLAIM = """
WITH claimed AS (
    UPDATE booking.waitlist SET state = 'CLAIMED', booking_id = $3, update_time = $4
    WHERE id = $1 AND event_id = $2 AND state = 'OFFERED' AND offer_expire_time > $4
    RETURNING seats
)
UPDATE event.events e
SET seats_held = e.seats_held - c.seats, seats_taken = e.seats_taken + c.seats
FROM claimed c
WHERE e.id = $2 AND e.state = 'SCHEDULED' AND e.start_time > $4
RETURNING e.start_time, e.end_time
"""

# Entries of an event ending with it (cancelled, or started): every open entry closes, held seats go to 0.
CLOSE_ALL = """
WITH closed AS (
    UPDATE booking.waitlist SET state = 'CLOSED', update_time = $2
    WHERE event_id = $1 AND state IN ('WAITING', 'OFFERED')
    RETURNING id, guest_id, seats, state
), released AS (
    UPDATE event.events SET seats_held = 0 WHERE id = $1 AND seats_held <> 0
)
SELECT id, guest_id, seats FROM closed
"""

# A moved event keeps its entries; an open offer never outlives the (new) start, and is never extended.
RETIME_OFFERS = """
UPDATE booking.waitlist SET offer_expire_time = $2, update_time = $3
WHERE event_id = $1 AND state = 'OFFERED' AND offer_expire_time > $2
"""

# The sweep: events with an offer past its deadline, events started with open entries, offers to warn.
DUE_EVENTS = """
SELECT DISTINCT event_id FROM (
    (SELECT w.event_id FROM booking.waitlist w
     WHERE w.state = 'OFFERED' AND w.offer_expire_time <= $1
     ORDER BY w.offer_expire_time LIMIT $2)
    UNION ALL
    (SELECT w.event_id FROM booking.waitlist w JOIN event.events e ON e.id = w.event_id
     WHERE w.state = 'WAITING' AND e.start_time <= $1 LIMIT $2)
) due
"""

DUE_OFFERS_OF_EVENT = """
SELECT id FROM booking.waitlist
WHERE event_id = $1 AND state = 'OFFERED' AND offer_expire_time <= $2
ORDER BY seq
"""

# "Your offer closes soon": once per offer, in the last quarter of its window.
WARN_DUE = """
UPDATE booking.waitlist SET offer_warned = true
WHERE id IN (
    SELECT id FROM booking.waitlist
    WHERE state = 'OFFERED' AND NOT offer_warned
      AND offer_expire_time - (offer_expire_time - offer_time) / 4 <= $1 AND offer_expire_time > $1
    ORDER BY offer_expire_time
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
RETURNING id, event_id, guest_id, seats, offer_expire_time
"""

WAITLIST_LOCK_CLASS = 0x0B0FF  # "booking: one event's offer sweep"
TRY_LOCK_EVENT_SWEEP = f"SELECT pg_try_advisory_xact_lock({WAITLIST_LOCK_CLASS}, hashtext($1::text))"


def to_entry(r: asyncpg.Record, *, with_guest_figures: bool = False) -> WaitlistEntry:
    return WaitlistEntry(
        id=r["id"],
        seq=r["seq"],
        event_id=r["event_id"],
        host_id=r["host_id"],
        guest_id=r["guest_id"],
        guest_display_name=r["guest_display_name"],
        seats=r["seats"],
        state=EntryState(r["state"]),
        position=r["position"],
        create_time=r["create_time"],
        update_time=r["update_time"],
        offer_time=r["offer_time"],
        offer_expire_time=r["offer_expire_time"],
        booking_id=r["booking_id"],
        guest_rating=Rating.of(r["rating_sum"], r["rating_count"]) if with_guest_figures else None,
        guest_reliability=Reliability(r["attended"], r["no_show"]) if with_guest_figures else None,
    )


class DuplicateEntry(Exception):
    """waitlist_one_open_per_guest refused the row."""


async def get_entry(conn: Conn, entry_id: UUID) -> WaitlistEntry | None:
    row = await conn.fetchrow(GET_ENTRY, entry_id)
    return to_entry(row) if row else None


async def open_entry(conn: Conn, event_id: UUID, guest_id: str) -> WaitlistEntry | None:
    row = await conn.fetchrow(OPEN_ENTRY, event_id, guest_id)
    return to_entry(row) if row else None


async def insert_entry(
    conn: Conn,
    entry_id: UUID,
    event_id: UUID,
    guest_id: str,
    seats: int,
    now: datetime,
    window: tuple[datetime, datetime],
) -> bool:
    """``False`` when the event overlaps a confirmed booking of the guest; :class:`DuplicateEntry` on a second
    open entry."""
    try:
        found = await conn.fetchval(INSERT_ENTRY, entry_id, event_id, guest_id, seats, now, *window)
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "waitlist_one_open_per_guest":
            raise DuplicateEntry from None
        raise
    return found is not None


async def list_entries(conn: Conn, event_id: UUID, after_seq: int | None, limit: int) -> list[WaitlistEntry]:
    rows = await conn.fetch(LIST_ENTRIES, event_id, after_seq, limit)
    return [to_entry(r, with_guest_figures=True) for r in rows]


async def offer_free_seats(conn: Conn, event_id: UUID, now: datetime, window: timedelta) -> list[Offer]:
    """Offer what is bookable now to the waiting entries, in join order, first fit; the event row must be locked.

    Stops as soon as no seat is left (no statement then scans a long queue for nothing)."""
    offers: list[Offer] = []
    while True:
        row = await conn.fetchrow(OFFER_NEXT, event_id, now, window)
        if row is None:
            return offers
        offers.append(Offer(row["id"], row["guest_id"], row["seats"], row["offer_expire_time"]))
        if row["still_free"] <= 0:
            return offers


async def end_offer(
    conn: Conn, event_id: UUID, entry_id: UUID, state: EntryState, now: datetime, *, only_if_due: bool = False
) -> Ended | None:
    """OFFERED → ``state`` and the held seats released, exactly once; ``None`` if the entry was not offered (or,
    with ``only_if_due``, its deadline has not passed)."""
    row = await conn.fetchrow(END_OFFER, entry_id, event_id, state.value, now, only_if_due)
    return Ended(row["id"], row["guest_id"], row["seats"]) if row else None


async def leave_on_booking(conn: Conn, event_id: UUID, guest_id: str, now: datetime) -> None:
    await conn.execute(LEAVE_ON_BOOKING, event_id, guest_id, now)


async def leave_waiting(conn: Conn, entry_id: UUID, now: datetime) -> bool:
    return await conn.fetchval(LEAVE_WAITING, entry_id, now) is not None


async def claim(
    conn: Conn, event_id: UUID, entry_id: UUID, booking_id: UUID, now: datetime
) -> tuple[datetime, datetime] | None:
    """Held → taken seats; the event's (start, end), or ``None`` when the offer or the event is no longer open."""
    row = await conn.fetchrow(CLAIM, entry_id, event_id, booking_id, now)
    return (row["start_time"], row["end_time"]) if row else None


async def close_all(conn: Conn, event_id: UUID, now: datetime) -> list[Ended]:
    rows = await conn.fetch(CLOSE_ALL, event_id, now)
    return [Ended(r["id"], r["guest_id"], r["seats"]) for r in rows]


async def retime_offers(conn: Conn, event_id: UUID, new_start: datetime, now: datetime) -> None:
    await conn.execute(RETIME_OFFERS, event_id, new_start, now)


async def due_events(conn: Conn, now: datetime, limit: int) -> list[UUID]:
    return [r["event_id"] for r in await conn.fetch(DUE_EVENTS, now, limit)]


async def due_offers(conn: Conn, event_id: UUID, now: datetime) -> list[UUID]:
    return [r["id"] for r in await conn.fetch(DUE_OFFERS_OF_EVENT, event_id, now)]


async def try_lock_sweep(conn: Conn, event_id: UUID) -> bool:
    return bool(await conn.fetchval(TRY_LOCK_EVENT_SWEEP, str(event_id)))


async def warn_due(conn: Conn, now: datetime, limit: int) -> list[OfferWarning]:
    rows = await conn.fetch(WARN_DUE, now, limit)
    return [OfferWarning(r["id"], r["event_id"], r["guest_id"], r["seats"], r["offer_expire_time"]) for r in rows]
