"""EventService.ListEvents: visibility, every filter, ordering and keyset pagination."""

from __future__ import annotations

import uuid
from datetime import timedelta

import grpc
import pytest
from cowatch.event.v1 import service_pb2
from cowatch.event.v1 import service_pb2_grpc as event_grpc

from services.common.clock import ManualClock
from tests.support.api import expect_error, new_caller
from tests.support.factories import book_directly, create_request, ts

pytestmark = pytest.mark.asyncio(loop_scope="session")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _names(events: event_grpc.EventServiceAsyncStub, metadata=(), **filters) -> list[str]:
    response = await events.ListEvents(service_pb2.ListEventsRequest(page_size=100, **filters), metadata=metadata)
    return [e.name for e in response.events]


async def test_only_public_scheduled_events_are_listed(events: event_grpc.EventServiceAsyncStub, clock: ManualClock):
    host = new_caller()
    film = unique("film")
    now = clock.now()
    public = await events.CreateEvent(create_request(now, film_id=film), metadata=host.metadata)
    private = await events.CreateEvent(create_request(now, film_id=film, private=True), metadata=host.metadata)
    cancelled = await events.CreateEvent(create_request(now, film_id=film), metadata=host.metadata)
    await events.CancelEvent(service_pb2.CancelEventRequest(name=cancelled.name), metadata=host.metadata)

    assert await _names(events, film_id=film) == [public.name]
    assert await _names(events, new_caller().metadata, film_id=film) == [public.name]
    # The host listing their own events sees all of them.
    own = await _names(events, host.metadata, film_id=film, host=host.resource)
    assert set(own) == {public.name, private.name, cancelled.name}
    # Someone else filtering by that host sees only the public one.
    assert await _names(events, new_caller().metadata, host=host.resource) == [public.name]


async def test_each_filter(events: event_grpc.EventServiceAsyncStub, clock: ManualClock, db_pool):
    host = new_caller()
    now = clock.now()
    city = unique("Town")
    film = unique("film")
    a = await events.CreateEvent(
        create_request(now, city=city, start_in=timedelta(days=1), title="Kubrick marathon", film_title="2001"),
        metadata=host.metadata,
    )
    b = await events.CreateEvent(
        create_request(now, city=city, start_in=timedelta(days=2), film_id=film, film_title="Stalker", capacity=1),
        metadata=host.metadata,
    )
    c = await events.CreateEvent(
        create_request(now, city=city, start_in=timedelta(days=3), title="Tarkovsky evening", film_title="Mirror"),
        metadata=new_caller().metadata,
    )
    await book_directly(db_pool, b.name, new_caller())  # b is now full

    assert await _names(events, city=city) == [a.name, b.name, c.name]  # ordered by start time
    assert await _names(events, city=city.upper()) == [a.name, b.name, c.name]  # case-insensitive
    assert await _names(events, city=city, film_id=film) == [b.name]
    assert await _names(events, city=city, has_free_seats=True) == [a.name, c.name]
    assert await _names(events, city=city, host=host.resource) == [a.name, b.name]
    assert await _names(events, city=city, query="kubrick") == [a.name]  # title
    assert await _names(events, city=city, query="STALK") == [b.name]  # film title
    assert await _names(events, city=city, query="100%_") == []  # wildcards are literal
    window = {
        "start_time_from": ts(now + timedelta(days=1, hours=12)),
        "start_time_to": ts(now + timedelta(days=2, hours=12)),
    }
    assert await _names(events, city=city, **window) == [b.name]


async def test_past_events_are_not_listed_by_default(events: event_grpc.EventServiceAsyncStub, clock: ManualClock):
    host = new_caller()
    city = unique("Past")
    soon = await events.CreateEvent(
        create_request(clock.now(), city=city, start_in=timedelta(hours=1)), metadata=host.metadata
    )
    later = await events.CreateEvent(
        create_request(clock.now(), city=city, start_in=timedelta(days=9)), metadata=host.metadata
    )
    clock.advance(hours=2)
    assert await _names(events, city=city) == [later.name]
    assert await _names(events, city=city, start_time_from=ts(clock.now() - timedelta(days=1))) == [
        soon.name,
        later.name,
    ]


