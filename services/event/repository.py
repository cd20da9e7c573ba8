"""SQL over event.events and event.participants; the only writer of those tables except for
``event.events.seats_taken``, which belongs to the booking domain (docs/architecture.md, "Who writes which table").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from uuid import UUID

import asyncpg

from services.common.dbtypes import Conn, Pool
from services.common.vocabulary import Rating
from services.event.domain import (
    Event,
    EventDetails,
    Film,
    Place,
    State,
    Visibility,
)

_COLUMNS = """
    e.id, e.host_id, u.display_name AS host_display_name, e.film_id, e.film_title, e.title, e.description,
    e.start_time, e.end_time, e.time_zone, e.place_name, e.place_address, e.place_city, e.capacity,
    e.seats_taken, e.visibility, e.state, e.invite_token, e.version, e.create_time, e.update_time,
    e.cancel_time, e.complete_time, e.seats_held,
    (SELECT count(*) FROM booking.waitlist w WHERE w.event_id = e.id AND w.state = 'WAITING') AS waitlist_size,
    coalesce(hr.rating_sum, 0) AS host_rating_sum, coalesce(hr.rating_count, 0) AS host_rating_count
"""
_FROM = """
FROM event.events e
JOIN account.users u ON u.id = e.host_id
LEFT JOIN review.user_ratings hr ON hr.user_id = e.host_id AND hr.role = 'HOST'
"""

GET = f"SELECT {_COLUMNS} {_FROM} WHERE e.id = $1"
GET_FOR_UPDATE = f"SELECT {_COLUMNS} {_FROM} WHERE e.id = $1 FOR UPDATE OF e"

INSERT = """
INSERT INTO event.events (
    id, host_id, film_id, film_title, title, description, start_time, end_time, time_zone,
    place_name, place_address, place_city, capacity, visibility, invite_token, create_time, update_time
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $16)
"""

UPDATE_DETAILS = """
UPDATE event.events SET
    film_id = $2, film_title = $3, title = $4, description = $5, start_time = $6, end_time = $7,
    time_zone = $8, place_name = $9, place_address = $10, place_city = $11, capacity = $12,
    visibility = $13, version = version + 1, update_time = $14
WHERE id = $1
"""

MARK_CANCELLED = """
UPDATE event.events SET state = 'CANCELLED', cancel_time = $2,
    version = version + 1, update_time = $2
