"""Bookings and EventService's Redis cache: a seat change shows on the next GetEvent/ListEvents at once.

EventService caches event rows (seats included) in Redis; BookingService invalidates them when a booking or a
cancellation commits. Both servers here share one Redis (under this session's key prefix) and the database.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
import pytest_asyncio
from cowatch.booking.v1 import service_pb2_grpc as booking_grpc
from cowatch.event.v1 import service_pb2 as event_service_pb2
from cowatch.event.v1 import service_pb2_grpc as event_grpc

from services.booking.app import BookingApp, BookingSettings
from services.common.auth import TokenVerifier
from services.common.clock import ManualClock
from services.common.server import start_server
from services.event.app import EventApp, EventSettings
from tests.support.api import AUDIENCE, HS256_SECRET, ISSUER, new_caller
from tests.support.bookings import book, cancel
from tests.support.factories import create_request

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def cached(
    database_url: str, redis_url: str, redis_key_prefix: str, clock: ManualClock, verifier: TokenVerifier
) -> AsyncIterator[tuple[event_grpc.EventServiceAsyncStub, booking_grpc.BookingServiceAsyncStub]]:
    env = {
        "database_url": database_url,
        "redis_url": redis_url,
        "redis_key_prefix": f"{redis_key_prefix}bookings-cache-{uuid.uuid4().hex[:6]}:",
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
        "jwt_hs256_secret": HS256_SECRET,
        "public_base_url": "https://cowatch.test",
        "grpc_host": "127.0.0.1",
    }
    event_settings, booking_settings = EventSettings(**env), BookingSettings(**env)  # type: ignore[arg-type]
    event_server = await start_server(EventApp(event_settings, clock), event_settings, verifier=verifier, port=0)
    booking_server = await start_server(
        BookingApp(booking_settings, clock), booking_settings, verifier=verifier, port=0
    )
    event_channel = grpc.aio.insecure_channel(f"127.0.0.1:{event_server.port}")
    booking_channel = grpc.aio.insecure_channel(f"127.0.0.1:{booking_server.port}")
    try:
        yield event_grpc.EventServiceStub(event_channel), booking_grpc.BookingServiceStub(booking_channel)
    finally:
        await event_channel.close()
        await booking_channel.close()
        await booking_server.stop(1.0)
        await event_server.stop(1.0)


async def test_seat_changes_are_visible_through_the_event_cache(cached, clock: ManualClock):
    events, bookings = cached
    host, guest, reader = new_caller(), new_caller(), new_caller()
    city = f"city-{uuid.uuid4().hex[:8]}"
    event = await events.CreateEvent(
        create_request(clock.now(), capacity=5, city=city, start_in=timedelta(days=70)), metadata=host.metadata
    )
    get = event_service_pb2.GetEventRequest(name=event.name)
    listing = event_service_pb2.ListEventsRequest(city=city)
    for _ in range(2):  # loaded, then served from the cache
        assert (await events.GetEvent(get, metadata=reader.metadata)).seats_taken == 0
        assert [e.seats_taken for e in (await events.ListEvents(listing)).events] == [0]

    booking = await bookings.CreateBooking(book(event, 3), metadata=guest.metadata)
    assert (await events.GetEvent(get, metadata=reader.metadata)).seats_available == 2
    assert [e.seats_taken for e in (await events.ListEvents(listing)).events] == [3]

    await bookings.CancelBooking(cancel(booking), metadata=guest.metadata)
    assert (await events.GetEvent(get, metadata=reader.metadata)).seats_available == 5
    assert [e.seats_taken for e in (await events.ListEvents(listing)).events] == [0]
