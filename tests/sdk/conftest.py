"""Python SDK tests: the three real services on port 0 in this process (tests/support/servers.py) over the session's
PostgreSQL, behind one real gRPC proxy (tests/support/grpc_proxy.py) that stands for the gateway, records every
attempt and injects failures. The SDK is imported from sdk/python/src, exactly as it is packaged."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from cowatch_client import types

from services.booking.app import BookingApp, BookingSettings
from services.common.clock import Clock, ManualClock
from services.common.settings import CommonSettings
from services.event.app import EventApp, EventSettings
from services.review.app import ReviewApp, ReviewSettings
from tests.support import servers
from tests.support.grpc_proxy import GrpcProxy

SERVICES: list[tuple[str, Callable[[Any, Clock], Any], type[CommonSettings]]] = [
    ("cowatch.event.v1.EventService", EventApp, EventSettings),
    ("cowatch.booking.v1.BookingService", BookingApp, BookingSettings),
    ("cowatch.review.v1.ReviewService", ReviewApp, ReviewSettings),
]
NOW = datetime.now(UTC)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def gateway(database_url: str) -> AsyncIterator[GrpcProxy]:
    clock = ManualClock(NOW)
    async with contextlib.AsyncExitStack() as stack:
        routes = {}
        for service, app, settings in SERVICES:
            running, _ = await stack.enter_async_context(servers.app_server(app, settings, database_url, clock=clock))
            routes[service] = f"127.0.0.1:{running.port}"
        proxy = await GrpcProxy(routes).start()
        stack.push_async_callback(proxy.stop)
        yield proxy


@pytest.fixture
def proxy(gateway: GrpcProxy) -> Iterator[GrpcProxy]:
    """The gateway with no faults and no recorded attempts."""
    gateway.reset()
    yield gateway
    gateway.reset()


@pytest.fixture
def target(proxy: GrpcProxy) -> str:
    return f"127.0.0.1:{proxy.port}"


def unique_city() -> str:
    return f"Berlin {uuid.uuid4().hex[:8]}"


def new_event(
    *, title: str = "Solaris night", capacity: int = 6, city: str = "Berlin", start_in: timedelta = timedelta(days=3)
) -> types.Event:
    start = types.Timestamp()
    start.FromDatetime(NOW + start_in)
    return types.Event(
        film=types.Film(id="tt0069293", title="Solaris"),
        title=title,
        description="Bring snacks.",
        start_time=start,
        time_zone="Europe/Berlin",
        duration=types.Duration(seconds=2 * 3600),
        place=types.Place(name="Anna's living room", address="Torstr. 1, 10119", city=city),
        capacity=capacity,
        visibility=types.Event.PUBLIC,
    )
