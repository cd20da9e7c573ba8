"""What EventService caches, under which keys, and what other domains call when they change what it shows.

Cached: the event *row* (the domain :class:`Event` the repository returns, invite token included: never a
per-caller view) and the rows of first pages of public ``ListEvents`` queries. Who may see what (private
events, the address, the invite link) is decided per request from the row, the caller and — for signed-in
callers — their bookings read from Postgres each time.

Invalidation (held before the write's COMMIT, invalidated after it: :mod:`services.common.cache`):

- an event's row changes (edit, cancel, complete, invite token, **seats taken by a booking or a cancellation**):
  :func:`event_scopes` — the event's entry and every cached list page;
- a host's rating or display name changes (shown on each of their events): :func:`host_event_scopes`.

:func:`handlers` subscribes these to the domain events (:mod:`services.common.domain_events`) whichever domain
emits them: a process's ``app`` passes them to its service, so BookingService and ReviewService never import this.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final
from uuid import UUID

from services.common.cache import Cache, Codec, invalidation
from services.common.dbtypes import Conn
from services.common.domain_events import EventChanged, EventCreated, ReviewPosted, UserRenamed
from services.common.uow import Handlers
from services.common.vocabulary import Rating
from services.event import repository as events
from services.event.domain import Event, EventDetails, Film, Place, State, Visibility

__all__ = [
    "EVENT_CODEC",
    "LIST_CODEC",
    "LIST_SCOPE",
    "CachedPage",
    "event_key",
    "event_scopes",
    "handlers",
    "host_event_scopes",
    "invalidate_events",
    "invalidate_host_events",
    "list_key",
]

SCHEMA: Final = "v1"
"""Bump when the stored JSON changes shape: old entries are then simply never read again."""
LIST_SCOPE: Final = f"events:list:{SCHEMA}"
"""One generation for every cached list page: any event or seat change makes them all stale."""


def event_key(event_id: UUID) -> str:
    return f"event:{SCHEMA}:{event_id}"


def list_key(fingerprint: str, limit: int) -> str:
    return f"{LIST_SCOPE}:{fingerprint}:{limit}"


def event_scopes(*event_ids: UUID) -> list[str]:
    """What a change of these events' rows (seats included) makes stale: their entries and every list page."""
    return [*(event_key(i) for i in event_ids), LIST_SCOPE]


async def host_event_scopes(conn: Conn, host_id: str) -> list[str]:
    """What a change of the host's rating or display name makes stale: every event of theirs (none: nothing)."""
    ids = await events.ids_by_host(conn, host_id)
    return event_scopes(*ids) if ids else []


async def invalidate_events(cache: Cache, *event_ids: UUID) -> None:
    await cache.invalidate(*event_scopes(*event_ids))


async def invalidate_host_events(cache: Cache, conn: Conn, host_id: str) -> None:
    await cache.invalidate(*await host_event_scopes(conn, host_id))


def handlers(cache: Cache) -> Handlers:
    """Hold before COMMIT, invalidate after it (:func:`services.common.cache.invalidation`) what the events make
    stale."""

    async def created(conn: Conn, e: EventCreated) -> list[str]:
        return [LIST_SCOPE] if e.listed else []  # it may belong on a cached first page

    async def changed(conn: Conn, e: EventChanged) -> list[str]:
        return event_scopes(e.event_id) if e.listed else [event_key(e.event_id)]  # private: on no list

    async def renamed(conn: Conn, e: UserRenamed) -> list[str]:
        return await host_event_scopes(conn, e.user_id)  # the host's name, shown on each of their events

    async def reviewed(conn: Conn, e: ReviewPosted) -> list[str]:
        # the host's rating, shown on each of their events
        return await host_event_scopes(conn, e.host_id) if e.about == "HOST" else []

    return Handlers().merged(
        invalidation(cache, EventCreated, created),
        invalidation(cache, EventChanged, changed),
        invalidation(cache, UserRenamed, renamed),
        invalidation(cache, ReviewPosted, reviewed),
    )


# --------------------------------------------------------------------------- codecs


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def event_to_json(e: Event) -> dict[str, Any]:
    d = e.details
    return {
        "id": str(e.id),
        "host": e.host_id,
        "host_name": e.host_display_name,
        "film": [d.film.id, d.film.title],
        "title": d.title,
        "description": d.description,
        "start": d.start_time.isoformat(),
        "tz": d.time_zone,
        "duration": d.duration.total_seconds(),
        "place": [d.place.name, d.place.address, d.place.city],
        "capacity": d.capacity,
        "visibility": d.visibility.value,
        "seats_taken": e.seats_taken,
        "state": e.state.value,
        "invite": e.invite_token,
        "version": e.version,
        "created": e.create_time.isoformat(),
        "updated": e.update_time.isoformat(),
        "cancelled": _time(e.cancel_time),
        "completed": _time(e.complete_time),
        "rating": [e.host_rating.average, e.host_rating.count],
        "held": e.seats_held,
        "waitlist": e.waitlist_size,
    }


def event_from_json(j: dict[str, Any]) -> Event:
    return Event(
        id=UUID(j["id"]),
        host_id=j["host"],
        host_display_name=j["host_name"],
        details=EventDetails(
            film=Film(*j["film"]),
            title=j["title"],
            description=j["description"],
            start_time=datetime.fromisoformat(j["start"]),
            time_zone=j["tz"],
            duration=timedelta(seconds=j["duration"]),
            place=Place(*j["place"]),
            capacity=j["capacity"],
            visibility=Visibility(j["visibility"]),
        ),
        seats_taken=j["seats_taken"],
        state=State(j["state"]),
        invite_token=j["invite"],
        version=j["version"],
        create_time=datetime.fromisoformat(j["created"]),
        update_time=datetime.fromisoformat(j["updated"]),
        cancel_time=_parse_time(j["cancelled"]),
        complete_time=_parse_time(j["completed"]),
        host_rating=Rating(average=j["rating"][0], count=j["rating"][1]),
        seats_held=j.get("held", 0),
        waitlist_size=j.get("waitlist", 0),
    )


EVENT_CODEC: Final[Codec[Event]] = Codec("event", event_to_json, event_from_json)


class CachedPage:
    """The rows of one first page (``limit + 1`` of them at most: the extra one says "there is more"), and the
    lower bound on the start time the query used (pinned in the page token)."""

    __slots__ = ("rows", "start_from")

    def __init__(self, rows: list[Event], start_from: datetime | None) -> None:
        self.rows = rows
        self.start_from = start_from


LIST_CODEC: Final[Codec[CachedPage]] = Codec(
    "event_list",
    lambda p: {"rows": [event_to_json(e) for e in p.rows], "from": _time(p.start_from)},
    lambda j: CachedPage([event_from_json(e) for e in j["rows"]], _parse_time(j["from"])),
)
