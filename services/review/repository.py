"""SQL over review.reviews, review.user_ratings and review.event_ratings; the only writer of those tables.

It also reads what review eligibility depends on: the event (event.events) and who took part in it
(event.participants, written once by EventService.CompleteEvent).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from services.common.dbtypes import Conn
from services.common.vocabulary import EventState as State
from services.common.vocabulary import Rating, Visibility
from services.review.domain import RatingChange, Review, ReviewableEvent, Role, SubjectType

# --------------------------------------------------------------------------- eligibility facts

EVENT_FACTS = """
SELECT e.host_id, e.state, e.visibility, e.complete_time,
       (SELECT p.role FROM event.participants p WHERE p.event_id = e.id AND p.user_id = $2) AS caller_role,
       (SELECT p.role FROM event.participants p WHERE p.event_id = e.id AND p.user_id = $3) AS subject_role
FROM event.events e
WHERE e.id = $1
"""


@dataclass(frozen=True, slots=True)
class EventRow:
    host_id: str
    state: State
    visibility: Visibility
    caller_role: Role | None
    subject_role: Role | None
    complete_time: datetime | None = None


async def event_facts(conn: Conn, event_id: UUID, caller_id: str | None, subject_id: str | None) -> EventRow | None:
    """The event and the participant roles of the caller and of a named subject (``None``: not a participant)."""
    r = await conn.fetchrow(EVENT_FACTS, event_id, caller_id, subject_id)
    if r is None:
        return None
    return EventRow(
        host_id=r["host_id"],
        state=State(r["state"]),
        visibility=Visibility(r["visibility"]),
        caller_role=Role(r["caller_role"]) if r["caller_role"] else None,
        subject_role=Role(r["subject_role"]) if r["subject_role"] else None,
        complete_time=r["complete_time"],
    )


def to_facts(event_id: UUID, row: EventRow, *, caller_has_booking: bool) -> ReviewableEvent:
    return ReviewableEvent(
        event_id=event_id,
        host_id=row.host_id,
        state=row.state,
        visibility=row.visibility,
        caller_role=row.caller_role,
        caller_has_booking=caller_has_booking,
        subject_role=row.subject_role,
        complete_time=row.complete_time,
    )


# --------------------------------------------------------------------------- reviews

_COLUMNS = """
    r.id, r.event_id, r.subject_type, r.subject_user_id, r.author_id, u.display_name AS author_display_name,
    r.rating, r.text, r.version, r.create_time, r.update_time, r.reveal_due, r.reveal_time
