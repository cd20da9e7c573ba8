"""ReviewService, EventService and BookingService sharing a real Redis cache: ratings, host profiles, held-event
pages and the host rating and name shown on events are served from the cache and are never stale after a review,
an edit, a newly held event or a new display name."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from cowatch.booking.v1 import resources_pb2 as booking_pb2
from cowatch.booking.v1 import service_pb2 as booking_service_pb2
from cowatch.booking.v1 import service_pb2_grpc as booking_grpc
from cowatch.event.v1 import service_pb2 as event_service_pb2
from cowatch.event.v1 import service_pb2_grpc as event_grpc
from cowatch.review.v1 import resources_pb2, service_pb2
from cowatch.review.v1 import service_pb2_grpc as review_grpc
from google.protobuf import field_mask_pb2

from services.booking.app import BookingApp, BookingSettings
from services.common.cache import RedisCache
from services.common.clock import ManualClock
from services.common.server import RunningServer
from services.review.app import ReviewApp, ReviewSettings
from tests.support.api import Caller, new_caller
from tests.support.factories import create_request
from tests.support.reviews import EVENT, GUEST, HOST, held_event, review_request
from tests.support.servers import app_server, event_server

pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass
class Stack:
    events: event_grpc.EventServiceAsyncStub
    reviews: review_grpc.ReviewServiceAsyncStub
    review_server: RunningServer
    clock: ManualClock
    bookings: booking_grpc.BookingServiceAsyncStub
    servers: tuple[RunningServer, ...]

    async def settle(self) -> None:
        """Wait until what the reads loaded is in Redis."""
        for server in self.servers:
            cache = server.app.cache  # type: ignore[attr-defined]
            if isinstance(cache, RedisCache):
                await cache.settle()

    def hits(self, cache: str) -> float:
        return self.review_server.metrics.value("cowatch_cache_requests_total", {"cache": cache, "result": "hit"})


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(database_url: str, redis_url: str, redis_key_prefix: str) -> AsyncIterator[Stack]:
    clock = ManualClock(datetime.now(UTC))
    redis: dict[str, Any] = {
        "redis_url": redis_url,
        "redis_key_prefix": f"{redis_key_prefix}review-cache:",
        "redis_timeout_seconds": 2.0,
    }
    async with (
        event_server(database_url, clock=clock, **redis) as (event_running, events),
        app_server(ReviewApp, ReviewSettings, database_url, clock=clock, **redis) as (review_server, channel),
        app_server(BookingApp, BookingSettings, database_url, clock=clock, **redis) as (booking_server, booking_ch),
    ):
        yield Stack(
            events,
            review_grpc.ReviewServiceStub(channel),
            review_server,
            clock,
            booking_grpc.BookingServiceStub(booking_ch),
            (event_running, review_server, booking_server),
        )


async def test_ratings_and_profiles_are_cached_and_never_stale(stack: Stack, db_pool: asyncpg.Pool) -> None:
    host, ana, ben = new_caller("Host"), new_caller("Ana"), new_caller("Ben")
    first = await held_event(stack.events, db_pool, stack.clock, host, [ana, ben])
    rating_name = f"{host.resource}/rating"
    profile_name = f"{host.resource}/hostProfile"

    async def host_rating() -> tuple[float, int]:
        r = await stack.reviews.GetUserRating(service_pb2.GetUserRatingRequest(name=rating_name))
        return r.as_host.average, r.as_host.count

    async def profile() -> tuple[float, int, int]:
        p = await stack.reviews.GetHostProfile(service_pb2.GetHostProfileRequest(name=profile_name))
        return p.host_rating.average, p.host_rating.count, p.held_event_count

    async def held() -> list[tuple[str, float, int]]:
        page = await stack.reviews.ListHeldEvents(service_pb2.ListHeldEventsRequest(parent=profile_name))
        return [(h.event, h.rating.average, h.rating.count) for h in page.held_events]

    async def on_event() -> tuple[float, int]:
        e = await stack.events.GetEvent(event_service_pb2.GetEventRequest(name=first.name))
        return e.host_rating.average, e.host_rating.count

    # Warm every cache, then read again: the second reads are hits.
    assert await host_rating() == (0.0, 0)
    assert await profile() == (0.0, 0, 1)
    assert await held() == [(first.name, 0.0, 0)]
    assert await on_event() == (0.0, 0)
    before = stack.hits("user_rating"), stack.hits("host_profile"), stack.hits("held_events")
    await host_rating(), await profile(), await held()
    after = stack.hits("user_rating"), stack.hits("host_profile"), stack.hits("held_events")
    assert all(a == b + 1 for a, b in zip(after, before, strict=True)), (before, after)

    # A HOST review: the rating, the profile and the host rating shown on the event change at once.
    review = await stack.reviews.CreateReview(review_request(first.name, HOST, 4), metadata=ana.metadata)
    assert await host_rating() == (4.0, 1)
    assert await profile() == (4.0, 1, 1)
    assert await on_event() == (4.0, 1)

    # An edit by its author: the same, with the new value.
    edit = service_pb2.UpdateReviewRequest(
        review=resources_pb2.Review(name=review.name, rating=2),
        update_mask=field_mask_pb2.FieldMask(paths=["rating"]),
    )
    await stack.reviews.UpdateReview(edit, metadata=ana.metadata)
    assert await host_rating() == (2.0, 1)
    assert await profile() == (2.0, 1, 1)
    assert await on_event() == (2.0, 1)

    # An EVENT review changes the event's rating on the held-events page.
    await stack.reviews.CreateReview(review_request(first.name, EVENT, 5), metadata=ben.metadata)
    assert await held() == [(first.name, 5.0, 1)]

    # A GUEST review changes the guest's rating, not the host's.
    await stack.reviews.CreateReview(
        review_request(first.name, GUEST, 3, subject_user=ana.resource), metadata=host.metadata
    )
    ana_rating = await stack.reviews.GetUserRating(service_pb2.GetUserRatingRequest(name=f"{ana.resource}/rating"))
    assert (ana_rating.as_guest.average, ana_rating.as_guest.count) == (3.0, 1)
    assert await host_rating() == (2.0, 1)

    # Holding another event shows in the profile and the held-events page at once.
    second = await held_event(stack.events, db_pool, stack.clock, host, [ben])
    assert (await profile())[2] == 2
    assert [name for name, _, _ in await held()] == [second.name, first.name]


async def test_a_new_display_name_shows_at_once_on_the_hosts_events_and_profile(
    stack: Stack, db_pool: asyncpg.Pool
) -> None:
    """The name comes with the token on any write, through any service, and is snapshotted there: every cached
    copy that shows it (the host's events, first list pages, the host profile) is dropped at once."""
    host_id = f"u-{uuid.uuid4().hex[:12]}"
    host, ana = new_caller("Hedy A", user_id=host_id), new_caller("Ana")
    await held_event(stack.events, db_pool, stack.clock, host, [ana])
    held = await stack.reviews.ListHeldEvents(service_pb2.ListHeldEventsRequest(parent=f"{host.resource}/hostProfile"))
    city = f"Town-{uuid.uuid4().hex[:8]}"
    upcoming = await stack.events.CreateEvent(
        create_request(stack.clock.now(), city=city, start_in=timedelta(days=3)), metadata=host.metadata
    )
    elsewhere = await stack.events.CreateEvent(
        create_request(stack.clock.now(), start_in=timedelta(days=9)), metadata=new_caller("Other host").metadata
    )

    async def shown() -> set[str]:
        event = await stack.events.GetEvent(event_service_pb2.GetEventRequest(name=upcoming.name))
        page = await stack.events.ListEvents(event_service_pb2.ListEventsRequest(city=city))
        profile = await stack.reviews.GetHostProfile(
            service_pb2.GetHostProfileRequest(name=f"{host.resource}/hostProfile")
        )
        await stack.settle()
        return {event.host_display_name, *(e.host_display_name for e in page.events), profile.display_name}

    async def through_booking(caller: Caller) -> None:
        request = booking_service_pb2.CreateBookingRequest(booking=booking_pb2.Booking(event=elsewhere.name, seats=1))
        await stack.bookings.CreateBooking(request, metadata=caller.metadata)

    async def through_review(caller: Caller) -> None:
        request = review_request(held.held_events[0].event, GUEST, 4, subject_user=ana.resource)
        await stack.reviews.CreateReview(request, metadata=caller.metadata)

    async def through_event(caller: Caller) -> None:
        request = create_request(stack.clock.now(), start_in=timedelta(days=20))
        await stack.events.CreateEvent(request, metadata=caller.metadata)

    assert await shown() == {"Hedy A"}
    hits = stack.hits("host_profile")
    assert await shown() == {"Hedy A"}  # served from the cache
    assert stack.hits("host_profile") == hits + 1
    for new_name, write in (("Hedy B", through_booking), ("Hedy C", through_review), ("Hedy D", through_event)):
        await write(new_caller(new_name, user_id=host_id))
        assert await shown() == {new_name}, write.__name__
        assert await shown() == {new_name}, write.__name__  # and cached again
