"""Waitlist use cases (JoinWaitlist, GetWaitlistEntry, ListWaitlist, LeaveWaitlist, ClaimOffer, DeclineOffer), each
one unit of work, and :func:`offer_freed_seats`, which every seat-freeing transaction ends with.

Locks, in the order every booking transaction takes them: the guest's advisory lock (claim, as CreateBooking) →
the users row (``users.remember``) → the event row (``repository.lock_event``) → waitlist rows. Holding the event
row serialises every change of an event's seats_held, so "the first waiting entry that fits" is decided on what
the previous change committed: no waiter is skipped, no seats are offered twice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from services.account import users
from services.booking import domain, waitlist
from services.booking import repository as bookings
from services.booking import waitlist_repository as entries
from services.booking.domain import BookableEvent, Booking
from services.booking.domain_events import BookingMade, WaitlistChanged
from services.booking.waitlist import EntryState, WaitlistEntry
from services.common import db, errors, names
from services.common.clock import Clock
from services.common.dbtypes import Conn, Pool
from services.common.errors import PermissionDenied
from services.common.idempotency import RequestKey
from services.common.identity import User
from services.common.paging import Page, keyset
from services.common.uow import Handlers, UnitOfWork, uow


@dataclass(frozen=True, slots=True)
class JoinWaitlist:
    user: User
    event_id: UUID
    seats: int
    invite_token: str
    request: RequestKey | None
    trace_id: str = ""


@dataclass(frozen=True, slots=True)
class EntryAction:
    """LeaveWaitlist, ClaimOffer, DeclineOffer: an action of the entry's guest."""

    user: User
    event_id: UUID
    entry_id: UUID
    request: RequestKey | None
    trace_id: str = ""


@dataclass(frozen=True, slots=True)
class GetEntry:
    user: User
    event_id: UUID
    entry_id: UUID


@dataclass(frozen=True, slots=True)
class ListWaitlist:
    user: User
    event_id: UUID
    page_size: int
    page_token: str


async def offer_freed_seats(tx: UnitOfWork, event: BookableEvent, now: datetime, window: timedelta) -> None:
    """Offer what is bookable now to the waiting entries (join order, first fit) and emit the offers; the event row
    must be locked by the caller's transaction."""
    offers = await entries.offer_free_seats(tx.conn, event.id, now, window)
    if offers:
        tx.emit(WaitlistChanged(event.id, True, event, offers=tuple(offers)))


