"""BookingService use cases: one method per RPC, each one transaction.

CreateBooking:

1. read the event (one autocommit statement, no row lock) — event not found, host, invite, not bookable, already
   booked and "not enough seats left" are refused from this read alone, in one round trip and without ever
   queueing behind the event row's lock (a sold-out event under a rush stays cheap to refuse). A request whose id
   was already used goes on instead, to be replayed by the idempotency claim.
2. one unit of work (READ COMMITTED, :mod:`services.common.uow`): the request-id claim (a retry with the same
   request id waits here for the first call, then replays it) → the guest's advisory lock → ``users.remember`` →
   INSERT the booking unless it overlaps another confirmed booking of the guest (exact thanks to the guest lock;
   a second active booking hits the partial unique index) → emit ``BookingMade`` and flush it: outbox rows
   (confirmation to the guest, "new guest" to the host), the guest's 24 h / 1 h reminders, the request id's
   record →
3. last, THE conditional ``UPDATE event.events SET seats_taken = seats_taken + n WHERE … seats_taken + n <=
   capacity``. No row → everything rolls back and a fresh read says why (sold out / no longer bookable). Being
   last, it holds the event row's lock for one round trip only (the COMMIT), which is what bounds a hot event's
   throughput. It returns the event's times as of the update: if the host moved the event after step 1, the
   overlap check and the reminders used stale times, so the transaction is aborted and the client retries.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TypeAlias
from uuid import UUID

from services.account import users
from services.booking import domain, notifications, waitlist, waitlist_repository, waitlist_service
from services.booking import repository as bookings
from services.booking.domain import BookableEvent, Booking, BookingAccess, TimeFilter
from services.booking.domain_events import BookingCancelled, BookingMade
from services.common import db, errors
from services.common.clock import Clock
from services.common.dbtypes import Conn, Pool
from services.common.idempotency import RequestKey
from services.common.identity import User
from services.common.paging import Page, keyset
from services.common.uow import Handlers, UnitOfWork, uow


@dataclass(frozen=True, slots=True)
class CreateBooking:
    user: User
    event_id: UUID
    seats: int
    invite_token: str
    request: RequestKey | None
    trace_id: str = ""
    """The request's ``x-request-id``, stamped on the outbox rows it causes."""


@dataclass(frozen=True, slots=True)
class CancelBooking:
    user: User
    booking_id: UUID
    request: RequestKey | None
    trace_id: str = ""


@dataclass(frozen=True, slots=True)
class MarkAttendance:
    user: User
    booking_id: UUID
    attendance: domain.Attendance
    trace_id: str = ""


@dataclass(frozen=True, slots=True)
class ListBookings:
    user: User
    page_size: int
    page_token: str
    state: domain.State | None
    time: TimeFilter


@dataclass(frozen=True, slots=True)
class GetBooking:
    user: User
    booking_id: UUID


BookingPage: TypeAlias = Page[Booking]