"""

GET = f"SELECT {_COLUMNS} FROM review.reviews r JOIN account.users u ON u.id = r.author_id WHERE r.id = $1"
GET_FOR_UPDATE = GET + " FOR UPDATE OF r"

# ON CONFLICT without a target covers the unique index reviews_one_per_subject: a concurrent duplicate waits
# for the first insert's transaction, and if that commits this one inserts nothing (→ ALREADY_REVIEWED).
INSERT = f"""
WITH r AS (
    INSERT INTO review.reviews (
        id, event_id, author_id, subject_type, subject_user_id, rating, text, create_time, update_time, reveal_due
    ) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9)
    ON CONFLICT DO NOTHING
    RETURNING *
)
SELECT {_COLUMNS} FROM r JOIN account.users u ON u.id = r.author_id
"""

FIND = """
SELECT id FROM review.reviews
WHERE author_id = $1 AND event_id = $2 AND subject_type = $3 AND coalesce(subject_user_id, '') = coalesce($4, '')
"""

UPDATE = f"""
WITH r AS (
    UPDATE review.reviews SET rating = $2, text = $3, version = version + 1, update_time = $4
    WHERE id = $1
    RETURNING *
)
SELECT {_COLUMNS} FROM r JOIN account.users u ON u.id = r.author_id
"""


def to_review(r: asyncpg.Record) -> Review:
    return Review(
        id=r["id"],
        event_id=r["event_id"],
        subject_type=SubjectType(r["subject_type"]),
        subject_user_id=r["subject_user_id"],
        author_id=r["author_id"],
        author_display_name=r["author_display_name"],
        rating=r["rating"],
        text=r["text"],
        version=r["version"],
        create_time=r["create_time"],
        update_time=r["update_time"],
        reveal_due=r["reveal_due"],
        reveal_time=r["reveal_time"],
    )


async def get(conn: Conn, review_id: UUID, *, for_update: bool = False) -> Review | None:
    row = await conn.fetchrow(GET_FOR_UPDATE if for_update else GET, review_id)
    return to_review(row) if row else None


@dataclass(frozen=True, slots=True)
class NewReview:
    id: UUID
    event_id: UUID
    author_id: str
    subject_type: SubjectType
    subject_user_id: str | None
    rating: int
    text: str
    create_time: datetime
    reveal_due: datetime


async def insert(conn: Conn, new: NewReview) -> Review | None:
    """Insert ``new``; ``None`` when the author already reviewed this subject in this event."""
    row = await conn.fetchrow(
        INSERT,
        new.id,
        new.event_id,
        new.author_id,
        new.subject_type.value,
        new.subject_user_id,
        new.rating,
        new.text,
        new.create_time,
        new.reveal_due,
    )
    return to_review(row) if row else None


async def find(
    conn: Conn, author_id: str, event_id: UUID, subject_type: SubjectType, subject_user_id: str | None
) -> UUID | None:
    found: UUID | None = await conn.fetchval(FIND, author_id, event_id, subject_type.value, subject_user_id)
    return found


async def update(conn: Conn, review_id: UUID, rating: int, text: str, now: datetime) -> Review:
    row = await conn.fetchrow(UPDATE, review_id, rating, text, now)
    assert row is not None, "the review is locked by this transaction"
    return to_review(row)


DELETE = "DELETE FROM review.reviews WHERE id = $1 AND reveal_time IS NULL"


async def delete(conn: Conn, review_id: UUID) -> None:
    """Withdraw a pending review (the caller holds its row lock and checked it is pending)."""
    status = await conn.execute(DELETE, review_id)
    assert status == "DELETE 1", "the pending review is locked by this transaction"


# --------------------------------------------------------------------------- reveals

# The two reviews of one (event, host, guest) pair are written by two people, maybe at the same moment: each
# writer takes this transaction-scoped lock first, so the second one sees the first's committed review and
# reveals both (without it, two concurrent writers would each miss the other and wait for the window).
LOCK_PAIR = "SELECT pg_advisory_xact_lock(hashtextextended('review-pair/' || $1::text || '/' || $2::text, 0))"


async def lock_pair(conn: Conn, event_id: UUID, guest_id: str) -> None:
    await conn.execute(LOCK_PAIR, str(event_id), guest_id)


FIND_PENDING = f"""
SELECT {_COLUMNS} FROM review.reviews r JOIN account.users u ON u.id = r.author_id
WHERE r.author_id = $1 AND r.event_id = $2 AND r.subject_type = $3 AND r.subject_user_id = $4
  AND r.reveal_time IS NULL
FOR UPDATE OF r
"""


async def find_pending(
    conn: Conn, author_id: str, event_id: UUID, subject_type: SubjectType, subject_user_id: str
) -> Review | None:
    """The pending review ``author_id`` wrote about ``subject_user_id`` at the event, locked."""
    row = await conn.fetchrow(FIND_PENDING, author_id, event_id, subject_type.value, subject_user_id)
    return to_review(row) if row else None


REVEAL = f"""
WITH r AS (
    UPDATE review.reviews SET reveal_time = $2 WHERE id = ANY($1::uuid[]) AND reveal_time IS NULL RETURNING *
)
SELECT {_COLUMNS} FROM r JOIN account.users u ON u.id = r.author_id
"""


async def reveal(conn: Conn, review_ids: list[UUID], now: datetime) -> list[Review]:
    """Reveal the pending reviews among ``review_ids``; returns those this statement revealed (a review already
    revealed by a concurrent transaction is not returned again: each review is revealed, and counted, once)."""
    return [to_review(r) for r in await conn.fetch(REVEAL, review_ids, now)]


# One event whose window has closed with reviews still pending, its pending rows locked; SKIP LOCKED: several
# workers (or a worker and a writer) never wait on each other or reveal the same event twice.
CLAIM_DUE_EVENT = """
SELECT event_id FROM review.reviews WHERE reveal_time IS NULL AND reveal_due <= $1
ORDER BY reveal_due LIMIT 1 FOR UPDATE SKIP LOCKED
"""
# SKIP LOCKED here too: two workers that claimed rows of the same event must not wait for each other's rows (each
# holding one, that would deadlock). Nothing pending at a window's end is half a pair (the second review of a pair
# reveals both), so reviews split between two concurrent reveals still appear within moments of each other.
PENDING_OF_EVENT = """
SELECT id FROM review.reviews WHERE event_id = $1 AND reveal_time IS NULL AND reveal_due <= $2
ORDER BY id FOR UPDATE SKIP LOCKED
"""


async def claim_due_event(conn: Conn, now: datetime) -> list[UUID]:
    """The pending reviews of one event whose window has closed, locked (``[]``: none due)."""
    event_id = await conn.fetchval(CLAIM_DUE_EVENT, now)
    if event_id is None:
        return []
    # The claimed row is already ours: SKIP LOCKED never skips it.
    return [r["id"] for r in await conn.fetch(PENDING_OF_EVENT, event_id, now)]


# --------------------------------------------------------------------------- aggregates

# A new review: add to the aggregate, creating it on first use. (Only for positive changes: the CHECKs apply to
# the proposed row before ON CONFLICT turns it into an update.)
ADD_TO_USER_RATING = """
INSERT INTO review.user_ratings AS ur (user_id, role, rating_sum, rating_count) VALUES ($1, $2, $3, $4)
ON CONFLICT (user_id, role) DO UPDATE
    SET rating_sum = ur.rating_sum + EXCLUDED.rating_sum, rating_count = ur.rating_count + EXCLUDED.rating_count
