"""Read replicas: the lag-tolerant reads (README, Scaling, Read replicas) are served by a real streaming replica,
read-your-writes paths and every write by the primary; a lagging or stopped replica sends reads to the primary.

The replica is a second embedded PostgreSQL made by ``pg_basebackup -R`` from the first and started as a hot
standby. To tell which server answered, its WAL replay is paused (``pg_wal_replay_pause()``): writes then land on
the primary only, so a read that shows the old value came from the standby and one that shows the new value from
the primary. The standby also logs every statement it runs (``log_statement=all``), for the reads whose answer a
test cannot easily make differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
import pytest
import pytest_asyncio
from cowatch.booking.v1 import service_pb2 as booking_service_pb2
from cowatch.booking.v1 import service_pb2_grpc as booking_grpc
from cowatch.event.v1 import resources_pb2
from cowatch.event.v1 import service_pb2 as event_service_pb2
from cowatch.event.v1 import service_pb2_grpc as event_grpc
from cowatch.review.v1 import service_pb2 as review_service_pb2
from cowatch.review.v1 import service_pb2_grpc as review_grpc
from google.protobuf import field_mask_pb2

from services.booking.app import BookingApp, BookingSettings
from services.common import errors
from services.common.clock import ManualClock
from services.common.replica import FAILURE_THRESHOLD, ReadPool
from services.dev.embedded_pg import EmbeddedPostgres
from services.event.app import EventApp, EventSettings
from services.review.app import ReviewApp, ReviewSettings
from services.review.repository import USER_RATINGS
from tests.support import servers
from tests.support.api import Caller, new_caller
from tests.support.bookings import book, new_event

pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass(frozen=True)
class Cluster:
    primary: EmbeddedPostgres
    standby: EmbeddedPostgres
    primary_url: str = ""
    standby_url: str = ""


@pytest.fixture(scope="module")
def servers_pair() -> Iterator[tuple[EmbeddedPostgres, EmbeddedPostgres]]:
    with EmbeddedPostgres() as primary:
        standby = primary.standby(settings={"log_statement": "all"})
        with standby:
            standby.start()
            yield primary, standby


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def cluster(servers_pair: tuple[EmbeddedPostgres, EmbeddedPostgres]) -> AsyncIterator[Cluster]:
    """A migrated database on the primary, replicated to the standby (the standby streams every database)."""
    from tests.support.db import create_migrated_database

    primary, standby = servers_pair
    name, url = await create_migrated_database(primary.url)
    c = Cluster(primary, standby, url, standby.url_for(name))
    await caught_up(c)
    yield c


async def caught_up(c: Cluster, within: float = 20.0) -> None:
    """Wait until the standby has replayed everything the primary has written so far."""
    primary = await asyncpg.connect(c.primary_url)
    try:
        # The insert position, not pg_current_wal_lsn() (the write position): with synchronous_commit off, as the
        # test servers run, a commit record can be inserted but not yet written, and the write position is behind it.
        lsn = await primary.fetchval("SELECT pg_current_wal_insert_lsn()::text")
    finally:
        await primary.close()
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(OSError, asyncpg.CannotConnectNowError, asyncpg.PostgresConnectionError):
            standby = await asyncpg.connect(c.standby_url)
            try:
                if await standby.fetchval("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", lsn):
                    return
            finally:
                await standby.close()
        assert time.monotonic() < deadline, "the standby did not catch up"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def replay_paused(c: Cluster) -> AsyncIterator[None]:
    """While inside, the standby receives the primary's WAL but applies none of it."""
    await caught_up(c)
    conn = await asyncpg.connect(c.standby_url)
    try:
        await conn.execute("SELECT pg_wal_replay_pause()")
        while await conn.fetchval("SELECT pg_get_wal_replay_pause_state()") != "paused":  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        yield
    finally:
        await conn.execute("SELECT pg_wal_replay_resume()")
        await conn.close()
    await caught_up(c)


@dataclass
class Stack:
    events: event_grpc.EventServiceAsyncStub
    bookings: booking_grpc.BookingServiceAsyncStub
    reviews: review_grpc.ReviewServiceAsyncStub
    event_app: EventApp
    event_port: int
    clock: ManualClock


@contextlib.asynccontextmanager
async def stack(c: Cluster, **overrides: Any) -> AsyncIterator[Stack]:
    """The three services as real gRPC servers, DATABASE_URL the primary, COWATCH_READ_DATABASE_URL the standby;
    no Redis unless ``overrides`` name one (a cache hit would hide which server answered)."""
    clock = ManualClock(datetime.now(UTC))
    settings = {"read_database_url": c.standby_url, "redis_url": None, **overrides}
    async with contextlib.AsyncExitStack() as stack_:
        event_run, event_channel = await stack_.enter_async_context(
            servers.app_server(EventApp, EventSettings, c.primary_url, clock=clock, **settings)
        )
        _, booking_channel = await stack_.enter_async_context(
            servers.app_server(BookingApp, BookingSettings, c.primary_url, clock=clock, **settings)
        )
        _, review_channel = await stack_.enter_async_context(
            servers.app_server(ReviewApp, ReviewSettings, c.primary_url, clock=clock, **settings)
        )
        yield Stack(
            event_grpc.EventServiceStub(event_channel),
            booking_grpc.BookingServiceStub(booking_channel),
            review_grpc.ReviewServiceStub(review_channel),
            cast(EventApp, event_run.app),
            event_run.port,
            clock,
        )


