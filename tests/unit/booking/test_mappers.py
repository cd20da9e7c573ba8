"""Proto ↔ command mapping for BookingService: validation and the AIP-155 request fingerprint."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from cowatch.booking.v1 import resources_pb2, service_pb2

from services.booking import mappers
from services.booking.domain import Booking, State, TimeFilter
from services.common.errors import InvalidArgument
from services.common.identity import User

USER = User("guest-1", "Ben")
EVENT = f"events/{uuid.uuid4()}"
RID = str(uuid.uuid4())


def create(seats: int = 0, **kwargs: object) -> service_pb2.CreateBookingRequest:
    return service_pb2.CreateBookingRequest(
        booking=resources_pb2.Booking(event=EVENT, seats=seats),
        **kwargs,  # type: ignore[arg-type]
    )


def test_create_command() -> None:
    cmd = mappers.to_create_command(create(2, request_id=RID, invite_token="tok"), USER, 4)
    assert (str(cmd.event_id), cmd.seats, cmd.invite_token) == (EVENT[7:], 2, "tok")
    assert cmd.request is not None and str(cmd.request.request_id) == RID
    assert cmd.request.method == "CreateBooking"


def test_no_request_id_means_no_idempotency_key() -> None:
    assert mappers.to_create_command(create(), USER, 4).request is None


def test_zero_and_one_seat_are_the_same_request() -> None:
    a = mappers.to_create_command(create(0, request_id=RID), USER, 4).request
    b = mappers.to_create_command(create(1, request_id=RID), USER, 4).request
    assert a == b


def test_echoed_output_fields_do_not_change_the_request() -> None:
    echoed = create(1, request_id=RID)
    echoed.booking.name = "bookings/whatever"
    echoed.booking.state = resources_pb2.Booking.CANCELLED
    assert (
        mappers.to_create_command(echoed, USER, 4).request
        == mappers.to_create_command(create(1, request_id=RID), USER, 4).request
    )


def test_a_different_request_has_a_different_fingerprint() -> None:
    a = mappers.to_create_command(create(1, request_id=RID), USER, 4).request
    b = mappers.to_create_command(create(2, request_id=RID), USER, 4).request
    c = mappers.to_create_command(create(1, request_id=RID, invite_token="x"), USER, 4).request
    assert a is not None and b is not None and c is not None
    assert len({a.request_hash, b.request_hash, c.request_hash}) == 3


def test_the_configured_maximum_applies() -> None:
    assert mappers.to_create_command(create(6), USER, 6).seats == 6
    with pytest.raises(InvalidArgument) as exc:
        mappers.to_create_command(create(6), USER, 4)
    assert exc.value.field_violations == (("booking.seats", "must be between 1 and 4"),)


def test_create_reports_every_bad_field() -> None:
    request = service_pb2.CreateBookingRequest(
        booking=resources_pb2.Booking(event="nope", seats=-3), request_id="x", invite_token="t" * 65
    )
    with pytest.raises(InvalidArgument) as exc:
        mappers.to_create_command(request, USER, 4)
    assert {f for f, _ in exc.value.field_violations} == {
        "booking.event",
        "booking.seats",
        "request_id",
        "invite_token",
    }


def test_create_needs_a_booking() -> None:
    with pytest.raises(InvalidArgument) as exc:
        mappers.to_create_command(service_pb2.CreateBookingRequest(), USER, 4)
    assert exc.value.field_violations[0][0] == "booking"


def test_cancel_command() -> None:
    booking_id = uuid.uuid4()
    cmd = mappers.to_cancel_command(
        service_pb2.CancelBookingRequest(name=f"bookings/{booking_id}", request_id=RID), USER
    )
    assert cmd.booking_id == booking_id
    assert cmd.request is not None and cmd.request.method == "CancelBooking"
    with pytest.raises(InvalidArgument) as exc:
        mappers.to_cancel_command(service_pb2.CancelBookingRequest(name="x", request_id="y"), USER)
    assert {f for f, _ in exc.value.field_violations} == {"name", "request_id"}


def test_list_query() -> None:
    q = mappers.to_list_query(
        service_pb2.ListBookingsRequest(page_size=5, state=resources_pb2.Booking.CANCELLED, time=service_pb2.PAST),
        USER,
    )
    assert (q.page_size, q.state, q.time) == (5, State.CANCELLED, TimeFilter.PAST)
    default = mappers.to_list_query(service_pb2.ListBookingsRequest(), USER)
    assert (default.state, default.time) == (None, TimeFilter.ANY)


def test_list_query_rejects_unknown_enums_and_negative_sizes() -> None:
    with pytest.raises(InvalidArgument) as exc:
        mappers.to_list_query(service_pb2.ListBookingsRequest(page_size=-1, state=9, time=7), USER)  # type: ignore[arg-type]
    assert {f for f, _ in exc.value.field_violations} == {"page_size", "state", "time"}


def test_booking_to_proto() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    booking = Booking(
        id=uuid.uuid4(),
        event_id=uuid.uuid4(),
        guest_id="guest-1",
        seats=2,
        state=State.CANCELLED,
        event_title="Solaris",
        event_start_time=now + timedelta(days=1),
        event_end_time=now + timedelta(days=1, hours=2),
        create_time=now,
        cancel_time=now + timedelta(hours=1),
    )
    msg = mappers.booking_to_proto(booking)
    assert msg.name == f"bookings/{booking.id}"
    assert msg.event == f"events/{booking.event_id}"
    assert msg.guest == "users/guest-1"
    assert (msg.seats, msg.state, msg.event_title) == (2, resources_pb2.Booking.CANCELLED, "Solaris")
    assert msg.event_start_time.ToDatetime(tzinfo=UTC) == booking.event_start_time
    assert msg.cancel_time.ToDatetime(tzinfo=UTC) == booking.cancel_time
    confirmed = mappers.booking_to_proto(replace(booking, state=State.CONFIRMED, cancel_time=None))
    assert confirmed.state == resources_pb2.Booking.CONFIRMED
    assert not confirmed.HasField("cancel_time")
