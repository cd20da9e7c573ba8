"""BookingService.GetBooking, ListBookings and CancelBooking through real servers and database."""

from __future__ import annotations

import uuid
from datetime import timedelta

import grpc
import pytest
from cowatch.booking.v1 import resources_pb2 as booking_pb2
from cowatch.booking.v1 import service_pb2 as booking_service_pb2
from cowatch.booking.v1 import service_pb2_grpc as booking_grpc
from cowatch.event.v1 import service_pb2 as event_service_pb2
from cowatch.event.v1 import service_pb2_grpc as event_grpc

from services.common.clock import ManualClock
from tests.support.api import Caller, expect_error, new_caller
from tests.support.bookings import book, cancel, new_event, outbox_for, reminders_for, seat_counts

pytestmark = pytest.mark.asyncio(loop_scope="session")
INVALID = grpc.StatusCode.INVALID_ARGUMENT
CONFIRMED, CANCELLED = booking_pb2.Booking.CONFIRMED, booking_pb2.Booking.CANCELLED


def get(name: str) -> booking_service_pb2.GetBookingRequest:
    return booking_service_pb2.GetBookingRequest(name=name)


# ---------------------------------------------------------------------------------------------- get


async def test_guest_and_host_see_the_booking_nobody_else_does(
    events: event_grpc.EventServiceAsyncStub, bookings: booking_grpc.BookingServiceAsyncStub, clock: ManualClock
):
    host, guest = new_caller(), new_caller()
    event = await new_event(events, clock, host)
    booking = await bookings.CreateBooking(book(event, 2), metadata=guest.metadata)
    assert await bookings.GetBooking(get(booking.name), metadata=guest.metadata) == booking
    assert await bookings.GetBooking(get(booking.name), metadata=host.metadata) == booking
    stranger = await expect_error(bookings.GetBooking(get(booking.name), metadata=new_caller().metadata))
    unknown = await expect_error(bookings.GetBooking(get(f"bookings/{uuid.uuid4()}"), metadata=guest.metadata))
    # Indistinguishable: a stranger can't tell that the booking exists.
    assert (
        (stranger.code, stranger.reason)
        == (unknown.code, unknown.reason)
        == (
            grpc.StatusCode.NOT_FOUND,
            "BOOKING_NOT_FOUND",
        )
    )
    anonymous = await expect_error(bookings.GetBooking(get(booking.name)))
    assert anonymous.code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("name", ["", "bookings/", "bookings/123", "events/3b2c8a4e-8a0e-4a8e-9f3c-8d6f0c1e2a3b"])
async def test_malformed_booking_names(bookings: booking_grpc.BookingServiceAsyncStub, name: str):
    caller = new_caller()
    for call in (
        bookings.GetBooking(get(name), metadata=caller.metadata),
        bookings.CancelBooking(cancel(name), metadata=caller.metadata),
    ):
        err = await expect_error(call)
        assert err.code == INVALID
        assert "name" in err.fields


# ---------------------------------------------------------------------------------------------- cancel


async def test_guest_cancels_seats_return_host_is_told_reminders_dropped(
    events: event_grpc.EventServiceAsyncStub,
    bookings: booking_grpc.BookingServiceAsyncStub,
    clock: ManualClock,
    db_pool,
):
    host, guest = new_caller("Anna"), new_caller("Ben")
    event = await new_event(events, clock, host, capacity=4)
    booking = await bookings.CreateBooking(book(event, 3), metadata=guest.metadata)
    assert await seat_counts(db_pool, event.name) == (3, 3, 1)

    cancelled = await bookings.CancelBooking(cancel(booking), metadata=guest.metadata)
    assert cancelled.state == CANCELLED
    assert cancelled.cancel_time.ToDatetime() == clock.now().replace(tzinfo=None)
    assert (cancelled.name, cancelled.seats, cancelled.event) == (booking.name, 3, event.name)
    assert await seat_counts(db_pool, event.name) == (0, 0, 0)
    assert await reminders_for(db_pool, event.name, guest.id) == {}
    mail = await outbox_for(db_pool, booking.name)
    assert mail["booking_cancelled"]["recipients"] == [host.id]
    assert mail["booking_cancelled"]["params"]["guest_name"] == "Ben"
    assert mail["booking_cancelled"]["params"]["seats"] == 3
    # The freed seats can be booked by someone else.
    await bookings.CreateBooking(book(event, 4), metadata=new_caller().metadata)
    assert (await bookings.GetBooking(get(booking.name), metadata=guest.metadata)).state == CANCELLED


