"""EventService use cases: one method per RPC, each one transaction.

Commands come in as plain dataclasses (mappers build them from protos); results go out as domain objects with
the caller's :class:`Access`, so the mapper knows what to withhold.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
import zlib
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TypeAlias
from uuid import UUID

from services.account import users
from services.booking import cascades as bookings
from services.common import conditional, db, errors, names
from services.common.cache import Cache, Codec, NullCache
from services.common.clock import Clock
from services.common.dbtypes import Conn, Pool
from services.common.domain_events import EventChanged, EventCompleted, EventCreated
from services.common.errors import InvalidArgument, ResourceExhausted
from services.common.idempotency import RequestKey
from services.common.identity import User
from services.common.paging import Keyset, Page, keyset
from services.common.replica import ReadPool
from services.common.uow import Handlers, UnitOfWork, uow
from services.common.vocabulary import Rating, Reliability
from services.event import cache as event_cache
from services.event import domain, notifications
from services.event import repository as events
from services.event.cache import EVENT_CODEC, LIST_CODEC, LIST_SCOPE, CachedEvent, CachedPage, event_key, list_key
from services.event.domain import Access, Event, EventDetails
from services.event.domain_events import EventCancelled, EventRescheduled, EventUpdated, InvitationsSent

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
    trace_id: str = ""
    """The request's ``x-request-id``, stamped on the outbox rows it causes."""


@dataclass(frozen=True, slots=True)
class UpdateEvent:
    user: User
    event_id: UUID
    patch: EventDetails
    paths: frozenset[str]
    etag: str
    trace_id: str = ""


@dataclass(frozen=True, slots=True)
class CancelEvent:
    user: User
    event_id: UUID
    etag: str
    reason: str
    request: RequestKey | None
    trace_id: str = ""


@dataclass(frozen=True, slots=True)
class CompleteEvent:
    user: User
    event_id: UUID
    etag: str
    trace_id: str = ""


@dataclass(frozen=True, slots=True)
class RotateInviteToken:
    user: User
    event_id: UUID
    trace_id: str = ""


@dataclass(frozen=True, slots=True)
class GetEvent:
    user: User | None
    event_id: UUID
    invite_token: str


@dataclass(frozen=True, slots=True)
class ListGuests:
    user: User
    event_id: UUID
    page_size: int
    page_token: str


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


EventPage: TypeAlias = Page[EventView]
PublicPage: TypeAlias = Page[EventView | bytes]
"""A page whose items the caller sees in their public form may be those forms' stored wire bytes."""


@dataclass(frozen=True, slots=True)
class Guest:
    user_id: str
    display_name: str
    seats: int
    booking_id: UUID
    book_time: datetime
    rating: Rating
    reliability: Reliability = field(default_factory=Reliability)


GuestPage: TypeAlias = Page[Guest]


@dataclass(frozen=True, slots=True)
class SendInvitations:
    user: User
    event_id: UUID
    user_ids: Sequence[str]
    note: str
    request: RequestKey | None
    trace_id: str = ""


@dataclass(frozen=True, slots=True)
class Invitations:
    user_ids: list[str]
    share_link: str


CALENDAR_KEEP = timedelta(days=30)
"""A calendar feed lists events that ended less than this ago, and keeps cancelled ones this long."""
CALENDAR_MAX_EVENTS = 1000
CALENDAR_FORMAT = 3
"""Part of every calendar ETag: bump it when the rendering changes, so calendar apps fetch the new form."""
CALENDAR_BODY_TTL = 3600.0
"""How long a rendered feed stays in the cache after its render (a feed that changes gets a new key at once).
Calendar apps that poll without ``If-None-Match`` every few minutes to an hour are answered from it; one that
polls once a day renders again. The entry is compressed (~8× smaller than the body)."""


def _calendar_key(token_hash: bytes, etag: str) -> str:
    return f"calendar:v1:{token_hash.hex()}:{etag.removeprefix('W/').strip(chr(34))}"