WHERE id = $1 AND state = 'SCHEDULED'
"""

MARK_COMPLETED = """
UPDATE event.events SET state = 'COMPLETED', complete_time = $2, version = version + 1, update_time = $2
WHERE id = $1 AND state = 'SCHEDULED'
"""

RECORD_PARTICIPANTS = """
INSERT INTO event.participants (event_id, user_id, role)
SELECT $1, host_id, 'HOST' FROM event.events WHERE id = $1
UNION ALL
SELECT $1, guest_id, 'GUEST' FROM booking.bookings WHERE event_id = $1 AND state = 'CONFIRMED'
ON CONFLICT DO NOTHING
"""

ROTATE_INVITE = """
UPDATE event.events SET invite_token = $2, version = version + 1, update_time = $3 WHERE id = $1
"""


def to_event(r: asyncpg.Record) -> Event:
    details = EventDetails(
        film=Film(r["film_id"], r["film_title"]),
        title=r["title"],
        description=r["description"],
        start_time=r["start_time"],
        time_zone=r["time_zone"],
        duration=r["end_time"] - r["start_time"],
        place=Place(r["place_name"], r["place_address"], r["place_city"]),
        capacity=r["capacity"],
        visibility=Visibility(r["visibility"]),
    )
    return Event(
        id=r["id"],
        host_id=r["host_id"],
        host_display_name=r["host_display_name"],
        details=details,
        seats_taken=r["seats_taken"],
        state=State(r["state"]),
        invite_token=r["invite_token"],
        version=r["version"],
        create_time=r["create_time"],
        update_time=r["update_time"],
        cancel_time=r["cancel_time"],
        complete_time=r["complete_time"],
        host_rating=Rating.of(r["host_rating_sum"], r["host_rating_count"]),
        seats_held=r["seats_held"],
        waitlist_size=r["waitlist_size"],
    )


async def get(conn: Conn, event_id: UUID, *, for_update: bool = False) -> Event | None:
    row = await conn.fetchrow(GET_FOR_UPDATE if for_update else GET, event_id)
    return to_event(row) if row else None


async def insert(conn: Conn, event_id: UUID, host_id: str, d: EventDetails, invite_token: str, now: datetime) -> None:
    await conn.execute(
        INSERT,
        event_id,
        host_id,
        d.film.id,
        d.film.title,
        d.title,
        d.description,
        d.start_time,
        d.end_time,
        d.time_zone,
        d.place.name,
        d.place.address,
        d.place.city,
        d.capacity,
        d.visibility.value,
        invite_token,
        now,
    )


async def update_details(conn: Conn, event_id: UUID, d: EventDetails, now: datetime) -> None:
    await conn.execute(
        UPDATE_DETAILS,
        event_id,
        d.film.id,
        d.film.title,
        d.title,
        d.description,
        d.start_time,
        d.end_time,
        d.time_zone,
        d.place.name,
        d.place.address,
        d.place.city,
        d.capacity,
        d.visibility.value,
        now,
    )


async def mark_cancelled(conn: Conn, event_id: UUID, now: datetime) -> None:
    await conn.execute(MARK_CANCELLED, event_id, now)


async def mark_completed(conn: Conn, event_id: UUID, now: datetime) -> None:
    await conn.execute(MARK_COMPLETED, event_id, now)
    await conn.execute(RECORD_PARTICIPANTS, event_id)


async def rotate_invite_token(conn: Conn, event_id: UUID, token: str, now: datetime) -> None:
    await conn.execute(ROTATE_INVITE, event_id, token, now)


# --------------------------------------------------------------------------- listing


@dataclass(frozen=True, slots=True)
class ListQuery:
    """ListEvents filters, already validated. ``own_host_id`` set means "the caller's own events, all of them"."""

    start_from: datetime | None
    start_to: datetime | None
    film_id: str | None
    city: str | None
    has_free_seats: bool
    host_id: str | None
    own: bool
    text: str | None
    viewer_id: str | None
    after: tuple[datetime, UUID] | None
    limit: int


@dataclass(frozen=True, slots=True)
class Listed:
    event: Event
    viewer_is_guest: bool


def _like_pattern(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


_TEXT_MATCH = "lower(e.title || ' ' || e.film_title)"
NEAR_WINDOW = "7 days"
"""How far from its start a free-text listing walks in start-time order before reading every match instead."""


def build_list_sql(q: ListQuery) -> tuple[str, list[Any]]:
    """One keyset-paginated statement; filters add predicates that match the partial indexes' WHERE clause."""
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    where: list[str] = []
    if q.own:
        where.append(f"e.host_id = {arg(q.host_id)}")
    else:
        where.append("e.visibility = 'PUBLIC' AND e.state = 'SCHEDULED'")
        if q.host_id is not None:
            where.append(f"e.host_id = {arg(q.host_id)}")
    if q.start_from is not None:
        where.append(f"e.start_time >= {arg(q.start_from)}")
    if q.start_to is not None:
        where.append(f"e.start_time < {arg(q.start_to)}")
    if q.film_id is not None:
        where.append(f"e.film_id = {arg(q.film_id)}")
    if q.city is not None:
        where.append(f"lower(e.place_city) = {arg(q.city.lower())}")
    if q.has_free_seats:
        where.append("e.seats_taken + e.seats_held < e.capacity")  # bookable now
    if q.text is not None:
        where.append(f"{_TEXT_MATCH} LIKE {arg(_like_pattern(q.text))}")
    if q.after is not None:
        where.append(f"(e.start_time, e.id) > ({arg(q.after[0])}, {arg(q.after[1])})")
    if q.viewer_id is not None:
        viewer = arg(q.viewer_id)
        guest = (
            "EXISTS (SELECT 1 FROM booking.bookings b WHERE b.event_id = e.id "
            f"AND b.guest_id = {viewer} AND b.state = 'CONFIRMED')"
        )
    else:
        guest = "false"
    listed = " AND ".join(where)
    anchor = _text_anchor(q)
    if anchor is None:
        sql = (
            f"SELECT {_COLUMNS}, {guest} AS viewer_is_guest {_FROM} WHERE {listed} "
            f"ORDER BY e.start_time, e.id LIMIT {arg(q.limit)}"
        )
        return sql, args
    # Free text over public events. The trigram GIN index can only hand over every match, a cost that grows with
    # the catalogue; so the first week from ``anchor`` (which every listed row starts at or after: distance order
    # is start-time order) is read from the GiST index (start time, trigrams) in start-time order, a
    # nearest-neighbour walk that stops after a page. Only when that week holds less than a page (a rare term)
    # is the rest read the GIN way (the GiST index is on the "C"-collated text, so that part cannot walk it
    # whole). The walk cannot break ties on id, so only the rows before the page's last start time are taken
    # from it, and that start time's rows are looked up whole.
    limit = arg(q.limit)
    at = f"{arg(anchor)}::timestamptz"
    near = listed.replace(_TEXT_MATCH, f'({_TEXT_MATCH} COLLATE "C")')
    sql = (
        f"WITH near AS MATERIALIZED (SELECT e.ctid, e.start_time FROM event.events e WHERE {near} "
        f"AND e.start_time < {at} + interval '{NEAR_WINDOW}' ORDER BY e.start_time <-> {at} LIMIT {limit}), "
        f"far AS MATERIALIZED (SELECT e.ctid, e.start_time FROM event.events e WHERE {listed} "
        f"AND e.start_time >= {at} + interval '{NEAR_WINDOW}' AND (SELECT count(*) FROM near) < {limit} "
        f"ORDER BY e.start_time, e.id LIMIT {limit}), "
        "found AS (SELECT * FROM near UNION ALL SELECT * FROM far) "
        f"SELECT {_COLUMNS}, {guest} AS viewer_is_guest {_FROM} WHERE e.ctid = ANY(ARRAY("
        "SELECT found.ctid FROM found WHERE found.start_time < (SELECT max(found.start_time) FROM found) "
        f"UNION ALL SELECT e.ctid FROM event.events e WHERE {listed} "
        "AND e.start_time = (SELECT max(found.start_time) FROM found))) "
        f"ORDER BY e.start_time, e.id LIMIT {limit}"
    )
    return sql, args


