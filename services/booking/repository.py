"""SQL over booking.bookings; the only writer of that table.

The EventService uses the functions in the "event cascades" section inside its own transactions (cancelling an
event cancels its bookings; the guest list; who may see a private event).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from services.common.dbtypes import Conn

# --------------------------------------------------------------------------- event cascades

HAS_CONFIRMED_BOOKING = """
SELECT EXISTS (
    SELECT 1 FROM booking.bookings WHERE event_id = $1 AND guest_id = $2 AND state = 'CONFIRMED'
)
"""


async def has_confirmed_booking(conn: Conn, event_id: UUID, guest_id: str) -> bool:
    return bool(await conn.fetchval(HAS_CONFIRMED_BOOKING, event_id, guest_id))


CONFIRMED_GUEST_IDS = """
SELECT guest_id FROM booking.bookings WHERE event_id = $1 AND state = 'CONFIRMED' ORDER BY create_time, id
"""


async def confirmed_guest_ids(conn: Conn, event_id: UUID) -> list[str]:
    return [r["guest_id"] for r in await conn.fetch(CONFIRMED_GUEST_IDS, event_id)]


CANCEL_ALL_FOR_EVENT = """
UPDATE booking.bookings SET state = 'CANCELLED', cancel_time = $2
WHERE event_id = $1 AND state = 'CONFIRMED'
RETURNING guest_id
"""


async def cancel_all_for_event(conn: Conn, event_id: UUID, now: datetime) -> list[str]:
    """Cancel every confirmed booking of an event (the event is being cancelled); returns the guests' ids."""
    return [r["guest_id"] for r in await conn.fetch(CANCEL_ALL_FOR_EVENT, event_id, now)]


@dataclass(frozen=True, slots=True)
class GuestRow:
    booking_id: UUID
    guest_id: str
    display_name: str
    seats: int
    book_time: datetime
    rating_sum: int
    rating_count: int


LIST_GUESTS = """
SELECT b.id, b.guest_id, u.display_name, b.seats, b.create_time,
       coalesce(r.rating_sum, 0) AS rating_sum, coalesce(r.rating_count, 0) AS rating_count
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
            rating_sum=r["rating_sum"],
            rating_count=r["rating_count"],
        )
        for r in rows
    ]
