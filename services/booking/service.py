"""BookingService use cases: one method per RPC, each one transaction.

CreateBooking:

1. read the event (one autocommit statement, no row lock) — event not found, host, invite, not bookable, already
   booked and "not enough seats left" are refused from this read alone, in one round trip and without ever
   queueing behind the event row's lock (a sold-out event under a rush stays cheap to refuse). A request whose id
   was already used goes on instead, to be replayed by the idempotency claim (step 3). A request arriving while a
   write of its event is in flight (a hot event) skips this read and queues for the next batch at once, holding
   no connection: the batch's requests are read together in one statement (the same read) just before their
   write, what that read refuses is answered, the rest written — two round trips per batch, not one per request.
2. the write, in ONE statement that is its own transaction (``repository.create_bookings``, a server-side
   function): the request-id claim, the guest's advisory lock, ``users.remember``, the overlap and one-booking
   rules, then under the event row's lock THE conditional seat ``UPDATE`` and the rows a booking writes (the
   booking, its outbox messages built here, the guest's reminders, the request id's record). Requests for the
   same event that arrive while a write of that event is in flight are written together as the next batch
   (:mod:`services.booking.group_commit`): one round trip, one commit and one seat UPDATE for the batch, seats
   given first-fit in arrival order, each request with its own outcome — a refusal of one never fails another.
   The conditional UPDATE under the row lock stays the arbiter between replicas.
3. a request whose id turns out to be claimed already (a retry) runs in a unit of work of its own
   (:mod:`services.common.uow`), which waits for the first call and replays it — or, if the first call left
   nothing, books the old way, statement by statement (``_book``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TypeAlias
from uuid import UUID

import asyncpg

from services.account import users
from services.booking import domain, group_commit, notifications, waitlist, waitlist_repository, waitlist_service
from services.booking import repository as bookings
from services.booking.domain import BookableEvent, Booking, BookingAccess, TimeFilter
from services.booking.domain_events import BookingCancelled, BookingMade
from services.common import db, errors, grpc_errors, links, tracing
from services.common.clock import Clock
from services.common.dbtypes import Conn, Pool
from services.common.domain_events import SeatsChanged, UserRenamed
from services.common.idempotency import RequestKey
from services.common.identity import User
from services.common.paging import Page, keyset
from services.common.uow import DomainEvent, Handlers, UnitOfWork, uow
from services.notification import outbox


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
        self._public_base_url = public_base_url
        self._lanes: group_commit.Lanes[UUID, _Pending, Booking | object] = group_commit.Lanes(
            self._write_batch, _batchable, fatal=_unavailable, hold=lambda: db.connection(pool), benign=_refusal
        )

    async def _replay(self, conn: Conn, resource: str, user: User) -> Booking:
        """The booking an earlier identical request produced, as it is now."""
        booking_id = domain.parse_booking_name(resource)
        return domain.ensure_visible(await bookings.get_booking(conn, booking_id), booking_id, user).booking

    # ----------------------------------------------------------------- create

    async def create(self, cmd: CreateBooking) -> Booking:
        if self._lanes.busy(cmd.event_id):
            # A write of this event is in flight (a hot event): queue for its next batch at once, unread and holding
            # no connection; the batch's requests are read together, in one statement, just before their write.
            result = await self._lanes.submit(cmd.event_id, _Pending(cmd, None))
        else:
            now = self._clock.now()
            async with db.connection(self._pool) as conn:
                found = await bookings.event_for_booking(conn, cmd.event_id, cmd.user.id, _request_id(cmd))
                if found is not None and found.seen_request:
                    return await self._create_in_uow(cmd, found, conn)
                self._ensure_can_book(cmd, found, now)
                pending = _Pending(cmd, found)
                idle = not self._lanes.busy(cmd.event_id)
                if idle:  # written at once, on this connection
                    result = await self._lanes.submit(cmd.event_id, pending, conn)
            if not idle:  # queued for the event's next batch, holding no connection meanwhile
                result = await self._lanes.submit(cmd.event_id, pending)
        if isinstance(result, _Replay):
            return await self._create_in_uow(cmd, result.found)
        assert isinstance(result, Booking)
        return result

    async def _create_in_uow(
        self, cmd: CreateBooking, found: bookings.EventForBooking | None, conn: Conn | None = None
    ) -> Booking:
        """A request whose id was seen: the claim waits for the first call, then replays it."""
        now = self._clock.now()
        async with (
            _connection(self._pool, conn) as conn,
            uow(conn, self._dispatcher, request=cmd.request, trace_id=cmd.trace_id) as tx,
        ):
            if tx.replay is not None:
                return await self._replay(conn, tx.replay, cmd.user)
            event = self._ensure_can_book(cmd, found, now)
            return await self._book(tx, cmd, event, now)

    async def _write_batch(
        self, event_id: UUID, batch: list[_Pending], conn: Conn | None = None
    ) -> list[Booking | object | BaseException]:
        """Write a batch; one result per request, in order, never raises. Requests queued unread are read first,
        together (one statement): what that read refuses is answered without a write. The others are written in
        one statement per distinct event times (one, unless the event moved while they queued)."""
        try:
            async with _connection(self._pool, conn) as conn:
                return await self._read_and_write(event_id, batch, conn)
        except Exception as exc:  # no pooled connection, or the batch's read failed: every request gets it
            return [exc for _ in batch]

    async def _read_and_write(
        self, event_id: UUID, batch: list[_Pending], conn: Conn
    ) -> list[Booking | object | BaseException]:
        """:meth:`_write_batch` on a connection; only the read raises (the writes answer per request)."""
        results: list[Booking | object | BaseException | None] = [None for _ in batch]
        batch = await self._read_unread(conn, event_id, batch, results)
        groups: dict[tuple[datetime, datetime], list[int]] = {}
        for i, p in enumerate(batch):
            if results[i] is None:
                groups.setdefault((p.event.start_time, p.event.end_time), []).append(i)
        for positions in groups.values():
            written = await self._write_group(event_id, [batch[i] for i in positions], conn)
            for i, result in zip(positions, written, strict=True):
                results[i] = result
        done = [r for r in results if r is not None]
        assert len(done) == len(batch)
        return done

    async def _read_unread(
        self, conn: Conn, event_id: UUID, batch: list[_Pending], results: list[Booking | object | BaseException | None]
    ) -> list[_Pending]:
        """``batch`` with its unread requests read (one statement); a request the read refuses, or whose id was
        seen (a retry, replayed in a unit of work), gets its result in ``results``."""
        unread = [i for i, p in enumerate(batch) if p.found is None]
        if not unread:
            return batch
        keys = [(batch[i].cmd.user.id, _request_id(batch[i].cmd)) for i in unread]
        found = await bookings.events_for_booking(conn, event_id, keys)
        now = self._clock.now()
        batch = list(batch)
        for i, f in zip(unread, found, strict=True):
            batch[i] = replace(batch[i], found=f)
            if f is not None and f.seen_request:
                results[i] = _Replay(f)
                continue
            try:
                self._ensure_can_book(batch[i].cmd, f, now)
            except errors.DomainError as exc:
                results[i] = exc
        return batch

    async def _write_group(
        self, event_id: UUID, batch: list[_Pending], conn: Conn
    ) -> list[Booking | object | BaseException]:
        """Write requests that passed their read, with the same event times (one statement, its own transaction).
        A batch that fails as a whole on a server-side error (a deadlock, a constraint no rule foresaw) is written
        again one request at a time, so the error stays with the request that caused it."""
        try:
            return await self._write(event_id, batch, conn)
        except asyncpg.PostgresError as exc:
            if len(batch) == 1 or _unavailable(exc):
                return [_written_error(exc, p.event) for p in batch]
        except Exception as exc:  # the network: every request of the batch gets it
            return [exc for _ in batch]
        results: list[Booking | object | BaseException] = []
        for p in batch:
            results.extend(await self._write_group(event_id, [p], conn))
        return results

    async def _write(self, event_id: UUID, batch: list[_Pending], conn: Conn) -> list[Booking | object | BaseException]:
        now = self._clock.now()
        head = batch[0].event
        link = links.event_link(self._public_base_url, event_id)
        made: list[Booking] = []
        rows: list[bookings.NewBooking] = []
        for p in batch:
            booking = Booking(
                id=uuid.uuid4(),
                event_id=event_id,
                guest_id=p.cmd.user.id,
                seats=p.cmd.seats,
                state=domain.State.CONFIRMED,
                event_title=p.event.title,
                event_start_time=p.event.start_time,
                event_end_time=p.event.end_time,
                create_time=now,
            )
            made.append(booking)
            messages = notifications.booking_made(p.event, booking, p.cmd.user, link)
            rows.append(
                bookings.NewBooking(
                    booking_id=booking.id,
                    guest_id=p.cmd.user.id,
                    guest_name=_snapshot_name(p.cmd.user),
                    seats=p.cmd.seats,
                    request_id=_request_id(p.cmd),
                    request_hash=p.cmd.request.request_hash if p.cmd.request else None,
                    outbox=[
                        r
                        for m in messages
                        if (r := outbox.row(m, request_id=p.cmd.trace_id, traceparent=p.traceparent)) is not None
                    ],
                )
            )
        # The event's cached copies (and those showing a renamed guest's name) are held before the write and
        # dropped after it, as the unit of work does before and after COMMIT.
        seats_changed = SeatsChanged(event_id, True)
        held: list[DomainEvent] = [seats_changed, *(UserRenamed(p.cmd.user.id) for p in batch if p.renames)]
        trace_id = batch[0].cmd.trace_id
        await self._dispatcher.in_transaction(conn, held, trace_id)
        try:
            outcomes = await bookings.create_bookings(conn, head, now, rows, _REMINDER_OFFSETS)
        except BaseException:
            await self._dispatcher.after_rollback(held)
            raise
        booked = any(o.outcome == "BOOKED" for o in outcomes)
        late = [UserRenamed(p.cmd.user.id) for p, o in zip(batch, outcomes, strict=True) if o.renamed and not p.renames]
        if late:  # renamed since our read: drop what shows the old name now
            await self._dispatcher.in_transaction(conn, late, trace_id)
        await self._dispatcher.after_commit([*held[1:], *late] if not booked else [*held, *late])
        if not booked:
            await self._dispatcher.after_rollback([seats_changed])
        closed = None
        if any(o.outcome == "CLOSED" for o in outcomes):
            closed = domain.seats_refusal(await bookings.event_state(conn, event_id), event_id, now)
        results: list[Booking | object | BaseException] = []
        for p, o, booking in zip(batch, outcomes, made, strict=True):
            match o.outcome:
                case "BOOKED":
                    results.append(booking)
                case "REPLAY":
                    results.append(_Replay(p.found))
                case "ALREADY_BOOKED":
                    results.append(domain.already_booked_error(p.event))
                case "OVERLAP":
                    results.append(domain.overlap(o.other_booking))
                case "NO_SEATS":
                    results.append(domain.sold_out(o.seats_available or 0))
                case "MOVED":
                    results.append(domain.event_moved(p.event))
                case _:  # CLOSED
                    assert closed is not None
                    results.append(closed)
        return results

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


@dataclass(frozen=True, slots=True)
class _Replay:
    """The request's id was claimed already: it is replayed in a unit of work of its own."""

    found: bookings.EventForBooking | None  # what the request's read saw


