"""iCalendar (RFC 5545) rendering of events, for calendar feeds and "add to calendar" downloads.

Pure: no I/O, no protobuf. The caller decides what a reader may see (:class:`CalendarEntry.show_address`: the
exact address only for the host and booked guests) and how far an entry has changed (``sequence``, bumped on
every change the reader should see; ``last_modified``); this module writes RFC 5545:

- one VEVENT per event with a stable ``UID`` (``{event id}@cowatch``), so a subscribed calendar updates the
  entry it has instead of adding another;
- ``DTSTART``/``DTEND`` in the event's own time zone (``TZID``) with that zone's ``VTIMEZONE`` covering the
  events' years (its DST transitions included), so the event stays at 20:00 local whatever the reader's zone;
- ``STATUS:CANCELLED`` for a cancelled event or booking (kept in the feed so subscribed calendars remove it);
- ``STATUS:TENTATIVE`` for a waitlist offer (``offer_expires``: its deadline is in the description), without
  alarms and without blocking the reader's time: they have no seat yet;
- ``URL``: the share link; two ``VALARM``s, 24 h and 1 h before the start.

Who writes what: the ``VTIMEZONE``s (DST rules from the tz database: easy to get subtly wrong by hand) come from
the maintained ``icalendar`` library, built once per zone and year range per process (they depend on nothing
else). The VEVENTs are written here, by :func:`_line`/:func:`_text`: profiled on a 200-event feed, the library
spent ~0.7 s, 3/4 of it in generic per-property machinery (a character-by-character folding loop, parameter
objects, a time-zone-id lookup per date-time) for a dozen fixed properties whose values are UTC date-times,
integers, one TZID and escaped TEXT. Those three value forms and the 75-octet folding are all this module writes
itself; the unit tests parse every output with the library and compare it with the library's own rendering.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from uuid import UUID
from zoneinfo import ZoneInfo

from icalendar import Timezone
from icalendar.timezone.tzid import tzid_from_tzinfo

__all__ = ["ALARMS", "PRODID", "CalendarEntry", "render", "uid"]

PRODID = "-//cowatch//calendar 1.0//EN"
ALARMS = (timedelta(hours=24), timedelta(hours=1))
_CRLF = "\r\n"
_FOLD = 75
"""RFC 5545 §3.1: content lines are folded at 75 octets (the CRLF excluded; a continuation's leading space
included), never inside a UTF-8 sequence."""
_TRIGGERS = ("-P1D", "-PT1H")
"""ALARMS as RFC 5545 DURATIONs before the start (the unit tests compare them with the library's)."""
# TEXT (§3.3.11): backslash, semicolon and comma escaped, a line break as \n; other control characters are not
# allowed in TEXT at all (HTAB is), so they are dropped rather than written.
_TEXT = str.maketrans(
    {"\\": "\\\\", ";": "\\;", ",": "\\,", "\n": "\\n"}
    | {chr(c): None for c in [*range(0x20), 0x7F] if c not in (0x09, 0x0A)}
)


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


def _text(value: str) -> str:
    return value.replace("\r\n", "\n").replace("\r", "\n").translate(_TEXT)


def _utc(value: datetime) -> str:
    """A UTC DATE-TIME (§3.3.5 form 2), as DTSTAMP, CREATED and LAST-MODIFIED require."""
    return value.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def _line(out: list[str], name: str, value: str) -> None:
    """Append the content line ``name:value`` to ``out``, folded (``value`` already escaped)."""
    line = f"{name}:{value}"
    if len(line) < _FOLD // 4 or len(encoded := line.encode()) <= _FOLD:
        out.append(line)
        return
    parts, start, limit = [], 0, _FOLD
    while len(encoded) - start > limit:
        end = start + limit
        while encoded[end] & 0xC0 == 0x80:  # a UTF-8 continuation byte: cut before its sequence instead
            end -= 1
        parts.append(encoded[start:end].decode())
        start, limit = end, _FOLD - 1  # a continuation line starts with a space, which counts
    parts.append(encoded[start:].decode())
    out.append("\r\n ".join(parts))


@lru_cache(maxsize=1024)
def _tzid(zone_name: str) -> str | None:
    """The TZID the library gives the zone (an alias of UTC is UTC); ``None``: written as UTC, no VTIMEZONE."""
    tzid = tzid_from_tzinfo(ZoneInfo(zone_name))
    return None if tzid == "UTC" else tzid


@lru_cache(maxsize=256)
def _vtimezone(zone_name: str, first_year: int, last_year: int) -> str:
    """The zone's VTIMEZONE over whole years: it depends on nothing else, so a process builds each once (whole
    years, so that feeds whose events move by days share it; a few more transitions than needed are harmless)."""
    tz = Timezone.from_tzinfo(ZoneInfo(zone_name), first_date=date(first_year, 1, 1), last_date=date(last_year, 12, 31))
    return bytes(tz.to_ical()).decode().removesuffix(_CRLF)


def _local(value: datetime, zone: ZoneInfo, tzid: str | None) -> tuple[str, str]:
    if tzid is None:
        return "", _utc(value)
    return f";TZID={tzid}", value.astimezone(zone).strftime("%Y%m%dT%H%M%S")


def _vevent(out: list[str], e: CalendarEntry, stamp: str) -> None:
    zone = ZoneInfo(e.time_zone)
    tzid = _tzid(e.time_zone)
    out.append("BEGIN:VEVENT")
    _line(out, "UID", _text(uid(e.event_id)))
    out.append(f"DTSTAMP:{stamp}")
    out.append(f"CREATED:{_utc(e.created)}")
    out.append(f"LAST-MODIFIED:{_utc(e.last_modified)}")
    out.append(f"SEQUENCE:{int(e.sequence)}")
    _line(out, "SUMMARY", _text(f"{e.title} ({e.film_title})"))
    tentative = e.offer_expires is not None and not e.cancelled
    description = f"{e.description}\n\nHosted by {e.host_name}. {e.link}".strip()
    if tentative and e.offer_expires is not None:
        deadline = e.offer_expires.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")
        description = f"A seat is offered to you from the waitlist until {deadline}: claim it to book.\n\n{description}"
    _line(out, "DESCRIPTION", _text(description))
    for name, value in (("DTSTART", e.start_time), ("DTEND", e.end_time)):
        params, local = _local(value, zone, tzid)
        out.append(f"{name}{params}:{local}")
    _line(out, "LOCATION", _text(_location(e)))
    _line(out, "URL", e.link)  # a URI (§3.3.13): not TEXT, nothing escaped
    out.append(f"STATUS:{'CANCELLED' if e.cancelled else 'TENTATIVE' if tentative else 'CONFIRMED'}")
    out.append(f"TRANSP:{'TRANSPARENT' if e.cancelled or tentative else 'OPAQUE'}")
    if not e.cancelled and not tentative:
        for before, trigger in zip(ALARMS, _TRIGGERS, strict=True):
            out.append("BEGIN:VALARM")
            out.append("ACTION:DISPLAY")
            _line(out, "DESCRIPTION", _text(f"{e.title} starts in {int(before.total_seconds() // 3600)} h"))
            out.append(f"TRIGGER:{trigger}")
            out.append("END:VALARM")
    out.append("END:VEVENT")


def render(entries: Sequence[CalendarEntry], *, name: str, now: datetime) -> bytes:
    """A VCALENDAR with one VEVENT per entry and one VTIMEZONE per zone used, as ``text/calendar`` bytes."""
    out = ["BEGIN:VCALENDAR", f"PRODID:{_text(PRODID)}", "VERSION:2.0", "CALSCALE:GREGORIAN", "METHOD:PUBLISH"]
    _line(out, "X-WR-CALNAME", _text(name))
    by_zone: dict[str, list[CalendarEntry]] = {}
    for e in entries:
        by_zone.setdefault(e.time_zone, []).append(e)
    for zone_name, zone_entries in sorted(by_zone.items()):
        if _tzid(zone_name) is None:
            continue
        first = min(e.start_time for e in zone_entries) - timedelta(days=1)
        last = max(e.end_time for e in zone_entries) + timedelta(days=1)
        out.append(_vtimezone(zone_name, first.year, last.year))
    stamp = _utc(now)
    for e in entries:
        _vevent(out, e, stamp)
    out.append("END:VCALENDAR")
    out.append("")
    return _CRLF.join(out).encode()
