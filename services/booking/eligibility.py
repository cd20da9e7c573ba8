"""What other domains may ask about bookings, inside their own transaction (the booking → others port).

ReviewService: "did the caller book this private event?" (may they see its reviews). EventService uses it
through :mod:`services.booking.cascades`.
"""

from __future__ import annotations

from uuid import UUID

from services.common.dbtypes import Conn

HAS_CONFIRMED_BOOKING = """
SELECT EXISTS (
    SELECT 1 FROM booking.bookings WHERE event_id = $1 AND guest_id = $2 AND state = 'CONFIRMED'
)
"""


async def has_confirmed_booking(conn: Conn, event_id: UUID, guest_id: str) -> bool:
    return bool(await conn.fetchval(HAS_CONFIRMED_BOOKING, event_id, guest_id))