async def test_keyset_pagination_walks_every_event_once(events: event_grpc.EventServiceAsyncStub, clock: ManualClock):
    host = new_caller()
    city = unique("Paged")
    created = []
    for i in range(7):
        # Two events share each start time, so the id breaks ties.
        e = await events.CreateEvent(
            create_request(clock.now(), city=city, start_in=timedelta(days=1 + i // 2)), metadata=host.metadata
        )
        created.append(e)
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await events.ListEvents(service_pb2.ListEventsRequest(city=city, page_size=3, page_token=token))
        seen += [e.name for e in page.events]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert len(seen) == len(set(seen)) == 7
    expected = sorted(created, key=lambda e: (e.start_time.ToDatetime(), uuid.UUID(e.name.split("/")[1])))
    assert seen == [e.name for e in expected]


async def test_text_pages_follow_start_time_and_id_across_the_walked_week(
    events: event_grpc.EventServiceAsyncStub, clock: ManualClock
):
    """Free text reads its first week from the GiST index in start-time order and the rest from the GIN index
    (services.event.repository.build_list_sql); pages must still be exactly (start_time, id) order with ties
    split across pages, on both sides of the week and across it."""
    host = new_caller()
    word = unique("zq")
    created = []
    # Three events per start time (ties broken by id), before and after the first week from now.
    for days in (1, 1, 1, 3, 3, 6, 9, 9, 9, 12):
        e = await events.CreateEvent(
            create_request(clock.now(), start_in=timedelta(days=days), title=f"Night of {word}"),
            metadata=host.metadata,
        )
        created.append(e)
    await events.CreateEvent(create_request(clock.now(), start_in=timedelta(days=2)), metadata=host.metadata)
    await events.CreateEvent(
        create_request(clock.now(), start_in=timedelta(days=2), title=word, private=True), metadata=host.metadata
    )
    expected = [
        e.name for e in sorted(created, key=lambda e: (e.start_time.ToDatetime(), uuid.UUID(e.name.split("/")[1])))
    ]
    for size in (1, 2, 4, 100):
        seen: list[str] = []
        token = ""
        while True:
            page = await events.ListEvents(
                service_pb2.ListEventsRequest(query=word.upper(), page_size=size, page_token=token)
            )
            seen += [e.name for e in page.events]
            token = page.next_page_token
            if not token:
                break
        assert seen == expected, size


async def test_page_token_is_bound_to_its_filters(events: event_grpc.EventServiceAsyncStub, clock: ManualClock):
    host = new_caller()
    city = unique("Bound")
    for _ in range(3):
        await events.CreateEvent(create_request(clock.now(), city=city), metadata=host.metadata)
    page = await events.ListEvents(service_pb2.ListEventsRequest(city=city, page_size=1))
    assert page.next_page_token
    err = await expect_error(
        events.ListEvents(service_pb2.ListEventsRequest(city="Elsewhere", page_size=1, page_token=page.next_page_token))
    )
    assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")
    assert "page_token" in err.fields


@pytest.mark.parametrize("token", ["garbage", "eyJ2IjoxfQ", "%%%", "x" * 5000])
async def test_malformed_page_token(events: event_grpc.EventServiceAsyncStub, token: str):
    err = await expect_error(events.ListEvents(service_pb2.ListEventsRequest(page_token=token)))
    # an oversized token is refused by the text rule every request string obeys, before it is decoded
    reason = "INVALID_ARGUMENT" if len(token) > 2048 else "INVALID_PAGE_TOKEN"
    assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert len(token) <= 2048 or "page_token" in err.fields


@pytest.mark.parametrize(
    ("request_kwargs", "field"),
    [
        ({"page_size": -1}, "page_size"),
        ({"host": "events/123"}, "host"),
        ({"host": "users/"}, "host"),
        ({"query": "q" * 101}, "query"),
        ({"city": "c" * 101}, "city"),
        ({"film_id": "f" * 101}, "film_id"),
    ],
)
async def test_bad_list_filters(
    events: event_grpc.EventServiceAsyncStub, request_kwargs: dict[str, object], field: str
):
    err = await expect_error(events.ListEvents(service_pb2.ListEventsRequest(**request_kwargs)))  # type: ignore[arg-type]
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.fields


async def test_time_window_must_be_ordered(events: event_grpc.EventServiceAsyncStub, clock: ManualClock):
    now = clock.now()
    err = await expect_error(
        events.ListEvents(service_pb2.ListEventsRequest(start_time_from=ts(now), start_time_to=ts(now)))
    )
    assert "start_time_to" in err.fields


async def test_page_size_is_capped(events: event_grpc.EventServiceAsyncStub, clock: ManualClock):
    host = new_caller()
    film = unique("many")
    for _ in range(103):
        await events.CreateEvent(create_request(clock.now(), film_id=film), metadata=host.metadata)
    page = await events.ListEvents(service_pb2.ListEventsRequest(film_id=film, page_size=1000))
    assert len(page.events) == 100
    assert page.next_page_token
    default = await events.ListEvents(service_pb2.ListEventsRequest(film_id=film))
    assert len(default.events) == 50


async def test_listed_events_hide_addresses_except_to_host_and_guests(
    events: event_grpc.EventServiceAsyncStub, clock: ManualClock, db_pool
):
    host, guest = new_caller(), new_caller()
    film = unique("addr")
    created = await events.CreateEvent(create_request(clock.now(), film_id=film), metadata=host.metadata)
    await book_directly(db_pool, created.name, guest)
    (anon,) = (await events.ListEvents(service_pb2.ListEventsRequest(film_id=film))).events
    assert anon.place.address == "" and anon.address_hidden
    (mine,) = (await events.ListEvents(service_pb2.ListEventsRequest(film_id=film), metadata=guest.metadata)).events
    assert mine.place.address == "Torstr. 1, 10119"
    (own,) = (
        await events.ListEvents(service_pb2.ListEventsRequest(film_id=film, host=host.resource), metadata=host.metadata)
    ).events
    assert own.place.address == "Torstr. 1, 10119"
