"""EventService: CreateEvent and GetEvent rules, through a real server and database."""

from __future__ import annotations

import uuid
from datetime import timedelta

import grpc
import pytest
from cowatch.event.v1 import resources_pb2, service_pb2
from cowatch.event.v1 import service_pb2_grpc as event_grpc
from google.protobuf import duration_pb2

from services.common.auth import issue_token
from services.common.clock import ManualClock
from tests.support.api import AUDIENCE, HS256_SECRET, ISSUER, expect_error, new_caller
from tests.support.factories import book_directly, create_request, ts

pytestmark = pytest.mark.asyncio(loop_scope="session")
INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def test_create_returns_the_event_with_server_fields(
    events: event_grpc.EventServiceAsyncStub, clock: ManualClock
):
    host = new_caller("Anna")
    event = await events.CreateEvent(create_request(clock.now(), capacity=6), metadata=host.metadata)
    assert event.name.startswith("events/")
    uuid.UUID(event.name.split("/")[1])
    assert event.host == host.resource
    assert event.host_display_name == "Anna"
    assert event.state == resources_pb2.Event.SCHEDULED
    assert (event.capacity, event.seats_taken, event.seats_available) == (6, 0, 6)
    assert event.end_time.ToDatetime() - event.start_time.ToDatetime() == timedelta(minutes=120)
    assert event.place.address == "Torstr. 1, 10119"
    assert not event.address_hidden
    assert event.share_link == f"https://cowatch.test/{event.name}"
    assert event.invite_token == ""  # public events have no visible token
    assert event.etag
    assert event.HasField("create_time")


async def test_private_event_gives_host_an_invite_link(events: event_grpc.EventServiceAsyncStub, clock: ManualClock):
    host = new_caller()
    event = await events.CreateEvent(create_request(clock.now(), private=True), metadata=host.metadata)
    assert len(event.invite_token) >= 16
    assert event.share_link == f"https://cowatch.test/{event.name}?invite={event.invite_token}"


