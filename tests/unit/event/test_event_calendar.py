"""The iCalendar renderer, checked by parsing its output with the icalendar library (as a calendar app would):
stable UIDs, SEQUENCE across a reschedule, cancellation, a DST change in the event's zone, who sees the address."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from icalendar import Alarm, Calendar
from icalendar import Event as IcalEvent

from services.event.calendar import ALARMS, CalendarEntry, render, uid

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


# --------------------------------------------------------------------------- the hand-written VEVENT writer
# The module writes VEVENT lines itself (the library's generic machinery cost ~0.7 s per 200-event feed); these
# check it against the library: same parsed content as the library's own rendering, folding and escaping that
# survive its parser for any text.


def library_vevent(e: CalendarEntry, now: datetime) -> IcalEvent:
    """The VEVENT as the module built it with ``icalendar`` components before it wrote them itself."""
    zone = ZoneInfo(e.time_zone)
    ev = IcalEvent()
    ev.add("uid", uid(e.event_id))
    ev.add("dtstamp", now)
    ev.add("created", e.created)
    ev.add("last-modified", e.last_modified)
    ev.add("sequence", e.sequence)
    ev.add("summary", f"{e.title} ({e.film_title})")
    tentative = e.offer_expires is not None and not e.cancelled
    description = f"{e.description}\n\nHosted by {e.host_name}. {e.link}".strip()
    if tentative and e.offer_expires is not None:
        deadline = e.offer_expires.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")
        description = f"A seat is offered to you from the waitlist until {deadline}: claim it to book.\n\n{description}"
    ev.add("description", description)
    ev.add("dtstart", e.start_time.astimezone(zone))
    ev.add("dtend", e.end_time.astimezone(zone))
    ev.add(
        "location",
        f"{e.place_name}, {e.place_address}, {e.place_city}" if e.show_address else f"{e.place_name}, {e.place_city}",
    )
    ev.add("url", e.link)
    ev.add("status", "CANCELLED" if e.cancelled else "TENTATIVE" if tentative else "CONFIRMED")
    ev.add("transp", "TRANSPARENT" if e.cancelled or tentative else "OPAQUE")
    if not e.cancelled and not tentative:
        for before in ALARMS:
            alarm = Alarm()
            alarm.add("action", "DISPLAY")
            alarm.add("description", f"{e.title} starts in {int(before.total_seconds() // 3600)} h")
            alarm.add("trigger", -before)
            ev.add_component(alarm)
    return ev


def content(component: Any) -> list[Any]:
    """A component's decoded properties (name, value, parameters) and its subcomponents', order-free."""
    props = sorted((str(k), repr(component.decoded(k)), sorted(v.params.items())) for k, v in component.items())
    return [component.name, props, sorted(content(sub) for sub in component.subcomponents)]


VARIANTS = [
    entry(),
    entry(cancelled=True, sequence=9),
    entry(offer_expires=DST_NIGHT - timedelta(hours=2), show_address=False),
    entry(time_zone="America/New_York", title="Ünïcödé 🎬 " * 12, description="a;b,c\\d\n\ne\r\nf\rg " * 9),
    entry(time_zone="Asia/Kolkata", created=T0.astimezone(ZoneInfo("Asia/Tokyo")), place_address="Straße 1; 2, 3"),
    entry(time_zone="UTC", link="https://cowatch.test/events/x?a=1,2;b=3"),
]


@pytest.mark.parametrize("e", VARIANTS, ids=range(len(VARIANTS)))
def test_the_written_vevent_parses_to_what_the_library_would_have_rendered(e: CalendarEntry):
    ours = only_event(parse([e]))
    theirs = Calendar.from_ical(library_vevent(e, T0).to_ical())
    assert content(ours) == content(theirs)


def test_every_line_is_at_most_75_octets_and_no_utf8_sequence_is_split():
    long = entry(title="é" * 50 + "🎬" * 40 + "x" * 3, description="ab€" * 200)
    raw = render([long], name="ñ" * 100, now=T0)
    assert raw.endswith(b"END:VCALENDAR\r\n")
    for physical in raw.split(b"\r\n"):
        assert len(physical) <= 75
        physical.decode()  # raises if a fold cut a multi-byte character
    ev = only_event(Calendar.from_ical(raw))
    assert str(ev["summary"]) == f"{long.title} ({long.film_title})"


@settings(max_examples=200, deadline=None)
@given(
    title=st.text(max_size=120),
    description=st.text(max_size=300),
    place=st.text(max_size=80),
)
def test_any_text_survives_escaping_and_folding(title: str, description: str, place: str):
    e = entry(title=title, description=description, place_name=place)
    ev = only_event(parse([e]))

    def expected(text: str) -> str:  # line breaks normalised to \n; control characters (HTAB aside) dropped
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        return "".join(c for c in text if c in "\t\n" or not (ord(c) < 0x20 or ord(c) == 0x7F))

    assert str(ev["summary"]) == expected(f"{title} ({e.film_title})")
    assert str(ev["description"]) == expected(f"{description}\n\nHosted by {e.host_name}. {e.link}".strip())
    assert str(ev["location"]) == expected(f"{place}, {e.place_address}, {e.place_city}")


def test_text_is_escaped_on_the_wire_as_rfc_5545_writes_it():
    # The library's parser also reads an unescaped comma or semicolon in a single-valued TEXT: check the bytes.
    raw = render([entry(title="a,b;c\\d", film_title="e\nf")], name="x", now=T0)
    assert b"SUMMARY:a\\,b\\;c\\\\d (e\\nf)\r\n" in raw
    assert b"URL:https://cowatch.test/events/00000000-0000-0000-0000-000000000007\r\n" in raw