async def test_cancel_is_idempotent(
    events: event_grpc.EventServiceAsyncStub,
    bookings: booking_grpc.BookingServiceAsyncStub,
    clock: ManualClock,
    db_pool,
):
    guest = new_caller()
    event = await new_event(events, clock, capacity=5)
    booking = await bookings.CreateBooking(book(event, 2), metadata=guest.metadata)
    first = await bookings.CancelBooking(cancel(booking), metadata=guest.metadata)
    clock.advance(1)
    again = await bookings.CancelBooking(cancel(booking), metadata=guest.metadata)
    assert again == first  # unchanged, cancel_time included
    assert await seat_counts(db_pool, event.name) == (0, 0, 0)  # seats were given back once


async def test_cancel_with_request_id(
    events: event_grpc.EventServiceAsyncStub, bookings: booking_grpc.BookingServiceAsyncStub, clock: ManualClock
):
    guest = new_caller()
    event = await new_event(events, clock)
    booking = await bookings.CreateBooking(book(event), metadata=guest.metadata)
    other = await bookings.CreateBooking(
        book(await new_event(events, clock, start_in=timedelta(days=11))), metadata=guest.metadata
    )
    rid = str(uuid.uuid4())
    first = await bookings.CancelBooking(cancel(booking, request_id=rid), metadata=guest.metadata)
    assert await bookings.CancelBooking(cancel(booking, request_id=rid), metadata=guest.metadata) == first
    err = await expect_error(bookings.CancelBooking(cancel(other, request_id=rid), metadata=guest.metadata))
    assert (err.code, err.reason) == (INVALID, "REQUEST_ID_REUSED")
    bad = await expect_error(bookings.CancelBooking(cancel(other, request_id="x"), metadata=guest.metadata))
    assert "request_id" in bad.fields


async def test_only_the_guest_may_cancel(
    events: event_grpc.EventServiceAsyncStub,
    bookings: booking_grpc.BookingServiceAsyncStub,
    clock: ManualClock,
    db_pool,
):
    host, guest = new_caller(), new_caller()
    event = await new_event(events, clock, host)
    booking = await bookings.CreateBooking(book(event), metadata=guest.metadata)
    by_host = await expect_error(bookings.CancelBooking(cancel(booking), metadata=host.metadata))
    assert (by_host.code, by_host.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_BOOKING_GUEST")
    by_stranger = await expect_error(bookings.CancelBooking(cancel(booking), metadata=new_caller().metadata))
    assert (by_stranger.code, by_stranger.reason) == (grpc.StatusCode.NOT_FOUND, "BOOKING_NOT_FOUND")
    unknown = await expect_error(bookings.CancelBooking(cancel(f"bookings/{uuid.uuid4()}"), metadata=guest.metadata))
    assert unknown.reason == "BOOKING_NOT_FOUND"
    assert await seat_counts(db_pool, event.name) == (1, 1, 1)


async def test_no_cancel_after_the_start(
    events: event_grpc.EventServiceAsyncStub,
    bookings: booking_grpc.BookingServiceAsyncStub,
    clock: ManualClock,
    db_pool,
):
    guest = new_caller()
    event = await new_event(events, clock, start_in=timedelta(minutes=20), minutes=30)
    booking = await bookings.CreateBooking(book(event), metadata=guest.metadata)
    clock.advance(minutes=20)
    err = await expect_error(bookings.CancelBooking(cancel(booking), metadata=guest.metadata))
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "EVENT_ALREADY_STARTED")
    assert await seat_counts(db_pool, event.name) == (1, 1, 1)


async def test_bookings_of_a_cancelled_event_are_cancelled(
    events: event_grpc.EventServiceAsyncStub, bookings: booking_grpc.BookingServiceAsyncStub, clock: ManualClock
):
    host, guest = new_caller(), new_caller()
    event = await new_event(events, clock, host)
    booking = await bookings.CreateBooking(book(event), metadata=guest.metadata)
    await events.CancelEvent(event_service_pb2.CancelEventRequest(name=event.name), metadata=host.metadata)
    seen = await bookings.GetBooking(get(booking.name), metadata=guest.metadata)
    assert seen.state == CANCELLED
    # Cancelling it again is a no-op, not an error.
    assert (await bookings.CancelBooking(cancel(booking), metadata=guest.metadata)) == seen


# ---------------------------------------------------------------------------------------------- list


async def _list(bookings: booking_grpc.BookingServiceAsyncStub, caller: Caller, **kwargs) -> list[str]:
    response = await bookings.ListBookings(booking_service_pb2.ListBookingsRequest(**kwargs), metadata=caller.metadata)
    return [b.name for b in response.bookings]


