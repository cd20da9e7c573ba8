"""BookingService.CreateBooking: every rule with its reason, idempotency and what it writes besides the booking.

Real grpc.aio servers (EventService to make events, BookingService) over the session's real PostgreSQL.
"""

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
from tests.support.api import expect_error, new_caller
from tests.support.bookings import book, cancel, new_event, outbox_for, reminders_for, seat_counts

pytestmark = pytest.mark.asyncio(loop_scope="session")
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


async def test_booking_holds_seats_and_describes_the_event(
    events: event_grpc.EventServiceAsyncStub,
    bookings: booking_grpc.BookingServiceAsyncStub,
    clock: ManualClock,
    db_pool,
):
    event = await new_event(events, clock, capacity=6, title="Stalker night")
    guest = new_caller("Ben")
    booking = await bookings.CreateBooking(book(event, 2), metadata=guest.metadata)
    assert booking.name.startswith("bookings/")
    uuid.UUID(booking.name.split("/")[1])
    assert booking.event == event.name
    assert booking.guest == guest.resource
    assert booking.seats == 2
    assert booking.state == booking_pb2.Booking.CONFIRMED
    assert booking.event_title == "Stalker night"
    assert booking.event_start_time == event.start_time
    assert booking.event_end_time == event.end_time
    assert booking.create_time.ToDatetime() == clock.now().replace(tzinfo=None)
    assert not booking.HasField("cancel_time")
    assert await seat_counts(db_pool, event.name) == (2, 2, 1)
    seen = await events.GetEvent(event_service_pb2.GetEventRequest(name=event.name), metadata=guest.metadata)
    assert (seen.seats_taken, seen.seats_available) == (2, 4)
    assert seen.place.address  # a confirmed guest sees the exact address


async def test_seats_default_to_one(
    events: event_grpc.EventServiceAsyncStub, bookings: booking_grpc.BookingServiceAsyncStub, clock: ManualClock
):
    event = await new_event(events, clock)
    booking = await bookings.CreateBooking(book(event, 0), metadata=new_caller().metadata)
    assert booking.seats == 1


@pytest.mark.parametrize("seats", [-1, 5, 1000])
async def test_seats_are_bounded_by_the_configured_maximum(
    events: event_grpc.EventServiceAsyncStub, bookings: booking_grpc.BookingServiceAsyncStub, clock: ManualClock, seats
):
    event = await new_event(events, clock, capacity=10)
    err = await expect_error(bookings.CreateBooking(book(event, seats), metadata=new_caller().metadata))
    assert (err.code, err.reason) == (INVALID, "INVALID_ARGUMENT")
    assert err.fields["booking.seats"] == "must be between 1 and 4"


async def test_the_maximum_number_of_seats_is_allowed(
    events: event_grpc.EventServiceAsyncStub, bookings: booking_grpc.BookingServiceAsyncStub, clock: ManualClock
):
    event = await new_event(events, clock, capacity=10)
    booking = await bookings.CreateBooking(book(event, 4), metadata=new_caller().metadata)
    assert booking.seats == 4


@pytest.mark.parametrize(
    ("request_msg", "field"),
    [
        (booking_service_pb2.CreateBookingRequest(), "booking"),
        (booking_service_pb2.CreateBookingRequest(booking=booking_pb2.Booking(seats=1)), "booking.event"),
        (book("events/not-a-uuid"), "booking.event"),
        (book("bookings/3b2c8a4e-8a0e-4a8e-9f3c-8d6f0c1e2a3b"), "booking.event"),
        (book(f"events/{uuid.uuid4()}", request_id="not-a-uuid"), "request_id"),
        (book(f"events/{uuid.uuid4()}", invite_token="x" * 65), "invite_token"),
    ],
)
async def test_bad_input_names_the_field(bookings: booking_grpc.BookingServiceAsyncStub, request_msg, field):
    err = await expect_error(bookings.CreateBooking(request_msg, metadata=new_caller().metadata))
    assert err.code == INVALID
    assert field in err.fields


