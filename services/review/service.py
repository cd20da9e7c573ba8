"""ReviewService use cases: one method per RPC, each one transaction (reads: one connection).

Reviews are blind: a new review is PENDING_REVEAL (its author alone sees it, no rating counts it) until the
other person of its pair has reviewed the author too (then both are revealed in the second writer's
transaction) or the review window closes (the worker reveals it, :mod:`services.review.reveals`). A pending
review can be edited or withdrawn; a revealed one is frozen. Aggregates change only when reviews are revealed,
in the reveal's transaction, last: their rows are what concurrent reveals of one subject wait for.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeAlias
from uuid import UUID

from services.account import users
from services.booking import eligibility as bookings
from services.common import db, errors, names
from services.common.cache import Cache, NullCache
from services.common.clock import Clock
from services.common.dbtypes import Conn, Pool
from services.common.idempotency import RequestKey
from services.common.identity import User
from services.common.paging import Page, keyset
from services.common.replica import ReadPool
from services.common.uow import Handlers, uow
from services.common.vocabulary import Rating, Reliability, Visibility
from services.review import cache as review_cache
from services.review import domain, reveals
from services.review import notifications as review_notifications
from services.review import repository as reviews
from services.review.domain import Draft, Edit, Review, ReviewableEvent, Role, SubjectType


@dataclass(frozen=True, slots=True)
class CreateReview:
    user: User
    draft: Draft
    request: RequestKey | None
    trace_id: str = ""


@dataclass(frozen=True, slots=True)
class UpdateReview:
    user: User
    review_id: UUID
    edit: Edit
    etag: str
    trace_id: str = ""


@dataclass(frozen=True, slots=True)
class DeleteReview:
    user: User
    review_id: UUID
    etag: str
    trace_id: str = ""


@dataclass(frozen=True, slots=True)
class ListReviews:
    user: User | None
    event_id: UUID | None
    subject_user_id: str | None
    subject_type: SubjectType | None
    page_size: int
    page_token: str


ReviewPage: TypeAlias = Page[Review]


@dataclass(frozen=True, slots=True)
class UserRating:
    user_id: str
    as_host: Rating
    as_guest: Rating
    guest_reliability: Reliability = field(default_factory=Reliability)


@dataclass(frozen=True, slots=True)
class HostProfile:
    user_id: str
    display_name: str
    host_rating: Rating
    held_event_count: int


@dataclass(frozen=True, slots=True)
class HeldEvent:
    event_id: UUID
    title: str
    film_title: str
    start_time: datetime
    rating: Rating


HeldEventPage: TypeAlias = Page[HeldEvent]


@dataclass(frozen=True, slots=True)
class ListHeldEvents:
    host_id: str
    page_size: int
    page_token: str


def _user_not_found(user_id: str) -> errors.NotFound:
    return errors.user_not_found(names.user(user_id))


class ReviewService:
    """Writes run in a unit of work (:mod:`services.common.uow`); a reveal emits ``ReviewRevealed`` (a
    ``ReviewPosted``): in the transaction the subject's mail, after COMMIT this domain's cache
    (:func:`review_cache.handlers`) and the listening ones (``subscribers``, wired by the app: the event rows show
    the host's rating) drop what it made stale.

    ``reads`` (default: the primary) serves what may lag (:mod:`services.common.replica`): ratings, host profiles
    and anonymous ``ListReviews``, never a cache fill (see :meth:`Cache.get_or_load`) nor a signed-in caller's list
    (their own pending reviews are in it)."""

    def __init__(
        self,
        pool: Pool,
        clock: Clock,
        cache: Cache | None = None,
        *,
        cache_ttl: float = 60.0,
        subscribers: Handlers | None = None,
        review_window: timedelta = domain.DEFAULT_REVIEW_WINDOW,
        public_base_url: str = "http://localhost:8080",
        reads: ReadPool | None = None,
    ) -> None:
        self._pool = pool
        self._reads = reads or ReadPool(pool)
        self._clock = clock
        self._cache: Cache = cache or NullCache()
        self._ttl = cache_ttl
        self._window = review_window
        self._dispatcher = dispatcher(self._cache, public_base_url, subscribers)

    # ----------------------------------------------------------------- helpers

    async def _facts(
        self, conn: Conn, event_id: UUID, caller_id: str | None, subject_id: str | None
    ) -> ReviewableEvent:
        row = await reviews.event_facts(conn, event_id, caller_id, subject_id)
        if row is None:
            raise errors.event_not_found(names.event(event_id))
        # Only a private event's visibility can depend on a booking, and only for a non-participant.
        booked = (
            row.visibility is Visibility.PRIVATE
            and caller_id is not None
            and caller_id != row.host_id
            and row.caller_role is None
            and await bookings.has_confirmed_booking(conn, event_id, caller_id)
        )
        return reviews.to_facts(event_id, row, caller_has_booking=booked)

    async def _load(self, conn: Conn, review_id: UUID, *, for_update: bool = False) -> Review:
        review = await reviews.get(conn, review_id, for_update=for_update)
        if review is None:
            raise errors.review_not_found(names.review(review_id))
        return review

    async def _ensure_may_see(self, conn: Conn, review: Review, caller_id: str) -> None:
        """A pending review, or a review at a private event the caller may not see, does not exist for anyone but
        its author (as an unknown id)."""
        if review.author_id == caller_id:
            return
        if review.reveal_time is None:
            raise errors.review_not_found(names.review(review.id))
        try:
            domain.ensure_visible(await self._facts(conn, review.event_id, caller_id, None), caller_id)
        except errors.NotFound:
            raise errors.review_not_found(names.review(review.id)) from None

    # ----------------------------------------------------------------- writes

    async def create(self, cmd: CreateReview) -> Review:
        now = self._clock.now()
        draft = domain.validate_draft(cmd.draft, cmd.user.id)
        async with uow(self._pool, self._dispatcher, request=cmd.request, trace_id=cmd.trace_id) as tx:
            conn = tx.conn
            if tx.replay is not None:
                return await self._load(conn, domain.parse_review_name(tx.replay))
            facts = await self._facts(conn, draft.event_id, cmd.user.id, draft.subject_user_id)
            subject = domain.resolve_subject(draft, facts, cmd.user.id)
            due = domain.ensure_window_open(facts, self._window, now)
            await users.remember(tx, cmd.user)
            if subject is not None:  # a person review: the pair's two writers take turns (see LOCK_PAIR)
                guest = cmd.user.id if draft.subject_type is SubjectType.HOST else subject
                await reviews.lock_pair(conn, draft.event_id, guest)
            review = await reviews.insert(
                conn,
                reviews.NewReview(
                    id=uuid.uuid4(),
                    event_id=draft.event_id,
                    author_id=cmd.user.id,
                    subject_type=draft.subject_type,
                    subject_user_id=subject,
                    rating=draft.rating,
                    text=draft.text,
                    create_time=now,
                    reveal_due=due,
                ),
            )
            if review is None:
                existing = await reviews.find(conn, cmd.user.id, draft.event_id, draft.subject_type, subject)
                raise domain.already_reviewed(existing)
            tx.record(review.name)
            pair = domain.counterpart(review, facts.host_id)
            if pair is not None:
                other = await reviews.find_pending(conn, pair[0], review.event_id, pair[1], pair[2])
                if other is not None:  # both have now reviewed each other: reveal the two at once
                    revealed = await reveals.reveal(tx, [review.id, other.id], now)
                    review = next(r for r in revealed if r.id == review.id)
        return review

    async def update(self, cmd: UpdateReview) -> Review:
        now = self._clock.now()
        edit = domain.validate_edit(cmd.edit)
        async with uow(self._pool, self._dispatcher, trace_id=cmd.trace_id) as tx:
            conn = tx.conn
            review = await self._load(conn, cmd.review_id, for_update=True)
            await self._ensure_may_see(conn, review, cmd.user.id)
            domain.ensure_author(review, cmd.user.id)
            domain.ensure_editable(review, now)
            domain.ensure_etag(review, cmd.etag)
            rating, text = domain.apply_edit(review, edit)
            if (rating, text) == (review.rating, review.text):
                return review
            await users.remember(tx, cmd.user)
            # Pending: seen by its author only and counted nowhere, so nothing else changes.
            return await reviews.update(conn, review.id, rating, text, now)

    async def delete(self, cmd: DeleteReview) -> None:
        """Withdraw a pending review (AIP-135: the review is gone; the author may write a new one)."""
        now = self._clock.now()
        async with uow(self._pool, self._dispatcher, trace_id=cmd.trace_id) as tx:
            conn = tx.conn
            review = await self._load(conn, cmd.review_id, for_update=True)
            await self._ensure_may_see(conn, review, cmd.user.id)
            domain.ensure_author(review, cmd.user.id)
            domain.ensure_editable(review, now)
            domain.ensure_etag(review, cmd.etag)
            await reviews.delete(conn, review.id)

    # ----------------------------------------------------------------- reads

    async def list(self, q: ListReviews) -> ReviewPage:
        filters = {"event": q.event_id, "subject": q.subject_user_id, "type": q.subject_type and q.subject_type.value}
        ks = keyset(q.page_size, q.page_token, filters)
        viewer = q.user.id if q.user else None
        query = reviews.ReviewQuery(
            event_id=q.event_id,
            subject_user_id=q.subject_user_id,
            subject_type=q.subject_type,
            after=ks.after,
            limit=ks.fetch,
            viewer_id=viewer,
        )

        async def read(conn: Conn) -> list[Review]:
            if q.event_id is not None:
                domain.ensure_visible(await self._facts(conn, q.event_id, viewer, None), viewer)
            return await reviews.list_reviews(conn, query)

        if viewer is None:  # revealed reviews only: may lag (an event the replica lacks yet: the primary says)
            rows = await self._reads.fetch(read, recheck=errors.NotFound)
        else:  # the caller's own pending reviews are in it, and their bookings decide what they see: the primary
            async with db.connection(self._pool) as conn:
                rows = await read(conn)
        return ks.page(rows, lambda r: (r.create_time, r.id))

    async def user_rating(self, user_id: str) -> UserRating:
        async def ratings_of(conn: Conn) -> dict[str, Rating]:
            return {role.value: r for role, r in (await reviews.user_ratings(conn, user_id)).items()}

        async def load() -> dict[str, Rating]:
            async with db.connection(self._pool) as conn:
                return await ratings_of(conn)

        ratings = await self._cache.get_or_load(
            review_cache.rating_key(user_id),
            load,
            review_cache.RATINGS_CODEC,
            ttl=self._ttl,
            bypass=lambda: self._reads.fetch(ratings_of),
        )
        # not cached: marks change outside the review domain
        reliability = await self._reads.fetch(lambda conn: bookings.reliability(conn, user_id))
        as_host, as_guest = ratings.get(Role.HOST.value, Rating()), ratings.get(Role.GUEST.value, Rating())
        return UserRating(user_id, as_host, as_guest, reliability)

    async def host_profile(self, user_id: str) -> HostProfile:
        async def load() -> reviews.HostProfileRow:
            async with db.connection(self._pool) as conn:
                row = await reviews.host_profile(conn, user_id)
            if row is None:
                raise _user_not_found(user_id)  # not cached: the user may appear any moment
            return row

        async def load_lagging() -> reviews.HostProfileRow:
            row = await self._reads.fetch(lambda conn: reviews.host_profile(conn, user_id))
            return row if row is not None else await load()  # perhaps not replayed yet: ask the primary

        row = await self._cache.get_or_load(
            review_cache.profile_key(user_id), load, review_cache.PROFILE_CODEC, ttl=self._ttl, bypass=load_lagging
        )
        return HostProfile(user_id, row.display_name, row.rating, row.held_event_count)

    async def held_events(self, q: ListHeldEvents) -> HeldEventPage:
        host_id = q.host_id
        ks = keyset(q.page_size, q.page_token, {"host": host_id})

        async def load() -> list[reviews.HeldEventRow]:
            async with db.connection(self._pool) as conn:
                if not await reviews.is_public_host(conn, host_id):
                    raise _user_not_found(host_id)
                return await reviews.held_events(conn, host_id, ks.after, ks.fetch)

        if ks.after is None:  # first pages are the hot ones; later pages go to Postgres
            rows = await self._cache.get_or_load(
                review_cache.held_page_key(host_id, ks.limit),
                load,
                review_cache.HELD_PAGE_CODEC,
                ttl=self._ttl,
                scope=review_cache.profile_key(host_id),
            )
        else:
            rows = await load()
        page = ks.page(rows, lambda r: (r.start_time, r.event_id))
        items = [HeldEvent(r.event_id, r.title, r.film_title, r.start_time, r.rating) for r in page.items]
        return Page(items, page.next_page_token)


def dispatcher(cache: Cache, public_base_url: str, subscribers: Handlers | None = None) -> Handlers:
    """What a review write (or reveal) causes: the subject's mail in the transaction, this domain's cache and the
    ``subscribers`` after COMMIT. The worker's :class:`reveals.RevealJob` uses the same table."""
    own = review_notifications.handlers(public_base_url).merged(review_cache.handlers(cache))
    return own.merged(*([subscribers] if subscribers else []))