async def test_list_shows_the_callers_bookings_by_event_start(
    events: event_grpc.EventServiceAsyncStub, bookings: booking_grpc.BookingServiceAsyncStub, clock: ManualClock
):
    guest, other = new_caller(), new_caller()
    later = await new_event(events, clock, start_in=timedelta(days=20))
    sooner = await new_event(events, clock, start_in=timedelta(days=19))
    b_later = await bookings.CreateBooking(book(later), metadata=guest.metadata)
    b_sooner = await bookings.CreateBooking(book(sooner), metadata=guest.metadata)
    await bookings.CreateBooking(book(later), metadata=other.metadata)
    assert await _list(bookings, guest) == [b_sooner.name, b_later.name]
    response = await bookings.ListBookings(booking_service_pb2.ListBookingsRequest(), metadata=guest.metadata)
    assert response.bookings[0] == b_sooner  # the full resource, event fields included
    assert response.next_page_token == ""
    assert await _list(bookings, new_caller()) == []


async def test_list_filters_by_state_and_time(
    events: event_grpc.EventServiceAsyncStub, bookings: booking_grpc.BookingServiceAsyncStub, clock: ManualClock
):
    guest = new_caller()
    soon = await new_event(events, clock, start_in=timedelta(minutes=10), minutes=30)
    later = await new_event(events, clock, start_in=timedelta(days=30))
    dropped = await new_event(events, clock, start_in=timedelta(days=31))
    b_soon = await bookings.CreateBooking(book(soon), metadata=guest.metadata)
    b_later = await bookings.CreateBooking(book(later), metadata=guest.metadata)
    b_dropped = await bookings.CreateBooking(book(dropped), metadata=guest.metadata)
    await bookings.CancelBooking(cancel(b_dropped), metadata=guest.metadata)
    clock.advance(minutes=41)  # `soon` has ended

    assert await _list(bookings, guest) == [b_soon.name, b_later.name, b_dropped.name]
    assert await _list(bookings, guest, state=CONFIRMED) == [b_soon.name, b_later.name]
    assert await _list(bookings, guest, state=CANCELLED) == [b_dropped.name]
    assert await _list(bookings, guest, time=booking_service_pb2.UPCOMING) == [b_later.name, b_dropped.name]
    assert await _list(bookings, guest, time=booking_service_pb2.PAST) == [b_soon.name]
    assert await _list(bookings, guest, time=booking_service_pb2.UPCOMING, state=CONFIRMED) == [b_later.name]


async def test_keyset_pagination_walks_every_booking_once(
    events: event_grpc.EventServiceAsyncStub, bookings: booking_grpc.BookingServiceAsyncStub, clock: ManualClock
):
    guest = new_caller()
    made = []
    for day in range(40, 47):
        event = await new_event(events, clock, start_in=timedelta(days=day))
        made.append((await bookings.CreateBooking(book(event), metadata=guest.metadata)).name)
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        response = await bookings.ListBookings(
            booking_service_pb2.ListBookingsRequest(page_size=3, page_token=token, time=booking_service_pb2.UPCOMING),
            metadata=guest.metadata,
        )
        seen += [b.name for b in response.bookings]
        pages += 1
        token = response.next_page_token
        if not token:
            break
    assert seen == made
    assert pages == 3


async def test_page_token_is_bound_to_its_filters_and_caller(
    events: event_grpc.EventServiceAsyncStub, bookings: booking_grpc.BookingServiceAsyncStub, clock: ManualClock
):
    guest = new_caller()
    for day in (50, 51):
        event = await new_event(events, clock, start_in=timedelta(days=day))
        await bookings.CreateBooking(book(event), metadata=guest.metadata)
    first = await bookings.ListBookings(booking_service_pb2.ListBookingsRequest(page_size=1), metadata=guest.metadata)
    assert first.next_page_token
    changed = await expect_error(
        bookings.ListBookings(
            booking_service_pb2.ListBookingsRequest(page_size=1, page_token=first.next_page_token, state=CONFIRMED),
            metadata=guest.metadata,
        )
    )
    assert (changed.code, changed.reason) == (INVALID, "INVALID_PAGE_TOKEN")
    someone_else = await expect_error(
        bookings.ListBookings(
            booking_service_pb2.ListBookingsRequest(page_size=1, page_token=first.next_page_token),
            metadata=new_caller().metadata,
        )
    )
    assert someone_else.reason == "INVALID_PAGE_TOKEN"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"page_size": -1}, "page_size"),
        ({"page_token": "%%%"}, "page_token"),
        ({"state": 7}, "state"),
        ({"time": 9}, "time"),
    ],
)
async def test_bad_list_requests_name_the_field(bookings: booking_grpc.BookingServiceAsyncStub, kwargs, field):
    err = await expect_error(
        bookings.ListBookings(booking_service_pb2.ListBookingsRequest(**kwargs), metadata=new_caller().metadata)
    )
    assert err.code == INVALID
    assert field in err.fields