async def test_every_bad_field_is_reported_at_once(bookings: booking_grpc.BookingServiceAsyncStub):
    err = await expect_error(
        bookings.CreateBooking(book("events/x", 9, request_id="nope"), metadata=new_caller().metadata)
    )
    assert set(err.fields) == {"booking.event", "booking.seats", "request_id"}


async def test_booking_needs_a_token(bookings: booking_grpc.BookingServiceAsyncStub):
    err = await expect_error(bookings.CreateBooking(book(f"events/{uuid.uuid4()}")))
    assert (err.code, err.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")


async def test_unknown_event(bookings: booking_grpc.BookingServiceAsyncStub):
    err = await expect_error(bookings.CreateBooking(book(f"events/{uuid.uuid4()}"), metadata=new_caller().metadata))
    assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "EVENT_NOT_FOUND")


async def test_host_cannot_book_their_own_event(
    events: event_grpc.EventServiceAsyncStub,
    bookings: booking_grpc.BookingServiceAsyncStub,
    clock: ManualClock,
    db_pool,
):
    host = new_caller("Host")
    event = await new_event(events, clock, host)
    err = await expect_error(bookings.CreateBooking(book(event), metadata=host.metadata))
    assert (err.code, err.reason) == (PRECONDITION, "HOST_CANNOT_BOOK")
    assert await seat_counts(db_pool, event.name) == (0, 0, 0)


async def test_private_event_needs_a_valid_invite_token(
    events: event_grpc.EventServiceAsyncStub, bookings: booking_grpc.BookingServiceAsyncStub, clock: ManualClock
):
    host = new_caller("Host")
    event = await new_event(events, clock, host, private=True)
    guest = new_caller()
    # Without the invite the event does not exist for the caller: the same error, word for word, as GetEvent's.
    hidden = await expect_error(
        events.GetEvent(event_service_pb2.GetEventRequest(name=event.name), metadata=guest.metadata)
    )
    assert (hidden.code, hidden.reason) == (grpc.StatusCode.NOT_FOUND, "EVENT_NOT_FOUND")
    for token in ("", "wrong-token-wrong-token"):
        err = await expect_error(bookings.CreateBooking(book(event, invite_token=token), metadata=guest.metadata))
        assert err == hidden

    rotated = await events.RotateInviteToken(
        event_service_pb2.RotateInviteTokenRequest(name=event.name), metadata=host.metadata
    )
    stale = await expect_error(
        bookings.CreateBooking(book(event, invite_token=event.invite_token), metadata=guest.metadata)
    )
    assert stale == hidden  # old links stop working

    booking = await bookings.CreateBooking(book(event, invite_token=rotated.invite_token), metadata=guest.metadata)
    assert booking.state == booking_pb2.Booking.CONFIRMED
    # A guest who already holds a seat learns that, rather than being asked for the token again.
    again = await expect_error(bookings.CreateBooking(book(event), metadata=guest.metadata))
    assert again.reason == "ALREADY_BOOKED"


async def test_public_event_ignores_the_invite_token(
    events: event_grpc.EventServiceAsyncStub, bookings: booking_grpc.BookingServiceAsyncStub, clock: ManualClock
):
    event = await new_event(events, clock)
    booking = await bookings.CreateBooking(book(event, invite_token="anything"), metadata=new_caller().metadata)
    assert booking.state == booking_pb2.Booking.CONFIRMED


async def test_cancelled_event_is_not_bookable(
    events: event_grpc.EventServiceAsyncStub, bookings: booking_grpc.BookingServiceAsyncStub, clock: ManualClock
):
    host = new_caller()
    event = await new_event(events, clock, host)
    await events.CancelEvent(event_service_pb2.CancelEventRequest(name=event.name), metadata=host.metadata)
    err = await expect_error(bookings.CreateBooking(book(event), metadata=new_caller().metadata))
    assert (err.code, err.reason) == (PRECONDITION, "EVENT_NOT_BOOKABLE")


