"""The waitlist's clock-driven half: expire offers whose window passed (their seats go to the next entry), close
the waitlist of events that started, and mail "your offer closes soon". ``python -m services.booking.offer_sweep``.

Exactly once, whatever crashes: each event's expiries are one transaction (entry state, held seats, next offers,
mails), and each expiry is a conditional ``OFFERED → EXPIRED`` update, so a transaction killed half-way leaves
nothing behind and the next sweep (after a restart) does it again; an offer already expired is never expired
twice. Any number of sweepers may run: each event is taken with a transaction-scoped advisory lock tried without
waiting (another sweeper holding it is skipped, as ``SKIP LOCKED`` skips rows), and warnings are claimed with
``FOR UPDATE SKIP LOCKED``. The event row itself is locked (briefly) like any booking transaction, in the same
order (event row, then waitlist rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar, NoReturn
from uuid import UUID

from pydantic import Field

from services.booking import notifications
from services.booking import repository as bookings
from services.booking import waitlist_repository as entries
from services.booking.domain_events import WaitlistChanged
from services.booking.waitlist import EntryState
from services.common import db, links
from services.common.cache import cache_from_settings
from services.common.clock import Clock, SystemClock
from services.common.dbtypes import Pool
from services.common.logging import configure_logging, get_logger
from services.common.settings import CommonSettings, load_settings
from services.common.uow import Handlers, uow
from services.event import cache as event_cache
from services.notification import outbox

_log = get_logger("cowatch.booking.offer_sweep")


@dataclass
class SweepResult:
    expired: int = 0
    offered: int = 0
    closed: int = 0
    warned: int = 0
    skipped_events: int = 0


class OfferSweep:
    def __init__(
        self,
        pool: Pool,
        clock: Clock,
        public_base_url: str,
        claim_window: timedelta,
        *,
        batch: int = 100,
        subscribers: Handlers | None = None,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._base_url = public_base_url
        self._window = claim_window
        self._batch = batch
        self._dispatcher = notifications.handlers(public_base_url).merged(*([subscribers] if subscribers else []))

    async def run_once(self) -> SweepResult:
        """One pass over what is due now."""
        result = SweepResult()
        now = self._clock.now()
        async with db.connection(self._pool) as conn:
            due = await entries.due_events(conn, now, self._batch)
        for event_id in due:
            await self._sweep_event(event_id, result)
        await self._warn(result)
        return result

    async def _sweep_event(self, event_id: UUID, result: SweepResult) -> None:
        now = self._clock.now()
        async with uow(self._pool, self._dispatcher) as tx:
            conn = tx.conn
            if not await entries.try_lock_sweep(conn, event_id):
                result.skipped_events += 1
                return
            event = await bookings.lock_event(conn, event_id)
            if event is None:  # pragma: no cover - events are never deleted
                return
            if not event.is_open(now):
                closed = await entries.close_all(conn, event.id, now)
                why = "the event has started" if event.scheduled else "the event is no longer scheduled"
                if closed:
                    tx.emit(WaitlistChanged(event.id, True, event, closed=tuple(closed), close_reason=why))
                result.closed += len(closed)
                return
            expired = []
            for entry_id in await entries.due_offers(conn, event.id, now):
                ended = await entries.end_offer(conn, event.id, entry_id, EntryState.EXPIRED, now, only_if_due=True)
                if ended is not None:
                    expired.append(ended)
            offers = await entries.offer_free_seats(conn, event.id, now, self._window)
            if expired or offers:
                tx.emit(WaitlistChanged(event.id, True, event, offers=tuple(offers), expired=tuple(expired)))
            result.expired += len(expired)
            result.offered += len(offers)

    async def _warn(self, result: SweepResult) -> None:
        now = self._clock.now()
        async with uow(self._pool) as tx:
            warnings = await entries.warn_due(tx.conn, now, self._batch)
            for w in warnings:
                event = await bookings.event_state(tx.conn, w.event_id)
                assert event is not None
                link = links.event_link(self._base_url, event.id)
                await outbox.enqueue(tx.conn, notifications.waitlist_offer_closing(event, w, link))
        result.warned += len(warnings)


class OfferSweepSettings(CommonSettings):
    service_name: ClassVar[str] = "cowatch-offer-sweep"
    sweep_interval_seconds: float = Field(default=1.0, gt=0, le=60, description="How often due offers are swept")


async def serve(settings: OfferSweepSettings, *, clock: Clock | None = None) -> int:
    """Sweep every ``sweep_interval_seconds`` until SIGTERM/SIGINT (the pass in hand finishes)."""
    pool = await db.create_pool(settings, application_name=settings.service_name)
    # EventService caches event rows (seats_available, waitlist_size): its cache hears every seat change made here
    cache = cache_from_settings(settings)
    subscribers = event_cache.handlers(cache)
    sweep = OfferSweep(
        pool,
        clock or SystemClock(),
        settings.public_base_url,
        timedelta(seconds=settings.waitlist_claim_window_seconds),
        subscribers=subscribers,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _log.info("offer sweep started", interval=settings.sweep_interval_seconds)
    try:
        while not stop.is_set():
            try:
                result = await sweep.run_once()
                if result.expired or result.closed or result.warned:
                    _log.info("offers swept", **vars(result))
            except Exception:
                _log.exception("offer sweep failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.sweep_interval_seconds)
    finally:
        await cache.aclose()
        await db.close_pool(pool)
    return 0


def main() -> NoReturn:
    settings = load_settings(OfferSweepSettings)
    configure_logging(level=settings.log_level, json=settings.log_json, cache_loggers=True)
    raise SystemExit(asyncio.run(serve(settings)))


if __name__ == "__main__":
    main()