CALENDAR_BODY_CODEC: Codec[bytes] = Codec(
    "calendar",
    lambda body: base64.b64encode(zlib.compress(body, 1)).decode(),
    lambda stored: zlib.decompress(base64.b64decode(stored)),
)
"""A rendered feed in the cache: zlib (level 1: 160 kB → 20 kB for 200 events, ~5 ms on a busy core, unzipped in
~1 ms) and base64, as cache values are JSON."""

CalendarRenderer: TypeAlias = "Callable[[list[CalendarItem]], Awaitable[bytes]]"


@dataclass(frozen=True, slots=True)
class CalendarItem:
    view: EventView
    relation: str
    """The reader's relation to the event: HOST, BOOKED, BOOKING_CANCELLED, OFFERED or OFFER_ENDED."""
    relation_end: datetime | None
    """When a cancelled booking or an ended offer ended."""
    offer_expire_time: datetime | None
    steps: int
    """Transitions of the relation (each booking made or cancelled, each offer made or ended)."""
    changed: datetime | None
    """The latest of those transitions."""


@dataclass(frozen=True, slots=True)
class CalendarFeed:
    etag: str
    body: bytes | None
    """The rendered feed; ``None`` when the caller's copy is current (its If-None-Match matched ``etag``):
    nothing was loaded nor rendered."""


def calendar_token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def calendar_not_found() -> errors.NotFound:
    return errors.NotFound("CALENDAR_NOT_FOUND", "no calendar has this token (it may have been rotated)")


