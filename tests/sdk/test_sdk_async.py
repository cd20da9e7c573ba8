"""AsyncCowatchClient against the real services: CRUD and pagination, typed errors with reasons and field
violations, request ids reused by retries, and no retry where a retry is unsafe."""

from __future__ import annotations

import uuid
from datetime import timedelta

import grpc
import pytest
from cowatch_client import (
    AsyncCowatchClient,
    ClientOptions,
    CowatchError,
    Internal,
    InvalidArgument,
    NotFound,
    RetryPolicy,
    SoldOut,
    Unauthenticated,
    Unavailable,
)
from cowatch_client._proto.cowatch.booking.v1 import service_pb2 as booking_service
from cowatch_client._proto.cowatch.event.v1 import service_pb2 as event_service
from cowatch_client.types import Booking

from tests.sdk.conftest import new_event, unique_city
from tests.support.api import new_caller
from tests.support.grpc_proxy import GrpcProxy

pytestmark = pytest.mark.asyncio(loop_scope="session")


def client(target: str, token: str | None = None, **options: object) -> AsyncCowatchClient:
    return AsyncCowatchClient(target, token=token, options=ClientOptions(**options))  # type: ignore[arg-type]


async def test_create_get_and_list_every_page(target: str, proxy: GrpcProxy):
    city = unique_city()
    async with client(target, new_caller("Host").token) as host:
        created = [
            await host.events.create(new_event(title=f"Night {i}", city=city, start_in=timedelta(days=3, hours=i)))
            for i in range(5)
        ]
        assert (await host.events.get(created[0].name)).title == "Night 0"
        listed = [event.name async for event in host.events.list(city=city, page_size=2)]
    assert listed == [event.name for event in created]
    assert len(proxy.attempts_of("ListEvents")) == 3  # 2 + 2 + 1, each page fetched once
    request_ids = [
        event_service.CreateEventRequest.FromString(a.request).request_id for a in proxy.attempts_of("CreateEvent")
    ]
    assert len(set(request_ids)) == 5  # a fresh id for every write
    assert all(uuid.UUID(rid).version == 4 for rid in request_ids)


async def test_every_call_has_a_deadline_the_call_may_override(target: str, proxy: GrpcProxy):
    async with client(target, new_caller().token, timeout=7.0) as guest:
        for timeout in (None, 2.0):
            with pytest.raises(NotFound):
                await guest.events.get(f"events/{uuid.uuid4()}", timeout=timeout)
    default, overridden = (a.deadline for a in proxy.attempts_of("GetEvent"))
    # The wire format rounds a timeout up (grpc-timeout units), so the server may see a hair more than was set.
    assert default is not None and 5.0 < default <= 7.05
    assert overridden is not None and 1.0 < overridden <= 2.05


async def test_booking_and_sold_out_with_its_reason(target: str, proxy: GrpcProxy):
    async with (
        client(target, new_caller("Host").token) as host,
        client(target, new_caller("Ana").token) as ana,
        client(target, new_caller("Ben").token) as ben,
    ):
        event = await host.events.create(new_event(capacity=3))
        booking = await ana.bookings.create(event.name, seats=2)
        assert (booking.event, booking.seats, booking.state) == (event.name, 2, Booking.CONFIRMED)
        assert [b.name async for b in ana.bookings.list()] == [booking.name]
        assert (await ana.events.get(event.name)).place.address  # a confirmed guest sees the address

        with pytest.raises(SoldOut) as caught:
            await ben.bookings.create(event.name, seats=2)
    error = caught.value
    assert isinstance(error, CowatchError)
    assert error.reason == "EVENT_SOLD_OUT"
    assert error.code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION)
    assert error.metadata["seats_available"] == "1"
    assert len(proxy.attempts_of("CreateBooking")) == 2  # the refusal was not retried


async def test_bad_input_raises_invalid_argument_with_every_field(target: str):
    bad = new_event(capacity=0)
    bad.place.city = ""
    async with client(target, new_caller().token) as host:
        with pytest.raises(InvalidArgument) as caught:
            await host.events.create(bad)
        assert caught.value.reason == "INVALID_ARGUMENT"
        assert {"event.capacity", "event.place.city"} <= set(caught.value.fields)
        assert all(v.description for v in caught.value.field_violations)

        with pytest.raises(InvalidArgument) as caught:
            await host.bookings.create("events/not-a-uuid", seats=9)
    assert set(caught.value.fields) == {"booking.event", "booking.seats"}