_REMINDER_OFFSETS = {str(kind): offset.total_seconds() for kind, offset in outbox.REMINDER_OFFSETS.items()}


@dataclass(frozen=True, slots=True)
class _Pending:
    """A CreateBooking waiting for its write: read, having passed every check a read can make, or queued unread
    (``found`` is None until its batch reads it)."""

    cmd: CreateBooking
    found: bookings.EventForBooking | None
    # The request's own span (tracing on), taken in its task: a batch is written in another request's task.
    traceparent: str | None = field(default_factory=tracing.current_traceparent)

    @property
    def event(self) -> BookableEvent:
        """The event as the request's read saw it (only once read)."""
        assert self.found is not None
        return self.found.event

    @property
    def renames(self) -> bool:
        """Its display name differs from the snapshot: the write will rename the user."""
        assert self.found is not None
        return self.found.guest_name is not None and self.found.guest_name != _snapshot_name(self.cmd.user)


@asynccontextmanager
async def _connection(pool: Pool, given: Conn | None) -> AsyncIterator[Conn]:
    """The connection the caller holds, or a pooled one."""
    if given is not None:
        yield given
    else:
        async with db.connection(pool) as conn:
            yield conn


def _snapshot_name(user: User) -> str:
    """The display name ``users.remember`` stores."""
    return user.display_name[:200] or user.id


def _request_id(cmd: CreateBooking) -> UUID | None:
    return cmd.request.request_id if cmd.request else None


def _batchable(batch: list[_Pending], item: _Pending) -> bool:
    """One request per guest per batch: a guest's requests are decided one after the other."""
    return all(p.cmd.user.id != item.cmd.user.id for p in batch)


def _unavailable(exc: BaseException) -> bool:
    """The database is unreachable (UNAVAILABLE): every write would fail the same way now."""
    return isinstance(grpc_errors.as_domain_error(exc), errors.Unavailable)


def _refusal(exc: BaseException) -> bool:
    """A request's own refusal (sold out, already booked): the batch's connection is fine and is kept."""
    return isinstance(exc, errors.DomainError) and not isinstance(exc, errors.Unavailable)


def _written_error(exc: asyncpg.PostgresError, event: BookableEvent) -> BaseException:
    if isinstance(exc, asyncpg.UniqueViolationError) and exc.constraint_name == "bookings_one_active_per_guest":
        return domain.already_booked_error(event)  # a booking of the guest no lock of ours serialised with
    return exc


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