class EventService:
    """Reads go through ``cache`` (cache-aside, see :mod:`services.event.cache`). Writes run in a unit of work
    (:mod:`services.common.uow`) and emit domain events: the dispatcher turns them into outbox rows and reminder
    changes in the transaction, and into cache holds before COMMIT and invalidations after it — this domain's
    (:func:`event_cache.handlers`) and those of the domains listening (``subscribers``, wired by the process's
    app). Access is decided per request, never cached.

    ``reads`` (default: the primary) serves what may lag (:mod:`services.common.replica`): anonymous ``GetEvent``
    and public ``ListEvents`` rows, never a cache fill (see :meth:`Cache.get_or_load`) nor what depends on the
    caller's own bookings."""

    def __init__(
        self,
        pool: Pool,
        clock: Clock,
        public_base_url: str,
        cache: Cache | None = None,
        *,
        cache_ttl: float = 60.0,
        list_ttl: float = 15.0,
        subscribers: Handlers | None = None,
        claim_window: timedelta | None = None,
        invitations_per_day: int = DEFAULT_INVITATIONS_PER_DAY,
        reads: ReadPool | None = None,
        render_public: Callable[[Event], bytes] | None = None,
        calendar_ttl: float = CALENDAR_BODY_TTL,
    ) -> None:
        self._reads = reads or ReadPool(pool)
        self._render = render_public
        """The public form's wire bytes of an event (the servicer's mapping), stored with each cached row."""
        self._calendar_ttl = calendar_ttl
        self._claim_window = claim_window or timedelta(hours=2)
        self._pool = pool
        self._clock = clock
        self._base_url = public_base_url
        self._cache: Cache = cache or NullCache()
        self._ttl = cache_ttl
        self._list_ttl = list_ttl
        self._dispatcher = notifications.handlers(public_base_url).merged(
            event_cache.handlers(self._cache), *([subscribers] if subscribers else [])
        )
        self._invitations_per_day = invitations_per_day

    def now(self) -> datetime:
        """The service's clock (DTSTAMP of exported calendars)."""
        return self._clock.now()

    def calendar_url(self, token: str) -> str:
        """The feed's URL (the token in the query string: Envoy logs paths without it)."""
        return f"{self._base_url.rstrip('/')}/v1/calendar?token={token}"

    async def rotate_calendar_token(self, user: User) -> str:
        """A new private calendar token for ``user`` (the previous one stops working); stored as its hash only."""
        token = secrets.token_urlsafe(32)
        async with uow(self._pool, self._dispatcher) as tx:
            await users.remember(tx, user)
            await events.set_calendar_token(tx.conn, user.id, calendar_token_hash(token), self._clock.now())
        return token

    async def calendar(self, token: str, render: CalendarRenderer, if_none_match: str = "") -> CalendarFeed:
        """The events the token's owner hosts, booked or holds a waitlist offer for, as they may see them,
        rendered by ``render`` (the caller's: it knows the wire format).

        First one statement computes the feed's validator (a digest of what it would list, see
        ``repository.CALENDAR_VALIDATOR``); when the caller's ``If-None-Match`` matches, that is all (a poll of an
        unchanged feed loads no event and renders nothing). Else the body comes from the cache under the token's
        hash and the ETag — the ETag changes with everything the feed shows, so an entry can never be stale,
        only unused, and nothing has to invalidate it: a calendar app polling an unchanged feed without
        ``If-None-Match`` costs the validator and one cache read. On a miss the rows are read after the validator
        and rendered: a change committed in between makes the body newer than its ETag, never older, so the next
        poll fetches it again rather than missing it (and a request that still computes the older ETag gets that
        newer body from the cache: newer again, never older). A cached body repeats its render's ``DTSTAMP``,
        which is right: in an object with a ``METHOD`` (ours: ``PUBLISH``) RFC 5545 §3.8.7.2 makes it the time
        the iCalendar object was created, and the object served is the one created then, unchanged since."""
        now = self._clock.now()
        since = now - CALENDAR_KEEP
        token_hash = calendar_token_hash(token)
        async with db.connection(self._pool) as conn:
            validator = await events.calendar_validator(conn, token_hash, now, since, CALENDAR_MAX_EVENTS)
        if validator is None:
            raise calendar_not_found()
        # The token's hash too: a rotated token is a new URL, whose copies start afresh.
        etag = conditional.weak_etag(CALENDAR_FORMAT, self._base_url, token_hash.hex(), validator.digest)
        if conditional.matches(if_none_match, etag):
            return CalendarFeed(etag, None)

        async def load() -> bytes:
            async with db.connection(self._pool) as conn:
                rows = await events.calendar_events(conn, validator.user_id, now, since, CALENDAR_MAX_EVENTS)
            items = []
            for r in rows:
                access = Access(is_host=r.relation == "HOST", is_guest=r.relation == "BOOKED", has_invite=False)
                view = EventView(r.event, access)
                items.append(CalendarItem(view, r.relation, r.relation_end, r.offer_expire_time, r.steps, r.changed))
            return await render(items)

        body = await self._cache.get_or_load(
            _calendar_key(token_hash, etag), load, CALENDAR_BODY_CODEC, ttl=self._calendar_ttl
        )
        return CalendarFeed(etag, body)

    def share_link(self, event: Event, *, with_invite: bool) -> str:
        return notifications.share_link(self._base_url, event, with_invite=with_invite)

    # ----------------------------------------------------------------- helpers

    async def _load(self, conn: Conn, event_id: UUID, *, for_update: bool = False) -> Event:
        event = await events.get(conn, event_id, for_update=for_update)
        if event is None:
            raise errors.event_not_found(names.event(event_id))
        return event

    async def _access(self, conn: Conn, event: Event, user: User | None, invite_token: str = "") -> Access:
        is_guest = user is not None and await bookings.has_confirmed_booking(conn, event.id, user.id)
        return domain.access_for(event, user, is_guest=is_guest, invite_token=invite_token)

    async def _host_view(self, conn: Conn, event_id: UUID) -> EventView:
        event = await self._load(conn, event_id)
        return EventView(event, Access(is_host=True, is_guest=False, has_invite=True))

    async def _load_as_host(self, tx: UnitOfWork, user: User, event_id: UUID) -> tuple[Event, Access]:
        """The event, locked for this transaction, once the caller is known to be its host."""
        event = await self._load(tx.conn, event_id, for_update=True)
        access = await self._access(tx.conn, event, user)
        domain.ensure_host(event, access)
        return event, access

    def _uow(self, request: RequestKey | None = None, trace_id: str = "") -> AbstractAsyncContextManager[UnitOfWork]:
        return uow(self._pool, self._dispatcher, request=request, trace_id=trace_id)

    # ----------------------------------------------------------------- create / read

    async def create(self, cmd: CreateEvent) -> EventView:
        now = self._clock.now()
        details = domain.normalized(cmd.details)
        domain.validate_details(details, now)
        async with self._uow(cmd.request, cmd.trace_id) as tx:
            if tx.replay is not None:
                return await self._host_view(tx.conn, domain.parse_event_name(tx.replay))
            await users.remember(tx, cmd.user)
            event_id = uuid.uuid4()
            await events.insert(tx.conn, event_id, cmd.user.id, details, domain.new_invite_token(), now)
            listed = details.visibility is domain.Visibility.PUBLIC
            tx.emit(EventCreated(event_id, cmd.user.id, details.start_time, listed, now))
            tx.record(names.event(event_id))
            view = await self._host_view(tx.conn, event_id)
        return view

    def _cached(self, event: Event) -> CachedEvent:
        return CachedEvent.of(event, self._render(event) if self._render is not None else b"")

    async def _load_row(self, event_id: UUID) -> CachedEvent:
        async with db.connection(self._pool) as conn:
            return self._cached(await self._load(conn, event_id))

    async def _load_lagging(self, event_id: UUID) -> CachedEvent:
        """The row from the read replica; one it does not have yet is looked for on the primary (a new event's link
        is shared at once)."""
        event = await self._reads.fetch(lambda conn: events.get(conn, event_id))
        return self._cached(event) if event is not None else await self._load_row(event_id)

    async def get(self, q: GetEvent) -> EventView:
        view = await self.read(q, as_public=False)
        assert isinstance(view, EventView)
        return view

    async def read(self, q: GetEvent, *, as_public: bool = True) -> EventView | bytes:
        """The caller's view of the event; with ``as_public``, the stored public form's bytes when that is what
        the caller sees (neither host nor guest: see :mod:`services.event.cache`)."""
        # Anonymous readers may see a lagging row; a signed-in one may be the host about to use the etag.
        lagging = (lambda: self._load_lagging(q.event_id)) if q.user is None else None
        cached = await self._cache.get_or_load(
            event_key(q.event_id), lambda: self._load_row(q.event_id), EVENT_CODEC, ttl=self._ttl, bypass=lagging
        )
        if as_public and q.user is None and cached.listed and cached.public:
            return cached.public  # anonymous reader of a public event: nothing to decide, not even the row
        event = cached.event
        is_guest = False
        if q.user is not None and q.user.id != event.host_id:  # the host can't book their own event
            async with db.connection(self._pool) as conn:
                is_guest = await bookings.has_confirmed_booking(conn, event.id, q.user.id)
        access = domain.access_for(event, q.user, is_guest=is_guest, invite_token=q.invite_token)
        domain.ensure_visible(event, access)
        if as_public and cached.public and not (access.is_host or access.is_guest):
            return cached.public
        return EventView(event, access)

    async def list(self, q: ListEvents, *, as_public: bool = False) -> PublicPage:
        """A page of events as the caller sees them; with ``as_public``, an item the caller sees in its public
        form may come as that form's stored bytes (cached first pages: see :mod:`services.event.cache`)."""
        own = q.user is not None and q.host_id == q.user.id
        filters = {
            "film": q.film_id,
            "city": q.city and q.city.lower(),
            "from": q.start_from,
            "to": q.start_to,
            "free": q.has_free_seats,
            "host": q.host_id,
            "text": q.text,
            "own": own,
        }
        # (start_time, id, the "upcoming" bound of the first page, pinned so later pages agree)
        ks = keyset(q.page_size, q.page_token, filters, [(datetime, type(None))])
        start_from = q.start_from
        if ks.extra and isinstance(ks.extra[0], datetime):
            start_from = ks.extra[0]
        elif start_from is None and not own:
            start_from = self._clock.now()  # upcoming events by default
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
            after=ks.after,
            limit=ks.fetch,
        )
        if ks.after is None and not own:
            # A first page of public events: the same rows for everyone, so cached by the filters' fingerprint.
            return await self._cached_first_page(q, query, ks, as_public)
        if q.user is None:  # public discovery: may lag
            rows = await self._reads.fetch(lambda conn: events.list_events(conn, query))
        else:  # "you are going" comes from the caller's own bookings: the primary
            async with db.connection(self._pool) as conn:
                rows = await events.list_events(conn, query)
        page = ks.page(rows, lambda r: (r.event.details.start_time, r.event.id), start_from)
        items: list[EventView | bytes] = [
            EventView(r.event, domain.access_for(r.event, q.user, is_guest=r.viewer_is_guest, invite_token=""))
            for r in page.items
        ]
        return Page(items, page.next_page_token)

    async def _cached_first_page(
        self, q: ListEvents, query: events.ListQuery, ks: Keyset, as_public: bool
    ) -> PublicPage:
        public = replace(query, viewer_id=None)

        async def load() -> CachedPage:
            async with db.connection(self._pool) as conn:
                rows = await events.list_events(conn, public)
            return CachedPage([self._cached(r.event) for r in rows], public.start_from)

        async def load_lagging() -> CachedPage:  # the same public rows for everyone, stored nowhere: may lag
            rows = await self._reads.fetch(lambda conn: events.list_events(conn, public))
            return CachedPage([self._cached(r.event) for r in rows], public.start_from)

        cached = await self._cache.get_or_load(
            list_key(ks.fingerprint, ks.limit),
            load,
            LIST_CODEC,
            ttl=self._list_ttl,
            scope=LIST_SCOPE,
            bypass=load_lagging,
        )
        page = ks.page(cached.rows, lambda c: (c.start_time, c.event_id), cached.start_from)
        shown = page.items
        if q.start_from is None:
            # "upcoming" was computed when the page was cached: leave out what started since
            now = self._clock.now()
            shown = [c for c in shown if c.start_time >= now]
        if q.user is None and self._render is not None and as_public:
            return Page([c.public for c in shown], page.next_page_token)  # every item in its public form
        guest_of: set[UUID] = set()
        if q.user is not None and shown:
            async with db.connection(self._pool) as conn:
                guest_of = await events.guest_of(conn, q.user.id, [c.event_id for c in shown])
        items: list[EventView | bytes] = []
        for c in shown:
            own = q.user is not None and (c.host_id == q.user.id or c.event_id in guest_of)
            if as_public and c.public and not own:
                items.append(c.public)
            else:
                e = c.event
                items.append(EventView(e, domain.access_for(e, q.user, is_guest=e.id in guest_of, invite_token="")))
        return Page(items, page.next_page_token)

    # ----------------------------------------------------------------- host actions

    async def update(self, cmd: UpdateEvent) -> EventView:
        now = self._clock.now()
        async with self._uow(trace_id=cmd.trace_id) as tx:
            event, access = await self._load_as_host(tx, cmd.user, cmd.event_id)
            domain.ensure_etag(event, cmd.etag)
            domain.ensure_editable(event, now)
            new = domain.normalized(domain.apply_update(event.details, cmd.patch, cmd.paths))
            domain.validate_details(new, now, check_start=new.start_time != event.details.start_time)
            domain.ensure_capacity_covers_seats(event, new.capacity)
            changes = domain.changes_between(event.details, new)
            if not changes:
                return EventView(event, access)
            moved = (new.start_time, new.duration) != (event.details.start_time, event.details.duration)
            if moved:  # serialized with the guests' own bookings: see lock_guests_for_move
                await bookings.lock_guests_for_move(tx.conn, event.id)
            await users.remember(tx, cmd.user)
            await events.update_details(tx.conn, event.id, new, now)
            # the waitlist follows: offers re-timed to a moved start, seats a raised capacity freed offered
            await bookings.after_event_update(
                tx.conn,
                event.id,
                now,
                public_base_url=self._base_url,
                trace_id=cmd.trace_id,
                claim_window=self._claim_window,
            )
            updated = await self._load(tx.conn, event.id)
            guests = await bookings.confirmed_guest_ids(tx.conn, event.id)
            # The host's move stands even where it makes a guest's bookings overlap: each such guest is told
            # which booking it now collides with, and both bookings stay confirmed until the guest cancels one.
            overlaps = await bookings.overlaps(tx.conn, event.id) if moved else []
            if new.start_time != event.details.start_time:
                tx.emit(EventRescheduled(event.id, new.start_time, now))
            tx.emit(EventUpdated(event.id, True, updated, changes, guests, overlaps))
        return EventView(updated, access)

    async def cancel(self, cmd: CancelEvent) -> EventView:
        now = self._clock.now()
        if len(cmd.reason) > NOTE_MAX:
            raise InvalidArgument.field("reason", f"must be at most {NOTE_MAX} characters")
        async with self._uow(cmd.request, cmd.trace_id) as tx:
            if tx.replay is not None:
                return await self._host_view(tx.conn, cmd.event_id)
            event, access = await self._load_as_host(tx, cmd.user, cmd.event_id)
            if event.state is domain.State.CANCELLED:
                return EventView(event, access)
            domain.ensure_etag(event, cmd.etag)
            domain.ensure_cancellable(event)
            guests = await bookings.cancel_all_for_event(
                tx.conn, event.id, now, public_base_url=self._base_url, trace_id=cmd.trace_id
            )
            await events.mark_cancelled(tx.conn, event.id, now)
            cancelled = await self._load(tx.conn, event.id)
            tx.emit(EventCancelled(event.id, True, cancelled, guests, cmd.reason.strip()))
            tx.record(cancelled.name)
        return EventView(cancelled, access)

    async def complete(self, cmd: CompleteEvent) -> EventView:
        now = self._clock.now()
        async with self._uow(trace_id=cmd.trace_id) as tx:
            event, access = await self._load_as_host(tx, cmd.user, cmd.event_id)
            if event.state is domain.State.COMPLETED:
                return EventView(event, access)
            domain.ensure_etag(event, cmd.etag)
            domain.ensure_completable(event, now)
            await events.mark_completed(tx.conn, event.id, now)
            completed = await self._load(tx.conn, event.id)
            tx.emit(EventCompleted(event.id, True, completed.host_id))  # held-event count and list of the host
        return EventView(completed, access)

    async def list_guests(self, q: ListGuests) -> GuestPage:
        ks = keyset(q.page_size, q.page_token, {"event": q.event_id})
        async with db.connection(self._pool) as conn:
            event = await self._load(conn, q.event_id)
            domain.ensure_host(event, await self._access(conn, event, q.user))
            rows = await bookings.list_guests(conn, q.event_id, ks.after, ks.fetch)
        page = ks.page(rows, lambda r: (r.book_time, r.booking_id))
        items = [
            Guest(r.guest_id, r.display_name, r.seats, r.booking_id, r.book_time, r.rating, r.reliability)
            for r in page.items
        ]
        return Page(items, page.next_page_token)

    async def send_invitations(self, cmd: SendInvitations) -> Invitations:
        now = self._clock.now()
        if len(cmd.note) > NOTE_MAX:
            raise InvalidArgument.field("message", f"must be at most {NOTE_MAX} characters")
        async with self._uow(cmd.request, cmd.trace_id) as tx:
            event = await self._load(tx.conn, cmd.event_id, for_update=tx.replay is None)
            domain.ensure_host(event, await self._access(tx.conn, event, cmd.user))
            link = self.share_link(event, with_invite=True)
            if tx.replay is not None:
                return Invitations(list(cmd.user_ids), link)
            domain.ensure_open(event, now)
            if cmd.user.id in cmd.user_ids:
                raise InvalidArgument.field("users", "must not include the host")
            await self._check_invitees(tx.conn, cmd, now)
            batch = str(cmd.request.request_id) if cmd.request else str(uuid.uuid4())
            tx.emit(InvitationsSent(event, cmd.user_ids, cmd.note.strip(), batch))
            tx.record(event.name)
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

    async def rotate_invite_token(self, cmd: RotateInviteToken) -> EventView:
        now = self._clock.now()
        async with self._uow(trace_id=cmd.trace_id) as tx:
            event, access = await self._load_as_host(tx, cmd.user, cmd.event_id)
            domain.ensure_private(event)
            domain.ensure_editable(event, now)
            await events.rotate_invite_token(tx.conn, event.id, domain.new_invite_token(), now)
            rotated = await self._load(tx.conn, event.id)
            tx.emit(EventChanged(event.id, False))  # private: on no list
        return EventView(rotated, access)
