"""API tests: real grpc.aio servers on port 0 in this process, with the production interceptor chain, over the
session's real PostgreSQL database."""

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
from services.common.server import RunningServer, start_server
from services.event.app import EventApp, EventSettings
from services.review.app import ReviewApp, ReviewSettings
from tests.support.api import AUDIENCE, HS256_SECRET, ISSUER


@pytest.fixture(scope="session")
def clock() -> ManualClock:
    """The services' clock. Starts at the real now; tests move it forward to pass start and end times."""
    return ManualClock(datetime.now(UTC))


def settings_env(database_url: str) -> dict[str, object]:
    return {
        "database_url": database_url,
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
        "jwt_hs256_secret": HS256_SECRET,
        "public_base_url": "https://cowatch.test",
        "db_pool_max_size": 20,
        "grpc_host": "127.0.0.1",
    }


@pytest.fixture(scope="session")
def verifier() -> TokenVerifier:
    return TokenVerifier(issuer=ISSUER, audience=AUDIENCE, hs256_secret=HS256_SECRET)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def event_server(database_url: str, clock: ManualClock, verifier: TokenVerifier) -> AsyncIterator[RunningServer]:
    settings = EventSettings(**settings_env(database_url))  # type: ignore[arg-type]
    running = await start_server(EventApp(settings, clock), settings, verifier=verifier, port=0)
    try:
        yield running
    finally:
        await running.stop(1.0)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def event_channel(event_server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{event_server.port}") as channel:
        yield channel


@pytest.fixture(scope="session")
def events(event_channel: grpc.aio.Channel) -> event_grpc.EventServiceAsyncStub:
    return event_grpc.EventServiceStub(event_channel)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def booking_server(
    database_url: str, clock: ManualClock, verifier: TokenVerifier
) -> AsyncIterator[RunningServer]:
    settings = BookingSettings(**settings_env(database_url))  # type: ignore[arg-type]
    running = await start_server(BookingApp(settings, clock), settings, verifier=verifier, port=0)
    try:
        yield running
    finally:
        await running.stop(1.0)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def booking_channel(booking_server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{booking_server.port}") as channel:
        yield channel


@pytest.fixture(scope="session")
def bookings(booking_channel: grpc.aio.Channel) -> booking_grpc.BookingServiceAsyncStub:
    return booking_grpc.BookingServiceStub(booking_channel)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def review_server(database_url: str, clock: ManualClock, verifier: TokenVerifier) -> AsyncIterator[RunningServer]:
    settings = ReviewSettings(**settings_env(database_url))  # type: ignore[arg-type]
    running = await start_server(ReviewApp(settings, clock), settings, verifier=verifier, port=0)
    try:
        yield running
    finally:
        await running.stop(1.0)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def review_channel(review_server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{review_server.port}") as channel:
        yield channel


@pytest.fixture(scope="session")
def reviews(review_channel: grpc.aio.Channel) -> review_grpc.ReviewServiceAsyncStub:
    return review_grpc.ReviewServiceStub(review_channel)