def get(event: resources_pb2.Event) -> event_service_pb2.GetEventRequest:
    return event_service_pb2.GetEventRequest(name=event.name)


def retitle(event: resources_pb2.Event, title: str) -> event_service_pb2.UpdateEventRequest:
    patch = resources_pb2.Event(name=event.name, etag=event.etag, title=title)
    return event_service_pb2.UpdateEventRequest(event=patch, update_mask=field_mask_pb2.FieldMask(paths=["title"]))


async def listed_titles(
    events: event_grpc.EventServiceAsyncStub, caller: Caller | None = None, **request: Any
) -> dict[str, str]:
    """The titles on the first page of ``ListEvents(**request)``, by event name."""
    metadata = caller.metadata if caller else None
    page = await events.ListEvents(event_service_pb2.ListEventsRequest(page_size=100, **request), metadata=metadata)
    return {e.name: e.title for e in page.events}


async def second_page_titles(
    events: event_grpc.EventServiceAsyncStub, host: Caller, caller: Caller | None = None
) -> dict[str, str]:
    """The titles on the second page of the host's public events, one per page (a page no cache serves)."""
    metadata = caller.metadata if caller else None
    first = await events.ListEvents(
        event_service_pb2.ListEventsRequest(page_size=1, host=host.resource), metadata=metadata
    )
    second = await events.ListEvents(
        event_service_pb2.ListEventsRequest(page_size=1, host=host.resource, page_token=first.next_page_token),
        metadata=metadata,
    )
    return {e.name: e.title for e in second.events}


def standby_ran(c: Cluster, log_offset: int, sql: str) -> bool:
    return sql in c.standby.log_path.read_bytes()[log_offset:].decode(errors="replace")


async def test_lag_tolerant_reads_come_from_the_standby_and_read_your_writes_from_the_primary(cluster: Cluster):
    async with stack(cluster, read_db_max_lag_seconds=600) as s:
        host = new_caller("Anna")
        await new_event(s.events, s.clock, host=host, title="Earlier", start_in=timedelta(days=1))
        event = await new_event(s.events, s.clock, host=host, title="Before")
        await caught_up(cluster)
        assert (await s.events.GetEvent(get(event))).title == "Before"
        async with replay_paused(cluster):
            # Writes go to the primary (the standby could not take them): all succeed.
            renamed = new_caller("Anna Karenina", user_id=host.id)  # a write stores the token's new name
            updated = await s.events.UpdateEvent(retitle(event, "After"), metadata=renamed.metadata)
            guest = new_caller("Ben")
            booking = await s.bookings.CreateBooking(book(event, 2), metadata=guest.metadata)

            # Read-your-writes: the primary.
            got = await s.bookings.GetBooking(
                booking_service_pb2.GetBookingRequest(name=booking.name), metadata=guest.metadata
            )
            assert got.seats == 2
            as_host = await s.events.GetEvent(get(event), metadata=renamed.metadata)
            assert (as_host.title, as_host.seats_taken, as_host.etag) == ("After", 2, updated.etag)
            assert (await s.events.GetEvent(get(event), metadata=guest.metadata)).title == "After"
            assert (await listed_titles(s.events, renamed, host=host.resource))[event.name] == "After"  # own
            assert (await second_page_titles(s.events, host, guest))[event.name] == "After"

            # Lag-tolerant: the standby, which has not replayed any of it.
            anonymous = await s.events.GetEvent(get(event))
            assert (anonymous.title, anonymous.seats_taken) == ("Before", 0)
            assert (await listed_titles(s.events))[event.name] == "Before"
            assert (await second_page_titles(s.events, host))[event.name] == "Before"
            # A first page holds the same public rows for everyone (cacheable), so a signed-in caller's may lag
            # too; only whether they are going is theirs, and that comes from the primary.
            assert (await listed_titles(s.events, guest))[event.name] == "Before"
            profile = await s.reviews.GetHostProfile(
                review_service_pb2.GetHostProfileRequest(name=f"users/{host.id}/hostProfile")
            )
            assert profile.display_name == "Anna"

            # Ratings and anonymous review lists: the statements ran on the standby; a signed-in list did not.
            offset = cluster.standby.log_path.stat().st_size
            await s.reviews.GetUserRating(review_service_pb2.GetUserRatingRequest(name=f"users/{host.id}/rating"))
            assert standby_ran(cluster, offset, USER_RATINGS)
            offset = cluster.standby.log_path.stat().st_size
            await s.reviews.ListReviews(review_service_pb2.ListReviewsRequest(subject_user=host.resource))
            assert standby_ran(cluster, offset, "FROM review.reviews r")
            offset = cluster.standby.log_path.stat().st_size
            await s.reviews.ListReviews(
                review_service_pb2.ListReviewsRequest(subject_user=host.resource), metadata=guest.metadata
            )
            await s.bookings.GetBooking(
                booking_service_pb2.GetBookingRequest(name=booking.name), metadata=guest.metadata
            )
            assert not standby_ran(cluster, offset, "FROM review.reviews r")
            assert not standby_ran(cluster, offset, "booking.bookings")

            # An event the standby does not have yet is looked up on the primary: a new share link works at once.
            fresh = await new_event(s.events, s.clock, host=renamed, title="Fresh")
            assert (await s.events.GetEvent(get(fresh))).title == "Fresh"
            no_reviews = await s.reviews.ListReviews(review_service_pb2.ListReviewsRequest(event=fresh.name))
            assert list(no_reviews.reviews) == []  # not NOT_FOUND: the primary has the event
            assert s.event_app.reads.uses_replica  # all of this within the allowed lag

        anonymous = await s.events.GetEvent(get(event))
        assert (anonymous.title, anonymous.seats_taken) == ("After", 2)
        assert (await listed_titles(s.events))[event.name] == "After"


