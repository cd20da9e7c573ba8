"""Review repository SQL against the real database: duplicate inserts, aggregate arithmetic, keyset order."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.review import domain
from services.review import repository as reviews
from services.review.domain import SubjectType

pytestmark = pytest.mark.asyncio(loop_scope="session")
T0 = datetime(2031, 3, 1, 20, 0, tzinfo=UTC)
WINDOW = timedelta(days=14)
LONG_AGO = datetime(2001, 3, 1, 20, 0, tzinfo=UTC)


async def _user(conn, name: str = "U") -> str:
    uid = f"it-{uuid.uuid4().hex[:10]}"
    await conn.execute("INSERT INTO account.users (id, display_name) VALUES ($1, $2)", uid, name)
    return uid


async def _event(conn, host: str, *, start: datetime = T0, state: str = "COMPLETED", visibility: str = "PUBLIC"):
    event_id = uuid.uuid4()
    await conn.execute(
        """
        INSERT INTO event.events (id, host_id, film_id, film_title, title, start_time, end_time, time_zone,
            place_name, place_address, place_city, capacity, visibility, state, invite_token, complete_time)
        VALUES ($1, $2, 'f', 'Film', 'Title', $3::timestamptz, $3::timestamptz + interval '2 hours', 'UTC',
            'p', 'a', 'c', 5, $4, $5, '0123456789abcdef',
            CASE WHEN $5 = 'COMPLETED' THEN $3::timestamptz + interval '3 hours' END)
        """,
        event_id,
        host,
        start,
        visibility,
        state,
    )
    return event_id


def _new(event_id, author, subject_type=SubjectType.EVENT, subject=None, rating=4, at=T0) -> reviews.NewReview:
    return reviews.NewReview(uuid.uuid4(), event_id, author, subject_type, subject, rating, "", at, at + WINDOW)


async def test_a_duplicate_insert_returns_nothing_and_find_names_the_first(db_pool: asyncpg.Pool):
    async with db_pool.acquire() as conn, conn.transaction():
        host, guest = await _user(conn), await _user(conn, "Gus")
        event_id = await _event(conn, host)
        first = await reviews.insert(conn, _new(event_id, guest, SubjectType.HOST, host))
        assert first is not None and first.author_display_name == "Gus" and first.version == 1
        assert await reviews.insert(conn, _new(event_id, guest, SubjectType.HOST, host, rating=1)) is None
        assert await reviews.find(conn, guest, event_id, SubjectType.HOST, host) == first.id
        # EVENT reviews have no subject user; the unique index still holds one per author.
        assert await reviews.insert(conn, _new(event_id, guest)) is not None
        assert await reviews.insert(conn, _new(event_id, guest)) is None
        assert await reviews.find(conn, guest, event_id, SubjectType.EVENT, None) is not None


async def test_a_review_is_revealed_once_and_aggregates_add_revealed_reviews(db_pool: asyncpg.Pool):
    async with db_pool.acquire() as conn, conn.transaction():
        host, a, b = await _user(conn), await _user(conn), await _user(conn)
        event_id = await _event(conn, host)
        ra = await reviews.insert(conn, _new(event_id, a, SubjectType.HOST, host, rating=5))
        rb = await reviews.insert(conn, _new(event_id, b, SubjectType.HOST, host, rating=2))
        assert ra is not None and rb is not None and ra.reveal_time is None
        revealed = await reviews.reveal(conn, [ra.id, rb.id], T0)
        assert {r.id for r in revealed} == {ra.id, rb.id} and all(r.reveal_time == T0 for r in revealed)
        assert await reviews.reveal(conn, [ra.id], T0 + WINDOW) == []  # the second reveal finds nothing to do
        for r in revealed:
            await reviews.apply_rating_change(conn, domain.rating_change_for_new(r))
        assert await reviews.user_ratings(conn, host) == {domain.Role.HOST: domain.Rating(3.5, 2)}


async def test_the_due_claim_takes_one_events_pending_reviews_and_skips_a_locked_one(db_pool: asyncpg.Pool):
    async with db_pool.acquire() as setup:
        host, a = await _user(setup), await _user(setup)
        first, second = await _event(setup, host), await _event(setup, host)
        for event_id in (first, second):
            assert await reviews.insert(setup, _new(event_id, a, at=LONG_AGO)) is not None
    # Due long before any review another test of the session leaves pending (those are due from today on), so the
    # claims below can only find this test's two events.
    now = LONG_AGO + WINDOW
    async with db_pool.acquire() as c1, db_pool.acquire() as c2, c1.transaction(), c2.transaction():
        one = await reviews.claim_due_event(c1, now)
        two = await reviews.claim_due_event(c2, now)
        assert len(one) == 1 and len(two) == 1 and one != two  # SKIP LOCKED: no event claimed twice
        assert await reviews.claim_due_event(c1, now - timedelta(seconds=1)) == []  # nothing else due before


async def test_keyset_pages_are_newest_first_even_with_equal_times(db_pool: asyncpg.Pool):
    async with db_pool.acquire() as conn, conn.transaction():
        host = await _user(conn)
        event_id = await _event(conn, host)
        authors = [await _user(conn) for _ in range(9)]
        times = [T0, T0, T0, T0 + timedelta(seconds=1), T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)] * 2
        for author, at in zip(authors, times, strict=False):
            new = await reviews.insert(conn, _new(event_id, author, at=at))
            assert new is not None
            await reviews.reveal(conn, [new.id], at)  # pending reviews are listed to their author only
        seen = []
        after = None
        while True:
            q = reviews.ReviewQuery(event_id=event_id, subject_user_id=None, subject_type=None, after=after, limit=2)
            page = await reviews.list_reviews(conn, q)
            seen += page
            if len(page) < 2:
                break
            after = (page[-1].create_time, page[-1].id)
        keys = [(r.create_time, r.id) for r in seen]
        assert len(keys) == 9 and len(set(keys)) == 9
        assert keys == sorted(keys, reverse=True)


async def test_held_events_are_public_completed_and_most_recent_first(db_pool: asyncpg.Pool):
    async with db_pool.acquire() as conn, conn.transaction():
        host = await _user(conn)
        old = await _event(conn, host, start=T0)
        new = await _event(conn, host, start=T0 + timedelta(days=2))
        await _event(conn, host, start=T0 + timedelta(days=1), visibility="PRIVATE")
        await _event(conn, host, start=T0 + timedelta(days=3), state="SCHEDULED")
        await conn.execute(
            "INSERT INTO review.event_ratings (event_id, rating_sum, rating_count) VALUES ($1, 7, 2)", old
        )
        rows = await reviews.held_events(conn, host, None, 10)
        assert [(r.event_id, r.rating) for r in rows] == [(new, domain.Rating()), (old, domain.Rating(3.5, 2))]
        assert [r.event_id for r in await reviews.held_events(conn, host, (rows[0].start_time, new), 10)] == [old]
        profile = await reviews.host_profile(conn, host)
        assert profile is not None and profile.held_event_count == 2
        assert await reviews.host_profile(conn, "it-nobody") is None