async def test_started_and_held_events_are_not_bookable(
    events: event_grpc.EventServiceAsyncStub, bookings: booking_grpc.BookingServiceAsyncStub, clock: ManualClock
):
    host = new_caller()
    event = await new_event(events, clock, host, start_in=timedelta(minutes=30), minutes=60)
    clock.advance(minutes=31)
    started = await expect_error(bookings.CreateBooking(book(event), metadata=new_caller().metadata))
    assert (started.code, started.reason) == (PRECONDITION, "EVENT_NOT_BOOKABLE")
    clock.advance(minutes=60)
    await events.CompleteEvent(event_service_pb2.CompleteEventRequest(name=event.name), metadata=host.metadata)
    held = await expect_error(bookings.CreateBooking(book(event), metadata=new_caller().metadata))
    assert (held.code, held.reason) == (PRECONDITION, "EVENT_NOT_BOOKABLE")


async def test_one_active_booking_per_guest_per_event(
    events: event_grpc.EventServiceAsyncStub,
    bookings: booking_grpc.BookingServiceAsyncStub,
    clock: ManualClock,
    db_pool,
):
    event = await new_event(events, clock, capacity=10)
    guest = new_caller()
    first = await bookings.CreateBooking(book(event, 1), metadata=guest.metadata)
    err = await expect_error(bookings.CreateBooking(book(event, 2), metadata=guest.metadata))
    assert (err.code, err.reason) == (grpc.StatusCode.ALREADY_EXISTS, "ALREADY_BOOKED")
    assert await seat_counts(db_pool, event.name) == (1, 1, 1)
    # After cancelling, the guest may book again.
    await bookings.CancelBooking(cancel(first), metadata=guest.metadata)
    second = await bookings.CreateBooking(book(event, 2), metadata=guest.metadata)
    assert second.name != first.name
    assert await seat_counts(db_pool, event.name) == (2, 2, 1)


async def test_overlapping_bookings_are_refused(
    events: event_grpc.EventServiceAsyncStub,
    bookings: booking_grpc.BookingServiceAsyncStub,
    clock: ManualClock,
    db_pool,
):
    guest = new_caller()
    base = timedelta(days=5, hours=3)
    first = await new_event(events, clock, start_in=base, minutes=120)
    overlapping = await new_event(events, clock, start_in=base + timedelta(minutes=90), minutes=60)
    inside = await new_event(events, clock, start_in=base + timedelta(minutes=10), minutes=10)
    adjacent = await new_event(events, clock, start_in=base + timedelta(minutes=120), minutes=60)
    held = await bookings.CreateBooking(book(first), metadata=guest.metadata)

    for other in (overlapping, inside):
        err = await expect_error(bookings.CreateBooking(book(other), metadata=guest.metadata))
        assert (err.code, err.reason) == (PRECONDITION, "BOOKING_OVERLAP")
        assert err.metadata == {"overlapping_booking": held.name}
        assert await seat_counts(db_pool, other.name) == (0, 0, 0)
    # Back-to-back is fine (intervals are half-open), and other guests are not affected.
    await bookings.CreateBooking(book(adjacent), metadata=guest.metadata)
    await bookings.CreateBooking(book(overlapping), metadata=new_caller().metadata)
    # A cancelled booking no longer blocks.
    await bookings.CancelBooking(cancel(held), metadata=guest.metadata)
    await bookings.CreateBooking(book(inside), metadata=guest.metadata)


