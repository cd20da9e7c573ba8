"""Due reminders → outbox messages, exactly once per (event, kind, recipient) and schedule.

Reminder rows are written by the domains (``outbox.schedule_reminders`` when an event is created or a seat is
booked, ``move_reminders`` when the start changes, ``drop_reminders`` on cancellation). Moving the start re-arms
every reminder whose new due time is still ahead — also one already SENT for the old start (the guest is reminded
of the new time) — and skips those whose new due time has passed (never sent late). Here, in ONE transaction per
batch:

1. claim the ``PENDING`` rows whose ``due_time`` has come (``FOR UPDATE OF r SKIP LOCKED``: workers never
   claim the same row, and a concurrent move/drop waits for us, then sees the final state);
2. read the event as it is now (title, film, start in the place's zone, full address) and whether the
   recipient is still the host or a confirmed guest;
3. mark each row ``SENT`` and enqueue its message (dedupe key ``reminder/{event}/{kind}/{recipient}/{due}``: the
   due time makes a re-armed reminder a new message, and stays the same on every retry of one schedule), or
   mark it ``SKIPPED`` when it no longer applies: the event is not scheduled any more, the recipient's booking
   is gone, or the reminder would arrive too late (the event has started, or a 24 h reminder whose 1 h mark has
   passed too — a worker that was down for a day does not send a burst of stale mail).

So exactly-once rests on three things: the row's state (changed in the same transaction as the enqueue), the
outbox's unique ``dedupe_key``, and the notification service's dedupe of that key on retries.

Due times are compared with the injected :class:`~services.common.clock.Clock` (the same clock the services
used to write them), so tests move time instead of waiting for hours.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from services.common import db, links
from services.common.clock import Clock
from services.common.logging import get_logger
from services.common.vocabulary import ReminderKind
from services.notification import messages, outbox
from services.notification.messages import EventFacts
from services.notification.metrics import WorkerMetrics

__all__ = ["ReminderDispatcher", "skip_reason"]

_log = get_logger("cowatch.notification.reminders")

# A reminder later than this before the start is not worth sending any more (the next one will come).
STALE_AFTER: Final = {ReminderKind.H24: timedelta(hours=1), ReminderKind.H1: timedelta(0)}

CLAIM_DUE = """
SELECT r.id, r.event_id, r.kind, r.recipient_id, r.due_time,
       e.host_id, e.state AS event_state, e.title, e.film_title, e.start_time, e.time_zone,
       e.place_name, e.place_address, e.place_city, h.display_name AS host_name,
       b.seats AS guest_seats
FROM notify.reminders r
JOIN event.events e ON e.id = r.event_id
JOIN account.users h ON h.id = e.host_id
LEFT JOIN booking.bookings b
       ON b.event_id = r.event_id AND b.guest_id = r.recipient_id AND b.state = 'CONFIRMED'
WHERE r.state = 'PENDING' AND r.due_time <= $1
ORDER BY r.due_time, r.id
LIMIT $2
FOR UPDATE OF r SKIP LOCKED
"""

SETTLE = """
UPDATE notify.reminders r
SET state = s.state, sent_time = CASE WHEN s.state = 'SENT' THEN $3::timestamptz END
FROM unnest($1::bigint[], $2::text[]) AS s(id, state)
WHERE r.id = s.id
"""


def skip_reason(
    *, kind: str, event_state: str, is_host: bool, is_guest: bool, start_time: datetime, now: datetime
) -> str | None:
    """Why a due reminder must not be sent (``None``: send it)."""
    if event_state != "SCHEDULED":
        return "event_not_scheduled"
    if not (is_host or is_guest):
        return "not_attending"
    if now >= start_time - STALE_AFTER[ReminderKind(kind)]:
        return "too_late"
    return None


@dataclass(frozen=True, slots=True)
class _Decision:
    reminder_id: int
    kind: str
    state: str
    reason: str | None
    message: outbox.Message | None


class ReminderDispatcher:
    def __init__(
        self,
        pool: db.Pool,
        clock: Clock,
        metrics: WorkerMetrics,
        *,
        public_base_url: str,
        batch_size: int = 200,
        acquire_timeout_seconds: float = 2.0,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._metrics = metrics
        self._base_url = public_base_url
        self._batch_size = batch_size
        self._acquire_timeout = acquire_timeout_seconds

    def _decide(self, row: Any, now: datetime) -> _Decision:
        is_host = row["recipient_id"] == row["host_id"]
        is_guest = row["guest_seats"] is not None
        reason = skip_reason(
            kind=row["kind"],
            event_state=row["event_state"],
            is_host=is_host,
            is_guest=is_guest,
            start_time=row["start_time"],
            now=now,
        )
        if reason is not None:
            return _Decision(row["id"], row["kind"], "SKIPPED", reason, None)
        facts = EventFacts(
            id=row["event_id"],
            title=row["title"],
            film_title=row["film_title"],
            start_time=row["start_time"],
            time_zone=row["time_zone"],
            place_name=row["place_name"],
            place_address=row["place_address"],
            place_city=row["place_city"],
            host_name=row["host_name"],
        )
        message = messages.reminder(
            facts,
            row["kind"],
            row["recipient_id"],
            is_host=is_host,
            seats=row["guest_seats"] or 0,
            link=links.event_link(self._base_url, row["event_id"]),
            due_time=row["due_time"],
        )
        return _Decision(row["id"], row["kind"], "SENT", None, message)

    async def run_once(self) -> int:
        """Dispatch one batch of due reminders; returns how many rows were settled (sent or skipped)."""
        now = self._clock.now()
        async with db.transaction(self._pool, acquire_timeout=self._acquire_timeout) as conn:
            rows = await conn.fetch(CLAIM_DUE, now, self._batch_size)
            if not rows:
                return 0
            decisions = [self._decide(r, now) for r in rows]
            await conn.execute(SETTLE, [d.reminder_id for d in decisions], [d.state for d in decisions], now)
            await outbox.enqueue_many(conn, [d.message for d in decisions if d.message is not None])
        for d in decisions:
            self._metrics.reminders.labels(d.kind, d.state.lower()).inc()
            if d.reason is not None:
                _log.info("reminder skipped", reminder_id=d.reminder_id, kind=d.kind, reason=d.reason)
        return len(decisions)
