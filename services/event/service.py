"""EventService use cases: one method per RPC, each one transaction.

Commands come in as plain dataclasses (mappers build them from protos); results go out as domain objects with
the caller's :class:`Access`, so the mapper knows what to withhold.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from uuid import UUID

import asyncpg

from services.account import repository as users
from services.booking import repository as bookings
from services.common import context, db, idempotency
from services.common.cache import Cache, NullCache
from services.common.clock import Clock
from services.common.dbtypes import Conn
from services.common.errors import InvalidArgument, NotFound, ResourceExhausted
from services.common.idempotency import RequestKey
from services.common.identity import User
from services.common.paging import PageKey, clamp_page_size, decode_page_token, encode_page_token, filter_fingerprint
from services.event import domain, notifications
from services.event import repository as events
from services.event.cache import (
    EVENT_CODEC,
    LIST_CODEC,
    LIST_SCOPE,
    CachedPage,
    event_key,
    invalidate_events,
    invalidate_host_events,
    list_key,
)
from services.event.domain import Access, Event, EventDetails
from services.notification import outbox
from services.review.cache import invalidate_host_profile

MAX_INVITEES = 50
NOTE_MAX = 1000
DEFAULT_INVITATIONS_PER_DAY = 200


@dataclass(frozen=True, slots=True)
class EventView:
    event: Event
    access: Access


@dataclass(frozen=True, slots=True)
class CreateEvent:
    user: User
    details: EventDetails
    request: RequestKey | None


@dataclass(frozen=True, slots=True)
class UpdateEvent:
    user: User
    event_id: UUID
    patch: EventDetails
    paths: frozenset[str]
    etag: str


@dataclass(frozen=True, slots=True)
class CancelEvent:
    user: User
    event_id: UUID
    etag: str
    reason: str
    request: RequestKey | None


@dataclass(frozen=True, slots=True)
class ListEvents:
    user: User | None
    page_size: int
    page_token: str
    film_id: str | None
    city: str | None
    start_from: datetime | None
    start_to: datetime | None
    has_free_seats: bool
    host_id: str | None
    text: str | None


@dataclass(frozen=True, slots=True)
class EventPage:
    items: list[EventView]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class Guest:
    user_id: str
    display_name: str
    seats: int
    booking_id: UUID
    book_time: datetime
    rating_average: float
    rating_count: int


@dataclass(frozen=True, slots=True)
class GuestPage:
    items: list[Guest]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class SendInvitations:
    user: User
    event_id: UUID
    user_ids: Sequence[str]
    note: str
    request: RequestKey | None


@dataclass(frozen=True, slots=True)
class Invitations:
    user_ids: list[str]
    share_link: str


def _after(keys: tuple[PageKey, ...] | None) -> tuple[datetime, UUID] | None:
    if keys is None:
        return None
    if len(keys) < 2 or not isinstance(keys[0], datetime) or not isinstance(keys[1], UUID):
        raise InvalidArgument.field("page_token", "is malformed", "INVALID_PAGE_TOKEN")
    return keys[0], keys[1]


class EventService:
    """Reads go through ``cache`` (cache-aside, see :mod:`services.event.cache`); every write invalidates what it
    changed once its transaction committed. Access is decided per request, never cached."""

    def __init__(
        self,
        pool: asyncpg.Pool[asyncpg.Record],
        clock: Clock,
        public_base_url: str,
        cache: Cache | None = None,
        *,
        cache_ttl: float = 60.0,
        list_ttl: float = 15.0,
        invitations_per_day: int = DEFAULT_INVITATIONS_PER_DAY,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._base_url = public_base_url.rstrip("/")
        self._cache: Cache = cache or NullCache()
        self._ttl = cache_ttl
        self._list_ttl = list_ttl
        self._invitations_per_day = invitations_per_day

    # ----------------------------------------------------------------- links

    def share_link(self, event: Event, *, with_invite: bool) -> str:
        link = f"{self._base_url}/events/{event.id}"
        if with_invite and event.details.visibility is domain.Visibility.PRIVATE:
            link += f"?invite={event.invite_token}"
        return link

    # ----------------------------------------------------------------- helpers

    async def _load(self, conn: Conn, event_id: UUID, *, for_update: bool = False) -> Event:
        event = await events.get(conn, event_id, for_update=for_update)
        if event is None:
            raise NotFound("EVENT_NOT_FOUND", f"events/{event_id} does not exist")
        return event

    async def _access(self, conn: Conn, event: Event, user: User | None, invite_token: str = "") -> Access:
        is_guest = user is not None and await bookings.has_confirmed_booking(conn, event.id, user.id)
        return domain.access_for(event, user, is_guest=is_guest, invite_token=invite_token)

    async def _host_view(self, conn: Conn, event_id: UUID) -> EventView:
        event = await self._load(conn, event_id)
        return EventView(event, Access(is_host=True, is_guest=False, has_invite=True))

    # ----------------------------------------------------------------- create / read

    async def create(self, cmd: CreateEvent) -> EventView:
        now = self._clock.now()
        details = domain.normalized(cmd.details)
        domain.validate_details(details, now)
        async with db.transaction(self._pool) as conn:
            replay = await idempotency.claim(conn, cmd.request)
            if replay is not None:
                return await self._host_view(conn, domain.parse_event_name(replay))
            await users.remember(conn, cmd.user)
            event_id = uuid.uuid4()
            await events.insert(conn, event_id, cmd.user.id, details, domain.new_invite_token(), now)
            await outbox.schedule_reminders(conn, event_id, cmd.user.id, details.start_time, now)
            await idempotency.record(conn, cmd.request, domain.event_name(event_id))
            view = await self._host_view(conn, event_id)
        if details.visibility is domain.Visibility.PUBLIC:
            await self._cache.invalidate(LIST_SCOPE)  # it may belong on a cached first page
        return view

    async def _load_row(self, event_id: UUID) -> Event:
        async with db.connection(self._pool) as conn:
            return await self._load(conn, event_id)

    async def get(self, user: User | None, event_id: UUID, invite_token: str) -> EventView:
        event = await self._cache.get_or_load(
            event_key(event_id), lambda: self._load_row(event_id), EVENT_CODEC, ttl=self._ttl
        )
        is_guest = False
        if user is not None and user.id != event.host_id:  # the host can't book their own event
            async with db.connection(self._pool) as conn:
                is_guest = await bookings.has_confirmed_booking(conn, event.id, user.id)
        access = domain.access_for(event, user, is_guest=is_guest, invite_token=invite_token)
        domain.ensure_visible(event, access)
        return EventView(event, access)

    async def list(self, q: ListEvents) -> EventPage:
        limit = clamp_page_size(q.page_size)
        own = q.user is not None and q.host_id == q.user.id
        fingerprint = filter_fingerprint(
            {
                "film": q.film_id,
                "city": q.city and q.city.lower(),
                "from": q.start_from,
                "to": q.start_to,
                "free": q.has_free_seats,
                "host": q.host_id,
                "text": q.text,
                "own": own,
            }
        )
        keys = decode_page_token(q.page_token, fingerprint)
        after = _after(keys)
        start_from = q.start_from
        if keys is not None and len(keys) == 3 and isinstance(keys[2], datetime):
            start_from = keys[2]
        elif start_from is None and not own:
            # Upcoming events by default; the bound is pinned in the page token so later pages agree.
            start_from = self._clock.now()
        query = events.ListQuery(
            start_from=start_from,
            start_to=q.start_to,
            film_id=q.film_id,
            city=q.city,
            has_free_seats=q.has_free_seats,
            host_id=q.host_id,
            own=own,
            text=q.text,
            viewer_id=q.user.id if q.user else None,
            after=after,
            limit=limit + 1,
        )
        if keys is None and not own:
            # A first page of public events: the same rows for everyone, so cached by the filters' fingerprint.
            return await self._cached_first_page(q, query, fingerprint, limit)
        async with db.connection(self._pool) as conn:
            rows = await events.list_events(conn, query)
        items = [
            EventView(r.event, domain.access_for(r.event, q.user, is_guest=r.viewer_is_guest, invite_token=""))
            for r in rows[:limit]
        ]
        token = ""
        if len(rows) > limit:
            last = rows[limit - 1].event
            token = encode_page_token([last.details.start_time, last.id, start_from], fingerprint)
        return EventPage(items, token)

    async def _cached_first_page(
        self, q: ListEvents, query: events.ListQuery, fingerprint: str, limit: int
    ) -> EventPage:
        public = replace(query, viewer_id=None)

        async def load() -> CachedPage:
            async with db.connection(self._pool) as conn:
                rows = await events.list_events(conn, public)
            return CachedPage([r.event for r in rows], public.start_from)

        page = await self._cache.get_or_load(
            list_key(fingerprint, limit), load, LIST_CODEC, ttl=self._list_ttl, scope=LIST_SCOPE
        )
        shown = page.rows[:limit]
        if q.start_from is None:
            # "upcoming" was computed when the page was cached: leave out what started since
            now = self._clock.now()
            shown = [e for e in shown if e.details.start_time >= now]
        guest_of: set[UUID] = set()
        if q.user is not None and shown:
            async with db.connection(self._pool) as conn:
                guest_of = await events.guest_of(conn, q.user.id, [e.id for e in shown])
        items = [EventView(e, domain.access_for(e, q.user, is_guest=e.id in guest_of, invite_token="")) for e in shown]
        token = ""
        if len(page.rows) > limit:
            last = page.rows[limit - 1]
            token = encode_page_token([last.details.start_time, last.id, page.start_from], fingerprint)
        return EventPage(items, token)

    # ----------------------------------------------------------------- host actions

    async def update(self, cmd: UpdateEvent) -> EventView:
        now = self._clock.now()
        async with db.transaction(self._pool) as conn:
            event = await self._load(conn, cmd.event_id, for_update=True)
            access = await self._access(conn, event, cmd.user)
            domain.ensure_host(event, access)
            domain.ensure_etag(event, cmd.etag)
            domain.ensure_editable(event, now)
            new = domain.normalized(domain.apply_update(event.details, cmd.patch, cmd.paths))
            domain.validate_details(new, now, check_start=new.start_time != event.details.start_time)
            domain.ensure_capacity_covers_seats(event, new.capacity)
            changes = domain.changes_between(event.details, new)
            if not changes:
                return EventView(event, access)
            await users.remember(conn, cmd.user)
            await events.update_details(conn, event.id, new, now)
            if new.start_time != event.details.start_time:
                await outbox.move_reminders(conn, event.id, new.start_time, now)
            updated = await self._load(conn, event.id)
            guests = await bookings.confirmed_guest_ids(conn, event.id)
            link = self.share_link(updated, with_invite=False)
            await outbox.enqueue(
                conn,
                notifications.event_changed(updated, guests, changes, link),
                request_id=context.request_id(),
            )
        if updated.host_display_name != event.host_display_name:  # shown on every event of the host
            async with db.connection(self._pool) as conn:
                await invalidate_host_events(self._cache, conn, updated.host_id)
        else:
            await invalidate_events(self._cache, updated.id)
        return EventView(updated, access)

    async def cancel(self, cmd: CancelEvent) -> EventView:
        now = self._clock.now()
        if len(cmd.reason) > NOTE_MAX:
            raise InvalidArgument.field("reason", f"must be at most {NOTE_MAX} characters")
        async with db.transaction(self._pool) as conn:
            replay = await idempotency.claim(conn, cmd.request)
            if replay is not None:
                return await self._host_view(conn, cmd.event_id)
            event = await self._load(conn, cmd.event_id, for_update=True)
            access = await self._access(conn, event, cmd.user)
            domain.ensure_host(event, access)
            if event.state is domain.State.CANCELLED:
                return EventView(event, access)
            domain.ensure_etag(event, cmd.etag)
            domain.ensure_cancellable(event)
            guests = await bookings.cancel_all_for_event(conn, event.id, now)
            await events.mark_cancelled(conn, event.id, now)
            await outbox.drop_reminders(conn, event.id)
            cancelled = await self._load(conn, event.id)
            link = self.share_link(cancelled, with_invite=False)
            await outbox.enqueue(
                conn,
                notifications.event_cancelled(cancelled, guests, cmd.reason.strip(), link),
                request_id=context.request_id(),
            )
            await idempotency.record(conn, cmd.request, cancelled.name)
        await invalidate_events(self._cache, cancelled.id)
        return EventView(cancelled, access)

    async def complete(self, user: User, event_id: UUID, etag: str) -> EventView:
        now = self._clock.now()
        async with db.transaction(self._pool) as conn:
            event = await self._load(conn, event_id, for_update=True)
            access = await self._access(conn, event, user)
            domain.ensure_host(event, access)
            if event.state is domain.State.COMPLETED:
                return EventView(event, access)
            domain.ensure_etag(event, etag)
            domain.ensure_completable(event, now)
            await events.mark_completed(conn, event.id, now)
            await outbox.drop_reminders(conn, event.id)
            completed = await self._load(conn, event.id)
        await invalidate_events(self._cache, completed.id)
        await invalidate_host_profile(self._cache, completed.host_id)  # held-event count and list
        return EventView(completed, access)

    async def list_guests(self, user: User, event_id: UUID, page_size: int, page_token: str) -> GuestPage:
        limit = clamp_page_size(page_size)
        after = _after(decode_page_token(page_token, filter_fingerprint({"event": event_id})))
        async with db.connection(self._pool) as conn:
            event = await self._load(conn, event_id)
            domain.ensure_host(event, await self._access(conn, event, user))
            rows = await bookings.list_guests(conn, event_id, after, limit + 1)
        items = [
            Guest(
                user_id=r.guest_id,
                display_name=r.display_name,
                seats=r.seats,
                booking_id=r.booking_id,
                book_time=r.book_time,
                rating_average=round(r.rating_sum / r.rating_count, 2) if r.rating_count else 0.0,
                rating_count=r.rating_count,
            )
            for r in rows[:limit]
        ]
        token = ""
        if len(rows) > limit:
            last = rows[limit - 1]
            token = encode_page_token([last.book_time, last.booking_id], filter_fingerprint({"event": event_id}))
        return GuestPage(items, token)

    async def send_invitations(self, cmd: SendInvitations) -> Invitations:
        now = self._clock.now()
        if len(cmd.note) > NOTE_MAX:
            raise InvalidArgument.field("message", f"must be at most {NOTE_MAX} characters")
        async with db.transaction(self._pool) as conn:
            replay = await idempotency.claim(conn, cmd.request)
            event = await self._load(conn, cmd.event_id, for_update=replay is None)
            access = await self._access(conn, event, cmd.user)
            domain.ensure_host(event, access)
            link = self.share_link(event, with_invite=True)
            if replay is not None:
                return Invitations(list(cmd.user_ids), link)
            domain.ensure_open(event, now)
            if cmd.user.id in cmd.user_ids:
                raise InvalidArgument.field("users", "must not include the host")
            await self._check_invitees(conn, cmd, now)
            batch = str(cmd.request.request_id) if cmd.request else str(uuid.uuid4())
            await outbox.enqueue(
                conn,
                notifications.invitation(event, cmd.user_ids, cmd.note.strip(), link, batch),
                request_id=context.request_id(),
            )
            await idempotency.record(conn, cmd.request, event.name)
            return Invitations(list(cmd.user_ids), link)

    async def _check_invitees(self, conn: Conn, cmd: SendInvitations, now: datetime) -> None:
        """Invitations go only to users cowatch knows, and at most ``invitations_per_day`` per host (UTC day,
        counted in Postgres in this transaction, so across replicas): no mailing of made-up addresses."""
        known = await users.known(conn, list(cmd.user_ids))
        unknown = [(f"users[{i}]", "is not a cowatch user") for i, u in enumerate(cmd.user_ids) if u not in known]
        if unknown:
            raise InvalidArgument("UNKNOWN_USER", "invitations go only to users of cowatch", field_violations=unknown)
        limit = self._invitations_per_day
        if not await events.charge_invitations(conn, cmd.user.id, now.date(), len(cmd.user_ids), limit):
            raise ResourceExhausted(
                "INVITATION_QUOTA_EXCEEDED",
                f"a host may send at most {limit} invitations per day (UTC); retry tomorrow",
                metadata={"limit": str(limit), "window": "1d"},
            )

    async def rotate_invite_token(self, user: User, event_id: UUID) -> EventView:
        now = self._clock.now()
        async with db.transaction(self._pool) as conn:
            event = await self._load(conn, event_id, for_update=True)
            access = await self._access(conn, event, user)
            domain.ensure_host(event, access)
            domain.ensure_private(event)
            domain.ensure_editable(event, now)
            await events.rotate_invite_token(conn, event.id, domain.new_invite_token(), now)
            rotated = await self._load(conn, event.id)
        await self._cache.invalidate(event_key(rotated.id))  # private: on no list
        return EventView(rotated, access)
