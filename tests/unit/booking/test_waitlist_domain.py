"""The waitlist's and attendance's pure rules: offer deadlines, warnings, who may act, reliability."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.booking import domain, waitlist
from services.booking.domain import AttendanceTarget, Booking, BookingAccess, State
from services.booking.waitlist import EntryState, WaitlistEntry
from services.common.errors import AlreadyExists, DomainError, FailedPrecondition, NotFound, PermissionDenied
from services.common.identity import User
from services.common.vocabulary import Reliability

NOW = datetime(2027, 3, 1, 18, 0, tzinfo=UTC)
HOST, GUEST, OTHER = User("host", "Host"), User("guest", "Guest"), User("other", "Other")


def entry(state: EntryState = EntryState.WAITING, expire: datetime | None = None) -> WaitlistEntry:
    return WaitlistEntry(
        id=uuid.UUID(int=2),
        event_id=uuid.UUID(int=1),
        host_id=HOST.id,
        guest_id=GUEST.id,
        guest_display_name="Guest",
        seats=2,
        state=state,
        position=1,
        create_time=NOW,
        update_time=NOW,
        offer_time=NOW if expire else None,
        offer_expire_time=expire,
    )


def test_the_claim_window_never_passes_the_start():
    window = timedelta(hours=2)
    assert waitlist.offer_deadline(NOW, NOW + timedelta(days=1), window) == NOW + window
    assert waitlist.offer_deadline(NOW, NOW + timedelta(minutes=30), window) == NOW + timedelta(minutes=30)


def test_the_closing_soon_mail_comes_in_the_last_quarter():
    assert waitlist.warn_time(NOW, NOW + timedelta(hours=2)) == NOW + timedelta(minutes=90)


def test_joining_needs_no_open_entry_and_no_bookable_seats():
    with pytest.raises(AlreadyExists) as caught:
        waitlist.ensure_can_join(1, 0, entry())
    assert caught.value.metadata["waitlist_entry"] == entry().name
    with pytest.raises(FailedPrecondition) as refused:
        waitlist.ensure_can_join(2, 2, None)
    assert refused.value.reason == "SEATS_AVAILABLE"
    waitlist.ensure_can_join(3, 2, None)  # more than is free: may wait


def test_an_entry_exists_for_its_guest_and_host_only_and_only_the_guest_acts():
    e = entry()
    assert waitlist.ensure_visible(e, e.event_id, e.id, HOST) is e
    with pytest.raises(NotFound):
        waitlist.ensure_visible(e, e.event_id, e.id, OTHER)
    with pytest.raises(NotFound):  # the right id under another event is not this entry
        waitlist.ensure_visible(e, uuid.UUID(int=9), e.id, GUEST)
    with pytest.raises(PermissionDenied) as caught:
        waitlist.ensure_guest(e, e.event_id, e.id, HOST)
    assert caught.value.reason == "NOT_WAITLIST_GUEST"


@pytest.mark.parametrize(
    ("state", "expire", "reported"),
    [
        (EntryState.WAITING, None, "WAITING"),
        (EntryState.OFFERED, NOW, "EXPIRED"),  # past its deadline, even before the sweep expired it
        (EntryState.CLAIMED, None, "CLAIMED"),
    ],
)
def test_only_an_open_offer_can_be_claimed_or_declined(state, expire, reported):
    with pytest.raises(FailedPrecondition) as caught:
        waitlist.ensure_open_offer(entry(state, expire), NOW)
    assert (caught.value.reason, caught.value.metadata["state"]) == ("NO_OPEN_OFFER", reported)
    waitlist.ensure_open_offer(entry(EntryState.OFFERED, NOW + timedelta(seconds=1)), NOW)


def test_reliability_without_marks_is_no_history_not_zero():
    assert (Reliability().has_history, Reliability().ratio) == (False, 0.0)
    assert (Reliability(2, 1).has_history, Reliability(2, 1).ratio) == (True, 0.67)
    assert Reliability(0, 3).ratio == 0.0 and Reliability(0, 3).has_history


def target(*, held: bool = True, state: State = State.CONFIRMED, complete: datetime | None = NOW) -> AttendanceTarget:
    booking = Booking(uuid.UUID(int=5), uuid.UUID(int=1), GUEST.id, 1, state, "t", NOW, NOW, NOW)
    return AttendanceTarget(BookingAccess(booking, HOST.id), held, complete)


def test_attendance_is_the_hosts_on_confirmed_bookings_of_held_events_for_a_period():
    period = timedelta(days=7)
    bid = uuid.UUID(int=5)
    domain.ensure_can_mark_attendance(target(), bid, HOST, NOW + timedelta(days=6), period)
    cases = [
        (target(), GUEST, NOW, "NOT_EVENT_HOST"),
        (target(), OTHER, NOW, "BOOKING_NOT_FOUND"),
        (None, HOST, NOW, "BOOKING_NOT_FOUND"),
        (target(held=False, complete=None), HOST, NOW, "EVENT_NOT_HELD"),
        (target(state=State.CANCELLED), HOST, NOW, "BOOKING_NOT_CONFIRMED"),
        (target(), HOST, NOW + period, "ATTENDANCE_PERIOD_OVER"),
    ]
    for t, user, now, reason in cases:
        with pytest.raises(DomainError) as caught:
            domain.ensure_can_mark_attendance(t, bid, user, now, period)
        assert caught.value.reason == reason
