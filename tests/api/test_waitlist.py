"""Waitlist (JoinWaitlist, GetWaitlistEntry, ListWaitlist, LeaveWaitlist, ClaimOffer, DeclineOffer), the offer
sweep and MarkAttendance, through real servers and database. The sweep runs in-process on the session's clock."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from cowatch.booking.v1 import resources_pb2 as booking_pb2
from cowatch.booking.v1 import service_pb2 as bs
from cowatch.booking.v1 import service_pb2_grpc as booking_grpc
from cowatch.event.v1 import resources_pb2 as event_pb2
from cowatch.event.v1 import service_pb2 as es
from cowatch.event.v1 import service_pb2_grpc as event_grpc
from cowatch.review.v1 import service_pb2 as rs
from cowatch.review.v1 import service_pb2_grpc as review_grpc
from google.protobuf import field_mask_pb2

from services.booking.offer_sweep import OfferSweep
from services.common.clock import ManualClock
from tests.support.api import Caller, expect_error, new_caller
from tests.support.bookings import book, cancel, new_event, reminders_for, uid
from tests.support.reviews import EVENT, complete, review_request

pytestmark = pytest.mark.asyncio(loop_scope="session")
E = booking_pb2.WaitlistEntry
WINDOW = timedelta(hours=2)


def join(
    event: event_pb2.Event | str, seats: int = 0, *, request_id: str = "", token: str = ""
) -> bs.JoinWaitlistRequest:
    name = event if isinstance(event, str) else event.name
    return bs.JoinWaitlistRequest(parent=name, waitlist_entry=E(seats=seats), request_id=request_id, invite_token=token)


async def full_event(
    events: event_grpc.EventServiceAsyncStub,
    bookings: booking_grpc.BookingServiceAsyncStub,
    clock: ManualClock,
    capacity: int = 2,
    **kwargs: object,
) -> tuple[event_pb2.Event, Caller, list[tuple[Caller, booking_pb2.Booking]]]:
    """A sold-out event: ``capacity`` guests holding one seat each."""
    host = new_caller("Host")
    event = await new_event(events, clock, host, capacity=capacity, **kwargs)
    guests = []
    for _ in range(capacity):
        guest = new_caller("Guest")
        guests.append(
            (guest, await bookings.CreateBooking(book(event, invite_token=event.invite_token), metadata=guest.metadata))
        )
    return event, host, guests


async def entry(bookings: booking_grpc.BookingServiceAsyncStub, name: str, who: Caller) -> booking_pb2.WaitlistEntry:
    return await bookings.GetWaitlistEntry(bs.GetWaitlistEntryRequest(name=name), metadata=who.metadata)


async def seats(pool: asyncpg.Pool, event: event_pb2.Event) -> tuple[int, int, int]:
    """(seats_taken, seats_held, sum of seats of OFFERED entries)."""
    row = await pool.fetchrow(
        "SELECT e.seats_taken, e.seats_held, (SELECT coalesce(sum(seats), 0) FROM booking.waitlist w "
        "WHERE w.event_id = e.id AND w.state = 'OFFERED') AS offered FROM event.events e WHERE e.id = $1",
        uid(event.name),
    )
    assert row is not None
    return row["seats_taken"], row["seats_held"], row["offered"]


async def mails(pool: asyncpg.Pool, template: str, entry_name: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT recipients, params FROM notify.outbox WHERE template_id = $1 AND params->>'waitlist_entry' = $2",
        template,
        entry_name,
    )
    return [{"recipients": list(r["recipients"]), "params": json.loads(r["params"])} for r in rows]


def sweep(pool: asyncpg.Pool, clock: ManualClock) -> OfferSweep:
    return OfferSweep(pool, clock, "http://localhost:8080", WINDOW)


# ---------------------------------------------------------------------------------------------- join


async def test_who_may_join(
    events: event_grpc.EventServiceAsyncStub, bookings: booking_grpc.BookingServiceAsyncStub, clock: ManualClock
):
    event, host, guests = await full_event(events, bookings, clock)
    err = await expect_error(bookings.JoinWaitlist(join(event), metadata=host.metadata))
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "HOST_CANNOT_BOOK")
    err = await expect_error(bookings.JoinWaitlist(join(event), metadata=guests[0][0].metadata))
    assert (err.code, err.reason) == (grpc.StatusCode.ALREADY_EXISTS, "ALREADY_BOOKED")
    err = await expect_error(bookings.JoinWaitlist(join(event, 5), metadata=new_caller().metadata))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and "waitlist_entry.seats" in err.fields
    err = await expect_error(bookings.JoinWaitlist(join("events/nope"), metadata=new_caller().metadata))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and "parent" in err.fields

    waiter = new_caller("Waiter")
    rid = str(uuid.uuid4())
    first = await bookings.JoinWaitlist(join(event, request_id=rid), metadata=waiter.metadata)
    assert (first.state, first.seats, first.position) == (E.WAITING, 1, 1)
    assert first.name.startswith(event.name + "/waitlistEntries/") and first.guest == f"users/{waiter.id}"
    again = await bookings.JoinWaitlist(join(event, request_id=rid), metadata=waiter.metadata)
    assert again == first  # AIP-155 replay
    err = await expect_error(bookings.JoinWaitlist(join(event), metadata=waiter.metadata))
    assert (err.code, err.reason, err.metadata["waitlist_entry"]) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "ALREADY_WAITLISTED",
        first.name,
    )
    err = await expect_error(bookings.JoinWaitlist(join(event, 2, request_id=rid), metadata=waiter.metadata))
    assert err.reason == "REQUEST_ID_REUSED"
    second = await bookings.JoinWaitlist(join(event, 2), metadata=new_caller().metadata)
    assert second.position == 2
    shown = await events.GetEvent(es.GetEventRequest(name=event.name))
    assert (shown.seats_available, shown.waitlist_size) == (0, 2)


async def test_no_joining_while_seats_can_be_booked(
    events: event_grpc.EventServiceAsyncStub, bookings: booking_grpc.BookingServiceAsyncStub, clock: ManualClock
):
    event = await new_event(events, clock, capacity=3)
    await bookings.CreateBooking(book(event, 2), metadata=new_caller().metadata)
    err = await expect_error(bookings.JoinWaitlist(join(event, 1), metadata=new_caller().metadata))
    assert (err.code, err.reason, err.metadata["seats_available"]) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SEATS_AVAILABLE",
        "1",
    )
    # asking for more than is free is allowed
    waiter = new_caller()
    e = await bookings.JoinWaitlist(join(event, 2), metadata=waiter.metadata)
    assert e.state == E.WAITING
    # booking the one free seat instead ends the wait
    await bookings.CreateBooking(book(event, 1), metadata=waiter.metadata)
    assert (await entry(bookings, e.name, waiter)).state == E.LEFT
    assert (await events.GetEvent(es.GetEventRequest(name=event.name))).waitlist_size == 0


async def test_private_event_needs_its_invite_like_booking(
    events: event_grpc.EventServiceAsyncStub, bookings: booking_grpc.BookingServiceAsyncStub, clock: ManualClock
):
    event, _, _ = await full_event(events, bookings, clock, private=True)
    stranger = new_caller()
    hidden = await expect_error(bookings.JoinWaitlist(join(event), metadata=stranger.metadata))
    never = await expect_error(bookings.JoinWaitlist(join(f"events/{uuid.uuid4()}"), metadata=stranger.metadata))
    assert (hidden.code, hidden.reason) == (never.code, never.reason) == (grpc.StatusCode.NOT_FOUND, "EVENT_NOT_FOUND")
    joined = await bookings.JoinWaitlist(join(event, token=event.invite_token), metadata=stranger.metadata)
    assert joined.state == E.WAITING


async def test_no_joining_an_event_overlapping_a_confirmed_booking(
    events: event_grpc.EventServiceAsyncStub, bookings: booking_grpc.BookingServiceAsyncStub, clock: ManualClock
):
    event, _, _ = await full_event(events, bookings, clock, start_in=timedelta(days=9))
    guest = new_caller()
    other = await new_event(events, clock, start_in=timedelta(days=9, minutes=30))
    mine = await bookings.CreateBooking(book(other), metadata=guest.metadata)
    err = await expect_error(bookings.JoinWaitlist(join(event), metadata=guest.metadata))
    assert (err.reason, err.metadata["overlapping_booking"]) == ("BOOKING_OVERLAP", mine.name)


# ---------------------------------------------------------------------------------------------- offers


async def test_freed_seats_go_to_the_first_entry_that_fits_and_are_held(
    events: event_grpc.EventServiceAsyncStub,
    bookings: booking_grpc.BookingServiceAsyncStub,
    clock: ManualClock,
    db_pool: asyncpg.Pool,
):
    event, _, guests = await full_event(events, bookings, clock)
    big, small = new_caller("Big"), new_caller("Small")
    big_entry = await bookings.JoinWaitlist(join(event, 2), metadata=big.metadata)
    small_entry = await bookings.JoinWaitlist(join(event, 1), metadata=small.metadata)
    await bookings.CancelBooking(cancel(guests[0][1]), metadata=guests[0][0].metadata)
    # one seat free: the first entry (2 seats) does not fit, the second does
    offered = await entry(bookings, small_entry.name, small)
    assert offered.state == E.OFFERED and (await entry(bookings, big_entry.name, big)).state == E.WAITING
    now = clock.now()
    assert offered.offer_expire_time.ToDatetime(tzinfo=UTC) == min(
        now + WINDOW, event.start_time.ToDatetime(tzinfo=UTC)
    )
    assert await seats(db_pool, event) == (1, 1, 1)
    shown = await events.GetEvent(es.GetEventRequest(name=event.name))
    assert (shown.seats_taken, shown.seats_available, shown.waitlist_size) == (1, 0, 1)
    # held seats are not bookable by anyone else
    err = await expect_error(bookings.CreateBooking(book(event), metadata=new_caller().metadata))
    assert err.reason == "EVENT_SOLD_OUT"
    (mail,) = await mails(db_pool, "waitlist_offer", small_entry.name)
    assert mail["recipients"] == [small.id] and "place_address" not in mail["params"]
    # the second seat frees: now the 2-seat entry fits only once the offer is claimed or ends
    await bookings.CancelBooking(cancel(guests[1][1]), metadata=guests[1][0].metadata)
    assert (await entry(bookings, big_entry.name, big)).state == E.WAITING
    await bookings.DeclineOffer(bs.DeclineOfferRequest(name=small_entry.name), metadata=small.metadata)
    assert (await entry(bookings, big_entry.name, big)).state == E.OFFERED
    assert await seats(db_pool, event) == (0, 2, 2)


async def test_claim_books_the_held_seats(
    events: event_grpc.EventServiceAsyncStub,
    bookings: booking_grpc.BookingServiceAsyncStub,
    clock: ManualClock,
    db_pool: asyncpg.Pool,
):
    event, host, guests = await full_event(events, bookings, clock)
    waiter = new_caller("Waiter")
    e = await bookings.JoinWaitlist(join(event), metadata=waiter.metadata)
    err = await expect_error(bookings.ClaimOffer(bs.ClaimOfferRequest(name=e.name), metadata=waiter.metadata))
    assert (err.code, err.reason, err.metadata["state"]) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "NO_OPEN_OFFER",
        "WAITING",
    )
    await bookings.CancelBooking(cancel(guests[0][1]), metadata=guests[0][0].metadata)
    err = await expect_error(bookings.ClaimOffer(bs.ClaimOfferRequest(name=e.name), metadata=host.metadata))
    assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_WAITLIST_GUEST")
    rid = str(uuid.uuid4())
    booking = await bookings.ClaimOffer(bs.ClaimOfferRequest(name=e.name, request_id=rid), metadata=waiter.metadata)
    assert (booking.state, booking.seats, booking.guest) == (booking_pb2.Booking.CONFIRMED, 1, f"users/{waiter.id}")
    assert (
        await bookings.ClaimOffer(bs.ClaimOfferRequest(name=e.name, request_id=rid), metadata=waiter.metadata)
        == booking
    )
    claimed = await entry(bookings, e.name, waiter)
    assert (claimed.state, claimed.booking, claimed.position) == (E.CLAIMED, booking.name, 0)
    assert await seats(db_pool, event) == (2, 0, 0)
    confirmed = await db_pool.fetchval(
        "SELECT count(*) FROM notify.outbox WHERE template_id = 'booking_confirmed' AND params->>'booking' = $1",
        booking.name,
    )
    assert confirmed == 1 and set(await reminders_for(db_pool, event.name, waiter.id)) == {"24H", "1H"}
    err = await expect_error(bookings.ClaimOffer(bs.ClaimOfferRequest(name=e.name), metadata=waiter.metadata))
    assert (err.reason, err.metadata["state"]) == ("NO_OPEN_OFFER", "CLAIMED")


async def test_only_the_guest_and_host_see_an_entry_and_only_the_guest_changes_it(
    events: event_grpc.EventServiceAsyncStub, bookings: booking_grpc.BookingServiceAsyncStub, clock: ManualClock
):
    event, host, _ = await full_event(events, bookings, clock)
    waiter = new_caller()
    e = await bookings.JoinWaitlist(join(event), metadata=waiter.metadata)
    assert (await entry(bookings, e.name, host)).name == e.name
    err = await expect_error(entry(bookings, e.name, new_caller()))
    assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "WAITLIST_ENTRY_NOT_FOUND")
    err = await expect_error(bookings.LeaveWaitlist(bs.LeaveWaitlistRequest(name=e.name), metadata=host.metadata))
    assert err.reason == "NOT_WAITLIST_GUEST"
    left = await bookings.LeaveWaitlist(bs.LeaveWaitlistRequest(name=e.name), metadata=waiter.metadata)
    assert left.state == E.LEFT
    assert await bookings.LeaveWaitlist(bs.LeaveWaitlistRequest(name=e.name), metadata=waiter.metadata) == left
    # after leaving, joining again is a new entry at the back
    again = await bookings.JoinWaitlist(join(event), metadata=waiter.metadata)
    assert again.name != e.name and again.state == E.WAITING


async def test_leaving_with_an_offer_passes_the_seats_on(
    events: event_grpc.EventServiceAsyncStub,
    bookings: booking_grpc.BookingServiceAsyncStub,
    clock: ManualClock,
    db_pool: asyncpg.Pool,
):
    event, _, guests = await full_event(events, bookings, clock)
    a, b = new_caller(), new_caller()
    ea = await bookings.JoinWaitlist(join(event), metadata=a.metadata)
    eb = await bookings.JoinWaitlist(join(event), metadata=b.metadata)
    await bookings.CancelBooking(cancel(guests[0][1]), metadata=guests[0][0].metadata)
    assert (await entry(bookings, ea.name, a)).state == E.OFFERED
    assert (await bookings.LeaveWaitlist(bs.LeaveWaitlistRequest(name=ea.name), metadata=a.metadata)).state == E.LEFT
    assert (await entry(bookings, eb.name, b)).state == E.OFFERED
    assert await seats(db_pool, event) == (1, 1, 1)


async def test_host_lists_the_waitlist_in_join_order_with_reliability(
    events: event_grpc.EventServiceAsyncStub, bookings: booking_grpc.BookingServiceAsyncStub, clock: ManualClock
):
    event, host, _ = await full_event(events, bookings, clock)
    waiters = [new_caller(f"W{i}") for i in range(3)]
    for w in waiters:
        await bookings.JoinWaitlist(join(event), metadata=w.metadata)
    seen: list[booking_pb2.WaitlistEntry] = []
    token = ""
    while True:
        page = await bookings.ListWaitlist(
            bs.ListWaitlistRequest(parent=event.name, page_size=2, page_token=token), metadata=host.metadata
        )
        seen.extend(page.waitlist_entries)
        token = page.next_page_token
        if not token:
            break
    assert [e.guest for e in seen] == [f"users/{w.id}" for w in waiters]
    assert [e.position for e in seen] == [1, 2, 3]
    assert all(e.HasField("guest_reliability") and not e.guest_reliability.has_history for e in seen)
    assert seen[0].guest_display_name == "W0"
    err = await expect_error(
        bookings.ListWaitlist(bs.ListWaitlistRequest(parent=event.name), metadata=waiters[0].metadata)
    )
    assert err.reason == "NOT_EVENT_HOST"


# ---------------------------------------------------------------------------------------------- sweep


async def test_expired_offers_release_their_seats_once_and_go_to_the_next(
    events: event_grpc.EventServiceAsyncStub,
    bookings: booking_grpc.BookingServiceAsyncStub,
    clock: ManualClock,
    db_pool: asyncpg.Pool,
):
    event, _, guests = await full_event(events, bookings, clock, start_in=timedelta(days=20))
    a, b = new_caller(), new_caller()
    ea = await bookings.JoinWaitlist(join(event), metadata=a.metadata)
    eb = await bookings.JoinWaitlist(join(event), metadata=b.metadata)
    await bookings.CancelBooking(cancel(guests[0][1]), metadata=guests[0][0].metadata)
    s = sweep(db_pool, clock)
    # warned in the last quarter of the window, once
    clock.advance(WINDOW * 3 / 4 + timedelta(seconds=1))
    await s.run_once()
    await s.run_once()
    assert len(await mails(db_pool, "waitlist_offer_closing", ea.name)) == 1
    clock.advance(WINDOW / 4)
    err = await expect_error(bookings.ClaimOffer(bs.ClaimOfferRequest(name=ea.name), metadata=a.metadata))
    assert (err.reason, err.metadata["state"]) == ("NO_OPEN_OFFER", "EXPIRED")  # even before the sweep ran
    first = await s.run_once()
    await s.run_once()  # nothing left to expire: the seats are released once
    assert first.expired >= 1 and first.offered >= 1  # (other tests' events share the database)
    assert (await entry(bookings, ea.name, a)).state == E.EXPIRED
    assert (await entry(bookings, eb.name, b)).state == E.OFFERED
    assert await seats(db_pool, event) == (1, 1, 1)
    assert len(await mails(db_pool, "waitlist_offer_expired", ea.name)) == 1


async def test_the_waitlist_closes_at_the_start(
    events: event_grpc.EventServiceAsyncStub,
    bookings: booking_grpc.BookingServiceAsyncStub,
    clock: ManualClock,
    db_pool: asyncpg.Pool,
):
    event, _, guests = await full_event(events, bookings, clock, start_in=timedelta(minutes=30))
    a, b = new_caller(), new_caller()
    ea = await bookings.JoinWaitlist(join(event), metadata=a.metadata)
    eb = await bookings.JoinWaitlist(join(event), metadata=b.metadata)
    await bookings.CancelBooking(cancel(guests[0][1]), metadata=guests[0][0].metadata)
    offered = await entry(bookings, ea.name, a)
    assert offered.offer_expire_time == event.start_time  # shorter near the start, never past it
    clock.advance(timedelta(minutes=31))
    err = await expect_error(bookings.JoinWaitlist(join(event), metadata=new_caller().metadata))
    assert err.reason == "EVENT_NOT_BOOKABLE"
    await sweep(db_pool, clock).run_once()
    assert (await entry(bookings, ea.name, a)).state in (E.EXPIRED, E.CLOSED)
    assert (await entry(bookings, eb.name, b)).state == E.CLOSED
    assert (await seats(db_pool, event))[1] == 0
    assert len(await mails(db_pool, "waitlist_closed", eb.name)) == 1


async def test_cancelling_the_event_ends_every_entry_with_a_mail(
    events: event_grpc.EventServiceAsyncStub,
    bookings: booking_grpc.BookingServiceAsyncStub,
    clock: ManualClock,
    db_pool: asyncpg.Pool,
):
    event, host, guests = await full_event(events, bookings, clock)
    a, b = new_caller(), new_caller()
    ea = await bookings.JoinWaitlist(join(event), metadata=a.metadata)
    eb = await bookings.JoinWaitlist(join(event), metadata=b.metadata)
    await bookings.CancelBooking(cancel(guests[0][1]), metadata=guests[0][0].metadata)
    await events.CancelEvent(es.CancelEventRequest(name=event.name), metadata=host.metadata)
    assert (await entry(bookings, ea.name, a)).state == E.CLOSED
    assert (await entry(bookings, eb.name, b)).state == E.CLOSED
    assert await seats(db_pool, event) == (0, 0, 0)
    assert len(await mails(db_pool, "waitlist_closed", ea.name)) == 1
    assert len(await mails(db_pool, "waitlist_closed", eb.name)) == 1


async def test_raising_capacity_offers_seats_and_moving_the_event_retimes_offers(
    events: event_grpc.EventServiceAsyncStub,
    bookings: booking_grpc.BookingServiceAsyncStub,
    clock: ManualClock,
    db_pool: asyncpg.Pool,
):
    event, host, _ = await full_event(events, bookings, clock)
    a = new_caller()
    ea = await bookings.JoinWaitlist(join(event), metadata=a.metadata)
    raised = event_pb2.Event(name=event.name, capacity=3)
    event = await events.UpdateEvent(
        es.UpdateEventRequest(event=raised, update_mask=field_mask_pb2.FieldMask(paths=["capacity"])),
        metadata=host.metadata,
    )
    assert (await entry(bookings, ea.name, a)).state == E.OFFERED
    assert (event.seats_available, event.waitlist_size) == (0, 0)
    # capacity can't drop below booked + held seats
    lower = event_pb2.Event(name=event.name, capacity=2)
    err = await expect_error(
        events.UpdateEvent(
            es.UpdateEventRequest(event=lower, update_mask=field_mask_pb2.FieldMask(paths=["capacity"])),
            metadata=host.metadata,
        )
    )
    assert err.reason == "CAPACITY_BELOW_SEATS_TAKEN"
    # moved to start in an hour: the offer closes at the new start at the latest
    soon = clock.now() + timedelta(hours=1)
    moved = event_pb2.Event(name=event.name)
    moved.start_time.FromDatetime(soon)
    await events.UpdateEvent(
        es.UpdateEventRequest(event=moved, update_mask=field_mask_pb2.FieldMask(paths=["start_time"])),
        metadata=host.metadata,
    )
    got = (await entry(bookings, ea.name, a)).offer_expire_time.ToDatetime(tzinfo=UTC)
    assert abs((got - soon).total_seconds()) < 1


async def test_list_events_free_seats_filter_means_bookable_now(
    events: event_grpc.EventServiceAsyncStub,
    bookings: booking_grpc.BookingServiceAsyncStub,
    clock: ManualClock,
):
    event, _, guests = await full_event(events, bookings, clock, film_id="tt-waitlist-filter")
    await bookings.JoinWaitlist(join(event), metadata=new_caller().metadata)
    await bookings.CancelBooking(cancel(guests[0][1]), metadata=guests[0][0].metadata)  # freed, but held
    page = await events.ListEvents(
        es.ListEventsRequest(film_id="tt-waitlist-filter", has_free_seats=True, page_size=100)
    )
    assert event.name not in {e.name for e in page.events}


# ---------------------------------------------------------------------------------------------- attendance


def mark(booking: str, attendance: int) -> bs.MarkAttendanceRequest:
    return bs.MarkAttendanceRequest(name=booking, attendance=attendance)  # type: ignore[arg-type]


async def test_attendance_is_the_hosts_after_the_event_and_feeds_reliability(
    events: event_grpc.EventServiceAsyncStub,
    bookings: booking_grpc.BookingServiceAsyncStub,
    reviews: review_grpc.ReviewServiceAsyncStub,
    clock: ManualClock,
):
    host, came, stayed_home, dropped = new_caller(), new_caller(), new_caller(), new_caller()
    event = await new_event(events, clock, host, capacity=3, start_in=timedelta(minutes=1), minutes=1)
    b_came = await bookings.CreateBooking(book(event), metadata=came.metadata)
    b_home = await bookings.CreateBooking(book(event), metadata=stayed_home.metadata)
    b_dropped = await bookings.CreateBooking(book(event), metadata=dropped.metadata)
    await bookings.CancelBooking(cancel(b_dropped), metadata=dropped.metadata)
    err = await expect_error(bookings.MarkAttendance(mark(b_came.name, booking_pb2.ATTENDED), metadata=host.metadata))
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "EVENT_NOT_HELD")
    await complete(events, clock, host, event)

    err = await expect_error(bookings.MarkAttendance(mark(b_came.name, booking_pb2.ATTENDED), metadata=came.metadata))
    assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_EVENT_HOST")
    err = await expect_error(
        bookings.MarkAttendance(mark(b_came.name, booking_pb2.ATTENDED), metadata=new_caller().metadata)
    )
    assert err.reason == "BOOKING_NOT_FOUND"
    err = await expect_error(bookings.MarkAttendance(mark(b_dropped.name, booking_pb2.NO_SHOW), metadata=host.metadata))
    assert err.reason == "BOOKING_NOT_CONFIRMED"
    err = await expect_error(bookings.MarkAttendance(mark(b_came.name, 0), metadata=host.metadata))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and "attendance" in err.fields

    marked = await bookings.MarkAttendance(mark(b_came.name, booking_pb2.ATTENDED), metadata=host.metadata)
    assert marked.attendance == booking_pb2.ATTENDED
    assert await bookings.MarkAttendance(mark(b_came.name, booking_pb2.ATTENDED), metadata=host.metadata) == marked
    await bookings.MarkAttendance(mark(b_home.name, booking_pb2.ATTENDED), metadata=host.metadata)
    changed = await bookings.MarkAttendance(mark(b_home.name, booking_pb2.NO_SHOW), metadata=host.metadata)
    assert changed.attendance == booking_pb2.NO_SHOW

    guests = await events.ListEventGuests(es.ListEventGuestsRequest(parent=event.name), metadata=host.metadata)
    by_user = {g.user: g.guest_reliability for g in guests.guests}
    assert (by_user[f"users/{came.id}"].attended, by_user[f"users/{came.id}"].ratio) == (1, 1.0)
    home = by_user[f"users/{stayed_home.id}"]
    assert (home.attended, home.no_show, home.has_history, home.ratio) == (0, 1, True, 0.0)

    rating = await reviews.GetUserRating(rs.GetUserRatingRequest(name=f"users/{stayed_home.id}/rating"))
    assert (rating.guest_reliability.no_show, rating.guest_reliability.has_history) == (1, True)

    # a no-show mark does not keep the guest from reviewing
    await reviews.CreateReview(review_request(event.name, EVENT, 2), metadata=stayed_home.metadata)

    clock.advance(timedelta(days=7, seconds=1))
    err = await expect_error(bookings.MarkAttendance(mark(b_home.name, booking_pb2.ATTENDED), metadata=host.metadata))
    assert err.reason == "ATTENDANCE_PERIOD_OVER"


async def test_a_guest_without_marks_has_no_history_not_zero(
    events: event_grpc.EventServiceAsyncStub, bookings: booking_grpc.BookingServiceAsyncStub, clock: ManualClock
):
    host, guest = new_caller(), new_caller()
    event = await new_event(events, clock, host)
    await bookings.CreateBooking(book(event), metadata=guest.metadata)
    guests = await events.ListEventGuests(es.ListEventGuestsRequest(parent=event.name), metadata=host.metadata)
    (g,) = guests.guests
    assert (g.guest_reliability.has_history, g.guest_reliability.attended, g.guest_reliability.no_show) == (
        False,
        0,
        0,
    )
