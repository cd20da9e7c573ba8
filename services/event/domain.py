"""Event domain: the event aggregate and the rules hosts and guests live by.

Pure Python: no gRPC, no protobuf, no SQL. The service layer loads an :class:`Event`, asks these functions
whether an action is allowed (they raise :mod:`services.common.errors` exceptions with stable reasons), and
persists the result.
"""

from __future__ import annotations

import functools
import zoneinfo
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from uuid import UUID

from services.common import errors, links, names
from services.common.errors import (
    Aborted,
    FailedPrecondition,
    PermissionDenied,
    Violations,
)
from services.common.identity import User
from services.common.vocabulary import EventState, Rating
from services.common.vocabulary import Visibility as Visibility
from services.common.vocabulary import local_time as local_time  # re-exported for the benchmark scenarios

MAX_CAPACITY = 1000
MIN_DURATION = timedelta(minutes=1)
MAX_DURATION = timedelta(hours=24)
# Events are planned ahead, but not absurdly far: a start beyond this is almost certainly a client bug.
MAX_START_AHEAD = timedelta(days=2 * 366)

TITLE_MAX = 200
DESCRIPTION_MAX = 5000
FILM_ID_MAX = 100
FILM_TITLE_MAX = 300
PLACE_NAME_MAX = 200
PLACE_ADDRESS_MAX = 500
CITY_MAX = 100


State = EventState
"""The event's lifecycle (shared vocabulary: :mod:`services.common.vocabulary`)."""


@dataclass(frozen=True, slots=True)
class Film:
    id: str
    title: str


@dataclass(frozen=True, slots=True)
class Place:
    name: str
    address: str
    city: str


@dataclass(frozen=True, slots=True)
class EventDetails:
    """Everything a host chooses about an event (what CreateEvent takes and UpdateEvent may change)."""

    film: Film
    title: str
    description: str
    start_time: datetime
    time_zone: str
    duration: timedelta
    place: Place
    capacity: int
    visibility: Visibility

    @property
    def end_time(self) -> datetime:
        return self.start_time + self.duration


@dataclass(frozen=True, slots=True)
class Event:
    id: UUID
    host_id: str
    host_display_name: str
    details: EventDetails
    seats_taken: int
    state: State
    invite_token: str
    version: int
    create_time: datetime
    update_time: datetime
    cancel_time: datetime | None = None
    complete_time: datetime | None = None
    host_rating: Rating = field(default_factory=Rating)
    seats_held: int = 0
    """Seats held for open waitlist offers (the booking domain's): not bookable, but not booked either."""
    waitlist_size: int = 0

    @property
    def name(self) -> str:
        return event_name(self.id)

    @property
    def etag(self) -> str:
        return str(self.version)

    @property
    def seats_available(self) -> int:
        """Bookable now: neither booked nor held for a waitlist offer."""
        return max(self.details.capacity - self.seats_taken - self.seats_held, 0)

    def has_started(self, now: datetime) -> bool:
        return now >= self.details.start_time

    def has_ended(self, now: datetime) -> bool:
        return now >= self.details.end_time