def _text_anchor(q: ListQuery) -> datetime | None:
    """The earliest start time a free-text listing of public events can show (``None``: not such a listing)."""
    if q.text is None or q.own:
        return None
    bounds = [t for t in (q.start_from, q.after[0] if q.after else None) if t is not None]
    return max(bounds) if bounds else None


async def list_events(conn: Conn | Pool, q: ListQuery) -> list[Listed]:
    sql, args = build_list_sql(q)
    rows = await conn.fetch(sql, *args)
    return [Listed(to_event(r), r["viewer_is_guest"]) for r in rows]


IDS_BY_HOST = "SELECT id FROM event.events WHERE host_id = $1"


async def ids_by_host(conn: Conn, host_id: str) -> list[UUID]:
    """Every event of a host (cache invalidation when something shown on all of them changes)."""
    return [r["id"] for r in await conn.fetch(IDS_BY_HOST, host_id)]


GUEST_OF = """
SELECT event_id FROM booking.bookings
WHERE guest_id = $1 AND event_id = ANY($2::uuid[]) AND state = 'CONFIRMED'
"""


async def guest_of(conn: Conn, guest_id: str, event_ids: list[UUID]) -> set[UUID]:
    """Which of ``event_ids`` the user holds a confirmed booking for (what a cached list page can't know)."""
    if not event_ids:
        return set()
    return {r["event_id"] for r in await conn.fetch(GUEST_OF, guest_id, event_ids)}