async def test_a_lagging_or_stopped_standby_leaves_the_reads_to_the_primary(cluster: Cluster):
    async with stack(cluster, read_db_max_lag_seconds=1) as s:
        host = new_caller("Clara")
        event = await new_event(s.events, s.clock, host=host, title="Before")
        await caught_up(cluster)
        reads = s.event_app.reads
        assert reads.uses_replica

        async def title_is_after() -> bool:
            return (await s.events.GetEvent(get(event))).title == "After"

        async with replay_paused(cluster):
            await s.events.UpdateEvent(retitle(event, "After"), metadata=host.metadata)
            # More than a second behind: the breaker opens and anonymous reads see the primary's row.
            await servers.wait_until(title_is_after, within=15, interval=0.1)
            assert not reads.uses_replica
        # Caught up again: the probe closes the breaker, reads return to the standby.
        await servers.wait_until(lambda: reads.uses_replica, within=15)

        cluster.standby.stop()
        try:
            # Stopped: the first read fails over at once, later ones skip the standby; health stays SERVING.
            for _ in range(5):
                assert (await s.events.GetEvent(get(event))).title == "After"
                assert (await listed_titles(s.events))[event.name] == "After"
            assert not reads.uses_replica
            assert await servers.health(s.event_port, EventApp.proto_service) == servers.SERVING
        finally:
            cluster.standby.start()
        await servers.wait_until(lambda: reads.uses_replica, within=15)


async def test_a_cache_fill_never_comes_from_a_lagging_standby(cluster: Cluster, redis_url: str, redis_key_prefix: str):
    """The classic bug: a write commits and invalidates, the next read misses, loads from a standby that has not
    replayed the write yet and caches the old value for the TTL. Fills read the primary; so only a read that is
    stored nowhere (Redis bypassed) may lag."""
    async with stack(cluster, read_db_max_lag_seconds=600, redis_url=redis_url, redis_key_prefix=redis_key_prefix) as s:
        host = new_caller("Dora")
        event = await new_event(s.events, s.clock, host=host, title="Before")
        await caught_up(cluster)
        assert (await s.events.GetEvent(get(event))).title == "Before"  # cached
        async with replay_paused(cluster):
            await s.events.UpdateEvent(retitle(event, "After"), metadata=host.metadata)
            for _ in range(3):  # the miss after the invalidation, then hits of what it stored
                assert (await s.events.GetEvent(get(event))).title == "After"
                assert (await listed_titles(s.events))[event.name] == "After"


async def test_the_read_pool_retries_on_the_primary_only_what_the_replica_could_not_answer(database_url: str):
    """Against the session's server: a replica that refuses connections, and one that answers (the same server)."""
    primary = await asyncpg.create_pool(database_url, min_size=0, max_size=2)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        refused = sock.getsockname()[1]
    down = ReadPool(primary, await asyncpg.create_pool(f"postgresql://postgres@127.0.0.1:{refused}/x", min_size=0))
    up = ReadPool(primary, await asyncpg.create_pool(database_url, min_size=0, max_size=2))
    try:
        for _ in range(FAILURE_THRESHOLD):  # each read fails over at once
            assert await down.fetch(lambda conn: conn.fetchval("SELECT 1")) == 1
        assert not down.uses_replica  # then the breaker skips it

        with pytest.raises(asyncpg.UndefinedTableError):  # the query's own error: not the replica's fault
            await up.fetch(lambda conn: conn.fetch("SELECT * FROM no_such_table"))
        calls: list[str] = []

        async def missing_on_replica(conn: Any) -> str:
            calls.append("read")
            if len(calls) == 1:
                raise errors.NotFound("EVENT_NOT_FOUND", "not replayed yet")
            return "from the primary"

        assert await up.fetch(missing_on_replica, recheck=errors.NotFound) == "from the primary"
        assert up.uses_replica
    finally:
        await down.aclose()
        await up.aclose()
        await primary.close()
