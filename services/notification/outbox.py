"""The transactional outbox and reminder rows (schema ``notify``); the only writer of those tables.

Domains call these functions inside their own transaction, so a notification exists iff the change it announces
was committed. The relay worker sends outbox rows to the notification service; the reminder scheduler turns due
reminder rows into outbox rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from services.common import tracing
from services.common.dbtypes import Conn
from services.common.vocabulary import ReminderKind

REMINDER_OFFSETS: dict[ReminderKind, timedelta] = {kind: kind.before_start for kind in ReminderKind}


@dataclass(frozen=True, slots=True)
class Message:
    """One notification: ``recipients`` are user ids; ``dedupe_key`` is stable across retries."""

    dedupe_key: str
    template_id: str
    recipients: Sequence[str]
    params: dict[str, Any] = field(default_factory=dict)


ENQUEUE = """
INSERT INTO notify.outbox (dedupe_key, template_id, recipients, params, request_id, traceparent)
VALUES ($1, $2, $3, $4::jsonb, $5, $6)
ON CONFLICT (dedupe_key) DO NOTHING
"""


async def enqueue(conn: Conn, message: Message, *, request_id: str = "") -> None:
    """Queue ``message`` in the current transaction. A message with no recipients is dropped.

    With tracing on, the row keeps the current span's ``traceparent``: its delivery joins this trace."""
    recipients = list(dict.fromkeys(message.recipients))
    if not recipients:
        return
    await conn.execute(
        ENQUEUE,
        message.dedupe_key,
        message.template_id,
        recipients,
        json.dumps(message.params, sort_keys=True, default=str),
        request_id or None,
        tracing.current_traceparent(),
    )


def row(message: Message, *, request_id: str = "", traceparent: str | None = None) -> dict[str, Any] | None:
    """``message`` as a notify.outbox row keyed by column (for writers that insert rows in bulk, e.g. the booking
    function); ``None`` when it has no recipients. A new outbox column is one more key here (and one more column
    in booking.create_bookings's INSERT)."""
    recipients = list(dict.fromkeys(message.recipients))
    if not recipients:
        return None
    return {
        "dedupe_key": message.dedupe_key,
        "template_id": message.template_id,
        "recipients": recipients,
        "params": message.params,
        "request_id": request_id or None,
        "traceparent": traceparent,
    }


async def enqueue_many(conn: Conn, messages: Sequence[Message], *, request_id: str = "") -> None:
    """Queue several messages in the current transaction (one round trip)."""
    traceparent = tracing.current_traceparent()
    args = [
        (
            m.dedupe_key,
            m.template_id,
            list(dict.fromkeys(m.recipients)),
            json.dumps(m.params, sort_keys=True, default=str),
            request_id or None,
            traceparent,
        )
        for m in messages
        if m.recipients
    ]
    if args:
        await conn.executemany(ENQUEUE, args)


SCHEDULE_REMINDER = """
INSERT INTO notify.reminders (event_id, kind, recipient_id, due_time, state)
VALUES ($1, $2, $3, $4::timestamptz, CASE WHEN $4::timestamptz > $5::timestamptz THEN 'PENDING' ELSE 'SKIPPED' END)
ON CONFLICT (event_id, kind, recipient_id) DO UPDATE
    SET due_time = EXCLUDED.due_time, state = EXCLUDED.state
    WHERE notify.reminders.state <> 'SENT'
"""


async def schedule_reminders(
    conn: Conn, event_id: UUID, recipient_id: str, start_time: datetime, now: datetime
) -> None:
    """24 h and 1 h reminders for one recipient. A reminder whose time has already passed is SKIPPED (never
    sent late); one that was already SENT stays sent (exactly once per event, kind, recipient)."""
    for kind, offset in REMINDER_OFFSETS.items():
        await conn.execute(SCHEDULE_REMINDER, event_id, kind, recipient_id, start_time - offset, now)


MOVE_REMINDERS = """
UPDATE notify.reminders r
SET due_time = m.due,
    state = CASE WHEN m.due > $3::timestamptz THEN 'PENDING' ELSE 'SKIPPED' END,
    sent_time = NULL
FROM (SELECT kind, $2::timestamptz - make_interval(secs => seconds) AS due
      FROM unnest($4::text[], $5::float8[]) AS o(kind, seconds)) AS m
WHERE r.event_id = $1 AND r.kind = m.kind AND (r.state <> 'SENT' OR m.due > $3::timestamptz)
"""


async def move_reminders(conn: Conn, event_id: UUID, new_start: datetime, now: datetime) -> None:
    """Follow a new start time: every reminder whose new due time is still ahead is armed again (``PENDING``) —
    also one already ``SENT`` for the old start, so guests are reminded of the new time (its message gets a new
    dedupe key: the key carries the due time); one whose new due time has passed is ``SKIPPED`` (never sent
    late), or stays ``SENT`` if it went out for the old start."""
    kinds = list(REMINDER_OFFSETS)
    offsets = [REMINDER_OFFSETS[k].total_seconds() for k in kinds]
    await conn.execute(MOVE_REMINDERS, event_id, new_start, now, kinds, offsets)


DROP_REMINDERS = "DELETE FROM notify.reminders WHERE event_id = $1 AND state <> 'SENT'"
DROP_RECIPIENT_REMINDERS = "DELETE FROM notify.reminders WHERE event_id = $1 AND recipient_id = $2 AND state <> 'SENT'"


async def drop_reminders(conn: Conn, event_id: UUID, recipient_id: str | None = None) -> None:
    """Forget unsent reminders of an event (cancelled), or of one recipient (booking cancelled)."""
    if recipient_id is None:
        await conn.execute(DROP_REMINDERS, event_id)
    else:
        await conn.execute(DROP_RECIPIENT_REMINDERS, event_id, recipient_id)