@dataclass(frozen=True, slots=True)
class Access:
    """What one caller may see of one event."""

    is_host: bool
    is_guest: bool  # holds a confirmed booking
    has_invite: bool

    @property
    def sees_address(self) -> bool:
        return self.is_host or self.is_guest

    @property
    def sees_invite_token(self) -> bool:
        return self.is_host


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One user-visible change, as guests are told about it (old → new)."""

    field: str
    old: str
    new: str


# --------------------------------------------------------------------------- names


event_name = names.event
parse_event_name = names.parse_event

new_invite_token = links.new_invite_token
parse_invite_token = links.parse_invite_token


# --------------------------------------------------------------------------- validation


@functools.cache
def _known_time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def is_time_zone(name: str) -> bool:
    return name in _known_time_zones()


def _text(v: Violations, field_name: str, value: str, maximum: int, *, required: bool = True) -> None:
    if required and not value.strip():
        v.add(field_name, "must not be empty")
    elif len(value) > maximum:
        v.add(field_name, f"must be at most {maximum} characters")
    elif not _printable(value):
        v.add(field_name, "must not contain control characters")


def _printable(value: str) -> bool:
    return all(ch.isprintable() or ch in "\n\t" for ch in value)


def validate_details(details: EventDetails, now: datetime, *, prefix: str = "event", check_start: bool = True) -> None:
    """Raise one InvalidArgument listing every bad field of ``details``."""
    v = Violations()
    _text(v, f"{prefix}.title", details.title, TITLE_MAX)
    _text(v, f"{prefix}.description", details.description, DESCRIPTION_MAX, required=False)
    _text(v, f"{prefix}.film.id", details.film.id, FILM_ID_MAX)
    _text(v, f"{prefix}.film.title", details.film.title, FILM_TITLE_MAX)
    _text(v, f"{prefix}.place.name", details.place.name, PLACE_NAME_MAX)
    _text(v, f"{prefix}.place.address", details.place.address, PLACE_ADDRESS_MAX)
    _text(v, f"{prefix}.place.city", details.place.city, CITY_MAX)
    if not is_time_zone(details.time_zone):
        v.add(f"{prefix}.time_zone", "must be an IANA time zone such as Europe/Berlin")
    if check_start:
        if details.start_time <= now:
            v.add(f"{prefix}.start_time", "must be in the future")
        elif details.start_time > now + MAX_START_AHEAD:
            v.add(f"{prefix}.start_time", "must be at most two years ahead")
    if not MIN_DURATION <= details.duration <= MAX_DURATION:
        v.add(f"{prefix}.duration", "must be between 1 minute and 24 hours")
    elif details.duration % timedelta(minutes=1):
        v.add(f"{prefix}.duration", "must be a whole number of minutes")
    if not 1 <= details.capacity <= MAX_CAPACITY:
        v.add(f"{prefix}.capacity", f"must be between 1 and {MAX_CAPACITY}")
    v.raise_if_any()


def normalized(details: EventDetails) -> EventDetails:
    """Trim the free-text fields the way they are stored."""
    return replace(
        details,
        title=details.title.strip(),
        description=details.description.strip(),
        film=Film(details.film.id.strip(), details.film.title.strip()),
        place=Place(details.place.name.strip(), details.place.address.strip(), details.place.city.strip()),
    )


# --------------------------------------------------------------------------- access


def access_for(event: Event, user: User | None, *, is_guest: bool, invite_token: str) -> Access:
    is_host = user is not None and user.id == event.host_id
    has_invite = links.invite_matches(invite_token, event.invite_token)
    return Access(is_host=is_host, is_guest=is_guest and not is_host, has_invite=has_invite)


def ensure_visible(event: Event, access: Access) -> None:
    """A private event does not exist for callers who are neither host, guest nor invited."""
    if event.details.visibility is Visibility.PRIVATE and not (access.is_host or access.is_guest or access.has_invite):
        raise errors.event_not_found(event.name)


def ensure_host(event: Event, access: Access) -> None:
    """Host-only actions. Permission is checked before revealing that a private event exists."""
    if access.is_host:
        return
    ensure_visible(event, access)
    raise PermissionDenied("NOT_EVENT_HOST", "only the event's host may do this")


def ensure_etag(event: Event, etag: str) -> None:
    if etag and etag != event.etag:
        raise Aborted(
            "ETAG_MISMATCH",
            "the event changed since you read it; read it again and retry",
            metadata={"current_etag": event.etag},
        )


def ensure_editable(event: Event, now: datetime) -> None:
    if event.state is not State.SCHEDULED or event.has_started(now):
        raise FailedPrecondition(
            "EVENT_NOT_EDITABLE",
            f"the event is {event.state.value.lower()} or has started and can't be changed",
        )


def ensure_capacity_covers_seats(event: Event, capacity: int) -> None:
    taken = event.seats_taken + event.seats_held  # seats held for waitlist offers are promised too
    if capacity < taken:
        raise FailedPrecondition(
            "CAPACITY_BELOW_SEATS_TAKEN",
            f"capacity can't drop below the {taken} seats already booked or offered",
            field_violations=[("event.capacity", f"must be at least {taken}")],
            metadata={"seats_taken": str(taken)},
        )


def ensure_cancellable(event: Event) -> None:
    if event.state is State.COMPLETED:
        raise FailedPrecondition("EVENT_NOT_CANCELLABLE", "a held event can't be cancelled")


def ensure_completable(event: Event, now: datetime) -> None:
    if event.state is State.CANCELLED:
        raise FailedPrecondition("EVENT_NOT_COMPLETABLE", "a cancelled event can't be marked as held")
    if not event.has_ended(now):
        raise FailedPrecondition(
            "EVENT_NOT_ENDED",
            "an event can be marked as held only after it has ended",
            metadata={"end_time": event.details.end_time.isoformat()},
        )


def ensure_open(event: Event, now: datetime) -> None:
    if event.state is not State.SCHEDULED or event.has_started(now):
        raise FailedPrecondition("EVENT_NOT_OPEN", "invitations are only for scheduled events that haven't started")


def ensure_private(event: Event) -> None:
    if event.details.visibility is not Visibility.PRIVATE:
        raise FailedPrecondition("EVENT_NOT_PRIVATE", "only private events have an invite token")


# --------------------------------------------------------------------------- updates

MUTABLE_FIELDS = frozenset(
    {
        "title",
        "description",
        "film",
        "film.id",
        "film.title",
        "start_time",
        "time_zone",
        "duration",
        "place",
        "place.name",
        "place.address",
        "place.city",
        "capacity",
        "visibility",
    }
)


def apply_update(current: EventDetails, patch: EventDetails, paths: frozenset[str]) -> EventDetails:
    """The details after applying the ``paths`` of ``patch`` (paths already validated against MUTABLE_FIELDS)."""
    film = current.film
    if "film" in paths:
        film = patch.film
    else:
        if "film.id" in paths:
            film = replace(film, id=patch.film.id)
        if "film.title" in paths:
            film = replace(film, title=patch.film.title)
    place = current.place
    if "place" in paths:
        place = patch.place
    else:
        for sub in ("name", "address", "city"):
            if f"place.{sub}" in paths:
                place = replace(place, **{sub: getattr(patch.place, sub)})
    return EventDetails(
        film=film,
        title=patch.title if "title" in paths else current.title,
        description=patch.description if "description" in paths else current.description,
        start_time=patch.start_time if "start_time" in paths else current.start_time,
        time_zone=patch.time_zone if "time_zone" in paths else current.time_zone,
        duration=patch.duration if "duration" in paths else current.duration,
        place=place,
        capacity=patch.capacity if "capacity" in paths else current.capacity,
        visibility=patch.visibility if "visibility" in paths else current.visibility,
    )


def changes_between(old: EventDetails, new: EventDetails) -> list[FieldChange]:
    """User-visible differences, in the terms guests read them (local times in the place's zone)."""
    out: list[FieldChange] = []

    def add(name: str, a: str, b: str) -> None:
        if a != b:
            out.append(FieldChange(name, a, b))

    add("title", old.title, new.title)
    add("film", old.film.title, new.film.title)
    add("description", old.description, new.description)
    add("start_time", local_time(old.start_time, old.time_zone), local_time(new.start_time, new.time_zone))
    add("duration", _minutes(old.duration), _minutes(new.duration))
    add(
        "place",
        f"{old.place.name}, {old.place.address}, {old.place.city}",
        f"{new.place.name}, {new.place.address}, {new.place.city}",
    )
    add("capacity", str(old.capacity), str(new.capacity))
    add("visibility", old.visibility.value, new.visibility.value)
    return out


def _minutes(d: timedelta) -> str:
    return f"{int(d.total_seconds() // 60)} min"
