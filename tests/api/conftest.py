"""API tests: real grpc.aio servers on port 0 in this process, with the production interceptor chain, over the
session's real PostgreSQL database (servers from tests/support/servers.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import pytest
import pytest_asyncio
from cowatch.booking.v1 import service_pb2_grpc as booking_grpc
from cowatch.event.v1 import service_pb2_grpc as event_grpc
from cowatch.review.v1 import service_pb2_grpc as review_grpc

from services.booking.app import BookingApp, BookingSettings
from services.common.auth import TokenVerifier
from services.common.clock import ManualClock
from services.event.app import EventApp, EventSettings
from services.review.app import ReviewApp, ReviewSettings
from tests.support import servers

POOL = {"db_pool_max_size": 20}


@pytest.fixture(scope="session")
def clock() -> ManualClock:
    """The services' clock. Starts at the real now; tests move it forward to pass start and end times."""
    return ManualClock(datetime.now(UTC))


@pytest.fixture(scope="session")
def verifier() -> TokenVerifier:
    return servers.verifier()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def event_channel(database_url: str, clock: ManualClock) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to the EventService server (for raw calls a stub can't make)."""
    async with servers.app_server(EventApp, EventSettings, database_url, clock=clock, **POOL) as (_, channel):
        yield channel


@pytest.fixture(scope="session")
def events(event_channel: grpc.aio.Channel) -> event_grpc.EventServiceAsyncStub:
    return event_grpc.EventServiceStub(event_channel)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def booking_channel(database_url: str, clock: ManualClock) -> AsyncIterator[grpc.aio.Channel]:
    async with servers.app_server(BookingApp, BookingSettings, database_url, clock=clock, **POOL) as (_, channel):
        yield channel


@pytest.fixture(scope="session")
def bookings(booking_channel: grpc.aio.Channel) -> booking_grpc.BookingServiceAsyncStub:
    return booking_grpc.BookingServiceStub(booking_channel)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def review_channel(database_url: str, clock: ManualClock) -> AsyncIterator[grpc.aio.Channel]:
    async with servers.app_server(ReviewApp, ReviewSettings, database_url, clock=clock, **POOL) as (_, channel):
        yield channel


@pytest.fixture(scope="session")
def reviews(review_channel: grpc.aio.Channel) -> review_grpc.ReviewServiceAsyncStub:
    return review_grpc.ReviewServiceStub(review_channel)
