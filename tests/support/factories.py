"""Builders of valid requests for API tests; each test overrides what it is about."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import asyncpg
from cowatch.event.v1 import resources_pb2, service_pb2
from google.protobuf import duration_pb2, timestamp_pb2

from tests.support.api import Caller


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def event_msg(
    now: datetime,
    *,
    start_in: timedelta = timedelta(days=3),
    minutes: int = 120,
    capacity: int = 6,
    private: bool = False,
    title: str = "Solaris night",
    film_id: str = "tt0069293",
    film_title: str = "Solaris",
    city: str = "Berlin",
    time_zone: str = "Europe/Berlin",
) -> resources_pb2.Event:
    return resources_pb2.Event(
        film=resources_pb2.Film(id=film_id, title=film_title),
        title=title,
        description="Bring snacks.",
        start_time=ts(now + start_in),
        time_zone=time_zone,
        duration=duration_pb2.Duration(seconds=minutes * 60),
        place=resources_pb2.Place(name="Anna's living room", address="Torstr. 1, 10119", city=city),
        capacity=capacity,
        visibility=resources_pb2.Event.PRIVATE if private else resources_pb2.Event.PUBLIC,
    )


def create_request(now: datetime, **kwargs: object) -> service_pb2.CreateEventRequest:
    return service_pb2.CreateEventRequest(event=event_msg(now, **kwargs))  # type: ignore[arg-type]


async def known_users(pool: asyncpg.Pool, *callers: Caller) -> None:
    """Make ``callers`` users cowatch has seen (as after their first write), e.g. so they can be invited."""
    await pool.executemany(
        "INSERT INTO account.users (id, display_name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        [(c.id, c.name) for c in callers],
    )


async def book_directly(pool: asyncpg.Pool, event_name: str, guest: Caller, seats: int = 1) -> uuid.UUID:
    """Seat a guest the way BookingService does (same statements), for event tests that need guests."""
    event_id = uuid.UUID(event_name.split("/")[1])
    booking_id = uuid.uuid4()
    await known_users(pool, guest)
    async with pool.acquire() as conn, conn.transaction():
        updated = await conn.fetchval(
            "UPDATE event.events SET seats_taken = seats_taken + $2 "
            "WHERE id = $1 AND seats_taken + $2 <= capacity RETURNING seats_taken",
            event_id,
            seats,
        )
        assert updated is not None, "event full"
        await conn.execute(
            "INSERT INTO booking.bookings (id, event_id, guest_id, seats) VALUES ($1, $2, $3, $4)",
            booking_id,
            event_id,
            guest.id,
            seats,
        )
    return booking_id