"""
ADD_TO_EVENT_RATING = """
INSERT INTO review.event_ratings AS er (event_id, rating_sum, rating_count) VALUES ($1, $2, $3)
ON CONFLICT (event_id) DO UPDATE
    SET rating_sum = er.rating_sum + EXCLUDED.rating_sum, rating_count = er.rating_count + EXCLUDED.rating_count
"""


async def apply_rating_change(conn: Conn, change: RatingChange) -> None:
    """Add a revealed review's ``change`` to its aggregate row. The row stays locked until the transaction ends:
    call this last in the transaction, so concurrent reveals of one subject queue only for each other's commit."""
    if change.is_noop:
        return
    assert change.rating_count > 0, "a revealed review never changes: aggregates only grow"
    if change.subject_type is SubjectType.EVENT:
        status = await conn.execute(ADD_TO_EVENT_RATING, change.event_id, change.rating_sum, change.rating_count)
    else:
        assert change.user_id is not None and change.role is not None
        status = await conn.execute(
            ADD_TO_USER_RATING, change.user_id, change.role.value, change.rating_sum, change.rating_count
        )
    if status.split()[-1] != "1":  # a counted review without its aggregate row: refuse rather than drift
        raise RuntimeError(f"rating aggregate missing for {change}")


USER_RATINGS = "SELECT role, rating_sum, rating_count FROM review.user_ratings WHERE user_id = $1"


async def user_ratings(conn: Conn, user_id: str) -> dict[Role, Rating]:
    rows = await conn.fetch(USER_RATINGS, user_id)
    return {Role(r["role"]): Rating.of(r["rating_sum"], r["rating_count"]) for r in rows}


# --------------------------------------------------------------------------- listing reviews


@dataclass(frozen=True, slots=True)
class ReviewQuery:
    """Exactly one of ``event_id`` and ``subject_user_id``; ``after`` is the keyset cursor (newest first)."""

    event_id: UUID | None
    subject_user_id: str | None
    subject_type: SubjectType | None
    after: tuple[datetime, UUID] | None
    limit: int
    # Listing by subject spans events: reviews written at a private event are shown only to its participants.
    # Pending reviews are shown to their author only.
    viewer_id: str | None = None


def build_list_sql(q: ReviewQuery) -> tuple[str, list[Any]]:
    """One keyset-paginated statement on reviews_by_event or reviews_by_subject."""
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    where: list[str] = []
    viewer = arg(q.viewer_id)
    where.append(f"(r.reveal_time IS NOT NULL OR r.author_id = {viewer}::text)")
    if q.event_id is not None:
        where.append(f"r.event_id = {arg(q.event_id)}")
    else:
        where.append(f"r.subject_user_id = {arg(q.subject_user_id)}")
        where.append(
            "EXISTS (SELECT 1 FROM event.events e WHERE e.id = r.event_id AND (e.visibility = 'PUBLIC' OR EXISTS "
            f"(SELECT 1 FROM event.participants p WHERE p.event_id = e.id AND p.user_id = {viewer}::text)))"
        )
    if q.subject_type is not None:
        where.append(f"r.subject_type = {arg(q.subject_type.value)}")
    if q.after is not None:
        where.append(f"(r.create_time, r.id) < ({arg(q.after[0])}, {arg(q.after[1])})")
    sql = (
        f"SELECT {_COLUMNS} FROM review.reviews r JOIN account.users u ON u.id = r.author_id "
        f"WHERE {' AND '.join(where)} ORDER BY r.create_time DESC, r.id DESC LIMIT {arg(q.limit)}"
    )
    return sql, args