async def test_a_cancelled_event_does_not_block_overlapping_bookings(
    events: event_grpc.EventServiceAsyncStub, bookings: booking_grpc.BookingServiceAsyncStub, clock: ManualClock
):
    guest, host = new_caller(), new_caller()
    base = timedelta(days=6)
    first = await new_event(events, clock, host, start_in=base)
    second = await new_event(events, clock, start_in=base + timedelta(minutes=30))
    await bookings.CreateBooking(book(first), metadata=guest.metadata)
    await events.CancelEvent(event_service_pb2.CancelEventRequest(name=first.name), metadata=host.metadata)
    booking = await bookings.CreateBooking(book(second), metadata=guest.metadata)
    assert booking.state == booking_pb2.Booking.CONFIRMED


async def test_sold_out_says_how_many_seats_are_left(
    events: event_grpc.EventServiceAsyncStub,
    bookings: booking_grpc.BookingServiceAsyncStub,
    clock: ManualClock,
    db_pool,
):
    event = await new_event(events, clock, capacity=3)
    await bookings.CreateBooking(book(event, 2), metadata=new_caller().metadata)
    err = await expect_error(bookings.CreateBooking(book(event, 2), metadata=new_caller().metadata))
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "EVENT_SOLD_OUT")
    assert err.metadata == {"seats_available": "1"}
    await bookings.CreateBooking(book(event, 1), metadata=new_caller().metadata)
    full = await expect_error(bookings.CreateBooking(book(event, 1), metadata=new_caller().metadata))
    assert (full.reason, full.metadata) == ("EVENT_SOLD_OUT", {"seats_available": "0"})
    assert await seat_counts(db_pool, event.name) == (3, 3, 2)


# ---------------------------------------------------------------------------------------------- idempotency


async def test_retry_with_the_same_request_id_returns_the_same_booking(
    events: event_grpc.EventServiceAsyncStub,
    bookings: booking_grpc.BookingServiceAsyncStub,
    clock: ManualClock,
    db_pool,
):
    event = await new_event(events, clock, capacity=2)
    guest = new_caller()
    rid = str(uuid.uuid4())
    first = await bookings.CreateBooking(book(event, 1, request_id=rid), metadata=guest.metadata)
    # The answer was "lost"; meanwhile the event sold out. The retry still gets the booking made the first time.
    await bookings.CreateBooking(book(event, 1), metadata=new_caller().metadata)
    retry = await bookings.CreateBooking(book(event, 1, request_id=rid), metadata=guest.metadata)
    assert retry == first
    # 0 seats means 1: the same request.
    assert await bookings.CreateBooking(book(event, 0, request_id=rid), metadata=guest.metadata) == first
    assert await seat_counts(db_pool, event.name) == (2, 2, 2)
    assert len(await outbox_for(db_pool, first.name)) == 2  # notifications were not repeated


async def test_same_request_id_with_a_different_request_is_refused(
    events: event_grpc.EventServiceAsyncStub, bookings: booking_grpc.BookingServiceAsyncStub, clock: ManualClock
):
    event, other = await new_event(events, clock), await new_event(events, clock, start_in=timedelta(days=9))
    guest = new_caller()
    rid = str(uuid.uuid4())
    await bookings.CreateBooking(book(event, 1, request_id=rid), metadata=guest.metadata)
    for changed in (book(event, 2, request_id=rid), book(other, 1, request_id=rid)):
        err = await expect_error(bookings.CreateBooking(changed, metadata=guest.metadata))
        assert (err.code, err.reason) == (INVALID, "REQUEST_ID_REUSED")
        assert "request_id" in err.fields


async def test_request_ids_are_scoped_to_the_caller(
    events: event_grpc.EventServiceAsyncStub, bookings: booking_grpc.BookingServiceAsyncStub, clock: ManualClock
):
    event = await new_event(events, clock)
    rid = str(uuid.uuid4())
    a = await bookings.CreateBooking(book(event, request_id=rid), metadata=new_caller().metadata)
    b = await bookings.CreateBooking(book(event, request_id=rid), metadata=new_caller().metadata)
    assert a.name != b.name


