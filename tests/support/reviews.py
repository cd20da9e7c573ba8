"""Builders for ReviewService tests: held events with participants, review requests."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, timedelta

import asyncpg
from cowatch.event.v1 import resources_pb2 as event_pb2
from cowatch.event.v1 import service_pb2 as event_service_pb2
from cowatch.event.v1 import service_pb2_grpc as event_grpc
from cowatch.review.v1 import resources_pb2, service_pb2

from services.common.cache import Cache, cache_from_settings
from services.common.clock import ManualClock
from services.review.app import ReviewSettings, reveal_job
from services.review.domain import DEFAULT_REVIEW_WINDOW
from tests.support import servers
from tests.support.api import Caller
from tests.support.factories import book_directly, create_request

EVENT = resources_pb2.Review.EVENT
HOST = resources_pb2.Review.HOST
GUEST = resources_pb2.Review.GUEST


async def scheduled_event(
    events: event_grpc.EventServiceAsyncStub,
    db_pool: asyncpg.Pool,
    clock: ManualClock,
    host: Caller,
    guests: Sequence[Caller] = (),
    **kwargs: object,
) -> event_pb2.Event:
    """An event starting in a minute and lasting a minute, each guest holding a confirmed one-seat booking."""
    kwargs.setdefault("capacity", max(len(guests), 1))
    request = create_request(clock.now(), start_in=timedelta(minutes=1), minutes=1, **kwargs)
    event = await events.CreateEvent(request, metadata=host.metadata)
    for guest in guests:
        await book_directly(db_pool, event.name, guest)
    return event


async def complete(
    events: event_grpc.EventServiceAsyncStub, clock: ManualClock, host: Caller, event: event_pb2.Event
) -> event_pb2.Event:
    """Move the shared clock past the event's end and have the host mark it held."""
    end = event.end_time.ToDatetime(tzinfo=UTC)
    if clock.now() <= end:
        clock.advance(end - clock.now() + timedelta(seconds=1))
    request = event_service_pb2.CompleteEventRequest(name=event.name)
    return await events.CompleteEvent(request, metadata=host.metadata)


async def held_event(
    events: event_grpc.EventServiceAsyncStub,
    db_pool: asyncpg.Pool,
    clock: ManualClock,
    host: Caller,
    guests: Sequence[Caller] = (),
    **kwargs: object,
) -> event_pb2.Event:
    """A COMPLETED event whose participants are ``host`` and ``guests``."""
    event = await scheduled_event(events, db_pool, clock, host, guests, **kwargs)
    return await complete(events, clock, host, event)


def review_request(
    event: str,
    subject_type: resources_pb2.Review.SubjectType.ValueType,
    rating: int,
    *,
    subject_user: str = "",
    text: str = "",
    request_id: str = "",
) -> service_pb2.CreateReviewRequest:
    return service_pb2.CreateReviewRequest(
        review=resources_pb2.Review(
            event=event, subject_type=subject_type, subject_user=subject_user, rating=rating, text=text
        ),
        request_id=request_id,
    )


def servers_cache(database_url: str) -> Cache:
    """The cache the API test servers use (their settings: the environment's Redis, if any), for a reveal job
    that must invalidate what they cached. Close it with ``aclose()``."""
    return cache_from_settings(ReviewSettings(**servers.settings_env(database_url)))


async def close_review_window(db_pool: asyncpg.Pool, clock: ManualClock, database_url: str) -> int:
    """Move the shared clock past every open review window and run the worker's reveal job once (as the worker
    does every ``jobs_interval_seconds``), with the cache the servers use; returns how many reviews it revealed."""
    clock.advance(DEFAULT_REVIEW_WINDOW + timedelta(seconds=1))
    cache = servers_cache(database_url)
    try:
        return (await reveal_job(db_pool, clock, cache, "https://cowatch.test").run_once()).reviews
    finally:
        await cache.aclose()
