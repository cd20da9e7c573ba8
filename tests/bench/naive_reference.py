"""The fixed naive reference of B4 and B5: what a straightforward booking endpoint costs, with no RPC layer at all.

Per booking, one transaction over asyncpg: a conditional ``UPDATE`` of the event's seat counter (it succeeds only
while the seats fit: the row lock it takes is the whole concurrency control) and a plain ``INSERT`` of the booking
row into the real schema (a valid, CONFIRMED row: the guest exists, the event exists, the CHECK constraints hold).
No idempotency, no guest lock, no overlap rule, no outbox, no reminders: four round trips (BEGIN, UPDATE, INSERT,
COMMIT) on a pooled connection.

**This module must stay unchanged from now on.** The goals of B4 ("uncontended booking ≥ 0.8× the naive
reference") and B5 ("a hot event sells out at least as fast as per-request UPDATE + INSERT") are ratios against it;
unlike B4's mirror baseline, which replays whatever SQL the service sends and so gets cheaper whenever the service
does, this reference is a fixed yardstick. Making it faster or slower would move every goal; a new yardstick would
be a new module with new goals.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg
from asyncpg.pool import PoolConnectionProxy

TAKE_SEATS = """
UPDATE event.events SET seats_taken = seats_taken + $2
WHERE id = $1 AND seats_taken + $2 <= capacity
"""

INSERT_BOOKING = """
INSERT INTO booking.bookings (id, event_id, guest_id, seats, state, create_time)
VALUES ($1, $2, $3, $4, 'CONFIRMED', now())
"""


async def book(conn: asyncpg.Connection | PoolConnectionProxy, event_id: uuid.UUID, guest_id: str, seats: int) -> bool:
    """Book ``seats`` of ``event_id`` for ``guest_id`` (an existing user) in one transaction; False when they no
    longer fit (nothing written)."""
    async with conn.transaction():
        if await conn.execute(TAKE_SEATS, event_id, seats) != "UPDATE 1":
            return False
        await conn.execute(INSERT_BOOKING, uuid.uuid4(), event_id, guest_id, seats)
    return True


async def create_guests(pool: asyncpg.Pool, guest_ids: Sequence[str]) -> None:
    """The guests' user rows (the reference books for existing users; creating them is not part of its cost)."""
    async with pool.acquire() as conn:
        await conn.copy_records_to_table(
            "users", schema_name="account", columns=["id", "display_name"], records=[(g, "Guest") for g in guest_ids]
        )
