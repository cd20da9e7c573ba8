"""BookingService use cases: one method per RPC, each one transaction.

CreateBooking:

1. read the event (one autocommit statement, no row lock) — event not found, host, invite, not bookable, already
   booked and "not enough seats left" are refused from this read alone, in one round trip and without ever
   queueing behind the event row's lock (a sold-out event under a rush stays cheap to refuse). A request whose id
   was already used goes on instead, to be replayed by the idempotency claim.
2. one transaction (READ COMMITTED): ``idempotency.claim`` (a retry with the same request id waits here for the
   first call, then replays it) → the guest's advisory lock → ``users.remember`` → INSERT the booking unless it
   overlaps another confirmed booking of the guest (exact thanks to the guest lock; a second active booking hits
   the partial unique index) → outbox rows (confirmation to the guest, "new guest" to the host) and the guest's
   24 h / 1 h reminders → the idempotency record →
3. last, THE conditional ``UPDATE event.events SET seats_taken = seats_taken + n WHERE … seats_taken + n <=
   capacity``. No row → everything rolls back and a fresh read says why (sold out / no longer bookable). Being
   last, it holds the event row's lock for one round trip only (the COMMIT), which is what bounds a hot event's
   throughput. It returns the event's times as of the update: if the host moved the event after step 1, the
   overlap check and the reminders used stale times, so the transaction is aborted and the client retries.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from uuid import UUID

import asyncpg

from services.account import repository as users
from services.booking import domain, notifications
from services.booking import repository as bookings
from services.booking.domain import BookableEvent, Booking, BookingAccess, TimeFilter
from services.common import context, db, idempotency
from services.common.cache import Cache, NullCache
from services.common.clock import Clock
from services.common.dbtypes import Conn
from services.common.errors import InvalidArgument, NotFound
from services.common.idempotency import RequestKey
from services.common.identity import User
from services.common.paging import clamp_page_size, decode_page_token, encode_page_token, filter_fingerprint
from services.event.cache import invalidate_events
from services.notification import outbox


@dataclass(frozen=True, slots=True)
class CreateBooking:
    user: User
    event_id: UUID
    seats: int
    invite_token: str
    request: RequestKey | None


@dataclass(frozen=True, slots=True)
class CancelBooking:
    user: User
    booking_id: UUID
    request: RequestKey | None


@dataclass(frozen=True, slots=True)
class ListBookings:
    user: User
    page_size: int
    page_token: str
    state: domain.State | None
    time: TimeFilter


@dataclass(frozen=True, slots=True)
class BookingPage:
    items: list[Booking]
    next_page_token: str


class BookingService:
    def __init__(
        self,
        pool: asyncpg.Pool[asyncpg.Record],
        clock: Clock,
        public_base_url: str,
        max_seats: int = domain.DEFAULT_MAX_SEATS,
        cache: Cache | None = None,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._base_url = public_base_url.rstrip("/")
        self.max_seats = max_seats
        # EventService caches event rows, seats included: every committed seat change invalidates them.
        self._cache: Cache = cache or NullCache()

    def _link(self, event_id: UUID) -> str:
        return f"{self._base_url}/events/{event_id}"

    async def _replay(self, conn: Conn, resource: str, user: User) -> Booking:
        """The booking an earlier identical request produced, as it is now."""
        booking_id = domain.parse_booking_name(resource)
        return domain.ensure_visible(await bookings.get_booking(conn, booking_id), booking_id, user).booking

    # ----------------------------------------------------------------- create

    async def create(self, cmd: CreateBooking) -> Booking:
        now = self._clock.now()
        request_id = cmd.request.request_id if cmd.request else None
        async with db.connection(self._pool) as conn:
            found = await bookings.event_for_booking(conn, cmd.event_id, cmd.user.id, request_id)
            if found is None or not found.seen_request:
                self._ensure_can_book(cmd, found, now)
            async with conn.transaction():
                replay = await idempotency.claim(conn, cmd.request)
                if replay is not None:
                    return await self._replay(conn, replay, cmd.user)
                event = self._ensure_can_book(cmd, found, now)
                booking = await self._book(conn, cmd, event, now)
        await invalidate_events(self._cache, booking.event_id)  # committed
        return booking

    def _ensure_can_book(
        self, cmd: CreateBooking, found: bookings.EventForBooking | None, now: datetime
    ) -> BookableEvent:
        return domain.ensure_can_book(
            found.event if found else None,
            cmd.event_id,
            cmd.user,
            invite_token=cmd.invite_token,
            already_booked=found is not None and found.already_booked,
            seats=cmd.seats,
            now=now,
        )

    async def _book(self, conn: Conn, cmd: CreateBooking, event: BookableEvent, now: datetime) -> Booking:
        await bookings.lock_guest(conn, cmd.user.id)
        await users.remember(conn, cmd.user)
        booking_id = uuid.uuid4()
        try:
            created = await bookings.insert_booking(conn, booking_id, event, cmd.user.id, cmd.seats, now)
        except bookings.DuplicateBooking:
            raise domain.already_booked_error(event) from None
        if created is None:
            raise domain.overlap(await bookings.overlapping_booking(conn, cmd.user.id, event))
        booking = Booking(
            id=booking_id,
            event_id=event.id,
            guest_id=cmd.user.id,
            seats=cmd.seats,
            state=domain.State.CONFIRMED,
            event_title=event.title,
            event_start_time=event.start_time,
            event_end_time=event.end_time,
            create_time=created,
        )
        await self._announce_booking(conn, event, booking, cmd.user, now)
        await idempotency.record(conn, cmd.request, booking.name)
        times = await bookings.take_seats(conn, event.id, cmd.seats, now)
        if times is None:
            raise domain.seats_refusal(await bookings.event_state(conn, event.id), event.id, now)
        if times != (event.start_time, event.end_time):
            raise domain.event_moved(event)
        return booking

    async def _announce_booking(
        self, conn: Conn, event: BookableEvent, booking: Booking, guest: User, now: datetime
    ) -> None:
        messages = notifications.booking_made(event, booking, guest, self._link(event.id))
        await outbox.enqueue_many(conn, messages, request_id=context.request_id())
        await outbox.schedule_reminders(conn, event.id, guest.id, event.start_time, now)

    # ----------------------------------------------------------------- read

    async def get(self, user: User, booking_id: UUID) -> Booking:
        async with db.connection(self._pool) as conn:
            return domain.ensure_visible(await bookings.get_booking(conn, booking_id), booking_id, user).booking

    async def list(self, q: ListBookings) -> BookingPage:
        limit = clamp_page_size(q.page_size)
        fingerprint = filter_fingerprint(
            {"guest": q.user.id, "state": q.state.value if q.state else None, "time": q.time.value}
        )
        keys = decode_page_token(q.page_token, fingerprint)
        after: tuple[datetime, UUID] | None = None
        now = self._clock.now()
        if keys is not None:
            # (start_time, id, now): "now" is pinned on the first page so that later pages agree on what
            # "upcoming" means.
            if (
                len(keys) != 3
                or not isinstance(keys[0], datetime)
                or not isinstance(keys[1], UUID)
                or not isinstance(keys[2], datetime)
            ):
                raise InvalidArgument.field("page_token", "is malformed", "INVALID_PAGE_TOKEN")
            after, now = (keys[0], keys[1]), keys[2]
        upcoming = {TimeFilter.ANY: None, TimeFilter.UPCOMING: True, TimeFilter.PAST: False}[q.time]
        query = bookings.BookingQuery(
            guest_id=q.user.id, state=q.state, upcoming=upcoming, now=now, after=after, limit=limit + 1
        )
        async with db.connection(self._pool) as conn:
            rows = await bookings.list_bookings(conn, query)
        items = [r.booking for r in rows[:limit]]
        token = ""
        if len(rows) > limit:
            last = items[-1]
            token = encode_page_token([last.event_start_time, last.id, now], fingerprint)
        return BookingPage(items, token)

    # ----------------------------------------------------------------- cancel

    async def cancel(self, cmd: CancelBooking) -> Booking:
        try:
            booking, changed = await self._cancel(cmd)
        except _AlreadyCancelled:
            # Lost a race with another cancel (or the host cancelled the event): the booking as that left it.
            return await self.get(cmd.user, cmd.booking_id)
        if changed:
            await invalidate_events(self._cache, booking.event_id)  # committed
        return booking

    async def _cancel(self, cmd: CancelBooking) -> tuple[Booking, bool]:
        """The booking, and whether this call cancelled it (seats given back)."""
        now = self._clock.now()
        async with db.transaction(self._pool) as conn:
            replay = await idempotency.claim(conn, cmd.request)
            if replay is not None:
                return await self._replay(conn, replay, cmd.user), False
            access = await bookings.get_booking(conn, cmd.booking_id)
            if not domain.ensure_can_cancel(access, cmd.booking_id, cmd.user, now):
                assert access is not None
                await idempotency.record(conn, cmd.request, access.booking.name)
                return access.booking, False
            assert access is not None
            booking = access.booking
            await users.remember(conn, cmd.user)
            # The event row is locked before anything else of the event is touched (its bookings, reminders):
            # the order EventService uses when it updates, cancels or completes an event, so the two can't
            # deadlock. (users.remember comes first, as in CreateBooking: users row, then event row.)
            event = await bookings.lock_event(conn, booking.event_id)
            if event is None:  # pragma: no cover - bookings reference events; events are never deleted
                raise NotFound("BOOKING_NOT_FOUND", f"{booking.name} does not exist")
            domain.ensure_not_started(event, now)  # the host may have moved the start since our read
            seats = await bookings.mark_cancelled(conn, booking.id, now)
            if seats is None:
                raise _AlreadyCancelled  # cancelled meanwhile; rolls back what this transaction wrote
            await bookings.release_seats(conn, event.id, seats)
            await outbox.drop_reminders(conn, event.id, cmd.user.id)
            cancelled = replace(booking, state=domain.State.CANCELLED, cancel_time=now)
            await outbox.enqueue(
                conn,
                notifications.booking_cancelled(event, cancelled, cmd.user, self._link(event.id)),
                request_id=context.request_id(),
            )
            await idempotency.record(conn, cmd.request, booking.name)
            return cancelled, True


class _AlreadyCancelled(Exception):
    """The booking stopped being confirmed between our read and our update; the transaction is rolled back."""


__all__ = [
    "BookingAccess",
    "BookingPage",
    "BookingService",
    "CancelBooking",
    "CreateBooking",
    "ListBookings",
]
