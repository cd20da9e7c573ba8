"""ExportEventCalendar over a real server: the .ics a guest adds to their calendar, parsed with the icalendar
library across a reschedule, a cancellation and a DST night in the event's zone; a stranger gets no private one."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import grpc
import pytest
from cowatch.event.v1 import service_pb2 as event_service_pb2
from cowatch.event.v1 import service_pb2_grpc as event_grpc
from google.protobuf import field_mask_pb2
from icalendar import Calendar

from services.common.clock import ManualClock
from tests.support.api import Caller, expect_error, new_caller
from tests.support.factories import book_directly, create_request

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
