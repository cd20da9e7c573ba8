"""Booking rules as pure functions: no I/O, no gRPC."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.booking import domain
from services.booking.domain import BookableEvent, Booking, BookingAccess, State
from services.common.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from services.common.identity import User

NOW = datetime(2030, 3, 1, 12, 0, tzinfo=UTC)
HOST = User("host-1", "Anna")
GUEST = User("guest-1", "Ben")
TOKEN = "t" * 32


def event(**overrides: object) -> BookableEvent:
    base = BookableEvent(
        id=uuid.uuid4(),
        host_id=HOST.id,
        host_display_name=HOST.display_name,
        title="Solaris night",
        film_title="Solaris",
        start_time=NOW + timedelta(days=2),
        end_time=NOW + timedelta(days=2, hours=3),
        time_zone="Europe/Berlin",
        place_name="Anna's",
        place_address="Torstr. 1",
        place_city="Berlin",
        capacity=6,
        seats_taken=0,
        private=False,
        scheduled=True,
        invite_token=TOKEN,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def can_book(ev: BookableEvent | None, user: User = GUEST, **kwargs: object) -> BookableEvent:
    args: dict[str, object] = {"invite_token": "", "already_booked": False, "seats": 1, "now": NOW}
    args.update(kwargs)
    return domain.ensure_can_book(ev, uuid.uuid4(), user, **args)  # type: ignore[arg-type]


def reason(exc: pytest.ExceptionInfo[DomainError]) -> str:
    return exc.value.reason


# ---------------------------------------------------------------------------------------------- create


def test_an_open_public_event_with_free_seats_can_be_booked() -> None:
    ev = event(seats_taken=4)
    assert can_book(ev, seats=2) is ev


def test_missing_event() -> None:
    with pytest.raises(NotFound) as exc:
        can_book(None)
    assert reason(exc) == "EVENT_NOT_FOUND"


def test_host_cannot_book_even_a_private_event_without_token() -> None:
    with pytest.raises(FailedPrecondition) as exc:
        can_book(event(private=True), HOST)
    assert reason(exc) == "HOST_CANNOT_BOOK"


@pytest.mark.parametrize("token", ["", "wrong", TOKEN[:-1], TOKEN + "x"])
def test_private_event_needs_the_exact_invite_token(token: str) -> None:
    with pytest.raises(NotFound) as exc:
        can_book(event(private=True), invite_token=token)
    assert reason(exc) == "EVENT_NOT_FOUND"  # as for an unknown id: existence doesn't leak
    assert can_book(event(private=True), invite_token=TOKEN)


def test_invite_is_checked_before_the_state_is_revealed() -> None:
    with pytest.raises(NotFound):
        can_book(event(private=True, scheduled=False))


def test_a_guest_already_booked_at_a_private_event_is_told_so_without_token() -> None:
    with pytest.raises(AlreadyExists) as exc:
        can_book(event(private=True), already_booked=True)
    assert reason(exc) == "ALREADY_BOOKED"


@pytest.mark.parametrize(
    "ev",
    [
        event(scheduled=False),
        event(start_time=NOW, end_time=NOW + timedelta(hours=1)),
        event(start_time=NOW - timedelta(minutes=1), end_time=NOW + timedelta(hours=1)),
    ],
    ids=["not-scheduled", "starts-now", "started"],
)
def test_only_scheduled_future_events_are_bookable(ev: BookableEvent) -> None:
    with pytest.raises(FailedPrecondition) as exc:
        can_book(ev)
    assert reason(exc) == "EVENT_NOT_BOOKABLE"


def test_not_bookable_comes_before_already_booked() -> None:
    with pytest.raises(FailedPrecondition):
        can_book(event(scheduled=False), already_booked=True)


def test_already_booked() -> None:
    with pytest.raises(AlreadyExists) as exc:
        can_book(event(), already_booked=True)
    assert reason(exc) == "ALREADY_BOOKED"


@pytest.mark.parametrize(("taken", "seats", "left"), [(6, 1, 0), (5, 2, 1), (3, 4, 3)])
def test_sold_out_reports_the_seats_left(taken: int, seats: int, left: int) -> None:
    with pytest.raises(FailedPrecondition) as exc:
        can_book(event(seats_taken=taken), seats=seats)
    assert reason(exc) == "EVENT_SOLD_OUT"
    assert exc.value.metadata == {"seats_available": str(left)}


def test_the_last_seats_can_be_booked() -> None:
    assert can_book(event(seats_taken=4), seats=2)


def test_why_the_seat_update_matched_nothing() -> None:
    ev = event(seats_taken=6)
    assert domain.seats_refusal(ev, ev.id, NOW).reason == "EVENT_SOLD_OUT"  # type: ignore[attr-defined]
    assert isinstance(domain.seats_refusal(ev, ev.id, NOW), FailedPrecondition)
    assert domain.seats_refusal(replace(ev, scheduled=False), ev.id, NOW).reason == "EVENT_NOT_BOOKABLE"  # type: ignore[attr-defined]
    assert domain.seats_refusal(ev, ev.id, ev.start_time).reason == "EVENT_NOT_BOOKABLE"  # type: ignore[attr-defined]
    assert domain.seats_refusal(None, ev.id, NOW).reason == "EVENT_NOT_FOUND"  # type: ignore[attr-defined]


def test_overlap_names_the_other_booking() -> None:
    other = uuid.uuid4()
    err = domain.overlap(other)
    assert (err.reason, err.metadata) == ("BOOKING_OVERLAP", {"overlapping_booking": f"bookings/{other}"})
    assert domain.overlap(None).metadata == {}


# ---------------------------------------------------------------------------------------------- input


@pytest.mark.parametrize(("requested", "expected"), [(0, 1), (1, 1), (4, 4)])
def test_seats_default_and_bounds(requested: int, expected: int) -> None:
    assert domain.resolve_seats(requested, 4) == expected


@pytest.mark.parametrize("requested", [-1, 5, 2**31 - 1])
def test_seats_out_of_bounds(requested: int) -> None:
    with pytest.raises(InvalidArgument) as exc:
        domain.resolve_seats(requested, 4)
    assert exc.value.field_violations == (("booking.seats", "must be between 1 and 4"),)


def test_booking_names_round_trip() -> None:
    booking_id = uuid.uuid4()
    assert domain.parse_booking_name(domain.booking_name(booking_id)) == booking_id


@pytest.mark.parametrize("name", ["", "bookings", "bookings/", "bookings/42", f"events/{uuid.uuid4()}"])
def test_malformed_booking_names(name: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        domain.parse_booking_name(name)
    assert exc.value.field_violations[0][0] == "name"


# ---------------------------------------------------------------------------------------------- read / cancel


def access(**overrides: object) -> BookingAccess:
    booking = Booking(
        id=uuid.uuid4(),
        event_id=uuid.uuid4(),
        guest_id=GUEST.id,
        seats=2,
        state=State.CONFIRMED,
        event_title="Solaris night",
        event_start_time=NOW + timedelta(hours=1),
        event_end_time=NOW + timedelta(hours=3),
        create_time=NOW - timedelta(days=1),
    )
    return BookingAccess(replace(booking, **overrides), host_id=HOST.id)  # type: ignore[arg-type]


def test_guest_and_host_see_a_booking_others_do_not() -> None:
    a = access()
    assert domain.ensure_visible(a, a.booking.id, GUEST) is a
    assert domain.ensure_visible(a, a.booking.id, HOST) is a
    with pytest.raises(NotFound) as exc:
        domain.ensure_visible(a, a.booking.id, User("someone", "X"))
    assert reason(exc) == "BOOKING_NOT_FOUND"
    with pytest.raises(NotFound):
        domain.ensure_visible(None, uuid.uuid4(), GUEST)


def test_the_guest_cancels_before_the_start() -> None:
    a = access()
    assert domain.ensure_can_cancel(a, a.booking.id, GUEST, NOW) is True


def test_a_cancelled_booking_is_returned_as_is() -> None:
    a = access(state=State.CANCELLED, cancel_time=NOW)
    assert domain.ensure_can_cancel(a, a.booking.id, GUEST, NOW + timedelta(days=9)) is False


def test_the_host_may_read_but_not_cancel() -> None:
    a = access()
    with pytest.raises(PermissionDenied) as exc:
        domain.ensure_can_cancel(a, a.booking.id, HOST, NOW)
    assert reason(exc) == "NOT_BOOKING_GUEST"


def test_strangers_cannot_tell_the_booking_exists() -> None:
    a = access()
    with pytest.raises(NotFound):
        domain.ensure_can_cancel(a, a.booking.id, User("someone", "X"), NOW)


def test_no_cancel_from_the_start_on() -> None:
    a = access()
    with pytest.raises(FailedPrecondition) as exc:
        domain.ensure_can_cancel(a, a.booking.id, GUEST, a.booking.event_start_time)
    assert reason(exc) == "EVENT_ALREADY_STARTED"


def test_the_start_is_checked_again_on_the_locked_event() -> None:
    ev = event(start_time=NOW + timedelta(minutes=5), end_time=NOW + timedelta(hours=2))
    domain.ensure_not_started(ev, NOW)
    with pytest.raises(FailedPrecondition) as exc:
        domain.ensure_not_started(ev, NOW + timedelta(minutes=5))
    assert reason(exc) == "EVENT_ALREADY_STARTED"


def test_a_reschedule_during_the_booking_aborts_it() -> None:
    err = domain.event_moved(event())
    assert (type(err).__name__, err.reason) == ("Aborted", "CONCURRENT_MODIFICATION")