CHARGE_INVITATIONS = """
WITH purge AS (DELETE FROM event.invitation_quota WHERE host_id = $1 AND day < $2::date - 1)
INSERT INTO event.invitation_quota AS q (host_id, day, sent) VALUES ($1, $2, $3)
ON CONFLICT (host_id, day) DO UPDATE SET sent = q.sent + EXCLUDED.sent WHERE q.sent + EXCLUDED.sent <= $4
RETURNING sent
"""


async def charge_invitations(conn: Conn, host_id: str, day: date, count: int, limit: int) -> bool:
    """Count ``count`` invitations against the host's daily ``limit``; ``False`` (nothing counted) when over it."""
    if count > limit:
        return False
    return await conn.fetchval(CHARGE_INVITATIONS, host_id, day, count, limit) is not None


# --------------------------------------------------------------------------- calendar feeds

SET_CALENDAR_TOKEN = """
INSERT INTO event.calendar_tokens (user_id, token_hash, create_time) VALUES ($1, $2, $3)
ON CONFLICT (user_id) DO UPDATE SET token_hash = EXCLUDED.token_hash, create_time = EXCLUDED.create_time
"""


def _calendar_mine(user: str) -> str:
    """The reader's relation to each event of their feed (``user``: the SQL giving their id), one row per event.

    Every relation a user can have to an event is a row of ``rel``: hosting it, each booking (confirmed or
    cancelled), each waitlist entry that got an offer (open, ended — declined, left, expired, closed — or claimed).
    The one shown wins by rank: host, a confirmed booking, an open offer, then the latest ended one (a cancelled
    booking or an ended offer: ``STATUS:CANCELLED`` until ``$3``). A claimed offer never wins (its booking shows,
    under the same UID: one VEVENT per event). An offer past its deadline counts as ended from ``$2`` on even
    before the sweep marks it, so the feed never shows an offer that can no longer be claimed.

    ``steps`` counts the relation's transitions (a booking made, cancelled; an offer made, ended): every one adds
    1, so ``SEQUENCE`` = event version + steps rises with every change the reader should see. ``changed`` is the
    latest transition's time (``LAST-MODIFIED`` with the event's own).
    """
    return f"""
rel AS (
    SELECT e.id AS event_id, 'HOST' AS relation, NULL::timestamptz AS relation_end,
           NULL::timestamptz AS offer_expire_time, 0 AS rank, 0 AS steps, NULL::timestamptz AS changed
    FROM event.events e WHERE e.host_id = {user}
    UNION ALL
    SELECT b.event_id, CASE b.state WHEN 'CONFIRMED' THEN 'BOOKED' ELSE 'BOOKING_CANCELLED' END, b.cancel_time,
           NULL, CASE b.state WHEN 'CONFIRMED' THEN 1 ELSE 3 END, CASE b.state WHEN 'CONFIRMED' THEN 1 ELSE 2 END,
           coalesce(b.cancel_time, b.create_time)
    FROM booking.bookings b WHERE b.guest_id = {user}
    UNION ALL
    SELECT w.event_id, o.relation, o.relation_end, w.offer_expire_time,
           CASE o.relation WHEN 'OFFERED' THEN 2 WHEN 'OFFER_ENDED' THEN 3 ELSE 4 END,
           CASE o.relation WHEN 'OFFERED' THEN 1 ELSE 2 END, coalesce(o.relation_end, w.update_time)
    FROM booking.waitlist w
    CROSS JOIN LATERAL (
        SELECT CASE WHEN w.state = 'CLAIMED' THEN 'OFFER_CLAIMED'
                    WHEN w.state = 'OFFERED' AND w.offer_expire_time > $2 THEN 'OFFERED'
                    ELSE 'OFFER_ENDED' END AS relation,
               CASE WHEN w.state = 'OFFERED' AND w.offer_expire_time > $2 THEN NULL
                    WHEN w.state IN ('OFFERED', 'EXPIRED') THEN w.offer_expire_time
                    ELSE w.update_time END AS relation_end
    ) o
    WHERE w.guest_id = {user} AND w.offer_time IS NOT NULL
), mine AS (
    SELECT DISTINCT ON (event_id) event_id, relation, relation_end, offer_expire_time,
           sum(steps) OVER (PARTITION BY event_id) AS steps, max(changed) OVER (PARTITION BY event_id) AS changed
    FROM rel ORDER BY event_id, rank, relation_end DESC NULLS LAST
)"""