async def test_not_found_and_unauthenticated(target: str):
    async with client(target, new_caller().token) as user, client(target) as anonymous:
        with pytest.raises(NotFound) as missing:
            await user.events.get(f"events/{uuid.uuid4()}")
        with pytest.raises(Unauthenticated) as no_token:
            await anonymous.bookings.create(f"events/{uuid.uuid4()}")
    assert missing.value.reason == "EVENT_NOT_FOUND"
    assert no_token.value.reason == "TOKEN_MISSING"


async def test_a_lost_reply_is_retried_with_the_same_request_id_and_books_once(target: str, proxy: GrpcProxy):
    async with client(target, new_caller("Host").token) as host, client(target, new_caller("Ana").token) as ana:
        event = await host.events.create(new_event(capacity=4))
        # The service books the seats, then the reply is lost: the client sees UNAVAILABLE and retries.
        proxy.fail("BookingService/CreateBooking", after_forward=True)
        booking = await ana.bookings.create(event.name, seats=2)

        attempts = [
            booking_service.CreateBookingRequest.FromString(a.request) for a in proxy.attempts_of("CreateBooking")
        ]
        assert len(attempts) == 2
        assert attempts[0].request_id == attempts[1].request_id
        uuid.UUID(attempts[0].request_id)
        assert [b.name async for b in ana.bookings.list()] == [booking.name]  # one booking, not two
        assert (await ana.events.get(event.name)).seats_taken == 2


async def test_reads_are_retried_until_the_service_answers(target: str, proxy: GrpcProxy):
    async with client(target, new_caller("Host").token) as host:
        event = await host.events.create(new_event())
        proxy.fail("EventService/GetEvent", after_forward=False, times=2)
        assert (await host.events.get(event.name)).name == event.name
    assert len(proxy.attempts_of("GetEvent")) == 3


async def test_retries_are_bounded(target: str, proxy: GrpcProxy):
    async with client(target, new_caller().token, retry=RetryPolicy(max_attempts=3, initial_backoff=0.01)) as user:
        proxy.fail("EventService/GetEvent", after_forward=False, times=10)
        with pytest.raises(Unavailable):
            await user.events.get(f"events/{uuid.uuid4()}")
    assert len(proxy.attempts_of("GetEvent")) == 3


async def test_writes_without_a_request_id_are_not_retried(target: str, proxy: GrpcProxy):
    async with client(target, new_caller("Host").token) as host:
        event = await host.events.create(new_event(title="Before"))
        event.title = "After"
        proxy.fail("EventService/UpdateEvent", after_forward=True)
        with pytest.raises(Unavailable):
            await host.events.update(event, update_mask=["title"])
        assert len(proxy.attempts_of("UpdateEvent")) == 1
        # The update did happen: a blind retry with the old etag would have failed, or applied it twice.
        assert (await host.events.get(event.name)).title == "After"


async def test_other_failures_are_not_retried(target: str, proxy: GrpcProxy):
    async with client(target, new_caller("Host").token) as host, client(target, new_caller().token) as guest:
        event = await host.events.create(new_event())
        proxy.fail("BookingService/CreateBooking", grpc.StatusCode.INTERNAL, after_forward=False)
        with pytest.raises(Internal):
            await guest.bookings.create(event.name)
    assert len(proxy.attempts_of("CreateBooking")) == 1


async def test_reviews_client_reads_ratings_and_profiles(target: str):
    user = new_caller()
    async with client(target, user.token) as sdk:
        with pytest.raises(NotFound) as unknown:
            [e async for e in sdk.reviews.held_events(user.id)]
        assert unknown.value.reason == "USER_NOT_FOUND"
        created = await sdk.events.create(new_event())  # now a host, with nothing held yet
        ics = await sdk.events.export_calendar(created.name)
        assert ics.startswith(b"BEGIN:VCALENDAR") and f"UID:{created.name[7:]}@cowatch".encode() in ics
        feed_token = await sdk.events.rotate_calendar_token()
        assert feed_token.token in feed_token.feed_url
        assert f"UID:{created.name[7:]}@cowatch".encode() in await sdk.events.calendar(feed_token.token)
        rating = await sdk.reviews.user_rating(user.id)
        assert rating.name == f"users/{user.id}/rating"
        assert (rating.as_guest.count, rating.as_host.count) == (0, 0)
        assert [e async for e in sdk.reviews.held_events(user.id)] == []
        with pytest.raises(NotFound) as gone:  # DeleteReview is wired (and someone else's review is unknown)
            await sdk.reviews.delete(f"reviews/{uuid.uuid4()}")
        assert gone.value.reason == "REVIEW_NOT_FOUND"
