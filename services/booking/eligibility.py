"""What other domains may ask about bookings, inside their own transaction (the booking → others port).

ReviewService: "did the caller book this private event?" (may they see its reviews), and a user's reliability as a
guest (GetUserRating). EventService uses it
through :mod:`services.booking.cascades`.
"""

from __future__ import annotations

from uuid import UUID

from services.common.dbtypes import Conn
from services.common.vocabulary import Reliability

HAS_CONFIRMED_BOOKING = """
SELECT EXISTS (
    SELECT 1 FROM booking.bookings WHERE event_id = $1 AND guest_id = $2 AND state = 'CONFIRMED'
)
"""


# Attended / no-show marks of a guest, over bookings_attendance_by_guest.
RELIABILITY = """
SELECT count(*) FILTER (WHERE attendance = 'ATTENDED') AS attended,
       count(*) FILTER (WHERE attendance = 'NO_SHOW') AS no_show
FROM booking.bookings WHERE guest_id = $1 AND attendance IS NOT NULL
"""


async def reliability(conn: Conn, guest_id: str) -> Reliability:
    """How reliably ``guest_id`` comes to events they booked ("no history" without marks)."""
    row = await conn.fetchrow(RELIABILITY, guest_id)
    return Reliability(row["attended"], row["no_show"]) if row else Reliability()


async def has_confirmed_booking(conn: Conn, event_id: UUID, guest_id: str) -> bool:
    return bool(await conn.fetchval(HAS_CONFIRMED_BOOKING, event_id, guest_id))