async def test_a_refused_request_can_be_retried_with_the_same_id(
    events: event_grpc.EventServiceAsyncStub, bookings: booking_grpc.BookingServiceAsyncStub, clock: ManualClock
):
    host = new_caller()
    event = await new_event(events, clock, host, private=True)
    guest = new_caller()
    rid = str(uuid.uuid4())
    err = await expect_error(bookings.CreateBooking(book(event, request_id=rid), metadata=guest.metadata))
    assert err.reason == "EVENT_NOT_FOUND"
    # A refused call's transaction rolled back, request id included: the corrected request may reuse the id.
    ok = await bookings.CreateBooking(
        book(event, request_id=rid, invite_token=event.invite_token), metadata=guest.metadata
    )
    assert ok.state == booking_pb2.Booking.CONFIRMED


# ---------------------------------------------------------------------------------------------- side effects


async def test_confirmation_new_guest_mail_and_reminders_are_written_with_the_booking(
    events: event_grpc.EventServiceAsyncStub,
    bookings: booking_grpc.BookingServiceAsyncStub,
    clock: ManualClock,
    db_pool,
):
    host, guest = new_caller("Anna"), new_caller("Ben")
    event = await new_event(events, clock, host, title="Mirror", time_zone="Europe/Berlin")
    booking = await bookings.CreateBooking(book(event, 2), metadata=guest.metadata)
    mail = await outbox_for(db_pool, booking.name)
    assert set(mail) == {"booking_confirmed", "booking_new_guest"}
    confirmed, new_guest = mail["booking_confirmed"], mail["booking_new_guest"]
    assert confirmed["recipients"] == [guest.id]
    assert new_guest["recipients"] == [host.id]
    for params in (confirmed["params"], new_guest["params"]):
        assert params["event"] == event.name
        assert params["event_title"] == "Mirror"
        assert params["film_title"] == "Solaris"
        assert params["place_address"] == "Torstr. 1, 10119"
        assert params["seats"] == 2
        assert params["guest_name"] == "Ben"
        assert params["host_name"] == "Anna"
        assert params["link"] == f"https://cowatch.test/{event.name}"
        assert "(Europe/Berlin)" in params["start_local"]
    assert await reminders_for(db_pool, event.name, guest.id) == {"24H": "PENDING", "1H": "PENDING"}
    # The guest's name is now known to the host's guest list.
    guests = await events.ListEventGuests(
        event_service_pb2.ListEventGuestsRequest(parent=event.name), metadata=host.metadata
    )
    assert [(g.display_name, g.seats, g.booking) for g in guests.guests] == [("Ben", 2, booking.name)]


async def test_reminders_already_due_are_skipped(
    events: event_grpc.EventServiceAsyncStub,
    bookings: booking_grpc.BookingServiceAsyncStub,
    clock: ManualClock,
    db_pool,
):
    event = await new_event(events, clock, start_in=timedelta(hours=10))
    guest = new_caller()
    await bookings.CreateBooking(book(event), metadata=guest.metadata)
    assert await reminders_for(db_pool, event.name, guest.id) == {"24H": "SKIPPED", "1H": "PENDING"}


async def test_a_refused_booking_writes_nothing(
    events: event_grpc.EventServiceAsyncStub,
    bookings: booking_grpc.BookingServiceAsyncStub,
    clock: ManualClock,
    db_pool,
):
    event = await new_event(events, clock, capacity=1)
    await bookings.CreateBooking(book(event), metadata=new_caller().metadata)
    loser = new_caller()
    err = await expect_error(bookings.CreateBooking(book(event), metadata=loser.metadata))
    assert err.reason == "EVENT_SOLD_OUT"
    assert await reminders_for(db_pool, event.name, loser.id) == {}
    assert await db_pool.fetchval("SELECT count(*) FROM booking.bookings WHERE guest_id = $1", loser.id) == 0
    assert await db_pool.fetchval("SELECT count(*) FROM notify.outbox WHERE $1 = ANY(recipients)", loser.id) == 0
