"""ExportEventCalendar and GetCalendar over real servers: the .ics a guest adds to their calendar, parsed with the
icalendar library across a reschedule, a cancellation and a DST night in the event's zone; a stranger gets no
private one; the feed's waitlist offers; conditional GET (the ETag changes with every change the reader should see,
and an unchanged feed is neither loaded nor rendered; polled without If-None-Match, it is the cached body). The 304
itself is Envoy's: tests/e2e/test_gateway_envoy.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
import pytest_asyncio
from cowatch.booking.v1 import service_pb2 as booking_service_pb2
from cowatch.booking.v1 import service_pb2_grpc as booking_grpc
from cowatch.event.v1 import service_pb2 as event_service_pb2
from cowatch.event.v1 import service_pb2_grpc as event_grpc
from google.protobuf import field_mask_pb2
from icalendar import Calendar

from services.booking.offer_sweep import OfferSweep
from services.common.clock import ManualClock
from services.event import calendar
from tests.support.api import Caller, expect_error, new_caller
from tests.support.bookings import book, cancel, new_event
from tests.support.factories import book_directly, create_request
from tests.support.servers import event_and_booking_servers_with_redis

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def ics(events: event_grpc.EventServiceAsyncStub, name: str, caller: Caller | None, token: str = "") -> Any:
    request = event_service_pb2.ExportEventCalendarRequest(name=name, invite_token=token)
    body = await events.ExportEventCalendar(request, metadata=caller.metadata if caller else None)
    assert body.content_type == "text/calendar; charset=utf-8"
    (vevent,) = Calendar.from_ical(body.data).walk("VEVENT")
    return vevent


async def test_the_ics_follows_a_reschedule_and_a_cancellation_in_the_events_zone(
    events: event_grpc.EventServiceAsyncStub, clock: ManualClock, db_pool
):
    host, guest = new_caller("Hanna"), new_caller()
    # 20:00 in Berlin on the day the clocks go forward (the last Sunday of March: CEST, 18:00 UTC) ...
    last_day = date(clock.now().year + 1, 3, 31)
    sunday = last_day - timedelta(days=(last_day.weekday() - 6) % 7)
    start = datetime(sunday.year, 3, sunday.day, 18, 0, tzinfo=UTC)
    request = create_request(clock.now(), start_in=start - clock.now(), time_zone="Europe/Berlin", city="Berlin")
    event = await events.CreateEvent(request, metadata=host.metadata)
    await book_directly(db_pool, event.name, guest)

    first = await ics(events, event.name, guest)
    assert first["dtstart"].params["TZID"] == "Europe/Berlin"
    assert first.decoded("dtstart").hour == 20 and first.decoded("dtstart").astimezone(UTC) == start
    assert event.place.address and event.place.address in str(first["location"])  # a booked guest
    assert event.place.address not in str((await ics(events, event.name, None))["location"])  # anyone else
    assert str(first["status"]) == "CONFIRMED" and len(first.walk("VALARM")) == 2

    # ... moved to 20:00 the evening before, still winter time (CET): 19:00 UTC.
    later = start - timedelta(days=1) + timedelta(hours=1)
    update = event_service_pb2.UpdateEventRequest(update_mask=field_mask_pb2.FieldMask(paths=["start_time"]))
    update.event.name = event.name
    update.event.start_time.FromDatetime(later)
    await events.UpdateEvent(update, metadata=host.metadata)
    moved = await ics(events, event.name, guest)
    assert str(moved["uid"]) == str(first["uid"])
    assert int(moved["sequence"]) > int(first["sequence"])
    assert moved.decoded("dtstart").astimezone(UTC) == later and moved.decoded("dtstart").hour == 20

    cancel = event_service_pb2.CancelEventRequest(name=event.name)
    await events.CancelEvent(cancel, metadata=host.metadata)
    cancelled = await ics(events, event.name, guest)
    assert str(cancelled["status"]) == "CANCELLED" and int(cancelled["sequence"]) > int(moved["sequence"])


async def test_a_private_events_ics_is_not_found_for_a_stranger(events: event_grpc.EventServiceAsyncStub, clock):
    host = new_caller()
    event = await events.CreateEvent(create_request(clock.now(), private=True), metadata=host.metadata)
    for caller in (new_caller(), None):
        err = await expect_error(
            events.ExportEventCalendar(
                event_service_pb2.ExportEventCalendarRequest(name=event.name),
                metadata=caller.metadata if caller else None,
            )
        )
        assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "EVENT_NOT_FOUND")
    # With the invite link it can be added to a calendar, without the exact address.
    vevent = await ics(events, event.name, new_caller(), event.invite_token)
    assert event.place.address not in str(vevent["location"])


async def _feed(events: event_grpc.EventServiceAsyncStub, token: str) -> dict[str, Any]:
    body = await events.GetCalendar(event_service_pb2.GetCalendarRequest(token=token))
    assert body.content_type == "text/calendar; charset=utf-8"
    cal = Calendar.from_ical(body.data)
    return {str(v["uid"]).split("@")[0]: v for v in cal.walk("VEVENT")}


async def test_a_users_feed_lists_what_they_host_and_booked_and_keeps_cancellations(
    events: event_grpc.EventServiceAsyncStub, clock: ManualClock, db_pool
):
    me, other = new_caller("Mia"), new_caller("Otto")
    hosted = await events.CreateEvent(create_request(clock.now()), metadata=me.metadata)
    booked = await events.CreateEvent(create_request(clock.now()), metadata=other.metadata)
    dropped = await events.CreateEvent(create_request(clock.now()), metadata=other.metadata)
    called_off = await events.CreateEvent(create_request(clock.now()), metadata=other.metadata)
    strangers = await events.CreateEvent(create_request(clock.now(), private=True), metadata=other.metadata)
    await book_directly(db_pool, booked.name, me)
    await book_directly(db_pool, called_off.name, me)
    dropped_booking = await book_directly(db_pool, dropped.name, me)
    await db_pool.execute(
        "UPDATE booking.bookings SET state = 'CANCELLED', cancel_time = $2 WHERE id = $1", dropped_booking, clock.now()
    )
    await events.CancelEvent(event_service_pb2.CancelEventRequest(name=called_off.name), metadata=other.metadata)

    token = (
        await events.RotateCalendarToken(event_service_pb2.RotateCalendarTokenRequest(), metadata=me.metadata)
    ).token
    feed = await _feed(events, token)
    ids = {e.name.split("/")[1]: e for e in (hosted, booked, dropped, called_off)}
    assert set(feed) == set(ids)  # the stranger's private event is not listed
    assert strangers.name.split("/")[1] not in feed
    assert str(feed[ids_key(hosted)]["status"]) == str(feed[ids_key(booked)]["status"]) == "CONFIRMED"
    assert str(feed[ids_key(dropped)]["status"]) == "CANCELLED"  # my booking, cancelled
    assert str(feed[ids_key(called_off)]["status"]) == "CANCELLED"  # the event, cancelled
    assert booked.place.address in str(feed[ids_key(booked)]["location"])  # booked: the exact address
    assert booked.place.address not in str(feed[ids_key(dropped)]["location"])  # no longer booked

    # Thirty days after the cancellations (and the events) they are gone from the feed.
    clock.advance(timedelta(days=40))
    assert await _feed(events, token) == {}

    # Rotating the token: the old URL stops working at once.
    new = (await events.RotateCalendarToken(event_service_pb2.RotateCalendarTokenRequest(), metadata=me.metadata)).token
    assert new != token
    err = await expect_error(events.GetCalendar(event_service_pb2.GetCalendarRequest(token=token)))
    assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "CALENDAR_NOT_FOUND")
    for bad in ("", "x" * 101, "a/b"):
        err = await expect_error(events.GetCalendar(event_service_pb2.GetCalendarRequest(token=bad)))
        assert (err.code, list(err.fields)) == (grpc.StatusCode.INVALID_ARGUMENT, ["token"])
    stored = await db_pool.fetchval("SELECT token_hash FROM event.calendar_tokens WHERE user_id = $1", me.id)
    assert new.encode() not in stored and len(stored) == 32  # only its hash is kept


def ids_key(event: Any) -> str:
    return str(event.name.split("/")[1])


# ------------------------------------------------------------------------------------ conditional GET


async def new_token(events: event_grpc.EventServiceAsyncStub, who: Caller) -> str:
    request = event_service_pb2.RotateCalendarTokenRequest()
    return str((await events.RotateCalendarToken(request, metadata=who.metadata)).token)


class Poll:
    """A calendar app polling one feed URL: it sends the ETag it holds and keeps what it is sent."""

    def __init__(self, events: event_grpc.EventServiceAsyncStub, token: str) -> None:
        self.events, self.token, self.etag = events, token, ""
        self.feed: dict[str, Any] = {}

    async def __call__(self) -> bool:
        """Poll once; whether the feed changed (a full answer) rather than not (the 304's empty answer)."""
        metadata = (("if-none-match", self.etag),) if self.etag else None
        call = self.events.GetCalendar(event_service_pb2.GetCalendarRequest(token=self.token), metadata=metadata)
        body = await call
        headers = dict(await call.initial_metadata())
        assert headers["cache-control"] == "private, no-cache" and str(headers["etag"]).startswith('W/"')
        if headers.get("x-cowatch-not-modified") == "1":
            assert body.data == b"" and headers["etag"] == self.etag
            return False
        assert headers["etag"] != self.etag, "a full answer with the ETag the caller already holds"
        self.etag = str(headers["etag"])
        self.feed = {str(v["uid"]).split("@")[0]: v for v in Calendar.from_ical(body.data).walk("VEVENT")}
        return True

    def entry(self, event: Any) -> Any:
        return self.feed[ids_key(event)]


async def test_the_feeds_etag_changes_with_every_change_its_reader_should_see_and_only_then(
    events: event_grpc.EventServiceAsyncStub,
    bookings: booking_grpc.BookingServiceAsyncStub,
    clock: ManualClock,
    db_pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
):
    me, host, other = new_caller("Mo"), new_caller("Hal"), new_caller("Ola")
    mine = await new_event(events, clock, me, start_in=timedelta(days=20))
    theirs = await new_event(events, clock, host, start_in=timedelta(days=21))
    full = await new_event(events, clock, host, start_in=timedelta(days=22), capacity=1)
    taken = await bookings.CreateBooking(book(full), metadata=other.metadata)
    token = (
        await events.RotateCalendarToken(event_service_pb2.RotateCalendarTokenRequest(), metadata=me.metadata)
    ).token
    poll = Poll(events, token)
    assert await poll() and set(poll.feed) == {ids_key(mine)}

    # An unchanged feed: the answer is empty and nothing is rendered (nor are its events loaded).
    rendered: list[int] = []
    real_render = calendar.render

    def counting_render(entries: Any, **kw: Any) -> bytes:
        rendered.append(1)
        return real_render(entries, **kw)

    monkeypatch.setattr(calendar, "render", counting_render)
    assert not await poll() and not await poll()
    assert rendered == []

    async def changed() -> bool:
        return await poll() and not await poll()  # changed once, then still for the next poll

    # My own event rescheduled.
    before = poll.entry(mine)
    update = event_service_pb2.UpdateEventRequest(update_mask=field_mask_pb2.FieldMask(paths=["start_time"]))
    update.event.name = mine.name
    update.event.start_time.FromDatetime(clock.now() + timedelta(days=19))
    await events.UpdateEvent(update, metadata=me.metadata)
    assert await changed() and rendered == [1]
    assert int(poll.entry(mine)["sequence"]) > int(before["sequence"])

    # A booking made, then cancelled.
    booking = await bookings.CreateBooking(book(theirs), metadata=me.metadata)
    assert await changed() and str(poll.entry(theirs)["status"]) == "CONFIRMED"
    booked = poll.entry(theirs)
    await bookings.CancelBooking(cancel(booking), metadata=me.metadata)
    assert await changed() and str(poll.entry(theirs)["status"]) == "CANCELLED"
    assert int(poll.entry(theirs)["sequence"]) > int(booked["sequence"])

    # Joining a waitlist shows nothing (no offer yet); a seat coming free offers it: a tentative entry with the
    # offer's deadline; claiming it turns it into the booking under the same UID, one sequence later.
    waiting = await bookings.JoinWaitlist(
        booking_service_pb2.JoinWaitlistRequest(parent=full.name), metadata=me.metadata
    )
    assert not await poll()
    await bookings.CancelBooking(cancel(taken), metadata=other.metadata)
    assert await changed()
    offer = poll.entry(full)
    assert str(offer["status"]) == "TENTATIVE" and not offer.walk("VALARM")
    assert "offered to you from the waitlist until" in str(offer["description"])
    assert full.place.address not in str(offer["location"])  # no seat yet: no exact address
    await bookings.ClaimOffer(booking_service_pb2.ClaimOfferRequest(name=waiting.name), metadata=me.metadata)
    assert await changed()
    claimed = poll.entry(full)
    assert str(claimed["status"]) == "CONFIRMED" and full.place.address in str(claimed["location"])
    assert int(claimed["sequence"]) > int(offer["sequence"]) and str(claimed["uid"]) == str(offer["uid"])

    # The host renames themselves: their name is in my entries.
    renamed = new_caller("Hal Renamed", user_id=host.id)
    await events.RotateCalendarToken(event_service_pb2.RotateCalendarTokenRequest(), metadata=renamed.metadata)
    assert await changed() and "Hal Renamed" in str(poll.entry(full)["description"])

    # The host cancels the event.
    await events.CancelEvent(event_service_pb2.CancelEventRequest(name=full.name), metadata=host.metadata)
    assert await changed() and str(poll.entry(full)["status"]) == "CANCELLED"

    # A rotated token: a new URL, with its own validator (the old one answers NOT_FOUND).
    old_etag = poll.etag
    poll.token = await new_token(events, me)
    assert await poll() and poll.etag != old_etag


async def test_an_offer_that_expires_leaves_the_feed_cancelled_before_and_after_the_sweep(
    events: event_grpc.EventServiceAsyncStub,
    bookings: booking_grpc.BookingServiceAsyncStub,
    clock: ManualClock,
    db_pool: asyncpg.Pool,
):
    me, host, other = new_caller("Ev"), new_caller("Hu"), new_caller("Ot")
    full = await new_event(events, clock, host, start_in=timedelta(days=20), capacity=1)
    taken = await bookings.CreateBooking(book(full), metadata=other.metadata)
    await bookings.JoinWaitlist(booking_service_pb2.JoinWaitlistRequest(parent=full.name), metadata=me.metadata)
    token = (
        await events.RotateCalendarToken(event_service_pb2.RotateCalendarTokenRequest(), metadata=me.metadata)
    ).token
    poll = Poll(events, token)
    assert await poll() and poll.feed == {}
    await bookings.CancelBooking(cancel(taken), metadata=other.metadata)
    assert await poll() and str(poll.entry(full)["status"]) == "TENTATIVE"
    offered = poll.entry(full)

    # Past its deadline the offer can't be claimed: the feed says so at once, before any sweep ran ...
    clock.advance(timedelta(hours=2, seconds=1))
    assert await poll() and str(poll.entry(full)["status"]) == "CANCELLED"
    assert int(poll.entry(full)["sequence"]) > int(offered["sequence"])
    # ... and the sweep marking it EXPIRED changes nothing the reader sees: no new ETag.
    await OfferSweep(db_pool, clock, "http://localhost:8080", timedelta(hours=2)).run_once()
    assert not await poll()


async def test_an_events_ics_download_answers_a_matching_if_none_match_with_an_empty_body(
    events: event_grpc.EventServiceAsyncStub, clock: ManualClock
):
    host = new_caller()
    event = await events.CreateEvent(create_request(clock.now()), metadata=host.metadata)
    request = event_service_pb2.ExportEventCalendarRequest(name=event.name)
    call = events.ExportEventCalendar(request)
    assert (await call).data
    etag = dict(await call.initial_metadata())["etag"]
    call = events.ExportEventCalendar(request, metadata=(("if-none-match", etag),))
    assert (await call).data == b"" and dict(await call.initial_metadata())["x-cowatch-not-modified"] == "1"
    # The host sees the exact address: another representation, another validator.
    call = events.ExportEventCalendar(request, metadata=(*host.metadata, ("if-none-match", etag)))
    assert (await call).data and dict(await call.initial_metadata())["etag"] != etag


# ------------------------------------------------------------------------------------ rendered-body cache


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def cached(
    database_url: str, redis_url: str, redis_key_prefix: str, clock: ManualClock
) -> AsyncIterator[tuple[event_grpc.EventServiceAsyncStub, booking_grpc.BookingServiceAsyncStub]]:
    async with event_and_booking_servers_with_redis(
        database_url, redis_url, f"{redis_key_prefix}calendar-", clock
    ) as stubs:
        yield stubs


async def test_an_unchanged_feed_polled_without_if_none_match_is_served_from_the_cache_and_a_change_is_not(
    cached: tuple[event_grpc.EventServiceAsyncStub, booking_grpc.BookingServiceAsyncStub],
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
):
    events, bookings = cached
    me, host = new_caller("Mo"), new_caller("Hal")
    mine = await new_event(events, clock, me, start_in=timedelta(days=20))
    theirs = await new_event(events, clock, host, start_in=timedelta(days=21))
    token = await new_token(events, me)
    rendered: list[int] = []
    real_render = calendar.render

    def counting_render(entries: Any, **kw: Any) -> bytes:
        rendered.append(len(entries))
        return real_render(entries, **kw)

    monkeypatch.setattr(calendar, "render", counting_render)

    async def get(which: str = "") -> tuple[str, bytes]:
        call = events.GetCalendar(event_service_pb2.GetCalendarRequest(token=which or token))
        body = await call
        return str(dict(await call.initial_metadata())["etag"]), body.data

    async def settled(which: str = "") -> tuple[str, bytes]:
        """A second GET once the first one's body is in Redis (stored in the background)."""
        first = await get(which)
        for _ in range(100):
            if await get(which) == first and len(rendered) == renders_before + 1:
                return first
            await asyncio.sleep(0.02)
        raise AssertionError(f"not served from the cache: {rendered}")

    renders_before = 0
    etag, body = await settled()
    assert rendered == [1]  # rendered once; every GET after it is the cached body, DTSTAMP included
    clock.advance(timedelta(minutes=5))
    assert await get() == (etag, body) and rendered == [1]

    # A change the reader should see: a new ETag, so a new render, never the old body.
    update = event_service_pb2.UpdateEventRequest(update_mask=field_mask_pb2.FieldMask(paths=["title"]))
    update.event.name, update.event.title = mine.name, "Renamed night"
    await events.UpdateEvent(update, metadata=me.metadata)
    renders_before = 1
    etag2, body2 = await settled()
    assert etag2 != etag and b"SUMMARY:Renamed night" in body2 and rendered == [1, 1]
    # A booking (the other service's write: no invalidation reaches this cache, the ETag is the key).
    await bookings.CreateBooking(book(theirs), metadata=me.metadata)
    renders_before = 2
    etag3, body3 = await settled()
    assert etag3 != etag2 and body3.count(b"BEGIN:VEVENT") == 2 and rendered == [1, 1, 2]

    # A rotated token: the old one is refused before any cache read, the new one is a new entry.
    new = await new_token(events, me)
    err = await expect_error(events.GetCalendar(event_service_pb2.GetCalendarRequest(token=token)))
    assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "CALENDAR_NOT_FOUND")
    renders_before = 3
    etag4, _ = await settled(new)
    assert etag4 != etag3 and rendered == [1, 1, 2, 2]