class BookingService:
    """Use cases in units of work (:mod:`services.common.uow`). Every seat change emits a ``SeatsChanged``
    (``BookingMade``, ``BookingCancelled``); the event domain's cache listens through ``subscribers`` (wired by
    :mod:`services.booking.app`), as EventService caches event rows, seats included."""

    def __init__(
        self,
        pool: Pool,
        clock: Clock,
        public_base_url: str,
        max_seats: int = domain.DEFAULT_MAX_SEATS,
        *,
        subscribers: Handlers | None = None,
        claim_window: timedelta = waitlist.DEFAULT_CLAIM_WINDOW,
        attendance_period: timedelta = domain.DEFAULT_ATTENDANCE_PERIOD,
    ) -> None:
        self.attendance_period = attendance_period
        self._pool = pool
        self._clock = clock
        self.max_seats = max_seats
        self.claim_window = claim_window
        self._dispatcher = notifications.handlers(public_base_url).merged(*([subscribers] if subscribers else []))
        self.waitlist = waitlist_service.WaitlistService(pool, clock, self._dispatcher, max_seats, claim_window)

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
            async with uow(conn, self._dispatcher, request=cmd.request, trace_id=cmd.trace_id) as tx:
                if tx.replay is not None:
                    return await self._replay(conn, tx.replay, cmd.user)
                event = self._ensure_can_book(cmd, found, now)
                return await self._book(tx, cmd, event, now)

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

    async def _book(self, tx: UnitOfWork, cmd: CreateBooking, event: BookableEvent, now: datetime) -> Booking:
        conn = tx.conn
        await bookings.lock_guest(conn, cmd.user.id)
        await users.remember(tx, cmd.user)
        booking_id = uuid.uuid4()
        try:
            created = await bookings.insert_booking(conn, booking_id, event, cmd.user.id, cmd.seats, now)
        except bookings.DuplicateBooking:
            raise domain.already_booked_error(event) from None
        if created is None:
            raise domain.overlap(await bookings.overlapping_booking(conn, cmd.user.id, event))
        await waitlist_repository.leave_on_booking(conn, event.id, cmd.user.id, now)  # booked: no longer waiting
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
        tx.emit(BookingMade(event.id, True, event, booking, cmd.user, now))
        tx.record(booking.name)
        await tx.flush()  # outbox, reminders, request id: all before the seat UPDATE, which must come last
        times = await bookings.take_seats(conn, event.id, cmd.seats, now)
        if times is None:
            raise domain.seats_refusal(await bookings.event_state(conn, event.id), event.id, now)
        if times != (event.start_time, event.end_time):
            raise domain.event_moved(event)
        return booking

    # ----------------------------------------------------------------- read

    async def get(self, q: GetBooking) -> Booking:
        async with db.connection(self._pool) as conn:
            return domain.ensure_visible(await bookings.get_booking(conn, q.booking_id), q.booking_id, q.user).booking

    async def list(self, q: ListBookings) -> BookingPage:
        filters = {"guest": q.user.id, "state": q.state.value if q.state else None, "time": q.time.value}
        # (start_time, id, now): "now" is pinned on the first page so that later pages agree on "upcoming"
        ks = keyset(q.page_size, q.page_token, filters, [datetime])
        now = ks.extra[0] if ks.extra and isinstance(ks.extra[0], datetime) else self._clock.now()
        upcoming = {TimeFilter.ANY: None, TimeFilter.UPCOMING: True, TimeFilter.PAST: False}[q.time]
        query = bookings.BookingQuery(
            guest_id=q.user.id, state=q.state, upcoming=upcoming, now=now, after=ks.after, limit=ks.fetch
        )
        async with db.connection(self._pool) as conn:
            rows = await bookings.list_bookings(conn, query)
        return ks.page([r.booking for r in rows], lambda b: (b.event_start_time, b.id), now)

    # ----------------------------------------------------------------- cancel

    async def cancel(self, cmd: CancelBooking) -> Booking:
        try:
            return await self._cancel(cmd)
        except _AlreadyCancelled:
            # Lost a race with another cancel (or the host cancelled the event): the booking as that left it.
            return await self.get(GetBooking(cmd.user, cmd.booking_id))

    async def _cancel(self, cmd: CancelBooking) -> Booking:
        now = self._clock.now()
        async with uow(self._pool, self._dispatcher, request=cmd.request, trace_id=cmd.trace_id) as tx:
            conn = tx.conn
            if tx.replay is not None:
                return await self._replay(conn, tx.replay, cmd.user)
            access = await bookings.get_booking(conn, cmd.booking_id)
            if not domain.ensure_can_cancel(access, cmd.booking_id, cmd.user, now):
                assert access is not None
                tx.record(access.booking.name)
                return access.booking
            assert access is not None
            booking = access.booking
            await users.remember(tx, cmd.user)
            # The event row is locked before anything else of the event is touched (its bookings, reminders):
            # the order EventService uses when it updates, cancels or completes an event, so the two can't
            # deadlock. (users.remember comes first, as in CreateBooking: users row, then event row.)
            event = await bookings.lock_event(conn, booking.event_id)
            if event is None:  # pragma: no cover - bookings reference events; events are never deleted
                raise errors.booking_not_found(booking.name)
            domain.ensure_not_started(event, now)  # the host may have moved the start since our read
            seats = await bookings.mark_cancelled(conn, booking.id, now)
            if seats is None:
                raise _AlreadyCancelled  # cancelled meanwhile; rolls back what this transaction wrote
            await bookings.release_seats(conn, event.id, seats)
            cancelled = replace(booking, state=domain.State.CANCELLED, cancel_time=now)
            tx.emit(BookingCancelled(event.id, True, event, cancelled, cmd.user))
            await waitlist_service.offer_freed_seats(tx, event, now, self.claim_window)
            tx.record(booking.name)
            return cancelled

    # ----------------------------------------------------------------- attendance

    async def mark_attendance(self, cmd: MarkAttendance) -> Booking:
        """Host only, confirmed guests of a held event, until the attendance period ends; idempotent (a plain set)."""
        now = self._clock.now()
        async with uow(self._pool, self._dispatcher, trace_id=cmd.trace_id) as tx:
            target = await bookings.attendance_target(tx.conn, cmd.booking_id)
            domain.ensure_can_mark_attendance(target, cmd.booking_id, cmd.user, now, self.attendance_period)
            assert target is not None
            await bookings.mark_attendance(tx.conn, cmd.booking_id, cmd.attendance, now)
            return replace(target.access.booking, attendance=cmd.attendance)


class _AlreadyCancelled(Exception):
    """The booking stopped being confirmed between our read and our update; the transaction is rolled back."""


__all__ = [
    "BookingAccess",
    "BookingPage",
    "BookingService",
    "CancelBooking",
    "CreateBooking",
    "GetBooking",
    "ListBookings",
    "MarkAttendance",
]
