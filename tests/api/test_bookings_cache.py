"""Bookings and EventService's Redis cache: a seat change shows on the next GetEvent/ListEvents at once.

EventService caches event rows (seats included) in Redis; BookingService invalidates them when a booking or a
cancellation commits. Both servers here share one Redis (under this session's key prefix) and the database.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import pytest_asyncio
from cowatch.booking.v1 import service_pb2_grpc as booking_grpc
from cowatch.event.v1 import service_pb2 as event_service_pb2
from cowatch.event.v1 import service_pb2_grpc as event_grpc

from services.common.clock import ManualClock
from tests.support.api import new_caller
from tests.support.bookings import book, cancel
from tests.support.factories import create_request
from tests.support.servers import event_and_booking_servers_with_redis

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def cached(
    database_url: str, redis_url: str, redis_key_prefix: str, clock: ManualClock
) -> AsyncIterator[tuple[event_grpc.EventServiceAsyncStub, booking_grpc.BookingServiceAsyncStub]]:
    async with event_and_booking_servers_with_redis(
        database_url, redis_url, f"{redis_key_prefix}bookings-cache-", clock
    ) as stubs:
        yield stubs


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