# Listed: events that ended after ``$3``; cancelled events and ended relations (a cancelled booking, an ended
# offer) stay until ``$3`` past their end, so subscribed calendars see STATUS:CANCELLED and drop them.
_CALENDAR_LISTED = """
WHERE e.end_time > $3
  AND (e.state <> 'CANCELLED' OR e.cancel_time > $3)
  AND (m.relation_end IS NULL OR m.relation_end > $3)
ORDER BY e.start_time, e.id
LIMIT $4
"""

# The feed's rows: $1 the reader, $2 now, $3 the oldest end kept, $4 at most this many. Reads booking.bookings
# and booking.waitlist (reads across schemas).
CALENDAR_EVENTS = f"""
WITH {_calendar_mine("$1")}
SELECT {_COLUMNS}, m.relation, m.relation_end, m.offer_expire_time AS relation_offer_expire_time, m.steps,
       m.changed
{_FROM} JOIN mine m ON m.event_id = e.id
{_CALENDAR_LISTED}
"""

# The feed's validator, from the calendar token ($1) in one statement: the owner and a digest of exactly what
# the feed would list — per row every value rendered that can change (event version and update time, host name,
# relation, its end, the offer deadline, steps, the relation's last change) — without the rows' other columns or
# any rendering. Same parameters otherwise; no row when no calendar has this token.
CALENDAR_VALIDATOR = f"""
WITH tok AS (SELECT user_id FROM event.calendar_tokens WHERE token_hash = $1),
{_calendar_mine("(SELECT user_id FROM tok)")}
SELECT tok.user_id, (
    SELECT count(*) || ':' || coalesce(md5(string_agg(k, ',' ORDER BY k)), '') FROM (
        SELECT concat_ws('|', e.id, e.version, e.update_time, u.display_name, m.relation, m.relation_end,
                         m.offer_expire_time, m.steps, m.changed) AS k
        FROM event.events e JOIN account.users u ON u.id = e.host_id JOIN mine m ON m.event_id = e.id
        {_CALENDAR_LISTED}
    ) listed
) AS digest
FROM tok
"""


@dataclass(frozen=True, slots=True)
class CalendarRow:
    event: Event
    relation: str  # HOST, BOOKED, BOOKING_CANCELLED, OFFERED, OFFER_ENDED (OFFER_CLAIMED never shows)
    relation_end: datetime | None
    offer_expire_time: datetime | None
    steps: int
    changed: datetime | None


@dataclass(frozen=True, slots=True)
class CalendarValidator:
    user_id: str
    digest: str


async def set_calendar_token(conn: Conn, user_id: str, token_hash: bytes, now: datetime) -> None:
    await conn.execute(SET_CALENDAR_TOKEN, user_id, token_hash, now)


async def calendar_validator(
    conn: Conn | Pool, token_hash: bytes, now: datetime, since: datetime, limit: int
) -> CalendarValidator | None:
    row = await conn.fetchrow(CALENDAR_VALIDATOR, token_hash, now, since, limit)
    return CalendarValidator(row["user_id"], row["digest"]) if row else None


async def calendar_events(
    conn: Conn | Pool, user_id: str, now: datetime, since: datetime, limit: int
) -> list[CalendarRow]:
    rows = await conn.fetch(CALENDAR_EVENTS, user_id, now, since, limit)
    return [
        CalendarRow(
            to_event(r), r["relation"], r["relation_end"], r["relation_offer_expire_time"], r["steps"], r["changed"]
        )
        for r in rows
    ]
