"""The iCalendar renderer, checked by parsing its output with the icalendar library (as a calendar app would):
stable UIDs, SEQUENCE across a reschedule, cancellation, a DST change in the event's zone, who sees the address."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from icalendar import Calendar

from services.event.calendar import CalendarEntry, render, uid

T0 = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
# 20:00 in Berlin on the night the clocks went forward (28 March 2027, CET → CEST): 18:00 UTC.
DST_NIGHT = datetime(2027, 3, 28, 18, 0, tzinfo=UTC)


def entry(**changes: object) -> CalendarEntry:
    base = CalendarEntry(
        event_id=uuid.UUID(int=7),
        title="Solaris night",
        film_title="Solaris",
        description="Bring cushions",
        start_time=DST_NIGHT,
        end_time=DST_NIGHT + timedelta(hours=3),
        time_zone="Europe/Berlin",
        place_name="Anna's flat",
        place_city="Berlin",
        place_address="Torstraße 1",
        show_address=True,
        cancelled=False,
        sequence=1,
        last_modified=T0,
        created=T0,
        link="https://cowatch.test/events/00000000-0000-0000-0000-000000000007",
        host_name="Anna",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def parse(entries: list[CalendarEntry]) -> Calendar:
    return Calendar.from_ical(render(entries, name="cowatch", now=T0))


def only_event(cal: Calendar) -> Any:
    (ev,) = cal.walk("VEVENT")
    return ev


def test_a_dst_night_event_stays_at_local_time_with_its_vtimezone():
    cal = parse([entry()])
    ev = only_event(cal)
    start = ev.decoded("dtstart")
    assert ev["dtstart"].params["TZID"] == "Europe/Berlin"
    assert (start.hour, start.minute) == (20, 0) and start.astimezone(UTC) == DST_NIGHT
    assert ev.decoded("dtend").astimezone(UTC) == DST_NIGHT + timedelta(hours=3)
    (tz,) = cal.walk("VTIMEZONE")
    assert tz["tzid"] == "Europe/Berlin"
    # The zone covers the change that night: both offsets are there.
    assert {c.name for c in tz.subcomponents} >= {"STANDARD", "DAYLIGHT"}
    assert [a.decoded("trigger") for a in ev.walk("VALARM")] == [-timedelta(hours=24), -timedelta(hours=1)]
    assert str(ev["url"]).endswith("/events/00000000-0000-0000-0000-000000000007")
    assert str(ev["status"]) == "CONFIRMED"


def test_a_reschedule_keeps_the_uid_and_raises_the_sequence():
    before = only_event(parse([entry()]))
    moved = entry(start_time=DST_NIGHT + timedelta(days=1), end_time=DST_NIGHT + timedelta(days=1, hours=3),
                  sequence=2, last_modified=T0 + timedelta(hours=1))  # fmt: skip
    after = only_event(parse([moved]))
    assert str(before["uid"]) == str(after["uid"]) == uid(uuid.UUID(int=7))
    assert int(after["sequence"]) > int(before["sequence"])
    assert after.decoded("last-modified") == T0 + timedelta(hours=1)
    # The day after the change Berlin is on summer time: 20:00 CEST is 18:00 UTC again, not 19:00.
    assert after.decoded("dtstart").astimezone(UTC) == DST_NIGHT + timedelta(days=1)


def test_a_cancelled_event_stays_listed_as_cancelled_without_alarms():
    ev = only_event(parse([entry(cancelled=True, sequence=3)]))
    assert str(ev["status"]) == "CANCELLED"
    assert int(ev["sequence"]) == 3
    assert ev.walk("VALARM") == []


def test_the_exact_address_only_when_the_reader_may_see_it():
    assert "Torstraße 1" in str(only_event(parse([entry()]))["location"])
    city_only = str(only_event(parse([entry(show_address=False)]))["location"])
    assert city_only == "Anna's flat, Berlin" and "Torstraße" not in city_only


def test_a_feed_has_one_vevent_per_event_and_one_vtimezone_per_zone():
    entries = [
        entry(),
        entry(event_id=uuid.UUID(int=8)),
        entry(event_id=uuid.UUID(int=9), time_zone="America/New_York"),
    ]
    cal = parse(entries)
    assert sorted(str(e["uid"]) for e in cal.walk("VEVENT")) == sorted(uid(e.event_id) for e in entries)
    assert sorted(str(tz["tzid"]) for tz in cal.walk("VTIMEZONE")) == ["America/New_York", "Europe/Berlin"]
    assert str(cal["version"]) == "2.0" and "cowatch" in str(cal["prodid"])


def test_a_waitlist_offer_is_tentative_with_its_deadline_in_the_events_zone_and_no_alarms():
    ev = only_event(parse([entry(offer_expires=DST_NIGHT - timedelta(hours=2), show_address=False)]))
    assert str(ev["status"]) == "TENTATIVE" and str(ev["transp"]) == "TRANSPARENT"
    assert "until 2027-03-28 18:00 CEST" in str(ev["description"])  # 16:00 UTC in Berlin's summer time
    assert ev.walk("VALARM") == [] and "Torstraße" not in str(ev["location"])
    # An offer on a cancelled event (or one that ended) is just cancelled.
    gone = only_event(parse([entry(offer_expires=DST_NIGHT, cancelled=True)]))
    assert str(gone["status"]) == "CANCELLED" and "offered" not in str(gone["description"])