async def list_reviews(conn: Conn, q: ReviewQuery) -> list[Review]:
    sql, args = build_list_sql(q)
    return [to_review(r) for r in await conn.fetch(sql, *args)]


# --------------------------------------------------------------------------- host profile

HOST_PROFILE = """
SELECT u.display_name, coalesce(hr.rating_sum, 0) AS rating_sum, coalesce(hr.rating_count, 0) AS rating_count,
       (SELECT count(*) FROM event.events e
        WHERE e.host_id = u.id AND e.visibility = 'PUBLIC' AND e.state = 'COMPLETED') AS held_event_count
FROM account.users u
LEFT JOIN review.user_ratings hr ON hr.user_id = u.id AND hr.role = 'HOST'
WHERE u.id = $1 AND EXISTS (SELECT 1 FROM event.events e WHERE e.host_id = u.id AND e.visibility = 'PUBLIC')
"""


@dataclass(frozen=True, slots=True)
class HostProfileRow:
    display_name: str
    rating: Rating
    held_event_count: int


async def host_profile(conn: Conn, user_id: str) -> HostProfileRow | None:
    r = await conn.fetchrow(HOST_PROFILE, user_id)
    if r is None:
        return None
    return HostProfileRow(r["display_name"], Rating.of(r["rating_sum"], r["rating_count"]), r["held_event_count"])


EVENT_SUMMARY = "SELECT host_id, title FROM event.events WHERE id = $1"


async def event_summary(conn: Conn, event_id: UUID) -> tuple[str, str]:
    """(host id, title) of an event that exists."""
    row = await conn.fetchrow(EVENT_SUMMARY, event_id)
    assert row is not None, "a review's event exists"
    return row["host_id"], row["title"]


IS_PUBLIC_HOST = "SELECT EXISTS (SELECT 1 FROM event.events WHERE host_id = $1 AND visibility = 'PUBLIC')"


async def is_public_host(conn: Conn, user_id: str) -> bool:
    """Whether ``user_id`` hosts or hosted a PUBLIC event (any state): only such users have a host profile."""
    return bool(await conn.fetchval(IS_PUBLIC_HOST, user_id))


_HELD_SELECT = """
SELECT e.id, e.title, e.film_title, e.start_time,
       coalesce(er.rating_sum, 0) AS rating_sum, coalesce(er.rating_count, 0) AS rating_count
FROM event.events e
LEFT JOIN review.event_ratings er ON er.event_id = e.id
WHERE e.host_id = $1 AND e.visibility = 'PUBLIC' AND e.state = 'COMPLETED'
"""
HELD_EVENTS_FIRST = _HELD_SELECT + " ORDER BY e.start_time DESC, e.id DESC LIMIT $2"
HELD_EVENTS_AFTER = _HELD_SELECT + " AND (e.start_time, e.id) < ($3, $4) ORDER BY e.start_time DESC, e.id DESC LIMIT $2"


@dataclass(frozen=True, slots=True)
class HeldEventRow:
    event_id: UUID
    title: str
    film_title: str
    start_time: datetime
    rating: Rating


async def held_events(conn: Conn, host_id: str, after: tuple[datetime, UUID] | None, limit: int) -> list[HeldEventRow]:
    """The host's public held events, most recent start first."""
    if after is None:
        rows = await conn.fetch(HELD_EVENTS_FIRST, host_id, limit)
    else:
        rows = await conn.fetch(HELD_EVENTS_AFTER, host_id, limit, after[0], after[1])
    return [
        HeldEventRow(
            event_id=r["id"],
            title=r["title"],
            film_title=r["film_title"],
            start_time=r["start_time"],
            rating=Rating.of(r["rating_sum"], r["rating_count"]),
        )
        for r in rows
    ]
