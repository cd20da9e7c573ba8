"""iCalendar (RFC 5545) rendering of events, for calendar feeds and "add to calendar" downloads.

Pure: no I/O, no protobuf. The caller decides what a reader may see (:class:`CalendarEntry.show_address`: the
exact address only for the host and booked guests) and how far an entry has changed (``sequence``, bumped on
every change the reader should see; ``last_modified``); this module only writes RFC 5545 through the maintained
``icalendar`` library (line folding, escaping and VTIMEZONE generation are easy to get subtly wrong by hand):

- one VEVENT per event with a stable ``UID`` (``{event id}@cowatch``), so a subscribed calendar updates the
  entry it has instead of adding another;
- ``DTSTART``/``DTEND`` in the event's own time zone (``TZID``) with that zone's ``VTIMEZONE`` covering the
  events' dates (its DST transitions included), so the event stays at 20:00 local whatever the reader's zone;
- ``STATUS:CANCELLED`` for a cancelled event or booking (kept in the feed so subscribed calendars remove it);
- ``STATUS:TENTATIVE`` for a waitlist offer (``offer_expires``: its deadline is in the description), without
  alarms and without blocking the reader's time: they have no seat yet;
- ``URL``: the share link; two ``VALARM``s, 24 h and 1 h before the start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID
from zoneinfo import ZoneInfo

from icalendar import Alarm, Calendar, Event, Timezone

__all__ = ["ALARMS", "PRODID", "CalendarEntry", "render", "uid"]

PRODID = "-//cowatch//calendar 1.0//EN"
ALARMS = (timedelta(hours=24), timedelta(hours=1))


@dataclass(frozen=True, slots=True)
class CalendarEntry:
    """One event as one reader may see it."""

    event_id: UUID
    title: str
    film_title: str
    description: str
    start_time: datetime  # aware
    end_time: datetime
    time_zone: str  # IANA name
    place_name: str
    place_city: str
    place_address: str
    show_address: bool
    cancelled: bool
    sequence: int
    last_modified: datetime
    created: datetime
    link: str
    host_name: str
    offer_expires: datetime | None = None
    """Set while the reader holds an open waitlist offer for the event (and no booking): a tentative entry."""


def uid(event_id: UUID) -> str:
    return f"{event_id}@cowatch"


def _location(e: CalendarEntry) -> str:
    if e.show_address:
        return f"{e.place_name}, {e.place_address}, {e.place_city}"
    return f"{e.place_name}, {e.place_city}"


def _vevent(e: CalendarEntry, stamp: datetime) -> Event:
    zone = ZoneInfo(e.time_zone)
    ev = Event()
    ev.add("uid", uid(e.event_id))
    ev.add("dtstamp", stamp)
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
    ev.add("location", _location(e))
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


def render(entries: Sequence[CalendarEntry], *, name: str, now: datetime) -> bytes:
    """A VCALENDAR with one VEVENT per entry and one VTIMEZONE per zone used, as ``text/calendar`` bytes."""
    cal = Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("method", "PUBLISH")
    cal.add("x-wr-calname", name)
    by_zone: dict[str, list[CalendarEntry]] = {}
    for e in entries:
        by_zone.setdefault(e.time_zone, []).append(e)
    for zone_name, zone_entries in sorted(by_zone.items()):
        first = min(e.start_time for e in zone_entries) - timedelta(days=1)
        last = max(e.end_time for e in zone_entries) + timedelta(days=1)
        cal.add_component(Timezone.from_tzinfo(ZoneInfo(zone_name), first_date=first.date(), last_date=last.date()))
    for e in entries:
        cal.add_component(_vevent(e, now))
    return bytes(cal.to_ical())
