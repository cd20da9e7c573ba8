"""Revealing reviews: both reviews of a pair at once when the second is written (:func:`reveal`, in the writer's
unit of work), and every review still pending when its event's review window closes (:class:`RevealJob`, run
periodically by the notification worker).

A reveal sets ``reveal_time`` with a conditional ``UPDATE … WHERE reveal_time IS NULL`` and, in the same
transaction, adds each revealed review to its aggregate and emits :class:`ReviewRevealed` (the subject's mail in
the transaction, cache invalidations after COMMIT). A review is therefore revealed, counted and announced
exactly once: a crash before COMMIT reveals nothing and the next run does it again; two workers never take the
same event (``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from services.common.clock import Clock
from services.common.dbtypes import Conn, Pool
from services.common.logging import get_logger
from services.common.uow import Handlers, UnitOfWork, uow
from services.review import domain
from services.review import repository as reviews
from services.review.domain import Review
from services.review.domain_events import ReviewRevealed

__all__ = ["RevealJob", "reveal"]

_log = get_logger("cowatch.review.reveals")

MAX_EVENTS_PER_RUN = 500


async def reveal(tx: UnitOfWork, ids: list[UUID], now: datetime) -> list[Review]:
    """Reveal the pending reviews ``ids`` (of one event, locked by the caller) in ``tx``: their aggregates and
    :class:`ReviewRevealed` events included. Returns those revealed (one already revealed is left alone)."""
    conn: Conn = tx.conn
    revealed = await reviews.reveal(conn, ids, now)
    if not revealed:
        return []
    host_id, title = await reviews.event_summary(conn, revealed[0].event_id)
    # Aggregates last, in a fixed order (events, then users by id): concurrent reveals never deadlock.
    changes = sorted(
        (domain.rating_change_for_new(r) for r in revealed),
        key=lambda c: (c.user_id is not None, c.user_id or "", c.role or ""),
    )
    for change in changes:
        await reviews.apply_rating_change(conn, change)
    for r in revealed:
        tx.emit(ReviewRevealed(r.id, r.event_id, r.subject_type.value, r.subject_user_id, host_id, r, title))
    return revealed


@dataclass(frozen=True, slots=True)
class RevealRun:
    events: int = 0
    reviews: int = 0


class RevealJob:
    """Reveals the reviews of every event whose review window has closed, one event per transaction."""

    name = "reveals"

    def __init__(self, pool: Pool, clock: Clock, dispatcher: Handlers) -> None:
        self._pool = pool
        self._clock = clock
        self._dispatcher = dispatcher

    async def run_once(self) -> RevealRun:
        events = revealed = 0
        while events < MAX_EVENTS_PER_RUN:
            now = self._clock.now()
            async with uow(self._pool, self._dispatcher) as tx:
                due = await reviews.claim_due_event(tx.conn, now)
                if not due:
                    break
                revealed += len(await reveal(tx, due, now))
            events += 1
        if events:
            _log.info("reviews revealed at the end of their window", events=events, reviews=revealed)
        return RevealRun(events, revealed)