class WaitlistService:
    def __init__(self, pool: Pool, clock: Clock, dispatcher: Handlers, max_seats: int, claim_window: timedelta) -> None:
        self._pool = pool
        self._clock = clock
        self._dispatcher = dispatcher
        self.max_seats = max_seats
        self.claim_window = claim_window

    async def _entry_by_name(self, conn: Conn, name: str, user: User) -> WaitlistEntry:
        event_id, entry_id = names.parse_waitlist_entry(name)
        return waitlist.ensure_visible(await entries.get_entry(conn, entry_id), event_id, entry_id, user)

    # ----------------------------------------------------------------- join

    async def join(self, cmd: JoinWaitlist) -> WaitlistEntry:
        now = self._clock.now()
        async with uow(self._pool, self._dispatcher, request=cmd.request, trace_id=cmd.trace_id) as tx:
            conn = tx.conn
            if tx.replay is not None:
                return await self._entry_by_name(conn, tx.replay, cmd.user)
            found = await bookings.event_for_booking(conn, cmd.event_id, cmd.user.id, None)
            event = domain.ensure_event_visible(
                found.event if found else None,
                cmd.event_id,
                cmd.user,
                invite_token=cmd.invite_token,
                already_booked=found is not None and found.already_booked,
            )
            if cmd.user.id == event.host_id:
                raise domain.host_cannot_book()
            if not event.is_open(now):
                raise domain.not_bookable(event, now)
            if found is not None and found.already_booked:
                raise domain.already_booked_error(event)
            await users.remember(tx, cmd.user)
            locked = await bookings.lock_event(conn, cmd.event_id)
            assert locked is not None  # events are never deleted
            if not locked.is_open(now):
                raise domain.not_bookable(locked, now)
            waitlist.ensure_can_join(
                cmd.seats, locked.seats_available, await entries.open_entry(conn, locked.id, cmd.user.id)
            )
            entry_id = uuid.uuid4()
            try:
                inserted = await entries.insert_entry(
                    conn, entry_id, locked.id, cmd.user.id, cmd.seats, now, (locked.start_time, locked.end_time)
                )
            except entries.DuplicateEntry:  # pragma: no cover - open_entry above saw none, under the event lock
                raise domain.already_booked_error(locked) from None
            if not inserted:
                raise domain.overlap(await bookings.overlapping_booking(conn, cmd.user.id, locked))
            tx.emit(WaitlistChanged(locked.id, True, locked))
            tx.record(names.waitlist_entry(locked.id, entry_id))
            entry = await entries.get_entry(conn, entry_id)
            assert entry is not None
            return entry

    # ----------------------------------------------------------------- read

    async def get(self, q: GetEntry) -> WaitlistEntry:
        async with db.connection(self._pool) as conn:
            return waitlist.ensure_visible(await entries.get_entry(conn, q.entry_id), q.event_id, q.entry_id, q.user)

    async def list(self, q: ListWaitlist) -> Page[WaitlistEntry]:
        ks = keyset(q.page_size, q.page_token, {"event": q.event_id, "waitlist": True}, [int])
        after_seq = ks.extra[0] if ks.extra and isinstance(ks.extra[0], int) else None
        async with db.connection(self._pool) as conn:
            found = await bookings.event_for_booking(conn, q.event_id, q.user.id, None)
            event = domain.ensure_event_visible(
                found.event if found else None,
                q.event_id,
                q.user,
                invite_token="",
                already_booked=found is not None and found.already_booked,
            )
            if event.host_id != q.user.id:
                raise PermissionDenied("NOT_EVENT_HOST", "only the event's host can see its waitlist")
            rows = await entries.list_entries(conn, q.event_id, after_seq, ks.fetch)
        last_seq = rows[ks.limit - 1].seq if len(rows) > ks.limit else 0
        return ks.page(rows, lambda e: (e.create_time, e.id), last_seq)

    # ----------------------------------------------------------------- leave / decline

    async def leave(self, cmd: EntryAction) -> WaitlistEntry:
        return await self._end(cmd, EntryState.LEFT)

    async def decline(self, cmd: EntryAction) -> WaitlistEntry:
        return await self._end(cmd, EntryState.DECLINED)

    async def _end(self, cmd: EntryAction, to: EntryState) -> WaitlistEntry:
        now = self._clock.now()
        async with uow(self._pool, self._dispatcher, request=cmd.request, trace_id=cmd.trace_id) as tx:
            conn = tx.conn
            if tx.replay is not None:
                return await self._entry_by_name(conn, tx.replay, cmd.user)
            entry = waitlist.ensure_guest(
                await entries.get_entry(conn, cmd.entry_id), cmd.event_id, cmd.entry_id, cmd.user
            )
            tx.record(entry.name)
            if to is EntryState.LEFT and not entry.state.is_open:
                return entry  # leaving is idempotent
            event = await bookings.lock_event(conn, cmd.event_id)
            assert event is not None
            entry = await self._reread(conn, entry)
            if to is EntryState.DECLINED:
                waitlist.ensure_open_offer(entry, now)
            if entry.state is EntryState.WAITING:
                await entries.leave_waiting(conn, entry.id, now)
                tx.emit(WaitlistChanged(event.id, True, event))
            elif entry.state is EntryState.OFFERED:
                await entries.end_offer(conn, event.id, entry.id, to, now)
                tx.emit(WaitlistChanged(event.id, True, event))
                await offer_freed_seats(tx, event, now, self.claim_window)
            return await self._reread(conn, entry)

    async def _reread(self, conn: Conn, entry: WaitlistEntry) -> WaitlistEntry:
        fresh = await entries.get_entry(conn, entry.id)
        assert fresh is not None
        return fresh

    # ----------------------------------------------------------------- claim

    async def claim(self, cmd: EntryAction) -> Booking:
        now = self._clock.now()
        async with uow(self._pool, self._dispatcher, request=cmd.request, trace_id=cmd.trace_id) as tx:
            conn = tx.conn
            if tx.replay is not None:
                booking_id = domain.parse_booking_name(tx.replay)
                return domain.ensure_visible(await bookings.get_booking(conn, booking_id), booking_id, cmd.user).booking
            entry = waitlist.ensure_guest(
                await entries.get_entry(conn, cmd.entry_id), cmd.event_id, cmd.entry_id, cmd.user
            )
            waitlist.ensure_open_offer(entry, now)
            await bookings.lock_guest(conn, cmd.user.id)
            await users.remember(tx, cmd.user)
            event = await bookings.lock_event(conn, cmd.event_id)
            assert event is not None
            entry = await self._reread(conn, entry)
            waitlist.ensure_open_offer(entry, now)
            if not event.is_open(now):
                raise domain.not_bookable(event, now)
            booking_id = uuid.uuid4()
            try:
                created = await bookings.insert_booking(conn, booking_id, event, cmd.user.id, entry.seats, now)
            except bookings.DuplicateBooking:
                raise domain.already_booked_error(event) from None
            if created is None:
                raise domain.overlap(await bookings.overlapping_booking(conn, cmd.user.id, event))
            if await entries.claim(conn, event.id, entry.id, booking_id, now) is None:  # pragma: no cover
                raise errors.event_not_found(event.name)  # checked above under the same lock
            booking = Booking(
                id=booking_id,
                event_id=event.id,
                guest_id=cmd.user.id,
                seats=entry.seats,
                state=domain.State.CONFIRMED,
                event_title=event.title,
                event_start_time=event.start_time,
                event_end_time=event.end_time,
                create_time=created,
            )
            tx.emit(BookingMade(event.id, True, event, booking, cmd.user, now))
            tx.record(booking.name)
            return booking