async def test_create_needs_a_token(events: event_grpc.EventServiceAsyncStub, clock: ManualClock):
    err = await expect_error(events.CreateEvent(create_request(clock.now())))
    assert (err.code, err.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")


@pytest.mark.parametrize(
    ("token_kwargs", "reason"),
    [
        ({"key": "another-secret-another-secret-another!"}, "TOKEN_INVALID"),
        ({"expires_in": timedelta(hours=-1)}, "TOKEN_EXPIRED"),
        ({"audience": "someone-else"}, "TOKEN_INVALID"),
        ({"issuer": "https://evil.example"}, "TOKEN_INVALID"),
    ],
    ids=["forged", "expired", "wrong-audience", "wrong-issuer"],
)
async def test_bad_tokens_are_refused(
    events: event_grpc.EventServiceAsyncStub, clock: ManualClock, token_kwargs: dict[str, object], reason: str
):
    claims: dict[str, object] = {"subject": "mallory", "issuer": ISSUER, "audience": AUDIENCE, "key": HS256_SECRET}
    claims.update(token_kwargs)
    token = issue_token(**claims)  # type: ignore[arg-type]
    err = await expect_error(
        events.CreateEvent(create_request(clock.now()), metadata=(("authorization", f"Bearer {token}"),))
    )
    assert (err.code, err.reason) == (grpc.StatusCode.UNAUTHENTICATED, reason)


async def test_a_bad_token_is_refused_even_on_public_reads(events: event_grpc.EventServiceAsyncStub):
    err = await expect_error(
        events.ListEvents(service_pb2.ListEventsRequest(), metadata=(("authorization", "Bearer not.a.jwt"),))
    )
    assert (err.code, err.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")


def _mutate(field: str):
    def edit(request: service_pb2.CreateEventRequest) -> None:
        e = request.event
        match field:
            case "empty-title":
                e.title = "   "
            case "long-title":
                e.title = "x" * 201
            case "long-description":
                e.description = "x" * 5001
            case "no-film":
                e.ClearField("film")
            case "empty-film-id":
                e.film.id = ""
            case "long-film-title":
                e.film.title = "x" * 301
            case "no-start":
                e.ClearField("start_time")
            case "bad-zone":
                e.time_zone = "Mars/Olympus_Mons"
            case "empty-zone":
                e.time_zone = ""
            case "no-duration":
                e.ClearField("duration")
            case "short-duration":
                e.duration.CopyFrom(duration_pb2.Duration(seconds=30))
            case "long-duration":
                e.duration.CopyFrom(duration_pb2.Duration(seconds=25 * 3600))
            case "odd-duration":
                e.duration.CopyFrom(duration_pb2.Duration(seconds=90))
            case "no-place":
                e.ClearField("place")
            case "empty-city":
                e.place.city = ""
            case "long-address":
                e.place.address = "x" * 501
            case "zero-capacity":
                e.capacity = 0
            case "negative-capacity":
                e.capacity = -3
            case "huge-capacity":
                e.capacity = 1001
            case "no-visibility":
                e.visibility = resources_pb2.Event.VISIBILITY_UNSPECIFIED
            case "unknown-visibility":
                e.visibility = 42  # type: ignore[assignment]
            case "control-chars":
                e.title = "bad\x00title"
            case _:
                raise AssertionError(field)

    return edit


@pytest.mark.parametrize(
    ("case", "field"),
    [
        ("empty-title", "event.title"),
        ("long-title", "event.title"),
        ("long-description", "event.description"),
        ("no-film", "event.film"),
        ("empty-film-id", "event.film.id"),
        ("long-film-title", "event.film.title"),
        ("no-start", "event.start_time"),
        ("bad-zone", "event.time_zone"),
        ("empty-zone", "event.time_zone"),
        ("no-duration", "event.duration"),
        ("short-duration", "event.duration"),
        ("long-duration", "event.duration"),
        ("odd-duration", "event.duration"),
        ("no-place", "event.place"),
        ("empty-city", "event.place.city"),
        ("long-address", "event.place.address"),
        ("zero-capacity", "event.capacity"),
        ("negative-capacity", "event.capacity"),
        ("huge-capacity", "event.capacity"),
        ("no-visibility", "event.visibility"),
        ("unknown-visibility", "event.visibility"),
        ("control-chars", "event.title"),
    ],
)
async def test_bad_input_names_the_field(
    events: event_grpc.EventServiceAsyncStub, clock: ManualClock, case: str, field: str
):
    request = create_request(clock.now())
    _mutate(case)(request)
    err = await expect_error(events.CreateEvent(request, metadata=new_caller().metadata))
    assert err.code == INVALID
    assert err.reason == "INVALID_ARGUMENT"
    assert field in err.fields, err.fields


async def test_start_must_be_in_the_future(events: event_grpc.EventServiceAsyncStub, clock: ManualClock):
    err = await expect_error(
        events.CreateEvent(create_request(clock.now(), start_in=timedelta(minutes=-1)), metadata=new_caller().metadata)
    )
    assert err.code == INVALID
    assert err.fields == {"event.start_time": "must be in the future"}


async def test_start_too_far_ahead_is_refused(events: event_grpc.EventServiceAsyncStub, clock: ManualClock):
    err = await expect_error(
        events.CreateEvent(create_request(clock.now(), start_in=timedelta(days=800)), metadata=new_caller().metadata)
    )
    assert "event.start_time" in err.fields


async def test_out_of_range_timestamp_is_invalid_not_internal(
    events: event_grpc.EventServiceAsyncStub, clock: ManualClock
):
    request = create_request(clock.now())
    request.event.start_time.seconds = 253402300800 + 10  # after 9999-12-31
    err = await expect_error(events.CreateEvent(request, metadata=new_caller().metadata))
    assert err.code == INVALID
    assert "event.start_time" in err.fields


async def test_missing_event_message(events: event_grpc.EventServiceAsyncStub):
    err = await expect_error(events.CreateEvent(service_pb2.CreateEventRequest(), metadata=new_caller().metadata))
    assert err.code == INVALID
    assert "event" in err.fields


async def test_request_id_makes_create_idempotent(events: event_grpc.EventServiceAsyncStub, clock: ManualClock):
    host = new_caller()
    request = create_request(clock.now())
    request.request_id = str(uuid.uuid4())
    first = await events.CreateEvent(request, metadata=host.metadata)
    again = await events.CreateEvent(request, metadata=host.metadata)
    assert again.name == first.name
    # A different user with the same key is a different request scope.
    other = await events.CreateEvent(request, metadata=new_caller().metadata)
    assert other.name != first.name
    request.event.title = "Something else"
    err = await expect_error(events.CreateEvent(request, metadata=host.metadata))
    assert (err.code, err.reason) == (INVALID, "REQUEST_ID_REUSED")


async def test_request_id_must_be_a_uuid(events: event_grpc.EventServiceAsyncStub, clock: ManualClock):
    request = create_request(clock.now())
    request.request_id = "retry-1"
    err = await expect_error(events.CreateEvent(request, metadata=new_caller().metadata))
    assert err.code == INVALID
    assert "request_id" in err.fields


async def test_public_event_is_readable_anonymously_without_address(
    events: event_grpc.EventServiceAsyncStub, clock: ManualClock
):
    created = await events.CreateEvent(create_request(clock.now()), metadata=new_caller().metadata)
    event = await events.GetEvent(service_pb2.GetEventRequest(name=created.name))
    assert event.title == created.title
    assert event.place.city == "Berlin"
    assert event.place.address == ""
    assert event.address_hidden
    assert event.invite_token == ""


async def test_private_event_visibility(events: event_grpc.EventServiceAsyncStub, clock: ManualClock, db_pool):
    host, stranger, guest = new_caller(), new_caller(), new_caller()
    created = await events.CreateEvent(create_request(clock.now(), private=True), metadata=host.metadata)
    get = service_pb2.GetEventRequest(name=created.name)

    for metadata in ((), stranger.metadata):
        err = await expect_error(events.GetEvent(get, metadata=metadata))
        assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "EVENT_NOT_FOUND")
    wrong = service_pb2.GetEventRequest(name=created.name, invite_token="x" * 32)
    err = await expect_error(events.GetEvent(wrong, metadata=stranger.metadata))
    assert err.code == grpc.StatusCode.NOT_FOUND

    invited = await events.GetEvent(
        service_pb2.GetEventRequest(name=created.name, invite_token=created.invite_token), metadata=stranger.metadata
    )
    assert invited.address_hidden
    assert invited.invite_token == ""
    assert invited.share_link == f"https://cowatch.test/{created.name}"

    as_host = await events.GetEvent(get, metadata=host.metadata)
    assert as_host.place.address and as_host.invite_token == created.invite_token

    await book_directly(db_pool, created.name, guest)
    as_guest = await events.GetEvent(get, metadata=guest.metadata)
    assert as_guest.place.address == "Torstr. 1, 10119"
    assert not as_guest.address_hidden
    assert as_guest.invite_token == ""


@pytest.mark.parametrize("name", ["", "events/", "events/not-a-uuid", "bookings/" + str(uuid.UUID(int=1)), "x"])
async def test_get_with_malformed_name(events: event_grpc.EventServiceAsyncStub, name: str):
    err = await expect_error(events.GetEvent(service_pb2.GetEventRequest(name=name)))
    assert err.code == INVALID
    assert "name" in err.fields


async def test_get_unknown_event(events: event_grpc.EventServiceAsyncStub):
    err = await expect_error(events.GetEvent(service_pb2.GetEventRequest(name=f"events/{uuid.uuid4()}")))
    assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "EVENT_NOT_FOUND")


async def test_request_id_header_is_echoed(events: event_grpc.EventServiceAsyncStub, clock: ManualClock):
    created = await events.CreateEvent(create_request(clock.now()), metadata=new_caller().metadata)
    call = events.GetEvent(service_pb2.GetEventRequest(name=created.name), metadata=(("x-request-id", "req-abc-1"),))
    await call
    assert ("x-request-id", "req-abc-1") in tuple(await call.trailing_metadata())


async def test_times_round_trip(events: event_grpc.EventServiceAsyncStub, clock: ManualClock):
    start = (clock.now() + timedelta(days=5)).replace(microsecond=0)
    request = create_request(clock.now())
    request.event.start_time.CopyFrom(ts(start))
    created = await events.CreateEvent(request, metadata=new_caller().metadata)
    assert created.start_time.ToDatetime().replace(tzinfo=start.tzinfo) == start
