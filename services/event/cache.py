"""What EventService caches, under which keys, and what other domains call when they change what it shows.

Cached: the event *row* (the domain :class:`Event` the repository returns, invite token included: never a
per-caller view) and the rows of first pages of public ``ListEvents`` queries, each row **with its public form
already serialized** (:class:`CachedEvent`: the wire bytes of the event as a caller who is neither its host nor
a guest sees it — no exact address, no invite token, the plain share link). Who may see what (private events,
the address, the invite link) is decided per request from the row, the caller and — for signed-in callers —
their bookings read from Postgres each time; a caller whose view is the public one is answered with the stored
bytes as they are (no row → domain → message → bytes on a hit), anyone else gets their own view built from the
row. The row's JSON is parsed only when a request needs it.

Invalidation (held before the write's COMMIT, invalidated after it: :mod:`services.common.cache`):

- an event's row changes (edit, cancel, complete, invite token, **seats taken by a booking or a cancellation**):
  :func:`event_scopes` — the event's entry and every cached list page;
- a host's rating or display name changes (shown on each of their events): :func:`host_event_scopes`.

:func:`handlers` subscribes these to the domain events (:mod:`services.common.domain_events`) whichever domain
emits them: a process's ``app`` passes them to its service, so BookingService and ReviewService never import this.
"""

from __future__ import annotations

import json
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
    "CachedEvent",
    "CachedPage",
    "event_key",
    "event_scopes",
    "handlers",
    "host_event_scopes",
    "invalidate_events",
    "invalidate_host_events",
    "list_key",
]

SCHEMA: Final = "v2"
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


_NUL: Final = b"\x00"
"""Separates the stored parts: compact JSON never contains a raw NUL (control characters are escaped)."""


class CachedEvent:
    """An event row and its public form's wire bytes (``b""`` when the service renders none). The row is parsed
    from its stored JSON on first use only: a caller who sees the public form never needs it."""

    __slots__ = ("_event", "_json", "event_id", "host_id", "listed", "public", "start_time")

    def __init__(
        self,
        *,
        event_id: UUID,
        public: bytes,
        listed: bool,
        host_id: str,
        start_time: datetime,
        event: Event | None = None,
        row_json: bytes = b"",
    ) -> None:
        self.event_id = event_id
        self.public = public
        self.listed = listed
        """PUBLIC visibility: anyone may read it (a private event needs its invite)."""
        self.host_id = host_id
        self.start_time = start_time
        self._event = event
        self._json = row_json

    @classmethod
    def of(cls, event: Event, public: bytes) -> CachedEvent:
        return cls(
            event_id=event.id,
            public=public,
            listed=event.details.visibility is Visibility.PUBLIC,
            host_id=event.host_id,
            start_time=event.details.start_time,
            event=event,
        )

    @property
    def event(self) -> Event:
        if self._event is None:
            self._event = event_from_json(json.loads(self._json))
        return self._event

    def row_json(self) -> bytes:
        return self._json or _dumps(event_to_json(self.event))


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _encode_event(c: CachedEvent) -> bytes:
    head = _dumps([str(c.event_id), c.listed, c.host_id, c.start_time.isoformat()])
    return _NUL.join((head, c.row_json(), c.public))


def _decode_event(blob: bytes) -> CachedEvent:
    head, _, rest = blob.partition(_NUL)
    row, _, public = rest.partition(_NUL)
    event_id, listed, host_id, start = json.loads(head)
    return CachedEvent(
        event_id=UUID(event_id),
        public=public,
        listed=listed,
        host_id=host_id,
        start_time=datetime.fromisoformat(start),
        row_json=row,
    )


EVENT_CODEC: Final[Codec[CachedEvent]] = Codec("event", _encode_event, _decode_event, binary=True)


class CachedPage:
    """The rows of one first page (``limit + 1`` of them at most: the extra one says "there is more"), and the
    lower bound on the start time the query used (pinned in the page token)."""

    __slots__ = ("rows", "start_from")

    def __init__(self, rows: list[CachedEvent], start_from: datetime | None) -> None:
        self.rows = rows
        self.start_from = start_from


def _encode_page(p: CachedPage) -> bytes:
    """``index \0 rows \0 bytes``: the index (start bound; per row: listed, host, start, id, public length) is
    all an anonymous reader parses; the rows' JSON only a signed-in reader with a view of their own."""
    index = {
        "from": _time(p.start_from),
        "items": [[r.host_id, r.start_time.isoformat(), str(r.event_id), len(r.public)] for r in p.rows],
    }
    rows = b"[" + b",".join(r.row_json() for r in p.rows) + b"]"
    return _NUL.join((_dumps(index), rows, b"".join(r.public for r in p.rows)))


class _PageRows:
    """The rows' JSON of a cached page, parsed on first use (shared by the page's :class:`CachedEvent` s)."""

    __slots__ = ("_parsed", "_raw")

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self._parsed: list[Any] | None = None

    def get(self, i: int) -> Any:
        if self._parsed is None:
            self._parsed = json.loads(self._raw)
        return self._parsed[i]


def _decode_page(blob: bytes) -> CachedPage:
    head, _, rest = blob.partition(_NUL)
    rows_raw, _, data = rest.partition(_NUL)
    index = json.loads(head)
    rows = _PageRows(rows_raw)
    out: list[CachedEvent] = []
    at = 0
    for i, (host_id, start, event_id, size) in enumerate(index["items"]):
        item = _PageEvent(
            event_id=UUID(event_id),
            public=data[at : at + size],
            listed=True,
            host_id=host_id,
            start_time=datetime.fromisoformat(start),
        )
        item.source, item.index = rows, i
        out.append(item)
        at += size
    return CachedPage(out, _parse_time(index["from"]))


class _PageEvent(CachedEvent):
    """A row of a cached page: its JSON comes from the page's shared rows part when first needed."""

    __slots__ = ("index", "source")

    source: _PageRows
    index: int

    @property
    def event(self) -> Event:
        if self._event is None:
            self._event = event_from_json(self.source.get(self.index))
        return self._event


LIST_CODEC: Final[Codec[CachedPage]] = Codec("event_list", _encode_page, _decode_page, binary=True)
