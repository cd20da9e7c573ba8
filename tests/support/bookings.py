"""Helpers for BookingService tests: events to book, requests, and what the database holds afterwards."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
from cowatch.booking.v1 import resources_pb2 as booking_pb2
from cowatch.booking.v1 import service_pb2 as booking_service_pb2
from cowatch.event.v1 import resources_pb2 as event_pb2
from cowatch.event.v1 import service_pb2_grpc as event_grpc

from services.common.clock import Clock
from tests.support.api import Caller, new_caller
from tests.support.factories import create_request


async def new_event(
    events: event_grpc.EventServiceAsyncStub, clock: Clock, host: Caller | None = None, **kwargs: Any
) -> event_pb2.Event:
    """A fresh event (EventService, real server) hosted by ``host`` or a new user; kwargs as ``event_msg``."""
    host = host or new_caller("Host")
    return await events.CreateEvent(create_request(clock.now(), **kwargs), metadata=host.metadata)


def book(
    event: str | event_pb2.Event, seats: int = 0, *, request_id: str = "", invite_token: str = ""
) -> booking_service_pb2.CreateBookingRequest:
    name = event if isinstance(event, str) else event.name
    return booking_service_pb2.CreateBookingRequest(
        booking=booking_pb2.Booking(event=name, seats=seats), request_id=request_id, invite_token=invite_token
    )


def cancel(booking: str | booking_pb2.Booking, *, request_id: str = "") -> booking_service_pb2.CancelBookingRequest:
    name = booking if isinstance(booking, str) else booking.name
    return booking_service_pb2.CancelBookingRequest(name=name, request_id=request_id)


def uid(name: str) -> uuid.UUID:
    """``events/{uuid}`` / ``bookings/{uuid}`` → the UUID."""
    return uuid.UUID(name.split("/", 1)[1])


async def seat_counts(pool: asyncpg.Pool, event: str) -> tuple[int, int, int]:
    """(seats_taken on the event row, sum of confirmed bookings' seats, number of confirmed bookings)."""
    row = await pool.fetchrow(
        "SELECT e.seats_taken, coalesce(sum(b.seats) FILTER (WHERE b.state = 'CONFIRMED'), 0) AS booked, "
        "count(b.id) FILTER (WHERE b.state = 'CONFIRMED') AS n "
        "FROM event.events e LEFT JOIN booking.bookings b ON b.event_id = e.id WHERE e.id = $1 GROUP BY e.id",
        uid(event),
    )
    assert row is not None
    return row["seats_taken"], row["booked"], row["n"]


async def outbox_for(pool: asyncpg.Pool, booking: str) -> dict[str, dict[str, Any]]:
    """Outbox rows about ``booking``, by template: {template: {"recipients": [...], "params": {...}}}."""
    rows = await pool.fetch(
        "SELECT template_id, recipients, params FROM notify.outbox WHERE params->>'booking' = $1 ORDER BY id", booking
    )
    return {r["template_id"]: {"recipients": list(r["recipients"]), "params": json.loads(r["params"])} for r in rows}


async def reminders_for(pool: asyncpg.Pool, event: str, user_id: str) -> dict[str, str]:
    """{kind: state} of the reminders of ``user_id`` for ``event``."""
    rows = await pool.fetch(
        "SELECT kind, state FROM notify.reminders WHERE event_id = $1 AND recipient_id = $2", uid(event), user_id
    )
    return {r["kind"]: r["state"] for r in rows}
