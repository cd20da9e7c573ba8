"""EventService with its Redis cache: reads come from the cache, every write is visible at once, access is decided
per request, cached list pages stay right (new events, seats, started events, paging), and a cold hot key costs
one database read."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
import pytest_asyncio
from cowatch.booking.v1 import resources_pb2 as booking_pb2
from cowatch.booking.v1 import service_pb2 as booking_service_pb2
from cowatch.booking.v1 import service_pb2_grpc as booking_grpc
from cowatch.event.v1 import resources_pb2, service_pb2
from cowatch.event.v1 import service_pb2_grpc as event_grpc
from google.protobuf import field_mask_pb2

from services.booking.app import BookingApp, BookingSettings
from services.common.cache import RedisCache
from services.common.clock import ManualClock
from services.common.server import RunningServer
from services.event import repository
from services.event.app import EventApp
from services.event.cache import event_from_json, event_to_json, invalidate_events, invalidate_host_events
from services.event.domain import parse_event_name
from tests.support.api import Caller, expect_error, new_caller
from tests.support.factories import book_directly, create_request
from tests.support.servers import app_server, event_server

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Cached:
    def __init__(self, running: RunningServer, stub: event_grpc.EventServiceAsyncStub, clock: ManualClock) -> None:
        self.running = running
        self.events = stub
        self.clock = clock

    @property
    def cache(self) -> RedisCache:
        app = self.running.app
        assert isinstance(app, EventApp) and isinstance(app.cache, RedisCache)
        return app.cache

    def count(self, name: str, **labels: str) -> float:
        return self.running.metrics.value(name, labels)

    async def create(self, host: Caller, **kwargs: object) -> resources_pb2.Event:
        return await self.events.CreateEvent(create_request(self.clock.now(), **kwargs), metadata=host.metadata)

    async def names(self, metadata: tuple[tuple[str, str], ...] = (), **filters: object) -> list[str]:
        request = service_pb2.ListEventsRequest(**filters)  # type: ignore[arg-type]
        return [e.name for e in (await self.events.ListEvents(request, metadata=metadata)).events]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def cached(database_url: str, redis_url: str, redis_key_prefix: str) -> AsyncIterator[Cached]:
    clock = ManualClock(datetime.now(UTC))
    async with event_server(
        database_url,
        clock=clock,
        redis_url=redis_url,
        redis_key_prefix=f"{redis_key_prefix}event-cache:",
        redis_timeout_seconds=2.0,  # correctness here; a slow or dead Redis is test_fault_redis's
        cache_list_ttl_seconds=60,
    ) as (running, stub):
        yield Cached(running, stub, clock)


def town() -> str:
    return f"Town-{uuid.uuid4().hex[:8]}"


def get(name: str, invite_token: str = "") -> service_pb2.GetEventRequest:
    return service_pb2.GetEventRequest(name=name, invite_token=invite_token)


def rename(name: str, title: str) -> service_pb2.UpdateEventRequest:
    return service_pb2.UpdateEventRequest(
        event=resources_pb2.Event(name=name, title=title), update_mask=field_mask_pb2.FieldMask(paths=["title"])
    )


async def test_the_cached_row_round_trips_exactly(cached: Cached, db_pool: asyncpg.Pool):
    created = await cached.create(new_caller(), private=True)
    async with db_pool.acquire() as conn:
        row = await repository.get(conn, parse_event_name(created.name))
    assert row is not None
    assert event_from_json(json.loads(json.dumps(event_to_json(row)))) == row


async def test_get_is_served_from_redis_until_a_write_invalidates_it(cached: Cached, db_pool: asyncpg.Pool):
    host = new_caller()
    created = await cached.create(host)
    await cached.events.GetEvent(get(created.name))
    await cached.cache.settle()
    hits = cached.count("cowatch_cache_requests_total", cache="event", result="hit")
    # changed behind the service's back: readers keep getting the cached row (proof that it is cached)
    await db_pool.execute("UPDATE event.events SET title = 'sneaky' WHERE id = $1", parse_event_name(created.name))
    assert (await cached.events.GetEvent(get(created.name))).title == created.title
    assert cached.count("cowatch_cache_requests_total", cache="event", result="hit") == hits + 1

    await cached.events.UpdateEvent(rename(created.name, "Renamed"), metadata=host.metadata)
    assert (await cached.events.GetEvent(get(created.name))).title == "Renamed"


async def test_every_host_action_is_visible_to_the_next_read(cached: Cached):
    host = new_caller()
    a = await cached.create(host, start_in=timedelta(hours=2), minutes=60)
    b = await cached.create(host, private=True)
    c = await cached.create(host)
    for event in (a, b, c):
        await cached.events.GetEvent(get(event.name), metadata=host.metadata)
    await cached.cache.settle()

    rotated = await cached.events.RotateInviteToken(
        service_pb2.RotateInviteTokenRequest(name=b.name), metadata=host.metadata
    )
    assert (await cached.events.GetEvent(get(b.name), metadata=host.metadata)).invite_token == rotated.invite_token
    err = await expect_error(cached.events.GetEvent(get(b.name, b.invite_token)))
    assert err.code is grpc.StatusCode.NOT_FOUND  # the old link stopped working at once

    await cached.events.CancelEvent(service_pb2.CancelEventRequest(name=c.name), metadata=host.metadata)
    assert (await cached.events.GetEvent(get(c.name))).state == resources_pb2.Event.CANCELLED

    cached.clock.advance(timedelta(hours=4))
    await cached.events.CompleteEvent(service_pb2.CompleteEventRequest(name=a.name), metadata=host.metadata)
    assert (await cached.events.GetEvent(get(a.name))).state == resources_pb2.Event.COMPLETED


async def test_access_is_decided_per_request_on_a_cached_private_event(cached: Cached, db_pool: asyncpg.Pool):
    host, stranger, guest = new_caller(), new_caller(), new_caller()
    created = await cached.create(host, private=True)
    assert (await cached.events.GetEvent(get(created.name), metadata=host.metadata)).place.address
    await cached.cache.settle()  # the row (invite token and address included) is in Redis now

    for metadata in ((), stranger.metadata, guest.metadata):
        err = await expect_error(cached.events.GetEvent(get(created.name), metadata=metadata))
        assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "EVENT_NOT_FOUND")
    invited = await cached.events.GetEvent(get(created.name, created.invite_token), metadata=stranger.metadata)
    assert invited.address_hidden and invited.place.address == "" and invited.invite_token == ""

    await book_directly(db_pool, created.name, guest)  # no invalidation needed: being a guest is read per request
    as_guest = await cached.events.GetEvent(get(created.name), metadata=guest.metadata)
    assert as_guest.place.address == "Torstr. 1, 10119" and as_guest.invite_token == ""
    assert cached.count("cowatch_cache_requests_total", cache="event", result="hit") > 0


async def test_seat_changes_reach_readers_once_invalidated(cached: Cached, db_pool: asyncpg.Pool):
    """What BookingService must do after a booking or a cancellation commits: invalidate_events(cache, id)."""
    host, guest = new_caller(), new_caller()
    city = town()
    created = await cached.create(host, city=city, capacity=1)
    event_id = parse_event_name(created.name)
    assert (await cached.events.GetEvent(get(created.name))).seats_available == 1
    assert await cached.names(city=city, has_free_seats=True) == [created.name]
    await cached.cache.settle()

    await book_directly(db_pool, created.name, guest)
    assert (await cached.events.GetEvent(get(created.name))).seats_available == 1  # still the cached row
    await invalidate_events(cached.cache, event_id)
    assert (await cached.events.GetEvent(get(created.name))).seats_available == 0
    assert await cached.names(city=city, has_free_seats=True) == []
    assert await cached.names(city=city) == [created.name]


async def test_host_rating_changes_reach_every_event_of_the_host(cached: Cached, db_pool: asyncpg.Pool):
    """What ReviewService must do after a host review commits: invalidate_host_events(cache, conn, host_id)."""
    host = new_caller()
    first, second = await cached.create(host), await cached.create(host, start_in=timedelta(days=5))
    for event in (first, second):
        assert (await cached.events.GetEvent(get(event.name))).host_rating.count == 0
    await cached.cache.settle()
    await db_pool.execute(
        "INSERT INTO review.user_ratings (user_id, role, rating_sum, rating_count) VALUES ($1, 'HOST', 9, 2)", host.id
    )
    async with db_pool.acquire() as conn:
        await invalidate_host_events(cached.cache, conn, host.id)
    for event in (first, second):
        rating = (await cached.events.GetEvent(get(event.name))).host_rating
        assert (rating.average, rating.count) == (4.5, 2)


async def test_cached_first_pages_show_new_events_at_once_and_viewer_data_per_request(
    cached: Cached, db_pool: asyncpg.Pool
):
    host, guest = new_caller(), new_caller()
    city = town()
    first = await cached.create(host, city=city)
    assert await cached.names(city=city) == [first.name]
    await cached.cache.settle()
    hits = cached.count("cowatch_cache_requests_total", cache="event_list", result="hit")
    assert await cached.names(city=city) == [first.name]
    assert cached.count("cowatch_cache_requests_total", cache="event_list", result="hit") == hits + 1

    second = await cached.create(host, city=city, start_in=timedelta(days=4))
    assert await cached.names(city=city) == [first.name, second.name]

    await book_directly(db_pool, second.name, guest)
    await invalidate_events(cached.cache, parse_event_name(second.name))
    await cached.names(city=city)  # cache the page again (after the seat change)
    await cached.cache.settle()
    page = await cached.events.ListEvents(service_pb2.ListEventsRequest(city=city), metadata=guest.metadata)
    shown = {e.name: e for e in page.events}
    assert shown[second.name].place.address and not shown[second.name].address_hidden  # the guest's own booking
    assert shown[first.name].address_hidden and shown[first.name].place.address == ""
    anonymous = await cached.events.ListEvents(service_pb2.ListEventsRequest(city=city))
    assert all(e.address_hidden for e in anonymous.events)


async def test_paging_on_from_a_cached_first_page(cached: Cached):
    host = new_caller()
    city = town()
    made = [(await cached.create(host, city=city, start_in=timedelta(days=d))).name for d in (1, 2, 3)]
    for _ in range(2):  # miss, then hit: both hand out a token that pages on
        first = await cached.events.ListEvents(service_pb2.ListEventsRequest(city=city, page_size=2))
        assert [e.name for e in first.events] == made[:2] and first.next_page_token
        rest = await cached.events.ListEvents(
            service_pb2.ListEventsRequest(city=city, page_size=2, page_token=first.next_page_token)
        )
        assert [e.name for e in rest.events] == made[2:] and not rest.next_page_token
        await cached.cache.settle()


async def test_events_that_started_leave_a_cached_upcoming_page(cached: Cached):
    host = new_caller()
    city = town()
    soon = await cached.create(host, city=city, start_in=timedelta(minutes=10))
    later = await cached.create(host, city=city, start_in=timedelta(days=2))
    assert await cached.names(city=city) == [soon.name, later.name]
    await cached.cache.settle()
    cached.clock.advance(timedelta(minutes=11))
    hits = cached.count("cowatch_cache_requests_total", cache="event_list", result="hit")
    assert await cached.names(city=city) == [later.name]
    assert cached.count("cowatch_cache_requests_total", cache="event_list", result="hit") == hits + 1


async def test_a_cold_event_read_by_hundreds_at_once_costs_one_database_read(cached: Cached):
    created = await cached.create(new_caller())
    loads = cached.count("cowatch_cache_loads_total", cache="event")
    replies = await asyncio.gather(*(cached.events.GetEvent(get(created.name)) for _ in range(200)))
    assert {r.name for r in replies} == {created.name}
    assert cached.count("cowatch_cache_loads_total", cache="event") == loads + 1


async def test_a_booking_through_booking_service_is_seen_at_once_through_the_cached_event(
    cached: Cached, database_url: str, redis_url: str, redis_key_prefix: str
):
    """The two processes share Redis: BookingService invalidates what EventService cached."""
    host, guest = new_caller(), new_caller()
    city = town()
    created = await cached.create(host, city=city, capacity=2)
    assert (await cached.events.GetEvent(get(created.name))).seats_available == 2
    assert await cached.names(city=city, has_free_seats=True) == [created.name]
    await cached.cache.settle()
    async with app_server(
        BookingApp,
        BookingSettings,
        database_url,
        clock=cached.clock,
        redis_url=redis_url,
        redis_key_prefix=f"{redis_key_prefix}event-cache:",
    ) as (_booking, channel):
        bookings = booking_grpc.BookingServiceStub(channel)
        booking = await bookings.CreateBooking(
            booking_service_pb2.CreateBookingRequest(booking=booking_pb2.Booking(event=created.name, seats=2)),
            metadata=guest.metadata,
        )
        assert (await cached.events.GetEvent(get(created.name))).seats_available == 0
        assert await cached.names(city=city, has_free_seats=True) == []
        await cached.cache.settle()
        await bookings.CancelBooking(
            booking_service_pb2.CancelBookingRequest(name=booking.name), metadata=guest.metadata
        )
        assert (await cached.events.GetEvent(get(created.name))).seats_available == 2
        assert await cached.names(city=city, has_free_seats=True) == [created.name]


async def test_a_booking_process_dying_between_commit_and_invalidation_leaves_no_stale_seat_count(
    cached: Cached, database_url: str, redis_url: str, redis_key_prefix: str, monkeypatch: pytest.MonkeyPatch
):
    """The after-COMMIT invalidation never runs (the process died right after COMMIT): the hold taken before
    COMMIT already made the cached row stale and keeps it uncached, so the next read shows the booking."""
    host, guest = new_caller(), new_caller()
    city = town()
    created = await cached.create(host, city=city, capacity=2)
    assert (await cached.events.GetEvent(get(created.name))).seats_available == 2
    assert await cached.names(city=city, has_free_seats=True) == [created.name]
    await cached.cache.settle()
    async with app_server(
        BookingApp,
        BookingSettings,
        database_url,
        clock=cached.clock,
        redis_url=redis_url,
        redis_key_prefix=f"{redis_key_prefix}event-cache:",
    ) as (booking_server, channel):
        dispatcher = booking_server.app.service._dispatcher  # type: ignore[attr-defined]

        async def dies_after_commit(events: object) -> None:
            return None

        monkeypatch.setattr(dispatcher, "after_commit", dies_after_commit)
        await booking_grpc.BookingServiceStub(channel).CreateBooking(
            booking_service_pb2.CreateBookingRequest(booking=booking_pb2.Booking(event=created.name, seats=2)),
            metadata=guest.metadata,
        )
    for _ in range(2):
        assert (await cached.events.GetEvent(get(created.name))).seats_available == 0
        assert await cached.names(city=city, has_free_seats=True) == []
        await cached.cache.settle()
